//! One backup, stage by stage, in the order the bytes move:
//!
//! ```text
//! etcd Maintenance.Snapshot ──> spool thread: <spool>/<id>.part, SHA-256 + trailer check, fsync
//!                                  └─> encode thread, reading the file behind the writer:
//!                                      zstd -> age -> 1 MiB chunks ─> upload task -> store
//! then: verify the spooled file natively -> commit the object -> write the manifest (last)
//! ```
//!
//! Any failure aborts the upload, removes the spool files and writes no manifest, so a failed
//! run leaves nothing that looks like a backup; so does cancelling [`save_until`] (the CLI's
//! SIGINT/SIGTERM). A run that is killed cannot clean up: every run starts by removing the
//! spool files of runs that are gone, under a lock on the spool dir (`spool_dir.rs`).

mod encode;
pub mod fetch;
mod files;
mod spool;
pub(crate) mod spool_dir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use crate::catalog::{self, CatalogError, Manifest};
use crate::config::Config;
use crate::etcd::{self, EtcdError, Target};
use crate::snapshot::{self, SnapshotError};
use crate::storage::{ObjectStore, ObjectWriter, StorageError};

/// Chunks in flight between stages; memory use is bounded by this times the chunk sizes.
const CHANNEL_DEPTH: usize = 16;
/// Batches in flight from the stream to the spool.
const BATCH_DEPTH: usize = 4;
/// etcd sends the snapshot in 32 KiB messages; they go on in batches of about this size, so
/// the stream and the spool wake each other up (and switch threads) 32 times less often.
const BATCH_BYTES: usize = 1 << 20;

/// Chunks of the stream, in order (or of the control-plane files archive).
pub(crate) type Batch = Vec<Bytes>;

/// The stage a run failed in, for messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Preflight,
    Stream,
    Spool,
    Encode,
    Upload,
    Verify,
    Commit,
    /// The control-plane files object (`include-files`).
    Files,
}

impl Stage {
    /// Every stage, in pipeline order: the metric labels are made from this list.
    pub const ALL: [Stage; 9] = [
        Stage::Connect,
        Stage::Preflight,
        Stage::Stream,
        Stage::Spool,
        Stage::Encode,
        Stage::Upload,
        Stage::Verify,
        Stage::Commit,
        Stage::Files,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Preflight => "preflight",
            Stage::Stream => "stream",
            Stage::Spool => "spool",
            Stage::Encode => "encode",
            Stage::Upload => "upload",
            Stage::Verify => "verify",
            Stage::Commit => "commit",
            Stage::Files => "files",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    #[error("snapshot failed verification: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("spool-dir {path}: {action} failed: {source}{hint}")]
    Spool {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("spool-dir {path}: {free} bytes free, the snapshot needs about {needed}{others}: free space or point spool-dir at a larger disk")]
    SpoolFull {
        path: PathBuf,
        free: u64,
        needed: u64,
        /// The spool files of other runs found there, if any (empty, or "; it holds ...").
        others: String,
    },
    #[error("spool-dir {path} has mode {mode:o}, readable by others, and could not be made 0700 ({source}): run `chmod 700 {path}` as its owner, or set spool-dir to a private dir")]
    SpoolMode {
        path: PathBuf,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd at {endpoint} stopped sending the snapshot after {bytes} bytes ({source}): check etcd's health and logs (etcdctl endpoint health), then retry")]
    StreamCut {
        endpoint: String,
        bytes: u64,
        #[source]
        source: etcd::EtcdCause,
    },
    #[error("the backup was interrupted in its {stage} stage and abandoned: nothing was stored, its spool files were removed and its upload aborted")]
    Interrupted { stage: Stage },
    #[error("compressing and encrypting the snapshot failed: {0}")]
    Encode(#[source] std::io::Error),
    #[error("verified snapshot disagrees with what was streamed: etcd sent {sent} database bytes but the database's meta page says {meta}")]
    DatabaseLength { sent: u64, meta: u64 },
    #[error("verified snapshot disagrees with what was streamed: the spool file read back from disk ({} bytes, CRC-32C {:08x}) differs from what etcd sent ({} bytes, CRC-32C {:08x}); check the spool disk", read.bytes, read.crc32c, written.bytes, written.crc32c)]
    ReadBack {
        read: spool::ReadBack,
        written: spool::ReadBack,
    },
    /// `key`: the control-plane files object's key; `None` for the snapshot object.
    #[error("verified snapshot disagrees with what was streamed: the store holds {stored} bytes{} but {written} were written", key.as_ref().map(|k| format!(" of {k}")).unwrap_or_default())]
    StoredSize {
        key: Option<String>,
        stored: u64,
        written: u64,
    },
    /// A stage's task or thread panicked or was cancelled.
    #[error("the {stage} stage stopped unexpectedly: {source}")]
    TaskFailed {
        stage: Stage,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the encode stage stopped unexpectedly: cannot start the encoder thread: {source}")]
    EncoderNotStarted {
        #[source]
        source: std::io::Error,
    },
    #[error("the encode stage stopped unexpectedly: the encoder thread ended without a result")]
    EncoderVanished,
    /// The spool's follower (the encoder's input) saw the spool writer stop early.
    #[error(
        "the spool stage stopped unexpectedly: the spool stopped before the end of the stream"
    )]
    SpoolStopped,
    /// The spool writer saw its follower (the encoder) go away early.
    #[error(
        "the encode stage stopped unexpectedly: the encoder stopped before the end of the stream"
    )]
    EncoderStopped,
    #[error("the encode stage stopped unexpectedly: the encoder did not read the spool")]
    SpoolNotRead,
    /// The stream's hand-off to the spool was refused: a later stage failed (the cause).
    #[error("the stream stage stopped unexpectedly: a downstream stage stopped")]
    DownstreamStopped,
    #[error(
        "signing the manifest failed: {0}: fix signing.key-file (nothing was stored unsigned)"
    )]
    Signing(#[source] crate::sshsig::SigError),
}

