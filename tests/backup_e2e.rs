//! One backup end to end on real etcd (3.4.23 and 3.5.1): save through the whole pipeline, list,
//! open the stored object with the stock `age` and `zstd` tools, restore it with the stock etcd
//! tool, fetch it back with etcdsafe, and the failures that must leave nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, MANIFEST_SUFFIX};
use etcdsafe::retention::PRE_UPGRADE_REASON;
use serde_json::Value;

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Decrypts and decompresses a stored object with the stock tools only.
fn open_with_stock_tools(object: &Path, identity: &Path, out: &Path) {
    let pipeline = format!(
        "{} -d -i {} {} | {} -d -q -o {}",
        system_tool("age").display(),
        identity.display(),
        object.display(),
        system_tool("zstd").display(),
        out.display()
    );
    let status = Command::new("bash")
        .args(["-o", "pipefail", "-c", &pipeline])
        .status()
        .unwrap();
    assert!(status.success(), "stock age | zstd failed: {pipeline}");
}

fn full_pipeline_on(version: EtcdVersion) {
    let env = Env::with_cluster(EtcdCluster::start(version));
    for i in 0..50 {
        env.cluster.ctl(&[
            "put",
            &format!("/registry/pods/default/p{i}"),
            &format!("v{i}"),
        ]);
    }
    env.cluster.ctl(&["del", "/registry/pods/default/p7"]);
    // Several spool blocks of values larger than a page, written twice: the spool's leaf
    // digests see runs across block boundaries and the stale leaves of freed pages.
    for _ in 0..2 {
        env.cluster
            .put_many("/registry/configmaps/bulk", 1500, 5000);
    }

    // `snapshot save` prints the id and nothing else.
    let id = env.save();
    assert!(id.contains("-rev"), "id {id:?}");
    let data = format!("{id}{DATA_SUFFIX}");
    assert_eq!(
        files_in(&env.store()),
        vec![data.clone(), format!("{id}{MANIFEST_SUFFIX}")],
        "each backup is exactly two objects"
    );
    assert!(files_in(&env.spool()).is_empty(), "spool is cleaned up");

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(env.manifest_path(&id)).unwrap()).unwrap();
    assert_eq!(manifest["id"], id.as_str());
    assert_eq!(manifest["reason"], "manual");
    assert_eq!(manifest["object"]["key"], data.as_str());
    assert_eq!(
        manifest["object"]["encryption"]["recipients"][0],
        env.recipient.as_str()
    );
    assert_eq!(manifest["etcd"]["memberName"], "m0");
    assert!(manifest["etcd"]["version"]
        .as_str()
        .unwrap()
        .starts_with(&version.label()[..3]));
    let object_size = std::fs::metadata(env.store().join(&data)).unwrap().len();
    assert_eq!(manifest["object"]["size"], object_size);

    // The stored object opens with stock age + zstd, and the stock etcd tool agrees on status.
    let plain = env.dir.path().join("stock.db");
    open_with_stock_tools(&env.store().join(&data), &env.identity, &plain);
    let tool_status = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(tool_status.status.success());
    let tool_status: Value = serde_json::from_slice(&tool_status.stdout).unwrap();
    assert_eq!(tool_status["revision"], manifest["snapshot"]["revision"]);
    assert_eq!(tool_status["totalKey"], manifest["snapshot"]["totalKey"]);
    assert_eq!(tool_status["hash"], manifest["snapshot"]["hash"]);
    assert_eq!(tool_status["totalSize"], manifest["snapshot"]["totalSize"]);
    assert_eq!(
        std::fs::metadata(&plain).unwrap().len(),
        manifest["snapshot"]["size"].as_u64().unwrap(),
        "the stored bytes are exactly what etcd sent, trailer included"
    );

    // `backups fetch` writes the same bytes, and the stock tool restores it into a member that
    // serves exactly the backed-up keys.
    let fetched = env.dir.path().join("fetched.db");
    let identity = env.identity.to_str().unwrap().to_string();
    env.run_ok(&[
        "backups",
        "fetch",
        "latest",
        "-o",
        fetched.to_str().unwrap(),
        "--identity",
        &identity,
    ]);
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&plain).unwrap()
    );

    let restored = env.dir.path().join("restored.etcd");
    let peer = free_port();
    let client = free_port();
    let out = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&fetched)
        .arg(format!("--data-dir={}", restored.display()))
        .args(["--name", "restored"])
        .arg(format!(
            "--initial-cluster=restored=http://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stock restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restored_etcd = Command::new(version.bin("etcd"))
        .args(["--name", "restored", "--data-dir"])
        .arg(&restored)
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--initial-cluster=restored=http://127.0.0.1:{peer}"
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let keys = (0..100)
        .find_map(|_| {
            let out = Command::new(version.bin("etcdctl"))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://127.0.0.1:{client}"))
                .args(["get", "--prefix", "--keys-only", "/registry/"])
                .output()
                .unwrap();
            if out.status.success() {
                Some(String::from_utf8(out.stdout).unwrap())
            } else {
                std::thread::sleep(std::time::Duration::from_millis(200));
                None
            }
        })
        .expect("restored etcd answers");
    let _ = restored_etcd.kill();
    let _ = restored_etcd.wait();
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        keys.len(),
        49 + 1500,
        "49 pods survive (50 put, 1 deleted), and the 1500 bulk configmaps"
    );
    assert!(!keys.contains(&"/registry/pods/default/p7"));

    // `backups list` shows it in both formats.
    let listed: Value =
        serde_json::from_str(&run_ok(&mut env.cmd(&["backups", "list", "-w", "json"]))).unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1);
    assert_eq!(listed["backups"][0]["id"], id.as_str());
    let table = env.run_ok(&["backups", "list"]);
    assert!(table.contains(&id) && table.contains("REVISION"), "{table}");
}

