//! A store in a local directory: the embedded default.
//!
//! Objects are written to a hidden temporary file in the target directory (same filesystem),
//! around the page cache where the filesystem allows (`storage::direct`), fsynced, then renamed
//! into place, and the directory is fsynced. Temporary files start with
//! `.tmp-` and are never listed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::direct::{AlignedBuf, DirectFile};
use super::{
    check_key, io_hint, Committed, ObjectInfo, ObjectReader, ObjectStore, ObjectWriter,
    StorageError,
};
use async_trait::async_trait;
use bytes::Bytes;

const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(&self.describe(), key)?;
        Ok(self.root.join(key))
    }

    fn io_error(&self, key: &str, action: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io {
            store: self.describe(),
            key: key.to_string(),
            action,
            hint: io_hint(&source),
            source,
        }
    }

    /// A temporary sibling of `path`, unique to this process and call.
    fn temp_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let unique: u64 = rand::random();
        path.with_file_name(format!("{TMP_PREFIX}{name}.{unique:016x}"))
    }

    async fn prepare_dir(&self, path: &Path, key: &str) -> Result<(), StorageError> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.io_error(key, "create directory", e))?;
        }
        Ok(())
    }
}

impl LocalStore {
    /// A writer for `key`; `exclusive` commits only if nothing exists under `key`.
    async fn writer(
        &self,
        key: &str,
        exclusive: bool,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let path = self.path_of(key)?;
        self.prepare_dir(&path, key).await?;
        let temp = Self::temp_path(&path);
        let opened = temp.clone();
        let file = blocking(move || DirectFile::create_new(&opened))
            .await
            .map_err(|e| self.io_error(key, "create", e))?;
        Ok(Box::new(LocalWriter {
            store: self.clone(),
            key: key.to_string(),
            path,
            temp,
            exclusive,
            file: Some(file),
            block: AlignedBuf::new(),
            spare: None,
            writing: None,
            closed: false,
        }))
    }

    async fn put_with(&self, key: &str, data: Bytes, exclusive: bool) -> Result<(), StorageError> {
        let mut writer = self.writer(key, exclusive).await?;
        if let Err(e) = writer.write(data).await {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.commit().await.map(|_| ())
    }
}

/// Runs blocking file I/O off the async thread; a task that panicked is an I/O error.
async fn blocking<T: Send + 'static>(
    io: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(std::io::Error::other)?
}

use crate::fsutil::sync_dir;

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn preflight(&self) -> Result<(), StorageError> {
        let setup = |source| StorageError::Setup {
            store: self.describe(),
            path: self.root.clone(),
            source,
        };
        tokio::fs::create_dir_all(&self.root).await.map_err(setup)?;
        let probe = Self::temp_path(&self.root.join("preflight"));
        tokio::fs::write(&probe, b"etcdsafe").await.map_err(setup)?;
        tokio::fs::remove_file(&probe).await.map_err(setup)?;
        Ok(())
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, false).await
    }

    async fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, true).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_with(key, data, false).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_with(key, data, true).await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.io_error(key, "open", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let root = self.root.clone();
        let store = self.describe();
        let prefix = prefix.to_string();
        let listed = blocking(move || walk(&root, &prefix)).await;
        match listed {
            Ok(mut objects) => {
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(objects)
            }
            // A missing store is a wrong path or an unmounted volume, not an empty store.
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::StoreMissing {
                    store,
                    path: self.root.clone(),
                })
            }
            Err(source) => Err(StorageError::Io {
                store,
                key: String::new(),
                action: "list",
                hint: io_hint(&source),
                source,
            }),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(key, "delete", e)),
        }
        if let Some(dir) = path.parent().map(Path::to_path_buf) {
            blocking(move || sync_dir(&dir))
                .await
                .map_err(|e| self.io_error(key, "fsync directory", e))?;
        }
        Ok(())
    }

    async fn abort_stale(&self, older_than: Duration) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let cutoff = SystemTime::now() - older_than;
        let removed = blocking(move || remove_stale_temps(&root, cutoff)).await;
        match removed {
            Ok(removed) => Ok(removed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io_error("", "clean up temporary files", e)),
        }
    }
}

