//! The catalog of backups: the manifest model, how objects are named, and listing.
//!
//! A backup exists only when its manifest exists: the manifest is written last, after the data
//! object is committed and the snapshot verified. Listing therefore reads manifests only.

pub mod audit;

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::storage::{get_small, ObjectInfo, ObjectStore, StorageError};

/// Bumped when the manifest changes incompatibly.
pub const MANIFEST_FORMAT: u32 = 1;
/// Suffix of the data object: age(zstd(snapshot)).
pub const DATA_SUFFIX: &str = ".db.zst.age";
/// Suffix of the control-plane files object: age(zstd(tar)), when `include-files` is set.
pub const FILES_SUFFIX: &str = ".files.tar.zst.age";
/// Suffix of the manifest.
pub const MANIFEST_SUFFIX: &str = ".json";
/// Manifests are small; anything larger is not one.
const MANIFEST_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{store}: manifest {key} is not readable: {message}")]
    BadManifest {
        store: String,
        key: String,
        message: String,
    },
    #[error("{store}: no backup {id:?}: run `etcdsafe backups list` to see the ids")]
    NoSuchBackup { store: String, id: String },
    #[error("{store}: there are no backups yet: take one with `etcdsafe snapshot save`")]
    Empty { store: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub reason: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub etcd: EtcdSource,
    pub snapshot: SnapshotFacts,
    pub object: StoredObject,
    pub tool_version: String,
    pub duration_seconds: f64,
    /// Seconds spent in each stage (stream includes the concurrent spool, encode and upload).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_seconds: BTreeMap<String, f64>,
    /// The control-plane files kept with this backup (`include-files`), compressed and
    /// encrypted like the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesObject>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesObject {
    pub key: String,
    /// Stored bytes and their SHA-256.
    pub size: u64,
    pub sha256: String,
    /// The `include-files` paths as configured.
    pub paths: Vec<String>,
    /// Files, directories and symlinks in the archive.
    pub entries: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSource {
    pub endpoint: String,
    /// Hex, as etcdctl prints ids.
    pub cluster_id: String,
    pub member_id: String,
    pub member_name: String,
    pub version: String,
    /// The cluster's membership when the backup was taken (MemberList). A restore builds one
    /// `--initial-cluster` for every member from it: kubeadm writes a different one on each
    /// node. Absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    /// Hex, as etcdctl prints ids.
    pub id: String,
    /// Empty for a member that was added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFacts {
    pub revision: i64,
    pub total_key: u64,
    /// `etcdutl snapshot status` hash (CRC-32C of buckets, keys and values).
    pub hash: u32,
    /// bbolt size (`totalSize`), without the trailer.
    pub total_size: u64,
    /// Bytes etcd sent, trailer included: the size of the file `backups fetch` writes.
    pub size: u64,
    /// SHA-256 of those bytes (the fetched file).
    pub sha256: String,
    /// etcd's own SHA-256 trailer: the digest of the database without the trailer.
    pub db_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub store: String,
    pub compression: CompressionFacts,
    pub encryption: EncryptionFacts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressionFacts {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionFacts {
    pub algorithm: String,
    pub recipients: Vec<String>,
}

/// Builds a backup id: UTC time to the millisecond (so ids sort by time) and the revision.
///
/// The revision in the id is the store revision when the snapshot began; the snapshot holds at
/// least that revision, and the manifest records the exact one read from the verified file.
pub fn backup_id(created_at: DateTime<Utc>, revision: i64) -> String {
    format!("{}-rev{revision}", created_at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// When the run that made a backup id started, read back from the id.
pub fn id_started_at(id: &str) -> Option<DateTime<Utc>> {
    let (stamp, revision) = id.split_once("-rev")?;
    revision.parse::<i64>().ok()?;
    let naive = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ").ok()?;
    Some(naive.and_utc())
}

/// The backup id a data or control-plane files object is named after.
pub fn object_id(key: &str) -> Option<&str> {
    key.strip_suffix(DATA_SUFFIX)
        .or_else(|| key.strip_suffix(FILES_SUFFIX))
}

pub fn data_key(id: &str) -> String {
    format!("{id}{DATA_SUFFIX}")
}

pub fn files_key(id: &str) -> String {
    format!("{id}{FILES_SUFFIX}")
}

pub fn manifest_key(id: &str) -> String {
    format!("{id}{MANIFEST_SUFFIX}")
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes")
    }

    pub fn created_at_text(&self) -> String {
        self.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// What a listing found: good backups, oldest first, and anything that could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub backups: Vec<Manifest>,
    /// Manifests that could not be read, or whose data object is missing. Retention refuses to
    /// act on a listing with problems.
    pub problems: Vec<CatalogError>,
    /// Data and control-plane files objects under no manifest's name: left by a run killed
    /// between committing its object and writing its manifest, by a prune interrupted after
    /// deleting a manifest, or still being finished by a run. Never counted as backups.
    pub unreferenced: Vec<ObjectInfo>,
}

impl Listing {
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Lists every backup in a store.
pub async fn list(store: &dyn ObjectStore) -> Result<Listing, CatalogError> {
    let objects = store.list("").await?;
    let data: std::collections::HashSet<&str> = objects
        .iter()
        .filter(|o| object_id(&o.key).is_some())
        .map(|o| o.key.as_str())
        .collect();
    let manifests: std::collections::HashSet<&str> = objects
        .iter()
        .filter(|o| o.key.ends_with(MANIFEST_SUFFIX))
        .map(|o| o.key.as_str())
        .collect();
    let mut listing = Listing {
        unreferenced: objects
            .iter()
            .filter(|o| {
                object_id(&o.key).is_some_and(|id| !manifests.contains(manifest_key(id).as_str()))
            })
            .cloned()
            .collect(),
        ..Listing::default()
    };
    for object in objects.iter().filter(|o| o.key.ends_with(MANIFEST_SUFFIX)) {
        match read_manifest(store, &object.key).await {
            Ok(manifest) => match missing_object(&manifest, &data) {
                None => listing.backups.push(manifest),
                Some(missing) => listing.problems.push(CatalogError::BadManifest {
                    store: store.describe(),
                    key: object.key.clone(),
                    message: format!("its {missing} is missing"),
                }),
            },
            Err(e) => listing.problems.push(e),
        }
    }
    listing
        .backups
        .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(listing)
}

/// Which of a backup's objects is absent from a listing, if any.
fn missing_object(
    manifest: &Manifest,
    present: &std::collections::HashSet<&str>,
) -> Option<String> {
    if !present.contains(manifest.object.key.as_str()) {
        return Some(format!("data object {}", manifest.object.key));
    }
    match &manifest.files {
        Some(files) if !present.contains(files.key.as_str()) => {
            Some(format!("control-plane files object {}", files.key))
        }
        _ => None,
    }
}

pub async fn read_manifest(store: &dyn ObjectStore, key: &str) -> Result<Manifest, CatalogError> {
    let bytes = get_small(store, key, MANIFEST_LIMIT).await?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::BadManifest {
            store: store.describe(),
            key: key.to_string(),
            message: e.to_string(),
        })?;
    if manifest.format_version > MANIFEST_FORMAT {
        return Err(CatalogError::BadManifest {
            store: store.describe(),
            key: key.to_string(),
            message: format!(
                "format {} is newer than this etcdsafe understands ({MANIFEST_FORMAT}); upgrade etcdsafe",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}

/// Writes a manifest, which makes its backup exist.
pub async fn write_manifest(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<(), CatalogError> {
    let key = manifest_key(&manifest.id);
    store.put(&key, Bytes::from(manifest.to_json())).await?;
    Ok(())
}

/// Finds a backup by id, or the newest one for `latest`.
pub async fn resolve(store: &dyn ObjectStore, id: &str) -> Result<Manifest, CatalogError> {
    if id == "latest" {
        let listing = list(store).await?;
        return listing
            .backups
            .into_iter()
            .next_back()
            .ok_or_else(|| CatalogError::Empty {
                store: store.describe(),
            });
    }
    match read_manifest(store, &manifest_key(id)).await {
        Err(CatalogError::Storage(StorageError::NotFound { .. })) => {
            Err(CatalogError::NoSuchBackup {
                store: store.describe(),
                id: id.to_string(),
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_carry_the_revision() {
        let t1 = Utc.with_ymd_and_hms(2026, 11, 24, 9, 5, 1).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let a = backup_id(t1, 99999);
        let b = backup_id(t2, 5);
        assert_eq!(a, "20261124T090501.000Z-rev99999");
        assert!(a < b);
        assert_eq!(data_key(&a), "20261124T090501.000Z-rev99999.db.zst.age");
        assert_eq!(manifest_key(&a), "20261124T090501.000Z-rev99999.json");
        assert_eq!(
            id_started_at(&a),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 9, 5, 1).unwrap())
        );
        assert_eq!(id_started_at("notes"), None);
        assert_eq!(id_started_at("yesterday-rev5"), None);
    }

    #[test]
    fn membership_is_optional_and_camel_case() {
        let without = r#"{"endpoint":"http://127.0.0.1:2379","clusterId":"1","memberId":"2","memberName":"cp1","version":"3.5.1"}"#;
        let source: EtcdSource = serde_json::from_str(without).unwrap();
        assert!(source.members.is_empty());
        assert_eq!(serde_json::to_string(&source).unwrap(), without);
        let with = EtcdSource {
            members: vec![ClusterMember {
                id: "2".into(),
                name: "cp1".into(),
                peer_urls: vec!["https://10.0.0.11:2380".into()],
            }],
            ..source
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(
            json.contains(
                r#""members":[{"id":"2","name":"cp1","peerUrls":["https://10.0.0.11:2380"]}]"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<EtcdSource>(&json).unwrap(), with);
    }
}
