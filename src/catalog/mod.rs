//! The catalog of backups: the manifest model, how objects are named, and listing.
//!
//! A backup exists only when its manifest exists: the manifest is written last, after the data
//! object is committed and the snapshot verified. Listing therefore reads manifests only.

pub mod audit;
pub mod signature;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
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
/// Suffix of the empty object a run creates exclusively to claim its id, removed once the
/// manifest is written (a killed run's is swept like other leftovers).
pub const CLAIM_SUFFIX: &str = ".claim";
/// Manifests are small; anything larger is not one.
pub(crate) const MANIFEST_LIMIT: usize = 1 << 20;
/// A backup dated more than this after now was taken by a node whose clock is ahead: it is
/// never `latest`, never counts as the last success, and retention neither counts nor deletes it.
pub const FUTURE_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{store}: manifest {key} is not readable: {problem}")]
    BadManifest {
        store: String,
        key: String,
        #[source]
        problem: Box<ManifestProblem>,
    },
    #[error("{store}: manifest {key} is not readable: {source}")]
    UnparsableManifest {
        store: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{store}: no backup {id:?}: run `etcdsafe backups list` to see the ids")]
    NoSuchBackup { store: String, id: String },
    #[error("{store}: there are no backups yet: take one with `etcdsafe snapshot save`")]
    Empty { store: String },
}

