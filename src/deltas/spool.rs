//! The capture's spool files, and which of them belong to a capture that is gone.
//!
//! A capture spools into `<spool-dir>/delta-<token>-<first:020>.part` (and `.seal` while it
//! seals), where `token` is 16 random hex digits chosen once per process. For its whole life the
//! process holds an exclusive `flock` on `<spool-dir>/delta-<token>.lock`, which the kernel drops
//! however the process ends (SIGKILL, the OOM killer): a lock file another process can lock
//! belongs to a dead capture. Pids cannot say that in a container, where every incarnation of
//! the service is pid 1 and took the files of the one before for its own.
//!
//! The sweep ([`sweep`]) removes another token's files when its lock can be taken (then the
//! lock file too), or when its lock file is missing and the file was last modified over
//! [`FRESH`] ago; never this process's own files, and never while another process holds the
//! lock. Files named `delta-<pid>-<first>` by older versions (which took no lock) are removed
//! when no process has that pid, or when the pid is this process's own (a container's pid 1:
//! we never name files after our pid, so it is an earlier incarnation's) and the file is over
//! [`FRESH`] old. A pid-named file of another live pid is kept: it may be an older etcdsafe
//! still running; it goes once that pid is gone. [`verdict`] is the decision, table-tested.
//!
//! The lock is taken on the first spool file of a dir and kept in a process-wide registry,
//! keyed by the dir, until the process exits (it is never released: a later capture term of
//! the same process reuses it). Where the filesystem has no `flock`, nothing can tell a dead
//! capture's files from a live one's: other tokens' files are kept, and a warning says so.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::DeltaError;
use crate::pipeline::spool_dir::{self, unsupported};

/// A spool file younger than this is kept when its lock file is missing, and a pid-named one
/// of this process's pid: no capture leaves a file unmodified this long while it runs normally
/// (a seal creates the next `.part` at once), but a file this young may be in use.
pub const FRESH: Duration = Duration::from_secs(60);

const PREFIX: &str = "delta-";
const LOCK_SUFFIX: &str = ".lock";
const TOKEN_LEN: usize = 16;

/// The plain spool file of the segment starting at `first`: `delta-<token>-<first:020>.part`
/// in `dir` (created 0700 if missing), under this process's lock, taken on first use. Its
/// `.seal` file is `with_extension("seal")`.
pub fn part_path(dir: &Path, first: i64) -> Result<PathBuf, DeltaError> {
    let lock = own_lock(dir)?;
    Ok(dir.join(format!("{PREFIX}{}-{first:020}.part", lock.token)))
}

