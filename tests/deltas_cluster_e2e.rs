//! Continuous backup beyond one healthy member: a chain broken by a compaction past the resume
//! point (recorded, a full backup at once, a new chain, the gap refused by name), a raft leader
//! change under three `etcdsafe run` instances (exactly one captures, then the new leader's
//! instance takes over with no gap and no duplicate), and capture into real S3 servers (Garage,
//! moto). Real etcd 3.5.1, real etcdsafe processes, fetched databases restored with the stock
//! tool and served by real etcd, compared key for key with the original.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::s3::{S3Kind, S3Server};
use common::service::ServiceProcess;
use common::{Env, EtcdCluster, EtcdMember, EtcdVersion};
use etcd_client::{Client, Txn, TxnOp};
use etcdsafe::deltas::segment;
use serde_json::Value;

/// The reason recorded on the full backup taken after a chain break (the service's
/// `CHAIN_BREAK_REASON`, not exported by the crate).
const CHAIN_BREAK_REASON: &str = "delta-chain-break";
/// A schedule that never fires during a test (the first backup is still taken at start: there
/// is none yet).
const YEARLY: &str = "schedule: \"0 0 1 1 *\"\n";

fn json(out: std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The kvs of `get "" --prefix --rev R -w json`, as etcdctl prints them.
fn kvs_at(member: &EtcdMember, revision: i64) -> Value {
    let v = json(
        member.etcdctl(
            None,
            &[
                "get",
                "",
                "--prefix",
                &format!("--rev={revision}"),
                "-w",
                "json",
            ],
        ),
        &format!("get --rev {revision} on {}", member.name),
    );
    v["kvs"].clone()
}

/// The member's current revision.
fn head_revision(member: &EtcdMember) -> i64 {
    let v = json(
        member.etcdctl(None, &["endpoint", "status", "-w", "json"]),
        "endpoint status",
    );
    v[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("a revision")
}

fn rev(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// Segments follow each other: no gap, no duplicate, each names its predecessor's SHA-256.
fn assert_linked(segments: &[Value]) {
    for pair in segments.windows(2) {
        assert_eq!(
            rev(&pair[1], "firstRevision"),
            rev(&pair[0], "lastRevision") + 1,
            "a gap or an overlap between segments:\n{:#}\n{:#}",
            pair[0],
            pair[1]
        );
        assert_eq!(
            pair[1]["previousSha256"], pair[0]["object"]["sha256"],
            "segment {} does not name its predecessor",
            pair[1]["object"]["key"]
        );
    }
}

/// `backups list -w json`.
fn listing(env: &Env) -> Value {
    let mut cmd = env.cmd(&["backups", "list", "-w", "json"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    serde_json::from_str(&common::run_ok(&mut cmd)).unwrap()
}

/// The ids of the full backups, oldest first.
fn backup_ids(env: &Env) -> Vec<String> {
    listing(env)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// `backups fetch latest --at-revision R`: the database, or the refusal's stderr (a refusal
/// must end with exit code 1 or 2, never a panic or a signal).
fn fetch_at(env: &Env, revision: i64, name: &str) -> Result<PathBuf, String> {
    let out_path = env.path().join(format!("{name}-at-{revision}.db"));
    let mut fetch = env.fetch_cmd("latest", &out_path);
    fetch
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .arg(format!("--at-revision={revision}"));
    let out = fetch.output().expect("spawn etcdsafe");
    if out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("at revision {revision}")),
            "fetch at {revision} said: {said}"
        );
        assert!(out_path.exists(), "fetch at {revision} wrote nothing");
        return Ok(out_path);
    }
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "fetch at {revision} ended with {} (not a refusal): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out_path.exists(),
        "a refused fetch at {revision} left {}",
        out_path.display()
    );
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Restores and serves a fetched database and returns its kvs at `revision`.
fn served_kvs(version: EtcdVersion, db: &Path, dir: &Path, revision: i64) -> Value {
    let mut restored = common::serve_snapshot(version, db, dir);
    let kvs = kvs_at(&restored, revision);
    restored.stop();
    kvs
}

/// Writes until `stop`: puts, overwrites, deletes and multi-op txns, through a client that
/// knows every endpoint (so a leader change only delays it). Returns how many were
/// acknowledged.
fn spawn_writer(
    endpoints: Vec<String>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = Client::connect(endpoints, None).await.unwrap();
            let mut acked = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("{prefix}/k{}", n % 37);
                let result = match n % 10 {
                    0..=5 => client.put(key, format!("v{n}"), None).await.map(|_| ()),
                    6 | 7 => client.delete(key, None).await.map(|_| ()),
                    _ => client
                        .txn(Txn::new().and_then([
                            TxnOp::put(format!("{key}/a"), format!("a{n}"), None),
                            TxnOp::put(format!("{key}/b"), format!("b{n}"), None),
                            TxnOp::delete(format!("{prefix}/k{}", (n + 5) % 37), None),
                        ]))
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => acked += 1,
                    // A leader change: the write is retried as another one.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acked
        })
    })
}

