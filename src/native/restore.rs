//! `etcdsafe snapshot restore`: a snapshot into a new member data dir, written natively.
//!
//! Everything happens in a hidden staging directory next to the target (same file system),
//! which is renamed into place only at the end; on any failure, or if the caller drops the
//! [`Staging`] before [`Staging::finish`], the staging directory is removed and the target is
//! as it was. The steps, in order:
//! 1. the flags are checked and the membership computed ([`Membership::from_flags`]);
//! 2. the snapshot is copied to `member/snap/db` while its SHA-256 trailer is checked, or a
//!    caller that already proved it (a fetched backup) writes it there itself;
//! 3. the database's whole structure is walked (bbolt pages, like `snapshot verify`), which
//!    also finds its latest revision;
//! 4. the trailer is cut off and the bbolt file patched ([`bolt_patch`]): the old membership
//!    removed, the new one written, the consistent index and term set, and with
//!    `--bump-revision` the revision moved forward and marked compacted;
//! 5. the WAL and the v2 snapshot file are written ([`wal`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::bolt_patch::{self, BucketEdit, PatchError};
use super::membership::{id_hex, Membership, MembershipError};
use super::wal::{self, WalError};
use crate::snapshot::digest::{DigestBuilder, Digests};
use crate::snapshot::{has_trailer, SnapshotError, TrailerHasher, TRAILER_LEN};
use crate::storage::direct::{AlignedBuf, DirectFile};

/// At most this much memory for leaf digests (the backup spool's budget): beyond it, leaves
/// are read.
const DIGEST_BUDGET: usize = crate::pipeline::DIGEST_BUDGET;

/// The bbolt buckets and meta keys etcd keeps membership and progress in.
pub const MEMBERS_BUCKET: &[u8] = b"members";
pub const MEMBERS_REMOVED_BUCKET: &[u8] = b"members_removed";
pub const META_BUCKET: &[u8] = b"meta";
pub const KEY_BUCKET: &[u8] = b"key";
pub const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
pub const TERM_KEY: &[u8] = b"term";
pub const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
pub const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";

/// The flags of `etcdutl snapshot restore`, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
    /// Move the revision this far past the snapshot's (0: keep it).
    pub bump_revision: u64,
    pub mark_compacted: bool,
}