impl BackupError {
    pub fn stage(&self) -> Stage {
        match self {
            BackupError::Etcd(EtcdError::Call { call, .. }) if call.starts_with("Snapshot") => {
                Stage::Stream
            }
            BackupError::Etcd(EtcdError::Timeout { call, .. }) if call.starts_with("Snapshot") => {
                Stage::Stream
            }
            BackupError::Etcd(_) => Stage::Connect,
            BackupError::Storage(_) => Stage::Upload,
            BackupError::Catalog(_) | BackupError::Signing(_) => Stage::Commit,
            BackupError::Snapshot(_)
            | BackupError::DatabaseLength { .. }
            | BackupError::ReadBack { .. }
            | BackupError::StoredSize { .. } => Stage::Verify,
            BackupError::Spool { .. } => Stage::Spool,
            BackupError::SpoolFull { .. } | BackupError::SpoolMode { .. } => Stage::Preflight,
            BackupError::StreamCut { .. } => Stage::Stream,
            BackupError::Interrupted { stage } => *stage,
            BackupError::Encode(_) => Stage::Encode,
            BackupError::Files(_) => Stage::Files,
            BackupError::TaskFailed { stage, .. } => *stage,
            BackupError::EncoderNotStarted { .. }
            | BackupError::EncoderVanished
            | BackupError::EncoderStopped
            | BackupError::SpoolNotRead => Stage::Encode,
            BackupError::SpoolStopped => Stage::Spool,
            BackupError::DownstreamStopped => Stage::Stream,
        }
    }
}

