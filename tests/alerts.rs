//! The shipped alert rules: `promtool check rules` and `promtool test rules` on the rule groups of
//! deploy/prometheus-rules.yaml, and a real Prometheus server on loopback scraping a real
//! `etcdsafe run`, where the stale-backup alert fires once backups stop (and the continuous-backup
//! alert stays quiet, capture being off), and scraping the real `Metrics` driven as the capture
//! worker drives it, where `EtcdBackupRPOExceeded` fires once segments stop while etcd changes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcdsafe::metrics::Metrics;

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
    assert!(String::from_utf8_lossy(&out.stdout).contains("12 rules found"));
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
    // Continuous backup is off (no `deltas` section): its interval is scraped as 0, its alert quiet.
    let interval = prometheus.query("etcdsafe_delta_interval_seconds");
    assert_eq!(
        interval["data"]["result"][0]["value"][1].as_str(),
        Some("0"),
        "{interval}"
    );
    assert_eq!(prometheus.alert_state("EtcdBackupRPOExceeded"), None);

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
    assert_eq!(prometheus.alert_state("EtcdBackupRPOExceeded"), None);
}

/// Serves `metrics.render()` as /metrics on a free loopback port, as `etcdsafe run` does.
fn serve_metrics(metrics: Arc<Metrics>) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let body = metrics.render();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What the simulated capture does every 250ms.
const WRITES_AND_SEALS: u8 = 0;
const IDLE: u8 = 1;
const WRITES_NO_SEALS: u8 = 2;

/// The first value of an instant query, if any series matched.
fn scalar(prometheus: &Prometheus, expr: &str) -> Option<f64> {
    let v = prometheus.query(expr);
    v["data"]["result"]
        .as_array()
        .unwrap()
        .first()
        .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
}

#[test]
fn prometheus_fires_the_rpo_alert_when_segments_stop_while_etcd_changes() {
    const ALERT: &str = "EtcdBackupRPOExceeded";
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    // deltas.interval 2s: the alert's threshold is 6s without a seal while etcd changes.
    metrics.delta_configured(Duration::from_secs(2));
    let mode = Arc::new(AtomicU8::new(WRITES_AND_SEALS));
    {
        // The capture worker's calls: a change every 250ms, a seal every second (well inside the
        // interval, as max-bytes or the timer would), per mode.
        let (metrics, mode) = (metrics.clone(), mode.clone());
        std::thread::spawn(move || {
            let mut revision = 100;
            for tick in 0u64.. {
                let m = mode.load(Ordering::SeqCst);
                if m != IDLE {
                    revision += 1;
                    metrics.delta_observed(revision);
                    metrics.delta_lag(0.25);
                }
                if m == WRITES_AND_SEALS && tick % 4 == 0 {
                    metrics.delta_sealed(revision, now_unix(), 512);
                    metrics.delta_lag(0.0);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
    let port = serve_metrics(metrics.clone());
    let rules = extract_rules(dir.path());
    let prometheus = Prometheus::start(dir.path(), port, Some(&rules));

    // Segments are sealed and scraped: quiet (not even pending) for longer than the threshold.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        &prometheus,
        "etcdsafe_delta_segments_total{result=\"success\"}",
    )
    .unwrap_or(0.0)
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped a sealed segment"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        scalar(&prometheus, "etcdsafe_delta_interval_seconds"),
        Some(2.0)
    );
    let quiet_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < quiet_until {
        assert_eq!(
            prometheus.alert_state(ALERT),
            None,
            "{}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // etcd goes idle after a last seal (observed == last sealed): no seals for far over 3x the
    // interval, and still quiet.
    mode.store(IDLE, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    metrics.delta_sealed(metrics.delta_observed_revision.get(), now_unix(), 512);
    let idle_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < idle_until {
        assert_eq!(
            prometheus.alert_state(ALERT),
            None,
            "{}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let age = scalar(
        &prometheus,
        "time() - etcdsafe_delta_last_sealed_timestamp_seconds",
    )
    .unwrap();
    assert!(age > 6.0, "the idle spell was not long enough: {age}s");
    assert_eq!(
        scalar(
            &prometheus,
            "etcdsafe_delta_observed_revision - etcdsafe_delta_last_sealed_revision"
        ),
        Some(0.0)
    );

    // etcd changes again but nothing is sealed: pending past 3x the interval, firing 1m later.
    mode.store(WRITES_NO_SEALS, Ordering::SeqCst);
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(20);
    while prometheus.alert_state(ALERT).is_none() {
        assert!(
            Instant::now() < deadline,
            "{ALERT} never became pending: {}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(prometheus.alert_state(ALERT).as_deref(), Some("pending"));
    let deadline = stopped + Duration::from_secs(120);
    while prometheus.alert_state(ALERT).as_deref() != Some("firing") {
        assert!(
            Instant::now() < deadline,
            "{ALERT} never fired: {}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        stopped.elapsed() >= Duration::from_secs(60),
        "{ALERT} fired before its `for: 1m`"
    );
    let alerts = prometheus.api("/api/v1/alerts");
    let alert = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT)
        .unwrap();
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["job"], "etcdsafe", "{alert}");
    let value: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(
        value > 60.0,
        "the alert's value is the age of the last seal: {alert}"
    );

    // Segments are sealed again: the alert resolves.
    mode.store(WRITES_AND_SEALS, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.alert_state(ALERT).is_some() {
        assert!(
            Instant::now() < deadline,
            "{ALERT} never resolved: {}",
            prometheus.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
