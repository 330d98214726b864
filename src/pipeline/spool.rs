//! The spool stage: the snapshot as etcd sent it, on local disk, hashed as it arrives.

use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BackupError, Stage};
use crate::snapshot::TrailerHasher;

/// What the spool stage saw.
pub struct Spooled {
    pub total_len: u64,
    pub stream_sha256: [u8; 32],
    pub db_sha256: [u8; 32],
}

pub struct SpoolHandle(tokio::task::JoinHandle<Result<Spooled, BackupError>>);

/// Creates `<id>.part` (0600: a snapshot is plaintext cluster state) and starts writing into it.
pub fn start(path: PathBuf, mut chunks: mpsc::Receiver<Bytes>) -> Result<SpoolHandle, BackupError> {
    let io_err = |action, path: &PathBuf, source: std::io::Error| BackupError::Spool {
        path: path.clone(),
        action,
        hint: crate::storage::io_hint(&source),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("create", &path, e))?;
    Ok(SpoolHandle(tokio::task::spawn_blocking(move || {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hasher = TrailerHasher::new();
        while let Some(chunk) = chunks.blocking_recv() {
            out.write_all(&chunk)
                .map_err(|e| io_err("write", &path, e))?;
            hasher.update(&chunk);
        }
        let file = out
            .into_inner()
            .map_err(|e| io_err("write", &path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err("fsync", &path, e))?;
        let check = hasher.finish(&path)?;
        Ok(Spooled {
            total_len: check.total_len,
            stream_sha256: check.stream_sha256,
            db_sha256: check.db_sha256,
        })
    })))
}

impl SpoolHandle {
    pub async fn join(self) -> Result<Spooled, BackupError> {
        self.0.await.map_err(|e| BackupError::Internal {
            stage: Stage::Spool,
            message: e.to_string(),
        })?
    }
}
