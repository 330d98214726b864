//! The I/O of each restore step. Every step is idempotent: it checks what is already done.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::StillRunning;
use super::journal::{write_atomic, Journal};
use super::judge::{judge, Expected, NotReady, Observed, Read, Served, Verdict};
use super::plan::ToolKind;
use super::RestoreError;
use crate::config::Config;

pub const ETCD_YAML: &str = "etcd.yaml";
pub const APISERVER_YAML: &str = "kube-apiserver.yaml";

/// Renames `from` to `to` when `from` exists (idempotent), fsyncing the target dir.
pub fn move_file(from: &Path, to: &Path) -> Result<(), RestoreError> {
    if !from.exists() {
        return Ok(());
    }
    std::fs::rename(from, to).map_err(|source| RestoreError::Move {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })?;
    if let Some(dir) = to.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `host:port` of a URL such as `https://127.0.0.1:2379`.
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hp = rest.split('/').next()?;
    if hp.contains(':') {
        Some(hp.to_string())
    } else {
        None
    }
}

pub fn answers(host_port: &str) -> bool {
    host_port
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Processes whose command line is etcd with one of these data dirs (pid, cmdline).
pub fn etcd_processes(data_dirs: &[&str]) -> Vec<(u32, String)> {
    let norm = |s: &str| s.trim_end_matches('/').to_string();
    let dirs: Vec<String> = data_dirs.iter().map(|d| norm(d)).collect();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(argv0) = args.first() else { continue };
        if argv0.rsplit('/').next() != Some("etcd") {
            continue;
        }
        let mut data_dir = None;
        for (i, a) in args.iter().enumerate() {
            if let Some(v) = a.strip_prefix("--data-dir=") {
                data_dir = Some(v.to_string());
            } else if a == "--data-dir" {
                data_dir = args.get(i + 1).cloned();
            }
        }
        if data_dir.is_some_and(|d| dirs.contains(&norm(&d))) {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// Waits until the client URL stops answering and no etcd process with these data dirs remains.
pub fn wait_gone(
    endpoint: &str,
    data_dirs: &[&str],
    timeout: Duration,
) -> Result<(), RestoreError> {
    let deadline = Instant::now() + timeout;
    let hp = host_port(endpoint);
    loop {
        let listening = hp.as_deref().is_some_and(answers);
        let procs = etcd_processes(data_dirs);
        if !listening && procs.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let still = if listening {
                StillRunning::Answers {
                    endpoint: endpoint.to_string(),
                }
            } else {
                StillRunning::Pids(procs.iter().map(|p| p.0).collect())
            };
            return Err(RestoreError::NotStopped { timeout, still });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `Missing`, `Empty` or `NotEmpty`.
pub fn target_state(path: &Path) -> super::plan::TargetState {
    use super::plan::TargetState;
    match std::fs::read_dir(path) {
        Err(_) if !path.exists() => TargetState::Missing,
        Ok(rd) => {
            if rd.into_iter().next().is_none() {
                TargetState::Empty
            } else {
                TargetState::NotEmpty
            }
        }
        Err(_) => TargetState::NotEmpty,
    }
}

/// Free bytes on the filesystem of the nearest existing ancestor (home: [`crate::fsutil`]).
pub use crate::fsutil::free_bytes_for;

/// Finds the restore tool: `--etcdutl`, else etcdutl then etcdctl on PATH; asks it its version.
pub fn detect_tool(explicit: Option<&Path>) -> Option<super::plan::ToolFacts> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => ["etcdutl", "etcdctl"]
            .iter()
            .filter_map(|name| crate::tools::find_on_path(name))
            .collect(),
    };
    for path in candidates {
        let Ok(out) = std::process::Command::new(&path)
            .arg("version")
            .env("ETCDCTL_API", "3")
            .output()
        else {
            continue;
        };
        if let Some((kind, version)) =
            super::plan::parse_tool_version(&String::from_utf8_lossy(&out.stdout))
        {
            return Some(super::plan::ToolFacts {
                path,
                kind,
                version,
            });
        }
    }
    None
}

/// The path of the `etcd-data` hostPath volume.
pub fn etcd_data_host_path(text: &str) -> Option<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    doc["spec"]["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"].as_str() == Some("etcd-data"))?["hostPath"]["path"]
        .as_str()
        .map(str::to_string)
}

pub fn preflight(j: &Journal) -> Result<(), RestoreError> {
    use super::plan::TargetState;
    if target_state(&j.target) == TargetState::NotEmpty && !j.target.join("member").exists() {
        return Err(RestoreError::TargetNotEmpty {
            path: j.target.clone(),
        });
    }
    let snapshot = j.work_dir.join("snapshot.db");
    if !snapshot.exists() {
        return Err(RestoreError::SnapshotGone { path: snapshot });
    }
    Ok(())
}

pub fn stop_pods(j: &Journal, timeout: Duration) -> Result<(), RestoreError> {
    std::fs::create_dir_all(&j.held_dir).map_err(RestoreError::io("creating", &j.held_dir))?;
    for name in [APISERVER_YAML, ETCD_YAML] {
        move_file(&j.manifests_dir.join(name), &j.held_dir.join(name))?;
    }
    let endpoint = client_endpoint(j);
    wait_gone(&endpoint, &[&j.old_data_dir_flag], timeout)
}

pub fn client_endpoint(j: &Journal) -> String {
    crate::etcd::EtcdManifest::parse(Path::new(ETCD_YAML), &j.original_etcd_yaml)
        .ok()
        .and_then(|m| m.client_endpoint())
        .unwrap_or_else(|| "https://127.0.0.1:2379".to_string())
}

/// Which program writes the restored data dir: the restore engine seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// etcdsafe's own engine (`crate::native`): no etcd binary needed, bumps on every version.
    #[default]
    Native,
    /// The stock `etcdutl snapshot restore` (3.4: `etcdctl snapshot restore`) found on PATH or
    /// given with `--etcdutl`.
    Etcdutl,
}

