//! Control-plane files (`include-files`): the PKI and the encryption-provider config without
//! which a restored etcd is useless, kept next to the snapshot under the same id.
//!
//! The stored object is `age(zstd(tar))`, so stock tools open it:
//! `age -d -i key.txt ID.files.tar.zst.age | zstd -d | tar -tv`. Entry names are the absolute
//! paths without the leading `/` (as GNU tar writes them), with mode, owner and mtime.
//!
//! Putting files back ([`put_back`]) first saves what it will replace into a "previous" dir
//! and writes an index of replaced and created paths there, once; then it writes each file
//! through a temp file and a rename. [`undo`] uses the index to put the node back as it was.
//! Both are idempotent, so an interrupted restore can resume or roll back.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("include-files: {path}: {source}: fix the path or remove it from include-files")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("include-files: {path} is a {kind}: only files, directories and symlinks can be kept; remove it from include-files")]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("include-files: {path} is not an absolute path: write it as /etc/kubernetes/...")]
    Relative { path: PathBuf },
    #[error("control-plane files archive: finishing the archive failed: {source}")]
    Finish {
        #[source]
        source: std::io::Error,
    },
    #[error("control-plane files archive: handing the archive on failed: {source}")]
    HandOn {
        #[source]
        source: std::io::Error,
    },
    #[error("control-plane files archive: {tar}: {source}")]
    Read {
        tar: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control-plane files archive: {tar}: unsafe entry name {entry}: this archive was not written by etcdsafe")]
    UnsafeName { tar: PathBuf, entry: PathBuf },
    #[error("control-plane files archive: {tar}: entry {entry} has unsupported type {kind:?}")]
    UnsupportedEntry {
        tar: PathBuf,
        entry: PathBuf,
        kind: tar::EntryType,
    },
    #[error("control-plane files archive: {tar}: entry {entry} comes twice: this archive was not written by etcdsafe")]
    Duplicate { tar: PathBuf, entry: PathBuf },
    #[error("control-plane files archive: {tar}: entry {entry} is under {parent}, which is not a directory: this archive was not written by etcdsafe")]
    UnderNonDirectory {
        tar: PathBuf,
        entry: PathBuf,
        parent: PathBuf,
    },
    #[error("control-plane files archive: {path} is a symbolic link: refusing to put files back through it (replace it with the directory it stands for, or use --files-root)")]
    ParentIsSymlink { path: PathBuf },
    #[error(
        "control-plane files archive: {path} is not a directory: cannot put {entry} back under it"
    )]
    ParentNotDirectory { path: PathBuf, entry: PathBuf },
    #[error("control-plane files archive: {path} is a symbolic link: refusing to put a directory back through it")]
    DirectoryIsSymlink { path: PathBuf },
    #[error("control-plane files archive: {path}: unreadable: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("control-plane files: {action} {path} failed: {source}{hint}")]
    Write {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
}

/// What an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveFacts {
    /// Files, directories and symlinks.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

fn source_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Source {
        path: path.to_path_buf(),
        source,
    }
}

fn write_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FilesError + 'a {
    move |source| FilesError::Write {
        action,
        path: path.to_path_buf(),
        hint: crate::storage::io_hint(&source),
        source,
    }
}

/// Checks every configured path exists and is absolute (before any snapshot is taken).
pub fn check_sources(paths: &[PathBuf]) -> Result<(), FilesError> {
    for path in paths {
        if !path.is_absolute() {
            return Err(FilesError::Relative { path: path.clone() });
        }
        fs::symlink_metadata(path).map_err(source_err(path))?;
    }
    Ok(())
}

/// The tar entry name of an absolute path: the path without its leading `/`.
fn entry_name(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Writes a tar of `paths` (absolute; directories recursively, symlinks as links, in name order)
/// into `out` and returns what it holds and the writer.
pub fn archive<W: Write>(paths: &[PathBuf], out: W) -> Result<(ArchiveFacts, W), FilesError> {
    check_sources(paths)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut facts = ArchiveFacts::default();
    for path in paths {
        add(&mut builder, path, &mut facts)?;
    }
    let out = builder
        .into_inner()
        .map_err(|source| FilesError::Finish { source })?;
    Ok((facts, out))
}

fn add<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    facts: &mut ArchiveFacts,
) -> Result<(), FilesError> {
    let meta = fs::symlink_metadata(path).map_err(source_err(path))?;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
        return Err(FilesError::Unsupported {
            path: path.to_path_buf(),
            kind: "special file (socket, device or pipe)",
        });
    }
    builder
        .append_path_with_name(path, entry_name(path))
        .map_err(source_err(path))?;
    facts.entries += 1;
    if kind.is_file() {
        facts.bytes += meta.len();
    }
    if kind.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .map_err(source_err(path))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(source_err(path))?;
        children.sort();
        for child in children {
            add(builder, &child, facts)?;
        }
    }
    Ok(())
}

