//! Continuous backup end to end, against real etcd 3.5.1 and 3.4.23 and the local store: the
//! service captures delta segments while a writer changes the cluster (puts, overwrites,
//! deletes, multi-op txns, lease-attached keys, a compaction); then etcd and etcdsafe are
//! killed with SIGKILL, the original etcd is restarted on its data dir, and fetches at random
//! revisions must equal the original at those revisions key for key (create/mod revisions and
//! versions included), restore with the stock tool, be served by real etcd, and hash the same
//! (`endpoint hashkv --rev R`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::ServiceProcess;
use common::{Env, EtcdCluster, EtcdVersion};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// One acknowledged write: its revision and when the client got the answer.
#[derive(Debug, Clone, Copy)]
struct Ack {
    revision: i64,
    at: Instant,
}

/// Writes for `duration`: puts, overwrites, deletes, txns, leases, and one compaction half way.
/// Returns every acknowledged write and the compaction revision.
async fn write_load(endpoint: &str, duration: Duration, seed: u64) -> (Vec<Ack>, i64) {
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acks = Vec::new();
    let start = Instant::now();
    let mut compacted = 0;
    let mut leases: Vec<i64> = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < duration {
        n += 1;
        let key = format!("/registry/k{}", rng.gen_range(0..200));
        let value = format!("v{n}-{}", "x".repeat(rng.gen_range(0..300)));
        let revision = match rng.gen_range(0..100) {
            0..=49 => client
                .put(key, value, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision(),
            50..=64 => {
                let resp = client.delete(key, None).await.unwrap();
                if resp.deleted() == 0 {
                    continue;
                }
                resp.header().unwrap().revision()
            }
            65..=79 => {
                let txn = Txn::new().and_then([
                    TxnOp::put(format!("{key}/a"), value.clone(), None),
                    TxnOp::put(format!("{key}/b"), format!("{n}"), None),
                    TxnOp::delete(format!("{key}/c"), None),
                    TxnOp::put(format!("{key}/c2"), "c", None),
                ]);
                client.txn(txn).await.unwrap().header().unwrap().revision()
            }
            80..=89 => {
                if leases.len() < 5 || rng.gen_bool(0.3) {
                    let lease = client.lease_grant(600, None).await.unwrap().id();
                    leases.push(lease);
                }
                let lease = leases[rng.gen_range(0..leases.len())];
                let options = PutOptions::new().with_lease(lease);
                client
                    .put(
                        format!("/leased/{}", rng.gen_range(0..50)),
                        value,
                        Some(options),
                    )
                    .await
                    .unwrap()
                    .header()
                    .unwrap()
                    .revision()
            }
            _ => {
                if leases.len() > 3 {
                    let lease = leases.remove(rng.gen_range(0..leases.len()));
                    client.lease_revoke(lease).await.unwrap();
                }
                continue;
            }
        };
        acks.push(Ack {
            revision,
            at: Instant::now(),
        });
        if compacted == 0 && start.elapsed() > duration / 2 {
            compacted = revision - 40;
            client.compact(compacted, None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
    }
    (acks, compacted)
}

fn json(out: std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The kvs of `get "" --prefix --rev R -w json`, as etcdctl prints them.
fn kvs_at(member: &common::EtcdMember, revision: i64) -> Value {
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
        &format!("get --rev {revision}"),
    );
    v["kvs"].clone()
}

fn hashkv_at(member: &common::EtcdMember, revision: i64) -> u64 {
    let v = json(
        member.etcdctl(
            None,
            &[
                "endpoint",
                "hashkv",
                &format!("--rev={revision}"),
                "-w",
                "json",
            ],
        ),
        &format!("hashkv --rev {revision}"),
    );
    v[0]["HashKV"]["hash"].as_u64().expect("hashkv hash")
}

fn capture_and_fetch_at_random_revisions(version: EtcdVersion) {
    let mut env = Env::with_cluster(EtcdCluster::start(version));
    // No scheduled backup during the run (the default schedule fires at 00, 06, 12 and 18 h,
    // and a second full backup would end the first one's chain view at its revision).
    env.add_config("deltas:\n  interval: 2s\nschedule: \"0 0 1 1 *\"\n");
    let log = env.path().join("service.log");
    let service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    let base = env.listed_ids()[0].clone();
    let endpoint = env.cluster.member().client_url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (acks, compacted) = runtime.block_on(write_load(&endpoint, Duration::from_secs(60), 7));
    let last_ack = *acks.last().expect("writes were acknowledged");
    // The service says what it sealed.
    let sealed_metric = service
        .metric("etcdsafe_delta_last_sealed_revision")
        .expect("etcdsafe_delta_last_sealed_revision is exported");
    assert!(sealed_metric > 0.0, "{sealed_metric}");
    let segments_ok = service
        .metric("etcdsafe_delta_segments_total{result=\"success\"}")
        .expect("etcdsafe_delta_segments_total is exported");
    assert!(segments_ok >= 10.0, "{segments_ok} segments sealed");
    assert_eq!(service.metric("etcdsafe_delta_interval_seconds"), Some(2.0));
    // Kill both at once, as a node loss would.
    // SAFETY: a signal to our own child process (no `kill` binary in a minimal root).
    let rc = unsafe { libc::kill(service.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {}", service.pid());
    env.cluster.members[0].stop();

    let sealed = common::local_segments(&env.store());
    assert!(
        sealed.len() >= 10,
        "only {} segments sealed in 60 s at interval 2s",
        sealed.len()
    );
    let newest = sealed.last().unwrap()["lastRevision"].as_i64().unwrap();
    // RPO: the newest sealed revision was written at most interval + 2 s before the last
    // acknowledged write.
    let newest_at = acks
        .iter()
        .find(|a| a.revision >= newest)
        .map_or(last_ack.at, |a| a.at);
    assert!(
        last_ack.at.duration_since(newest_at) <= Duration::from_secs(4),
        "the newest sealed revision {newest} was written {:?} before the last acknowledged write {} ",
        last_ack.at.duration_since(newest_at),
        last_ack.revision
    );
    // The chain is linked and gap-free.
    for pair in sealed.windows(2) {
        assert_eq!(
            pair[1]["firstRevision"].as_i64().unwrap(),
            pair[0]["lastRevision"].as_i64().unwrap() + 1
        );
        assert_eq!(pair[1]["previousSha256"], pair[0]["object"]["sha256"]);
    }
    assert!(
        sealed
            .iter()
            .any(|s| s["compactRevision"].as_i64() == Some(compacted)),
        "no seal recorded the compaction at {compacted}"
    );

    env.cluster.members[0].restart(None);
    let original = &env.cluster.members[0];
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    assert_eq!(listed["backups"][0]["id"].as_str(), Some(base.as_str()));
    // The revision the chain starts after: the newest key's (what etcdutl reports), or etcd's
    // revision in the id when higher (a fresh etcd is at revision 1 with no key).
    let base_revision = listed["backups"][0]["snapshot"]["revision"]
        .as_i64()
        .unwrap()
        .max(etcdsafe::catalog::id_revision(&base).unwrap());
    let low = base_revision.max(compacted);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut revisions: Vec<i64> = (0..19).map(|_| rng.gen_range(low..=newest)).collect();
    revisions.push(newest);
    for (i, revision) in revisions.iter().enumerate() {
        let out = env.path().join(format!("at-{revision}-{i}.db"));
        let mut fetch = env.fetch_cmd("latest", &out);
        fetch.arg(format!("--at-revision={revision}"));
        common::run_ok(&mut fetch);
        if version == EtcdVersion::V3_5 {
            let status = json(
                Command::new(version.bin("etcdutl"))
                    .args(["snapshot", "status", "-w", "json"])
                    .arg(&out)
                    .output()
                    .unwrap(),
                "etcdutl snapshot status",
            );
            assert_eq!(status["revision"].as_i64(), Some(*revision), "{status}");
        }
        let mut restored = common::serve_snapshot(version, &out, env.path());
        assert_eq!(
            kvs_at(&restored, *revision),
            kvs_at(original, *revision),
            "get --rev {revision} differs from the original"
        );
        assert_eq!(
            hashkv_at(&restored, *revision),
            hashkv_at(original, *revision),
            "hashkv --rev {revision} differs from the original"
        );
        restored.stop();
    }
    // `--at-latest` is the newest sealed revision.
    let out = env.path().join("latest.db");
    let mut fetch = env.fetch_cmd("latest", &out);
    fetch.arg("--at-latest");
    let said = common::run_ok(&mut fetch);
    assert!(said.contains(&format!("at revision {newest}")), "{said}");
    // The listing shows the chain.
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    let deltas = &listed["backups"][0]["deltas"];
    assert_eq!(
        deltas["fromRevision"].as_i64(),
        Some(base_revision + 1),
        "{listed}"
    );
    assert_eq!(deltas["toRevision"].as_i64(), Some(newest), "{listed}");
    assert_eq!(
        deltas["segments"].as_u64(),
        Some(sealed.len() as u64),
        "{listed}"
    );
    let points = env.run_ok(&["backups", "list", "--points"]);
    assert!(
        points.contains(&format!("{base_revision}..={newest}")),
        "{points}"
    );
    drop(service);
}

#[test]
fn capture_and_point_in_time_fetch_on_3_5() {
    capture_and_fetch_at_random_revisions(EtcdVersion::V3_5);
}

#[test]
fn capture_and_point_in_time_fetch_on_3_4() {
    capture_and_fetch_at_random_revisions(EtcdVersion::V3_4);
}

/// A segment object corrupted, then missing: a fetch after it is refused naming it; a fetch
/// before it works.
#[test]
fn a_damaged_or_missing_segment_is_named_and_earlier_points_still_fetch() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.add_config("deltas:\n  interval: 1s\n");
    let log = env.path().join("service.log");
    let mut service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    for round in 0..4 {
        for i in 0..5 {
            env.cluster.ctl(&["put", &format!("/k/{round}/{i}"), "v"]);
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    service.wait_for("three segments", Duration::from_secs(30), |_| {
        common::local_segments(&env.store()).len() >= 3
    });
    service.terminate();
    let sealed = common::local_segments(&env.store());
    // `--at-time` picks the last revision sealed at or before the time.
    let at_time = env.path().join("at-time.db");
    let mut fetch = env.fetch_cmd("latest", &at_time);
    fetch.arg(format!(
        "--at-time={}",
        sealed[1]["sealedAt"].as_str().unwrap()
    ));
    let said = common::run_ok(&mut fetch);
    let expected = sealed[1]["lastRevision"].as_i64().unwrap();
    assert!(said.contains(&format!("at revision {expected}")), "{said}");
    let second = &sealed[1];
    let object: PathBuf = env.store().join(second["object"]["key"].as_str().unwrap());
    let before = sealed[0]["lastRevision"].as_i64().unwrap();
    let after = sealed.last().unwrap()["lastRevision"].as_i64().unwrap();

    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();
    let out = env.path().join("after.db");
    let mut fetch = env.fetch_cmd("latest", &out);
    fetch.arg(format!("--at-revision={after}"));
    let err = common::run_err(&mut fetch);
    assert!(
        err.contains(second["object"]["key"].as_str().unwrap()),
        "{err}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    std::fs::remove_file(&object).unwrap();
    let err = common::run_err(&mut {
        let mut c = env.fetch_cmd("latest", &out);
        c.arg(format!("--at-revision={after}"));
        c
    });
    assert!(err.contains("is missing"), "{err}");
    assert!(
        err.contains(second["object"]["key"].as_str().unwrap()),
        "{err}"
    );

    let early = env.path().join("before.db");
    let mut fetch = env.fetch_cmd("latest", &early);
    fetch.arg(format!("--at-revision={before}"));
    let said = common::run_ok(&mut fetch);
    assert!(said.contains(&format!("at revision {before}")), "{said}");
}

/// `etcdsafe restore latest --at-revision R` on a kubeadm node (the kubelet harness running real
/// etcd as a static pod): the control plane comes back serving exactly the keys the cluster had
/// at R, with their original revisions, and later writes land after the bump.
fn guided_restore_to_a_point(version: EtcdVersion, engine: &str) {
    let mut opts = common::node::NodeOpts::new(version);
    opts.extra_config = "deltas:\n  interval: 1s\n".to_string();
    let node = common::node::Node::build(opts);
    let log = node.root.join("service.log");
    let service = ServiceProcess::start(&node.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        common::run_ok(&mut node.etcdsafe(&["backups", "list", "-w", "simple"]))
            .lines()
            .count()
            > 0
    });
    for i in 0..20 {
        node.put(&format!("/registry/pods/p{i}"), &format!("v{i}"));
    }
    node.ctl_ok(&["del", "/registry/pods/p3"]);
    let at = node.ctl_ok(&["get", "/registry/pods/p0", "-w", "json"]);
    let revision = serde_json::from_str::<Value>(&at).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let expected = node.ctl_ok(&["get", "", "--prefix", "-w", "json"]);
    // The bad change the restore must undo.
    node.ctl_ok(&["del", "/registry/pods/", "--prefix"]);
    node.put("/registry/after", "later");
    service.wait_for("the delete sealed", Duration::from_secs(30), |s| {
        s.metric("etcdsafe_delta_last_sealed_revision")
            .is_some_and(|r| r as i64 >= revision + 2)
    });
    drop(service);

    let (out, err) = common::run_ok_both(&mut node.restore(&[
        "latest",
        &format!("--at-revision={revision}"),
        "--identity",
        node.identity(),
        "--yes",
        "--engine",
        engine,
    ]));
    assert!(err.contains("kube-apiserver is ready"), "{out}\n{err}");
    let kvs = |text: &str| -> Vec<Value> {
        serde_json::from_str::<Value>(text).unwrap()["kvs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let served = node.ctl_ok(&["get", "", "--prefix", "-w", "json"]);
    assert_eq!(
        kvs(&served),
        kvs(&expected),
        "the restored member serves the keys at revision {revision}, with their revisions"
    );
    assert!(!node.all().iter().any(|(k, _)| k == "/registry/after"));
}

#[test]
fn guided_restore_to_a_point_in_time_on_3_5_native() {
    guided_restore_to_a_point(EtcdVersion::V3_5, "native");
}

#[test]
fn guided_restore_to_a_point_in_time_on_3_4_etcdutl() {
    guided_restore_to_a_point(EtcdVersion::V3_4, "etcdutl");
}

/// Retention treats a full backup and its chain as one unit: `keep-last 1` deletes the older
/// backup with the segments only it can use, keeps a segment the kept backup's chain needs,
/// and points of the kept chain still fetch while points only the deleted one reached are
/// refused.
#[test]
fn retention_deletes_a_chain_with_its_backup_and_never_before() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.add_config("deltas:\n  interval: 1s\nretention:\n  keep-last: 1\n");
    let log = env.path().join("service.log");
    let service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    let store = env.store();
    let sealed_past = |revision: i64| {
        let store = store.clone();
        move |_: &ServiceProcess| {
            common::local_segments(&store)
                .last()
                .is_some_and(|s| s["lastRevision"].as_i64().unwrap() >= revision)
        }
    };
    let revision_now = || {
        let v: Value = serde_json::from_str(&env.cluster.ctl(&["get", "x", "-w", "json"])).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    };
    for i in 0..5 {
        env.cluster.ctl(&["put", &format!("/old/{i}"), "v"]);
    }
    let in_first_chain = revision_now();
    for i in 5..10 {
        env.cluster.ctl(&["put", &format!("/old/{i}"), "v"]);
    }
    service.wait_for(
        "the first chain",
        Duration::from_secs(30),
        sealed_past(in_first_chain),
    );
    let before = common::local_segments(&env.store());
    // A second full backup, taken while capture goes on: `snapshot save` applies retention
    // after it, which forgets the first backup (keep-last 1) and its chain with it.
    let second = env.save();
    for i in 0..10 {
        env.cluster.ctl(&["put", &format!("/new/{i}"), "v"]);
    }
    let in_second_chain = revision_now();
    service.wait_for(
        "the second chain",
        Duration::from_secs(30),
        sealed_past(in_second_chain),
    );
    drop(service);
    assert_eq!(env.listed_ids(), vec![second.clone()]);
    let after = common::local_segments(&env.store());
    let out = env.run_ok(&["backups", "prune", "--dry-run"]);
    assert!(out.contains(&second), "{out}");
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    let second_revision = listed["backups"][0]["snapshot"]["revision"]
        .as_i64()
        .unwrap();
    // The first chain's segments are gone; every remaining one is of use to the kept backup.
    let first_only: Vec<&Value> = before
        .iter()
        .filter(|s| s["lastRevision"].as_i64().unwrap() <= second_revision)
        .collect();
    assert!(!first_only.is_empty(), "{before:?}");
    for s in &first_only {
        assert!(!after.contains(s), "segment {s} outlived its backup");
    }
    for s in &after {
        assert!(s["lastRevision"].as_i64().unwrap() > second_revision, "{s}");
    }
    assert_eq!(
        listed["backups"][0]["deltas"]["fromRevision"].as_i64(),
        Some(second_revision + 1)
    );
    let out = env.path().join("second.db");
    let mut fetch = env.fetch_cmd("latest", &out);
    fetch.arg(format!("--at-revision={in_second_chain}"));
    common::run_ok(&mut fetch);
    let gone = env.path().join("first.db");
    let mut fetch = env.fetch_cmd("latest", &gone);
    fetch.arg(format!("--at-revision={in_first_chain}"));
    let err = common::run_err(&mut fetch);
    assert!(err.contains("no full backup at or below"), "{err}");
}

/// With `signing` on, every segment manifest is signed (stock `ssh-keygen -Y verify` accepts
/// it), and with `verification` a fetch at a point refuses an edited or unsigned segment,
/// naming it.
#[test]
fn signed_segments_are_verified_before_they_are_applied() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    let key = env.path().join("signing-key");
    let out = Command::new(common::system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "etcdsafe", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let principal = "etcdsafe@test";
    let signers = env.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!(
            "{principal} namespaces=\"{}\" {public}",
            etcdsafe::sshsig::BACKUP_NAMESPACE
        ),
    )
    .unwrap();
    env.add_config(&format!(
        "deltas:\n  interval: 1s\nsigning:\n  key-file: {}\n  principal: {principal}\nverification:\n  allowed-signers: {}\n",
        key.display(),
        signers.display()
    ));
    let log = env.path().join("service.log");
    let mut service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    for round in 0..3 {
        for i in 0..3 {
            env.cluster.ctl(&["put", &format!("/s/{round}/{i}"), "v"]);
        }
        std::thread::sleep(Duration::from_millis(1200));
    }
    let store = env.store();
    service.wait_for("two segments", Duration::from_secs(30), |_| {
        common::local_segments(&store).len() >= 2
    });
    service.terminate();
    let sealed = common::local_segments(&store);
    let newest = sealed.last().unwrap()["lastRevision"].as_i64().unwrap();
    let first = sealed[0]["firstRevision"].as_i64().unwrap();
    let manifest = store.join(format!("deltas/{first:020}.json"));
    // Named after the segment's object, so racing sealers never overwrite each other's.
    let object = sealed[0]["object"]["key"].as_str().unwrap();
    let signature = store.join(format!(
        "{}.json.sig",
        object.strip_suffix(".seg.zst.age").unwrap()
    ));
    assert!(signature.exists(), "{}", signature.display());
    // Stock OpenSSH verifies the segment manifest's signature.
    let verify = Command::new(common::system_tool("ssh-keygen"))
        .args(["-Y", "verify", "-f"])
        .arg(&signers)
        .args([
            "-I",
            principal,
            "-n",
            etcdsafe::sshsig::BACKUP_NAMESPACE,
            "-s",
        ])
        .arg(&signature)
        .stdin(std::fs::File::open(&manifest).unwrap())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "ssh-keygen -Y verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let fetch_at = |name: &str| {
        let mut cmd = env.fetch_cmd("latest", &env.path().join(name));
        cmd.arg(format!("--at-revision={newest}"));
        cmd
    };
    common::run_ok(&mut fetch_at("signed.db"));

    // An edited segment manifest (a forged lease table, say) no longer matches its signature.
    let original = std::fs::read(&manifest).unwrap();
    let mut edited: Value = serde_json::from_slice(&original).unwrap();
    edited["capturedBy"] = Value::from("someone-else");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let err = common::run_err(&mut fetch_at("edited.db"));
    assert!(err.contains("bad signature"), "{err}");
    assert!(
        err.contains(sealed[0]["object"]["key"].as_str().unwrap()),
        "{err}"
    );
    std::fs::write(&manifest, &original).unwrap();

    // An unsigned one is refused too.
    std::fs::remove_file(&signature).unwrap();
    let err = common::run_err(&mut fetch_at("unsigned.db"));
    assert!(err.contains("not signed"), "{err}");
    assert!(!env.path().join("edited.db").exists());
    assert!(!env.path().join("unsigned.db").exists());
}

/// A full backup taken right after a compaction at a delete: the delete's tombstone is gone, so
/// its newest key is older than the database (etcdutl reports revision 3 for a database at 4).
/// The chain starts after 4, a point at 4 is the database as it was, and 3, which no backup
/// holds, is refused rather than served wrong.
#[test]
fn a_backup_whose_newest_change_was_compacted_away_starts_its_chain_after_it() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.cluster.ctl(&["put", "/a", "1"]);
    env.cluster.ctl(&["put", "/b", "2"]);
    env.cluster.ctl(&["del", "/a"]);
    env.cluster.ctl(&["compact", "4"]);
    env.add_config("deltas:\n  interval: 1s\n");
    let log = env.path().join("service.log");
    let mut service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    env.cluster.ctl(&["put", "/c", "3"]);
    let store = env.store();
    service.wait_for("revision 5 sealed", Duration::from_secs(30), |_| {
        common::local_segments(&store)
            .last()
            .is_some_and(|s| s["lastRevision"].as_i64() == Some(5))
    });
    service.terminate();
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    assert_eq!(
        listed["backups"][0]["snapshot"]["revision"].as_i64(),
        Some(3)
    );
    assert_eq!(
        listed["backups"][0]["deltas"]["fromRevision"].as_i64(),
        Some(5)
    );
    for (revision, keys) in [(4, vec!["/b"]), (5, vec!["/b", "/c"])] {
        let out = env.path().join(format!("at-{revision}.db"));
        let mut fetch = env.fetch_cmd("latest", &out);
        fetch.arg(format!("--at-revision={revision}"));
        common::run_ok(&mut fetch);
        let mut served = common::serve_snapshot(EtcdVersion::V3_5, &out, env.path());
        let got: Vec<String> = kvs_at(&served, revision)
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(kv["key"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(key).unwrap()
            })
            .collect();
        assert_eq!(got, keys, "at revision {revision}");
        served.stop();
    }
    let out = env.path().join("at-3.db");
    let mut fetch = env.fetch_cmd("latest", &out);
    fetch.arg("--at-revision=3");
    let err = common::run_err(&mut fetch);
    assert!(
        err.contains("no full backup at or below revision 3"),
        "{err}"
    );
}

/// etcd's newest revision.
fn head(env: &Env) -> i64 {
    let v: Value = serde_json::from_str(&env.cluster.ctl(&["get", "/", "-w", "json"])).unwrap();
    v["header"]["revision"].as_i64().expect("header revision")
}

/// The keys a fetch at `revision` holds (served by real etcd after the stock restore).
fn keys_at(env: &Env, version: EtcdVersion, revision: i64) -> Vec<String> {
    use base64::Engine;
    let out = env.path().join(format!("keys-at-{revision}.db"));
    let _ = std::fs::remove_file(&out);
    let mut fetch = env.fetch_cmd("latest", &out);
    fetch.arg(format!("--at-revision={revision}"));
    common::run_ok(&mut fetch);
    let dir = env.path().join(format!("serve-{revision}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut served = common::serve_snapshot(version, &out, &dir);
    let keys = kvs_at(&served, revision)
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let key = base64::engine::general_purpose::STANDARD
                .decode(kv["key"].as_str().unwrap())
                .unwrap();
            String::from_utf8(key).unwrap()
        })
        .collect();
    served.stop();
    keys
}

/// Replaces the running member's data with `snapshot`, restored by the stock tool WITHOUT a
/// revision bump (as the CKA procedure does), and starts it again on the same ports.
fn restore_without_bump(env: &mut Env, snapshot: &std::path::Path) {
    let version = env.cluster.member().version;
    let member = &mut env.cluster.members[0];
    member.stop();
    std::fs::remove_dir_all(&member.data_dir).unwrap();
    let cluster = format!("{}={}", member.name, member.peer_url());
    let out = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&member.data_dir)
        .args(["--name", &member.name, "--initial-cluster", &cluster])
        .arg(format!(
            "--initial-advertise-peer-urls={}",
            member.peer_url()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stock restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    member.restart(None);
}

/// Puts `prefix/i` for `i` in `range`.
fn puts(env: &Env, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        env.cluster.ctl(&["put", &format!("{prefix}/{i:02}"), "v"]);
    }
}

fn wait_for_backup_above(service: &ServiceProcess, env: &Env, revision: i64) {
    service.wait_for(
        "a full backup above the old chain",
        Duration::from_secs(60),
        |_| {
            env.listed_ids().iter().any(|id| {
                id.rsplit("-rev")
                    .next()
                    .and_then(|r| r.parse::<i64>().ok())
                    .is_some_and(|r| r > revision)
            })
        },
    );
}

fn signal(service: &ServiceProcess, signal: i32) {
    // SAFETY: kill(2) on the test's own child process.
    assert_eq!(unsafe { libc::kill(service.pid() as i32, signal) }, 0);
}

/// etcd restored without a revision bump (its history goes back below the chain) never gets
/// its new changes appended to the old chain: once while etcd is below the chain's last sealed
/// revision (seen from etcd's revision), once after it already passed it while the capture was
/// away (seen from the last sealed put, which etcd no longer has). Each time a `rewound` break
/// is recorded and counted, a full backup above the old chain starts a new chain, and points
/// of both histories fetch what each had.
fn restore_without_bump_starts_a_new_chain(version: EtcdVersion) {
    let mut env = Env::with_cluster(EtcdCluster::start(version));
    env.add_config("deltas:\n  interval: 1s\n");
    let log = env.path().join("service.log");
    let mut service = ServiceProcess::start(&env.config, &log);
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    let store = env.store();
    let sealed_to = |rev: i64| {
        let store = store.clone();
        move |_: &ServiceProcess| {
            common::local_segments(&store)
                .last()
                .is_some_and(|s| s["lastRevision"].as_i64() >= Some(rev))
        }
    };
    puts(&env, "/a", 0..5);
    let early = env.path().join("early.db");
    env.cluster
        .ctl(&["snapshot", "save", early.to_str().unwrap()]);
    let early_rev = head(&env);
    puts(&env, "/a", 5..20);
    let last = head(&env);
    service.wait_for(
        "the old history sealed",
        Duration::from_secs(30),
        sealed_to(last),
    );

    // 1. Restored below the chain's end while the service runs; just before, while it was
    // stopped, a change it never sealed and a full backup above the chain's end (the old
    // history's: the new chain must not start from it).
    signal(&service, libc::SIGSTOP);
    env.cluster.ctl(&["put", "/a/20", "v"]);
    let old_above = env.save_json();
    let old_above_id = old_above["id"].as_str().unwrap().to_string();
    assert!(
        old_above_id.ends_with(&format!("-rev{}", last + 1)),
        "{old_above}"
    );
    restore_without_bump(&mut env, &early);
    assert_eq!(head(&env), early_rev);
    signal(&service, libc::SIGCONT);
    let brk = env.store().join(format!("deltas/breaks/{last:020}.json"));
    service.wait_for("the rewound break", Duration::from_secs(60), |_| {
        brk.exists()
    });
    let record: Value = serde_json::from_slice(&std::fs::read(&brk).unwrap()).unwrap();
    assert_eq!(record["reason"], "rewound", "{record}");
    service.wait_for("the break counted", Duration::from_secs(10), |s| {
        s.metric("etcdsafe_delta_chain_breaks_total{reason=\"rewound\"}") == Some(1.0)
    });
    // New changes below the old chain's end are not appended to it.
    puts(&env, "/b", 0..5);
    std::thread::sleep(Duration::from_secs(4));
    let segments = common::local_segments(&env.store());
    assert!(
        segments
            .iter()
            .all(|s| s["lastRevision"].as_i64().unwrap() <= last),
        "a segment was appended after a rewind: {segments:?}"
    );
    // Past it: a full backup, then a new chain.
    puts(&env, "/b", 5..(5 + (last - head(&env)) as usize + 2));
    let passed = head(&env);
    assert!(passed > last);
    wait_for_backup_above(&service, &env, last + 1);
    puts(&env, "/c", 0..3);
    let second = head(&env);
    service.wait_for(
        "the new chain sealed",
        Duration::from_secs(30),
        sealed_to(second),
    );
    let b_keys: Vec<String> = (0..(passed - early_rev) as usize)
        .map(|i| format!("/b/{i:02}"))
        .collect();
    let a_keys = |n: usize| (0..n).map(|i| format!("/a/{i:02}")).collect::<Vec<_>>();
    let mut expected = a_keys(5);
    expected.extend(b_keys.iter().cloned());
    expected.extend(["/c/00", "/c/01", "/c/02"].map(String::from));
    expected.sort();
    assert_eq!(keys_at(&env, version, second), expected, "the new history");
    assert_eq!(keys_at(&env, version, last), a_keys(20), "the old history");
    assert!(
        common::local_segments(&env.store())
            .iter()
            .all(|s| s["chainBase"].as_str() != Some(old_above_id.as_str())),
        "a chain started from the old history's backup {old_above_id}"
    );
    // The break record names the backup the new chain started from.
    let record: Value = serde_json::from_slice(&std::fs::read(&brk).unwrap()).unwrap();
    let new_base = common::local_segments(&env.store())
        .into_iter()
        .find(|s| s["firstRevision"].as_i64().unwrap() > last)
        .unwrap()["chainBase"]
        .clone();
    assert_eq!(record["newChainBase"], new_base, "{record}");
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    assert!(
        listed["backups"][0]["deltas"]["broken"]
            .as_str()
            .is_some_and(|b| b.starts_with("rewound")),
        "{listed}"
    );

    // 2. Restored while the service is down, and etcd passes the chain's end before it is
    // back: only the last segment's witness (its events at its last revision) tells.
    let mid = env.path().join("mid.db");
    env.cluster
        .ctl(&["snapshot", "save", mid.to_str().unwrap()]);
    puts(&env, "/d", 0..10);
    let last2 = head(&env);
    service.wait_for(
        "the second chain sealed",
        Duration::from_secs(30),
        sealed_to(last2),
    );
    service.terminate();
    restore_without_bump(&mut env, &mid);
    puts(&env, "/e", 0..15);
    assert!(head(&env) > last2);
    common::service::without_server_line(&env.config);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-2.log"));
    let brk2 = env.store().join(format!("deltas/breaks/{last2:020}.json"));
    service.wait_for("the second rewound break", Duration::from_secs(60), |_| {
        brk2.exists()
    });
    service.wait_for("counted", Duration::from_secs(10), |s| {
        s.metric("etcdsafe_delta_chain_breaks_total{reason=\"rewound\"}") == Some(1.0)
    });
    let record: Value = serde_json::from_slice(&std::fs::read(&brk2).unwrap()).unwrap();
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .contains("not the history"),
        "{record}"
    );
    wait_for_backup_above(&service, &env, last2);
    puts(&env, "/f", 0..2);
    let third = head(&env);
    service.wait_for(
        "the third chain sealed",
        Duration::from_secs(60),
        sealed_to(third),
    );
    let got = keys_at(&env, version, third);
    assert!(
        got.iter().all(|k| !k.starts_with("/d/")),
        "the abandoned history's keys came back: {got:?}"
    );
    assert!(got.contains(&"/e/14".to_string()) && got.contains(&"/f/01".to_string()));
    for s in common::local_segments(&env.store()) {
        let (first, end) = (
            s["firstRevision"].as_i64().unwrap(),
            s["lastRevision"].as_i64().unwrap(),
        );
        assert!(
            end <= last || (first > last && end <= last2) || first > last2,
            "segment {first}-{end} mixes histories"
        );
    }
}

#[test]
fn restore_without_bump_starts_a_new_chain_on_3_5() {
    restore_without_bump_starts_a_new_chain(EtcdVersion::V3_5);
}

#[test]
fn restore_without_bump_starts_a_new_chain_on_3_4() {
    restore_without_bump_starts_a_new_chain(EtcdVersion::V3_4);
}

/// A compaction exactly up to the revision after the last seal (so the last sealed revision's
/// events, the segment's witness, are gone) does not break the chain: capture resumes after it
/// with the revision check only, linked and gap-free.
#[test]
fn a_compacted_witness_resumes_the_chain_without_a_break() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.add_config("deltas:\n  interval: 1s\n");
    let mut service = ServiceProcess::start(&env.config, &env.path().join("service.log"));
    service.wait_for("the first full backup", Duration::from_secs(60), |_| {
        !env.listed_ids().is_empty()
    });
    puts(&env, "/a", 0..5);
    let last = head(&env);
    let store = env.store();
    service.wait_for("sealed", Duration::from_secs(30), |_| {
        common::local_segments(&store)
            .last()
            .is_some_and(|s| s["lastRevision"].as_i64() == Some(last))
    });
    service.terminate();
    assert!(common::local_segments(&store).last().unwrap()["lastRevisionSha256"].is_string());
    puts(&env, "/b", 0..3);
    env.cluster.ctl(&["compact", &(last + 1).to_string()]);
    common::service::without_server_line(&env.config);
    let service = ServiceProcess::start(&env.config, &env.path().join("service-2.log"));
    service.wait_for("the chain going on", Duration::from_secs(30), |_| {
        common::local_segments(&store)
            .last()
            .is_some_and(|s| s["lastRevision"].as_i64() == Some(last + 3))
    });
    let segments = common::local_segments(&store);
    let next = segments
        .iter()
        .find(|s| s["firstRevision"].as_i64() == Some(last + 1))
        .expect("a segment from the revision after the last seal");
    let previous = segments
        .iter()
        .find(|s| s["lastRevision"].as_i64() == Some(last))
        .unwrap();
    assert_eq!(next["previousSha256"], previous["object"]["sha256"]);
    assert!(
        !env.store().join("deltas/breaks").exists()
            || std::fs::read_dir(env.store().join("deltas/breaks"))
                .unwrap()
                .next()
                .is_none(),
        "a break was recorded"
    );
    assert!(service.logs().contains("witness cannot be checked"));
}
