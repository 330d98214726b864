//! Hardening of the spool (issue 19, defect 2 and two of defect 9), with real etcd and the real
//! binary: a `snapshot save` killed mid-stream leaves its plaintext `.part`, and the next
//! backup removes it; SIGTERM and SIGINT end a save cleanly (no spool file, no object, one
//! line saying so); a spool dir with wider permissions is tightened to 0700; etcd killed
//! mid-stream and a spool disk that fills up mid-write each say what happened and what to do;
//! the free-space refusal names the files other runs hold in the spool dir (tmpfs mounted by
//! the test, which needs root, as CI runs it).
//!
//! A run is caught mid-stream deterministically: the test waits until the spool file has its
//! first bytes, then stops the process (SIGSTOP) before doing what it tests.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use etcdsafe::exit::Exit;

/// A cluster whose snapshot takes a moment to stream: `mib` MiB of incompressible values.
fn cluster_with(version: EtcdVersion, mib: usize) -> EtcdCluster {
    let cluster = EtcdCluster::start(version);
    cluster.put_many_with("/registry/secrets/ns", mib * 10, 100_000, true);
    cluster
}

/// A `snapshot save` running in the background, its stderr in a file.
struct Save {
    child: Child,
    stderr: PathBuf,
}

impl Save {
    fn start(config: &Path, dir: &Path) -> Save {
        let stderr = dir.join(format!("save-{}.stderr", rand::random::<u32>()));
        let child = etcdsafe()
            .arg("--config")
            .arg(config)
            .args(["snapshot", "save"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start etcdsafe snapshot save");
        Save { child, stderr }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// Waits until the spool file has its first bytes (the stream is under way), then
    /// freezes the process there. Returns the spool file.
    fn pause_mid_stream(&mut self, spool: &Path) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the save ended ({status}) before it was caught mid-stream: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            let part = std::fs::read_dir(spool).ok().and_then(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .find(|p| p.extension().is_some_and(|x| x == "part"))
            });
            if let Some(part) = part {
                if std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) > 0 {
                    self.signal(libc::SIGSTOP);
                    return part;
                }
            }
            assert!(Instant::now() < deadline, "no spool file after 60s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the process to end: (exit status, stderr).
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, std::fs::read_to_string(&self.stderr).unwrap());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the save did not end within 120s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Save {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is left in a spool dir (after a run: nothing at all).
fn spool_files(spool: &Path) -> Vec<String> {
    entries(spool)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn list_ids(config: &Path) -> Vec<String> {
    run_ok(
        etcdsafe()
            .arg("--config")
            .arg(config)
            .args(["backups", "list", "-w", "simple"]),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn save_ok(config: &Path) -> String {
    run_ok(
        etcdsafe()
            .arg("--config")
            .arg(config)
            .args(["snapshot", "save"]),
    )
    .trim()
    .to_string()
}

#[test]
fn a_killed_save_leaves_its_part_and_the_next_save_removes_it() {
    for version in ALL_VERSIONS {
        let cluster = cluster_with(version, 40);
        let dir = tempfile::tempdir().unwrap();
        let (_, recipient) = age_keypair(dir.path(), "key.txt");
        let config = write_config(dir.path(), &cluster, &recipient);
        let spool = dir.path().join("spool");

        let mut killed = Save::start(&config, dir.path());
        let part = killed.pause_mid_stream(&spool);
        killed.signal(libc::SIGKILL);
        let (status, _) = killed.finish();
        assert!(!status.success());
        assert!(
            part.exists(),
            "{}: SIGKILL leaves the plaintext spool file {}",
            version.label(),
            part.display()
        );

        let id = save_ok(&config);
        assert_eq!(
            spool_files(&spool),
            Vec::<String>::new(),
            "{}: the leftover of the killed run must be gone",
            version.label()
        );
        assert_eq!(list_ids(&config), vec![id], "{}", version.label());
    }
}

#[test]
fn sigterm_and_sigint_end_a_save_cleanly_with_one_line() {
    let cluster = cluster_with(EtcdVersion::V3_4, 40);
    for (signal, name, exit) in [
        (libc::SIGTERM, "SIGTERM", Exit::Terminated),
        (libc::SIGINT, "SIGINT", Exit::Interrupted),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_, recipient) = age_keypair(dir.path(), "key.txt");
        let config = write_config(dir.path(), &cluster, &recipient);
        let spool = dir.path().join("spool");
        let store = dir.path().join("store");

        let mut save = Save::start(&config, dir.path());
        save.pause_mid_stream(&spool);
        save.signal(signal);
        save.signal(libc::SIGCONT);
        let (status, stderr) = save.finish();
        assert!(!status.success(), "{name}: {status}");
        assert!(
            status.code().is_some(),
            "{name}: the process must exit on its own, not die of the signal ({status}): {stderr}"
        );
        assert_eq!(
            status.code(),
            Some(i32::from(exit.code())),
            "{name}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("interrupted"), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert_eq!(
            spool_files(&spool),
            Vec::<String>::new(),
            "{name}: no spool file may remain"
        );
        assert_eq!(
            entries(&store),
            Vec::<String>::new(),
            "{name}: the upload is aborted, no object or temp file remains"
        );
        // And the next save works.
        let id = save_ok(&config);
        assert_eq!(list_ids(&config), vec![id]);
    }
}

#[test]
fn a_wider_spool_dir_is_tightened_to_0700() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.put_many("/registry/configmaps/ns", 20, 1000);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    save_ok(&config);
    let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "spool dir mode {mode:o}");
}

#[test]
fn etcd_killed_mid_stream_is_named_with_the_fix() {
    let mut cluster = cluster_with(EtcdVersion::V3_5, 40);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let spool = dir.path().join("spool");
    let endpoint = cluster.member().client_url();

    let mut save = Save::start(&config, dir.path());
    save.pause_mid_stream(&spool);
    cluster.members[0].stop();
    save.signal(libc::SIGCONT);
    let (status, stderr) = save.finish();
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(
        stderr.contains("stopped sending the snapshot"),
        "the cause, not just 'broken pipe': {stderr}"
    );
    assert!(
        stderr.contains("health") && stderr.contains("retry"),
        "{stderr}"
    );
    assert_eq!(spool_files(&spool), Vec::<String>::new());
}

struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed (these tests need root, as CI runs them): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Fills the filesystem with `name` until less than `leave` bytes are free.
    fn fill(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path.join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 64 << 10];
        while free_bytes(&self.path) >= leave {
            if file.write_all(&block).is_err() {
                break;
            }
        }
        file.sync_all().ok();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    etcdsafe::pipeline::free_bytes(path).unwrap()
}

/// A config like `write_config`'s, with the spool dir somewhere else.
fn config_with_spool(dir: &Path, cluster: &EtcdCluster, spool: &Path) -> PathBuf {
    let (_, recipient) = age_keypair(dir, "key.txt");
    let config = write_config(dir, cluster, &recipient);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("spool-dir: {}", dir.join("spool").display()),
        &format!("spool-dir: {}", spool.display()),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_spool_disk_filling_up_mid_write_names_the_spool_dir() {
    let cluster = cluster_with(EtcdVersion::V3_5, 20);
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("small"), "64m");
    let spool = small.path.join("spool");
    let config = config_with_spool(dir.path(), &cluster, &spool);

    let mut save = Save::start(&config, dir.path());
    save.pause_mid_stream(&spool);
    // Something else takes the disk while the snapshot is being written.
    small.fill("filler", 1 << 20);
    save.signal(libc::SIGCONT);
    let (status, stderr) = save.finish();
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&spool.display().to_string()),
        "names the spool dir: {stderr}"
    );
    assert!(
        !stderr.contains("move the store"),
        "the store is not what is full: {stderr}"
    );
    assert!(
        stderr.contains("free space") && stderr.contains("spool-dir"),
        "says to free space there or set spool-dir elsewhere: {stderr}"
    );
    assert_eq!(spool_files(&spool), Vec::<String>::new());
}

