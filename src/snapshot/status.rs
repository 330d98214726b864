//! `etcdutl snapshot status`, computed natively.
//!
//! As etcd 3.5 does it (`etcdutl/snapshot/v3_snapshot.go`, `Status`; etcd 3.4's `etcdctl
//! snapshot status` is the same): after bbolt's integrity check, one CRC-32C (Castagnoli) over,
//! for each top-level bucket in key order, the bucket's name and then each of its entries' key
//! and value (a nested bucket's value counts as empty); `totalKey` counts those entries;
//! `revision` is the main revision (the first 8 bytes, big-endian) of the last key of bucket
//! `key`; `totalSize` is the bbolt size, high-water mark × page size, without the trailer.
//! etcd 3.6 also reports `version`, the storage version in bucket `meta`.

use serde::{Deserialize, Serialize};

use super::bbolt::{Db, Item};
use super::digest::{self, Digests};
use super::{NotEtcd, SnapshotError};

/// What `etcdutl snapshot status -w json` prints; `serde_json::to_string` gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
    /// The storage version (etcd 3.6 and later write it; older snapshots have none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
}

/// Computes the status of an open database, checking its structure in the same pass. An error
/// anywhere (structure, or not an etcd database) means no status.
pub fn compute(db: &Db) -> Result<Status, SnapshotError> {
    compute_inner(db, None)
}

/// [`compute`], taking leaf pages from `digests` (made from this file's bytes, with
/// [`must_see`]) where it can instead of reading them.
pub fn compute_with_digests(db: &Db, digests: &Digests) -> Result<Status, SnapshotError> {
    compute_inner(db, Some(digests))
}

/// Keys the status must see itself, so a page holding one gets no digest: a key too short to be
/// a revision (an error in bucket `key`) and etcd 3.6's storage version (in bucket `meta`).
pub fn must_see(key: &[u8]) -> bool {
    key.len() < 8 || key == b"storageVersion"
}

fn compute_inner(db: &Db, digests: Option<&Digests>) -> Result<Status, SnapshotError> {
    let mut hash = 0u32;
    let mut total_key = 0u64;
    let mut revision = 0i64;
    let mut version = None;
    let mut in_key = false;
    let mut in_meta = false;
    let mut saw_key = false;
    let mut saw_meta = false;
    let each = |item: Item<'_>| {
        match item {
            Item::Bucket(name) => {
                hash = crc32c::crc32c_append(hash, name);
                in_key = name == b"key";
                in_meta = name == b"meta";
                saw_key |= in_key;
                saw_meta |= in_meta;
            }
            Item::Entry { key, value } => {
                hash = crc32c::crc32c_append(hash, key);
                if let Some(value) = value {
                    hash = crc32c::crc32c_append(hash, value);
                }
                total_key += 1;
                if in_key {
                    let Some(main) = key.first_chunk::<8>() else {
                        return Err(SnapshotError::NotEtcd {
                            path: db.path().to_path_buf(),
                            reason: NotEtcd::ShortRevisionKey { len: key.len() },
                        });
                    };
                    revision = u64::from_be_bytes(*main) as i64;
                } else if in_meta && key == b"storageVersion" {
                    version = value.and_then(storage_version);
                }
            }
            Item::Leaf {
                count,
                crc,
                len,
                last_key,
            } => {
                // Digests are made with `must_see`: every key here is a long enough revision
                // key in bucket `key`, and none is meta's storageVersion.
                hash = digest::crc32c_combine(hash, crc, len);
                total_key += u64::from(count);
                if in_key && count > 0 {
                    let Some(main) = last_key.first_chunk::<8>() else {
                        return Err(SnapshotError::NotEtcd {
                            path: db.path().to_path_buf(),
                            reason: NotEtcd::ShortRevisionKey {
                                len: last_key.len(),
                            },
                        });
                    };
                    revision = u64::from_be_bytes(*main) as i64;
                }
            }
        }
        Ok(())
    };
    match digests {
        Some(digests) => db.walk_with_digests(digests, each)?,
        None => db.walk(each)?,
    }
    for (seen, name) in [(saw_key, "key"), (saw_meta, "meta")] {
        if !seen {
            return Err(SnapshotError::NotEtcd {
                path: db.path().to_path_buf(),
                reason: NotEtcd::MissingBucket(name),
            });
        }
    }
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size: db.size(),
        version,
    })
}

