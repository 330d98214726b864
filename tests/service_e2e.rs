//! `etcdsafe run` as a real process against real etcd: the schedule, metrics, the API, restarts,
//! etcd going away and coming back, SIGTERM mid-backup, and one snapshot per tick from three
//! instances next to a 3-member cluster, across a leader change.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::service::{http, ServiceProcess};
use common::*;
use etcdsafe::catalog::DATA_SUFFIX;
use etcdsafe::upgrade::REASON as PRE_UPGRADE;
use serde_json::Value;

fn config(dir: &Path, cluster: &EtcdCluster, member: usize, extra: &str) -> PathBuf {
    config_named(dir, cluster, member, &member.to_string(), extra)
}

/// A service config for `member`'s endpoint; `name` keeps keys, spool and file apart.
fn config_named(
    dir: &Path,
    cluster: &EtcdCluster,
    member: usize,
    name: &str,
    extra: &str,
) -> PathBuf {
    let (_, recipient) = age_keypair(dir, &format!("key{name}.txt"));
    let path = write_config(dir, cluster, &recipient);
    let mut text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &cluster.member().client_url(),
            &cluster.members[member].client_url(),
        )
        .replace(
            &format!("spool-dir: {}", dir.join("spool").display()),
            &format!("spool-dir: {}", dir.join(format!("spool{name}")).display()),
        );
    text.push_str(extra);
    let path = dir.join(format!("service{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn manifests(store: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(store)
        .map(|d| {
            d.filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension().and_then(|x| x.to_str()) == Some("json"))
                    .then(|| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|m: &Value| m["createdAt"].as_str().unwrap().to_string());
    out
}

fn success(s: &ServiceProcess) -> f64 {
    s.metric("etcdsafe_backup_runs_total{result=\"success\"}")
        .unwrap_or(0.0)
}

#[test]
fn scheduled_backups_metrics_and_restart() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.ctl(&["put", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &cluster,
        0,
        "schedule: \"*/2 * * * * *\"\nretention: { keep-last: 50 }\n",
    );
    let mut service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("two scheduled backups", Duration::from_secs(30), |s| {
        success(s) >= 2.0
    });

    assert_eq!(service.metric("etcdsafe_is_snapshot_leader"), Some(1.0));
    assert_eq!(
        service.metric("etcdsafe_schedule_interval_seconds"),
        Some(2.0)
    );
    assert!(
        service
            .metric("etcdsafe_last_success_timestamp_seconds")
            .unwrap()
            > 1.7e9
    );
    assert!(service.metric("etcdsafe_backup_revision").unwrap() >= 2.0);
    assert!(
        service
            .metric("etcdsafe_backup_bytes{kind=\"snapshot\"}")
            .unwrap()
            > 0.0
    );
    assert!(
        service
            .metric("etcdsafe_backup_bytes{kind=\"stored\"}")
            .unwrap()
            > 0.0
    );
    assert!(
        service
            .metric("etcdsafe_backups_stored{reason=\"scheduled\"}")
            .unwrap()
            >= 2.0
    );
    assert!(
        service
            .metric("etcdsafe_backup_duration_seconds_count{stage=\"stream\"}")
            .unwrap()
            >= 2.0
    );
    assert_eq!(
        http(service.port, "GET", "/readyz", None, "").unwrap().0,
        200
    );
    // JSON logs, one span per run with the backup id, and no secrets.
    let logs = service.logs();
    let stored = logs
        .lines()
        .find(|l| l.contains("\"backup stored\""))
        .expect("a backup-stored log line");
    let line: Value = serde_json::from_str(stored).expect("JSON log lines");
    assert!(line["span"]["backup_id"].as_str().unwrap().contains("-rev"));

    let (status, took) = service.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10));

    // Restarted with a yearly schedule: not overdue, so no new backup, and the last success is
    // read back from the catalog.
    let newest = manifests(&dir.path().join("store")).last().unwrap().clone();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("*/2 * * * * *", "0 0 1 1 *")
        .lines()
        .filter(|l| !l.starts_with("server:"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(&cfg, text).unwrap();
    let count = manifests(&dir.path().join("store")).len();
    let service = ServiceProcess::start(&cfg, &dir.path().join("run2.log"));
    let created = chrono::DateTime::parse_from_rfc3339(newest["createdAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    service.wait_for("catalog read", Duration::from_secs(10), |s| {
        s.metric("etcdsafe_last_success_timestamp_seconds") == Some(created)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(success(&service), 0.0);
    assert_eq!(manifests(&dir.path().join("store")).len(), count);
}

#[test]
fn etcd_down_at_a_tick_then_back() {
    let mut cluster = EtcdCluster::start(EtcdVersion::V3_4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &cluster, 0, "schedule: \"*/2 * * * * *\"\n");
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("a backup", Duration::from_secs(30), |s| success(s) >= 1.0);

    cluster.members[0].stop();
    service.wait_for("a counted failure", Duration::from_secs(30), |s| {
        s.metric("etcdsafe_backup_runs_total{result=\"failure\"}")
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(
        service
            .metric("etcdsafe_backup_failures_total{stage=\"coordination\"}")
            .unwrap()
            >= 1.0
    );
    let (status, body) = http(service.port, "GET", "/readyz", None, "").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot reach etcd"), "{body}");
    assert!(service.logs().contains("\"backup failed\""));

    cluster.members[0].restart(None);
    let before = success(&service);
    service.wait_for("recovery", Duration::from_secs(30), |s| success(s) > before);
    service.wait_for("ready again", Duration::from_secs(10), |s| {
        http(s.port, "GET", "/readyz", None, "").map(|r| r.0) == Some(200)
    });
}

#[test]
fn api_on_demand_backup_with_token() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t-token\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(
        dir.path(),
        &cluster,
        0,
        &format!(
            "schedule: \"0 0 1 1 *\"\nserver: {{ token-file: {} }}\n",
            token_file.display()
        ),
    );
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    let body =
        &format!(r#"{{"reason":"{PRE_UPGRADE}","labels":{{"from":"v1.23.2","to":"v1.23.3"}}}}"#);
    let (status, _) = http(service.port, "POST", "/v1/snapshots", None, body).unwrap();
    assert_eq!(status, 401);
    let (status, _) = http(service.port, "POST", "/v1/snapshots", Some("wrong"), body).unwrap();
    assert_eq!(status, 401);
    let (status, text) = http(
        service.port,
        "POST",
        "/v1/snapshots",
        Some("s3cr3t-token"),
        body,
    )
    .unwrap();
    assert_eq!(status, 201, "{text}");
    let manifest: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(manifest["reason"], PRE_UPGRADE);
    assert_eq!(manifest["labels"]["to"], "v1.23.3");
    // Returned only once stored: its manifest is in the store already.
    let id = manifest["id"].as_str().unwrap();
    assert!(dir.path().join("store").join(format!("{id}.json")).exists());

    let (status, text) =
        http(service.port, "GET", "/v1/backups", Some("s3cr3t-token"), "").unwrap();
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_str(&text).unwrap();
    assert!(listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["id"] == id));
    let (status, text) = http(
        service.port,
        "POST",
        "/v1/snapshots",
        Some("s3cr3t-token"),
        "{\"bogus\":1}",
    )
    .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(
        !service.logs().contains("s3cr3t-token"),
        "the token is never logged"
    );
}

#[test]
fn sigterm_mid_backup_leaves_nothing_half_visible() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.put_many_with("/registry/secrets/ns", 400, 100_000, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &cluster,
        0,
        "schedule: \"0 0 1 1 *\"\nshutdown-timeout: 0s\n",
    );
    // The store already holds a backup, so the service does not take one at start.
    let mut service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    let port = service.port;
    let request = std::thread::spawn(move || http(port, "POST", "/v1/snapshots", None, ""));
    let spool = dir.path().join("spool0");
    service.wait_for(
        "the backup to start spooling",
        Duration::from_secs(30),
        |_| {
            std::fs::read_dir(&spool)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        },
    );
    let (status, took) = service.terminate();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(15),
        "bounded shutdown took {took:?}"
    );
    let _ = request.join();
    let store = dir.path().join("store");
    let files: Vec<String> = std::fs::read_dir(&store)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(files.iter().all(|f| !f.starts_with(".tmp-")), "{files:?}");
    // Either the backup finished whole (object and manifest) or nothing of it is there.
    let data = files.iter().filter(|f| f.ends_with(DATA_SUFFIX)).count();
    let json = files.iter().filter(|f| f.ends_with(".json")).count();
    assert_eq!(data, json, "{files:?}");
    assert!(
        std::fs::read_dir(&spool).unwrap().next().is_none(),
        "spool left behind"
    );
}

#[test]
fn one_snapshot_per_tick_from_three_instances_across_a_leader_change() {
    let cluster = EtcdCluster::start_with(EtcdVersion::V3_5, 3, false);
    cluster.ctl(&["put", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<ServiceProcess> = (0..3)
        .map(|i| {
            let cfg = config(dir.path(), &cluster, i, "schedule: \"*/2 * * * * *\"\n");
            ServiceProcess::start(&cfg, &dir.path().join(format!("run{i}.log")))
        })
        .collect();
    let leader_of = || {
        (0..3)
            .find(|&i| cluster.members[i].is_leader(None))
            .expect("a leader")
    };
    let store = dir.path().join("store");
    let first = leader_of();
    std::thread::sleep(Duration::from_secs(7));
    let leaders: f64 = services
        .iter()
        .map(|s| s.metric("etcdsafe_is_snapshot_leader").unwrap())
        .sum();
    assert_eq!(leaders, 1.0);
    assert_eq!(
        services[first].metric("etcdsafe_is_snapshot_leader"),
        Some(1.0)
    );
    let before = manifests(&store);
    assert!(before.len() >= 3, "{}", before.len());
    assert!(before
        .iter()
        .all(|m| m["etcd"]["memberName"] == cluster.members[first].name.as_str()));

    // Move leadership to another member between ticks.
    let next = (first + 1) % 3;
    let id = cluster.members[next].id_hex(None);
    let out = cluster.members[first].etcdctl(None, &["move-leader", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leader_of(), next);
    std::thread::sleep(Duration::from_secs(7));
    let after: Vec<Value> = manifests(&store).into_iter().skip(before.len()).collect();
    assert!(after.len() >= 2, "{}", after.len());
    assert!(
        after
            .iter()
            .skip(1)
            .all(|m| m["etcd"]["memberName"] == cluster.members[next].name.as_str()),
        "{after:#?}"
    );
    assert_eq!(
        services[next].metric("etcdsafe_is_snapshot_leader"),
        Some(1.0)
    );
    assert!(
        services[first]
            .metric("etcdsafe_skipped_runs_total{why=\"not-leader\"}")
            .unwrap()
            >= 1.0
    );

    // Exactly one snapshot per tick: no two backups within one 2-second tick.
    let all = manifests(&store);
    let mut ticks: Vec<i64> = all
        .iter()
        .map(|m| {
            chrono::DateTime::parse_from_rfc3339(m["createdAt"].as_str().unwrap())
                .unwrap()
                .timestamp()
                / 2
        })
        .collect();
    let n = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "two backups in one tick");
}

#[test]
fn lease_coordination_against_an_api_server_stand_in() {
    let standin = common::apiserver::ApiServerStandIn::start();
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = standin.kubeconfig(dir.path());
    let mut services: Vec<Option<ServiceProcess>> = (0..2)
        .map(|i| {
            let cfg = config_named(
                dir.path(),
                &cluster,
                0,
                &format!("lease{i}"),
                &format!(
                    "schedule: \"*/2 * * * * *\"\ncoordination: lease\nlease: {{ name: etcdsafe-snapshot, namespace: etcdsafe, identity: cp{i} }}\nkubernetes: {{ kubeconfig: {} }}\n",
                    kubeconfig.display()
                ),
            );
            Some(ServiceProcess::start(&cfg, &dir.path().join(format!("lease{i}.log"))))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(7));
    let holder = standin
        .holder("etcdsafe", "etcdsafe-snapshot")
        .expect("a Lease holder");
    let leader = if holder == "cp0" { 0 } else { 1 };
    let other = 1 - leader;
    let metric = |s: &Option<ServiceProcess>, m: &str| s.as_ref().unwrap().metric(m).unwrap();
    assert_eq!(
        metric(&services[leader], "etcdsafe_is_snapshot_leader"),
        1.0
    );
    assert_eq!(metric(&services[other], "etcdsafe_is_snapshot_leader"), 0.0);
    assert!(
        metric(
            &services[other],
            "etcdsafe_skipped_runs_total{why=\"not-leader\"}"
        ) >= 1.0
    );
    let store = dir.path().join("store");
    let taken = manifests(&store).len();
    assert!(taken >= 2, "{taken}");
    {
        let state = standin.state.lock().unwrap();
        assert!(
            state.requests.iter().any(|(m, _)| m == "PUT"),
            "renewals went through the API"
        );
    }

    // The holder dies; the other instance takes the Lease over at a following tick.
    services[leader] = None;
    let survivor = services[other].as_ref().unwrap();
    survivor.wait_for("the take-over", Duration::from_secs(20), |s| {
        s.metric("etcdsafe_is_snapshot_leader") == Some(1.0)
    });
    assert_eq!(
        standin.holder("etcdsafe", "etcdsafe-snapshot").as_deref(),
        Some(format!("cp{other}").as_str())
    );
    let before = manifests(&store).len();
    survivor.wait_for(
        "a backup by the new holder",
        Duration::from_secs(20),
        |_| manifests(&store).len() > before,
    );
    // Exactly one snapshot per tick throughout.
    let mut ticks: Vec<i64> = manifests(&store)
        .iter()
        .map(|m| {
            chrono::DateTime::parse_from_rfc3339(m["createdAt"].as_str().unwrap())
                .unwrap()
                .timestamp()
                / 2
        })
        .collect();
    let n = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "two backups in one tick");
}

#[test]
fn hooks_run_around_each_snapshot() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("post.txt");
    let post = dir.path().join("post.sh");
    std::fs::write(
        &post,
        format!(
            "#!/bin/sh\necho \"$ETCDSAFE_RESULT $ETCDSAFE_BACKUP_ID $ETCDSAFE_REASON\" >> {}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&post, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(
        dir.path(),
        &cluster,
        0,
        &format!(
            "schedule: \"0 0 1 1 *\"\nhooks: {{ post-snapshot: [{}], timeout: 10s }}\n",
            post.display()
        ),
    );
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    let (status, text) = http(service.port, "POST", "/v1/snapshots", None, "").unwrap();
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert!(
        recorded.contains(&format!("success {id} manual")),
        "{recorded}"
    );
    drop(service);

    // A failing pre-snapshot hook stops the backup, and is counted.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("hooks:") && !l.starts_with("server:"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nhooks: { pre-snapshot: [/bin/false] }\n";
    std::fs::write(&cfg, text).unwrap();
    let before = manifests(&dir.path().join("store")).len();
    let service = ServiceProcess::start(&cfg, &dir.path().join("run2.log"));
    let (status, text) = http(service.port, "POST", "/v1/snapshots", None, "").unwrap();
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("hooks.pre-snapshot"), "{text}");
    assert_eq!(manifests(&dir.path().join("store")).len(), before);
    assert_eq!(
        service.metric("etcdsafe_hook_failures_total{hook=\"pre-snapshot\"}"),
        Some(1.0)
    );
    assert_eq!(
        service.metric("etcdsafe_backup_failures_total{stage=\"hook\"}"),
        Some(1.0)
    );
}

#[test]
fn store_down_at_a_tick_then_back() {
    use common::proxy::FaultyProxy;
    use common::s3::{S3Kind, S3Server};
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let s3 = S3Server::start(S3Kind::Garage);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bucket = rt.block_on(s3.fresh_bucket(false));
    let upstream: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultyProxy::start(upstream);
    let dir = tempfile::tempdir().unwrap();
    let storage = s3
        .storage_yaml(&bucket, "svc/", dir.path())
        .replace(&s3.endpoint, &proxy.endpoint())
        + "    max-attempts: 2\n";
    let cfg = config(dir.path(), &cluster, 0, "schedule: \"*/2 * * * * *\"\n");
    let text: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("storage:") && !l.trim_start().starts_with("local:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, text + &storage).unwrap();
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("a backup to S3", Duration::from_secs(30), |s| {
        success(s) >= 1.0
    });

    // The store goes away: connections are cut and refused.
    proxy
        .faults
        .cut_after_bytes
        .store(1, std::sync::atomic::Ordering::SeqCst);
    service.wait_for("a counted store failure", Duration::from_secs(40), |s| {
        s.metric("etcdsafe_backup_failures_total{stage=\"upload\"}")
            .unwrap_or(0.0)
            >= 1.0
    });
    let (status, body) = http(service.port, "GET", "/readyz", None, "").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&bucket), "{body}");

    proxy.heal();
    let before = success(&service);
    service.wait_for("recovery", Duration::from_secs(40), |s| success(s) > before);
    service.wait_for("ready again", Duration::from_secs(15), |s| {
        http(s.port, "GET", "/readyz", None, "").map(|r| r.0) == Some(200)
    });
}

#[test]
fn a_failed_run_retries_inside_its_window() {
    // Ticks every 20s; a failure is retried after interval/4 = 5s, before the next tick.
    let mut cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &cluster, 0, "schedule: \"*/20 * * * * *\"\n");
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("the start-up backup", Duration::from_secs(30), |s| {
        success(s) >= 1.0
    });
    cluster.members[0].stop();
    service.wait_for("a failed tick", Duration::from_secs(40), |s| {
        s.metric("etcdsafe_backup_runs_total{result=\"failure\"}")
            .unwrap_or(0.0)
            >= 1.0
    });
    let failed_at = service
        .metric("etcdsafe_last_attempt_timestamp_seconds")
        .unwrap();
    cluster.members[0].restart(None);
    service.wait_for("the retry to succeed", Duration::from_secs(30), |s| {
        success(s) >= 2.0
    });
    let succeeded_at = service
        .metric("etcdsafe_last_success_timestamp_seconds")
        .unwrap();
    // The failed attempt was at a tick (a multiple of 20s); a success before the next tick can
    // only come from a retry inside the window.
    let tick = (failed_at / 20.0).floor() * 20.0;
    assert!(
        succeeded_at > failed_at && succeeded_at < tick + 20.0,
        "failed at {failed_at:.1} (tick {tick}), succeeded at {succeeded_at:.1}: not a retry inside the window"
    );
    assert!(service.logs().contains("retrying the failed backup"));
}

#[test]
fn overlapping_tick_is_skipped_and_retention_runs_after_each_backup() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    // A pre-snapshot hook that takes 3s holds each run past the next 2-second tick.
    let slow = dir.path().join("slow.sh");
    std::fs::write(&slow, "#!/bin/sh\nsleep 3\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(
        dir.path(),
        &cluster,
        0,
        &format!(
            "schedule: \"*/2 * * * * *\"\nhooks: {{ pre-snapshot: [{}] }}\nretention: {{ keep-last: 1 }}\n",
            slow.display()
        ),
    );
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("two backups", Duration::from_secs(40), |s| {
        success(s) >= 2.0
    });
    assert!(
        service
            .metric("etcdsafe_skipped_runs_total{why=\"overlap\"}")
            .unwrap()
            >= 1.0
    );
    assert!(service.logs().contains("the previous one is still running"));
    assert!(service.metric("etcdsafe_retention_deleted_total").unwrap() >= 1.0);
    assert_eq!(manifests(&dir.path().join("store")).len(), 1, "keep-last 1");
}
