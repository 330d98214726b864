//! The pipeline in reverse: store -> age -> zstd -> a plain snapshot file, checked against the
//! manifest and etcd's trailer, then verified natively. The output file appears only when sound.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::io::SyncIoBridge;

use crate::catalog::signature::{Trust, TrustError};
use crate::catalog::{self, CatalogError, Manifest};
use crate::crypto::{CryptoError, Identities};
use crate::snapshot::{self, SnapshotError, TrailerHasher};
use crate::storage::{ObjectStore, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
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
    #[error("backup {id}: the stored object {key} is damaged ({source}): nothing was written; run `etcdsafe backups audit` to find every damaged backup, and fetch an older one{older}")]
    Damaged {
        id: String,
        key: String,
        #[source]
        source: Damage,
        /// ` (e.g. <id>)`, or how to find one.
        older: String,
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

/// Downloads, decrypts and decompresses a backup into `output`, and proves it sound: its
/// signature first (with `trust`'s allowed signers), then every byte.
pub async fn fetch(
    store: &dyn ObjectStore,
    id: &str,
    identities: Identities,
    output: &Path,
    trust: &Trust,
) -> Result<(Manifest, snapshot::Status), FetchError> {
    fetch_with(store, id, identities, output, false, trust).await
}

/// [`fetch`], with a progress line on stderr when `progress` (for people waiting on it).
pub async fn fetch_with(
    store: &dyn ObjectStore,
    id: &str,
    identities: Identities,
    output: &Path,
    progress: bool,
    trust: &Trust,
) -> Result<(Manifest, snapshot::Status), FetchError> {
    let manifest = if id == "latest" {
        let (manifest, skipped) = latest(store).await?;
        if let Some(note) = skipped {
            // Say which backup this is and why, before the download starts.
            if progress {
                eprintln!("note: {note}");
            } else {
                tracing::warn!("{note}");
            }
        }
        manifest
    } else {
        catalog::resolve(store, id).await?
    };
    // Nothing is downloaded from a backup whose signature does not hold.
    trust.require(store, &manifest).await?;
    match fetch_manifest(store, &manifest, identities, output, progress).await {
        Ok(status) => Ok((manifest, status)),
        Err(FetchError::Damaged {
            id, key, source, ..
        }) => Err(FetchError::Damaged {
            older: older_than(store, &id).await,
            id,
            key,
            source,
        }),
        Err(e) => Err(e),
    }
}

/// The newest backup, and when newer manifests were passed over as broken, a sentence naming
/// the backup taken and why the newer ones were not.
async fn latest(store: &dyn ObjectStore) -> Result<(Manifest, Option<String>), FetchError> {
    let listing = catalog::list(store).await?;
    let Some(chosen) = listing.backups.last().cloned() else {
        return Err(CatalogError::Empty {
            store: store.describe(),
        }
        .into());
    };
    // Problems that name a manifest newer than the one chosen (ids sort by time).
    let skipped: Vec<String> = listing
        .problems
        .iter()
        .map(|p| p.to_string())
        .filter(|text| newer_id_in(text, &chosen.id))
        .collect();
    if skipped.is_empty() {
        return Ok((chosen, None));
    }
    let note = format!(
        "fetching backup {} ({}), the newest sound one: newer backups were skipped because they are broken: {}; see `etcdsafe backups list`",
        chosen.id,
        chosen.created_at_text(),
        skipped.join("; ")
    );
    Ok((chosen, Some(note)))
}

/// Whether `text` names a backup id (`<time>-rev<n>`) that sorts after `id`.
fn newer_id_in(text: &str, id: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == '/' || c == ':' || c == '"' || c == ',')
        .filter_map(|word| {
            catalog::object_id(word)
                .or_else(|| word.strip_suffix(catalog::MANIFEST_SUFFIX))
                .or(Some(word))
        })
        .filter(|word| catalog::id_started_at(word).is_some())
        .any(|word| word > id)
}

/// A sound-looking backup older than `id` to suggest instead of a damaged one.
async fn older_than(store: &dyn ObjectStore, id: &str) -> String {
    let older = match catalog::list(store).await {
        Ok(listing) => listing
            .backups
            .into_iter()
            .rev()
            .find(|b| b.id.as_str() < id)
            .map(|b| b.id),
        Err(_) => None,
    };
    match older {
        Some(older) => format!(" (e.g. {older})"),
        None => " (see `etcdsafe backups list`)".to_string(),
    }
}

/// How much of a fetched snapshot [`fetch_manifest_checked`] proves before it renames it
/// into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Everything: the stored object's SHA-256, the snapshot's SHA-256 and etcd's trailer, the
    /// native status against the manifest; the file is synced.
    Snapshot,
    /// For a caller that edits the file and then hashes, walks and syncs the result itself (a
    /// point-in-time fetch): only the stored object's SHA-256 (the signed manifest's, which
    /// binds the bytes age and zstd then decode); the file is not synced.
    Object,
}

/// [`fetch_with`] for a backup whose manifest the caller already read.
pub async fn fetch_manifest(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    identities: Identities,
    output: &Path,
    progress: bool,
) -> Result<snapshot::Status, FetchError> {
    let status = fetch_manifest_checked(
        store,
        manifest,
        identities,
        output,
        progress,
        Check::Snapshot,
    )
    .await?;
    Ok(status.expect("a full check walks the snapshot"))
}

/// [`fetch_manifest`], proving what `check` says; the native status when it walked the file.
pub async fn fetch_manifest_checked(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    identities: Identities,
    output: &Path,
    progress: bool,
    check: Check,
) -> Result<Option<snapshot::Status>, FetchError> {
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
    let (part, file) = create_part(output)?;
    let m = manifest.clone();
    let part_for_task = part.clone();
    decode_in_place(&manifest.id, part, output, move || {
        decode_to_file(
            SyncIoBridge::new(reader),
            &identities,
            &m,
            file,
            &part_for_task,
            progress,
            check,
        )
    })
    .await
}