/// etcd 3.6 reads `meta/storageVersion` with `semver.NewVersion` and prints `String()`: a
/// dotted triple of integers with optional `-prerelease` and `+metadata`. Anything else gives
/// no version (as in etcd).
fn storage_version(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let (rest, metadata) = match text.split_once('+') {
        Some((rest, meta)) => (rest, Some(meta)),
        None => (text, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let mut parts = core.split('.');
    let mut numbers = [0i64; 3];
    for n in &mut numbers {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *n = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let valid_ident = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let mut out = format!("{}.{}.{}", numbers[0], numbers[1], numbers[2]);
    if let Some(pre) = pre {
        if !valid_ident(pre) {
            return None;
        }
        out.push('-');
        out.push_str(pre);
    }
    if let Some(meta) = metadata {
        if !valid_ident(meta) {
            return None;
        }
        out.push('+');
        out.push_str(meta);
    }
    Some(out)
}

/// go-humanize's `Bytes`: SI units, one decimal below 10 ("20 kB", "1.5 MB", "999 B").
pub fn humanize_bytes(n: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    const POWERS: [f64; 7] = [1.0, 1e3, 1e6, 1e9, 1e12, 1e15, 1e18];
    if n < 10 {
        return format!("{n} B");
    }
    let x = n as f64;
    // Same float steps as Go: floor(log(n)/log(1000)).
    let e = (x.ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(SIZES.len() - 1);
    let value = (x / POWERS[e] * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", SIZES[e])
    } else {
        format!("{value:.0} {}", SIZES[e])
    }
}

/// The table `etcdutl snapshot status` prints (`-w table`), trailing newline included. A
/// VERSION column appears only when the snapshot has a storage version.
pub fn render_table(status: &Status) -> String {
    let mut headers = vec!["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let mut cells = vec![
        format!("{:x}", status.hash),
        status.revision.to_string(),
        status.total_key.to_string(),
        humanize_bytes(status.total_size),
    ];
    if let Some(version) = &status.version {
        headers.push("VERSION");
        cells.push(version.clone());
    }
    crate::output::table_right_aligned(&headers, &[cells])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_go_humanize() {
        // go-humanize's own TestBytes cases.
        const KB: u64 = 1000;
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (1, "1 B"),
            (803, "803 B"),
            (999, "999 B"),
            (1024, "1.0 kB"),
            (9999, "10 kB"),
            (KB * KB - 1, "1000 kB"),
            (1024 * 1024, "1.0 MB"),
            (KB * KB * KB - KB, "1000 MB"),
            (KB * KB * KB, "1.0 GB"),
            (KB.pow(4) - KB * KB, "1000 GB"),
            (9999 * 1000, "10 MB"),
            (KB.pow(4), "1.0 TB"),
            (KB.pow(5) - KB.pow(4), "999 TB"),
            (KB.pow(5), "1.0 PB"),
            (KB.pow(6) - KB.pow(5), "999 PB"),
            (KB.pow(6), "1.0 EB"),
            (5_500_000_000, "5.5 GB"),
            // etcd sizes.
            (20480, "20 kB"),
            (24576, "25 kB"),
            (4096 * 262_144, "1.1 GB"),
            (2_147_483_648, "2.1 GB"),
            (u64::MAX, "18 EB"),
        ];
        for (n, want) in cases {
            assert_eq!(humanize_bytes(*n), *want, "Bytes({n})");
        }
    }

    #[test]
    fn table_matches_etcdutl() {
        let status = Status {
            hash: 0x4a17068d,
            revision: 4,
            total_key: 9,
            total_size: 20480,
            version: None,
        };
        assert_eq!(
            render_table(&status),
            "\
+----------+----------+------------+------------+
|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |
+----------+----------+------------+------------+
| 4a17068d |        4 |          9 |      20 kB |
+----------+----------+------------+------------+
"
        );
        let status = Status {
            hash: 0xd,
            revision: 123_456_789_012,
            total_key: 1,
            total_size: 3,
            version: Some("3.6.0".into()),
        };
        assert_eq!(
            render_table(&status),
            "\
+------+--------------+------------+------------+---------+
| HASH |   REVISION   | TOTAL KEYS | TOTAL SIZE | VERSION |
+------+--------------+------------+------------+---------+
|    d | 123456789012 |          1 |        3 B |   3.6.0 |
+------+--------------+------------+------------+---------+
"
        );
    }

    #[test]
    fn json_matches_etcdutl() {
        let status = Status {
            hash: 1243022989,
            revision: 4,
            total_key: 9,
            total_size: 20480,
            version: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            r#"{"hash":1243022989,"revision":4,"totalKey":9,"totalSize":20480}"#
        );
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        let with = Status {
            version: Some("3.6.0".into()),
            ..status
        };
        assert_eq!(
            serde_json::to_string(&with).unwrap(),
            r#"{"hash":1243022989,"revision":4,"totalKey":9,"totalSize":20480,"version":"3.6.0"}"#
        );
    }

    #[test]
    fn storage_versions() {
        assert_eq!(storage_version(b"3.6.0").as_deref(), Some("3.6.0"));
        assert_eq!(
            storage_version(b"3.7.1-alpha.0").as_deref(),
            Some("3.7.1-alpha.0")
        );
        assert_eq!(storage_version(b"03.6.0").as_deref(), Some("3.6.0"));
        assert_eq!(storage_version(b"3.6"), None);
        assert_eq!(storage_version(b""), None);
        assert_eq!(storage_version(b"3.6.x"), None);
        assert_eq!(storage_version(b"\xff"), None);
    }
}