/// What is wrong with a readable manifest, one variant per condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestProblem {
    #[error("its id {id:?} is not its name {named:?}: a manifest must be named <id>{MANIFEST_SUFFIX} (a copied or edited manifest?); remove {key} or give it its original name")]
    NotItsName {
        id: String,
        named: String,
        key: String,
    },
    #[error("its {what} {key} is not the one named after backup {id} ({expected}): an edited manifest? remove it")]
    ForeignObject {
        what: &'static str,
        key: String,
        id: String,
        expected: String,
    },
    #[error("its {what} {key} is missing")]
    MissingObject { what: &'static str, key: String },
    #[error("its {what} {key} is {stored} bytes, the manifest says {size}: the object is damaged (run `etcdsafe backups audit`; restore an older backup)")]
    WrongSize {
        what: &'static str,
        key: String,
        stored: u64,
        size: u64,
    },
    #[error("format {found} is newer than this etcdsafe understands ({MANIFEST_FORMAT}); upgrade etcdsafe")]
    NewerFormat { found: u32 },
    #[error("it describes backup {id:?} with data object {object}, not backup {wanted:?}: an edited or copied manifest; remove it")]
    OtherBackup {
        id: String,
        object: String,
        wanted: String,
    },
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

/// etcd's revision when the run that made a backup id began (from the id).
pub fn id_revision(id: &str) -> Option<i64> {
    id.rsplit_once("-rev")?.1.parse().ok()
}

/// The backup id a data or control-plane files object, a manifest's signature or an id claim
/// is named after.
pub fn object_id(key: &str) -> Option<&str> {
    key.strip_suffix(DATA_SUFFIX)
        .or_else(|| key.strip_suffix(FILES_SUFFIX))
        .or_else(|| key.strip_suffix(signature::SIGNATURE_SUFFIX))
        .or_else(|| key.strip_suffix(CLAIM_SUFFIX))
}

pub fn claim_key(id: &str) -> String {
    format!("{id}{CLAIM_SUFFIX}")
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
    /// Manifests that could not be read, that are not named after their own id, that name an
    /// object of another backup, or whose objects are missing or not the size they record.
    /// Retention refuses to act on a listing with problems.
    pub problems: Vec<CatalogError>,
    /// Backups dated more than [`FUTURE_TOLERANCE`] after the listing's `now`: a node with a
    /// wrong clock took them. Reported, but neither chosen as `latest`, counted as a success,
    /// counted by retention nor deleted by it.
    pub future: Vec<Manifest>,
    /// Ids whose manifest has a signature object (`<id>.json.sig`), checked or not.
    pub signed: std::collections::HashSet<String>,
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

/// How a readable manifest stands, from [`check_manifest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    /// Dated more than [`FUTURE_TOLERANCE`] after now.
    Future,
}

/// Decides whether a readable manifest describes a backup that can be trusted, from its key and
/// the sizes of the data and files objects in the store (pure; `now` is passed in). The `Err`
/// is the problem, in one line that says what to do.
///
/// - The manifest must be named after its own id (`<id>.json`): listing trusts the name, which
///   the store keeps unique, so a copied or edited manifest cannot make two entries for one
///   backup (and retention could then forget one of them, deleting the objects both share).
/// - Its objects must be the ones named after that id, present, and of the recorded size.
pub fn check_manifest(
    key: &str,
    manifest: &Manifest,
    object_sizes: &HashMap<&str, u64>,
    now: DateTime<Utc>,
) -> Result<Standing, ManifestProblem> {
    let named = key.strip_suffix(MANIFEST_SUFFIX).unwrap_or(key);
    if manifest.id != named {
        return Err(ManifestProblem::NotItsName {
            id: manifest.id.clone(),
            named: named.to_string(),
            key: key.to_string(),
        });
    }
    let mut objects = vec![(
        "data object",
        &manifest.object.key,
        manifest.object.size,
        data_key(&manifest.id),
    )];
    if let Some(files) = &manifest.files {
        objects.push((
            "control-plane files object",
            &files.key,
            files.size,
            files_key(&manifest.id),
        ));
    }
    for (what, key, size, expected_key) in objects {
        if *key != expected_key {
            return Err(ManifestProblem::ForeignObject {
                what,
                key: key.clone(),
                id: manifest.id.clone(),
                expected: expected_key,
            });
        }
        match object_sizes.get(key.as_str()) {
            None => {
                return Err(ManifestProblem::MissingObject {
                    what,
                    key: key.clone(),
                })
            }
            Some(&stored) if stored != size => {
                return Err(ManifestProblem::WrongSize {
                    what,
                    key: key.clone(),
                    stored,
                    size,
                })
            }
            Some(_) => {}
        }
    }
    if manifest.created_at - now > FUTURE_TOLERANCE {
        return Ok(Standing::Future);
    }
    Ok(Standing::Good)
}

impl Manifest {
    /// The one-line problem of a backup dated in the future.
    pub fn future_problem(&self, now: DateTime<Utc>) -> String {
        let ahead = (self.created_at - now).num_seconds();
        format!(
            "backup {} is dated {}, {ahead}s in the future: check the clock (NTP) of the node that took it (etcd member {:?}, {}); it is never `latest` and retention ignores it",
            self.id,
            self.created_at_text(),
            self.etcd.member_name,
            self.etcd.endpoint,
        )
    }
}

/// Lists every backup in a store, as of now.
pub async fn list(store: &dyn ObjectStore) -> Result<Listing, CatalogError> {
    list_at(store, Utc::now()).await
}

/// Lists every backup in a store; backups dated over [`FUTURE_TOLERANCE`] after `now` go to
/// [`Listing::future`].
pub async fn list_at(store: &dyn ObjectStore, now: DateTime<Utc>) -> Result<Listing, CatalogError> {
    // Delta segments (continuous backup) live under their own prefix, with their own catalog.
    let objects: Vec<_> = store
        .list("")
        .await?
        .into_iter()
        .filter(|o| !o.key.starts_with(crate::deltas::segment::PREFIX))
        .collect();
    let data: HashMap<&str, u64> = objects
        .iter()
        .filter(|o| object_id(&o.key).is_some())
        .map(|o| (o.key.as_str(), o.size))
        .collect();
    let signed = objects
        .iter()
        .filter_map(|o| o.key.strip_suffix(signature::SIGNATURE_SUFFIX))
        .map(str::to_string)
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
        signed,
        ..Listing::default()
    };
    for object in objects.iter().filter(|o| o.key.ends_with(MANIFEST_SUFFIX)) {
        match read_manifest(store, &object.key).await {
            Ok(manifest) => match check_manifest(&object.key, &manifest, &data, now) {
                Ok(Standing::Good) => listing.backups.push(manifest),
                Ok(Standing::Future) => listing.future.push(manifest),
                Err(problem) => listing.problems.push(CatalogError::BadManifest {
                    store: store.describe(),
                    key: object.key.clone(),
                    problem: Box::new(problem),
                }),
            },
            Err(e) => listing.problems.push(e),
        }
    }
    listing
        .backups
        .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    listing.future.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(listing)
}