/// One multi-op txn (two puts and a delete in one revision).
fn txn(endpoint: &str, put: &str, delete: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect([endpoint], None).await.unwrap();
        client
            .txn(Txn::new().and_then([
                TxnOp::put(format!("{put}/a"), "ta", None),
                TxnOp::put(put, "tx", None),
                TxnOp::delete(delete, None),
            ]))
            .await
            .unwrap();
    });
}

// ------------------------------------------------------------------------------------------
// 1. A broken chain
// ------------------------------------------------------------------------------------------

/// The service seals a few segments, is SIGKILLed, etcd moves on and is compacted past the
/// last sealed revision + 1; restarted, the service must record the break (`deltas/breaks/`,
/// the metric), take a full backup at once (`delta-chain-break`) and start a new chain from it.
/// Every revision from the first backup to the newest sealed one either fetches (and equals
/// the original) or, in the gap, is refused naming the break.
#[test]
fn a_compaction_past_the_resume_point_breaks_the_chain_and_a_new_chain_starts() {
    let version = EtcdVersion::V3_5;
    let env = Env::with_cluster(EtcdCluster::start(version));
    env.add_config(&format!("{YEARLY}deltas:\n  interval: 1s\n"));
    let member = env.cluster.member();
    for i in 0..3 {
        env.cluster.ctl(&["put", &format!("/before/{i}"), "v0"]);
    }
    let service = ServiceProcess::start(&env.config, &env.path().join("service-1.log"));
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !backup_ids(&env).is_empty()
    });
    let first_base = backup_ids(&env)[0].clone();
    let first_base_revision = rev(&listing(&env)["backups"][0]["snapshot"], "revision");

    // Changes in rounds, so that several segments are sealed.
    for round in 0..4 {
        for i in 0..4 {
            env.cluster
                .ctl(&["put", &format!("/chain1/{round}/{i}"), &format!("r{round}")]);
        }
        env.cluster
            .ctl(&["put", "/before/0", &format!("over{round}")]);
        env.cluster.ctl(&["del", &format!("/chain1/{round}/0")]);
        txn(
            &member.client_url(),
            &format!("/chain1/{round}/1"),
            &format!("/chain1/{round}/2"),
        );
        std::thread::sleep(Duration::from_millis(1300));
    }
    let head1 = head_revision(member);
    service.wait_for(
        "the chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            common::local_segments(&env.store())
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head1)
        },
    );
    service.sigkill();
    drop(service);
    let old_chain = common::local_segments(&env.store());
    assert!(old_chain.len() >= 3, "{} segments", old_chain.len());
    assert_linked(&old_chain);
    assert!(old_chain
        .iter()
        .all(|s| s["chainBase"] == first_base.as_str()));
    let last_sealed = rev(old_chain.last().unwrap(), "lastRevision");
    assert_eq!(last_sealed, head1);

    // While the service is down: more changes, then a compaction past last_sealed + 1.
    // (The last change is a put: a compaction at a delete's revision drops its tombstone, and
    // the snapshot's revision is that of the newest key it holds.)
    env.cluster.ctl(&["del", "/before/1"]);
    for i in 0..10 {
        env.cluster.ctl(&["put", &format!("/gap/{i}"), "g"]);
    }
    let head2 = head_revision(member);
    assert!(head2 > last_sealed + 2);
    // What the original holds at every revision, before the compaction forgets it.
    let original_before: Vec<(i64, Value)> = (first_base_revision.max(1)..=head2)
        .map(|r| (r, kvs_at(member, r)))
        .collect();
    env.cluster.ctl(&["compact", &head2.to_string()]);

    common::service::without_server_line(&env.config);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-2.log"));
    let break_path = env.store().join(segment::break_key(last_sealed));
    service.wait_for(
        "the chain break, the full backup and a new chain",
        Duration::from_secs(60),
        |_| break_path.exists() && backup_ids(&env).len() == 2,
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&break_path).unwrap()).unwrap();
    assert_eq!(record["reason"], "compacted", "{record}");
    assert_eq!(rev(&record, "afterRevision"), last_sealed, "{record}");
    assert_eq!(
        service.metric("etcdsafe_delta_chain_breaks_total{reason=\"compacted\"}"),
        Some(1.0),
        "{}",
        service.logs()
    );
    let breaks: Vec<_> = std::fs::read_dir(env.store().join("deltas/breaks"))
        .unwrap()
        .collect();
    assert_eq!(breaks.len(), 1, "one break, recorded once: {breaks:?}");
    let new_base = backup_ids(&env)[1].clone();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(env.manifest_path(&new_base)).unwrap()).unwrap();
    assert_eq!(manifest["reason"], CHAIN_BREAK_REASON, "{manifest}");
    let new_base_revision = rev(&manifest["snapshot"], "revision");
    assert_eq!(new_base_revision, head2, "{manifest}");

    // The new chain: changes after the new backup, sealed into segments that start from it.
    for round in 0..3 {
        for i in 0..3 {
            env.cluster
                .ctl(&["put", &format!("/chain2/{round}/{i}"), &format!("n{round}")]);
        }
        env.cluster.ctl(&["del", &format!("/gap/{round}")]);
        std::thread::sleep(Duration::from_millis(1300));
    }
    let head3 = head_revision(member);
    service.wait_for(
        "the new chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            common::local_segments(&env.store())
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head3)
        },
    );
    let all = common::local_segments(&env.store());
    let new_chain: Vec<Value> = all
        .iter()
        .filter(|s| rev(s, "firstRevision") > last_sealed)
        .cloned()
        .collect();
    assert_eq!(all.len(), old_chain.len() + new_chain.len());
    assert!(!new_chain.is_empty());
    assert!(
        rev(&new_chain[0], "firstRevision") > new_base_revision,
        "the new chain starts after its full backup: {:#}",
        new_chain[0]
    );
    assert!(
        new_chain[0]["previousSha256"].is_null(),
        "{:#}",
        new_chain[0]
    );
    assert!(new_chain
        .iter()
        .all(|s| s["chainBase"] == new_base.as_str()));
    assert_linked(&new_chain);
    assert_eq!(
        service.metric("etcdsafe_delta_chain_breaks_total{reason=\"compacted\"}"),
        Some(1.0),
        "the break is counted once"
    );

    // The listing: the old chain is broken where it stopped, the new one runs on.
    let listed = listing(&env);
    let old = &listed["backups"][0];
    assert_eq!(old["id"], first_base.as_str(), "{listed:#}");
    assert_eq!(rev(&old["deltas"], "toRevision"), last_sealed, "{listed:#}");
    let broken = old["deltas"]["broken"].as_str().unwrap_or_else(|| {
        panic!("the old chain is not marked broken: {listed:#}");
    });
    assert!(broken.contains("compacted"), "{broken}");
    let new = &listed["backups"][1];
    assert_eq!(new["id"], new_base.as_str(), "{listed:#}");
    assert_eq!(rev(&new["deltas"], "fromRevision"), new_base_revision + 1);
    assert_eq!(rev(&new["deltas"], "toRevision"), head3, "{listed:#}");
    assert!(new["deltas"]["broken"].is_null(), "{listed:#}");

    eprintln!(
        "old chain to {last_sealed}, gap {}..={}, new backup at {new_base_revision}, new chain to {head3}",
        last_sealed + 1,
        new_base_revision - 1
    );
    // Every revision fetches or is refused; the gap, exactly, is refused naming the break.
    let mut fetched = Vec::new();
    for r in first_base_revision.max(1)..=head3 {
        match fetch_at(&env, r, "every") {
            Ok(db) => {
                assert!(
                    r <= last_sealed || r >= new_base_revision,
                    "revision {r} in the gap ({}..{new_base_revision}) was fetched",
                    last_sealed + 1
                );
                fetched.push((r, db));
            }
            Err(stderr) => {
                assert!(
                    r > last_sealed && r < new_base_revision,
                    "revision {r} outside the gap was refused: {stderr}"
                );
                assert!(stderr.contains("gap"), "{stderr}");
                assert!(stderr.contains("compacted"), "{stderr}");
                assert!(stderr.contains(&last_sealed.to_string()), "{stderr}");
            }
        }
    }
    assert_eq!(
        fetched.len() as i64,
        (last_sealed - first_base_revision.max(1) + 1) + (head3 - new_base_revision + 1),
        "every revision outside the gap fetches"
    );
    let err = fetch_at(&env, head3 + 1, "after").expect_err("nothing was sealed after head3");
    assert!(err.contains("after the newest sealed revision"), "{err}");

    // What is fetched equals the original: before the gap (as the original held it before the
    // compaction), at the new backup, and in the new chain (the original still serves those).
    let db_at = |r: i64| &fetched.iter().find(|(f, _)| *f == r).unwrap().1;
    let middle_old = (first_base_revision.max(1) + last_sealed) / 2;
    for r in [middle_old, last_sealed] {
        let expected = &original_before.iter().find(|(o, _)| *o == r).unwrap().1;
        assert_eq!(
            &served_kvs(version, db_at(r), env.path(), r),
            expected,
            "the fetch at {r} (before the gap) differs from the original"
        );
    }
    for r in [new_base_revision, (new_base_revision + head3) / 2, head3] {
        assert_eq!(
            served_kvs(version, db_at(r), env.path(), r),
            kvs_at(member, r),
            "the fetch at {r} (new chain) differs from the original"
        );
    }
    drop(service);
}