impl Engine {
    /// The engine of a journal written before engines existed: the stock tool.
    pub fn before_engines() -> Engine {
        Engine::Etcdutl
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Etcdutl => "etcdutl",
        }
    }
}

/// How to run the chosen engine.
#[derive(Debug, Clone, Copy)]
pub enum Restorer<'a> {
    Native,
    Stock { tool: &'a Path, kind: ToolKind },
}

/// One snapshot restore into a new data dir: the same request whichever engine runs it.
pub struct RestoreInvocation<'a> {
    pub restorer: Restorer<'a>,
    pub snapshot: &'a Path,
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub initial_cluster_token: &'a str,
    pub initial_advertise_peer_urls: &'a str,
    pub data_dir: &'a Path,
    pub bump_revision: Option<u64>,
}

/// Restores with the invocation's engine; a failure names the engine and its cause.
pub fn snapshot_restore(r: &RestoreInvocation<'_>) -> Result<(), RestoreError> {
    match r.restorer {
        Restorer::Native => {
            let opts = crate::native::restore::RestoreOptions {
                data_dir: r.data_dir.to_path_buf(),
                wal_dir: None,
                name: r.name.to_string(),
                initial_cluster: r.initial_cluster.to_string(),
                initial_cluster_token: r.initial_cluster_token.to_string(),
                initial_advertise_peer_urls: r.initial_advertise_peer_urls.to_string(),
                skip_hash_check: false,
                bump_revision: r.bump_revision.unwrap_or(0),
                mark_compacted: r.bump_revision.is_some_and(|n| n > 0),
            };
            crate::native::restore::restore_file(r.snapshot, &opts)?;
            Ok(())
        }
        Restorer::Stock { tool, kind } => stock_restore(r, tool, kind),
    }
}

