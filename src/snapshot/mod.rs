//! etcd snapshot files, read natively: etcd's SHA-256 trailer, a read-only bbolt reader with a
//! structural check, and the exact `etcdutl snapshot status` computation.
//!
//! Everything here reads files with positioned reads and a bounded set of buffers (no mmap, no
//! whole-file reads), so memory stays small on multi-GiB snapshots.
//!
//! * [`status`]: like `etcdutl snapshot status` (structure check, then hash/revision/keys/size);
//!   works with or without a trailer.
//! * [`verify`]: [`status`] plus a valid SHA-256 trailer whose database part is exactly the bbolt
//!   file the meta page describes: "this is a sound `etcdctl snapshot save` file".
//! * [`TrailerHasher`]: the trailer check for bytes as they stream in.

pub mod bbolt;
pub mod digest;
pub mod live;
pub mod status;
#[doc(hidden)]
pub mod testdb;
pub mod trailer;

use std::path::{Path, PathBuf};

pub use bbolt::{Corruption, Db, Item, Meta};
pub use live::live_keys;
pub use status::{humanize_bytes, render_table, Status};
pub use trailer::{check_trailer, has_trailer, TrailerCheck, TrailerHasher, TRAILER_LEN};

/// Why a snapshot file could not be read or is not sound. Every message is one line that names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// What was being done: "open", "read", "stat".
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the file is empty (0 bytes): not an etcd snapshot", path.display())]
    Empty { path: PathBuf },
    #[error("{}: the file is {len} bytes, too short to hold a bbolt database: not an etcd snapshot", path.display())]
    TooShort { path: PathBuf, len: u64 },
    #[error("{}: not a bbolt database (no bbolt meta page at the start of the file): not an etcd snapshot", path.display())]
    NotBbolt { path: PathBuf },
    #[error("{}: truncated: file is {file_len} bytes but the database needs {needed} (only {pages_present} of its {pages} pages are there) — the download or copy was cut short", path.display())]
    Truncated {
        path: PathBuf,
        file_len: u64,
        needed: u64,
        pages_present: u64,
        pages: u64,
    },
    #[error("{}: corrupt database: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: Corruption },
    #[error("{}: not an etcd snapshot: {reason}", path.display())]
    NotEtcd { path: PathBuf, reason: NotEtcd },
    #[error("{}: no SHA-256 trailer (length {len} % 512 != 32): this is a raw bbolt file or a truncated snapshot, not the output of `etcdctl snapshot save`", path.display())]
    NoTrailer { path: PathBuf, len: u64 },
    #[error("{}: SHA-256 trailer does not match the contents: the file is corrupt", path.display())]
    TrailerMismatch {
        path: PathBuf,
        /// The last 32 bytes of the file.
        stored: [u8; 32],
        /// The SHA-256 of everything before them.
        computed: [u8; 32],
    },
    #[error("{}: the file holds {db_len} bytes before its SHA-256 trailer but the database in it is {size} bytes: not an unmodified `etcdctl snapshot save` file", path.display())]
    SizeMismatch {
        path: PathBuf,
        db_len: u64,
        size: u64,
    },
}

impl SnapshotError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SnapshotError::Io { path, .. }
            | SnapshotError::Empty { path }
            | SnapshotError::TooShort { path, .. }
            | SnapshotError::NotBbolt { path }
            | SnapshotError::Truncated { path, .. }
            | SnapshotError::Corrupt { path, .. }
            | SnapshotError::NotEtcd { path, .. }
            | SnapshotError::NoTrailer { path, .. }
            | SnapshotError::TrailerMismatch { path, .. }
            | SnapshotError::SizeMismatch { path, .. } => path,
        }
    }
}

/// Why a sound bbolt file is not an etcd snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEtcd {
    #[error("it has no `{0}` bucket")]
    MissingBucket(&'static str),
    #[error("bucket `key` holds a {len}-byte key; etcd revision keys are at least 8 bytes")]
    ShortRevisionKey { len: usize },
}

/// What [`verify`] proved about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub status: Status,
    pub trailer: TrailerCheck,
}