/// One entry of an archive, as [`list`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root the archive is put back under.
    pub path: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
}

/// Reads an archive's entries and checks every name is safe to put back: relative, no `..`.
pub fn list(tar_path: &Path) -> Result<Vec<Entry>, FilesError> {
    let file = File::open(tar_path).map_err(write_err("open", tar_path))?;
    let mut archive = tar::Archive::new(file);
    let bad = |source: std::io::Error| FilesError::Read {
        tar: tar_path.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut not_dirs = std::collections::HashSet::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let header = entry.header();
        let path = entry.path().map_err(bad)?.into_owned();
        if path.as_os_str().is_empty()
            || !path.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(FilesError::UnsafeName {
                tar: tar_path.to_path_buf(),
                entry: path,
            });
        }
        let kind = match header.entry_type() {
            tar::EntryType::Regular => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(
                entry
                    .link_name()
                    .map_err(bad)?
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            other => {
                return Err(FilesError::UnsupportedEntry {
                    tar: tar_path.to_path_buf(),
                    entry: path,
                    kind: other,
                })
            }
        };
        // Every parent inside the archive must be a directory entry, and each name must come
        // once: an entry under a symlink entry would be written wherever the link points.
        if !seen.insert(path.clone()) {
            return Err(FilesError::Duplicate {
                tar: tar_path.to_path_buf(),
                entry: path,
            });
        }
        if let Some(parent) = path.ancestors().skip(1).find(|a| not_dirs.contains(*a)) {
            return Err(FilesError::UnderNonDirectory {
                tar: tar_path.to_path_buf(),
                entry: path.clone(),
                parent: parent.to_path_buf(),
            });
        }
        if kind != EntryKind::Dir {
            not_dirs.insert(path.clone());
        }
        entries.push(Entry {
            path,
            kind,
            mode: header.mode().map_err(bad)? & 0o7777,
            uid: header.uid().map_err(bad)? as u32,
            gid: header.gid().map_err(bad)? as u32,
            size: header.size().map_err(bad)?,
        });
    }
    Ok(entries)
}

/// What [`put_back`] replaced and created, saved once in the previous dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Paths (relative to the root) that existed; their old contents are under the previous dir.
    pub replaced: Vec<PathBuf>,
    /// Paths that did not exist (files, links and directories, parents first).
    pub created: Vec<PathBuf>,
    /// Directories that existed, with the owner and mode they had (put back by [`undo`]).
    #[serde(default)]
    pub dirs: Vec<DirState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirState {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Refuses to write `rel` under `root` when a directory on the way (inside the root) is a
/// symbolic link or not a directory: writing through it would land outside the files' place.
fn check_parents(root: &Path, rel: &Path) -> Result<(), FilesError> {
    let mut parents: Vec<&Path> = rel
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    parents.reverse();
    for parent in parents {
        let at = root.join(parent);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FilesError::ParentIsSymlink { path: at })
            }
            Ok(m) if !m.is_dir() => {
                return Err(FilesError::ParentNotDirectory {
                    path: at,
                    entry: rel.to_path_buf(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(write_err("read", &at)(e)),
        }
    }
    Ok(())
}

const INDEX: &str = "INDEX.json";

/// Puts the archive's files back under `root`, keeping what they replace in `previous`.
pub fn put_back(tar_path: &Path, root: &Path, previous: &Path) -> Result<Index, FilesError> {
    let entries = list(tar_path)?;
    let index_path = previous.join(INDEX);
    let index = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| FilesError::Index {
            path: index_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            save_previous(&entries, root, previous)?
        }
        Err(e) => return Err(write_err("read", &index_path)(e)),
    };
    let file = File::open(tar_path).map_err(write_err("open", tar_path))?;
    let mut archive = tar::Archive::new(file);
    let bad = |source: std::io::Error| FilesError::Read {
        tar: tar_path.to_path_buf(),
        source,
    };
    for (entry, facts) in archive.entries().map_err(bad)?.zip(&entries) {
        let mut entry = entry.map_err(bad)?;
        let dest = root.join(&facts.path);
        check_parents(root, &facts.path)?;
        match &facts.kind {
            EntryKind::Dir => {
                if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(FilesError::DirectoryIsSymlink { path: dest });
                }
                fs::create_dir_all(&dest).map_err(write_err("create", &dest))?;
                set_owner_and_mode(&dest, facts)?;
            }
            EntryKind::File => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(write_err("create", parent))?;
                }
                let temp = temp_beside(&dest);
                let _ = fs::remove_file(&temp);
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)
                    .map_err(write_err("create", &temp))?;
                std::io::copy(&mut entry, &mut out).map_err(write_err("write", &temp))?;
                out.sync_all().map_err(write_err("fsync", &temp))?;
                drop(out);
                set_owner_and_mode(&temp, facts)?;
                fs::rename(&temp, &dest).map_err(write_err("rename into", &dest))?;
            }
            EntryKind::Symlink(target) => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(write_err("create", parent))?;
                }
                let temp = temp_beside(&dest);
                let _ = fs::remove_file(&temp);
                std::os::unix::fs::symlink(target, &temp).map_err(write_err("link", &temp))?;
                fs::rename(&temp, &dest).map_err(write_err("rename into", &dest))?;
            }
        }
    }
    Ok(index)
}

