//! The spool stage: the snapshot as etcd sent it, on local disk, hashed as it arrives.
//!
//! The file is written around the page cache (`O_DIRECT`, see [`crate::storage::direct`]):
//! a multi-GB snapshot copied into freshly allocated cache pages costs more CPU than any other
//! step but compression, and it would push etcd's own database out of the node's page cache.
//! Nothing needs the spool in the page cache: the encoder reads it back from disk
//! ([`Follower`]), and the native verification takes its leaf pages from the digests computed
//! here as the bytes pass ([`crate::snapshot::digest`]), reading only the few other pages back.
//!
//! The encoder reads the spooled file behind the writer instead of taking the stream's chunks
//! from memory: the stream never waits for compression (etcd holds a read transaction open for
//! as long as the stream lasts), a slow encoder or upload leaves its backlog on disk rather
//! than in memory, and compression catches up on every core once the stream has ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::mpsc;

use super::{BackupError, Stage};
use crate::snapshot::{self, digest::DigestBuilder, digest::Digests, TrailerHasher};
use crate::storage::direct::{AlignedBuf, DirectFile, DirectReader, BLOCK};

/// What the spool stage saw. The file is complete and durable (fsynced).
pub struct Spooled {
    pub total_len: u64,
    pub stream_sha256: [u8; 32],
    pub db_sha256: [u8; 32],
    /// The leaf digests of the file, for the verification's walk.
    pub digests: Digests,
    /// The bytes written, to compare with what the encoder read back.
    pub written: ReadBack,
}

/// A length and CRC-32C of the spool's bytes. The encoder reads the spool back from disk, not
/// from memory, so the pipeline compares what it read with what was written (and verified)
/// before it calls the object a backup: a disk that returns other bytes fails the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBack {
    pub bytes: u64,
    pub crc32c: u32,
}

impl ReadBack {
    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.crc32c = crc32c::crc32c_append(self.crc32c, data);
    }
}

/// Memory the leaf digests may take (a 1 GiB database of Kubernetes objects needs about 4 MiB).
/// Past it, the rest of the file is written through the page cache, from where the walk reads
/// the leaves that have no digest.
pub(crate) const DIGEST_BUDGET: usize = 16 << 20;

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
    file: DirectReader,
    path: PathBuf,
    progress: Progress,
    read: ReadBack,
    buffer: AlignedBuf,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.progress.update(|w| w.reader_gone = true);
    }
}

impl Follower {
    /// Hands the next written bytes to `sink`; returns false once every byte was handed on.
    pub fn feed(&mut self, sink: &mut dyn Write) -> Result<bool, BackupError> {
        let written = match self.progress.wait_beyond(self.read.bytes) {
            Wait::More(written) => written,
            Wait::End => return Ok(false),
            Wait::Stopped => return Err(BackupError::SpoolStopped),
        };
        // The writer publishes whole blocks (and the tail last), so `read` stays aligned.
        let n = (written - self.read.bytes).min(BLOCK as u64) as usize;
        self.file
            .read_exact_at(&mut self.buffer, self.read.bytes, n)
            .map_err(|e| io_err("read back", &self.path, e))?;
        self.read.add(self.buffer.filled());
        sink.write_all(self.buffer.filled())
            .map_err(BackupError::Encode)?;
        Ok(true)
    }

    /// What was read so far.
    pub fn read_back(&self) -> ReadBack {
        self.read
    }
}

/// The encoder must have read back exactly the bytes the spool wrote.
pub fn check_read_back(written: &ReadBack, read: Option<&ReadBack>) -> Result<(), BackupError> {
    match read {
        Some(read) if read == written => Ok(()),
        Some(read) => Err(BackupError::ReadBack {
            read: *read,
            written: *written,
        }),
        None => Err(BackupError::SpoolNotRead),
    }
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Spool {
        path: path.to_path_buf(),
        action,
        hint: super::spool_dir::hint(&source),
        source,
    }
}

