//! A fetch at a point in time: the full backup's snapshot, fetched and proved sound as
//! `backups fetch` does (while the planned segments are downloaded, checked and decoded into a
//! local file of entries beside it), then every event of the segments up to the point appended
//! into the database's `key` bucket at its original revision and sub-revision, in one
//! copy-on-write transaction that also sets the `lease` table (as of the last seal at or
//! before the point) and the compaction etcd had recorded. The result gets a fresh SHA-256
//! trailer (so stock `etcdutl snapshot status|restore` accept it) and is walked natively
//! before it is renamed into place. Nothing appears at the output path on any failure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::io::SyncIoBridge;

use super::chain::{self, At, Plan, PointError};
use super::segment::{ReadError, RecordReader, SegmentManifest};
use super::DeltaError;
use crate::catalog::signature::{Trust, TrustError};
use crate::crypto::{CryptoError, Identities};
use crate::native::bolt_append::{self, AppendError};
use crate::native::bolt_patch::{self, BucketEdit, PatchError};
use crate::pipeline::fetch::{Check, FetchError};
use crate::snapshot::{self, SnapshotError, TRAILER_LEN};
use crate::storage::ObjectStore;

/// etcd's buckets and meta keys the fetch writes.
const KEY_BUCKET: &[u8] = b"key";
const LEASE_BUCKET: &[u8] = b"lease";
const META_BUCKET: &[u8] = b"meta";
const SCHEDULED_COMPACT_KEY: &[u8] = crate::native::restore::SCHEDULED_COMPACT_KEY;
const FINISHED_COMPACT_KEY: &[u8] = crate::native::restore::FINISHED_COMPACT_KEY;

