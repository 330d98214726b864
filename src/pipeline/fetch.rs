//! The pipeline in reverse: store -> age -> zstd -> a plain snapshot file, checked against the
//! manifest and etcd's trailer, then verified natively. The output file appears only when sound.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::io::SyncIoBridge;

use crate::catalog::{self, CatalogError, Manifest};
use crate::crypto::{CryptoError, Identities};
use crate::snapshot::{self, SnapshotError, TrailerHasher};
use crate::storage::{ObjectStore, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{path} already exists: choose another -o or remove it first")]
    OutputExists { path: PathBuf },
    #[error("writing {path} failed: {source}{hint}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("backup {id}: reading the stored object failed: {source}")]
    Read {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {id}: {what} does not match the manifest (expected {expected}, got {actual}): the stored backup is corrupt; use another one")]
    Mismatch {
        id: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("backup {id} has no control-plane files (include-files was not set when it was taken): restore without --restore-files")]
    NoFiles { id: String },
    #[error("backup {id}: {source}")]
    Files {
        id: String,
        #[source]
        source: crate::files::FilesError,
    },
    #[error("backup {id}: {source}")]
    Snapshot {
        id: String,
        #[source]
        source: SnapshotError,
    },
}

/// Downloads, decrypts and decompresses a backup into `output`, and proves it sound.
pub async fn fetch(
    store: &dyn ObjectStore,
    id: &str,
    identities: Identities,
    output: &Path,
) -> Result<(Manifest, snapshot::Status), FetchError> {
    fetch_with(store, id, identities, output, false).await
}

/// [`fetch`], with a progress line on stderr when `progress` (for people waiting on it).
pub async fn fetch_with(
    store: &dyn ObjectStore,
    id: &str,
    identities: Identities,
    output: &Path,
    progress: bool,
) -> Result<(Manifest, snapshot::Status), FetchError> {
    let manifest = catalog::resolve(store, id).await?;
    let status = fetch_manifest(store, &manifest, identities, output, progress).await?;
    Ok((manifest, status))
}

/// [`fetch_with`] for a backup whose manifest the caller already read.
pub async fn fetch_manifest(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    identities: Identities,
    output: &Path,
    progress: bool,
) -> Result<snapshot::Status, FetchError> {
    let progress = progress.then(|| {
        crate::progress::Progress::stderr(
            format!("fetching {}", manifest.id),
            manifest.snapshot.size,
        )
    });
    if output.exists() {
        return Err(FetchError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let reader = store.get(&manifest.object.key).await?;
    let part = part_path(output);
    let m = manifest.clone();
    let part_for_task = part.clone();
    decode_in_place(&manifest.id, part, output, move || {
        decode_to_file(
            SyncIoBridge::new(reader),
            &identities,
            &m,
            &part_for_task,
            progress,
        )
    })
    .await
}

fn part_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    output.with_file_name(name)
}

/// Counts and hashes the stored object's bytes as they are read.
struct HashingReader<R> {
    inner: R,
    sha256: Sha256,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Decrypts and decompresses a stored object, handing the plain bytes to `sink` as they come,
/// and returns the SHA-256 of the stored bytes (all of them, including any the decoders left
/// unread, so a sound object's digest matches its manifest exactly).
fn decode_object(
    object: impl Read,
    identities: &Identities,
    manifest: &Manifest,
    mut sink: impl FnMut(&[u8]) -> Result<(), FetchError>,
) -> Result<String, FetchError> {
    let read_err = |source| FetchError::Read {
        id: manifest.id.clone(),
        source,
    };
    let mut hashing = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, object),
        sha256: Sha256::new(),
        size: 0,
    };
    let decrypted = identities.decrypt(&mut hashing, &manifest.object.encryption.recipients)?;
    let mut zstd = zstd::stream::read::Decoder::new(decrypted).map_err(read_err)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = zstd.read(&mut buffer).map_err(read_err)?;
        if n == 0 {
            break;
        }
        sink(&buffer[..n])?;
    }
    drop(zstd);
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(read_err)?;
    Ok(hex::encode(hashing.sha256.finalize()))
}

/// Creates `part` (0600: it is plaintext cluster state) for a fetch to write into.
fn create_part(part: &Path) -> Result<std::fs::File, FetchError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(part)
        .map_err(|source| output_err(part, source))
}