// ------------------------------------------------------------------------------------------
// 2. A leader change during capture
// ------------------------------------------------------------------------------------------

/// The `HOSTNAME` (recorded as `capturedBy`) of the instance next to member `i`.
fn instance(i: usize) -> String {
    format!("etcdsafe-next-to-m{i}")
}

/// A service config for member `i` only, with its own spool, coordinated by the etcd leader.
fn member_config(env: &Env, i: usize) -> PathBuf {
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            &env.cluster.member().client_url(),
            &env.cluster.members[i].client_url(),
        )
        .replace(
            &format!("spool-dir: {}", env.spool().display()),
            &format!(
                "spool-dir: {}",
                env.path().join(format!("spool{i}")).display()
            ),
        );
    assert!(text.contains(&env.cluster.members[i].client_url()));
    let path = env.path().join(format!("service{i}.yaml"));
    std::fs::write(
        &path,
        format!("{text}{YEARLY}coordination: etcd-leader\ndeltas:\n  interval: 1s\n"),
    )
    .unwrap();
    path
}

/// Three members, one `etcdsafe run` per member (each sees only its own member). While a
/// writer runs, exactly the instance next to the raft leader captures; after `move-leader`,
/// the new leader's instance takes over. The chain has no gap and no duplicate, and a fetch
/// at the newest sealed revision (and at the hand-over) equals the cluster's data there.
#[test]
fn a_leader_change_moves_the_capture_with_no_gap_and_no_duplicate() {
    let version = EtcdVersion::V3_5;
    let env = Env::with_cluster(EtcdCluster::start_with(version, 3, false));
    env.cluster.ctl(&["put", "/start", "v"]);
    let services: Vec<ServiceProcess> = (0..3)
        .map(|i| {
            let config = member_config(&env, i);
            // Children inherit the environment at spawn: each instance gets its own name
            // (nextest runs each test in a process of its own).
            std::env::set_var("HOSTNAME", instance(i));
            ServiceProcess::start(&config, &env.path().join(format!("service{i}.log")))
        })
        .collect();
    std::env::remove_var("HOSTNAME");
    let leader_of = || {
        (0..3)
            .find(|&i| env.cluster.members[i].is_leader(None))
            .expect("a leader")
    };
    let first = leader_of();
    services[first].wait_for("the first full backup", Duration::from_secs(60), |_| {
        !backup_ids(&env).is_empty()
    });
    let base = backup_ids(&env)[0].clone();
    assert_eq!(
        backup_ids(&env).len(),
        1,
        "one full backup from three instances"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = env.cluster.members.iter().map(|m| m.client_url()).collect();
    let writer = spawn_writer(endpoints, "/w", stop.clone());
    let store = env.store();
    services[first].wait_for("three segments", Duration::from_secs(60), |_| {
        common::local_segments(&store).len() >= 3
    });
    let before = common::local_segments(&store);
    assert!(
        before
            .iter()
            .all(|s| s["capturedBy"] == instance(first).as_str()),
        "only the leader's instance captures: {:?}",
        before.iter().map(|s| &s["capturedBy"]).collect::<Vec<_>>()
    );
    for (i, service) in services.iter().enumerate() {
        assert_eq!(
            service.metric("etcdsafe_is_snapshot_leader"),
            Some(if i == first { 1.0 } else { 0.0 }),
            "instance {i}"
        );
    }

    // Move the leadership while the writer goes on.
    let next = (first + 1) % 3;
    let id = env.cluster.members[next].id_hex(None);
    let out = env.cluster.members[first].etcdctl(None, &["move-leader", &id]);
    assert!(
        out.status.success(),
        "move-leader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leader_of(), next);
    services[next].wait_for(
        "three segments from the new leader's instance",
        Duration::from_secs(60),
        |_| {
            common::local_segments(&store)
                .iter()
                .filter(|s| s["capturedBy"] == instance(next).as_str())
                .count()
                >= 3
        },
    );
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().expect("the writer does not panic");
    assert!(acked > 100, "only {acked} writes were acknowledged");
    let head = head_revision(&env.cluster.members[next]);
    services[next].wait_for(
        "the chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            common::local_segments(&store)
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head)
        },
    );

    let sealed = common::local_segments(&store);
    let listed = listing(&env);
    let base_revision = rev(&listed["backups"][0]["snapshot"], "revision");
    assert_eq!(rev(&sealed[0], "firstRevision"), base_revision + 1);
    assert!(sealed[0]["previousSha256"].is_null());
    assert!(sealed.iter().all(|s| s["chainBase"] == base.as_str()));
    assert_linked(&sealed);
    // One hand-over: the old leader's instance, then only the new one's; never the third.
    let by: Vec<&str> = sealed
        .iter()
        .map(|s| s["capturedBy"].as_str().unwrap())
        .collect();
    let handover = by
        .iter()
        .position(|b| *b == instance(next))
        .expect("the new leader's instance captured");
    assert!(
        by[..handover].iter().all(|b| *b == instance(first))
            && by[handover..].iter().all(|b| *b == instance(next)),
        "segments were captured by {by:?}"
    );
    assert!(handover >= 3, "{by:?}");
    eprintln!("segments captured by (leader m{first}, then m{next}): {by:?}");
    assert!(
        services[first]
            .logs()
            .contains("no longer the snapshot leader"),
        "the old leader's instance did not notice: {}",
        services[first].logs()
    );
    assert_eq!(rev(&listed["backups"][0]["deltas"], "toRevision"), head);

    // Fetches at the hand-over and at the newest sealed revision equal the cluster's data.
    let last_old = rev(&sealed[handover - 1], "lastRevision");
    let member = &env.cluster.members[next];
    for r in [last_old, last_old + 1, head] {
        let db = fetch_at(&env, r, "cluster").unwrap_or_else(|e| panic!("fetch at {r}: {e}"));
        assert_eq!(
            served_kvs(version, &db, env.path(), r),
            kvs_at(member, r),
            "the fetch at {r} differs from the cluster"
        );
    }
    drop(services);
}