#[derive(Debug, thiserror::Error)]
pub enum PointFetchError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Point(#[from] PointError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    #[error("backup {id} cannot be the base for revision {revision}: {why}")]
    BadBase {
        id: String,
        revision: i64,
        why: String,
    },
    #[error("segment {key}: {source}; fetch a revision before {first} or take a new full backup")]
    Segment {
        key: String,
        first: i64,
        #[source]
        source: Box<SegmentError>,
    },
    #[error("applying the changes to {path} failed: {source}")]
    Apply {
        path: PathBuf,
        #[source]
        source: PatchError,
    },
    #[error("the result {path} failed the native check: {source}; nothing was written")]
    Result {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error("the result {path} ends at revision {actual}, not {expected}: the segments do not hold what their manifests say; nothing was written")]
    WrongRevision {
        path: PathBuf,
        expected: i64,
        actual: i64,
    },
    #[error("writing {path} failed: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with one segment object.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("the stored object's SHA-256 is {actual}, its manifest says {expected}: it is damaged or was replaced")]
    Sha256 { expected: String, actual: String },
    #[error("its first event is at revision {found}, its manifest says {expected}: it is not what its manifest says")]
    FirstEvent { found: i64, expected: i64 },
    #[error("it holds {events} events up to revision {last}, its manifest says {manifest_events} up to {manifest_last}: it is not what its manifest says")]
    Count {
        events: u64,
        last: i64,
        manifest_events: u64,
        manifest_last: i64,
    },
    #[error("writing its decoded events to {path} failed: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("reading it failed: {0}")]
    Read(#[from] ReadError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// What a point-in-time fetch produced.
#[derive(Debug, Clone)]
pub struct PointFetched {
    pub plan: Plan,
    pub status: snapshot::Status,
    pub events: u64,
}

/// Writes the database at the point `at` to `output`, from backup `id` (`latest`: the newest
/// full backup that reaches the point).
pub async fn fetch_at(
    store: &dyn ObjectStore,
    id: &str,
    at: At,
    identities: Identities,
    output: &Path,
    progress: bool,
    trust: &Trust,
) -> Result<PointFetched, PointFetchError> {
    if output.exists() {
        return Err(FetchError::OutputExists {
            path: output.to_path_buf(),
        }
        .into());
    }
    let listing = crate::catalog::list(store)
        .await
        .map_err(DeltaError::from)?;
    let mut bases = super::bases(&listing);
    let segments = super::load(store).await?;
    let revision = chain::resolve(at, &bases, &segments)?;
    if id != "latest" {
        let base = crate::catalog::resolve(store, id)
            .await
            .map_err(FetchError::from)?;
        bases.retain(|b| b.id == base.id);
        if bases.is_empty() {
            return Err(PointFetchError::BadBase {
                id: id.to_string(),
                revision,
                why: "it is not a sound backup in the listing".into(),
            });
        }
    }
    let plan = chain::plan(revision, &bases, &segments)?;
    let manifest = listing
        .backups
        .iter()
        .find(|m| m.id == plan.base)
        .cloned()
        .expect("the plan's base is in the listing");
    trust.require(store, &manifest).await?;
    for segment in &plan.segments {
        trust_segment(store, trust, segment).await?;
    }

    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let work = dir.join(format!(".{name}.at-{}.part", plan.revision));
    let _ = std::fs::remove_file(&work);
    let guard = RemoveOnDrop(work.clone());
    // The segments are downloaded and decoded (into a local file of `key` bucket entries)
    // while the base streams: each keeps about one core busy.
    let events_path = dir.join(format!(".{name}.at-{}.events", plan.revision));
    let _ = std::fs::remove_file(&events_path);
    let _events_guard = RemoveOnDrop(events_path.clone());
    let edit = !(plan.segments.is_empty() && plan.leases.is_none());
    // A base that is edited is proved by its object's SHA-256 while it streams; the result is
    // then hashed, walked and synced once (doing all three for the base too cost a third more).
    let check = if edit { Check::Object } else { Check::Snapshot };
    let (base, decoded) = tokio::join!(
        crate::pipeline::fetch::fetch_manifest_checked(
            store,
            &manifest,
            identities.clone(),
            &work,
            progress,
            check,
        ),
        decode(store, &plan, identities, &events_path),
    );
    let base_revision = base?.map_or(manifest.snapshot.revision, |s| s.revision);
    let (events, newest) = decoded?;
    if edit {
        apply(&plan, &work, &events_path).await?;
    }
    // The newest key is the last change applied (every revision after a chain's first event
    // changed something), or the full backup's own.
    let status = finish(&work, newest.unwrap_or(base_revision)).await?;
    // Never over a file that appeared at the output meanwhile.
    crate::storage::rename_noreplace(&work, output).map_err(|source| PointFetchError::Output {
        path: output.to_path_buf(),
        source,
    })?;
    std::mem::forget(guard);
    crate::fsutil::sync_dir(dir).map_err(|source| PointFetchError::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(PointFetched {
        plan,
        status,
        events,
    })
}

/// With `verification` configured, a segment must be signed by an allowed signer like a full
/// backup's manifest, and the manifest signed must be the one planned with.
async fn trust_segment(
    store: &dyn ObjectStore,
    trust: &Trust,
    segment: &SegmentManifest,
) -> Result<(), PointFetchError> {
    use crate::catalog::signature::{judge, signature_key};
    use crate::storage::{get_small, StorageError};
    let Some(signers) = &trust.signers else {
        return Ok(());
    };
    let id = format!("delta segment {}", segment.object.key);
    let sig_key = signature_key(&super::segment::signature_id(&segment.object.key));
    let sig = match get_small(store, &sig_key, 64 << 10).await {
        Ok(sig) => sig,
        Err(StorageError::NotFound { .. }) if trust.allow_unsigned => {
            tracing::warn!(segment = %segment.object.key, "delta segment is NOT signed; trusting it because --allow-unsigned was given");
            return Ok(());
        }
        Err(StorageError::NotFound { .. }) => return Err(TrustError::Unsigned { id }.into()),
        Err(e) => return Err(DeltaError::from(e).into()),
    };
    let key = super::segment::manifest_key(segment.first_revision);
    let bytes = get_small(store, &key, super::SEGMENT_MANIFEST_LIMIT)
        .await
        .map_err(DeltaError::from)?;
    let signed: SegmentManifest =
        serde_json::from_slice(&bytes).map_err(|source| DeltaError::BadManifest { key, source })?;
    if &signed != segment {
        return Err(TrustError::Bad {
            id,
            source: crate::sshsig::SigError::Mismatch,
        }
        .into());
    }
    judge(signers, &sig, &bytes, segment.sealed_at)
        .map(|_| ())
        .map_err(|source| TrustError::Bad { id, source }.into())
}

/// Downloads, checks and decodes the plan's segments into `events`: the `key` bucket entries of
/// every event in `(base, revision]`, in order, as `klen u32 LE, vlen u32 LE, key, value`.
/// Returns how many and the newest one's revision.
async fn decode(
    store: &dyn ObjectStore,
    plan: &Plan,
    identities: Identities,
    events: &Path,
) -> Result<(u64, Option<i64>), PointFetchError> {
    let (mut count, mut newest) = (0u64, None);
    for segment in &plan.segments {
        let (n, last) = stream_segment(store, segment, plan, identities.clone(), events)
            .await
            .map_err(|source| PointFetchError::Segment {
                key: segment.object.key.clone(),
                first: segment.first_revision,
                source: Box::new(source),
            })?;
        count += n;
        newest = last.or(newest);
    }
    Ok((count, newest))
}

/// Appends the decoded events into the fetched database at `work` (trailer removed first),
/// with the lease table and compaction, in one transaction.
async fn apply(plan: &Plan, work: &Path, events: &Path) -> Result<(), PointFetchError> {
    let output = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PointFetchError::Output { path, source }
    };
    let len = std::fs::metadata(work).map_err(output(work))?.len();
    if snapshot::has_trailer(len) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(work)
            .and_then(|f| f.set_len(len - TRAILER_LEN as u64))
            .map_err(output(work))?;
    }
    let edits = edits(work, plan).map_err(|source| PointFetchError::Apply {
        path: work.to_path_buf(),
        source,
    })?;
    let reader = match std::fs::File::open(events) {
        Ok(file) => Some(std::io::BufReader::with_capacity(1 << 20, file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(output(events)(e)),
    };
    let (path, events_path) = (work.to_path_buf(), events.to_path_buf());
    let appended = tokio::task::spawn_blocking(move || {
        let entries = reader.into_iter().flat_map(EntryReader);
        // The work file is synced once, whole, by `finish`, and removed on any failure.
        bolt_append::append_unsynced(&path, KEY_BUCKET, entries, &edits)
    })
    .await
    .expect("the appender does not panic");
    match appended {
        Ok(_) => Ok(()),
        Err(AppendError::Patch(source)) => Err(PointFetchError::Apply {
            path: work.to_path_buf(),
            source,
        }),
        Err(AppendError::Source(source)) => Err(output(&events_path)(source)),
    }
}

/// Reads back the entries [`decode`] wrote.
struct EntryReader<R>(R);

impl<R: Read> Iterator for EntryReader<R> {
    type Item = std::io::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut head = [0u8; 8];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e)),
        }
        let klen = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let vlen = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
        let mut key = vec![0u8; klen];
        let mut value = vec![0u8; vlen];
        Some(
            self.0
                .read_exact(&mut key)
                .and_then(|()| self.0.read_exact(&mut value))
                .map(|()| (key, value)),
        )
    }
}

