//! Each exit code of the table in `src/exit.rs` (and the README), end to end with the binary.
//! Codes 3 (restore stopped) and 4 (upgrade not run) are exercised where those flows are
//! tested: `restore_e2e.rs` (`ETCDSAFE_RESTORE_STOP_AFTER`) and `upgrade_e2e.rs`
//! (`assert_refused`); this file checks 0, 1, 2, the broken pipe, and that the table is the one
//! those tests use.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::*;
use etcdsafe::exit::Exit;

fn code(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn success_failure_and_usage_have_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = {
        let cluster = EtcdCluster::start(EtcdVersion::V3_5);
        cluster.ctl(&["put", "k", "v"]);
        let file = dir.path().join("snap.db");
        cluster.ctl(&["snapshot", "save", file.to_str().unwrap()]);
        (file, ())
    };
    let (c, err) = code(etcdsafe().args(["snapshot", "verify"]).arg(&db));
    assert_eq!(c, i32::from(Exit::Success.code()), "{err}");

    // The operation failed: a damaged snapshot.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, bytes).unwrap();
    let (c, err) = code(etcdsafe().args(["snapshot", "verify"]).arg(&bad));
    assert_eq!(c, i32::from(Exit::Failed.code()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Bad usage: clap's code.
    let (c, err) = code(etcdsafe().args(["snapshot", "verify", "--no-such-flag"]));
    assert_eq!(c, i32::from(Exit::Usage.code()), "{err}");

    // A bad config is bad usage too: nothing was attempted.
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        "etcd: { endpoints: [http://127.0.0.1:1] }\nno-such-key: 1\n",
    )
    .unwrap();
    let (c, err) = code(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert_eq!(c, i32::from(Exit::Usage.code()), "{err}");
    assert!(err.contains("no-such-key"), "{err}");
    // `config check` says the same of the same file.
    let (c, err) = code(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["config", "check"]),
    );
    assert_eq!(c, i32::from(Exit::Usage.code()), "{err}");
    assert!(err.contains("no-such-key"), "{err}");
    let missing = dir.path().join("missing.yaml");
    let (c, err) = code(
        etcdsafe()
            .arg("--config")
            .arg(&missing)
            .args(["backups", "list"]),
    );
    assert_eq!(c, i32::from(Exit::Usage.code()), "{err}");
}

#[test]
fn a_closed_pipe_exits_zero_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.ctl(&["put", "k", "v"]);
    let db = dir.path().join("snap.db");
    cluster.ctl(&["snapshot", "save", db.to_str().unwrap()]);
    // `println!` output with the reader gone before the first write (like `| head -0`).
    for args in [
        &["snapshot", "status", "-w", "json"][..],
        &["snapshot", "verify"][..],
    ] {
        let mut child = etcdsafe()
            .args(args)
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn the_flows_use_the_table() {
    assert_eq!(etcdsafe::restore::EXIT_STOPPED, Exit::RestoreStopped.code());
    assert_eq!(etcdsafe::upgrade::EXIT_NOT_RUN, Exit::UpgradeNotRun.code());
}