/// A manifest's bytes as JSON; `key` and the store name it in the error.
pub fn parse_manifest(
    store: &dyn ObjectStore,
    key: &str,
    bytes: &[u8],
) -> Result<Manifest, CatalogError> {
    serde_json::from_slice(bytes).map_err(|source| CatalogError::UnparsableManifest {
        store: store.describe(),
        key: key.to_string(),
        source,
    })
}

pub async fn read_manifest(store: &dyn ObjectStore, key: &str) -> Result<Manifest, CatalogError> {
    let bytes = get_small(store, key, MANIFEST_LIMIT).await?;
    let manifest = parse_manifest(store, key, &bytes)?;
    if manifest.format_version > MANIFEST_FORMAT {
        return Err(CatalogError::BadManifest {
            store: store.describe(),
            key: key.to_string(),
            problem: Box::new(ManifestProblem::NewerFormat {
                found: manifest.format_version,
            }),
        });
    }
    Ok(manifest)
}

/// Writes a manifest, which makes its backup exist.
pub async fn write_manifest(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<(), CatalogError> {
    write_manifest_signed(store, manifest, None).await
}

/// Replaces a manifest (the upgrade outcome is recorded on its backup's), signing the new bytes
/// first with `signer`.
pub async fn write_manifest_signed(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    signer: Option<&crate::sshsig::SigningKey>,
) -> Result<(), CatalogError> {
    sign_and_put(store, manifest, signer, false).await
}

/// Publishes a new backup: its signature (with `signer`) and then its manifest, created
/// exclusively, so a backup id is never written twice.
pub async fn publish_manifest(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    signer: Option<&crate::sshsig::SigningKey>,
) -> Result<(), CatalogError> {
    sign_and_put(store, manifest, signer, true).await
}

/// The signature of the manifest's exact bytes first, then the manifest: a visible manifest
/// is always a signed one when there is a signer.
async fn sign_and_put(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    signer: Option<&crate::sshsig::SigningKey>,
    exclusive: bool,
) -> Result<(), CatalogError> {
    let json = manifest.to_json();
    if let Some(key) = signer {
        signature::write_signature(store, key, &manifest.id, json.as_bytes()).await?;
    }
    let (key, data) = (manifest_key(&manifest.id), Bytes::from(json));
    if exclusive {
        store.put_new(&key, data).await?;
    } else {
        store.put(&key, data).await?;
    }
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
        Ok(manifest) if manifest.id != id || manifest.object.key != data_key(id) => {
            Err(CatalogError::BadManifest {
                store: store.describe(),
                key: manifest_key(id),
                problem: Box::new(ManifestProblem::OtherBackup {
                    id: manifest.id.clone(),
                    object: manifest.object.key.clone(),
                    wanted: id.to_string(),
                }),
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

    fn manifest(id: &str, created_at: DateTime<Utc>) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT,
            id: id.to_string(),
            created_at,
            reason: "scheduled".into(),
            labels: BTreeMap::new(),
            etcd: EtcdSource {
                endpoint: "https://10.0.0.11:2379".into(),
                cluster_id: "1".into(),
                member_id: "2".into(),
                member_name: "cp1".into(),
                version: "3.5.1".into(),
                members: Vec::new(),
            },
            snapshot: SnapshotFacts {
                revision: 10,
                total_key: 1,
                hash: 1,
                total_size: 1,
                size: 1,
                sha256: String::new(),
                db_sha256: String::new(),
                storage_version: None,
            },
            object: StoredObject {
                key: data_key(id),
                size: 100,
                sha256: String::new(),
                store: "local".into(),
                compression: CompressionFacts {
                    algorithm: "zstd".into(),
                    level: 1,
                },
                encryption: EncryptionFacts {
                    algorithm: "age".into(),
                    recipients: Vec::new(),
                },
            },
            tool_version: "0".into(),
            duration_seconds: 1.0,
            stage_seconds: BTreeMap::new(),
            files: None,
        }
    }

    #[test]
    fn a_manifest_is_trusted_only_under_its_own_name_with_its_own_whole_objects() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        let id = "20261203T110000.000Z-rev10";
        let other = "20261203T100000.000Z-rev5";
        let good = manifest(id, now - TimeDelta::hours(1));
        let data = data_key(id);
        let other_data = data_key(other);
        let sizes: HashMap<&str, u64> = [(data.as_str(), 100), (other_data.as_str(), 100)].into();
        let with_files = Manifest {
            files: Some(FilesObject {
                key: files_key(id),
                size: 7,
                sha256: String::new(),
                paths: Vec::new(),
                entries: 1,
                content_bytes: 1,
            }),
            ..good.clone()
        };
        type Case<'a> = (
            &'a str,
            String,
            Manifest,
            HashMap<&'a str, u64>,
            Result<Standing, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "good",
                manifest_key(id),
                good.clone(),
                sizes.clone(),
                Ok(Standing::Good),
            ),
            // cp NEWEST.json NEWEST.copy.json
            (
                "copy",
                format!("{id}.copy.json"),
                good.clone(),
                sizes.clone(),
                Err("is not its name"),
            ),
            // The id inside edited to another backup's.
            (
                "edited id",
                manifest_key(other),
                good.clone(),
                sizes.clone(),
                Err("is not its name"),
            ),
            // The object key edited to another backup's object.
            (
                "foreign object",
                manifest_key(id),
                Manifest {
                    object: StoredObject {
                        key: other_data.clone(),
                        ..good.object.clone()
                    },
                    ..good.clone()
                },
                sizes.clone(),
                Err("is not the one named after backup"),
            ),
            (
                "missing object",
                manifest_key(id),
                good.clone(),
                [(other_data.as_str(), 100)].into(),
                Err("is missing"),
            ),
            (
                "truncated object",
                manifest_key(id),
                good.clone(),
                [(data.as_str(), 99)].into(),
                Err("is 99 bytes, the manifest says 100: the object is damaged"),
            ),
            (
                "missing files object",
                manifest_key(id),
                with_files.clone(),
                sizes.clone(),
                Err("control-plane files object"),
            ),
            // Five minutes ahead is clock jitter; more is a wrong clock.
            (
                "5 min ahead",
                manifest_key(id),
                manifest(id, now + FUTURE_TOLERANCE),
                sizes.clone(),
                Ok(Standing::Good),
            ),
            (
                "a day ahead",
                manifest_key(id),
                manifest(id, now + TimeDelta::days(1)),
                sizes.clone(),
                Ok(Standing::Future),
            ),
        ];
        for (name, key, manifest, sizes, want) in cases {
            let got = check_manifest(&key, &manifest, &sizes, now);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => {
                    let got = got.to_string();
                    assert!(got.contains(want), "{name}: {got}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let future = manifest(id, now + TimeDelta::days(1));
        let problem = future.future_problem(now);
        assert!(problem.contains("86400s in the future"), "{problem}");
        assert!(problem.contains("check the clock"), "{problem}");
        assert!(problem.contains("\"cp1\""), "{problem}");
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