/// Saves every existing path the archive will replace, then the index (atomically, last).
fn save_previous(entries: &[Entry], root: &Path, previous: &Path) -> Result<Index, FilesError> {
    use std::os::unix::fs::DirBuilderExt;
    if previous.exists() {
        // A run interrupted before its index was written: start the copy again.
        fs::remove_dir_all(previous).map_err(write_err("clear", previous))?;
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(previous)
        .map_err(write_err("create", previous))?;
    let mut index = Index::default();
    for entry in entries {
        check_parents(root, &entry.path)?;
        let dest = root.join(&entry.path);
        // Directories that do not exist yet (parents included), so undo can remove them.
        for ancestor in entry.path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            if ancestor.as_os_str().is_empty() || index.created.iter().any(|c| c == ancestor) {
                continue;
            }
            if fs::symlink_metadata(root.join(ancestor)).is_err()
                && (ancestor != entry.path || entry.kind == EntryKind::Dir)
            {
                index.created.push(ancestor.to_path_buf());
            }
        }
        let meta = match fs::symlink_metadata(&dest) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if entry.kind != EntryKind::Dir {
                    index.created.push(entry.path.clone());
                }
                continue;
            }
            Err(e) => return Err(write_err("read", &dest)(e)),
        };
        if meta.is_dir() {
            index.dirs.push(DirState {
                path: entry.path.clone(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
            continue;
        }
        let saved = previous.join("files").join(&entry.path);
        if let Some(parent) = saved.parent() {
            fs::create_dir_all(parent).map_err(write_err("create", parent))?;
        }
        copy_entry(&dest, &saved, &meta)?;
        index.replaced.push(entry.path.clone());
    }
    let text = serde_json::to_vec_pretty(&index).expect("an index serializes");
    crate::fsutil::write_atomic(&previous.join(INDEX), &text)
        .map_err(write_err("write", &previous.join(INDEX)))?;
    Ok(index)
}

/// Puts the node back as it was before [`put_back`]: saved files return, created ones go.
/// Does nothing when there is no index (nothing was put back).
pub fn undo(root: &Path, previous: &Path) -> Result<bool, FilesError> {
    let index_path = previous.join(INDEX);
    let index: Index = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| FilesError::Index {
            path: index_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(write_err("read", &index_path)(e)),
    };
    for path in &index.replaced {
        let saved = previous.join("files").join(path);
        let dest = root.join(path);
        let meta = fs::symlink_metadata(&saved).map_err(write_err("read", &saved))?;
        let temp = temp_beside(&dest);
        let _ = fs::remove_file(&temp);
        copy_entry(&saved, &temp, &meta)?;
        fs::rename(&temp, &dest).map_err(write_err("rename into", &dest))?;
    }
    for dir in &index.dirs {
        let dest = root.join(&dir.path);
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            let facts = Entry {
                path: dir.path.clone(),
                kind: EntryKind::Dir,
                mode: dir.mode,
                uid: dir.uid,
                gid: dir.gid,
                size: 0,
            };
            set_owner_and_mode(&dest, &facts)?;
        }
    }
    // Children before parents.
    for path in index.created.iter().rev() {
        let dest = root.join(path);
        let result = match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => fs::remove_dir(&dest),
            Ok(_) => fs::remove_file(&dest),
            Err(_) => Ok(()),
        };
        result.map_err(write_err("remove", &dest))?;
    }
    Ok(true)
}

