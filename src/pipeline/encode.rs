//! The encode stage: zstd, then age, cut into chunks for the store, hashed as they leave.

use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{spool, BackupError};
use crate::config::Compression;
use crate::crypto::Recipients;

/// Size of the chunks handed to the store.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Input per zstd worker job when compressing on several threads.
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// What the encode stage produced: the stored object's size and SHA-256.
pub struct Encoded {
    pub size: u64,
    pub sha256: [u8; 32],
    /// What the encoder read back from the spool (its input), when that was its input.
    pub read_back: Option<spool::ReadBack>,
}

pub struct EncodeHandle(
    std::io::Result<tokio::sync::oneshot::Receiver<Result<Encoded, BackupError>>>,
);

/// What the encoder reads.
pub enum Input {
    /// Chunks handed over in memory (the control-plane files archive).
    Batches(mpsc::Receiver<super::Batch>),
    /// The snapshot, read back from the spool file behind its writer.
    Spool(super::spool::Follower),
}

/// The nice value of the encoder thread and the zstd workers it starts: when CPU is short, the
/// stream (and so etcd's snapshot read) comes first and compression catches up from the spool.
/// Nice orders threads within one cgroup: it also yields to etcd where both share one (a host
/// process, a systemd service without its own slice), but in a Kubernetes pod it is the pod's CPU
/// limit that keeps etcdsafe from taking etcd's CPU.
const ENCODER_NICE: libc::c_int = 10;

pub fn start(
    compression: Compression,
    recipients: Recipients,
    input: Input,
    output: mpsc::Sender<Bytes>,
) -> EncodeHandle {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // Its own thread rather than the blocking pool's: the lowered priority stays with it (and
    // with the zstd workers it starts, which inherit it) and never reaches a pooled thread.
    let spawned = std::thread::Builder::new()
        .name("etcdsafe-encode".to_string())
        .spawn(move || {
            lower_priority();
            let _ = done_tx.send(encode(compression, recipients, input, output));
        });
    EncodeHandle(spawned.map(|_| done_rx))
}

/// Lowers this thread's CPU priority. Only an optimisation, so a failure is ignored.
fn lower_priority() {
    // SAFETY: plain integer arguments; on Linux the nice value is per thread (its tid).
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            ENCODER_NICE,
        );
    }
}

fn encode(
    compression: Compression,
    recipients: Recipients,
    input: Input,
    output: mpsc::Sender<Bytes>,
) -> Result<Encoded, BackupError> {
    let sink = ChunkSink::new(output);
    let encrypted = recipients.encrypt(sink).map_err(BackupError::Encode)?;
    let mut zstd = zstd::stream::write::Encoder::new(encrypted, compression.level)
        .map_err(BackupError::Encode)?;
    zstd.include_checksum(true).map_err(BackupError::Encode)?;
    if compression.threads > 0 {
        zstd.multithread(compression.threads)
            .map_err(BackupError::Encode)?;
        // zstd's default job is several windows per worker; small jobs keep the workers'
        // buffers (and so peak RSS) small at a small cost in ratio.
        zstd.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))
            .map_err(BackupError::Encode)?;
    }
    let read_back = match input {
        Input::Batches(mut batches) => {
            while let Some(batch) = batches.blocking_recv() {
                for chunk in batch.iter() {
                    zstd.write_all(chunk).map_err(BackupError::Encode)?;
                }
            }
            None
        }
        Input::Spool(mut follower) => {
            while follower.feed(&mut zstd)? {}
            Some(follower.read_back())
        }
    };
    let encrypted = zstd.finish().map_err(BackupError::Encode)?;
    let sink = encrypted.finish().map_err(BackupError::Encode)?;
    sink.close(read_back).map_err(BackupError::Encode)
}

impl EncodeHandle {
    pub async fn join(self) -> Result<Encoded, BackupError> {
        let done = self
            .0
            .map_err(|source| BackupError::EncoderNotStarted { source })?;
        done.await.map_err(|_| BackupError::EncoderVanished)?
    }
}

/// A `Write` that collects bytes into `CHUNK_SIZE` chunks and sends each, wrapped as the channel
/// wants it (`wrap`), to a blocking channel: the encoder's output to the upload task, and the
/// control-plane files archive to the encoder.
pub struct ChunkWriter<M> {
    output: mpsc::Sender<M>,
    wrap: fn(Bytes) -> M,
    /// Who stops taking chunks when the channel closes, for the error.
    receiver: &'static str,
    buffer: Vec<u8>,
}

impl<M> ChunkWriter<M> {
    pub fn new(output: mpsc::Sender<M>, wrap: fn(Bytes) -> M, receiver: &'static str) -> Self {
        ChunkWriter {
            output,
            wrap,
            receiver,
            buffer: Vec::with_capacity(CHUNK_SIZE),
        }
    }

    /// Sends what is buffered (call it after the last write).
    pub fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        self.output
            .blocking_send((self.wrap)(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::other(format!("the {} stopped", self.receiver)))
    }
}

impl<M> Write for ChunkWriter<M> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_SIZE - self.buffer.len();
        let take = room.min(data.len());
        self.buffer.extend_from_slice(&data[..take]);
        if self.buffer.len() == CHUNK_SIZE {
            self.send_buffer()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The encoder's output: chunks for the upload task, hashed and counted as they leave.
struct ChunkSink {
    chunks: ChunkWriter<Bytes>,
    sha256: Sha256,
    size: u64,
}

impl ChunkSink {
    fn new(output: mpsc::Sender<Bytes>) -> Self {
        ChunkSink {
            chunks: ChunkWriter::new(output, |chunk| chunk, "upload"),
            sha256: Sha256::new(),
            size: 0,
        }
    }

    fn close(mut self, read_back: Option<spool::ReadBack>) -> std::io::Result<Encoded> {
        self.chunks.send_buffer()?;
        Ok(Encoded {
            size: self.size,
            sha256: self.sha256.finalize().into(),
            read_back,
        })
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let take = self.chunks.write(data)?;
        self.sha256.update(&data[..take]);
        self.size += take as u64;
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
