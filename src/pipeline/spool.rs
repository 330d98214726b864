//! The spool stage: the snapshot as etcd sent it, on local disk, hashed as it arrives.
//!
//! Chunks are written as they are (gathered writes, no copy into a buffer), and writeback of
//! each written range is started right away, so the fsync at the end has little left to do. The
//! fsync itself runs beside the native verification (see [`Spooled::sync`]).

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BackupError, Stage};
use crate::snapshot::TrailerHasher;

/// Bytes gathered into one `writev`.
const WRITE_BATCH: usize = 1 << 20;
/// At most this many chunks in one `writev` (well under IOV_MAX).
const WRITE_BATCH_CHUNKS: usize = 256;
/// Writeback of the written range is started every this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;

/// What the spool stage saw. The file is written but not yet fsynced.
pub struct Spooled {
    pub total_len: u64,
    pub stream_sha256: [u8; 32],
    pub db_sha256: [u8; 32],
    file: File,
    path: PathBuf,
}

impl Spooled {
    /// Makes the spooled file durable.
    pub fn sync(&self) -> Result<(), BackupError> {
        self.file
            .sync_all()
            .map_err(|e| io_err("fsync", &self.path, e))
    }
}

pub struct SpoolHandle(tokio::task::JoinHandle<Result<Spooled, BackupError>>);

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Spool {
        path: path.to_path_buf(),
        action,
        hint: crate::storage::io_hint(&source),
        source,
    }
}

/// Creates `<id>.part` (0600: a snapshot is plaintext cluster state) and starts writing into it.
pub fn start(
    path: PathBuf,
    mut batches: mpsc::Receiver<super::Batch>,
) -> Result<SpoolHandle, BackupError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("create", &path, e))?;
    Ok(SpoolHandle(tokio::task::spawn_blocking(move || {
        let mut out = Writer {
            file,
            batch: Vec::with_capacity(WRITE_BATCH_CHUNKS),
            batch_len: 0,
            written: 0,
            writeback_from: 0,
        };
        let mut hasher = TrailerHasher::new();
        while let Some(batch) = batches.blocking_recv() {
            for chunk in batch.iter() {
                hasher.update(chunk);
                out.push(chunk.clone())
                    .map_err(|e| io_err("write", &path, e))?;
            }
        }
        out.flush_batch().map_err(|e| io_err("write", &path, e))?;
        let check = hasher.finish(&path)?;
        Ok(Spooled {
            total_len: check.total_len,
            stream_sha256: check.stream_sha256,
            db_sha256: check.db_sha256,
            file: out.file,
            path,
        })
    })))
}

struct Writer {
    file: File,
    batch: Vec<Bytes>,
    batch_len: usize,
    written: u64,
    writeback_from: u64,
}

impl Writer {
    fn push(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if chunk.is_empty() {
            // writev of nothing but empty slices returns 0, which reads as a failed write.
            return Ok(());
        }
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= WRITE_BATCH || self.batch.len() >= WRITE_BATCH_CHUNKS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self.batch.iter().map(|c| IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.written += self.batch_len as u64;
        self.batch.clear();
        self.batch_len = 0;
        if self.written - self.writeback_from >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            crate::storage::start_writeback(
                self.file.as_raw_fd(),
                self.writeback_from,
                self.written,
            );
            self.writeback_from = self.written;
        }
        Ok(())
    }
}

impl SpoolHandle {
    pub async fn join(self) -> Result<Spooled, BackupError> {
        self.0.await.map_err(|e| BackupError::Internal {
            stage: Stage::Spool,
            message: e.to_string(),
        })?
    }
}
