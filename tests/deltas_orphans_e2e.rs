//! Orphaned delta segment objects (uploaded, never published by a manifest) swept by `etcdsafe
//! backups prune`, against real etcd 3.5.1, a real `etcdsafe run` capturing into the local
//! store, and the real binary pruning: only objects that can never be published go, the dry run
//! names them and deletes nothing, and the chain still fetches at a point afterwards.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::service::ServiceProcess;
use common::{Env, EtcdCluster, EtcdVersion};
use serde_json::Value;

fn rev(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Writes `bytes` under `key` in the local store at `store`, last modified `age` ago.
fn plant(store: &Path, key: &str, bytes: &[u8], age: Duration) {
    let path = store.join(key);
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn object_key(first: i64, last: i64, nonce: &str) -> String {
    format!("deltas/{first:020}-{last:020}-{nonce}.seg.zst.age")
}

fn signature_key(first: i64, last: i64, nonce: &str) -> String {
    format!("deltas/{first:020}-{last:020}-{nonce}.json.sig")
}

/// The keys a prune report lists under `orphanSegments`.
fn orphans_in(report: &Value) -> BTreeSet<String> {
    report["orphanSegments"]
        .as_array()
        .unwrap_or_else(|| panic!("no orphanSegments in {report}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_sweeps_segment_objects_that_can_never_be_published() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.add_config("deltas:\n  interval: 1s\nretention:\n  keep-last: 10\n");
    let mut service = ServiceProcess::start(&env.config, &env.path().join("service.log"));
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    for round in 0..4 {
        for i in 0..4 {
            env.cluster.ctl(&["put", &format!("/o/{round}/{i}"), "v"]);
        }
        std::thread::sleep(Duration::from_millis(1300));
    }
    let store = env.store();
    service.wait_for("three segments", Duration::from_secs(30), |_| {
        common::local_segments(&store).len() >= 3
    });
    // Nothing in flight while the store is judged.
    service.terminate();
    let sealed = common::local_segments(&store);
    let firsts: BTreeSet<i64> = sealed.iter().map(|s| rev(s, "firstRevision")).collect();
    let oldest = rev(&sealed[0], "firstRevision");
    let newest = rev(sealed.last().unwrap(), "lastRevision");
    let body = std::fs::read(store.join(sealed[1]["object"]["key"].as_str().unwrap())).unwrap();
    let grace_passed = Duration::from_secs(20 * 60);

    // (a) Lost the race for a published segment's first revision: swept at once, with its
    // signature.
    let slot = rev(&sealed[1], "firstRevision");
    let lost = object_key(slot, slot + 3, "0badc0de");
    let lost_sig = signature_key(slot, slot + 3, "0badc0de");
    plant(&store, &lost, &body, Duration::ZERO);
    plant(
        &store,
        &lost_sig,
        b"-----BEGIN SSH SIGNATURE-----\n",
        Duration::ZERO,
    );
    // (b) Inside the covered range, at no segment's first revision, written 20 minutes ago:
    // the chain has moved past it.
    let inside = (oldest..=newest)
        .find(|r| !firsts.contains(r))
        .expect("a segment spans two revisions");
    let passed = object_key(inside, newest, "0000beef");
    plant(&store, &passed, &body, grace_passed);
    // (c) Above the newest segment, written 20 minutes ago: perhaps a seal in flight; kept.
    let in_flight = object_key(newest + 1, newest + 9, "0000f1f1");
    plant(&store, &in_flight, &body, grace_passed);
    // (d) Above the newest segment, written two hours ago: its sealer is gone; swept.
    let abandoned = object_key(newest + 1, newest + 20, "00000dad");
    plant(&store, &abandoned, &body, Duration::from_secs(2 * 3600));
    // Not a segment object: never touched, however old.
    let notes = "deltas/notes.txt";
    plant(
        &store,
        notes,
        b"an operator's note",
        Duration::from_secs(48 * 3600),
    );

    let expected: BTreeSet<String> = [&lost, &lost_sig, &passed, &abandoned]
        .into_iter()
        .cloned()
        .collect();
    let kept: Vec<String> = sealed
        .iter()
        .flat_map(|s| {
            let first = rev(s, "firstRevision");
            [
                format!("deltas/{first:020}.json"),
                s["object"]["key"].as_str().unwrap().to_string(),
            ]
        })
        .chain([in_flight.clone(), notes.to_string()])
        .collect();

    // The dry run names them and deletes nothing.
    let dry = env.run_ok(&["backups", "prune", "--dry-run"]);
    for key in &expected {
        assert!(
            dry.contains(&format!("would remove {key}: no segment manifest names it")),
            "{key}: {dry}"
        );
    }
    assert!(!dry.contains(&in_flight), "{dry}");
    assert!(!dry.contains(notes), "{dry}");
    let dry_json: Value =
        serde_json::from_str(&env.run_ok(&["backups", "prune", "--dry-run", "-w", "json"]))
            .unwrap();
    assert_eq!(orphans_in(&dry_json), expected, "{dry_json}");
    for key in expected.iter().chain(&kept) {
        assert!(store.join(key).exists(), "the dry run removed {key}");
    }

    // For real.
    let report: Value =
        serde_json::from_str(&env.run_ok(&["backups", "prune", "-w", "json"])).unwrap();
    assert_eq!(orphans_in(&report), expected, "{report}");
    assert_eq!(report["sweepErrors"], serde_json::json!([]), "{report}");
    for key in &expected {
        assert!(!store.join(key).exists(), "{key} outlived the prune");
    }
    for key in &kept {
        assert!(store.join(key).exists(), "the prune removed {key}");
    }
    assert_eq!(common::local_segments(&store), sealed);
    // A second prune finds nothing more to sweep.
    let again: Value =
        serde_json::from_str(&env.run_ok(&["backups", "prune", "-w", "json"])).unwrap();
    assert!(orphans_in(&again).is_empty(), "{again}");

    // The chain still fetches at a point, its newest and one inside.
    for revision in [inside, newest] {
        let out = env.path().join(format!("at-{revision}.db"));
        let mut fetch = env.fetch_cmd("latest", &out);
        fetch.arg(format!("--at-revision={revision}"));
        let said = common::run_ok(&mut fetch);
        assert!(said.contains(&format!("at revision {revision}")), "{said}");
        assert!(out.exists());
    }
}