// ------------------------------------------------------------------------------------------
// 3. Capture into S3
// ------------------------------------------------------------------------------------------

/// Every segment manifest under `prefix` + `deltas/` in the bucket, by first revision.
fn bucket_segments(
    rt: &tokio::runtime::Runtime,
    server: &S3Server,
    bucket: &str,
    prefix: &str,
) -> (Vec<Value>, Vec<String>) {
    rt.block_on(async {
        let client = server.client().await;
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(format!("{prefix}{}", segment::PREFIX))
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let mut manifests = Vec::new();
        for key in keys.iter().filter(|k| {
            k.ends_with(segment::MANIFEST_SUFFIX) && !k.contains(segment::BREAKS_PREFIX)
        }) {
            let body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            manifests.push(serde_json::from_slice::<Value>(&body).unwrap());
        }
        manifests.sort_by_key(|s| s["firstRevision"].as_i64().unwrap());
        (manifests, keys)
    })
}

/// The service captures into a fresh bucket of a real S3 server; the segments are linked and
/// their objects stored under the prefix; fetches at three revisions equal the original.
fn capture_into_s3(kind: S3Kind) {
    let version = EtcdVersion::V3_5;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = S3Server::start(kind);
    let bucket = rt.block_on(server.fresh_bucket(false));
    let credentials = tempfile::tempdir().unwrap();
    let prefix = "clusters/deltas/";
    let env = Env::with_storage(
        EtcdCluster::start(version),
        &server.storage_yaml(&bucket, prefix, credentials.path()),
    );
    env.add_config(&format!("{YEARLY}deltas:\n  interval: 1s\n"));
    env.cluster.ctl(&["put", "/start", "v"]);
    let service = ServiceProcess::start(&env.config, &env.path().join("service.log"));
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !backup_ids(&env).is_empty()
    });
    let base = backup_ids(&env)[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(vec![env.cluster.member().client_url()], "/s3", stop.clone());
    service.wait_for(
        "four segments in the bucket",
        Duration::from_secs(60),
        |_| bucket_segments(&rt, &server, &bucket, prefix).0.len() >= 4,
    );
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().expect("the writer does not panic");
    assert!(acked > 50, "only {acked} writes were acknowledged");
    let member = env.cluster.member();
    let head = head_revision(member);
    service.wait_for(
        "the chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            bucket_segments(&rt, &server, &bucket, prefix)
                .0
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head)
        },
    );
    let (sealed, keys) = bucket_segments(&rt, &server, &bucket, prefix);
    assert_linked(&sealed);
    assert!(sealed[0]["previousSha256"].is_null());
    assert!(sealed.iter().all(|s| s["chainBase"] == base.as_str()));
    for s in &sealed {
        let key = format!("{prefix}{}", s["object"]["key"].as_str().unwrap());
        assert!(keys.contains(&key), "{key} is not in the bucket: {keys:?}");
    }
    let listed = listing(&env);
    let base_revision = rev(&listed["backups"][0]["snapshot"], "revision");
    assert_eq!(rev(&sealed[0], "firstRevision"), base_revision + 1);
    assert_eq!(rev(&listed["backups"][0]["deltas"], "toRevision"), head);
    assert_eq!(
        listed["backups"][0]["deltas"]["segments"].as_u64(),
        Some(sealed.len() as u64)
    );

    let middle = rev(&sealed[sealed.len() / 2], "lastRevision") - 1;
    for r in [base_revision + 1, middle, head] {
        let db = fetch_at(&env, r, "s3").unwrap_or_else(|e| panic!("fetch at {r}: {e}"));
        assert_eq!(
            served_kvs(version, &db, env.path(), r),
            kvs_at(member, r),
            "the fetch at {r} from {kind:?} differs from the original"
        );
    }
    drop(service);
}