#[test]
fn full_pipeline_etcd_3_4() {
    full_pipeline_on(EtcdVersion::V3_4);
}

#[test]
fn full_pipeline_etcd_3_5() {
    full_pipeline_on(EtcdVersion::V3_5);
}

#[test]
fn mtls_backup_on_both_versions() {
    for version in ALL_VERSIONS {
        let env = Env::with_cluster(EtcdCluster::start_tls(version));
        env.cluster.ctl(&["put", "tls-key", "tls-value"]);
        let manifest = env.save_json();
        assert!(manifest["etcd"]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"));
        assert!(manifest["snapshot"]["totalKey"].as_u64().unwrap() > 0);
    }
}

#[test]
fn https_without_ca_names_the_missing_key() {
    let cluster = EtcdCluster::start_tls(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "etcd: {{ endpoints: [{}] }}\nencryption: {{ recipients: [{recipient}] }}\nspool-dir: {}\nstorage: {{ local: {{ path: {} }} }}\n",
            cluster.member().client_url(),
            dir.path().join("spool").display(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert!(err.contains("etcd.cacert"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}

#[test]
fn wrong_ca_is_explained() {
    let cluster = EtcdCluster::start_tls(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let other = TestPki::create(&dir.path().join("other-pki"));
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let pki = cluster.pki.as_ref().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "etcd: {{ endpoints: [{}], cacert: {}, cert: {}, key: {} }}\nencryption: {{ recipients: [{recipient}] }}\nspool-dir: {}\nstorage: {{ local: {{ path: {} }} }}\n",
            cluster.member().client_url(),
            other.ca().display(),
            pki.client_cert().display(),
            pki.client_key().display(),
            dir.path().join("spool").display(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert!(err.contains(&cluster.member().client_url()), "{err}");
    assert!(err.contains("etcd.cacert"), "{err}");
    assert!(files_in(&dir.path().join("store")).is_empty());
}

#[test]
fn unreachable_etcd_fails_loudly_and_leaves_nothing() {
    let mut env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.run_ok(&["snapshot", "save"]);
    let before = files_in(&env.store());
    env.cluster.members[0].stop();
    let err = env.run_err(&["snapshot", "save"]);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("cannot reach etcd"), "{err}");
    assert!(err.contains(&env.cluster.member().client_url()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(files_in(&env.store()), before, "nothing added to the store");
    assert!(files_in(&env.spool()).is_empty());
}

#[test]
fn unusable_store_fails_before_touching_etcd_data() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    // The store path is a regular file: the directory cannot be created.
    std::fs::write(env.store(), b"not a directory").unwrap();
    let err = env.run_err(&["snapshot", "save"]);
    assert!(err.contains(&env.store().display().to_string()), "{err}");
    assert!(files_in(&env.spool()).is_empty());
}

#[test]
fn fetch_with_wrong_identity_or_corrupt_object_changes_nothing() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5));
    env.cluster.ctl(&["put", "a", "b"]);
    let manifest = env.save_json();
    let id = manifest["id"].as_str().unwrap();

    let (wrong, _) = age_keypair(env.dir.path(), "wrong.txt");
    let out = env.dir.path().join("out.db");
    let err = env.run_err(&[
        "backups",
        "fetch",
        id,
        "-o",
        out.to_str().unwrap(),
        "--identity",
        wrong.to_str().unwrap(),
    ]);
    assert!(err.contains(&env.recipient), "names the recipient: {err}");
    assert!(err.contains("wrong.txt"), "names the identity file: {err}");
    assert!(!out.exists());
    assert!(files_in(env.dir.path())
        .iter()
        .all(|f| !f.starts_with("out.db")));

    // Flip one byte in the middle of the stored object.
    let object = env.object_path(id);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, &bytes).unwrap();
    let err = env.run_err(&[
        "backups",
        "fetch",
        id,
        "-o",
        out.to_str().unwrap(),
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert!(err.contains(id), "{err}");
    assert!(!out.exists());
    assert!(files_in(env.dir.path())
        .iter()
        .all(|f| !f.starts_with("out.db")));

    let err = env.run_err(&[
        "backups",
        "fetch",
        "no-such-id",
        "-o",
        out.to_str().unwrap(),
        "--identity",
        env.identity.to_str().unwrap(),
    ]);
    assert!(err.contains("no backup \"no-such-id\""), "{err}");
}

#[test]
fn three_member_cluster_backup() {
    let cluster = EtcdCluster::start_with(EtcdVersion::V3_5, 3, false);
    cluster.put_many("/registry/configmaps", 200, 100);
    let env = Env::with_cluster(cluster);
    let manifest = env.save_json();
    assert_eq!(manifest["etcd"]["memberName"], "m0");
    assert!(manifest["snapshot"]["totalKey"].as_u64().unwrap() >= 200);
    assert_ne!(manifest["etcd"]["clusterId"], "0");
}

#[test]
fn labels_and_reason_are_recorded() {
    let env = Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_4));
    let out = env.run_ok(&[
        "snapshot",
        "save",
        "-w",
        "json",
        "--reason",
        PRE_UPGRADE_REASON,
        "--label",
        "from=v1.23.2",
        "--label",
        "to=v1.23.3",
    ]);
    let manifest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(manifest["reason"], PRE_UPGRADE_REASON);
    assert_eq!(manifest["labels"]["from"], "v1.23.2");
    assert_eq!(manifest["labels"]["to"], "v1.23.3");
}