/// Removes the spool files of captures that are gone (see the module doc), then their lock
/// files. Best effort: what cannot be read or removed stays for a later sweep.
pub fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = own_token(dir);
    let me = std::process::id();
    let now = SystemTime::now();
    let mut files = Vec::new();
    let mut tokens: BTreeMap<String, Lock> = BTreeMap::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(parsed) = parse(&name) else { continue };
        match &parsed {
            Name::Lock { token }
            | Name::Spool {
                owner: Owner::Token(token),
            } => {
                tokens.entry(token.clone()).or_insert(Lock::Missing);
            }
            Name::Spool {
                owner: Owner::Pid(_),
            } => {}
        }
        if let Name::Spool { owner } = parsed {
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|modified| now.duration_since(modified).unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::ZERO);
            files.push((entry.path(), name, owner, age));
        }
    }
    // Locks of dead captures, held while their files are removed.
    let mut taken: HashMap<String, File> = HashMap::new();
    for (token, state) in tokens.iter_mut() {
        if own.as_deref() == Some(token.as_str()) {
            *state = Lock::Ours;
            continue;
        }
        let (probed, file) = probe(&lock_path(dir, token));
        // Once per process: every attempt sweeps, and the answer does not change.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if probed == Lock::Unknown && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                spool_dir = %dir.display(),
                "cannot lock delta spool lock files (does spool-dir support flock?): spool files of killed captures are not removed; put spool-dir on a local disk"
            );
        }
        *state = probed;
        if let Some(file) = file {
            taken.insert(token.clone(), file);
        }
    }
    for (path, name, owner, age) in files {
        let whose = match &owner {
            Owner::Token(token) => Whose::Token(tokens[token.as_str()]),
            Owner::Pid(pid) if *pid == me => Whose::PidMine,
            Owner::Pid(pid) if Path::new(&format!("/proc/{pid}")).exists() => Whose::PidAlive,
            Owner::Pid(_) => Whose::PidGone,
        };
        if verdict(whose, age) && std::fs::remove_file(&path).is_ok() {
            tracing::warn!(file = %name, "removed a delta spool file left by a capture that was killed");
        }
    }
    // Last, the lock files of the dead (a sweep that stops half way leaves the lock file, and
    // the next one takes it again).
    for (token, file) in taken {
        let path = lock_path(dir, &token);
        if same_file(&file, &path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// This process's lock in one spool dir.
struct OwnLock {
    token: String,
    /// Holds the `flock` (closing it would release the lock).
    _file: File,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<OwnLock>>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<OwnLock>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

fn own_token(dir: &Path) -> Option<String> {
    registry()
        .lock()
        .expect("not poisoned")
        .get(dir)
        .map(|lock| lock.token.clone())
}

fn own_lock(dir: &Path) -> Result<Arc<OwnLock>, DeltaError> {
    let mut locks = registry().lock().expect("not poisoned");
    if let Some(lock) = locks.get(dir) {
        return Ok(lock.clone());
    }
    let lock = Arc::new(take_lock(dir)?);
    locks.insert(dir.to_path_buf(), lock.clone());
    Ok(lock)
}

/// Creates `delta-<token>.lock` for a new token and locks it. A sweep may lock and remove the
/// new file between its creation and the `flock`: the lock then holds a file without a name,
/// which is noticed, and another token is taken.
fn take_lock(dir: &Path) -> Result<OwnLock, DeltaError> {
    let spool = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DeltaError::Spool { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(spool(dir))?;
    loop {
        let token = format!("{:016x}", rand::random::<u64>());
        let path = lock_path(dir, &token);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(spool(&path)(e)),
        };
        match try_flock(&file) {
            Ok(true) if same_file(&file, &path) => return Ok(OwnLock { token, _file: file }),
            // A sweep took the new file for a dead capture's: it removes it.
            Ok(_) => continue,
            Err(e) if unsupported(&e) => {
                tracing::warn!(
                    spool_dir = %dir.display(),
                    error = %e,
                    "spool-dir does not support flock: delta spool files of killed captures are not removed; put spool-dir on a local disk"
                );
                return Ok(OwnLock { token, _file: file });
            }
            Err(e) => return Err(spool(&path)(e)),
        }
    }
}

fn lock_path(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{token}{LOCK_SUFFIX}"))
}

/// Whether another capture holds the lock at `path`; when it is free, the lock is returned
/// held, so its owner cannot be mistaken for dead by another sweep meanwhile.
fn probe(path: &Path) -> (Lock, Option<File>) {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Lock::Missing, None),
        Err(_) => return (Lock::Unknown, None),
    };
    match try_flock(&file) {
        Ok(true) => (Lock::Free, Some(file)),
        Ok(false) => (Lock::Held, None),
        Err(_) => (Lock::Unknown, None),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: false when another open file holds it.
/// An exclusive lock without waiting: false when another open file description holds it.
fn try_flock(file: &File) -> std::io::Result<bool> {
    spool_dir::try_flock(file, libc::LOCK_EX | libc::LOCK_NB)
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// A file name the capture writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// `delta-<token>.lock`.
    Lock { token: String },
    /// `delta-<token or pid>-<first:020>.part` or `.seal`.
    Spool { owner: Owner },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Token(String),
    /// An older version's name (no lock).
    Pid(u32),
}

/// Parses a spool dir entry's name; `None` for anything the capture does not write.
fn parse(name: &str) -> Option<Name> {
    let rest = name.strip_prefix(PREFIX)?;
    if let Some(token) = rest.strip_suffix(LOCK_SUFFIX) {
        return is_token(token).then(|| Name::Lock {
            token: token.to_string(),
        });
    }
    let stem = rest
        .strip_suffix(".part")
        .or_else(|| rest.strip_suffix(".seal"))?;
    let (middle, first) = stem.split_once('-')?;
    if first.len() != 20 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let owner = if is_token(middle) {
        Owner::Token(middle.to_string())
    } else if !middle.is_empty() && middle.len() <= 10 && middle.bytes().all(|b| b.is_ascii_digit())
    {
        // Pids are at most 2^22 on Linux: never 16 digits long, so never a token.
        Owner::Pid(middle.parse().ok()?)
    } else {
        return None;
    };
    Some(Name::Spool { owner })
}

fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The state of a token's lock file, as a sweep found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// This process's own.
    Ours,
    /// Another live process holds it.
    Held,
    /// Nobody holds it: its capture is dead (the sweep holds it now).
    Free,
    /// No lock file.
    Missing,
    /// It could not be opened or locked (a filesystem without `flock`).
    Unknown,
}

/// Who a spool file belongs to, as far as the sweep can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// A token's file, with the state of that token's lock.
    Token(Lock),
    /// Named after this process's pid (by an older version: this one names files by token).
    PidMine,
    /// Named after another live pid.
    PidAlive,
    /// Named after a pid no process has.
    PidGone,
}

/// Whether a spool file of `whose`, last modified `age` ago, is a gone capture's to remove.
fn verdict(whose: Whose, age: Duration) -> bool {
    match whose {
        Whose::Token(Lock::Free) | Whose::PidGone => true,
        // No lock says whether its owner lives: only an old file is taken for dead.
        Whose::Token(Lock::Missing) | Whose::PidMine => age >= FRESH,
        Whose::Token(Lock::Ours | Lock::Held | Lock::Unknown) | Whose::PidAlive => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_strictly() {
        let token = "0123456789abcdef";
        let first = "00000000000000000042";
        let cases: &[(&str, Option<Name>)] = &[
            (
                "delta-0123456789abcdef.lock",
                Some(Name::Lock {
                    token: token.into(),
                }),
            ),
            (
                &format!("delta-{token}-{first}.part"),
                Some(Name::Spool {
                    owner: Owner::Token(token.into()),
                }),
            ),
            (
                &format!("delta-{token}-{first}.seal"),
                Some(Name::Spool {
                    owner: Owner::Token(token.into()),
                }),
            ),
            (
                &format!("delta-1-{first}.part"),
                Some(Name::Spool {
                    owner: Owner::Pid(1),
                }),
            ),
            (
                &format!("delta-4194304-{first}.seal"),
                Some(Name::Spool {
                    owner: Owner::Pid(4194304),
                }),
            ),
            // Not the capture's: left alone.
            (&format!("delta-{token}-{first}.db"), None),
            (&format!("delta-{token}-42.part"), None),
            (&format!("delta-0123456789ABCDEF-{first}.part"), None),
            (&format!("delta-abc-{first}.part"), None),
            (&format!("delta--{first}.part"), None),
            (&format!("delta-12345678901-{first}.part"), None),
            ("delta-1.lock", None),
            ("delta-0123456789abcdef.lock.tmp", None),
            ("20261125T110000.000Z-rev12.part", None),
            ("notes.txt", None),
        ];
        for (name, expected) in cases {
            assert_eq!(&parse(name), expected, "{name}");
        }
    }

    #[test]
    fn only_files_of_gone_captures_are_removed() {
        let fresh = Duration::from_secs(5);
        let old = FRESH + Duration::from_secs(1);
        let cases = [
            // whose, age, removed
            (Whose::Token(Lock::Ours), old, false),
            (Whose::Token(Lock::Held), old, false),
            (Whose::Token(Lock::Unknown), old, false),
            (Whose::Token(Lock::Free), fresh, true),
            (Whose::Token(Lock::Free), old, true),
            (Whose::Token(Lock::Missing), fresh, false),
            (Whose::Token(Lock::Missing), FRESH, true),
            (Whose::Token(Lock::Missing), old, true),
            (Whose::PidGone, fresh, true),
            (Whose::PidMine, fresh, false),
            (Whose::PidMine, old, true),
            (Whose::PidAlive, old, false),
        ];
        for (whose, age, removed) in cases {
            assert_eq!(verdict(whose, age), removed, "{whose:?} {age:?}");
        }
    }

    fn touch(path: &Path, age: Duration) {
        std::fs::write(path, b"x").unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const OLD: Duration = Duration::from_secs(3600);
    const FIRST: &str = "00000000000000000100";

    #[test]
    fn own_files_are_kept_and_named_after_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let part = part_path(&spool, 100).unwrap();
        assert_eq!(
            part,
            part_path(&spool, 100).unwrap(),
            "one token per process"
        );
        touch(&part, OLD);
        touch(&part.with_extension("seal"), OLD);
        let token = own_token(&spool).unwrap();
        assert_eq!(
            part.file_name().unwrap().to_str().unwrap(),
            format!("delta-{token}-{FIRST}.part")
        );
        // The lock is held: another open file description cannot take it.
        let other = File::open(lock_path(&spool, &token)).unwrap();
        assert!(!try_flock(&other).unwrap());
        sweep(&spool);
        let mut expected = vec![
            format!("delta-{token}-{FIRST}.part"),
            format!("delta-{token}-{FIRST}.seal"),
            format!("delta-{token}.lock"),
        ];
        expected.sort();
        assert_eq!(names(&spool), expected);
        let mode = std::fs::metadata(&spool).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_dead_captures_files_and_lock_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        // Lock file present, nobody holds it: removed whatever the files' age.
        let dead = "00000000000000aa";
        touch(&lock_path(spool, dead), OLD);
        touch(
            &spool.join(format!("delta-{dead}-{FIRST}.part")),
            Duration::ZERO,
        );
        touch(&spool.join(format!("delta-{dead}-{FIRST}.seal")), OLD);
        // A lock file alone (a capture killed before its first spool file): removed.
        touch(&lock_path(spool, "00000000000000ab"), OLD);
        // No lock file, old files: removed.
        let vanished = "00000000000000bb";
        touch(&spool.join(format!("delta-{vanished}-{FIRST}.part")), OLD);
        // Not the capture's: kept.
        touch(&spool.join("20261125T110000.000Z-rev12.part"), OLD);
        touch(&spool.join("notes"), OLD);
        sweep(spool);
        assert_eq!(
            names(spool),
            vec!["20261125T110000.000Z-rev12.part", "notes"]
        );
    }

    #[test]
    fn a_live_captures_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        // Another process holding its lock: a second open file description of the lock file,
        // which conflicts with the sweep's own open.
        let live = "00000000000000cc";
        touch(&lock_path(spool, live), OLD);
        let held = File::open(lock_path(spool, live)).unwrap();
        assert!(try_flock(&held).unwrap());
        touch(&spool.join(format!("delta-{live}-{FIRST}.part")), OLD);
        touch(&spool.join(format!("delta-{live}-{FIRST}.seal")), OLD);
        // No lock file but fresh: a capture between creating and locking, or just written.
        let starting = "00000000000000dd";
        touch(
            &spool.join(format!("delta-{starting}-{FIRST}.part")),
            Duration::ZERO,
        );
        sweep(spool);
        assert_eq!(
            names(spool),
            vec![
                format!("delta-{live}-{FIRST}.part"),
                format!("delta-{live}-{FIRST}.seal"),
                format!("delta-{live}.lock"),
                format!("delta-{starting}-{FIRST}.part"),
            ]
        );
        // Once the holder is gone, its files go.
        drop(held);
        sweep(spool);
        assert_eq!(names(spool), vec![format!("delta-{starting}-{FIRST}.part")]);
    }

    #[test]
    fn old_pid_named_files_are_removed_when_their_pid_cannot_be_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        let me = std::process::id();
        // A pid no process has: a child that has exited and been reaped.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!Path::new(&format!("/proc/{gone}")).exists());
        touch(
            &spool.join(format!("delta-{gone}-{FIRST}.part")),
            Duration::ZERO,
        );
        // Our own pid (a container's pid 1 after a restart): removed once old...
        touch(&spool.join(format!("delta-{me}-{FIRST}.part")), OLD);
        // ...kept while fresh.
        touch(
            &spool.join(format!("delta-{me}-00000000000000000200.seal")),
            Duration::ZERO,
        );
        // Another live pid (an older etcdsafe may still run): kept.
        let parent = std::os::unix::process::parent_id();
        touch(&spool.join(format!("delta-{parent}-{FIRST}.part")), OLD);
        sweep(spool);
        let mut expected = vec![
            format!("delta-{me}-00000000000000000200.seal"),
            format!("delta-{parent}-{FIRST}.part"),
        ];
        expected.sort();
        assert_eq!(names(spool), expected);
    }

    #[test]
    fn a_lock_is_on_the_file_its_name_shows() {
        let dir = tempfile::tempdir().unwrap();
        // What a sweep that won the create-then-lock race leaves: the open file has no name.
        let file = File::create(dir.path().join("x")).unwrap();
        std::fs::remove_file(dir.path().join("x")).unwrap();
        assert!(!same_file(&file, &dir.path().join("x")));
        let lock = take_lock(dir.path()).unwrap();
        assert!(same_file(&lock._file, &lock_path(dir.path(), &lock.token)));
    }
}