#[test]
fn capture_and_point_in_time_fetch_from_garage() {
    capture_into_s3(S3Kind::Garage);
}

#[test]
fn capture_and_point_in_time_fetch_from_moto() {
    capture_into_s3(S3Kind::Moto);
}

// ------------------------------------------------------------------------------------------
// 4. A full backup taken while capture is down
// ------------------------------------------------------------------------------------------

/// The service seals a few segments and is SIGKILLed; etcd moves on and a full backup is
/// taken (`snapshot save`, as a pre-upgrade backup would be) before more changes. Restarted,
/// the capture must go on from its last sealed revision (etcd still has it): no break, and
/// every revision from the first backup to the newest sealed one fetches and equals the
/// original, including those between the last seal and the new backup.
#[test]
fn a_full_backup_taken_while_capture_is_down_does_not_cut_the_chain() {
    let version = EtcdVersion::V3_5;
    let env = Env::with_cluster(EtcdCluster::start(version));
    env.add_config(&format!("{YEARLY}deltas:\n  interval: 1s\n"));
    let member = env.cluster.member();
    env.cluster.ctl(&["put", "/start", "v"]);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-1.log"));
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !backup_ids(&env).is_empty()
    });
    let first_base = backup_ids(&env)[0].clone();
    let first_base_revision = rev(&listing(&env)["backups"][0]["snapshot"], "revision");
    for round in 0..3 {
        for i in 0..3 {
            env.cluster
                .ctl(&["put", &format!("/a/{round}/{i}"), &format!("r{round}")]);
        }
        env.cluster.ctl(&["del", &format!("/a/{round}/1")]);
        std::thread::sleep(Duration::from_millis(1300));
    }
    let head1 = head_revision(member);
    service.wait_for(
        "the chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            common::local_segments(&env.store())
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head1)
        },
    );
    service.sigkill();
    drop(service);
    let last_sealed = head1;

    for i in 0..5 {
        env.cluster.ctl(&["put", &format!("/down/{i}"), "d"]);
    }
    let second_base = env.save();
    let second_base_revision = rev(&listing(&env)["backups"][1]["snapshot"], "revision");
    assert!(second_base_revision > last_sealed + 1);
    for i in 0..5 {
        env.cluster.ctl(&["put", &format!("/after/{i}"), "x"]);
    }

    common::service::without_server_line(&env.config);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-2.log"));
    for i in 0..3 {
        env.cluster.ctl(&["put", &format!("/resumed/{i}"), "y"]);
    }
    let head2 = head_revision(member);
    service.wait_for(
        "the chain to reach the last write",
        Duration::from_secs(30),
        |_| {
            common::local_segments(&env.store())
                .last()
                .map(|s| rev(s, "lastRevision"))
                == Some(head2)
        },
    );
    assert!(
        !env.store().join("deltas/breaks").exists(),
        "a break was recorded: {}",
        service.logs()
    );
    assert_eq!(
        backup_ids(&env),
        [first_base.clone(), second_base.clone()],
        "no other full backup"
    );
    let sealed = common::local_segments(&env.store());
    assert_linked(&sealed);
    assert_eq!(rev(&sealed[0], "firstRevision"), first_base_revision + 1);

    let listed = listing(&env);
    assert_eq!(
        rev(&listed["backups"][0]["deltas"], "toRevision"),
        second_base_revision,
        "{listed:#}"
    );
    assert_eq!(
        rev(&listed["backups"][1]["deltas"], "toRevision"),
        head2,
        "{listed:#}"
    );
    for r in first_base_revision.max(1)..=head2 {
        let db = fetch_at(&env, r, "continued").unwrap_or_else(|e| {
            panic!("revision {r} (last sealed before the kill {last_sealed}, new backup {second_base_revision}) is refused: {e}")
        });
        if r == last_sealed + 1 || r == second_base_revision - 1 || r == head2 {
            assert_eq!(
                served_kvs(version, &db, env.path(), r),
                kvs_at(member, r),
                "the fetch at {r} differs from the original"
            );
        }
    }
    drop(service);
}