/// A temporary name next to `output` that is this fetch's alone: hidden, random, and created
/// exclusively, so a file someone else has there (`snapshot.db.part` from another tool or run)
/// is never written to or removed.
fn part_candidate(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    let unique: u64 = rand::random();
    output.with_file_name(format!(".{name}.{unique:016x}.part"))
}

/// Counts and hashes the stored object's bytes as they are read, and notes whether reading
/// from the store failed (a network or disk error, not damage in the object).
struct HashingReader<'a, R> {
    inner: R,
    sha256: Sha256,
    size: u64,
    store_failed: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .inspect_err(|_| self.store_failed.set(true))?;
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
    key: &str,
    mut sink: impl FnMut(&[u8]) -> Result<(), FetchError>,
) -> Result<String, FetchError> {
    let store_failed = std::cell::Cell::new(false);
    // An error the store's reader did not raise comes from age or zstd: the bytes are bad.
    let read_err = |source: std::io::Error| {
        if store_failed.get() {
            FetchError::Read {
                id: manifest.id.clone(),
                source,
            }
        } else {
            damaged(manifest, key, Damage::Decode(source))
        }
    };
    let mut hashing = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, object),
        sha256: Sha256::new(),
        size: 0,
        store_failed: &store_failed,
    };
    let decrypted = identities
        .decrypt(&mut hashing, &manifest.object.encryption.recipients)
        .map_err(|e| match e {
            CryptoError::NotAge { source } if !store_failed.get() => {
                damaged(manifest, key, Damage::Decrypt(source))
            }
            other => other.into(),
        })?;
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

/// What gave a stored object away as damaged: age or zstd refused its bytes (the store read
/// them fine). Shown on one line.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("{}", .0.to_string().replace('\n', " "))]
    Decrypt(#[source] age::DecryptError),
    #[error("{}", .0.to_string().replace('\n', " "))]
    Decode(#[source] std::io::Error),
}

/// A `Damaged` error without the older backup to suggest (`fetch_with` adds it).
fn damaged(manifest: &Manifest, key: &str, source: Damage) -> FetchError {
    FetchError::Damaged {
        id: manifest.id.clone(),
        key: key.to_string(),
        source,
        older: " (see `etcdsafe backups list`)".to_string(),
    }
}

/// Creates this fetch's own temporary file next to `output` (0600: it is plaintext cluster
/// state), exclusively; returns its path and the open file.
fn create_part(output: &Path) -> Result<(PathBuf, std::fs::File), FetchError> {
    let mut attempts = 0;
    loop {
        let part = part_candidate(output);
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part);
        match opened {
            Ok(file) => return Ok((part, file)),
            // Someone else's file under the random name: never touch it, take another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                attempts += 1;
            }
            Err(source) => return Err(output_err(&part, source)),
        }
    }
}

/// A write to the fetch's output (its `.part` file, or the rename to the final name) failed.
fn output_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Output {
        path: path.to_path_buf(),
        hint: crate::storage::io_hint(&source),
        source,
    }
}

/// Runs a blocking decode into `part` (created by this fetch); on success renames it to
/// `output` unless something appeared there meanwhile, on failure removes it.
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
    if let Err(source) = crate::storage::rename_noreplace(&part, output) {
        let _ = std::fs::remove_file(&part);
        return Err(if source.kind() == std::io::ErrorKind::AlreadyExists {
            FetchError::OutputExists {
                path: output.to_path_buf(),
            }
        } else {
            output_err(output, source)
        });
    }
    Ok(value)
}

fn decode_to_file(
    object: impl Read,
    identities: &Identities,
    manifest: &Manifest,
    file: std::fs::File,
    part: &Path,
    mut progress: Option<crate::progress::Progress>,
    check: Check,
) -> Result<Option<snapshot::Status>, FetchError> {
    let id = &manifest.id;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut trailer = TrailerHasher::new();
    let key = &manifest.object.key;
    let full = check == Check::Snapshot;
    let object_sha = decode_object(object, identities, manifest, key, |bytes| {
        if full {
            trailer.update(bytes);
        }
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
    if object_sha != manifest.object.sha256 {
        return Err(FetchError::Mismatch {
            id: id.clone(),
            what: "the stored object's SHA-256",
            expected: manifest.object.sha256.clone(),
            actual: object_sha,
        });
    }
    if !full {
        return Ok(None);
    }
    file.sync_all().map_err(|e| output_err(part, e))?;
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
    Ok(Some(status))
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
    let (part, mut out) = create_part(output)?;
    let m = manifest.clone();
    let part_for_task = part.clone();
    decode_in_place(&manifest.id, part, output, move || {
        let sha = decode_object(
            SyncIoBridge::new(reader),
            &identities,
            &m,
            &files.key,
            |bytes| {
                out.write_all(bytes)
                    .map_err(|e| output_err(&part_for_task, e))
            },
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_ids_are_found_in_problem_text() {
        let id = "20261124T090501.000Z-rev99";
        let text = "local:/b: manifest 20261124T100000.123Z-rev120.json is not readable: its data object 20261124T100000.123Z-rev120.db.zst.age is missing";
        assert!(newer_id_in(text, id));
        assert!(!newer_id_in(text, "20261124T110000.000Z-rev130"));
        assert!(newer_id_in("backup \"20261124T100000.123Z-rev120\"", id));
        assert!(!newer_id_in("no ids here: 2026 rev", id));
    }
}
