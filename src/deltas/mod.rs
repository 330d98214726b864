//! Continuous backup: segments of watch-captured changes between full backups, and fetches at
//! any revision they cover, applied natively at the ORIGINAL revisions.
//!
//! - `segment.rs`: the record format, the segment manifest and the store layout (`deltas/`).
//! - `chain.rs`: pure decisions: what each full backup's chain covers, which base and
//!   segments a point needs, `--at-time` and `--at-latest` (table-tested).
//! - `capture.rs`: the service's capture worker (watch, spool, seal, break, resume).
//! - `apply.rs`: a fetch at a point: the full backup's snapshot, then every event up to the
//!   point appended into its `key` bucket (`native::bolt_append`), the lease table of the
//!   last seal, the compaction, a new SHA-256 trailer, and the native status.

pub mod apply;
pub mod capture;
pub mod chain;
pub mod orphans;
pub mod segment;
pub mod spool;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::catalog::CatalogError;
use crate::storage::{get_small, ObjectStore, StorageError};

pub use chain::{At, Base, ChainView, Plan, PointError, Segments};

/// The largest segment manifest read (it holds the lease table).
const SEGMENT_MANIFEST_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error("{key}: not a readable segment manifest: {source}")]
    BadManifest {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("watching etcd at {endpoint} failed: {source}")]
    Watch {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoint} ended the watch")]
    WatchEnded { endpoint: String },
    #[error("etcd at {endpoint} canceled the watch: {reason}")]
    Canceled { endpoint: String, reason: String },
    #[error("revision {} was compacted (etcd's compact revision is {compact_revision}): the delta chain cannot continue after {after}", after + 1)]
    Compacted { after: i64, compact_revision: i64 },
    #[error("the watch skipped from revision {expected} to {got}: events are missing; capture resumes from the last sealed revision")]
    Gap { expected: i64, got: i64 },
    #[error("etcd at {endpoint} is at revision {current}, below the delta chain's last sealed revision {last}: its history went back (restored without a revision bump); the chain cannot continue in it, and a new one starts from a full backup once etcd's revision passes {last} (restore with --bump-revision to avoid the wait)")]
    Rewound {
        endpoint: String,
        current: i64,
        last: i64,
    },
    #[error("reading etcd's current revision failed: {0}")]
    Revision(#[source] etcd_client::Error),
    #[error("reading etcd's leases failed: {0}")]
    Leases(#[source] etcd_client::Error),
    #[error("finding etcd's compaction revision failed: {0}")]
    Compaction(#[source] etcd_client::Error),
    #[error("delta spool file {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing.key-file: {0}")]
    SigningKey(#[source] crate::sshsig::SigError),
}

/// Reads every segment manifest, object size and break record under `deltas/`.
pub async fn load(store: &dyn ObjectStore) -> Result<Segments, DeltaError> {
    let objects = store.list(segment::PREFIX).await?;
    let mut segments = Segments {
        objects: objects
            .iter()
            .filter(|o| o.key.ends_with(segment::DATA_SUFFIX))
            .map(|o| (o.key.clone(), o.size))
            .collect::<HashMap<_, _>>(),
        ..Segments::default()
    };
    for object in &objects {
        if let Some(first) = segment::manifest_first(&object.key) {
            let bytes = get_small(store, &object.key, SEGMENT_MANIFEST_LIMIT).await?;
            let manifest: segment::SegmentManifest =
                serde_json::from_slice(&bytes).map_err(|source| DeltaError::BadManifest {
                    key: object.key.clone(),
                    source,
                })?;
            if manifest.first_revision == first {
                segments.by_first.insert(first, manifest);
            }
        } else if object.key.starts_with(segment::BREAKS_PREFIX) && object.key.ends_with(".json") {
            let bytes = get_small(store, &object.key, 1 << 20).await?;
            let record =
                serde_json::from_slice(&bytes).map_err(|source| DeltaError::BadManifest {
                    key: object.key.clone(),
                    source,
                })?;
            segments.breaks.push(record);
        }
    }
    Ok(segments)
}

/// The full backups of a listing as chain bases (oldest first).
pub fn bases(listing: &crate::catalog::Listing) -> Vec<Base> {
    listing
        .backups
        .iter()
        .map(|m| Base {
            id: m.id.clone(),
            revision: base_revision(m),
            created_at: m.created_at,
        })
        .collect()
}

/// The store revision a full backup holds: its newest key's revision (what `etcdutl snapshot
/// status` reports, `snapshot.revision`), or etcd's revision when the snapshot began (in its
/// id) when that is higher: a compaction at the newest change removes its tombstone, so the
/// newest key is older than the database (the next event is then id + 1, not key + 1).
pub fn base_revision(manifest: &crate::catalog::Manifest) -> i64 {
    let began = crate::catalog::id_revision(&manifest.id).unwrap_or(0);
    manifest.snapshot.revision.max(began)
}
