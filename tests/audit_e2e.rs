//! The integrity audit on real backups: `backups audit` and the service's periodic audit find a
//! stored object that no longer matches its manifest, without any private key.

mod common;

use std::time::Duration;

use common::service::ServiceProcess;
use common::*;
use serde_json::Value;

#[test]
fn audit_finds_a_corrupted_object() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.ctl(&["put", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let save = || {
        run_ok(
            etcdsafe()
                .arg("--config")
                .arg(&config)
                .args(["snapshot", "save"]),
        )
        .trim()
        .to_string()
    };
    let good = save();
    let bad = save();
    let out = run_ok(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["backups", "audit"]),
    );
    assert!(
        out.contains(&good) && out.contains(&bad) && !out.contains("CORRUPT"),
        "{out}"
    );

    let object = dir.path().join("store").join(format!("{bad}.db.zst.age"));
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();
    let out = etcdsafe()
        .arg("--config")
        .arg(&config)
        .args(["backups", "audit", "-w", "json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = report["entries"].as_array().unwrap();
    let bad_entry = entries.iter().find(|e| e["id"] == bad.as_str()).unwrap();
    assert_eq!(bad_entry["ok"], false);
    assert!(bad_entry["problem"].as_str().unwrap().contains("SHA-256"));
    let good_entry = entries.iter().find(|e| e["id"] == good.as_str()).unwrap();
    assert_eq!(good_entry["ok"], true);

    // The service audits on its own schedule and reports the corrupt backup as a metric.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("schedule: \"0 0 1 1 *\"\naudit-schedule: \"*/2 * * * * *\"\n");
    std::fs::write(&config, text).unwrap();
    let service = ServiceProcess::start(&config, &dir.path().join("run.log"));
    service.wait_for("an audit", Duration::from_secs(30), |s| {
        s.metric("etcdsafe_audit_last_run_timestamp_seconds")
            .unwrap_or(0.0)
            > 0.0
    });
    assert_eq!(service.metric("etcdsafe_audit_corrupt_backups"), Some(1.0));
    assert!(service.logs().contains("integrity audit failed"));
}
