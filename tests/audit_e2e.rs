//! The integrity audit on real backups: `backups audit` and the service's periodic audit find a
//! stored object that no longer matches its manifest, without any private key.

mod common;

use std::time::Duration;

use common::service::ServiceProcess;
use common::*;
use etcdsafe::exit::Exit;
use serde_json::Value;

#[test]
fn audit_finds_a_corrupted_object() {
    let env = Env::new();
    env.cluster.ctl(&["put", "k", "v"]);
    let good = env.save();
    let bad = env.save();
    let out = env.run_ok(&["backups", "audit"]);
    assert!(
        out.contains(&good) && out.contains(&bad) && !out.contains("CORRUPT"),
        "{out}"
    );

    let object = env.object_path(&bad);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();
    let out = env.run_exit(&["backups", "audit", "-w", "json"], Exit::Failed);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = report["entries"].as_array().unwrap();
    let bad_entry = entries.iter().find(|e| e["id"] == bad.as_str()).unwrap();
    assert_eq!(bad_entry["ok"], false);
    assert!(bad_entry["problem"].as_str().unwrap().contains("SHA-256"));
    let good_entry = entries.iter().find(|e| e["id"] == good.as_str()).unwrap();
    assert_eq!(good_entry["ok"], true);

    // The service audits on its own schedule and reports the corrupt backup as a metric.
    env.add_config("schedule: \"0 0 1 1 *\"\naudit-schedule: \"*/2 * * * * *\"\n");
    let service = ServiceProcess::start(&env.config, &env.path().join("run.log"));
    service.wait_for("an audit", Duration::from_secs(30), |s| {
        s.metric("etcdsafe_audit_last_run_timestamp_seconds")
            .unwrap_or(0.0)
            > 0.0
    });
    assert_eq!(service.metric("etcdsafe_audit_corrupt_backups"), Some(1.0));
    assert!(service.logs().contains("integrity audit failed"));
}
