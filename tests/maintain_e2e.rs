//! `etcdsafe maintain` against real 3-member etcd clusters (3.5.1 and 3.4.23) on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::service::ServiceProcess;
use common::*;
use serde_json::Value;

/// Cluster starts are serialized: the NOSPACE test hands etcd its quota through the
/// environment (ETCD_QUOTA_BACKEND_BYTES), which every etcd started meanwhile would inherit.
static START: Mutex<()> = Mutex::new(());

fn start(version: EtcdVersion, quota: Option<u64>) -> EtcdCluster {
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    match quota {
        Some(q) => {
            std::env::set_var("ETCD_QUOTA_BACKEND_BYTES", q.to_string());
            let cluster = EtcdCluster::start_with(version, 3, false);
            std::env::remove_var("ETCD_QUOTA_BACKEND_BYTES");
            cluster
        }
        None => EtcdCluster::start_with(version, 3, false),
    }
}

/// A config with the test's thresholds (and quota) under `maintenance`.
fn config(dir: &Path, cluster: &EtcdCluster, maintenance: &str) -> PathBuf {
    let (_, recipient) = age_keypair(dir, "key.txt");
    let path = write_config(dir, cluster, &recipient);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(maintenance);
    std::fs::write(&path, text).unwrap();
    path
}

fn maintain(config: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = etcdsafe();
    cmd.arg("--config").arg(config).arg("maintain").args(args);
    cmd
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Every member's file size, by name, as etcdctl sees it.
fn db_sizes(cluster: &EtcdCluster) -> Vec<(String, u64)> {
    cluster
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| {
            let out = m.etcdctl(None, &["endpoint", "status", "-w", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            (m.name.clone(), v[0]["Status"]["dbSize"].as_u64().unwrap())
        })
        .collect()
}

/// Writes then deletes ~`mb` MB and compacts, leaving that much free space in every member.
fn fragment(cluster: &EtcdCluster, mb: usize) {
    cluster.put_many("frag", mb * 64, 16 * 1024);
    cluster.ctl(&["del", "--prefix", "frag/"]);
    let out = cluster.ctl(&["put", "marker", "x", "-w", "json"]);
    let rev = json(&out)["header"]["revision"].as_u64().unwrap();
    cluster.ctl(&["compact", &rev.to_string(), "--physical"]);
}

fn backups(config: &Path) -> Vec<Value> {
    let out = run_ok(
        etcdsafe()
            .arg("--config")
            .arg(config)
            .args(["backups", "list", "-w", "json"]),
    );
    json(&out)["backups"].as_array().unwrap().clone()
}

fn leader_name(cluster: &EtcdCluster) -> String {
    cluster
        .members
        .iter()
        .find(|m| m.is_leader(None))
        .expect("a leader")
        .name
        .clone()
}

fn rolling_defrag(version: EtcdVersion) {
    let cluster = start(version, None);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &cluster,
        "maintenance:\n  defrag: { min-fragmentation: 0.3, min-reclaim-bytes: 4MiB }\n",
    );
    fragment(&cluster, 24);
    let before = db_sizes(&cluster);
    let leader = leader_name(&cluster);

    // A bounded writer on loopback, through the whole round: no request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let writer = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = cluster.members[0].client_url();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut client = etcd_client::Client::connect([url], None).await.unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match client.put(format!("live/{}", i % 100), "v", None).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            });
        })
    };

    let out = run_ok(&mut maintain(&config, &["defrag", "-w", "json"]));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "writer saw failures");
    assert!(ok.load(Ordering::Relaxed) > 0);

    let report = json(&out);
    let steps = report["defragmented"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{out}");
    assert_eq!(steps[2]["name"], leader.as_str(), "leader last: {out}");
    assert_eq!(steps[2]["leader"], true);
    assert!(steps[..2].iter().all(|s| s["leader"] == false));
    for step in steps {
        assert!(
            step["dbSizeAfter"].as_u64().unwrap() < step["dbSizeBefore"].as_u64().unwrap() / 2,
            "{step}"
        );
    }
    let after = db_sizes(&cluster);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(a < &(b / 2), "{name}: {b} -> {a}");
    }
    // The members' logs agree: the leader's defrag came last.
    let finished = |m: &EtcdMember| {
        let log = std::fs::read_to_string(&m.log).unwrap();
        log.lines()
            .filter(|l| l.contains("finished defragmenting"))
            .filter_map(json_time)
            .next_back()
            .unwrap_or_else(|| panic!("no defrag in {}'s log", m.name))
    };
    let leader_member = cluster.members.iter().find(|m| m.name == leader).unwrap();
    for m in cluster.members.iter().filter(|m| m.name != leader) {
        assert!(
            finished(m) < finished(leader_member),
            "{} after the leader",
            m.name
        );
    }
    // The pre-maintenance backup exists and was named in the report.
    let list = backups(&config);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["reason"], etcdsafe::maintain::REASON);
    assert_eq!(report["backup"], list[0]["id"]);
    // Writes still work.
    cluster.ctl(&["put", "after", "1"]);
}