/// A write to the fetch's output (its `.part` file, or the rename to the final name) failed.
fn output_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Output {
        path: path.to_path_buf(),
        hint: crate::storage::io_hint(&source),
        source,
    }
}

/// Runs a blocking decode into `part`; on success renames it to `output`, on failure removes it.
async fn decode_in_place<T: Send + 'static>(
    id: &str,
    part: PathBuf,
    output: &Path,
    decode: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    let result = tokio::task::spawn_blocking(decode)
        .await
        .map_err(|e| FetchError::Read {
            id: id.to_string(),
            source: std::io::Error::other(e),
        })
        .and_then(|r| r);
    let value = match result {
        Ok(value) => value,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, output).map_err(|source| output_err(output, source))?;
    Ok(value)
}

fn decode_to_file(
    object: impl Read,
    identities: &Identities,
    manifest: &Manifest,
    part: &Path,
    mut progress: Option<crate::progress::Progress>,
) -> Result<snapshot::Status, FetchError> {
    let id = &manifest.id;
    let file = create_part(part)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut trailer = TrailerHasher::new();
    let object_sha = decode_object(object, identities, manifest, |bytes| {
        trailer.update(bytes);
        out.write_all(bytes).map_err(|e| output_err(part, e))?;
        if let Some(p) = progress.as_mut() {
            p.add(bytes.len() as u64);
        }
        Ok(())
    })?;
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    let file = out
        .into_inner()
        .map_err(|e| output_err(part, e.into_error()))?;
    file.sync_all().map_err(|e| output_err(part, e))?;
    if object_sha != manifest.object.sha256 {
        return Err(FetchError::Mismatch {
            id: id.clone(),
            what: "the stored object's SHA-256",
            expected: manifest.object.sha256.clone(),
            actual: object_sha,
        });
    }
    let check = trailer
        .finish(part)
        .map_err(|source| FetchError::Snapshot {
            id: id.clone(),
            source,
        })?;
    let stream_sha = hex::encode(check.stream_sha256);
    if stream_sha != manifest.snapshot.sha256 {
        return Err(FetchError::Mismatch {
            id: id.clone(),
            what: "the snapshot's SHA-256",
            expected: manifest.snapshot.sha256.clone(),
            actual: stream_sha,
        });
    }
    let status = snapshot::status(part).map_err(|source| FetchError::Snapshot {
        id: id.clone(),
        source,
    })?;
    let expected = (
        manifest.snapshot.hash,
        manifest.snapshot.revision,
        manifest.snapshot.total_key,
    );
    let actual = (status.hash, status.revision, status.total_key);
    if expected != actual {
        return Err(FetchError::Mismatch {
            id: id.clone(),
            what: "the snapshot status (hash, revision, keys)",
            expected: format!("{expected:?}"),
            actual: format!("{actual:?}"),
        });
    }
    Ok(status)
}

/// Downloads, decrypts and decompresses a backup's control-plane files into a tar at `output`
/// (0600: it holds private keys), checks the stored object's SHA-256 against the manifest and
/// that every entry name is safe, and returns the entries.
pub async fn fetch_files(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    identities: Identities,
    output: &Path,
) -> Result<Vec<crate::files::Entry>, FetchError> {
    let Some(files) = manifest.files.clone() else {
        return Err(FetchError::NoFiles {
            id: manifest.id.clone(),
        });
    };
    if output.exists() {
        return Err(FetchError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let reader = store.get(&files.key).await?;
    let part = part_path(output);
    let m = manifest.clone();
    let part_for_task = part.clone();
    decode_in_place(&manifest.id, part, output, move || {
        let mut out = create_part(&part_for_task)?;
        let sha = decode_object(SyncIoBridge::new(reader), &identities, &m, |bytes| {
            out.write_all(bytes)
                .map_err(|e| output_err(&part_for_task, e))
        })?;
        out.sync_all().map_err(|e| output_err(&part_for_task, e))?;
        if sha != files.sha256 {
            return Err(FetchError::Mismatch {
                id: m.id.clone(),
                what: "the control-plane files object's SHA-256",
                expected: files.sha256.clone(),
                actual: sha,
            });
        }
        crate::files::list(&part_for_task).map_err(|e| FetchError::Files {
            id: m.id.clone(),
            source: e,
        })
    })
    .await
}
