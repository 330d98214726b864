//! `etcdsafe drill` on real etcd 3.4.23 and 3.5.1: a backup is restored with the stock tool into
//! a throwaway etcd on loopback, which must serve the backup's revision and exactly its live keys.

mod common;

use common::*;
use serde_json::Value;

fn drill_on(version: EtcdVersion) {
    let env = Env::with_cluster(EtcdCluster::start(version));
    let cluster = &env.cluster;
    for i in 0..30 {
        cluster.ctl(&["put", &format!("/registry/pods/ns/p{i}"), "v1"]);
    }
    cluster.ctl(&["put", "/registry/pods/ns/p3", "v2"]);
    cluster.ctl(&["del", "/registry/pods/ns/p7"]);
    let manifest = env.save_json();
    // What the live cluster serves, counted by etcd itself.
    let count = cluster
        .ctl(&["get", "", "--from-key", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .count() as u64;
    assert_eq!(count, 29);

    let metrics = env.path().join("drill.prom");
    let out = run_ok(
        env.cmd(&["drill", "latest", "-w", "json", "--identity"])
            .arg(&env.identity)
            .arg("--etcd")
            .arg(version.bin("etcd"))
            .arg("--etcdutl")
            .arg(version.snapshot_tool())
            .arg("--metrics-file")
            .arg(&metrics),
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["id"], manifest["id"]);
    assert_eq!(report["revision"], manifest["snapshot"]["revision"]);
    assert_eq!(report["liveKeys"], count);
    assert!(report["etcdVersion"]
        .as_str()
        .unwrap()
        .starts_with(&version.label()[..3]));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("etcdsafe_drill_last_success_timestamp_seconds 1"),
        "{text}"
    );
    // The scratch dir is gone.
    let spool: Vec<_> = std::fs::read_dir(env.spool()).unwrap().collect();
    assert!(spool.is_empty(), "{spool:?}");

    // A damaged object fails the drill, and the failure is recorded.
    let object = env
        .store()
        .join(manifest["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let err = run_err(
        env.cmd(&["drill", "--identity"])
            .arg(&env.identity)
            .arg("--etcd")
            .arg(version.bin("etcd"))
            .arg("--etcdutl")
            .arg(version.snapshot_tool())
            .arg("--metrics-file")
            .arg(&metrics),
    );
    assert!(err.contains(manifest["id"].as_str().unwrap()), "{err}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        !text.contains("etcdsafe_drill_last_failure_timestamp_seconds 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("etcdsafe_drill_last_success_timestamp_seconds 0\n"),
        "{text}"
    );
}

#[test]
fn drill_etcd_3_5() {
    drill_on(EtcdVersion::V3_5);
}

#[test]
fn drill_etcd_3_4() {
    drill_on(EtcdVersion::V3_4);
}
