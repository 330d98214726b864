//! The restore plan as a pure function of what was found on the node, the backup and the flags.
//!
//! `plan(node, backup, args)` decides the target data dir, the tool invocation and the steps,
//! and collects warnings (things a person should know) and blockers (reasons not to start).

use std::path::PathBuf;

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
    pub initial_cluster_token: Option<String>,
    pub data_dir: Option<String>,
    /// The `etcd-data` hostPath volume's path.
    pub host_path: Option<String>,
    pub apiserver_manifest: bool,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanArgs {
    pub data_dir: Option<PathBuf>,
    pub swap: bool,
    /// `--restore-files`, and where they go (`--files-root`).
    pub restore_files: Option<PathBuf>,
}

/// Everything the restore will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub backup_id: String,
    pub name: String,
    pub initial_cluster: String,
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
    /// Other members of `--initial-cluster` (name, peer URL), which need the same restore.
    pub other_members: Vec<(String, String)>,
}

/// The etcd default when `--initial-cluster-token` is not given (kubeadm does not give it).
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";

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
    let initial_cluster = need(&node.initial_cluster, "initial-cluster");
    let peer_urls = need(
        &node.initial_advertise_peer_urls,
        "initial-advertise-peer-urls",
    );
    let data_dir = need(&node.data_dir, "data-dir");
    let token = match &node.initial_cluster_token {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            warnings.push(format!(
                "the etcd manifest has no --initial-cluster-token (kubeadm omits it): using etcd's default {DEFAULT_CLUSTER_TOKEN:?}"
            ));
            DEFAULT_CLUSTER_TOKEN.to_string()
        }
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
    match &node.tool {
        None => blockers.push(
            "no etcdutl (etcd 3.5+) or etcdctl (etcd 3.4) found on PATH: install the one matching your etcd, or pass --etcdutl"
                .to_string(),
        ),
        Some(tool) if tool.supports_bump() => bump_revision = Some(BUMP_REVISION),
        Some(tool) => warnings.push(format!(
            "{} {}.{}.{} is too old to bump revisions (--bump-revision/--mark-compacted need etcd 3.5.10+ or 3.4.27+): the restored etcd goes back to revision {}. Kubernetes watch caches and informers that saw later revisions may not notice the change and keep stale objects until they relist; restart every component that watches (kube-controller-manager, kube-scheduler, kubelets, operators) after the restore, or use a newer etcdutl",
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
    let all = members(&initial_cluster);
    let other_members: Vec<(String, String)> =
        all.iter().filter(|(n, _)| *n != name).cloned().collect();
    if !other_members.is_empty() {
        warnings.push(format!(
            "this is a {}-member cluster: every other control-plane node ({}) must be restored from the same backup with the same --initial-cluster and token, or they will not form one cluster",
            all.len(),
            other_members
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !node.apiserver_manifest {
        warnings.push("there is no kube-apiserver.yaml in the manifests dir: only etcd is stopped and started".to_string());
    }

    match (&backup.files, &args.restore_files) {
        (None, Some(_)) => blockers.push(format!(
            "backup {} has no control-plane files (include-files was not set when it was taken): restore without --restore-files",
            backup.id
        )),
        (Some(files), None) => warnings.push(format!(
            "backup {} also keeps control-plane files ({files}): they are left as they are; pass --restore-files to put them back",
            backup.id
        )),
        _ => {}
    }

    let tool_name = node
        .tool
        .as_ref()
        .map(|t| t.path.display().to_string())
        .unwrap_or_else(|| "etcdutl".to_string());
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
        format!(
            "move etcd.yaml back, wait until etcd is healthy at revision {}",
            backup.revision + bump_revision.unwrap_or(0) as i64
        ),
    ));
    steps.push((
        Step::StartApiserver,
        "move kube-apiserver.yaml back, wait until it answers".to_string(),
    ));
    Plan {
        backup_id: backup.id.clone(),
        name,
        initial_cluster,
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
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for b in &self.blockers {
            out.push_str(&format!("blocked: {b}\n"));
        }
        out
    }

    /// The command to run on another member (same backup, same cluster, its own name and URL).
    pub fn command_for(&self, member: &str, peer_url: &str) -> String {
        format!(
            "etcdsafe restore {} --identity KEY --yes   # on {member}: its etcd.yaml must say --name={member} --initial-advertise-peer-urls={peer_url} --initial-cluster={}; the token {} is taken from it (or etcd's default)",
            self.backup_id, self.initial_cluster, self.initial_cluster_token
        )
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
            initial_cluster_token: None,
            data_dir: Some("/var/lib/etcd".into()),
            host_path: Some("/var/lib/etcd".into()),
            apiserver_manifest: true,
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
        }
    }

    fn args() -> PlanArgs {
        PlanArgs {
            data_dir: None,
            swap: false,
            restore_files: None,
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
                    assert_eq!(p.initial_cluster_token, "etcd-cluster");
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
                node: with(|n| n.initial_cluster_token = Some("tok".into())),
                args: args(),
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
                    swap: false,
                    restore_files: None,
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
                    n.initial_cluster =
                        Some("cp1=https://a:2380,cp2=https://b:2380,cp3=https://c:2380".into())
                }),
                args: args(),
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
                    assert!(p
                        .command_for("cp2", "https://b:2380")
                        .contains("--name=cp2"));
                },
            },
            Case {
                what: "swap",
                node: node(),
                args: PlanArgs {
                    data_dir: Some("/data/new".into()),
                    swap: true,
                    restore_files: None,
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
        // Asked for, but the backup has none: blocked before anything changes.
        let p = plan(&node(), &backup(), &restore_files);
        assert_eq!(p.blockers.len(), 1);
        assert!(p.blockers[0].contains("has no control-plane files"));
    }
}