/// The timestamp of an etcd log line (3.5 JSON "ts", 3.4 text "2026-12-03 07:00:00.123456").
fn json_time(line: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return v["ts"].as_str().map(str::to_string);
    }
    line.get(..26).map(str::to_string)
}

#[test]
fn rolling_defrag_followers_first_leader_last_3_5() {
    rolling_defrag(EtcdVersion::V3_5);
}

#[test]
fn rolling_defrag_followers_first_leader_last_3_4() {
    rolling_defrag(EtcdVersion::V3_4);
}

#[test]
fn a_member_down_is_refused_before_anything() {
    let mut cluster = start(EtcdVersion::V3_5, None);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &cluster,
        "maintenance:\n  defrag: { min-fragmentation: 0.3, min-reclaim-bytes: 1MiB }\n",
    );
    fragment(&cluster, 8);
    cluster.members[2].stop();
    let before = db_sizes(&cluster);
    let err = run_err(&mut maintain(&config, &["defrag"]));
    assert!(err.contains("maintenance refused"), "{err}");
    assert!(err.contains("m2"), "names the member: {err}");
    assert!(err.lines().count() == 1, "one line: {err}");
    assert_eq!(db_sizes(&cluster), before, "nothing defragmented");
    assert!(!dir.path().join("store").exists() || backups(&config).is_empty());
}

#[test]
fn thresholds_skip_a_barely_fragmented_cluster_in_dry_run_and_json() {
    let cluster = start(EtcdVersion::V3_5, None);
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 30% and 256MiB; a fresh cluster has neither.
    let config = config(dir.path(), &cluster, "");
    cluster.put_many("k", 50, 100);
    let out = run_ok(&mut maintain(
        &config,
        &["defrag", "--dry-run", "-w", "json"],
    ));
    let report = json(&out);
    assert_eq!(report["dryRun"], true);
    let members = report["status"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["defrag"], false, "{m}");
        let reason = m["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("skip:") && reason.contains("under min-"),
            "{reason}"
        );
    }
    assert!(report["defragmented"].as_array().unwrap().is_empty());
    let table = run_ok(&mut maintain(&config, &["defrag", "--dry-run"]));
    assert!(table.contains("order: nothing to defragment"), "{table}");
    assert!(table.contains("under min-"), "{table}");
    let status = run_ok(&mut maintain(&config, &["status"]));
    assert!(
        status.contains("leader") && status.contains("follower"),
        "{status}"
    );
    assert!(!dir.path().join("store").exists() || backups(&config).is_empty());
}