/// `etcdutl snapshot status` for `path`: the structural check, then the hash, revision, key
/// count and size. Works on files with or without etcd's SHA-256 trailer.
pub fn status(path: &Path) -> Result<Status, SnapshotError> {
    let db = Db::open(path)?;
    status::compute(&db)
}

/// [`status`], taking leaf pages from `digests` (made from this file's bytes as they were
/// written, see [`digest`]) instead of reading them.
pub fn status_with_digests(
    path: &Path,
    digests: &digest::Digests,
) -> Result<Status, SnapshotError> {
    let db = Db::open(path)?;
    status::compute_with_digests(&db, digests)
}

/// Proves `path` is a sound `etcdctl snapshot save` file: a valid SHA-256 trailer, a database
/// part exactly as long as its meta page says, a sound bbolt structure and an etcd status.
///
/// The trailer (one sequential read) and the structure walk run on two threads.
pub fn verify(path: &Path) -> Result<Verified, SnapshotError> {
    let (trailer, status) = std::thread::scope(|scope| {
        let trailer = scope.spawn(|| check_trailer(path));
        let status = Db::open(path).and_then(|db| {
            let size = db.size();
            status::compute(&db).map(|status| (status, size))
        });
        let trailer = match trailer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (trailer, status)
    });
    // An empty, foreign or cut-short file is best described as such; otherwise the trailer
    // speaks first, since a digest mismatch is the most direct statement that the bytes are not
    // what etcd sent.
    if let Err(
        e @ (SnapshotError::Empty { .. }
        | SnapshotError::TooShort { .. }
        | SnapshotError::NotBbolt { .. }
        | SnapshotError::Truncated { .. }),
    ) = status
    {
        return Err(e);
    }
    let trailer = trailer?;
    let (status, size) = status?;
    if trailer.db_len != size {
        return Err(SnapshotError::SizeMismatch {
            path: path.to_path_buf(),
            db_len: trailer.db_len,
            size,
        });
    }
    Ok(Verified { status, trailer })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::testdb::{self, build, Bucket, Node, Options};
    use super::*;

    fn expected_status(root: &Bucket, total_size: u64) -> Status {
        let (mut hash, mut total_key, mut revision, mut version) = (0u32, 0u64, 0i64, None);
        for (name, node) in &root.entries {
            let Node::Bucket(bucket) = node else { panic!() };
            hash = crc32c::crc32c_append(hash, name);
            for (k, v) in &bucket.entries {
                hash = crc32c::crc32c_append(hash, k);
                if let Node::Value(v) = v {
                    hash = crc32c::crc32c_append(hash, v);
                    if name == b"meta" && k == b"storageVersion" {
                        version = Some(String::from_utf8(v.clone()).unwrap());
                    }
                }
                total_key += 1;
                if name == b"key" {
                    revision = i64::from_be_bytes(k[..8].try_into().unwrap());
                }
            }
        }
        Status {
            hash,
            revision,
            total_key,
            total_size,
            version,
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// The status of `path`, computed plainly and with leaf digests made from its bytes as
    /// the spool makes them (2 MiB at a time, and one page at a time); all three must agree,
    /// errors included.
    fn both(path: &Path) -> Result<Status, SnapshotError> {
        let plain = status(path);
        let bytes = std::fs::read(path).unwrap();
        let page_size = bytes
            .get(24..28)
            .map_or(4096, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        for chunk in [2 << 20, page_size.clamp(512, 65536)] {
            let mut builder = digest::DigestBuilder::new(usize::MAX, status::must_see);
            for piece in bytes.chunks(chunk) {
                builder.update(piece);
            }
            let digested = status_with_digests(path, &builder.finish());
            match (&plain, &digested) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "chunks of {chunk}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "chunks of {chunk}"),
                (a, b) => panic!("plain {a:?}, with digests (chunks of {chunk}) {b:?}"),
            }
        }
        plain
    }

    fn one_line(err: &SnapshotError) -> String {
        let text = err.to_string();
        assert!(!text.contains('\n'), "multi-line message: {text}");
        assert!(
            text.starts_with(&err.path().display().to_string()),
            "{text}"
        );
        text
    }

    /// A small etcd-like database with every structure: branch levels, overflow, nested and
    /// inline buckets, a freelist with free pages.
    fn small_etcd() -> (Bucket, Options) {
        let mut root = testdb::etcd_like(40, 30);
        root.bucket("key")
            .put(testdb::revision_key(1000, 0), vec![9u8; 1500]);
        root.bucket("lease").bucket("nested").put("a", "b");
        root.bucket("lease").put("plain", "x");
        let opts = Options {
            page_size: 512,
            max_leaf_entries: 4,
            max_branch_entries: 3,
            free_pages: 2,
            ..Options::default()
        };
        (root, opts)
    }

    #[test]
    fn status_of_etcd_like_databases() {
        let dir = tempfile::tempdir().unwrap();
        let mut with_version = testdb::etcd_like(3, 10);
        with_version.bucket("meta").put("storageVersion", "3.6.0");
        let cases = [
            (testdb::etcd_like(0, 0), Options::default()),
            (testdb::etcd_like(1, 50), Options::default()),
            (testdb::etcd_like(5000, 120), Options::default()),
            (
                testdb::etcd_like(5000, 120),
                Options {
                    freelist: false,
                    free_pages: 4,
                    ..Options::default()
                },
            ),
            (small_etcd().0, small_etcd().1),
            (with_version, Options::default()),
        ];
        for (i, (root, opts)) in cases.iter().enumerate() {
            let built = build(root, opts);
            let want = expected_status(root, built.bytes.len() as u64);
            let raw = write(dir.path(), &format!("raw{i}.db"), &built.bytes);
            assert_eq!(both(&raw).unwrap(), want, "case {i}");
            let saved = write(dir.path(), &format!("saved{i}.db"), &built.with_trailer());
            assert_eq!(both(&saved).unwrap(), want, "case {i} with trailer");
            let verified = verify(&saved).unwrap();
            assert_eq!(verified.status, want);
            assert_eq!(verified.trailer.db_len, built.bytes.len() as u64);
            let err = verify(&raw).unwrap_err();
            assert!(matches!(err, SnapshotError::NoTrailer { .. }), "{err}");
            one_line(&err);
        }
        let big = testdb::etcd_like(5000, 120);
        let built = build(&big, &Options::default());
        let want = expected_status(&big, built.bytes.len() as u64);
        assert_eq!(want.revision, 5001);
        assert_eq!(want.total_key, 5000 + 4);
    }

    #[test]
    fn not_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = Bucket::new();
        root.bucket("widgets").put("a", "b");
        let path = write(
            dir.path(),
            "bolt.db",
            &build(&root, &Options::default()).bytes,
        );
        let err = both(&path).unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::NotEtcd {
                reason: NotEtcd::MissingBucket("key"),
                ..
            }
        ));
        assert!(one_line(&err).contains("not an etcd snapshot: it has no `key` bucket"));
        let mut root = Bucket::new();
        root.bucket("key").put(testdb::revision_key(2, 0), "v");
        let path = write(
            dir.path(),
            "nometa.db",
            &build(&root, &Options::default()).bytes,
        );
        assert!(matches!(
            both(&path),
            Err(SnapshotError::NotEtcd {
                reason: NotEtcd::MissingBucket("meta"),
                ..
            })
        ));
        let mut root = testdb::etcd_like(2, 2);
        root.bucket("key").put("short", "v");
        let path = write(
            dir.path(),
            "short.db",
            &build(&root, &Options::default()).bytes,
        );
        assert!(matches!(
            both(&path),
            Err(SnapshotError::NotEtcd {
                reason: NotEtcd::ShortRevisionKey { len: 5 },
                ..
            })
        ));
        let path = write(
            dir.path(),
            "empty.db",
            &build(&Bucket::new(), &Options::default()).bytes,
        );
        assert!(matches!(both(&path), Err(SnapshotError::NotEtcd { .. })));
    }

    #[test]
    fn verify_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let root = testdb::etcd_like(300, 100);
        let built = build(&root, &Options::default());
        let saved = built.with_trailer();
        let len = saved.len();
        let path = write(dir.path(), "snapshot.db", &saved);
        verify(&path).unwrap();

        let truncated = write(dir.path(), "cut.db", &saved[..len - 4096 - 32]);
        let err = verify(&truncated).unwrap_err();
        assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
        let text = one_line(&err);
        assert!(
            text.contains("truncated") && text.contains("cut short"),
            "{text}"
        );

        let mut flipped = saved.clone();
        flipped[len / 2] ^= 0x10;
        let flipped = write(dir.path(), "flipped.db", &flipped);
        let err = verify(&flipped).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TrailerMismatch { .. }),
            "{err}"
        );
        one_line(&err);

        let raw = write(dir.path(), "raw.db", &built.bytes);
        let err = verify(&raw).unwrap_err();
        assert!(one_line(&err).contains("no SHA-256 trailer"));

        // A valid trailer over a file with an extra page: not what etcd writes.
        let mut padded = built.bytes.clone();
        padded.resize(padded.len() + 4096, 0);
        let padded = write(dir.path(), "padded.db", &testdb::with_trailer(&padded));
        assert!(matches!(
            verify(&padded),
            Err(SnapshotError::SizeMismatch { .. })
        ));
        status(&padded).unwrap();

        let empty = write(dir.path(), "empty.db", b"");
        assert!(matches!(status(&empty), Err(SnapshotError::Empty { .. })));
        assert!(verify(&empty).is_err());
        let missing = dir.path().join("missing.db");
        let err = status(&missing).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { action: "open", .. }));
        one_line(&err);
    }

    /// Flips bytes all over a small database: status must never panic, and verify must always
    /// notice (the trailer covers every byte).
    #[test]
    fn flipping_any_byte_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (root, opts) = small_etcd();
        let built = build(&root, &opts);
        let good = expected_status(&root, built.bytes.len() as u64);
        let saved = built.with_trailer();
        let path = write(dir.path(), "snapshot.db", &saved);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let (mut errors, mut same, mut different) = (0, 0, 0);
        for (offset, &byte) in saved.iter().enumerate() {
            for flip in [0x01u8, 0xFF] {
                file.write_all_at(&[byte ^ flip], offset as u64).unwrap();
                match both(&path) {
                    Ok(s) if s == good => same += 1,
                    Ok(_) => different += 1,
                    Err(e) => {
                        one_line(&e);
                        errors += 1;
                    }
                }
                if offset % 13 == 0 {
                    assert!(verify(&path).is_err(), "offset {offset} ^ {flip:#x}");
                }
                file.write_all_at(&[byte], offset as u64).unwrap();
            }
        }
        assert_eq!(status(&path).unwrap(), good);
        // Most flips land in keys and values (a different status) or in structure (an error);
        // a few land in slack space.
        eprintln!("flips: {errors} errors, {same} same status, {different} different");
        assert!(errors > 0 && different > 0, "{errors} {same} {different}");
    }

    #[test]
    fn random_pages_and_lengths_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (root, opts) = small_etcd();
        let built = build(&root, &opts);
        let ps = built.page_size as usize;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for page in 0..built.hwm as usize {
            for _ in 0..3 {
                let mut bytes = built.bytes.clone();
                for b in &mut bytes[page * ps..(page + 1) * ps] {
                    *b = next() as u8;
                }
                // Keep the header sometimes, so the elements get parsed.
                if next() % 2 == 0 {
                    bytes[page * ps..page * ps + 16]
                        .copy_from_slice(&built.bytes[page * ps..page * ps + 16]);
                }
                let path = write(dir.path(), "random.db", &bytes);
                if let Err(e) = both(&path) {
                    one_line(&e);
                }
            }
        }
        for len in 0..built.bytes.len() {
            if len % 37 != 0 && len % ps != 0 {
                continue;
            }
            let path = write(dir.path(), "cut.db", &built.bytes[..len]);
            let err = both(&path).unwrap_err();
            one_line(&err);
        }
    }
}