#[test]
fn the_free_space_refusal_names_the_files_another_run_holds() {
    let cluster = cluster_with(EtcdVersion::V3_5, 20);
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("small"), "64m");
    let spool = small.path.join("spool");
    let config = config_with_spool(dir.path(), &cluster, &spool);

    // A run that is alive (stopped mid-stream), holding its spool file.
    let mut first = Save::start(&config, dir.path());
    let part = first.pause_mid_stream(&spool);
    let filler = small.fill("filler", 20 << 20);
    let part_name = part.file_name().unwrap().to_str().unwrap().to_string();

    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("free space"), "{err}");
    assert!(
        err.contains(&part_name),
        "the refusal names the spool file it found: {err}"
    );
    assert!(
        part.exists(),
        "a second run must never remove the spool file of a live run"
    );

    // The first run goes on and succeeds with its file intact.
    std::fs::remove_file(filler).unwrap();
    first.signal(libc::SIGCONT);
    let (status, stderr) = first.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(list_ids(&config).len(), 1);
    assert_eq!(spool_files(&spool), Vec::<String>::new());
}

#[test]
fn the_service_removes_a_killed_runs_spool_file_before_its_backup() {
    let cluster = cluster_with(EtcdVersion::V3_5, 20);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let spool = dir.path().join("spool");

    // An OOM kill, as far as the spool can tell: SIGKILL mid-stream.
    let mut killed = Save::start(&config, dir.path());
    let part = killed.pause_mid_stream(&spool);
    killed.signal(libc::SIGKILL);
    killed.finish();
    assert!(part.exists());

    // The store holds no backup, so the service takes one at start.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("schedule: \"0 0 1 1 *\"\n");
    std::fs::write(&config, text).unwrap();
    let mut service = common::service::ServiceProcess::start(&config, &dir.path().join("run.log"));
    service.wait_for("the start-up backup", Duration::from_secs(60), |_| {
        list_ids(&config).len() == 1
    });
    let (status, _) = service.terminate();
    assert!(status.success(), "{status}");
    assert!(
        !part.exists(),
        "the service's run must remove the plaintext left by the killed one"
    );
    assert_eq!(spool_files(&spool), Vec::<String>::new());
    assert!(
        service
            .logs()
            .contains("removed a spool file left by an interrupted run"),
        "{}",
        service.logs()
    );
}