#[test]
fn nospace_is_cleared_by_a_defrag_round() {
    const QUOTA: u64 = 16 << 20;
    let cluster = start(EtcdVersion::V3_5, Some(QUOTA));
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &cluster,
        &format!(
            "maintenance:\n  quota-backend-bytes: {QUOTA}\n  defrag: {{ min-fragmentation: 0.04, min-reclaim-bytes: 512KiB }}\n"
        ),
    );
    // Fill until etcd raises NOSPACE.
    let value = "x".repeat(64 * 1024);
    let mut i = 0;
    loop {
        let out = cluster.etcdctl(&["put", &format!("fill/{i}"), &value]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("database space exceeded"), "{err}");
            break;
        }
        i += 1;
        assert!(i < 2000, "no NOSPACE after {i} puts");
    }
    let alarms = run_ok(&mut maintain(&config, &["alarms"]));
    assert!(alarms.contains("NOSPACE"), "{alarms}");
    // Disarming while still full is refused, naming the member.
    let err = run_err(&mut maintain(&config, &["alarms", "--disarm"]));
    assert!(
        err.contains("not disarmed") && err.contains("quota"),
        "{err}"
    );

    cluster.ctl(&["del", "--prefix", "fill/"]);
    let status = json(&cluster.ctl(&["endpoint", "status", "-w", "json"]));
    let rev = status[0]["Status"]["header"]["revision"].as_u64().unwrap();
    cluster.ctl(&["compact", &rev.to_string(), "--physical"]);
    // --physical waits for the member etcdctl asked; the others compact on their own time.
    // bbolt keeps freed pages pending until a later write, and NOSPACE refuses writes, so
    // in-use stays well above the live data (seen: 89% to 91% of the file on different
    // members): the thresholds above (4%, 512KiB) are set for that, and this waits until every
    // member is past them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cluster.members.iter().any(|m| {
        let out = m.etcdctl(None, &["endpoint", "status", "-w", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (size, in_use) = (&v[0]["Status"]["dbSize"], &v[0]["Status"]["dbSizeInUse"]);
        let (size, in_use) = (size.as_u64().unwrap(), in_use.as_u64().unwrap());
        in_use * 100 > size * 95 || size - in_use < 512 << 10
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not free space: {}",
            cluster.ctl(&["endpoint", "status", "--cluster", "-w", "json"])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let out = run_ok(&mut maintain(
        &config,
        &["defrag", "--no-backup", "-w", "json"],
    ));
    let report = json(&out);
    assert_eq!(report["defragmented"].as_array().unwrap().len(), 3, "{out}");
    assert!(report["backup"].is_null());
    let disarmed = report["disarmed"].as_array().unwrap();
    assert!(
        !disarmed.is_empty() && disarmed[0].as_str().unwrap().contains("NOSPACE"),
        "{out}"
    );
    let alarms = run_ok(&mut maintain(&config, &["alarms"]));
    assert!(!alarms.contains("NOSPACE"), "{alarms}");
    cluster.ctl(&["put", "after", "works"]);
    assert!(cluster.ctl(&["get", "after"]).contains("works"));
}

#[test]
fn the_service_defragments_on_its_schedule_and_exports_etcd_sizes() {
    let cluster = start(EtcdVersion::V3_5, None);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &cluster,
        "coordination: none\nmaintenance:\n  defrag-schedule: \"*/3 * * * * *\"\n  defrag: { min-fragmentation: 0.3, min-reclaim-bytes: 1MiB }\n",
    );
    fragment(&cluster, 8);
    let service = ServiceProcess::start(&config, &dir.path().join("run.log"));
    service.wait_for(
        "a scheduled defrag",
        std::time::Duration::from_secs(60),
        |s| {
            s.metric("etcdsafe_defrag_runs_total{result=\"success\"}")
                .unwrap_or(0.0)
                >= 1.0
        },
    );
    assert!(
        service
            .metric("etcdsafe_defrag_last_success_timestamp_seconds")
            .unwrap()
            > 0.0
    );
    for m in &cluster.members {
        let size = service
            .metric(&format!(
                "etcdsafe_etcd_db_size_bytes{{member=\"{}\"}}",
                m.name
            ))
            .unwrap_or_else(|| panic!("no size for {}: {}", m.name, service.logs()));
        assert!(size > 0.0);
        let quota = service
            .metric(&format!(
                "etcdsafe_etcd_quota_bytes{{member=\"{}\"}}",
                m.name
            ))
            .unwrap();
        assert_eq!(quota, (2u64 << 30) as f64);
    }
    // The round was taken after a pre-maintenance backup. Each member applies the compaction
    // on its own, so a member whose compaction had not landed yet is below the thresholds in
    // the first round and is defragmented by a later scheduled one: within a minute, every
    // member has shrunk.
    assert!(backups(&config)
        .iter()
        .any(|b| b["reason"] == etcdsafe::maintain::REASON));
    // A member reports the pages its last commit freed as in use until its next write
    // transaction releases them, so a write now and then lets every member see its free space.
    let mut polls = 0u32;
    service.wait_for(
        "every member defragmented by the schedule",
        std::time::Duration::from_secs(90),
        |_| {
            polls += 1;
            if polls % 10 == 0 {
                cluster.ctl(&["put", "nudge", &polls.to_string()]);
            }
            db_sizes(&cluster).iter().all(|(_, size)| *size < 4 << 20)
        },
    );
    assert!(
        db_sizes(&cluster).iter().all(|(_, size)| *size < 4 << 20),
        "{:?}",
        db_sizes(&cluster)
    );
}