/// The small-bucket edits: the lease table, and the compaction etcd had recorded.
fn edits(work: &Path, plan: &Plan) -> Result<BTreeMap<Vec<u8>, BucketEdit>, PatchError> {
    let mut edits = BTreeMap::new();
    if let Some(leases) = &plan.leases {
        let put = leases
            .iter()
            .map(|l| {
                let mut value = Vec::new();
                crate::native::pb::put_uint(&mut value, 1, l.id as u64);
                if l.ttl != 0 {
                    crate::native::pb::put_uint(&mut value, 2, l.ttl as u64);
                }
                (l.id.to_be_bytes().to_vec(), value)
            })
            .collect();
        edits.insert(LEASE_BUCKET.to_vec(), BucketEdit { clear: true, put });
    }
    let meta = bolt_patch::read_bucket(work, META_BUCKET)?.unwrap_or_default();
    let recorded = |key: &[u8]| {
        meta.get(key).filter(|v| v.len() >= 8).map_or(0, |v| {
            i64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
        })
    };
    let scheduled = recorded(SCHEDULED_COMPACT_KEY).max(recorded(FINISHED_COMPACT_KEY));
    if plan.compact_revision > scheduled {
        // etcd finishes a compaction scheduled above the finished one when it starts.
        let mut rev = plan.compact_revision.to_be_bytes().to_vec();
        rev.push(b'_');
        rev.extend_from_slice(&0i64.to_be_bytes());
        edits.insert(
            META_BUCKET.to_vec(),
            BucketEdit {
                clear: false,
                put: [(SCHEDULED_COMPACT_KEY.to_vec(), rev)]
                    .into_iter()
                    .collect(),
            },
        );
    }
    Ok(edits)
}