/// Runs the stock restore tool; a failure carries its stderr.
fn stock_restore(
    r: &RestoreInvocation<'_>,
    tool: &Path,
    kind: ToolKind,
) -> Result<(), RestoreError> {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg("snapshot")
        .arg("restore")
        .arg(r.snapshot)
        .arg(format!("--name={}", r.name))
        .arg(format!("--initial-cluster={}", r.initial_cluster))
        .arg(format!(
            "--initial-cluster-token={}",
            r.initial_cluster_token
        ))
        .arg(format!(
            "--initial-advertise-peer-urls={}",
            r.initial_advertise_peer_urls
        ))
        .arg(format!("--data-dir={}", r.data_dir.display()));
    if let Some(n) = r.bump_revision {
        cmd.arg(format!("--bump-revision={n}"))
            .arg("--mark-compacted");
    }
    if kind == ToolKind::Etcdctl {
        cmd.env("ETCDCTL_API", "3");
    }
    let out = cmd.output().map_err(|source| RestoreError::RunTool {
        tool: tool.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(RestoreError::ToolFailed {
            tool: tool.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

pub fn restore_data(j: &Journal) -> Result<(), RestoreError> {
    if j.target.join("member").exists() {
        return Ok(());
    }
    let tmp = PathBuf::from(format!("{}.etcdsafe-tmp", j.target.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(RestoreError::io("removing", &tmp))?;
    }
    let restored = snapshot_restore(&RestoreInvocation {
        restorer: match j.engine {
            Engine::Native => Restorer::Native,
            Engine::Etcdutl => Restorer::Stock {
                tool: &j.tool,
                kind: j.tool_kind,
            },
        },
        snapshot: &j.work_dir.join("snapshot.db"),
        name: &j.name,
        initial_cluster: &j.initial_cluster,
        initial_cluster_token: &j.initial_cluster_token,
        initial_advertise_peer_urls: &j.initial_advertise_peer_urls,
        data_dir: &tmp,
        bump_revision: j.bump_revision,
    });
    if let Err(e) = restored {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if j.target.exists() {
        // Empty (checked by preflight).
        std::fs::remove_dir(&j.target).map_err(RestoreError::io("removing empty", &j.target))?;
    }
    rename(&tmp, &j.target)?;
    if let Some(parent) = j.target.parent() {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Renames `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> Result<(), RestoreError> {
    std::fs::rename(from, to).map_err(|source| RestoreError::Move {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

pub fn swap_aside(j: &Journal) -> PathBuf {
    PathBuf::from(format!(
        "{}.etcdsafe-old-{}",
        j.old_data_dir.display(),
        j.backup_id
    ))
}

pub fn point_etcd(j: &mut Journal) -> Result<(), RestoreError> {
    if j.swap {
        let aside = swap_aside(j);
        if j.old_data_dir.exists() && !aside.exists() && j.target.exists() {
            rename(&j.old_data_dir, &aside)?;
        }
        j.swapped_aside = Some(aside);
        if j.target.exists() && !j.old_data_dir.exists() {
            rename(&j.target, &j.old_data_dir)?;
        }
        return Ok(());
    }
    let held = j.held_dir.join(ETCD_YAML);
    let text = std::fs::read_to_string(&held).map_err(RestoreError::io("reading", &held))?;
    let target = j.target.display().to_string();
    let flags = crate::etcd::kubeadm::first_container_flags(&text);
    if flags.iter().any(|(n, v)| n == "data-dir" && *v == target) {
        return Ok(());
    }
    let edited = super::edit::rewrite_data_dir(
        &text,
        &j.old_data_dir_flag,
        &j.old_data_dir.display().to_string(),
        &target,
    )?;
    write_atomic(&held, edited.text.as_bytes()).map_err(RestoreError::io("writing", &held))
}

/// gRPC's OUT_OF_RANGE: etcd's answer to a read at a compacted (or future) revision.
const GRPC_OUT_OF_RANGE: i32 = 11;

/// Connects with the configured TLS (or `endpoint` when no endpoint is configured) and waits
/// until `judge` finds that etcd serves (has a leader and answers a linearizable read, and with
/// `expected`, the restored data). A member of several serves nothing until a quorum runs:
/// `quorum_note` is printed once, when the first attempt finds it not ready, and the wait goes
/// on until `timeout`.
pub async fn wait_etcd(
    config: &Config,
    endpoint: &str,
    timeout: Duration,
    expected: Option<Expected>,
    quorum_note: Option<&str>,
) -> Result<Served, RestoreError> {
    let mut target = crate::etcd::Target::resolve(&config.etcd)?;
    // This member only (with the config's TLS): another node's etcd proves nothing about it.
    target.endpoints = vec![endpoint.to_string()];
    let deadline = Instant::now() + timeout;
    let mut noted = false;
    loop {
        let verdict = match observe_etcd(&target, expected.map(|e| e.revision)).await {
            Ok(observed) => judge(observed, expected),
            Err(why) => Verdict::NotYet(why),
        };
        let why = match verdict {
            Verdict::Serves(served) => return Ok(served),
            Verdict::Wrong(mismatch) => return Err(mismatch.into()),
            Verdict::NotYet(why) => why,
        };
        if let (Some(note), false) = (quorum_note, noted) {
            eprintln!("{note}");
            noted = true;
        }
        if Instant::now() >= deadline {
            return Err(RestoreError::NotHealthy {
                timeout,
                last: why,
                multi_member: quorum_note.is_some(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asks the member its status, then (with a leader) counts its keys, and with a restored
/// revision, its keys at that revision. Fails only when nothing could be asked.
async fn observe_etcd(
    target: &crate::etcd::Target,
    restored_revision: Option<i64>,
) -> Result<Observed, NotReady> {
    let (endpoint, mut client) = target.connect_any().await?;
    let timeout = target.dial_timeout;
    let status = crate::etcd::timed(&endpoint, "Status", timeout, client.status()).await?;
    let mut observed = Observed {
        has_leader: status.leader() != 0,
        revision: status.header().map(|h| h.revision()).unwrap_or(0),
        cluster_id: status.header().map(|h| h.cluster_id()).unwrap_or(0),
        keys: Read::Skipped,
        at_restored: Read::Skipped,
        endpoint,
    };
    if !observed.has_leader {
        return Ok(observed);
    }
    let count = |options| count_keys(client.clone(), &observed.endpoint, timeout, options);
    let keys = count(etcd_client::GetOptions::new()).await;
    let at_restored = match (&keys, restored_revision) {
        (Read::Keys(_), Some(rev)) => {
            count(
                etcd_client::GetOptions::new()
                    .with_serializable()
                    .with_revision(rev),
            )
            .await
        }
        _ => Read::Skipped,
    };
    observed.keys = keys;
    observed.at_restored = at_restored;
    Ok(observed)
}

/// Counts every key with `options`; a failure records whether etcd answered OUT_OF_RANGE.
async fn count_keys(
    mut client: etcd_client::Client,
    endpoint: &str,
    timeout: Duration,
    options: etcd_client::GetOptions,
) -> Read {
    let mut out_of_range = false;
    let call = async {
        let answer = client
            .get("", Some(options.with_all_keys().with_count_only()))
            .await;
        if let Err(etcd_client::Error::GRpcStatus(status)) = &answer {
            out_of_range = i32::from(status.code()) == GRPC_OUT_OF_RANGE;
        }
        answer
    };
    let answer = crate::etcd::timed(endpoint, "Range", timeout, call).await;
    match answer {
        Ok(r) => Read::Keys(r.count().max(0) as u64),
        Err(error) => Read::Failed {
            error,
            out_of_range,
        },
    }
}