fn temp_beside(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".etcdsafe-");
    name.push(dest.file_name().unwrap_or_default());
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Copies a file or symlink with its mode (and owner, when running as root).
fn copy_entry(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), FilesError> {
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(write_err("read", from))?;
        let _ = fs::remove_file(to);
        return std::os::unix::fs::symlink(target, to).map_err(write_err("link", to));
    }
    let mut input = File::open(from).map_err(write_err("open", from))?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(write_err("create", to))?;
    std::io::copy(&mut input, &mut out).map_err(write_err("copy into", to))?;
    out.sync_all().map_err(write_err("fsync", to))?;
    let facts = Entry {
        path: PathBuf::new(),
        kind: EntryKind::File,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.len(),
    };
    set_owner_and_mode(to, &facts)
}

fn set_owner_and_mode(path: &Path, facts: &Entry) -> Result<(), FilesError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(facts.uid), Some(facts.gid))
            .map_err(write_err("chown", path))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(facts.mode))
        .map_err(write_err("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> Vec<PathBuf> {
        let pki = root.join("etc/kubernetes/pki");
        fs::create_dir_all(pki.join("etcd")).unwrap();
        fs::write(pki.join("ca.crt"), "ca cert").unwrap();
        fs::write(pki.join("ca.key"), "ca key").unwrap();
        fs::set_permissions(pki.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(pki.join("etcd/ca.crt"), "etcd ca").unwrap();
        std::os::unix::fs::symlink("ca.crt", pki.join("link.crt")).unwrap();
        fs::write(
            root.join("etc/kubernetes/enc.yaml"),
            "kind: EncryptionConfiguration",
        )
        .unwrap();
        vec![pki, root.join("etc/kubernetes/enc.yaml")]
    }

    fn archive_to(paths: &[PathBuf], tar: &Path) -> ArchiveFacts {
        let (facts, _) = archive(paths, File::create(tar).unwrap()).unwrap();
        facts
    }

    #[test]
    fn archive_lists_and_names_entries_like_gnu_tar() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let paths = tree(&src);
        let tar = dir.path().join("files.tar");
        let facts = archive_to(&paths, &tar);
        // pki dir, ca.crt, ca.key, etcd dir, etcd/ca.crt, link.crt, enc.yaml
        assert_eq!(facts.entries, 7);
        assert_eq!(facts.bytes, 7 + 6 + 7 + 29);
        let entries = list(&tar).unwrap();
        let prefix = entry_name(&src);
        let names: Vec<PathBuf> = entries
            .iter()
            .map(|e| e.path.strip_prefix(&prefix).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [
                "etc/kubernetes/pki",
                "etc/kubernetes/pki/ca.crt",
                "etc/kubernetes/pki/ca.key",
                "etc/kubernetes/pki/etcd",
                "etc/kubernetes/pki/etcd/ca.crt",
                "etc/kubernetes/pki/link.crt",
                "etc/kubernetes/enc.yaml",
            ]
            .map(PathBuf::from)
        );
        let key = entries.iter().find(|e| e.path.ends_with("ca.key")).unwrap();
        assert_eq!(key.mode, 0o600);
        assert!(entries
            .iter()
            .any(|e| e.kind == EntryKind::Symlink("ca.crt".into())));
    }

    #[test]
    fn missing_relative_and_special_sources_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("enc.yaml");
        let err = archive(std::slice::from_ref(&missing), Vec::new()).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "include-files: {}: No such file",
                missing.display()
            )),
            "{err}"
        );
        let err = archive(&[PathBuf::from("etc/kubernetes/pki")], Vec::new()).unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = archive(&[sock], Vec::new()).unwrap_err();
        assert!(matches!(err, FilesError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn put_back_then_undo_restores_the_node_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let paths = tree(&root);
        let tar = dir.path().join("files.tar");
        archive_to(&paths, &tar);
        let rel = |p: &str| root.join(p);
        let pki = entry_name(&root).join("etc/kubernetes/pki");
        // The node changes after the backup: a key rotated, a file removed, a file added.
        fs::write(rel("etc/kubernetes/pki/ca.key"), "rotated key").unwrap();
        fs::remove_file(rel("etc/kubernetes/enc.yaml")).unwrap();
        fs::remove_dir_all(rel("etc/kubernetes/pki/etcd")).unwrap();
        fs::write(rel("etc/kubernetes/pki/new.crt"), "new").unwrap();

        let previous = dir.path().join("previous");
        // The archive names are relative to /, so put back under /.
        let index = put_back(&tar, Path::new("/"), &previous).unwrap();
        assert_eq!(
            fs::read_to_string(rel("etc/kubernetes/pki/ca.key")).unwrap(),
            "ca key"
        );
        assert_eq!(
            fs::metadata(rel("etc/kubernetes/pki/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(rel("etc/kubernetes/enc.yaml")).unwrap(),
            "kind: EncryptionConfiguration"
        );
        assert_eq!(
            fs::read_to_string(rel("etc/kubernetes/pki/etcd/ca.crt")).unwrap(),
            "etcd ca"
        );
        assert!(index.replaced.contains(&pki.join("ca.key")));
        assert!(index.created.contains(&pki.join("etcd")));
        assert!(index.created.contains(&pki.join("etcd/ca.crt")));
        // Idempotent: a second run (a resume) keeps the first index and the saved originals.
        assert_eq!(put_back(&tar, Path::new("/"), &previous).unwrap(), index);

        assert!(undo(Path::new("/"), &previous).unwrap());
        assert_eq!(
            fs::read_to_string(rel("etc/kubernetes/pki/ca.key")).unwrap(),
            "rotated key"
        );
        assert!(!rel("etc/kubernetes/enc.yaml").exists());
        assert!(!rel("etc/kubernetes/pki/etcd").exists());
        assert_eq!(
            fs::read_to_string(rel("etc/kubernetes/pki/new.crt")).unwrap(),
            "new",
            "files the backup does not have are left alone"
        );
        // Undo twice is harmless.
        assert!(undo(Path::new("/"), &previous).unwrap());
        assert!(!undo(Path::new("/"), &dir.path().join("none")).unwrap());
    }

    #[test]
    fn unsafe_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("evil.tar");
        let mut builder = tar::Builder::new(File::create(&tar_path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the raw name.
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        let err = list(&tar_path).unwrap_err();
        assert!(err.to_string().contains("unsafe entry name"), "{err}");
    }

    fn write_tar(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                builder.append_link(&mut header, name, data).unwrap();
            } else {
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, name, data.as_bytes())
                    .unwrap();
            }
        }
        builder.finish().unwrap();
    }

    #[test]
    fn entries_under_links_or_twice_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.tar");
        write_tar(
            &t,
            &[
                ("pki/x", tar::EntryType::Symlink, "/root/.ssh"),
                ("pki/x/authorized_keys", tar::EntryType::Regular, "key"),
            ],
        );
        let err = list(&t).unwrap_err().to_string();
        assert!(
            err.contains("is under pki/x, which is not a directory"),
            "{err}"
        );
        write_tar(
            &t,
            &[
                ("pki/a", tar::EntryType::Regular, "1"),
                ("pki/a", tar::EntryType::Regular, "2"),
            ],
        );
        let err = list(&t).unwrap_err().to_string();
        assert!(err.contains("comes twice"), "{err}");
    }

    #[test]
    fn put_back_never_writes_through_a_symlink_on_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.tar");
        write_tar(&t, &[("pki/ca.key", tar::EntryType::Regular, "key")]);
        let root = dir.path().join("root");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("pki")).unwrap();
        let err = put_back(&t, &root, &dir.path().join("prev"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(!elsewhere.join("ca.key").exists());
    }

    #[test]
    fn undo_puts_back_the_mode_of_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("pki")).unwrap();
        fs::write(src.join("pki/ca.crt"), "ca").unwrap();
        let t = dir.path().join("a.tar");
        archive_to(&[src.join("pki")], &t);
        // On the node the directory was hardened after the backup.
        fs::set_permissions(src.join("pki"), fs::Permissions::from_mode(0o700)).unwrap();
        let previous = dir.path().join("prev");
        put_back(&t, Path::new("/"), &previous).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&src.join("pki")),
            0o755,
            "the backup's mode while restored"
        );
        undo(Path::new("/"), &previous).unwrap();
        assert_eq!(mode(&src.join("pki")), 0o700, "the node's mode after undo");
    }
}
