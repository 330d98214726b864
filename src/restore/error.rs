//! What can go wrong in a restore. Every variant names the thing (path, step, endpoint, backup)
//! and keeps its cause as a `#[source]`; the message says what to do next. Decisions are made
//! on variants, never on message text.

use std::path::PathBuf;
use std::time::Duration;

use super::judge::{Mismatch, NotReady};
use super::plan::Step;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: cannot make the path absolute: {source}")]
    Absolute {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no restore journal at {path}: nothing to {nothing_to} (pass --journal if it is elsewhere)"
    )]
    NoJournal {
        path: PathBuf,
        /// "resume" or "roll back".
        nothing_to: &'static str,
    },
    #[error("the restore of {backup_id} in {path} is already {state}: nothing to resume")]
    Finished {
        backup_id: String,
        path: PathBuf,
        /// "rolled back" or "complete".
        state: &'static str,
    },
    #[error(
        "name the backup to restore (an id, or latest), or use --list, --resume or --rollback"
    )]
    NoBackupNamed,
    #[error("--identity FILE is needed to decrypt the backup (or set ETCDSAFE_IDENTITY_FILE)")]
    NoIdentity,
    #[error("a restore of {backup_id} is in progress (journal {path}): continue it with `etcdsafe restore --resume` or undo it with `etcdsafe restore --rollback`")]
    InProgress { backup_id: String, path: PathBuf },
    #[error("cannot read {path}: {source} (is this a kubeadm control-plane node? set kubernetes.manifests-dir)")]
    NoEtcdManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restore not started, nothing was changed: {}", blockers.join("; "))]
    Blocked { blockers: Vec<String> },
    /// The backup could not be fetched or proved sound: nothing on the node was touched.
    #[error("restore not started, nothing was changed: {source}")]
    NotStarted {
        #[source]
        source: crate::pipeline::fetch::FetchError,
    },
    #[error("{source}; the restore did not start: nothing on this node was changed")]
    PointNotStarted {
        #[source]
        source: crate::deltas::apply::PointFetchError,
    },
    #[error("the journal {path} has no fetched backup: run `etcdsafe restore --rollback`, then start again")]
    NotFetched { path: PathBuf },
    #[error("the journal asks for no control-plane files: nothing to put back")]
    NoFilesInJournal,
    #[error("the control-plane files were put back under {root} but their index {index} is gone: put the originals back by hand before starting etcd")]
    FilesIndexGone { root: PathBuf, index: PathBuf },
    #[error("the target data dir {path} is not empty: remove it or choose another --data-dir")]
    TargetNotEmpty { path: PathBuf },
    #[error(
        "the fetched snapshot {path} is gone: run `etcdsafe restore --rollback` and start again"
    )]
    SnapshotGone { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        /// "creating", "removing", "reading", "writing"...
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("moving {from} to {to}: {source}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {tool}: {source}")]
    RunTool {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} snapshot restore failed ({status}): {}", stderr.trim())]
    ToolFailed {
        tool: PathBuf,
        status: std::process::ExitStatus,
        /// What the tool printed on stderr.
        stderr: String,
    },
    #[error("the kubelet did not stop etcd within {}: {still}. The manifests were moved out of the manifests dir; check the kubelet with `crictl ps --name etcd` and `journalctl -u kubelet`, then run `etcdsafe restore --resume` (or `etcdsafe restore --rollback` to put everything back)", humantime::format_duration(*timeout))]
    NotStopped {
        timeout: Duration,
        still: StillRunning,
    },
    /// `last` is in the message (trimmed of its closing punctuation, mid-sentence), so it is not
    /// a `#[source]`: a source is printed again after the message when the message lacks its
    /// exact text.
    #[error("etcd did not become healthy within {}: {}.{} Check the kubelet with `crictl ps --name etcd`, `crictl logs <id>` and `journalctl -u kubelet`; then `etcdsafe restore --resume` or `--rollback`",
        humantime::format_duration(*timeout),
        last.to_string().trim_end_matches(['.', '?']),
        if *multi_member { " A member of a multi-member cluster serves only once a quorum of members runs the same data: do the same on the other members (see above)." } else { "" })]
    NotHealthy {
        timeout: Duration,
        last: NotReady,
        multi_member: bool,
    },
    /// etcd runs but does not serve the restored data.
    #[error(transparent)]
    NotServing(#[from] Mismatch),
    #[error("a restore task of step {} did not finish: {source}", step.name())]
    Task {
        step: Step,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
    #[error(transparent)]
    Apiserver(#[from] super::readyz::ReadyzError),
    #[error(transparent)]
    Edit(#[from] super::edit::EditError),
    #[error(transparent)]
    Native(#[from] crate::native::restore::RestoreError),
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error(transparent)]
    EtcdManifest(#[from] crate::etcd::ManifestError),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Signers(#[from] crate::sshsig::SigError),
    #[error(transparent)]
    Trust(#[from] crate::catalog::signature::TrustError),
}

/// Why the kubelet has not stopped etcd yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StillRunning {
    /// The client URL still answers.
    Answers { endpoint: String },
    /// No answer, but etcd processes on the data dirs remain.
    Pids(Vec<u32>),
}

impl std::fmt::Display for StillRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StillRunning::Answers { endpoint } => write!(f, "{endpoint} still answers"),
            StillRunning::Pids(pids) => write!(
                f,
                "etcd is still running (pid {})",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl RestoreError {
    /// An I/O error on `path` while `action` ("creating", "removing", ...).
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RestoreError::Io {
            action,
            path,
            source,
        }
    }
}
