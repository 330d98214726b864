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
pub mod status;
#[doc(hidden)]
pub mod testdb;
pub mod trailer;

use std::path::{Path, PathBuf};

pub use bbolt::{Corruption, Db, Item, Meta};
pub use status::{humanize_bytes, render_table, Status};
pub use trailer::{check_trailer, TrailerCheck, TrailerHasher, TRAILER_LEN};

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
    SizeMismatch { path: PathBuf, db_len: u64, size: u64 },
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
    // A cut-short file is best described as such; otherwise the trailer speaks first, since a
    // digest mismatch is the most direct statement that the bytes are not what etcd sent.
    if let Err(e @ SnapshotError::Truncated { .. }) = status {
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
