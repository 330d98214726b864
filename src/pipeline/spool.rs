//! The spool stage: the snapshot as etcd sent it, on local disk, hashed as it arrives.
//!
//! Chunks are written as they are (gathered writes, no copy into a buffer), and writeback of
//! each written range is started right away, so the fsync at the end has little left to do. The
//! fsync itself runs beside the native verification (see [`Spooled::sync`]).
//!
//! The encoder reads the spooled file behind the writer ([`Follower`]) instead of taking the
//! stream's chunks from memory: the stream never waits for compression (etcd holds a read
//! transaction open for as long as the stream lasts), a slow encoder or upload leaves its
//! backlog on disk rather than in memory, and compression catches up on every core once the
//! stream has ended.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

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

/// How much of the spool file is written, shared by the writer and the [`Follower`].
#[derive(Clone, Default)]
struct Progress(Arc<(Mutex<Written>, Condvar)>);

#[derive(Default)]
struct Written {
    bytes: u64,
    /// `Some(true)`: every byte of the stream is written; `Some(false)`: the writer stopped.
    ended: Option<bool>,
    /// The follower is gone before the end (the encoder or the upload failed): the writer
    /// stops too, which stops the stream.
    reader_gone: bool,
}

/// Where a follower stands against the writer.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// This many bytes are written in all, more than the follower has read.
    More(u64),
    /// The follower has read everything and the writer is done.
    End,
    /// The writer stopped early; its own error says why.
    Stopped,
}

impl Progress {
    fn update(&self, change: impl FnOnce(&mut Written)) {
        let (state, changed) = &*self.0;
        change(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
        changed.notify_all();
    }

    fn reader_gone(&self) -> bool {
        let (state, _) = &*self.0;
        state.lock().unwrap_or_else(|e| e.into_inner()).reader_gone
    }

    /// Blocks until more than `have` bytes are written, or the writer ends.
    fn wait_beyond(&self, have: u64) -> Wait {
        let (state, changed) = &*self.0;
        let mut written = state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match (written.bytes > have, written.ended) {
                (_, Some(false)) => return Wait::Stopped,
                (true, _) => return Wait::More(written.bytes),
                (false, Some(true)) => return Wait::End,
                (false, None) => {
                    written = changed.wait(written).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// Marks the writer stopped when it returns early, fails or panics, so a follower never waits
/// for bytes that will not come.
struct EndGuard(Progress);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.update(|w| {
            if w.ended.is_none() {
                w.ended = Some(false);
            }
        });
    }
}

/// Reads the spool file behind its writer, in order, as the encoder's input.
pub struct Follower {
    file: File,
    path: PathBuf,
    progress: Progress,
    read: u64,
    buffer: Vec<u8>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.progress.update(|w| w.reader_gone = true);
    }
}

/// Bytes a follower reads at a time.
const FOLLOW_READ: usize = 1 << 20;

impl Follower {
    /// Hands the next written bytes to `sink`; returns false once every byte was handed on.
    pub fn feed(&mut self, sink: &mut dyn Write) -> Result<bool, BackupError> {
        let written = match self.progress.wait_beyond(self.read) {
            Wait::More(written) => written,
            Wait::End => return Ok(false),
            Wait::Stopped => {
                return Err(BackupError::Internal {
                    stage: Stage::Spool,
                    message: "the spool stopped before the end of the stream".to_string(),
                })
            }
        };
        let n = (written - self.read).min(FOLLOW_READ as u64) as usize;
        self.file
            .read_exact_at(&mut self.buffer[..n], self.read)
            .map_err(|e| io_err("read back", &self.path, e))?;
        self.read += n as u64;
        sink.write_all(&self.buffer[..n])
            .map_err(BackupError::Encode)?;
        Ok(true)
    }
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Spool {
        path: path.to_path_buf(),
        action,
        hint: crate::storage::io_hint(&source),
        source,
    }
}

/// Creates `<id>.part` (0600: a snapshot is plaintext cluster state) and starts writing into
/// it. The [`Follower`] reads it back for the encoder.
pub fn start(
    path: PathBuf,
    mut batches: mpsc::Receiver<super::Batch>,
) -> Result<(SpoolHandle, Follower), BackupError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("create", &path, e))?;
    let progress = Progress::default();
    let follower = Follower {
        file: File::open(&path).map_err(|e| io_err("open", &path, e))?,
        path: path.clone(),
        progress: progress.clone(),
        read: 0,
        buffer: vec![0; FOLLOW_READ],
    };
    let handle = SpoolHandle(tokio::task::spawn_blocking(move || {
        let _ended = EndGuard(progress.clone());
        let mut out = Writer {
            file,
            batch: Vec::with_capacity(WRITE_BATCH_CHUNKS),
            batch_len: 0,
            written: 0,
            writeback_from: 0,
            progress,
        };
        let mut hasher = TrailerHasher::new();
        while let Some(batch) = batches.blocking_recv() {
            for chunk in batch {
                hasher.update(&chunk);
                out.push(chunk).map_err(|e| io_err("write", &path, e))?;
            }
            if out.progress.reader_gone() {
                // Not this stage's failure: the encoder's (or the upload's) error is the cause.
                return Err(BackupError::Internal {
                    stage: Stage::Encode,
                    message: "the encoder stopped before the end of the stream".to_string(),
                });
            }
        }
        out.flush_batch().map_err(|e| io_err("write", &path, e))?;
        // The follower reaches its end only when the stream passed etcd's trailer check: an
        // object is never finished from a cut or corrupt stream (the guard stops it instead).
        let check = hasher.finish(&path)?;
        out.progress.update(|w| w.ended = Some(true));
        Ok(Spooled {
            total_len: check.total_len,
            stream_sha256: check.stream_sha256,
            db_sha256: check.db_sha256,
            file: out.file,
            path,
        })
    }));
    Ok((handle, follower))
}