/// Streams one segment: SHA-256 of the stored bytes, age, zstd, records; appends the `key`
/// bucket entries of its events in `(base, revision]` to `events`. Returns how many and the
/// newest one's revision.
async fn stream_segment(
    store: &dyn ObjectStore,
    segment: &SegmentManifest,
    plan: &Plan,
    identities: Identities,
    events: &Path,
) -> Result<(u64, Option<i64>), SegmentError> {
    let reader = store.get(&segment.object.key).await?;
    let events = events.to_path_buf();
    let (low, high) = (plan.base_revision, plan.revision);
    let expected = segment.clone();
    tokio::task::spawn_blocking(move || -> Result<(u64, Option<i64>), SegmentError> {
        let mut hashing = HashingReader {
            inner: SyncIoBridge::new(reader),
            hasher: Sha256::new(),
            size: 0,
        };
        let mut sent = 0u64;
        let mut newest = None;
        let local = |source| SegmentError::Local {
            path: events.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events)
            .map_err(local)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        {
            let decrypted = identities.decrypt(&mut hashing, &expected.recipients)?;
            let plain = zstd::stream::read::Decoder::new(decrypted)
                .map_err(|e| SegmentError::Read(ReadError::Io(e)))?;
            let mut records = RecordReader::new(std::io::BufReader::new(plain))?;
            let mut count = 0u64;
            let mut last = None;
            while let Some(event) = records.next_event()? {
                count += 1;
                if count == 1
                    && (event.revision < expected.first_revision
                        || (event.revision > expected.first_revision
                            && expected.previous_sha256.is_some()))
                {
                    return Err(SegmentError::FirstEvent {
                        found: event.revision,
                        expected: expected.first_revision,
                    });
                }
                last = Some(event.revision);
                if event.revision > low && event.revision <= high {
                    let (key, value) = event.bucket_entry();
                    out.write_all(&(key.len() as u32).to_le_bytes())
                        .and_then(|()| out.write_all(&(value.len() as u32).to_le_bytes()))
                        .and_then(|()| out.write_all(&key))
                        .and_then(|()| out.write_all(&value))
                        .map_err(local)?;
                    sent += 1;
                    newest = Some(event.revision);
                }
            }
            if count != expected.events || last != Some(expected.last_revision) {
                return Err(SegmentError::Count {
                    events: count,
                    last: last.unwrap_or(0),
                    manifest_events: expected.events,
                    manifest_last: expected.last_revision,
                });
            }
        }
        // Whatever age and zstd left unread still counts for the object's hash.
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| SegmentError::Read(ReadError::Io(e)))?;
        out.flush().map_err(local)?;
        let actual = hex::encode(hashing.hasher.finalize());
        if actual != expected.object.sha256 || hashing.size != expected.object.size {
            return Err(SegmentError::Sha256 {
                expected: expected.object.sha256.clone(),
                actual,
            });
        }
        Ok((sent, newest))
    })
    .await
    .expect("the segment reader does not panic")
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Appends etcd's SHA-256 trailer to the database at `work` (when it has none) and walks the
/// result natively; its newest revision must be the point.
async fn finish(work: &Path, revision: i64) -> Result<snapshot::Status, PointFetchError> {
    let path = work.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let output = |source| PointFetchError::Output {
            path: path.clone(),
            source,
        };
        let len = std::fs::metadata(&path).map_err(output)?.len();
        let needs_trailer = !snapshot::has_trailer(len);
        // The hash (one sequential read), the native walk (positioned reads) and the sync of
        // the pages written so far (the base was streamed unsynced) run side by side; the
        // trailer is appended once all are done.
        let (hashed, status, synced) = std::thread::scope(|scope| {
            let syncing = scope.spawn(|| std::fs::File::open(&path)?.sync_data());
            let hashing = scope.spawn(|| -> std::io::Result<Option<Vec<u8>>> {
                if !needs_trailer {
                    return Ok(None);
                }
                let mut file = std::fs::File::open(&path)?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                Ok(Some(hasher.finalize().to_vec()))
            });
            let status = snapshot::status(&path);
            (
                hashing.join().expect("the hash does not panic"),
                status,
                syncing.join().expect("the sync does not panic"),
            )
        });
        let status = status.map_err(|source| PointFetchError::Result {
            path: path.clone(),
            source,
        })?;
        synced.map_err(output)?;
        if let Some(digest) = hashed.map_err(output)? {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(output)?;
            file.write_all(&digest).map_err(output)?;
            file.sync_all().map_err(output)?;
        }
        if status.revision != revision {
            return Err(PointFetchError::WrongRevision {
                path: path.clone(),
                expected: revision,
                actual: status.revision,
            });
        }
        Ok(status)
    })
    .await
    .expect("the check does not panic")
}

/// Removes a work file unless forgotten.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
