//! Object storage: one narrow trait, implemented by every backend.
//!
//! Keys are `/`-separated relative names. A writer's object becomes visible only when it is
//! committed; an aborted (or dropped) writer leaves nothing under its key.

pub mod direct;
pub mod local;
pub mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

const S3_UNREACHABLE_HINT: &str = ": is the S3 endpoint reachable? check storage.s3.endpoint and the network, or raise storage.s3.timeout for a slow link";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{store}: {key}: no such object")]
    NotFound { store: String, key: String },
    #[error("{store}: {key}: {action} failed: {source}{hint}")]
    Io {
        store: String,
        key: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    /// The S3 endpoint answered a call with an error: its HTTP status, error code and message
    /// are what it said; `hint` is chosen from the status and code.
    #[error("s3://{bucket}/{key}: {action} failed: {answer}")]
    S3 {
        bucket: String,
        key: String,
        action: &'static str,
        answer: Box<s3::S3Answer>,
    },
    /// No answer from the S3 endpoint within `storage.s3.timeout`.
    #[error("{call}: {} did not answer within storage.s3.timeout ({}) ({attempts}){S3_UNREACHABLE_HINT}", call.endpoint, humantime::format_duration(*timeout))]
    S3Timeout {
        call: Box<s3::S3Call>,
        timeout: Duration,
        attempts: s3::MaxAttempts,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The S3 endpoint refused or reset the connection.
    #[error("{call}: cannot connect to {} (connection refused or reset) ({attempts}){S3_UNREACHABLE_HINT}", call.endpoint)]
    S3Unreachable {
        call: Box<s3::S3Call>,
        attempts: s3::MaxAttempts,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The S3 endpoint sent something that is not an S3 answer.
    #[error("{call}: {} sent an answer that is not S3's (HTTP {status}): check storage.s3.endpoint{hint}", call.endpoint)]
    S3NotS3 {
        call: Box<s3::S3Call>,
        status: u16,
        hint: &'static str,
    },
    /// Any other failure of the S3 client (building or sending the request).
    #[error("{call}: {}: {source}", call.endpoint)]
    S3Client {
        call: Box<s3::S3Call>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A part upload task panicked or was cancelled.
    #[error("s3://{bucket}/{key}: {action} failed: {source}")]
    S3Task {
        bucket: String,
        key: String,
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{store}: {key}: already exists: another writer created it first (etcdsafe never replaces a stored object); choose another name and retry")]
    AlreadyExists { store: String, key: String },
    #[error("{store}: the store directory {path} does not exist: fix storage.local.path (mount the backup volume?), or take a first backup with `etcdsafe snapshot save`, which creates it")]
    StoreMissing { store: String, path: PathBuf },
    #[error("{store}: invalid object key {key:?}: keys are relative, /-separated, without . or .. parts")]
    BadKey { store: String, key: String },
    #[error("{store}: cannot use {path}: {source}")]
    Setup {
        store: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An object as listed by a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the object was last written, by the store's clock, where the store says.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a committed object turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub key: String,
    pub size: u64,
}

pub type ObjectReader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// A short description for messages and the manifest: `local:/var/backups/etcdsafe`, `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Checks that the store can be reached and written, before a backup starts.
    async fn preflight(&self) -> Result<(), StorageError>;

    /// Starts writing a (possibly large) object. Nothing is visible until `commit`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;

    /// Starts writing a (possibly large) object that must not exist yet: its `commit` fails
    /// with [`StorageError::AlreadyExists`] (and publishes nothing) when another writer
    /// committed one under `key` first.
    async fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;

    /// Writes a small object (a manifest) atomically, replacing any object under that key.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;

    /// Writes a small object (a manifest) atomically, only if no object exists under `key`:
    /// of writers racing for one key exactly one succeeds; the others get
    /// [`StorageError::AlreadyExists`] and change nothing.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError>;

    /// Streams an object.
    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// Lists every committed object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Removes what interrupted runs left behind (temporary files, incomplete multipart
    /// uploads) that is older than `older_than`. Returns the keys cleaned up.
    async fn abort_stale(&self, older_than: Duration) -> Result<Vec<String>, StorageError>;
}

#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// Makes the object visible under its key.
    async fn commit(self: Box<Self>) -> Result<Committed, StorageError>;
    /// Discards everything written.
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// The validated `storage` section: which backend, with its settings.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// `storage.local`: a directory.
    Local { path: PathBuf },
    /// `storage.s3`: the bucket settings and the timeout (`S3Settings` derefs to the `S3Config`).
    S3(Box<s3::S3Settings>),
}

impl StorageSettings {
    pub fn describe(&self) -> String {
        match self {
            StorageSettings::Local { path } => format!("local:{}", path.display()),
            StorageSettings::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }

    /// Leftovers of interrupted runs older than this are cleaned up before a backup.
    pub fn abort_incomplete_after(&self) -> Duration {
        match self {
            StorageSettings::Local { .. } => Duration::from_secs(3600),
            StorageSettings::S3(s3) => s3.abort_incomplete_after,
        }
    }
}

/// Opens the store the settings name.
pub async fn open(settings: &StorageSettings) -> Result<Box<dyn ObjectStore>, StorageError> {
    match settings {
        StorageSettings::Local { path } => Ok(Box::new(local::LocalStore::new(path.clone()))),
        StorageSettings::S3(s3) => Ok(Box::new(
            s3::S3Store::connect_settings((**s3).clone()).await?,
        )),
    }
}

/// Claims a key no other writer has: creates an empty object under `candidate(attempt)`
/// exclusively ([`ObjectStore::put_new`]) and returns the key; when another writer has that key,
/// waits a moment and tries the next candidate, up to `attempts` times. Of writers racing for
/// one candidate exactly one gets it. A writer that claimed a key may then replace the empty
/// object with its own (`create` + `commit`): nobody else writes under a claimed key.
pub async fn claim_key(
    store: &dyn ObjectStore,
    attempts: u32,
    mut candidate: impl FnMut(u32) -> String,
) -> Result<String, StorageError> {
    let mut attempt = 0;
    loop {
        let key = candidate(attempt);
        match store.put_new(&key, Bytes::new()).await {
            Ok(()) => return Ok(key),
            Err(StorageError::AlreadyExists { .. }) if attempt + 1 < attempts => {
                tracing::warn!(key, "another writer has this name; choosing another");
                attempt += 1;
                // Ids carry the time to the millisecond: the next candidate is a new one.
                let pause = 2 + rand::random::<u64>() % 8;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads a whole small object (a manifest) into memory. Never use it for snapshot data.
pub async fn get_small(
    store: &dyn ObjectStore,
    key: &str,
    limit: usize,
) -> Result<Vec<u8>, StorageError> {
    use tokio::io::AsyncReadExt;
    let reader = store.get(key).await?;
    let mut data = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|source| StorageError::Io {
            store: store.describe(),
            key: key.to_string(),
            action: "read",
            source,
            hint: "",
        })?;
    if data.len() > limit {
        return Err(StorageError::Io {
            store: store.describe(),
            key: key.to_string(),
            action: "read",
            source: std::io::Error::other(format!("larger than {limit} bytes")),
            hint: ": this is not a manifest",
        });
    }
    Ok(data)
}

/// Rejects keys that could escape a store's root or confuse listing.
pub(crate) fn check_key(store: &str, key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(StorageError::BadKey {
            store: store.to_string(),
            key: key.to_string(),
        });
    }
    Ok(())
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`), atomically: of two
/// renames racing for one name exactly one wins. Filesystems without `RENAME_NOREPLACE` get a
/// hard link and an unlink, which is as exclusive.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (old, new) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            old.as_ptr(),
            libc::AT_FDCWD,
            new.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(error),
    }
}

/// A hint for I/O errors an operator can act on.
pub(crate) fn io_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => ": the disk is full; free space or move the store",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            ": permission denied; check the owner and mode of the store directory"
        }
        Some(libc::EROFS) => ": the filesystem is read-only",
        _ => "",
    }
}
