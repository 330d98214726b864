//! The restore plan as a pure function of what was found on the node, the backup and the flags.
//!
//! `plan(node, backup, args)` decides the target data dir, the tool invocation and the steps,
//! and collects warnings (things a person should know) and blockers (reasons not to start).

use std::path::PathBuf;

use super::steps::Engine;

/// Bump applied with `--bump-revision` when the tool supports it (what etcd's docs suggest for
/// Kubernetes: far more than the writes that could have happened since the backup).
pub const BUMP_REVISION: u64 = 1_000_000_000;

/// The steps of a restore, in order. Their names are what the journal records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Fetch,
    Preflight,
    StopPods,
    RestoreData,
    RestoreFiles,
    PointEtcd,
    StartEtcd,
    StartApiserver,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Fetch,
        Step::Preflight,
        Step::StopPods,
        Step::RestoreData,
        Step::RestoreFiles,
        Step::PointEtcd,
        Step::StartEtcd,
        Step::StartApiserver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Preflight => "preflight",
            Step::StopPods => "stop-pods",
            Step::RestoreData => "restore-data",
            Step::RestoreFiles => "restore-files",
            Step::PointEtcd => "point-etcd",
            Step::StartEtcd => "start-etcd",
            Step::StartApiserver => "start-apiserver",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == text)
    }

    /// Whether the step changes the node (and is asked about without `--yes`).
    pub fn destructive(self) -> bool {
        matches!(
            self,
            Step::StopPods
                | Step::RestoreFiles
                | Step::PointEtcd
                | Step::StartEtcd
                | Step::StartApiserver
        )
    }
}