/// What a backup is for and how it is labelled.
#[derive(Debug, Clone)]
pub struct SaveRequest {
    pub reason: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for SaveRequest {
    fn default() -> Self {
        SaveRequest {
            reason: "manual".to_string(),
            labels: BTreeMap::new(),
        }
    }
}

/// Takes one backup through the whole pipeline and returns its manifest once it exists.
pub async fn save(
    config: &Config,
    store: &dyn ObjectStore,
    request: &SaveRequest,
) -> Result<Manifest, BackupError> {
    save_until(config, store, request, &CancellationToken::new()).await
}

/// Like [`save`], abandoned cleanly when `cancel` fires (the CLI's SIGINT/SIGTERM): the upload
/// is aborted, the spool files removed, and [`BackupError::Interrupted`] returned. Once the
/// snapshot's object is committed, the run finishes instead (writing the manifest is quick).
pub async fn save_until(
    config: &Config,
    store: &dyn ObjectStore,
    request: &SaveRequest,
    cancel: &CancellationToken,
) -> Result<Manifest, BackupError> {
    let started = Instant::now();
    let interrupted = |stage| async move {
        cancel.cancelled().await;
        BackupError::Interrupted { stage }
    };
    let connect = async {
        let target = Target::resolve(&config.etcd)?;
        let (endpoint, client) = target.connect_any().await?;
        Ok::<_, BackupError>((target, endpoint, client))
    };
    let (target, endpoint, mut client) = tokio::select! {
        biased;
        e = interrupted(Stage::Connect) => return Err(e),
        connected = connect => connected?,
    };
    let member = tokio::select! {
        biased;
        e = interrupted(Stage::Connect) => return Err(e),
        member = etcd::member_info(&mut client, &endpoint, target.dial_timeout) => member?,
    };
    let connect_seconds = started.elapsed().as_secs_f64();

    // Every run starts by removing the spool files of runs that are gone (killed, OOM) and
    // holds the spool dir's lock until its own files are removed.
    let preflight = async {
        store.preflight().await?;
        store
            .abort_stale(config.storage.abort_incomplete_after())
            .await?;
        let dir = config.spool_dir.clone();
        let db_size = member.db_size.max(0) as u64;
        tokio::task::spawn_blocking(move || spool_dir::prepare(&dir, db_size))
            .await
            .map_err(|source| BackupError::TaskFailed {
                stage: Stage::Preflight,
                source,
            })?
    };
    let lease = tokio::select! {
        biased;
        e = interrupted(Stage::Preflight) => return Err(e),
        lease = preflight => lease?,
    };

    // The signing key is read before anything is streamed: a backup that cannot be signed is
    // not taken.
    let signer = match &config.signing {
        Some(signing) => Some(signing.load_key().map_err(BackupError::Signing)?),
        None => None,
    };
    // Claim the id: `<id>.claim` is created exclusively, so two writers (two nodes, two CLI
    // runs) that picked the same millisecond never share a backup; the loser takes the next
    // millisecond. The data object is created exclusively too, so even a claim that is gone
    // (a run long ago, a clock that went back) can never overwrite a backup.
    let mut created_at = Utc::now();
    let claim = crate::storage::claim_key(store, 5, |attempt| {
        if attempt > 0 {
            created_at = Utc::now();
        }
        catalog::claim_key(&catalog::backup_id(created_at, member.revision))
    })
    .await?;
    let id = catalog::backup_id(created_at, member.revision);
    let data_key = catalog::data_key(&id);
    let span =
        info_span!("backup", backup_id = %id, reason = %request.reason, endpoint = %endpoint);
    async move {
        info!(
            db_size = member.db_size,
            revision = member.revision,
            "backup started"
        );
        let spool_part = config.spool_dir.join(format!("{id}.part"));
        let spool_db = config.spool_dir.join(format!("{id}.db"));
        // Removes the spool files however this run ends, cancellation included, and only
        // then gives up the spool dir's lock.
        let _spool_files = SpoolFiles {
            paths: vec![spool_part.clone(), spool_db.clone()],
            _lease: lease,
        };
        // The control-plane files first (small, and a wrong path fails before any streaming),
        // published only right before the manifest.
        let files = if config.include_files.is_empty() {
            None
        } else {
            match files::prepare(config, store, &id, cancel)
                .instrument(info_span!("stage", stage = "files"))
                .await
            {
                Ok(files) => Some(files),
                Err(e) => {
                    // Give up the id.
                    let _ = store.delete(&claim).await;
                    return Err(e);
                }
            }
        };
        let files_object = files.as_ref().map(|f| f.object.clone());
        let outcome = match store.create_new(&data_key).await {
            Ok(writer) => {
                run_stages(
                    config,
                    &target,
                    &endpoint,
                    &mut client,
                    writer,
                    &spool_part,
                    &spool_db,
                    cancel,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        let result = match outcome {
            Ok(done) => {
                let manifest = Manifest {
                    format_version: catalog::MANIFEST_FORMAT,
                    id: id.clone(),
                    created_at,
                    reason: request.reason.clone(),
                    labels: request.labels.clone(),
                    etcd: catalog::EtcdSource {
                        endpoint: endpoint.clone(),
                        cluster_id: format!("{:x}", member.cluster_id),
                        member_id: format!("{:x}", member.member_id),
                        member_name: member.member_name.clone(),
                        version: member.version.clone(),
                        members: member
                            .members
                            .iter()
                            .map(|m| catalog::ClusterMember {
                                id: format!("{:x}", m.id),
                                name: m.name.clone(),
                                peer_urls: m.peer_urls.clone(),
                            })
                            .collect(),
                    },
                    snapshot: catalog::SnapshotFacts {
                        revision: done.status.revision,
                        total_key: done.status.total_key,
                        hash: done.status.hash,
                        total_size: done.status.total_size,
                        size: done.stream_bytes,
                        sha256: hex::encode(done.stream_sha256),
                        db_sha256: hex::encode(done.db_sha256),
                        storage_version: done.status.version.clone(),
                    },
                    object: catalog::StoredObject {
                        key: data_key.clone(),
                        size: done.object_size,
                        sha256: hex::encode(done.object_sha256),
                        store: store.describe(),
                        compression: catalog::CompressionFacts {
                            algorithm: "zstd".to_string(),
                            level: config.compression.level,
                        },
                        encryption: catalog::EncryptionFacts {
                            algorithm: "age".to_string(),
                            recipients: config.encryption.public_keys(),
                        },
                    },
                    tool_version: crate::TOOL_VERSION.to_string(),
                    duration_seconds: started.elapsed().as_secs_f64(),
                    stage_seconds: {
                        let mut stages = done.stage_seconds.clone();
                        stages.insert("connect".to_string(), connect_seconds);
                        stages
                    },
                    files: files_object.clone(),
                };
                let commit = async {
                    if let Some(files) = files {
                        files.commit().await?;
                    }
                    // The signature first, then the manifest (exclusively): a visible backup
                    // is always a signed one when signing is on.
                    catalog::publish_manifest(store, &manifest, signer.as_ref()).await?;
                    Ok::<_, BackupError>(())
                }
                .instrument(info_span!("stage", stage = "commit"))
                .await;
                match commit {
                    Ok(()) => {
                        // The manifest holds the id now; the claim has done its work.
                        let _ = store.delete(&claim).await;
                        Ok(manifest)
                    }
                    Err(e) => {
                        // The manifest may be half-written or absent; either way remove the data.
                        // A manifest that already existed is another writer's: left alone.
                        let taken = matches!(
                            &e,
                            BackupError::Catalog(catalog::CatalogError::Storage(
                                crate::storage::StorageError::AlreadyExists { .. }
                            ))
                        );
                        if !taken {
                            let _ = store.delete(&catalog::manifest_key(&id)).await;
                        }
                        let _ = store.delete(&catalog::signature::signature_key(&id)).await;
                        let _ = store.delete(&data_key).await;
                        if let Some(files) = &files_object {
                            let _ = store.delete(&files.key).await;
                        }
                        let _ = store.delete(&claim).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                if let Some(files) = files {
                    files.abort().await;
                }
                // Give up the id. A data object this run did not commit is not deleted: when
                // its exclusive commit failed, the object there is another writer's.
                let _ = store.delete(&claim).await;
                Err(e)
            }
        };
        // Failures are returned, not logged: the caller (CLI or service) reports them once.
        if let Ok(m) = &result {
            info!(
                revision = m.snapshot.revision,
                snapshot_bytes = m.snapshot.size,
                stored_bytes = m.object.size,
                duration_seconds = m.duration_seconds,
                "backup stored"
            );
        }
        result
    }
    .instrument(span)
    .await
}

/// What the stages produced, before the manifest is written.
struct StagesDone {
    status: snapshot::Status,
    stream_bytes: u64,
    stream_sha256: [u8; 32],
    db_sha256: [u8; 32],
    object_size: u64,
    object_sha256: [u8; 32],
    stage_seconds: BTreeMap<String, f64>,
}

#[allow(clippy::too_many_arguments)]
async fn run_stages(
    config: &Config,
    target: &Target,
    endpoint: &str,
    client: &mut etcd_client::Client,
    writer: Box<dyn ObjectWriter>,
    spool_part: &Path,
    spool_db: &Path,
    cancel: &CancellationToken,
) -> Result<StagesDone, BackupError> {
    let (spool_tx, spool_rx) = mpsc::channel::<Batch>(BATCH_DEPTH);
    let (upload_tx, upload_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);

    let (spool, follower) = spool::start(spool_part.to_path_buf(), spool_rx)?;
    let encoder = encode::start(
        config.compression,
        config.encryption.clone(),
        encode::Input::Spool(follower),
        upload_tx,
    );
    let upload = tokio::spawn(pump_upload(writer, upload_rx, cancel.clone()));
    let stream_started = Instant::now();

    let streamed = stream_snapshot(target, endpoint, client, spool_tx, cancel)
        .instrument(info_span!("stage", stage = "stream"))
        .await;

    // Collect every stage, then report the root cause. A failing stage makes its neighbours
    // fail too: a dead upload stops the encoder, a stopped encoder stops the spool, a stopped
    // spool stops the stream and the encoder, and a stream stopped early leaves the spool
    // without a trailer. So: a real stream error first, then the spool's own I/O errors and
    // the upload (independent sinks), then the encoder, then the spool's trailer verdict (the
    // cause only when nothing else failed), and last the encoder's "the spool stopped".
    let streamed = match streamed {
        Err(BackupError::DownstreamStopped) => Ok(0),
        other => other,
    };
    let mut spooled = spool.join().await;
    // The spool holds every byte now, and the leaf digests made as they passed: the bbolt walk
    // (which reads back only the branch pages and the few leaves without a digest) starts
    // beside the encoder's and the upload's tail instead of after it.
    let walk = match (&streamed, &mut spooled) {
        (Ok(_), Ok(done)) => {
            let path = spool_part.to_path_buf();
            let digests = std::mem::take(&mut done.digests);
            Some(tokio::task::spawn_blocking(move || {
                snapshot::status_with_digests(&path, &digests)
            }))
        }
        _ => None,
    };
    let encoded = encoder.join().await;
    let (writer, uploaded) = upload.await.map_err(|source| BackupError::TaskFailed {
        stage: Stage::Upload,
        source,
    })?;
    let failed = streamed.is_err() || spooled.is_err() || uploaded.is_err() || encoded.is_err();
    if failed {
        let _ = writer.abort().await;
        let (spool_io, spool_verdict) = match spooled {
            // Its I/O errors, and its thread's panic.
            Err(
                e @ (BackupError::Spool { .. }
                | BackupError::TaskFailed {
                    stage: Stage::Spool,
                    ..
                }),
            ) => (Some(e), None),
            Err(e) => (None, Some(e)),
            Ok(_) => (None, None),
        };
        // The encoder stops when the spool stops short (its follower's error); the spool's own
        // error is the cause then, even its verdict.
        let (encoded, follower_stopped) = match encoded {
            Err(e @ BackupError::SpoolStopped) => (None, Some(e)),
            other => (other.err(), None),
        };
        let error = [
            streamed.err(),
            spool_io,
            uploaded.err(),
            encoded,
            spool_verdict,
            follower_stopped,
        ]
        .into_iter()
        .flatten()
        .next()
        .expect("an error was seen");
        return Err(error);
    }
    let spooled = spooled.expect("checked");
    let encoded = encoded.expect("checked");
    let mut stage_seconds = BTreeMap::new();
    stage_seconds.insert("stream".to_string(), stream_started.elapsed().as_secs_f64());
    let verify_started = Instant::now();

    let verified = async {
        // The trailer was checked as the bytes arrived (spool stage); re-hashing the file here
        // would only repeat that. What remains: the bbolt structure and status (the walk
        // started above), and that the database part is exactly as long as its meta page says.
        // Then the (fsynced) file is renamed.
        let status = walk.expect("started when the stream and the spool succeeded");
        let status = status.await.map_err(|source| BackupError::TaskFailed {
            stage: Stage::Verify,
            source,
        })??;
        std::fs::rename(spool_part, spool_db).map_err(|source| BackupError::Spool {
            path: spool_db.to_path_buf(),
            action: "rename",
            source,
            hint: "",
        })?;
        spool::check_read_back(&spooled.written, encoded.read_back.as_ref())?;
        let db_len = spooled.total_len - snapshot::TRAILER_LEN as u64;
        if db_len != status.total_size {
            return Err(BackupError::DatabaseLength {
                sent: db_len,
                meta: status.total_size,
            });
        }
        Ok((status, spooled))
    }
    .instrument(info_span!("stage", stage = "verify"))
    .await;
    let (status, spooled) = match verified {
        Ok(v) => v,
        Err(e) => {
            let _ = writer.abort().await;
            return Err(e);
        }
    };

    stage_seconds.insert("verify".to_string(), verify_started.elapsed().as_secs_f64());
    if cancel.is_cancelled() {
        let _ = writer.abort().await;
        return Err(BackupError::Interrupted {
            stage: Stage::Verify,
        });
    }
    let commit_started = Instant::now();
    let committed = writer
        .commit()
        .instrument(info_span!("stage", stage = "upload-commit"))
        .await?;
    if committed.size != encoded.size {
        return Err(BackupError::StoredSize {
            key: None,
            stored: committed.size,
            written: encoded.size,
        });
    }
    stage_seconds.insert("upload".to_string(), commit_started.elapsed().as_secs_f64());
    Ok(StagesDone {
        stage_seconds,
        status,
        stream_bytes: spooled.total_len,
        stream_sha256: spooled.stream_sha256,
        db_sha256: spooled.db_sha256,
        object_size: encoded.size,
        object_sha256: encoded.sha256,
    })
}

/// Reads the snapshot stream and hands every chunk to the spool and the encoder.
async fn stream_snapshot(
    target: &Target,
    endpoint: &str,
    client: &mut etcd_client::Client,
    spool_tx: mpsc::Sender<Batch>,
    cancel: &CancellationToken,
) -> Result<u64, BackupError> {
    let interrupted = || BackupError::Interrupted {
        stage: Stage::Stream,
    };
    let mut stream = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(interrupted()),
        stream = etcd::open_snapshot(client, endpoint, target.dial_timeout) => stream?,
    };
    let mut bytes = 0u64;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(interrupted()),
            chunk = etcd::next_chunk(&mut stream, endpoint, target.stream_timeout) => chunk,
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // The stream was open and broke off: etcd went away (killed, restarted, the
            // connection cut), not a call that etcd refused.
            Err(EtcdError::Call { source, .. }) => {
                return Err(BackupError::StreamCut {
                    endpoint: endpoint.to_string(),
                    bytes,
                    source,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            bytes += chunk.len() as u64;
            batch_bytes += chunk.len();
            batch.push(Bytes::from(chunk));
        }
        if batch_bytes >= BATCH_BYTES || (done && !batch.is_empty()) {
            let full = std::mem::take(&mut batch);
            batch_bytes = 0;
            let stopped = |_| BackupError::DownstreamStopped;
            spool_tx.send(full).await.map_err(stopped)?;
        }
        if done {
            break;
        }
    }
    info!(bytes, "snapshot stream complete");
    Ok(bytes)
}

/// Feeds encoded chunks to the store; returns the writer so the caller commits or aborts it.
/// Stops at `cancel`, which stops the encoder behind it (and so the spool and the stream).
async fn pump_upload(
    mut writer: Box<dyn ObjectWriter>,
    mut chunks: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) -> (Box<dyn ObjectWriter>, Result<u64, BackupError>) {
    let interrupted = BackupError::Interrupted {
        stage: Stage::Upload,
    };
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return (writer, Err(interrupted)),
            chunk = chunks.recv() => chunk,
        };
        let Some(chunk) = chunk else { break };
        bytes += chunk.len() as u64;
        let written = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            written = writer.write(chunk) => Some(written),
        };
        match written {
            None => return (writer, Err(interrupted)),
            Some(Err(e)) => return (writer, Err(e.into())),
            Some(Ok(())) => {}
        }
    }
    (writer, Ok(bytes))
}

/// Its home is [`crate::fsutil`]; kept here for callers of the pipeline's API.
pub use crate::fsutil::free_bytes;
pub(crate) use spool::DIGEST_BUDGET;
pub use spool_dir::spool_bytes_needed;

/// Spool files of one run, removed when the run ends however it ends; the run's lease on the
/// spool dir is given up only after that (fields drop after `drop`).
struct SpoolFiles {
    paths: Vec<PathBuf>,
    _lease: spool_dir::SpoolLease,
}

impl Drop for SpoolFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove spool file")
                }
            }
        }
    }
}