#[test]
fn sigterm_aborts_the_s3_multipart_upload() {
    use common::s3::{S3Kind, S3Server};
    let cluster = cluster_with(EtcdVersion::V3_5, 60);
    let s3 = S3Server::start(S3Kind::Moto);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bucket = rt.block_on(s3.fresh_bucket(false));
    let client = rt.block_on(s3.client());
    let uploads = || {
        rt.block_on(client.list_multipart_uploads().bucket(&bucket).send())
            .expect("list multipart uploads")
            .uploads()
            .len()
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("storage:") && !l.trim_start().starts_with("local:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text + &s3.storage_yaml(&bucket, "c/", dir.path())).unwrap();
    let spool = dir.path().join("spool");

    let mut save = Save::start(&config, dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploads() == 0 {
        if let Some(status) = save.child.try_wait().unwrap() {
            panic!("the save ended ({status}) before its multipart upload was seen");
        }
        assert!(Instant::now() < deadline, "no multipart upload after 60s");
        std::thread::sleep(Duration::from_millis(20));
    }
    save.signal(libc::SIGSTOP);
    assert_eq!(
        uploads(),
        1,
        "the upload finished before the test caught it: make the database bigger"
    );
    save.signal(libc::SIGTERM);
    save.signal(libc::SIGCONT);
    let (status, stderr) = save.finish();
    assert!(!status.success() && status.code().is_some(), "{status}");
    assert_eq!(
        status.code(),
        Some(i32::from(Exit::Terminated.code())),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert_eq!(uploads(), 0, "the multipart upload must be aborted");
    let objects = rt
        .block_on(client.list_objects_v2().bucket(&bucket).send())
        .unwrap();
    assert_eq!(objects.contents().len(), 0, "no object may be stored");
    assert_eq!(spool_files(&spool), Vec::<String>::new());
}
