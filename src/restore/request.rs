//! What a caller asks of `restore::run`: plain data, whoever parsed it.

use std::path::PathBuf;
use std::time::Duration;

use super::steps::Engine;

/// What to do with the journal and the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Plan and run a restore of `RestoreRequest::id`.
    Restore,
    /// List what can be restored.
    List,
    /// Continue the restore in the journal.
    Resume,
    /// Undo the restore in the journal.
    Rollback,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequest {
    pub action: Action,
    /// The backup: an id, or `latest` (`Action::Restore`).
    pub id: Option<String>,
    /// The age identity that decrypts the backup.
    pub identity: Option<PathBuf>,
    /// Trust an unsigned backup although allowed signers are configured.
    pub allow_unsigned: bool,
    /// The new data dir [default: the current one + "-restored-<id>"].
    pub data_dir: Option<PathBuf>,
    /// Do not ask before each destructive step.
    pub yes: bool,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// The stock tool given by hand (repeated in the command for the other members).
    pub etcdutl: Option<PathBuf>,
    /// Who writes the restored data dir.
    pub engine: Engine,
    /// How far to move the revision past the backup's; `None`: not at all.
    pub bump_revision: Option<u64>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    /// Rename the data dirs instead of pointing etcd.yaml at the new one.
    pub swap: bool,
    /// Put the control-plane files back, under this root.
    pub restore_files: Option<PathBuf>,
    /// The restore journal.
    pub journal: PathBuf,
    /// How long the kubelet may take to stop or start a static pod.
    pub pod_timeout: Duration,
    /// A point of the backup's delta chain (`--at-*`) instead of the full backup.
    pub at: Option<crate::deltas::At>,
}