/// Creates `<id>.part` (0600: a snapshot is plaintext cluster state) and starts writing into
/// it. The [`Follower`] reads it back for the encoder.
pub fn start(
    path: PathBuf,
    batches: mpsc::Receiver<super::Batch>,
) -> Result<(SpoolHandle, Follower), BackupError> {
    start_with_budget(path, batches, DIGEST_BUDGET)
}

fn start_with_budget(
    path: PathBuf,
    mut batches: mpsc::Receiver<super::Batch>,
    digest_budget: usize,
) -> Result<(SpoolHandle, Follower), BackupError> {
    let file =
        DirectFile::create_new_with_mode(&path, 0o600).map_err(|e| io_err("create", &path, e))?;
    let progress = Progress::default();
    let follower = Follower {
        file: DirectReader::open(&path).map_err(|e| io_err("open", &path, e))?,
        path: path.clone(),
        progress: progress.clone(),
        read: ReadBack::default(),
        buffer: AlignedBuf::new(),
    };
    let handle = SpoolHandle(tokio::task::spawn_blocking(move || {
        let _ended = EndGuard(progress.clone());
        let mut out = Writer {
            file,
            buffer: AlignedBuf::new(),
            digests: DigestBuilder::new(digest_budget, snapshot::status::must_see),
            written: ReadBack::default(),
            progress,
        };
        let mut hasher = TrailerHasher::new();
        while let Some(batch) = batches.blocking_recv() {
            for chunk in batch {
                hasher.update(&chunk);
                out.push(&chunk).map_err(|e| io_err("write", &path, e))?;
            }
            if out.progress.reader_gone() {
                // Not this stage's failure: the encoder's (or the upload's) error is the cause.
                return Err(BackupError::EncoderStopped);
            }
        }
        let Writer {
            mut file,
            mut buffer,
            mut digests,
            mut written,
            progress,
        } = out;
        digests.update(buffer.filled());
        written.add(buffer.filled());
        let len = file
            .write_tail(&mut buffer)
            .map_err(|e| io_err("write", &path, e))?;
        // The follower reaches its end only when the stream passed etcd's trailer check: an
        // object is never finished from a cut or corrupt stream (the guard stops it instead).
        let check = hasher.finish(&path)?;
        progress.update(|w| {
            w.bytes = len;
            w.ended = Some(true);
        });
        // The encoder reads the tail meanwhile; the walk starts once the file is durable.
        file.sync().map_err(|e| io_err("fsync", &path, e))?;
        Ok(Spooled {
            total_len: check.total_len,
            stream_sha256: check.stream_sha256,
            db_sha256: check.db_sha256,
            digests: digests.finish(),
            written,
        })
    }));
    Ok((handle, follower))
}

struct Writer {
    file: DirectFile,
    buffer: AlignedBuf,
    digests: DigestBuilder,
    written: ReadBack,
    progress: Progress,
}

impl Writer {
    fn push(&mut self, mut chunk: &[u8]) -> std::io::Result<()> {
        while !chunk.is_empty() {
            let n = self.buffer.fill(chunk);
            chunk = &chunk[n..];
            if self.buffer.is_full() {
                // Whole blocks are whole pages, as the digests need.
                self.digests.update(self.buffer.filled());
                self.written.add(self.buffer.filled());
                if self.digests.stopped() {
                    self.file.stop_direct()?;
                }
                self.file.write_block(&mut self.buffer)?;
                self.buffer.clear();
                let written = self.file.offset();
                self.progress.update(|w| w.bytes = written);
            }
        }
        Ok(())
    }
}

