//! The spool dir: private (0700), shared by the runs on one node, and swept of the plaintext
//! snapshots that runs which no longer exist left behind (SIGKILL, an OOM kill, a power cut).
//!
//! Who owns a spool file is decided with `flock(2)` on the spool dir itself (no lock file
//! to leave behind): every run holds it shared for as long as it has spool files; a run sweeps only while it holds it exclusively,
//! that is while no other run is alive. The kernel drops a dead process's lock, so a killed run
//! never blocks the sweep, and a live run's files are never removed by another run. When
//! another run is alive the sweep waits for a later backup; the free-space refusal then names
//! the files that are there.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::BackupError;
use crate::catalog;
use crate::units::human_bytes;

/// The shared lock of one run on its spool dir; released when dropped (or when the process dies).
pub struct SpoolLease {
    _lock: File,
}

/// Makes the spool dir ready for one run: created or tightened to 0700, locked for the run,
/// swept of files no live run owns, with room for a snapshot of about `db_size` bytes.
/// Blocks (on `flock` while another run sweeps): call it off the async threads.
pub fn prepare(dir: &Path, db_size: u64) -> Result<SpoolLease, BackupError> {
    let err = |action, source| spool_err(dir, action, source);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("create", e))?;
    make_private(dir)?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| err("open", e))?;
    match try_flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(true) => sweep(dir),
        Ok(false) => {}
        // A filesystem without flock (some network and FUSE mounts): the run goes on, but
        // nothing can tell a dead run's files from a live one's, so nothing is swept.
        Err(e) if unsupported(&e) => tracing::warn!(
            spool_dir = %dir.display(),
            error = %e,
            "spool-dir does not support flock: spool files of killed runs are not removed; \
             put spool-dir on a local disk"
        ),
        Err(e) => return Err(err("lock", e)),
    }
    // From exclusive to shared is not atomic: another run may sweep in between, which is
    // harmless, as this run has no spool file yet.
    match try_flock(&lock, libc::LOCK_SH) {
        Err(e) if !unsupported(&e) => return Err(err("lock", e)),
        _ => {}
    }
    let lease = SpoolLease { _lock: lock };

    let free = crate::fsutil::free_bytes(dir).map_err(|e| err("statfs", e))?;
    let needed = spool_bytes_needed(db_size);
    if free < needed {
        return Err(BackupError::SpoolFull {
            path: dir.to_path_buf(),
            free,
            needed,
            others: others_note(dir),
        });
    }
    Ok(lease)
}

/// Room a snapshot of `db_size` bytes needs in the spool dir: the snapshot, 5% for growth
/// while it streams, and 16 MiB of slack. The upgrade preflight reckons with the same formula.
pub fn spool_bytes_needed(db_size: u64) -> u64 {
    db_size + db_size / 20 + (16 << 20)
}

/// The spool holds plaintext cluster state (Secrets included): nobody but etcdsafe's user may
/// list or read it. A dir made by hand with a wider mode is tightened, or refused.
fn make_private(dir: &Path) -> Result<(), BackupError> {
    let meta = std::fs::metadata(dir).map_err(|e| spool_err(dir, "stat", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700)).map_err(
        |source| BackupError::SpoolMode {
            path: dir.to_path_buf(),
            mode,
            source,
        },
    )?;
    tracing::warn!(
        spool_dir = %dir.display(),
        was = format!("{mode:o}"),
        "spool-dir was readable by others; tightened to 0700"
    );
    Ok(())
}

/// Takes (or converts) the lock; false when `LOCK_NB` was given and another holder has it.
pub(crate) fn try_flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

pub(crate) fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
    )
}

/// `<backup id>.part` or `<backup id>.db`: what a run spools. Nothing else in the dir (a
/// drill's scratch dir, files an operator put there) is ever touched.
fn is_spool_file(name: &str) -> bool {
    name.strip_suffix(".part")
        .or_else(|| name.strip_suffix(".db"))
        .is_some_and(|id| catalog::id_started_at(id).is_some())
}

/// Spool files in `dir`, with their sizes.
fn spool_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, u64)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(is_spool_file))
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    files.sort();
    files
}

/// Removes the spool files of dead runs. Only called with the lock held exclusively.
fn sweep(dir: &Path) {
    for (path, bytes) in spool_files(dir) {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                file = %path.display(),
                bytes,
                "removed a spool file left by an interrupted run"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "could not remove a spool file left by an interrupted run"
            ),
        }
    }
}

/// For the free-space refusal: the spool files of other runs that take room in `dir`.
fn others_note(dir: &Path) -> String {
    let files = spool_files(dir);
    if files.is_empty() {
        return String::new();
    }
    let names: Vec<String> = files
        .iter()
        .map(|(path, bytes)| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            format!("{name} ({})", human_bytes(*bytes))
        })
        .collect();
    format!(
        "; {} there {} from another run, still going or interrupted (the next backup that \
         starts while no other run is going removes {})",
        names.join(", "),
        if files.len() == 1 { "is" } else { "are" },
        if files.len() == 1 { "it" } else { "them" },
    )
}

fn spool_err(dir: &Path, action: &'static str, source: std::io::Error) -> BackupError {
    BackupError::Spool {
        path: dir.to_path_buf(),
        action,
        hint: hint(&source),
        source,
    }
}

/// What to do about a spool I/O error (the store's hints name the store, not the spool).
pub fn hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            ": the spool disk is full; free space there or set spool-dir to a larger disk"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            ": permission denied; check the owner and mode of spool-dir (0700, owned by etcdsafe's user)"
        }
        Some(libc::EROFS) => ": the filesystem is read-only; set spool-dir to a writable disk",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261124T193012.345Z-rev1234";

    #[test]
    fn only_backup_spool_files_are_swept() {
        assert!(is_spool_file(&format!("{ID}.part")));
        assert!(is_spool_file(&format!("{ID}.db")));
        for name in [
            "member.db",
            "notes.part",
            "drill-123",
            &format!("{ID}.part.bak"),
            &format!("{ID}.files.tar.zst.age"),
        ] {
            assert!(!is_spool_file(name), "{name}");
        }
    }

    #[test]
    fn a_live_run_keeps_its_files_and_a_dead_runs_files_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let live = prepare(&dir, 0).unwrap();
        let part = dir.join(format!("{ID}.part"));
        std::fs::write(&part, b"plaintext").unwrap();
        std::fs::create_dir(dir.join("drill-1")).unwrap();
        std::fs::write(dir.join("operator.txt"), b"x").unwrap();

        // Another run while this one is alive: the file stays.
        let other = prepare(&dir, 0).unwrap();
        assert!(part.exists());
        drop(other);
        assert!(part.exists());

        // The owner is gone: the next run removes it, and nothing that is not a spool file.
        drop(live);
        let next = prepare(&dir, 0).unwrap();
        assert!(!part.exists());
        assert!(dir.join("drill-1").is_dir());
        assert!(dir.join("operator.txt").exists());
        drop(next);
    }

    #[test]
    fn a_wider_dir_is_tightened_and_nothing_is_left_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _lease = prepare(&dir, 0).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn the_full_refusal_names_the_files_of_other_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let _live = prepare(&dir, 0).unwrap();
        std::fs::write(dir.join(format!("{ID}.part")), vec![0u8; 3000]).unwrap();
        let err = match prepare(&dir, u64::MAX / 4) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no disk has that much room"),
        };
        assert!(err.contains("free space"), "{err}");
        assert!(
            err.contains(&format!("{ID}.part (3.0 kB) there is from another run")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