/// Removes `.tmp-*` files older than `cutoff` below `root` (left by a killed run).
fn remove_stale_temps(root: &Path, cutoff: SystemTime) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let old = entry.metadata()?.modified()? < cutoff;
            if name.starts_with(TMP_PREFIX) && old {
                std::fs::remove_file(entry.path())?;
                tracing::warn!(file = %entry.path().display(), "removed a temporary file left by an interrupted run");
                removed.push(name);
            }
        }
    }
    Ok(removed)
}

/// Every committed file under `root` whose relative key starts with `prefix`.
fn walk(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A subdirectory removed while listing (a prune) holds nothing to list.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let dir_key = format!("{key}/");
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    dirs.push((entry.path(), key));
                }
            } else if kind.is_file() && key.starts_with(prefix) {
                let metadata = match entry.metadata() {
                    Ok(metadata) => metadata,
                    // Deleted since the directory was read (a prune): not there any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                out.push(ObjectInfo {
                    key,
                    size: metadata.len(),
                    modified: metadata.modified().ok().map(chrono::DateTime::from),
                });
            }
        }
    }
    Ok(out)
}

/// Writes an object around the page cache (see `storage::direct`): chunks are gathered into
/// an aligned block; a full block goes to disk on a blocking thread while the next one fills.
struct LocalWriter {
    store: LocalStore,
    key: String,
    path: PathBuf,
    temp: PathBuf,
    /// Commit only if nothing exists under `path` (never replace).
    exclusive: bool,
    /// The file, while no block is being written.
    file: Option<DirectFile>,
    /// The block being filled.
    block: AlignedBuf,
    /// A block to fill next, while no block is being written.
    spare: Option<AlignedBuf>,
    /// The block being written; it gives back the file and the block.
    writing: Option<BlockWrite>,
    /// Committed or aborted: nothing to clean up on drop.
    closed: bool,
}

type BlockWrite = tokio::task::JoinHandle<(DirectFile, AlignedBuf, std::io::Result<()>)>;

impl LocalWriter {
    /// Waits for the block being written, if any, so the file and a free block are at hand.
    async fn settle(&mut self) -> Result<(), StorageError> {
        if let Some(writing) = self.writing.take() {
            let (file, mut block, result) = writing.await.map_err(|e| {
                self.store
                    .io_error(&self.key, "write", std::io::Error::other(e))
            })?;
            block.clear();
            self.file = Some(file);
            self.spare = Some(block);
            result.map_err(|e| self.store.io_error(&self.key, "write", e))?;
        }
        Ok(())
    }

    /// Sends the full block to disk and starts filling a free one.
    async fn write_block(&mut self) -> Result<(), StorageError> {
        self.settle().await?;
        let mut file = self.file.take().expect("writer used after a failed write");
        let free = self.spare.take().unwrap_or_default();
        let mut full = std::mem::replace(&mut self.block, free);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result = file.write_block(&mut full);
            (file, full, result)
        }));
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let taken = self.block.fill(rest);
            rest = &rest[taken..];
            if self.block.is_full() {
                self.write_block().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed, StorageError> {
        let result = async {
            self.settle().await?;
            let file = self.file.take().expect("writer used after a failed write");
            let mut tail = std::mem::take(&mut self.block);
            let (temp, path) = (self.temp.clone(), self.path.clone());
            let exclusive = self.exclusive;
            blocking(move || {
                let size = file.finish(&mut tail)?;
                if exclusive {
                    super::rename_noreplace(&temp, &path)?;
                } else {
                    std::fs::rename(&temp, &path)?;
                }
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
                Ok(size)
            })
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    StorageError::AlreadyExists {
                        store: self.store.describe(),
                        key: self.key.clone(),
                    }
                } else {
                    self.store.io_error(&self.key, "commit", e)
                }
            })
        }
        .await;
        // On failure, drop removes the temporary file.
        let size = result?;
        self.closed = true;
        // The size the file has on disk, so the caller's check against the bytes it wrote
        // catches a mistake in the padding and truncation above.
        Ok(Committed {
            key: self.key.clone(),
            size,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
        self.file = None;
        self.closed = true;
        match tokio::fs::remove_file(&self.temp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.store.io_error(&self.key, "abort", e)),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // A writer dropped without commit or abort (a cancelled run, a failed commit) leaves
        // nothing behind. A block still being written goes to the unlinked file.
        if !self.closed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
