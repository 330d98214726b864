//! The shipped alert rules: `promtool check rules` and `promtool test rules` on the rule groups of
//! deploy/prometheus-rules.yaml, and a real Prometheus server on loopback scraping a real
//! `etcdsafe run`, where the stale-backup alert fires once backups stop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::service::ServiceProcess;
use common::*;

/// Writes the PrometheusRule's `spec.groups` as a plain rule file (what promtool and a bare
/// Prometheus read).
fn extract_rules(dir: &Path) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus-rules.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"));
    let groups = doc["spec"]["groups"].clone();
    let mut plain = serde_yaml::Mapping::new();
    plain.insert("groups".into(), groups);
    let out = dir.join("rules.yaml");
    std::fs::write(&out, serde_yaml::to_string(&plain).unwrap()).unwrap();
    out
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    extract_rules(dir.path());
    let promtool = system_tool("promtool");
    let out = Command::new(&promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("11 rules found"));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alerts/rules.test.yaml"),
        dir.path().join("rules.test.yaml"),
    )
    .unwrap();
    let out = Command::new(&promtool)
        .args(["test", "rules", "rules.test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_fires_the_stale_backup_alert_when_backups_stop() {
    let mut cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let cfg = write_config(dir.path(), &cluster, &recipient);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("schedule: \"*/2 * * * * *\"\n");
    std::fs::write(&cfg, text).unwrap();
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    let rules = extract_rules(dir.path());
    let prometheus = Prometheus::start(dir.path(), service.port, Some(&rules));

    // Backups succeed and are scraped: the alert stays quiet.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = prometheus
            .api("/api/v1/query?query=etcdsafe_backup_runs_total%7Bresult%3D%22success%22%7D");
        let scraped = q["data"]["result"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if scraped >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped a success"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(prometheus.alert_state("EtcdBackupTooOld"), None);

    // etcd goes away: no more successes; after 2 intervals the alert fires.
    cluster.members[0].stop();
    let deadline = Instant::now() + Duration::from_secs(90);
    while prometheus.alert_state("EtcdBackupTooOld").as_deref() != Some("firing") {
        assert!(
            Instant::now() < deadline,
            "EtcdBackupTooOld never fired: {}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
