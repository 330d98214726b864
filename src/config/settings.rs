//! The service's validated settings: schedules, the HTTP listener, coordination, shutdown.
//!
//! They live here, not in `config`, so the service reads its own settings without importing
//! the config module; `config` builds them from the file.

use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::Schedule;

/// Where the pod's namespace is when it runs with a service account.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How `etcdsafe run` schedules, serves and coordinates.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub schedule: Schedule,
    pub jitter: Duration,
    pub listen: std::net::SocketAddr,
    /// Bearer token for the API; required when `listen` is not loopback.
    pub token_file: Option<PathBuf>,
    pub coordination: Coordination,
    /// How long SIGTERM waits for a running backup before aborting it.
    pub shutdown_timeout: Duration,
    pub lease: LeaseSettings,
    /// When the integrity audit re-reads every stored object (weekly by default).
    pub audit_schedule: Schedule,
}

/// Which instance takes the scheduled snapshot when several run (a DaemonSet on every
/// control-plane node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Coordination {
    /// `etcd-leader`: the instance whose local etcd member is the raft leader (default).
    #[default]
    EtcdLeader,
    /// `none`: every instance takes every scheduled snapshot.
    None,
    /// `lease`: the instance holding a coordination.k8s.io/v1 Lease.
    Lease,
}

impl std::str::FromStr for Coordination {
    type Err = String;
    fn from_str(text: &str) -> Result<Coordination, String> {
        match text {
            "etcd-leader" => Ok(Coordination::EtcdLeader),
            "none" => Ok(Coordination::None),
            "lease" => Ok(Coordination::Lease),
            other => Err(format!(
                "{other:?}: use etcd-leader (the instance next to the etcd leader takes the snapshot), lease (a Kubernetes Lease) or none"
            )),
        }
    }
}

impl TryFrom<String> for Coordination {
    type Error = String;
    fn try_from(text: String) -> Result<Coordination, String> {
        text.parse()
    }
}

/// The Lease used by `coordination: lease`.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    /// `lease.namespace`; when absent, the pod's namespace (see [`LeaseSettings::namespace`]).
    pub namespace: Option<String>,
    /// Defaults to `$NODE_NAME`, then the hostname.
    pub identity: Option<String>,
}

impl LeaseSettings {
    /// The namespace of the Lease: the configured one, else the pod's (from its service
    /// account), else `etcdsafe`.
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "etcdsafe".to_string())
    }
}