struct Writer {
    file: File,
    batch: Vec<Bytes>,
    batch_len: usize,
    written: u64,
    writeback_from: u64,
    progress: Progress,
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
        let written = self.written;
        self.progress.update(|w| w.bytes = written);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(chunks: &[&[u8]]) -> super::super::Batch {
        chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()
    }

    /// Streams `payload` plus a trailer (correct, or with one byte flipped) through the spool
    /// in uneven chunks; returns what the follower read and how its reading ended.
    async fn spool_and_follow(payload: &[u8], corrupt_trailer: bool) -> (Vec<u8>, bool, bool) {
        use sha2::Digest;
        let mut stream = payload.to_vec();
        let mut trailer: [u8; 32] = sha2::Sha256::digest(payload).into();
        if corrupt_trailer {
            trailer[0] ^= 1;
        }
        stream.extend_from_slice(&trailer);
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (handle, mut follower) = start(dir.path().join("s.part"), rx).unwrap();
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let ended = loop {
                match follower.feed(&mut out) {
                    Ok(true) => {}
                    Ok(false) => break true,
                    Err(_) => break false,
                }
            };
            (out, ended)
        });
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            // Uneven chunks, an empty one among them.
            let n = rest.len().min(70_000 + i * 13);
            tx.send(batch(&[&rest[..n / 2], b"", &rest[n / 2..n]]))
                .await
                .unwrap();
            rest = &rest[n..];
            i += 1;
        }
        drop(tx);
        let (read, reached_end) = reader.await.unwrap();
        (read, reached_end, handle.join().await.is_ok())
    }

    #[tokio::test]
    async fn the_follower_reads_back_every_byte_in_order() {
        let payload: Vec<u8> = (0..512 * 6200).map(|i| (i % 251) as u8).collect();
        let (read, reached_end, spool_ok) = spool_and_follow(&payload, false).await;
        assert!(spool_ok);
        assert!(reached_end);
        assert!(read.len() > 2 * FOLLOW_READ);
        assert_eq!(&read[..payload.len()], &payload[..]);
        assert_eq!(read.len(), payload.len() + 32);
    }

    #[tokio::test]
    async fn the_follower_never_reaches_the_end_of_a_stream_that_fails_its_trailer_check() {
        let payload: Vec<u8> = (0..512 * 3000).map(|i| (i % 13) as u8).collect();
        let (_, reached_end, spool_ok) = spool_and_follow(&payload, true).await;
        assert!(!spool_ok, "the trailer mismatch is the spool's verdict");
        assert!(
            !reached_end,
            "the encoder must not finish an object from a corrupt stream"
        );
        // A stream cut short: no trailer at all.
        let (_, reached_end, spool_ok) = spool_and_follow(&payload[..1000], false).await;
        assert!(!spool_ok && !reached_end);
    }

    #[tokio::test]
    async fn the_writer_stops_when_its_follower_is_gone() {
        // The encoder failed (its follower dropped): the spool stops taking the stream, so the
        // stream stops instead of running to the end for nothing.
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(1);
        let (handle, follower) = start(dir.path().join("s.part"), rx).unwrap();
        drop(follower);
        let mut refused = false;
        for _ in 0..100 {
            if tx.send(batch(&[&[7u8; 4096]])).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(
            refused,
            "the spool kept taking chunks with nobody reading them"
        );
        match handle.join().await {
            Err(BackupError::Internal { stage, .. }) => assert_eq!(stage, Stage::Encode),
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("the spool finished without its follower"),
        }
    }

    #[test]
    fn a_follower_waits_for_bytes_and_learns_when_the_writer_stopped() {
        let progress = Progress::default();
        progress.update(|w| w.bytes = 10);
        assert_eq!(progress.wait_beyond(0), Wait::More(10));
        // Caught up: blocks until the writer moves on.
        let writer = progress.clone();
        let waiter = std::thread::spawn(move || writer.wait_beyond(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
        progress.update(|w| w.bytes = 25);
        assert_eq!(waiter.join().unwrap(), Wait::More(25));
        // A writer that ends normally: the rest, then the end.
        progress.update(|w| w.ended = Some(true));
        assert_eq!(progress.wait_beyond(10), Wait::More(25));
        assert_eq!(progress.wait_beyond(25), Wait::End);

        // A writer that fails or panics (its guard drops) stops the follower, even with bytes
        // left unread: they would be the start of an incomplete snapshot.
        let progress = Progress::default();
        let writer = progress.clone();
        let waiter = std::thread::spawn(move || writer.wait_beyond(0));
        let failing = progress.clone();
        let _ = std::thread::spawn(move || {
            let _guard = EndGuard(failing.clone());
            failing.update(|w| w.bytes = 5);
            panic!("the spool writer died");
        })
        .join();
        assert!(matches!(
            waiter.join().unwrap(),
            Wait::More(5) | Wait::Stopped
        ));
        assert_eq!(progress.wait_beyond(0), Wait::Stopped);
        assert_eq!(progress.wait_beyond(5), Wait::Stopped);
    }
}