/// What the etcd static pod manifest says (see `EtcdManifest`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub name: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster: Option<String>,
    pub data_dir: Option<String>,
    /// The `etcd-data` hostPath volume's path.
    pub host_path: Option<String>,
    pub apiserver_manifest: bool,
    /// `kubernetes.manifests-dir`.
    pub manifests_dir: PathBuf,
    /// State of the target data dir.
    pub target: TargetState,
    /// Free bytes on the filesystem that will hold the target.
    pub free_bytes: Option<u64>,
    /// The restore tool and its version (`None`: not found).
    pub tool: Option<ToolFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Missing,
    Empty,
    NotEmpty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolFacts {
    pub path: PathBuf,
    pub kind: ToolKind,
    /// (major, minor, patch)
    pub version: (u32, u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    Etcdutl,
    /// etcdctl with ETCDCTL_API=3 (etcd 3.4)
    Etcdctl,
}

impl ToolFacts {
    /// `--bump-revision` / `--mark-compacted` exist from etcd 3.5.10 and 3.4.27 (and in 3.6+).
    pub fn supports_bump(&self) -> bool {
        let (major, minor, patch) = self.version;
        match (major, minor) {
            (3, 4) => patch >= 27,
            (3, 5) => patch >= 10,
            (3, m) => m >= 6,
            (m, _) => m > 3,
        }
    }
}

/// Parses `etcdutl version` / `etcdctl version` output ("etcdutl version: 3.5.1").
pub fn parse_tool_version(output: &str) -> Option<(ToolKind, (u32, u32, u32))> {
    let line = output.lines().next()?;
    let (name, version) = line.split_once(" version:")?;
    let kind = match name.trim() {
        "etcdutl" => ToolKind::Etcdutl,
        "etcdctl" => ToolKind::Etcdctl,
        _ => return None,
    };
    let mut parts = version.trim().split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    Some((kind, (next()?, next()?, next()?)))
}

/// What the backup's manifest says.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFacts {
    pub id: String,
    pub revision: i64,
    pub total_key: u64,
    /// bbolt size: what the restored data dir needs at least.
    pub total_size: u64,
    pub member_name: String,
    /// The control-plane files kept with the backup, described ("7 entries from /etc/...").
    pub files: Option<String>,
    /// Their `include-files` paths.
    pub files_paths: Vec<PathBuf>,
    /// The membership recorded at backup time: (name, peer URLs) of every member. Empty for
    /// backups taken before etcdsafe recorded it.
    pub members: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanArgs {
    pub data_dir: Option<PathBuf>,
    pub swap: bool,
    /// `--restore-files`, and where they go (`--files-root`).
    pub restore_files: Option<PathBuf>,
    /// `--initial-cluster`: the membership to restore into, the same on every member.
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-token` [default: derived from the backup id].
    pub initial_cluster_token: Option<String>,
    /// `--identity` and `--etcdutl` as given, repeated in the command for the other members.
    pub identity: Option<PathBuf>,
    pub etcdutl: Option<PathBuf>,
    /// Who writes the restored data dir.
    pub engine: super::steps::Engine,
    /// `--bump-revision N` (default [`BUMP_REVISION`]); `None`: `--no-bump-revision`.
    pub bump_revision: Option<u64>,
    /// A point-in-time restore: the revision resolved from `--at-*` (every member must restore
    /// the same one, so the others are told the number, never `--at-latest` or `--at-time`).
    pub at_revision: Option<i64>,
}

/// Where the `--initial-cluster` of the restore came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterSource {
    /// `etcdsafe restore --initial-cluster`.
    Flag,
    /// The membership recorded in the backup's manifest.
    Backup,
    /// This node's etcd.yaml.
    Manifest,
}

/// Everything the restore will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub backup_id: String,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_source: ClusterSource,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    /// The current data dir (host side), kept whatever happens.
    pub old_data_dir: PathBuf,
    /// Where the snapshot is restored (a new dir).
    pub target: PathBuf,
    pub swap: bool,
    pub bump_revision: Option<u64>,
    /// The revision etcd must report after the restore.
    pub expected_revision: i64,
    pub steps: Vec<(Step, String)>,
    pub warnings: Vec<String>,
    pub blockers: Vec<String>,
    /// Other members of `--initial-cluster` (name, peer URLs joined by commas), which need the
    /// same restore.
    pub other_members: Vec<(String, String)>,
    /// The exact command each other member runs (empty for a single member): the same on every
    /// node, because each takes its name and peer URL from its own etcd.yaml.
    pub other_members_command: String,
}

/// The `--initial-cluster-token` of a restore of backup `id`: the same on every member.
pub fn restore_token(id: &str) -> String {
    format!("etcdsafe-restore-{id}")
}

pub fn default_target(old: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("{}-restored-{id}", old.trim_end_matches('/')))
}

/// Splits `a=url1,b=url2` into (name, url) pairs.
pub fn members(initial_cluster: &str) -> Vec<(String, String)> {
    initial_cluster
        .split(',')
        .filter_map(|m| m.trim().split_once('='))
        .map(|(n, u)| (n.to_string(), u.to_string()))
        .collect()
}

/// The members of an initial cluster, one entry per name (several peer URLs joined by commas),
/// in the order first named.
pub fn member_names(initial_cluster: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, url) in members(initial_cluster) {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, urls)) => {
                urls.push(',');
                urls.push_str(&url);
            }
            None => out.push((name, url)),
        }
    }
    out
}

/// Members needed for a quorum of `n`.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The same membership, whatever the order: sorted (name, url) pairs.
fn membership_set(initial_cluster: &str) -> Vec<(String, String)> {
    let mut set = members(initial_cluster);
    set.sort();
    set.dedup();
    set
}

/// `--initial-cluster` for recorded members, sorted by name (every node builds the same text).
pub fn initial_cluster_of(recorded: &[(String, Vec<String>)]) -> String {
    let mut pairs: Vec<(String, String)> = recorded
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |u| (name.clone(), u.clone())))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A word for a POSIX shell: as is when it is plain, else single-quoted.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The `--initial-cluster` to restore with, and where it came from. Order: the flag; else the
/// membership recorded in the backup when it names this member; else this node's etcd.yaml.
fn choose_initial_cluster(
    node: &NodeFacts,
    backup: &BackupFacts,
    args: &PlanArgs,
    name: &str,
    warnings: &mut Vec<String>,
    blockers: &mut Vec<String>,
) -> (String, ClusterSource) {
    let from_manifest = node.initial_cluster.clone().filter(|c| !c.is_empty());
    let unnamed = backup
        .members
        .iter()
        .any(|(n, urls)| n.is_empty() || urls.is_empty());
    let recorded =
        (!backup.members.is_empty() && !unnamed).then(|| initial_cluster_of(&backup.members));
    if let Some(given) = &args.initial_cluster {
        if members(given).is_empty() || given.split(',').any(|m| !m.contains('=')) {
            blockers.push(format!(
                "--initial-cluster {given:?} is not NAME=PEER_URL[,NAME=PEER_URL...]: give every member's name and peer URL, the same on every node"
            ));
            return (String::new(), ClusterSource::Flag);
        }
        if let Some(recorded) = recorded.as_deref() {
            if membership_set(given) != membership_set(recorded) {
                warnings.push(format!(
                    "--initial-cluster differs from the membership recorded in the backup ({recorded}): restoring into {given} as given; every other member must be given the same list"
                ));
            }
        }
        return (given.clone(), ClusterSource::Flag);
    }
    if let Some(recorded) = recorded {
        if backup.members.iter().any(|(n, _)| n == name) {
            match &from_manifest {
                Some(m) if membership_set(m) == membership_set(&recorded) => {}
                Some(m) => warnings.push(format!(
                    "using the membership recorded in the backup, {recorded}, not etcd.yaml's --initial-cluster={m}: kubeadm writes on each node only the members that existed when it joined, and every member must restore with the same list to form one cluster"
                )),
                None => warnings.push(format!(
                    "using the membership recorded in the backup, {recorded} (etcd.yaml has no --initial-cluster)"
                )),
            }
            return (recorded, ClusterSource::Backup);
        }
        warnings.push(format!(
            "member {name:?} is not in the membership recorded in the backup ({recorded}): using etcd.yaml's --initial-cluster; if the cluster changed since the backup, pass --initial-cluster with every member, the same on every node"
        ));
    } else if unnamed {
        warnings.push(
            "the backup's recorded membership has a member that never started (no name): using etcd.yaml's --initial-cluster; pass --initial-cluster with every member that should exist, the same on every node".to_string(),
        );
    }
    let Some(list) = from_manifest else {
        blockers.push(
            "the etcd manifest has no --initial-cluster and the backup records no membership for this member: pass --initial-cluster NAME=PEER_URL,... (every member, the same on every node)".to_string(),
        );
        return (String::new(), ClusterSource::Manifest);
    };
    if member_names(&list).len() > 1 {
        warnings.push(format!(
            "the initial cluster comes from this node's etcd.yaml ({list}): kubeadm writes a different --initial-cluster on each node, so every member must be restored with this same list (the command for the other members passes it)"
        ));
    } else if backup.members.is_empty() {
        warnings.push(format!(
            "the backup does not record the cluster's membership (taken by an older etcdsafe) and etcd.yaml lists only {list}: kubeadm's first control-plane node lists only itself, so if the cluster has more members pass --initial-cluster with all of them, the same on every node"
        ));
    }
    (list, ClusterSource::Manifest)
}

pub fn plan(node: &NodeFacts, backup: &BackupFacts, args: &PlanArgs) -> Plan {
    let mut warnings = Vec::new();
    let mut blockers = Vec::new();
    let mut need = |value: &Option<String>, flag: &str| -> String {
        match value {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                blockers.push(format!(
                    "the etcd manifest has no --{flag}: cannot restore a member without it"
                ));
                String::new()
            }
        }
    };
    let name = need(&node.name, "name");
    let peer_urls = need(
        &node.initial_advertise_peer_urls,
        "initial-advertise-peer-urls",
    );
    let data_dir = need(&node.data_dir, "data-dir");
    let (initial_cluster, initial_cluster_source) =
        choose_initial_cluster(node, backup, args, &name, &mut warnings, &mut blockers);
    if !name.is_empty() && !peer_urls.is_empty() && !initial_cluster.is_empty() {
        let mut listed: Vec<&str> = Vec::new();
        let pairs = members(&initial_cluster);
        listed.extend(
            pairs
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, u)| u.as_str()),
        );
        let mut own: Vec<&str> = peer_urls.split(',').map(str::trim).collect();
        listed.sort_unstable();
        own.sort_unstable();
        let whose = match initial_cluster_source {
            ClusterSource::Flag => "--initial-cluster",
            ClusterSource::Backup => "the membership recorded in the backup",
            ClusterSource::Manifest => "etcd.yaml's --initial-cluster",
        };
        if listed.is_empty() {
            blockers.push(format!(
                "{whose} ({initial_cluster}) has no member {name:?}, this node's --name: list every member by the name in its etcd.yaml"
            ));
        } else if listed != own {
            blockers.push(format!(
                "{whose} gives member {name:?} the peer URL {}, but this node's etcd.yaml advertises {peer_urls}: pass --initial-cluster with every member's current peer URL, the same on every node",
                listed.join(",")
            ));
        }
    }
    // The restored cluster is a new cluster: a token of its own keeps any old member that still
    // runs from taking it for the old one. Derived from the backup id, so every member computes
    // the same one without coordinating (etcd.yaml's token, if any, names the old cluster).
    let token = match &args.initial_cluster_token {
        Some(t) if !t.is_empty() => t.clone(),
        _ => restore_token(&backup.id),
    };
    let old = node.host_path.clone().unwrap_or_else(|| data_dir.clone());
    if node.host_path.is_none() {
        warnings.push(
            "the etcd manifest has no etcd-data hostPath volume: treating --data-dir as the host path"
                .to_string(),
        );
    }
    let target = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_target(&old, &backup.id));
    if !old.is_empty() && target.as_path() == std::path::Path::new(&old) {
        blockers.push(format!(
            "the target data dir {} is the current data dir: etcdsafe restores into a new dir and keeps the old one; choose another --data-dir",
            target.display()
        ));
    }
    match node.target {
        TargetState::NotEmpty => blockers.push(format!(
            "the target data dir {} exists and is not empty: remove it or choose another --data-dir",
            target.display()
        )),
        TargetState::Missing | TargetState::Empty => {}
    }
    if let Some(free) = node.free_bytes {
        // The restored member: the bbolt file, plus the WAL and a snapshot file etcd writes.
        let needed = backup
            .total_size
            .saturating_mul(2)
            .saturating_add(128 << 20);
        if free < needed {
            blockers.push(format!(
                "not enough space for {}: {} free, {} needed (twice the database, plus 128 MiB for the WAL)",
                target.display(),
                crate::units::human_bytes(free),
                crate::units::human_bytes(needed)
            ));
        }
    }
    let mut bump_revision = None;
    match (args.engine, &node.tool) {
        // The native engine needs no tool and bumps on every etcd version.
        (Engine::Native, _) => bump_revision = args.bump_revision.filter(|n| *n > 0),
        (Engine::Etcdutl, None) => blockers.push(
            "no etcdutl (etcd 3.5+) or etcdctl (etcd 3.4) found on PATH: install the one matching your etcd, pass --etcdutl, or use --engine native"
                .to_string(),
        ),
        (Engine::Etcdutl, Some(tool)) if tool.supports_bump() => {
            bump_revision = args.bump_revision.filter(|n| *n > 0)
        }
        (Engine::Etcdutl, Some(_)) if args.bump_revision.is_none() => {}
        (Engine::Etcdutl, Some(tool)) => warnings.push(format!(
            "{} {}.{}.{} is too old to bump revisions (--bump-revision/--mark-compacted need etcd 3.5.10+ or 3.4.27+): the restored etcd goes back to revision {}. Kubernetes watch caches and informers that saw later revisions may not notice the change and keep stale objects until they relist; restart every component that watches (kube-controller-manager, kube-scheduler, kubelets, operators) after the restore, or use --engine native, which bumps on every etcd version",
            tool.path.display(),
            tool.version.0,
            tool.version.1,
            tool.version.2,
            backup.revision
        )),
    }
    if !name.is_empty() && !backup.member_name.is_empty() && name != backup.member_name {
        warnings.push(format!(
            "the backup was taken from member {:?}, this node is member {name:?}: fine for a restore (every member restores the same snapshot)",
            backup.member_name
        ));
    }
    let all = member_names(&initial_cluster);
    let other_members: Vec<(String, String)> =
        all.iter().filter(|(n, _)| *n != name).cloned().collect();
    if !other_members.is_empty() {
        warnings.push(format!(
            "this is a {}-member cluster: every other control-plane node ({}) must be restored from the same backup with the same --initial-cluster, token and restore tool version (the same revision bump), or they will not form one cluster; etcd serves only once {} members run the restored data",
            all.len(),
            other_members
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            quorum(all.len())
        ));
    }
    let other_members_command = if other_members.is_empty() {
        String::new()
    } else {
        let mut words = vec![
            "etcdsafe".to_string(),
            "restore".to_string(),
            shell_word(&backup.id),
            "--identity".to_string(),
        ];
        if let Some(revision) = args.at_revision {
            words.insert(3, format!("--at-revision={revision}"));
        }
        words.push(match &args.identity {
            Some(p) => shell_word(&p.display().to_string()),
            None => "KEY".to_string(),
        });
        if let Some(tool) = &args.etcdutl {
            words.push("--etcdutl".to_string());
            words.push(shell_word(&tool.display().to_string()));
        }
        // Every member must restore alike: the same engine and the same bump.
        if args.engine == Engine::Etcdutl && args.etcdutl.is_none() {
            words.push("--engine".to_string());
            words.push("etcdutl".to_string());
        }
        match args.bump_revision {
            None => words.push("--no-bump-revision".to_string()),
            Some(BUMP_REVISION) => {}
            Some(n) => {
                words.push("--bump-revision".to_string());
                words.push(n.to_string());
            }
        }
        if let Some(dir) = &args.data_dir {
            words.push("--data-dir".to_string());
            words.push(shell_word(&dir.display().to_string()));
        }
        if args.swap {
            words.push("--swap".to_string());
        }
        // Always given: kubeadm wrote a different list into each node's etcd.yaml.
        words.push("--initial-cluster".to_string());
        words.push(shell_word(&initial_cluster));
        if args.initial_cluster_token.is_some() {
            words.push("--initial-cluster-token".to_string());
            words.push(shell_word(&token));
        }
        words.push("--yes".to_string());
        words.join(" ")
    };
    if !node.apiserver_manifest {
        warnings.push("there is no kube-apiserver.yaml in the manifests dir: only etcd is stopped and started".to_string());
    }

    match (&backup.files, &args.restore_files) {
        (None, Some(_)) => blockers.push(format!(
            "backup {} has no control-plane files (include-files was not set when it was taken): restore without --restore-files",
            backup.id
        )),
        (Some(_), Some(root))
            if root.as_path() == std::path::Path::new("/")
                && !name.is_empty()
                && !backup.member_name.is_empty()
                && name != backup.member_name =>
        {
            blockers.push(format!(
                "the control-plane files in backup {} were kept on member {:?} and this is {name:?}: its node-specific certificates (etcd server and peer, apiserver) differ; put them under --files-root DIR and copy the shared ones (ca.*, sa.*, front-proxy-ca.*, etcd/ca.*, the encryption config) by hand",
                backup.id, backup.member_name
            ))
        }
        (Some(_), Some(root)) if root.as_path() == std::path::Path::new("/") => {
            // Putting back the static pod manifests or a data dir would start pods (or change
            // data) behind the restore's back.
            let overlaps = |a: &std::path::Path, b: &std::path::Path| {
                !a.as_os_str().is_empty()
                    && !b.as_os_str().is_empty()
                    && (a.starts_with(b) || b.starts_with(a))
            };
            let guarded = [
                node.manifests_dir.clone(),
                PathBuf::from(&old),
                target.clone(),
            ];
            for path in &backup.files_paths {
                if let Some(g) = guarded.iter().find(|g| overlaps(path, g)) {
                    blockers.push(format!(
                        "the backup's include-files path {} overlaps {}: putting it back would start pods or change etcd data behind the restore's back; use --files-root DIR and copy what you need by hand",
                        path.display(),
                        g.display()
                    ));
                }
            }
        }
        (Some(files), None) => warnings.push(format!(
            "backup {} also keeps control-plane files ({files}): they are left as they are; pass --restore-files to put them back",
            backup.id
        )),
        _ => {}
    }

    let tool_name = match args.engine {
        Engine::Native => "etcdsafe snapshot restore (native engine)".to_string(),
        Engine::Etcdutl => node
            .tool
            .as_ref()
            .map(|t| t.path.display().to_string())
            .unwrap_or_else(|| "etcdutl".to_string()),
    };
    let bump_text = match bump_revision {
        Some(n) => format!(" --bump-revision {n} --mark-compacted"),
        None => String::new(),
    };
    let mut steps = vec![
        (
            Step::Fetch,
            format!("download, decrypt, decompress and verify backup {} (revision {}, {} keys)", backup.id, backup.revision, backup.total_key),
        ),
        (
            Step::Preflight,
            format!("check again that {} is missing or empty and has room", target.display()),
        ),
        (
            Step::StopPods,
            "move kube-apiserver.yaml and etcd.yaml out of the manifests dir; wait until etcd is gone".to_string(),
        ),
        (
            Step::RestoreData,
            format!(
                "{tool_name} snapshot restore --name {name} --initial-cluster {initial_cluster} --initial-cluster-token {token} --initial-advertise-peer-urls {peer_urls} --data-dir {}{bump_text}",
                target.display()
            ),
        ),
    ];
    if let (Some(files), Some(root)) = (&backup.files, &args.restore_files) {
        steps.push((
            Step::RestoreFiles,
            format!(
                "put back the control-plane files ({files}) under {}; what they replace is kept for --rollback",
                root.display()
            ),
        ));
    }
    steps.push((
        Step::PointEtcd,
        if args.swap {
            format!(
                "rename {old} aside (kept), and {} to {old}",
                target.display()
            )
        } else {
            format!(
                "point etcd.yaml at {} (--data-dir and the etcd-data volume; every other byte unchanged); {old} is kept",
                target.display()
            )
        },
    ));
    steps.push((
        Step::StartEtcd,
        if other_members.is_empty() {
            format!(
                "move etcd.yaml back, wait until etcd is healthy at revision {}",
                backup.revision + bump_revision.unwrap_or(0) as i64
            )
        } else {
            format!(
                "move etcd.yaml back, wait until {} of the {} members run the restored data (restore the other members meanwhile) and this member serves revision {}",
                quorum(all.len()),
                all.len(),
                backup.revision + bump_revision.unwrap_or(0) as i64
            )
        },
    ));
    steps.push((
        Step::StartApiserver,
        "move kube-apiserver.yaml back, wait until it answers".to_string(),
    ));
    Plan {
        backup_id: backup.id.clone(),
        name,
        initial_cluster,
        initial_cluster_source,
        initial_cluster_token: token,
        initial_advertise_peer_urls: peer_urls,
        old_data_dir: PathBuf::from(old),
        target,
        swap: args.swap,
        bump_revision,
        expected_revision: backup.revision + bump_revision.unwrap_or(0) as i64,
        steps,
        warnings,
        blockers,
        other_members,
        other_members_command,
    }
}

impl Plan {
    pub fn render(&self) -> String {
        let mut out = format!(
            "restore plan for backup {} on member {}:\n",
            self.backup_id, self.name
        );
        for (i, (step, text)) in self.steps.iter().enumerate() {
            out.push_str(&format!("  {}. {:<16} {text}\n", i + 1, step.name()));
        }
        if !self.other_members.is_empty() {
            out.push_str(&format!(
                "on each other member ({}), from its own node, the same restore:\n  {}\n",
                self.other_members
                    .iter()
                    .map(|(n, u)| format!("{n} at {u}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.other_members_command
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for b in &self.blockers {
            out.push_str(&format!("blocked: {b}\n"));
        }
        out
    }

    /// The exact command to run on another member (same backup, same `--initial-cluster`; its
    /// name and peer URL come from its own etcd.yaml), or `None` when `member` is not one.
    pub fn command_for(&self, member: &str) -> Option<&str> {
        self.other_members
            .iter()
            .any(|(n, _)| n == member)
            .then_some(self.other_members_command.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFacts {
        NodeFacts {
            name: Some("cp1".into()),
            initial_advertise_peer_urls: Some("https://10.0.0.10:2380".into()),
            initial_cluster: Some("cp1=https://10.0.0.10:2380".into()),
            data_dir: Some("/var/lib/etcd".into()),
            host_path: Some("/var/lib/etcd".into()),
            apiserver_manifest: true,
            manifests_dir: "/etc/kubernetes/manifests".into(),
            target: TargetState::Missing,
            free_bytes: Some(10 << 30),
            tool: Some(ToolFacts {
                path: "/usr/bin/etcdutl".into(),
                kind: ToolKind::Etcdutl,
                version: (3, 5, 1),
            }),
        }
    }

    fn backup() -> BackupFacts {
        BackupFacts {
            id: "20260101T000000.000Z-rev42".into(),
            revision: 42,
            total_key: 50,
            total_size: 1 << 20,
            member_name: "cp1".into(),
            files: None,
            files_paths: vec![],
            members: vec![],
        }
    }

    /// The stock tool with the default bump: the cases below were written for it.
    fn args() -> PlanArgs {
        PlanArgs {
            engine: Engine::Etcdutl,
            bump_revision: Some(BUMP_REVISION),
            ..PlanArgs::default()
        }
    }

    #[test]
    fn table() {
        struct Case {
            what: &'static str,
            node: NodeFacts,
            args: PlanArgs,
            blockers: usize,
            warning: Option<&'static str>,
            check: fn(&Plan),
        }
        let with = |f: fn(&mut NodeFacts)| {
            let mut n = node();
            f(&mut n);
            n
        };
        let cases = vec![
            Case {
                what: "kubeadm single node, old tool",
                node: node(),
                args: args(),
                blockers: 0,
                warning: Some("too old to bump revisions"),
                check: |p| {
                    assert_eq!(
                        p.target,
                        PathBuf::from("/var/lib/etcd-restored-20260101T000000.000Z-rev42")
                    );
                    assert_eq!(
                        p.initial_cluster_token,
                        "etcdsafe-restore-20260101T000000.000Z-rev42"
                    );
                    assert_eq!(p.bump_revision, None);
                    assert_eq!(p.expected_revision, 42);
                    assert!(p.other_members.is_empty());
                    assert_eq!(p.steps.len(), 7);
                    assert!(p.warnings.iter().any(|w| w.contains("watch caches")));
                },
            },
            Case {
                what: "new tool bumps",
                node: with(|n| n.tool.as_mut().unwrap().version = (3, 5, 10)),
                args: args(),
                blockers: 0,
                warning: None,
                check: |p| {
                    assert_eq!(p.bump_revision, Some(BUMP_REVISION));
                    assert_eq!(p.expected_revision, 42 + BUMP_REVISION as i64);
                    assert!(p.steps[3]
                        .1
                        .contains("--bump-revision 1000000000 --mark-compacted"));
                },
            },
            Case {
                what: "etcdctl 3.4.27 bumps",
                node: with(|n| {
                    n.tool = Some(ToolFacts {
                        path: "etcdctl".into(),
                        kind: ToolKind::Etcdctl,
                        version: (3, 4, 27),
                    })
                }),
                args: args(),
                blockers: 0,
                warning: None,
                check: |p| assert!(p.bump_revision.is_some()),
            },
            Case {
                what: "token given",
                node: node(),
                args: PlanArgs {
                    initial_cluster_token: Some("tok".into()),
                    ..args()
                },
                blockers: 0,
                warning: None,
                check: |p| assert_eq!(p.initial_cluster_token, "tok"),
            },
            Case {
                what: "target not empty",
                node: with(|n| n.target = TargetState::NotEmpty),
                args: args(),
                blockers: 1,
                warning: None,
                check: |p| assert!(p.blockers[0].contains("not empty")),
            },
            Case {
                what: "explicit target equal to the old dir",
                node: node(),
                args: PlanArgs {
                    data_dir: Some("/var/lib/etcd".into()),
                    ..args()
                },
                blockers: 1,
                warning: None,
                check: |p| assert!(p.blockers[0].contains("is the current data dir")),
            },
            Case {
                what: "no disk space",
                node: with(|n| n.free_bytes = Some(1 << 20)),
                args: args(),
                blockers: 1,
                warning: None,
                check: |p| assert!(p.blockers[0].contains("not enough space")),
            },
            Case {
                what: "no tool",
                node: with(|n| n.tool = None),
                args: args(),
                blockers: 1,
                warning: None,
                check: |p| assert!(p.blockers[0].contains("--etcdutl")),
            },
            Case {
                what: "native engine: no tool needed, bumps on any etcd",
                node: with(|n| n.tool = None),
                args: PlanArgs {
                    engine: Engine::Native,
                    ..args()
                },
                blockers: 0,
                warning: None,
                check: |p| {
                    assert_eq!(p.bump_revision, Some(BUMP_REVISION));
                    assert_eq!(p.expected_revision, 42 + BUMP_REVISION as i64);
                    assert!(p.steps[3].1.contains("native engine"), "{}", p.steps[3].1);
                    assert!(p.steps[3]
                        .1
                        .contains("--bump-revision 1000000000 --mark-compacted"));
                },
            },
            Case {
                what: "native engine, old tool on PATH: no warning",
                node: node(),
                args: PlanArgs {
                    engine: Engine::Native,
                    ..args()
                },
                blockers: 0,
                warning: None,
                check: |p| {
                    assert!(
                        p.warnings.iter().all(|w| !w.contains("too old")),
                        "{:?}",
                        p.warnings
                    );
                    assert_eq!(p.bump_revision, Some(BUMP_REVISION));
                },
            },
            Case {
                what: "native engine, --no-bump-revision",
                node: with(|n| {
                    n.initial_cluster = Some("cp1=https://a:2380,cp2=https://b:2380".into());
                    n.initial_advertise_peer_urls = Some("https://a:2380".into());
                }),
                args: PlanArgs {
                    engine: Engine::Native,
                    bump_revision: None,
                    ..args()
                },
                blockers: 0,
                warning: Some("2-member cluster"),
                check: |p| {
                    assert_eq!(p.bump_revision, None);
                    assert_eq!(p.expected_revision, 42);
                    assert!(!p.steps[3].1.contains("--bump-revision"));
                    assert!(p.other_members_command.contains(" --no-bump-revision"));
                },
            },
            Case {
                what: "stock engine chosen: the others are told to use it too",
                node: with(|n| {
                    n.initial_cluster = Some("cp1=https://a:2380,cp2=https://b:2380".into());
                    n.initial_advertise_peer_urls = Some("https://a:2380".into());
                    n.tool.as_mut().unwrap().version = (3, 5, 10);
                }),
                args: PlanArgs {
                    bump_revision: Some(5000),
                    ..args()
                },
                blockers: 0,
                warning: Some("2-member cluster"),
                check: |p| {
                    assert_eq!(p.bump_revision, Some(5000));
                    assert!(p
                        .other_members_command
                        .contains(" --engine etcdutl --bump-revision 5000 "));
                },
            },
            Case {
                what: "missing name",
                node: with(|n| n.name = None),
                args: args(),
                blockers: 1,
                warning: None,
                check: |p| assert!(p.blockers[0].contains("--name")),
            },
            Case {
                what: "three members",
                node: with(|n| {
                    n.initial_advertise_peer_urls = Some("https://a:2380".into());
                    n.initial_cluster =
                        Some("cp1=https://a:2380,cp2=https://b:2380,cp3=https://c:2380".into())
                }),
                // The default engine: the command for the others names no engine.
                args: PlanArgs {
                    engine: Engine::Native,
                    ..args()
                },
                blockers: 0,
                warning: Some("3-member cluster"),
                check: |p| {
                    assert_eq!(
                        p.other_members,
                        vec![
                            ("cp2".into(), "https://b:2380".into()),
                            ("cp3".into(), "https://c:2380".into())
                        ]
                    );
                    assert_eq!(p.initial_cluster_source, ClusterSource::Manifest);
                    assert_eq!(
                        p.command_for("cp2"),
                        Some("etcdsafe restore 20260101T000000.000Z-rev42 --identity KEY --initial-cluster cp1=https://a:2380,cp2=https://b:2380,cp3=https://c:2380 --yes")
                    );
                    assert_eq!(p.command_for("cp1"), None);
                    assert!(p.steps[5].1.contains("2 of the 3 members"));
                },
            },
            Case {
                what: "swap",
                node: node(),
                args: PlanArgs {
                    data_dir: Some("/data/new".into()),
                    swap: true,
                    ..args()
                },
                blockers: 0,
                warning: None,
                check: |p| {
                    assert!(p.swap);
                    assert_eq!(p.target, PathBuf::from("/data/new"));
                    assert!(p.steps[4].1.contains("rename /var/lib/etcd aside"));
                },
            },
            Case {
                what: "hostPath differs from --data-dir",
                node: with(|n| n.host_path = Some("/mnt/etcd".into())),
                args: args(),
                blockers: 0,
                warning: None,
                check: |p| assert_eq!(p.old_data_dir, PathBuf::from("/mnt/etcd")),
            },
        ];
        for case in cases {
            let p = plan(&case.node, &backup(), &case.args);
            assert_eq!(
                p.blockers.len(),
                case.blockers,
                "{}: {:?}",
                case.what,
                p.blockers
            );
            if let Some(w) = case.warning {
                assert!(
                    p.warnings.iter().any(|x| x.contains(w)),
                    "{}: {:?}",
                    case.what,
                    p.warnings
                );
            }
            (case.check)(&p);
        }
    }

    /// kubeadm's three control-plane nodes: cp1 lists itself, cp2 lists cp1 and cp2, cp3 all.
    const CP1: &str = "cp1=https://10.0.0.11:2380";
    const CP12: &str = "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380";
    const CP123: &str =
        "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380,cp3=https://10.0.0.13:2380";

    fn recorded(list: &str) -> Vec<(String, Vec<String>)> {
        // MemberList's order is by id, not by name: reversed here so the plan must sort.
        member_names(list)
            .into_iter()
            .rev()
            .map(|(n, u)| (n, u.split(',').map(str::to_string).collect()))
            .collect()
    }

    fn kubeadm_node(name: &str, ip: &str, initial_cluster: &str) -> NodeFacts {
        NodeFacts {
            name: Some(name.into()),
            initial_advertise_peer_urls: Some(format!("https://{ip}:2380")),
            initial_cluster: Some(initial_cluster.into()),
            ..node()
        }
    }

    #[test]
    fn initial_cluster_table() {
        struct Case {
            what: &'static str,
            node: NodeFacts,
            members: Vec<(String, Vec<String>)>,
            flag: Option<&'static str>,
            initial_cluster: &'static str,
            source: ClusterSource,
            /// Every warning and blocker that mentions the initial cluster's origin.
            warning: Option<&'static str>,
            blocker: Option<&'static str>,
        }
        let cases = vec![
            Case {
                what: "cp1 (lists only itself) takes the recorded membership, and says why",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: recorded(CP123),
                flag: None,
                initial_cluster: CP123,
                source: ClusterSource::Backup,
                warning: Some("using the membership recorded in the backup, cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380,cp3=https://10.0.0.13:2380, not etcd.yaml's --initial-cluster=cp1=https://10.0.0.11:2380: kubeadm writes on each node only the members that existed when it joined"),
                blocker: None,
            },
            Case {
                what: "cp2 (lists cp1 and cp2) takes the recorded membership",
                node: kubeadm_node("cp2", "10.0.0.12", CP12),
                members: recorded(CP123),
                flag: None,
                initial_cluster: CP123,
                source: ClusterSource::Backup,
                warning: Some("not etcd.yaml's --initial-cluster=cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380"),
                blocker: None,
            },
            Case {
                what: "cp3 (lists all, in another order) takes the recorded membership silently",
                node: kubeadm_node(
                    "cp3",
                    "10.0.0.13",
                    "cp3=https://10.0.0.13:2380,cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380",
                ),
                members: recorded(CP123),
                flag: None,
                initial_cluster: CP123,
                source: ClusterSource::Backup,
                warning: None,
                blocker: None,
            },
            Case {
                what: "the flag wins over the recorded membership, with a warning when they differ",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: recorded(CP123),
                flag: Some(CP12),
                initial_cluster: CP12,
                source: ClusterSource::Flag,
                warning: Some("--initial-cluster differs from the membership recorded in the backup"),
                blocker: None,
            },
            Case {
                what: "the flag wins over etcd.yaml",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: vec![],
                flag: Some(CP123),
                initial_cluster: CP123,
                source: ClusterSource::Flag,
                warning: None,
                blocker: None,
            },
            Case {
                what: "a flag that is not a list",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: vec![],
                flag: Some("cp1"),
                initial_cluster: "",
                source: ClusterSource::Flag,
                warning: None,
                blocker: Some("is not NAME=PEER_URL"),
            },
            Case {
                what: "a flag without this member",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: vec![],
                flag: Some("cp2=https://10.0.0.12:2380"),
                initial_cluster: "cp2=https://10.0.0.12:2380",
                source: ClusterSource::Flag,
                warning: None,
                blocker: Some("--initial-cluster (cp2=https://10.0.0.12:2380) has no member \"cp1\""),
            },
            Case {
                what: "this node's address changed since the backup: blocked, not guessed",
                node: kubeadm_node("cp1", "10.0.0.99", "cp1=https://10.0.0.99:2380"),
                members: recorded(CP123),
                flag: None,
                initial_cluster: CP123,
                source: ClusterSource::Backup,
                warning: Some("using the membership recorded in the backup"),
                blocker: Some("the membership recorded in the backup gives member \"cp1\" the peer URL https://10.0.0.11:2380, but this node's etcd.yaml advertises https://10.0.0.99:2380: pass --initial-cluster"),
            },
            Case {
                what: "a node not in the recorded membership falls back to etcd.yaml",
                node: kubeadm_node("cp4", "10.0.0.14", "cp4=https://10.0.0.14:2380"),
                members: recorded(CP123),
                flag: None,
                initial_cluster: "cp4=https://10.0.0.14:2380",
                source: ClusterSource::Manifest,
                warning: Some("member \"cp4\" is not in the membership recorded in the backup"),
                blocker: None,
            },
            Case {
                what: "a member added but never started makes the record unusable",
                node: kubeadm_node("cp2", "10.0.0.12", CP12),
                members: {
                    let mut m = recorded(CP12);
                    m.push((String::new(), vec!["https://10.0.0.13:2380".into()]));
                    m
                },
                flag: None,
                initial_cluster: CP12,
                source: ClusterSource::Manifest,
                warning: Some("a member that never started"),
                blocker: None,
            },
            Case {
                what: "an old backup and a multi-member etcd.yaml: every node must use this list",
                node: kubeadm_node("cp2", "10.0.0.12", CP12),
                members: vec![],
                flag: None,
                initial_cluster: CP12,
                source: ClusterSource::Manifest,
                warning: Some("kubeadm writes a different --initial-cluster on each node, so every member must be restored with this same list"),
                blocker: None,
            },
            Case {
                what: "an old backup and a single-member etcd.yaml: maybe kubeadm's first node",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: vec![],
                flag: None,
                initial_cluster: CP1,
                source: ClusterSource::Manifest,
                warning: Some("kubeadm's first control-plane node lists only itself"),
                blocker: None,
            },
            Case {
                what: "a recorded single member: nothing to say",
                node: kubeadm_node("cp1", "10.0.0.11", CP1),
                members: recorded(CP1),
                flag: None,
                initial_cluster: CP1,
                source: ClusterSource::Backup,
                warning: None,
                blocker: None,
            },
            Case {
                what: "no list anywhere",
                node: NodeFacts {
                    initial_cluster: None,
                    ..node()
                },
                members: vec![],
                flag: None,
                initial_cluster: "",
                source: ClusterSource::Manifest,
                warning: None,
                blocker: Some("pass --initial-cluster NAME=PEER_URL"),
            },
        ];
        for case in cases {
            let b = BackupFacts {
                members: case.members.clone(),
                ..backup()
            };
            let a = PlanArgs {
                initial_cluster: case.flag.map(str::to_string),
                ..args()
            };
            let p = plan(&case.node, &b, &a);
            assert_eq!(p.initial_cluster, case.initial_cluster, "{}", case.what);
            assert_eq!(p.initial_cluster_source, case.source, "{}", case.what);
            let about_origin = |t: &&String| {
                !t.contains("-member cluster:")
                    && (t.contains("initial-cluster")
                        || t.contains("membership")
                        || t.contains("initial cluster"))
            };
            let warned: Vec<&String> = p.warnings.iter().filter(about_origin).collect();
            match case.warning {
                Some(w) => assert!(
                    warned.iter().any(|x| x.contains(w)),
                    "{}: {:?}",
                    case.what,
                    p.warnings
                ),
                None => assert!(warned.is_empty(), "{}: {:?}", case.what, p.warnings),
            }
            match case.blocker {
                Some(b) => assert!(
                    p.blockers.len() == 1 && p.blockers[0].contains(b),
                    "{}: {:?}",
                    case.what,
                    p.blockers
                ),
                None => assert!(p.blockers.is_empty(), "{}: {:?}", case.what, p.blockers),
            }
        }
    }

    #[test]
    fn command_for_the_other_members_is_exact() {
        let b = BackupFacts {
            members: recorded(CP123),
            ..backup()
        };
        let a = PlanArgs {
            identity: Some("/root/age key.txt".into()),
            etcdutl: Some("/usr/local/bin/etcdutl".into()),
            ..args()
        };
        let p = plan(&kubeadm_node("cp1", "10.0.0.11", CP1), &b, &a);
        let expected = format!(
            "etcdsafe restore 20260101T000000.000Z-rev42 --identity '/root/age key.txt' --etcdutl /usr/local/bin/etcdutl --initial-cluster {CP123} --yes"
        );
        assert_eq!(p.command_for("cp2"), Some(expected.as_str()));
        assert_eq!(p.command_for("cp3"), Some(expected.as_str()));
        assert_eq!(p.command_for("cp1"), None);
        assert_eq!(
            p.other_members,
            vec![
                ("cp2".to_string(), "https://10.0.0.12:2380".to_string()),
                ("cp3".to_string(), "https://10.0.0.13:2380".to_string())
            ]
        );
        let text = p.render();
        assert!(text.contains(&format!("\n  {expected}\n")), "{text}");
        assert!(text.contains(&format!("--initial-cluster {CP123} --initial-cluster-token etcdsafe-restore-20260101T000000.000Z-rev42 --initial-advertise-peer-urls https://10.0.0.11:2380")), "{text}");
        // A single member prints no command.
        let p = plan(&kubeadm_node("cp1", "10.0.0.11", CP1), &backup(), &a);
        assert!(p.other_members_command.is_empty() && p.command_for("cp2").is_none());
        // A point in time: every member restores the same revision, given as a number.
        let at = PlanArgs {
            at_revision: Some(4711),
            ..a
        };
        let p = plan(&kubeadm_node("cp1", "10.0.0.11", CP1), &b, &at);
        assert!(
            p.other_members_command.starts_with(
                "etcdsafe restore 20260101T000000.000Z-rev42 --at-revision=4711 --identity "
            ),
            "{}",
            p.other_members_command
        );
    }

    #[test]
    fn shell_words_and_member_names() {
        assert_eq!(
            shell_word("a=https://x:2380,b=https://y:2380"),
            "a=https://x:2380,b=https://y:2380"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(
            member_names("a=u1,b=u2,a=u3"),
            vec![
                ("a".to_string(), "u1,u3".to_string()),
                ("b".to_string(), "u2".to_string())
            ]
        );
        assert_eq!(
            initial_cluster_of(&[
                ("b".into(), vec!["u2".into()]),
                ("a".into(), vec!["u3".into(), "u1".into()])
            ]),
            "a=u1,a=u3,b=u2"
        );
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(5)), (1, 2, 2, 3));
    }

    #[test]
    fn tool_versions() {
        assert_eq!(
            parse_tool_version("etcdutl version: 3.5.1\nAPI version: 3.5\n"),
            Some((ToolKind::Etcdutl, (3, 5, 1)))
        );
        assert_eq!(
            parse_tool_version("etcdctl version: 3.4.23\nAPI version: 3.4\n"),
            Some((ToolKind::Etcdctl, (3, 4, 23)))
        );
        assert_eq!(parse_tool_version("etcd Version: 3.5.1"), None);
        let t = |v| ToolFacts {
            path: "x".into(),
            kind: ToolKind::Etcdutl,
            version: v,
        };
        assert!(!t((3, 5, 9)).supports_bump());
        assert!(t((3, 5, 10)).supports_bump());
        assert!(!t((3, 4, 26)).supports_bump());
        assert!(t((3, 4, 27)).supports_bump());
        assert!(t((3, 6, 0)).supports_bump());
    }

    #[test]
    fn steps_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
    }

    #[test]
    fn control_plane_files() {
        let with_files = BackupFacts {
            files: Some("7 entries from /etc/kubernetes/pki".into()),
            ..backup()
        };
        let restore_files = PlanArgs {
            restore_files: Some("/".into()),
            ..args()
        };
        // Kept in the backup, not asked for: a warning, no step.
        let p = plan(&node(), &with_files, &args());
        assert!(p.blockers.is_empty());
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("pass --restore-files")));
        assert!(!p.steps.iter().any(|(s, _)| *s == Step::RestoreFiles));
        // Asked for: a step between the data restore and pointing etcd at it.
        let p = plan(&node(), &with_files, &restore_files);
        assert!(p.blockers.is_empty(), "{:?}", p.blockers);
        let names: Vec<Step> = p.steps.iter().map(|(s, _)| *s).collect();
        let at = names.iter().position(|s| *s == Step::RestoreFiles).unwrap();
        assert_eq!(names[at - 1], Step::RestoreData);
        assert_eq!(names[at + 1], Step::PointEtcd);
        assert!(p.steps[at]
            .1
            .contains("(7 entries from /etc/kubernetes/pki) under /"));
        // Kept on another member: its node-specific certificates would be wrong here, unless
        // they go somewhere else to be looked at.
        let elsewhere = BackupFacts {
            member_name: "cp2".into(),
            ..with_files.clone()
        };
        let p = plan(&node(), &elsewhere, &restore_files);
        assert_eq!(p.blockers.len(), 1, "{:?}", p.blockers);
        assert!(p.blockers[0].contains("were kept on member \"cp2\""));
        let aside = PlanArgs {
            restore_files: Some("/tmp/files".into()),
            ..args()
        };
        assert!(plan(&node(), &elsewhere, &aside).blockers.is_empty());
        // A path that holds the static pod manifests is refused under /.
        let whole = BackupFacts {
            files_paths: vec!["/etc/kubernetes".into()],
            ..with_files.clone()
        };
        let p = plan(&node(), &whole, &restore_files);
        assert_eq!(p.blockers.len(), 1, "{:?}", p.blockers);
        assert!(p.blockers[0].contains("overlaps /etc/kubernetes/manifests"));
        // Asked for, but the backup has none: blocked before anything changes.
        let p = plan(&node(), &backup(), &restore_files);
        assert_eq!(p.blockers.len(), 1);
        assert!(p.blockers[0].contains("has no control-plane files"));
    }
}
