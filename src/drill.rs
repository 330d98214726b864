//! `etcdsafe drill`: proves a backup restores. Fetch it (all checks of `backups fetch`), restore
//! it with the stock tool into a scratch dir, start a throwaway etcd on loopback from it, and
//! check that it serves the backup's revision and exactly the live keys the snapshot holds.
//! Everything it made is removed afterwards. Runs where the private key is (off the cluster).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::catalog::Manifest;
use crate::crypto::Identities;
use crate::pipeline::fetch::{self, FetchError};
use crate::restore::steps::{detect_tool, snapshot_restore, Engine, RestoreInvocation, Restorer};
use crate::restore::RestoreError;
use crate::snapshot::{self, SnapshotError};
use crate::storage::ObjectStore;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("no etcdutl or etcdctl found: put one on PATH or pass --etcdutl")]
    NoTool,
    #[error("no etcd binary found: put one on PATH or pass --etcd")]
    NoEtcd,
    #[error("restoring the snapshot failed: {0}")]
    Restore(#[from] RestoreError),
    #[error("drill scratch dir {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the throwaway etcd from backup {id} did not serve within {seconds}s: {detail}")]
    NotServing {
        id: String,
        seconds: u64,
        detail: String,
    },
    #[error("backup {id} restored, but the etcd started from it disagrees: {what}")]
    Mismatch { id: String, what: String },
}

/// What a successful drill proved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    pub id: String,
    pub revision: i64,
    pub live_keys: u64,
    pub etcd_version: String,
    pub duration_seconds: f64,
}

/// Where the drill finds its tools.
#[derive(Debug, Clone, Default)]
pub struct DrillTools {
    pub etcd: Option<PathBuf>,
    pub etcdutl: Option<PathBuf>,
    /// Who restores the snapshot: the native engine (default) or the stock tool.
    pub engine: Engine,
}