impl RestoreOptions {
    /// etcdutl's defaults: member `default` on `http://localhost:2380`, data dir `<name>.etcd`.
    pub fn new(name: &str) -> RestoreOptions {
        RestoreOptions {
            data_dir: PathBuf::from(format!("{name}.etcd")),
            wal_dir: None,
            name: name.to_string(),
            initial_cluster: format!("{name}=http://localhost:2380"),
            initial_cluster_token: "etcd-cluster".to_string(),
            initial_advertise_peer_urls: "http://localhost:2380".to_string(),
            skip_hash_check: false,
            bump_revision: 0,
            mark_compacted: false,
        }
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: String,
    pub cluster_id: String,
    pub members: usize,
    /// The snapshot's revision, and the revision the member starts at (higher when bumped).
    pub snapshot_revision: i64,
    pub revision: i64,
    /// Revisions below this are compacted (0: none marked).
    pub compacted_revision: i64,
    pub db_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("--mark-compacted needs --bump-revision (etcdutl's rule: only a bumped revision can be marked compacted)")]
    MarkCompactedWithoutBump,
    #[error("--bump-revision {0} is too large: the revision must stay below 2^63")]
    BumpTooLarge(u64),
    #[error("{what} {path} is not empty: restore into a new or empty directory (move the old one aside first)")]
    NotEmpty { what: &'static str, path: PathBuf },
    #[error("{path}: snapshot has no SHA-256 trailer (not a multiple of 512 bytes plus 32): pass --skip-hash-check to restore a copied db file")]
    MissingHash { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{path}: not an etcd database: {problem}")]
    NotEtcd { path: PathBuf, problem: String },
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// A restore in progress: its staging directories, removed on drop unless finished.
#[derive(Debug)]
pub struct Staging {
    opts: RestoreOptions,
    membership: Membership,
    /// The hidden directories the data dir (and the WAL dir) are built in.
    data: PathBuf,
    wal: Option<PathBuf>,
    db: PathBuf,
    /// The snapshot's revision when the caller proved the database (a fetched backup): then
    /// the structure is not walked again.
    verified_revision: Option<i64>,
    /// Digests of the leaf pages, taken while the snapshot was copied.
    digests: Option<Digests>,
    finished: bool,
}

impl Staging {
    /// Checks the flags and the targets, and creates the staging directories (0700).
    pub fn create(opts: &RestoreOptions) -> Result<Staging, RestoreError> {
        if opts.mark_compacted && opts.bump_revision == 0 {
            return Err(RestoreError::MarkCompactedWithoutBump);
        }
        if opts.bump_revision > i64::MAX as u64 / 2 {
            return Err(RestoreError::BumpTooLarge(opts.bump_revision));
        }
        let membership =
            Membership::from_flags(&opts.initial_cluster, &opts.initial_cluster_token)?;
        let advertised: Vec<String> = opts
            .initial_advertise_peer_urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        membership.check_advertise(&opts.name, &advertised)?;
        check_empty("data dir", &opts.data_dir)?;
        if let Some(w) = &opts.wal_dir {
            check_empty("WAL dir", w)?;
        }
        let data = staging_dir(&opts.data_dir)?;
        let mut staging = Staging {
            opts: opts.clone(),
            membership,
            db: data.join("member").join("snap").join("db"),
            data,
            wal: None,
            verified_revision: None,
            digests: None,
            finished: false,
        };
        if let Some(w) = &opts.wal_dir {
            staging.wal = Some(staging_dir(w)?);
        }
        let snap = staging.data.join("member").join("snap");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snap)
            .map_err(|source| io(&snap, "create", source))?;
        Ok(staging)
    }

    /// Where the snapshot goes: a caller that fetches a backup writes it here (0600).
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// Copies the snapshot file at `snapshot` into place, checking its trailer on the way
    /// (unless `--skip-hash-check`). The copy is written around the page cache in 2 MiB
    /// blocks (as the backup spool is: filling fresh page-cache pages costs more CPU than the
    /// copy), and the leaf pages' digests are taken as the bytes pass, so the structure walk
    /// afterwards reads only branch pages.
    pub fn copy_snapshot(&mut self, snapshot: &Path) -> Result<(), RestoreError> {
        let mut input = File::open(snapshot).map_err(|source| io(snapshot, "open", source))?;
        let mut out = DirectFile::create_new_with_mode(&self.db, 0o600)
            .map_err(|source| io(&self.db, "create", source))?;
        let mut buf = AlignedBuf::new();
        let mut hasher = TrailerHasher::new();
        let mut digests = DigestBuilder::new(DIGEST_BUDGET, crate::snapshot::status::must_see);
        let len = loop {
            let n = read_full(&mut input, buf.block_mut())
                .map_err(|source| io(snapshot, "read", source))?;
            buf.set_len(n);
            hasher.update(buf.filled());
            digests.update(buf.filled());
            if !buf.is_full() {
                break out
                    .write_tail(&mut buf)
                    .map_err(|source| io(&self.db, "write", source))?;
            }
            if digests.stopped() {
                // Past the digests' budget the walk reads leaves: keep them in the page cache.
                out.stop_direct()
                    .map_err(|source| io(&self.db, "write", source))?;
            }
            out.write_block(&mut buf)
                .map_err(|source| io(&self.db, "write", source))?;
            buf.clear();
        };
        if has_trailer(len) {
            if !self.opts.skip_hash_check {
                hasher.finish(snapshot)?;
            }
        } else if !self.opts.skip_hash_check {
            return Err(RestoreError::MissingHash {
                path: snapshot.to_path_buf(),
            });
        }
        out.sync().map_err(|source| io(&self.db, "fsync", source))?;
        if has_trailer(len) {
            cut_trailer(&self.db, len)?;
        }
        self.digests = Some(digests.finish());
        Ok(())
    }

    /// Takes the snapshot a caller wrote to [`db_path`](Self::db_path) after proving it
    /// (trailer, structure and status, as `backups fetch` does; `revision` is the status'):
    /// only the trailer is cut off, and the structure is not walked a second time.
    pub fn adopt_verified_snapshot(&mut self, revision: i64) -> Result<(), RestoreError> {
        self.verified_revision = Some(revision);
        let len = fs::metadata(&self.db)
            .map_err(|source| io(&self.db, "stat", source))?
            .len();
        if has_trailer(len) {
            cut_trailer(&self.db, len)?;
        }
        Ok(())
    }

    /// Checks the database, patches it, writes the WAL and snap files and moves the staging
    /// directories into place.
    pub fn finish(mut self) -> Result<Restored, RestoreError> {
        // The structure was proved by the caller (a fetched backup), or is walked now with
        // the digests of the copy; either way the newest key's revision comes from the status.
        let revision = match (self.verified_revision, &self.digests) {
            (Some(revision), _) => revision,
            (None, Some(digests)) => {
                crate::snapshot::status_with_digests(&self.db, digests)?.revision
            }
            (None, None) => crate::snapshot::status(&self.db)?.revision,
        };
        if !bolt_patch::top_level_buckets(&self.db)?
            .iter()
            .any(|b| b == KEY_BUCKET)
        {
            return Err(RestoreError::NotEtcd {
                path: self.db.clone(),
                problem: "it has no \"key\" bucket".to_string(),
            });
        }
        let facts = verified_facts(&self.db, revision)?;
        let member_id = self.membership.local(&self.opts.name)?.id;
        let start = wal::write_wal_and_snap(
            &self.data,
            self.wal.as_deref(),
            &self.membership,
            &self.opts.name,
        )?;

        let mut edits = BTreeMap::new();
        edits.insert(
            MEMBERS_BUCKET.to_vec(),
            BucketEdit {
                clear: true,
                put: self
                    .membership
                    .members
                    .iter()
                    .map(|m| (m.backend_key(), m.json()))
                    .collect(),
            },
        );
        edits.insert(
            MEMBERS_REMOVED_BUCKET.to_vec(),
            BucketEdit {
                clear: true,
                put: BTreeMap::new(),
            },
        );
        let mut meta = BTreeMap::new();
        meta.insert(
            CONSISTENT_INDEX_KEY.to_vec(),
            start.commit.to_be_bytes().to_vec(),
        );
        meta.insert(TERM_KEY.to_vec(), start.term.to_be_bytes().to_vec());
        let mut revision = facts.revision;
        let mut compacted = facts.compacted;
        if self.opts.bump_revision > 0 {
            // The marker every etcd since 3.3 starts from: a finished compaction at the bumped
            // revision. On start etcd sets its current revision to at least the compacted one,
            // so the next write gets bumped + 1 and reads or watches below it are refused as
            // compacted. No key is added: the key bucket stays exactly the snapshot's.
            revision = facts.revision + self.opts.bump_revision as i64;
            compacted = revision;
            meta.insert(SCHEDULED_COMPACT_KEY.to_vec(), rev_bytes(revision));
            meta.insert(FINISHED_COMPACT_KEY.to_vec(), rev_bytes(revision));
        }
        edits.insert(
            META_BUCKET.to_vec(),
            BucketEdit {
                clear: false,
                put: meta,
            },
        );
        bolt_patch::patch(&self.db, &edits)?;
        let db_bytes = fs::metadata(&self.db)
            .map_err(|source| io(&self.db, "stat", source))?
            .len();

        if let (Some(staged), Some(target)) = (&self.wal, &self.opts.wal_dir) {
            place(staged, target)?;
        }
        if let Err(e) = place(&self.data, &self.opts.data_dir) {
            // The WAL dir went into place first and is ours alone (it was missing or empty):
            // without its data dir it is nothing, so it goes too.
            if let Some(target) = &self.opts.wal_dir {
                let _ = fs::remove_dir_all(target);
            }
            return Err(e);
        }
        self.finished = true;
        Ok(Restored {
            data_dir: self.opts.data_dir.clone(),
            member_id: id_hex(member_id),
            cluster_id: id_hex(self.membership.cluster_id),
            members: self.membership.members.len(),
            snapshot_revision: facts.revision,
            revision,
            compacted_revision: compacted,
            db_bytes,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.data);
            if let Some(w) = &self.wal {
                let _ = fs::remove_dir_all(w);
            }
        }
    }
}

/// Restores the snapshot file at `snapshot` as `etcdutl snapshot restore` would.
pub fn restore_file(snapshot: &Path, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let mut staging = Staging::create(opts)?;
    staging.copy_snapshot(snapshot)?;
    staging.finish()
}

/// What the restore needs to know of the database, found while its structure is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DbFacts {
    /// The latest revision: the newest key's, or the finished compaction's if later (a
    /// compaction may have removed the newest tombstones), as etcd computes it on start.
    revision: i64,
    compacted: i64,
}

/// [`DbFacts`] of a database already proved sound whose newest key has revision `revision`:
/// only the meta bucket is read.
fn verified_facts(db_path: &Path, revision: i64) -> Result<DbFacts, RestoreError> {
    let compacted = bolt_patch::read_bucket(db_path, META_BUCKET)?
        .and_then(|meta| meta.get(FINISHED_COMPACT_KEY).cloned())
        .filter(|v| v.len() >= 8)
        .map_or(0, |v| i64::from_be_bytes(v[..8].try_into().unwrap()));
    Ok(DbFacts {
        revision: revision.max(compacted).max(1),
        compacted,
    })
}

/// etcd's revision key: main revision, `_`, sub revision (both big-endian).
fn rev_bytes(main: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    b.extend_from_slice(&main.to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&0i64.to_be_bytes());
    b
}

/// Removes the 32-byte trailer from the copied snapshot file of length `len`.
fn cut_trailer(db: &Path, len: u64) -> Result<(), RestoreError> {
    OpenOptions::new()
        .write(true)
        .open(db)
        .and_then(|f| f.set_len(len - TRAILER_LEN as u64))
        .map_err(|source| io(db, "truncate", source))
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(input: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn check_empty(what: &'static str, path: &Path) -> Result<(), RestoreError> {
    match fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::NotEmpty {
                what,
                path: path.to_path_buf(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io(path, "read", source)),
    }
}

/// A new hidden directory next to `target` (same file system, so the final rename is atomic).
fn staging_dir(target: &Path) -> Result<PathBuf, RestoreError> {
    let parent = parent_of(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_string());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(|source| io(&parent, "create", source))?;
    let dir = parent.join(format!(
        ".{name}.etcdsafe-restore.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| io(&dir, "create", source))?;
    Ok(dir)
}

/// Renames `staged` to `target` (an empty `target` is replaced) and fsyncs the parent.
fn place(staged: &Path, target: &Path) -> Result<(), RestoreError> {
    if target.exists() {
        check_empty("target", target)?;
        fs::remove_dir(target).map_err(|source| io(target, "remove the empty", source))?;
    }
    fs::rename(staged, target)
        .map_err(|source| io(target, "move the restored files to", source))?;
    let parent = parent_of(target);
    crate::fsutil::sync_dir(&parent).map_err(|source| io(&parent, "fsync", source))
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn io(path: &Path, action: &'static str, source: std::io::Error) -> RestoreError {
    RestoreError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_rule_matches_etcdutl() {
        for (len, want) in [
            (4096 * 3 + 32, true),
            (4096 * 3, false),
            (512 + 32, true),
            (33, false),
            (32, true),
        ] {
            assert_eq!(has_trailer(len), want, "{len}");
        }
    }

    #[test]
    fn revision_keys_are_main_underscore_sub() {
        let b = rev_bytes(0x0102);
        assert_eq!(b.len(), 17);
        assert_eq!(&b[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(b[8], b'_');
        assert_eq!(&b[9..], &[0u8; 8]);
    }
}