impl SpoolHandle {
    pub async fn join(self) -> Result<Spooled, BackupError> {
        self.0.await.map_err(|source| BackupError::TaskFailed {
            stage: Stage::Spool,
            source,
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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

    /// Spools `stream` in uneven chunks with a digest budget; returns what the spool saw and
    /// what the follower read.
    async fn spool(path: &Path, stream: &[u8], budget: usize) -> (Spooled, Vec<u8>) {
        let (tx, rx) = mpsc::channel(64);
        let (handle, mut follower) = start_with_budget(path.to_path_buf(), rx, budget).unwrap();
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            while follower.feed(&mut out).unwrap() {}
            out
        });
        for (i, piece) in stream.chunks(100_003).enumerate() {
            let (a, b) = piece.split_at(piece.len().min(i * 977 % 50_000));
            tx.send(batch(&[a, b])).await.unwrap();
        }
        drop(tx);
        let read = reader.await.unwrap();
        (handle.join().await.unwrap(), read)
    }

    #[tokio::test]
    async fn the_spool_is_private_and_its_digests_give_the_status_a_full_read_gives() {
        use crate::snapshot::testdb;
        use std::os::unix::fs::PermissionsExt;
        let built = testdb::build(&testdb::etcd_like(30_000, 200), &testdb::Options::default());
        let stream = built.with_trailer();
        assert!(stream.len() > 3 * BLOCK, "{} bytes", stream.len());
        // On the machine's disk, where O_DIRECT works (a tmpfs refuses it).
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(&target).unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, [0u8; 4096]).unwrap();
        assert!(
            DirectReader::open(&probe).unwrap().is_direct(),
            "O_DIRECT refused on {}: this test would not test it",
            dir.path().display()
        );
        let plain = {
            let path = dir.path().join("reference.db");
            std::fs::write(&path, &stream).unwrap();
            snapshot::status(&path).unwrap()
        };
        // Every leaf digested, and a budget that runs out early (the rest of the file then goes
        // through the page cache, and the walk reads the leaves without a digest).
        for (name, budget) in [("all", usize::MAX), ("some", 100 << 10)] {
            let path = dir.path().join(format!("{name}.part"));
            let (spooled, read) = spool(&path, &stream, budget).await;
            assert_eq!(read, stream);
            assert_eq!(std::fs::read(&path).unwrap(), stream);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(spooled.total_len, stream.len() as u64);
            let digests = &spooled.digests;
            assert!(digests.len() > 100, "{name}: {} digests", digests.len());
            assert_eq!(
                digests.stopped_at().is_some(),
                budget != usize::MAX,
                "{name}"
            );
            assert_eq!(
                snapshot::status_with_digests(&path, digests).unwrap(),
                plain,
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_that_change_on_disk_before_they_are_read_back_fail_the_check() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.part");
        let mut stream: Vec<u8> = (0..3 * BLOCK + 5 * 4096).map(|i| (i % 253) as u8).collect();
        stream.extend_from_slice(&sha2::Sha256::digest(&stream[..]));
        let (tx, rx) = mpsc::channel(64);
        let (handle, mut follower) = start(path.clone(), rx).unwrap();
        for piece in stream.chunks(300_000) {
            tx.send(batch(&[piece])).await.unwrap();
        }
        drop(tx);
        let spooled = handle.join().await.unwrap();
        // The disk returns one byte changed, after the spool wrote (and hashed) the file.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"\xFF", (BLOCK + 5) as u64).unwrap();
        drop(file);
        let read = tokio::task::spawn_blocking(move || {
            let mut sink = std::io::sink();
            while follower.feed(&mut sink).unwrap() {}
            follower.read_back()
        })
        .await
        .unwrap();
        assert_eq!(read.bytes, stream.len() as u64);
        assert_eq!(spooled.written.bytes, stream.len() as u64);
        let err = check_read_back(&spooled.written, Some(&read)).unwrap_err();
        assert!(
            err.to_string().contains("differs from what etcd sent"),
            "{err}"
        );
        // Read back unchanged, it passes.
        assert!(check_read_back(&spooled.written, Some(&spooled.written)).is_ok());
        assert!(check_read_back(&spooled.written, None).is_err());
    }

    #[tokio::test]
    async fn the_follower_reads_back_every_byte_in_order() {
        let payload: Vec<u8> = (0..512 * 12_400).map(|i| (i % 251) as u8).collect();
        let (read, reached_end, spool_ok) = spool_and_follow(&payload, false).await;
        assert!(spool_ok);
        assert!(reached_end);
        assert!(read.len() > 3 * BLOCK);
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
            Err(e @ BackupError::EncoderStopped) => assert_eq!(e.stage(), Stage::Encode),
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