struct Scratch {
    dir: PathBuf,
    etcd: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

use crate::tools::find_on_path;

/// Runs one drill of backup `id` in a scratch dir under `work_dir`.
pub async fn drill(
    store: &dyn ObjectStore,
    id: &str,
    identities: Identities,
    work_dir: &Path,
    tools: &DrillTools,
    trust: &crate::catalog::signature::Trust,
) -> Result<DrillReport, DrillError> {
    let started = Instant::now();
    let tool = match tools.engine {
        Engine::Native => None,
        Engine::Etcdutl => Some(detect_tool(tools.etcdutl.as_deref()).ok_or(DrillError::NoTool)?),
    };
    let etcd = tools
        .etcd
        .clone()
        .or_else(|| find_on_path("etcd"))
        .ok_or(DrillError::NoEtcd)?;
    let dir = work_dir.join(format!("drill-{}", std::process::id()));
    let scratch_err = |source| DrillError::Scratch {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(scratch_err)?;
    let mut scratch = Scratch {
        dir: dir.clone(),
        etcd: None,
    };
    let snapshot_file = dir.join("snapshot.db");
    let (manifest, _status) = fetch::fetch(store, id, identities, &snapshot_file, trust).await?;
    let file = snapshot_file.clone();
    let expected_keys = tokio::task::spawn_blocking(move || snapshot::live_keys(&file))
        .await
        .map_err(|e| DrillError::Scratch {
            path: dir.clone(),
            source: std::io::Error::other(e),
        })??;

    let (client_port, peer_port) = (
        free_port().map_err(scratch_err)?,
        free_port().map_err(scratch_err)?,
    );
    let peer = format!("http://127.0.0.1:{peer_port}");
    let client = format!("http://127.0.0.1:{client_port}");
    let data_dir = dir.join("data");
    let initial_cluster = format!("drill={peer}");
    snapshot_restore(&RestoreInvocation {
        restorer: match &tool {
            None => Restorer::Native,
            Some(t) => Restorer::Stock {
                tool: &t.path,
                kind: t.kind,
            },
        },
        snapshot: &snapshot_file,
        name: "drill",
        initial_cluster: &initial_cluster,
        initial_cluster_token: "etcdsafe-drill",
        initial_advertise_peer_urls: &peer,
        data_dir: &data_dir,
        bump_revision: None,
    })?;
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(scratch_err)?;
    let child = Command::new(&etcd)
        .arg("--name=drill")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg("--initial-cluster-token=etcdsafe-drill")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(scratch_err)?)
        .stderr(log)
        .spawn()
        .map_err(scratch_err)?;
    scratch.etcd = Some(child);
    let result = check_served(&manifest, &client, expected_keys).await;
    let log_tail = || {
        std::fs::read_to_string(dir.join("etcd.log"))
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let (revision, keys, version) = result.map_err(|e| match e {
        DrillError::NotServing {
            id,
            seconds,
            detail,
        } => DrillError::NotServing {
            id,
            seconds,
            detail: format!("{detail}; etcd's last log line: {}", log_tail()),
        },
        other => other,
    })?;
    drop(scratch);
    Ok(DrillReport {
        id: manifest.id,
        revision,
        live_keys: keys,
        etcd_version: version,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Waits for the throwaway etcd and compares what it serves with the backup.
async fn check_served(
    manifest: &Manifest,
    client_url: &str,
    expected_keys: u64,
) -> Result<(i64, u64, String), DrillError> {
    const WAIT: Duration = Duration::from_secs(30);
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = async {
            let mut client = etcd_client::Client::connect([client_url], None).await?;
            let status = client.status().await?;
            let count = client
                .get(
                    vec![0u8],
                    Some(
                        etcd_client::GetOptions::new()
                            .with_from_key()
                            .with_count_only(),
                    ),
                )
                .await?;
            let revision = count.header().map(|h| h.revision()).unwrap_or_default();
            Ok::<_, etcd_client::Error>((
                revision,
                count.count() as u64,
                status.version().to_string(),
            ))
        };
        let last = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok((revision, keys, version))) => {
                if revision != manifest.snapshot.revision {
                    return Err(DrillError::Mismatch {
                        id: manifest.id.clone(),
                        what: format!(
                            "it serves revision {revision}, the backup holds {}",
                            manifest.snapshot.revision
                        ),
                    });
                }
                if keys != expected_keys {
                    return Err(DrillError::Mismatch {
                        id: manifest.id.clone(),
                        what: format!(
                            "it serves {keys} keys, the snapshot holds {expected_keys} live keys"
                        ),
                    });
                }
                return Ok((revision, keys, version));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5s".to_string(),
        };
        if Instant::now() > deadline {
            return Err(DrillError::NotServing {
                id: manifest.id.clone(),
                seconds: WAIT.as_secs(),
                detail: last.replace('\n', " "),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes the drill's outcome as a Prometheus textfile (for node_exporter's textfile collector
/// or a push), atomically, keeping the last success across failures.
pub fn write_metrics_file(path: &Path, outcome: Result<&DrillReport, ()>) -> std::io::Result<()> {
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let read = |name: &str| {
        previous.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().to_string())
        })
    };
    let mut last_success = read("etcdsafe_drill_last_success_timestamp_seconds");
    let mut last_failure = read("etcdsafe_drill_last_failure_timestamp_seconds");
    let mut extra = String::new();
    match outcome {
        Ok(report) => {
            last_success = Some(now.to_string());
            extra = format!(
                "# HELP etcdsafe_drill_duration_seconds Duration of the last successful drill.\n# TYPE etcdsafe_drill_duration_seconds gauge\netcdsafe_drill_duration_seconds {}\n# HELP etcdsafe_drill_revision Revision served by the last successful drill.\n# TYPE etcdsafe_drill_revision gauge\netcdsafe_drill_revision {}\n",
                report.duration_seconds, report.revision
            );
        }
        Err(()) => last_failure = Some(now.to_string()),
    }
    let mut text = String::new();
    text.push_str("# HELP etcdsafe_drill_last_success_timestamp_seconds Unix time of the last restore drill that passed.\n# TYPE etcdsafe_drill_last_success_timestamp_seconds gauge\n");
    text.push_str(&format!(
        "etcdsafe_drill_last_success_timestamp_seconds {}\n",
        last_success.unwrap_or_else(|| "0".to_string())
    ));
    text.push_str("# HELP etcdsafe_drill_last_failure_timestamp_seconds Unix time of the last restore drill that failed.\n# TYPE etcdsafe_drill_last_failure_timestamp_seconds gauge\n");
    text.push_str(&format!(
        "etcdsafe_drill_last_failure_timestamp_seconds {}\n",
        last_failure.unwrap_or_else(|| "0".to_string())
    ));
    text.push_str(&extra);
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