/// The pid of the etcd whose data dir is `data_dir` (the helper keeps its Child private).
fn etcd_pid(data_dir: &Path) -> u32 {
    let wanted = data_dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let args: Vec<String> = c
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).to_string())
                        .collect();
                    args.first().is_some_and(|a| a.ends_with("/etcd")) && args.contains(&wanted)
                })
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no etcd process for {wanted}"))
}

#[test]
fn a_member_killed_during_the_round_stops_it_naming_the_member() {
    let mut cluster = start(EtcdVersion::V3_5, None);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &cluster,
        "maintenance:\n  defrag: { min-fragmentation: 0.3, min-reclaim-bytes: 1MiB }\n",
    );
    fragment(&cluster, 24);
    let leader = leader_name(&cluster);
    let followers: Vec<usize> = (0..3)
        .filter(|&i| cluster.members[i].name != leader)
        .collect();
    let leader_before = db_sizes(&cluster)
        .into_iter()
        .find(|(name, _)| *name == leader)
        .unwrap()
        .1;
    // As soon as the first follower has been defragmented, the other one is killed (SIGKILL).
    let watched: Vec<(String, PathBuf, PathBuf)> = followers
        .iter()
        .map(|&i| {
            let m = &cluster.members[i];
            (m.name.clone(), m.log.clone(), m.data_dir.clone())
        })
        .collect();
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            for (k, (_, log, _)) in watched.iter().enumerate() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains("finished defragmenting") {
                    let (victim, _, data_dir) = &watched[1 - k];
                    let pid = etcd_pid(data_dir);
                    // The syscall, not kill(1): a bare Debian root has no procps.
                    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
                    return victim.clone();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("no follower was defragmented");
    });
    let err = run_err(&mut maintain(&config, &["defrag", "--no-backup"]));
    let victim = killer.join().unwrap();
    assert!(err.contains(&victim), "names {victim}: {err}");
    // (warnings from the logger may precede it: a configured endpoint went away)
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(
        err.contains("members not yet defragmented were left as they were"),
        "{err}"
    );
    // Reap the killed member, so only the live ones are asked for their sizes.
    for m in cluster.members.iter_mut().filter(|m| m.name == victim) {
        m.stop();
    }
    // The leader, last in the order, was never defragmented.
    let leader_member = cluster.members.iter().find(|m| m.name == leader).unwrap();
    let leader_log = std::fs::read_to_string(&leader_member.log).unwrap();
    assert!(
        !leader_log.contains("finished defragmenting"),
        "leader was defragmented"
    );
    let leader_after = db_sizes(&cluster)
        .into_iter()
        .find(|(name, _)| *name == leader)
        .unwrap()
        .1;
    assert_eq!(leader_after, leader_before);
}
