//! The continuous capture's spool files after a SIGKILL, against real etcd 3.5.1 and real
//! `etcdsafe run` processes: a killed capture's `delta-<token>-*.part` and its lock file are
//! removed by the next start of the service, whatever the files' age and pid (the lock decides);
//! the files of a capture that still holds its lock are never touched.

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::service::{without_server_line, ServiceProcess};
use common::{Env, EtcdCluster, EtcdVersion};

const FIRST: &str = "00000000000000000002";

/// The file names in the spool dir, sorted.
fn names(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The tokens with a lock file in the spool dir, other than `except`.
fn tokens(spool: &Path, except: &[&str]) -> Vec<String> {
    names(spool)
        .iter()
        .filter_map(|n| n.strip_prefix("delta-")?.strip_suffix(".lock"))
        .filter(|t| !except.contains(t))
        .map(str::to_string)
        .collect()
}

fn has_part(spool: &Path, token: &str) -> bool {
    names(spool)
        .iter()
        .any(|n| n.starts_with(&format!("delta-{token}-")) && n.ends_with(".part"))
}

fn plant(path: &Path, age: Duration) {
    std::fs::write(path, b"ETCDSAFE-DELTA/1\n").unwrap();
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn spool_files_of_a_killed_capture_are_removed_by_the_next_start() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.add_config("deltas:\n  interval: 1s\n");
    let spool = env.spool();
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A capture killed before this test: its lock file is there and nobody holds it. Its spool
    // file was written a moment ago: the lock decides, not the age.
    let dead = "00000000000000aa";
    plant(&spool.join(format!("delta-{dead}.lock")), Duration::ZERO);
    plant(
        &spool.join(format!("delta-{dead}-{FIRST}.part")),
        Duration::ZERO,
    );
    // A capture that is alive: this test holds its lock (as its process would), so its files
    // stay, however old.
    let live = "00000000000000bb";
    let live_lock = spool.join(format!("delta-{live}.lock"));
    plant(&live_lock, Duration::from_secs(3600));
    let held = File::open(&live_lock).unwrap();
    // SAFETY: flock on a descriptor `held` owns.
    let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let live_files = [
        format!("delta-{live}-{FIRST}.part"),
        format!("delta-{live}-{FIRST}.seal"),
    ];
    for name in &live_files {
        plant(&spool.join(name), Duration::from_secs(3600));
    }

    let service = ServiceProcess::start(&env.config, &env.path().join("service-1.log"));
    service.wait_for("a capture spooling", Duration::from_secs(60), |_| {
        tokens(&spool, &[dead, live])
            .first()
            .is_some_and(|t| has_part(&spool, t))
    });
    let first = tokens(&spool, &[dead, live]);
    assert_eq!(first.len(), 1, "{:?}", names(&spool));
    let first = first[0].clone();
    for i in 0..5 {
        env.cluster.ctl(&["put", &format!("/k/{i}"), "v"]);
    }
    let store = env.store();
    service.wait_for("a segment sealed", Duration::from_secs(30), |_| {
        !common::local_segments(&store).is_empty()
    });
    let names_now = names(&spool);
    assert!(
        !names_now.iter().any(|n| n.contains(dead)),
        "a dead capture's files outlived the start: {names_now:?}"
    );
    for name in &live_files {
        assert!(names_now.contains(name), "{name}: {names_now:?}");
    }
    assert!(
        service
            .logs()
            .contains("removed a delta spool file left by a capture that was killed"),
        "{}",
        service.logs()
    );

    // SIGKILL: the capture's spool file and lock file stay behind.
    service.sigkill();
    drop(service);
    assert!(has_part(&spool, &first), "{:?}", names(&spool));
    assert!(spool.join(format!("delta-{first}.lock")).exists());

    without_server_line(&env.config);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-2.log"));
    service.wait_for(
        "the killed capture's files removed by the new one",
        Duration::from_secs(60),
        |_| {
            let others = tokens(&spool, &[live]);
            !names(&spool).iter().any(|n| n.contains(first.as_str()))
                && others.len() == 1
                && has_part(&spool, &others[0])
        },
    );
    let names_now = names(&spool);
    for name in &live_files {
        assert!(names_now.contains(name), "{name}: {names_now:?}");
    }
    // The new capture goes on sealing from where the killed one stopped.
    let sealed = common::local_segments(&store).len();
    env.cluster.ctl(&["put", "/after-restart", "v"]);
    service.wait_for(
        "a segment sealed after the restart",
        Duration::from_secs(30),
        |_| common::local_segments(&store).len() > sealed,
    );
    drop(held);
}
