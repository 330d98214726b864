//! Backups into real S3-compatible servers (Garage, moto) from real etcd, and the S3 faults that
//! must give the right error, lose nothing and leave nothing half-visible.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::proxy::FaultyProxy;
use common::s3::{S3Kind, S3Server};
use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, MANIFEST_SUFFIX};
use serde_json::Value;

/// The common [`Env`] (etcd, temp dir, age key) with a fresh bucket of a real S3 server, and
/// configs that store there.
struct S3Env {
    env: Env,
    server: S3Server,
    bucket: String,
    rt: tokio::runtime::Runtime,
}

impl std::ops::Deref for S3Env {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl std::ops::DerefMut for S3Env {
    fn deref_mut(&mut self) -> &mut Env {
        &mut self.env
    }
}

impl S3Env {
    fn new(version: EtcdVersion, kind: S3Kind, object_lock: bool) -> S3Env {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cluster = EtcdCluster::start(version);
        let server = S3Server::start(kind);
        let bucket = rt.block_on(server.fresh_bucket(object_lock));
        S3Env {
            env: Env::with_cluster(cluster),
            server,
            bucket,
            rt,
        }
    }

    /// Writes a config; `endpoint` overrides the server's (to go through a proxy), `extra`
    /// is appended to the `storage.s3` section.
    fn config(&self, name: &str, endpoint: Option<&str>, extra: &str) -> PathBuf {
        let mut storage = self
            .server
            .storage_yaml(&self.bucket, "clusters/test/", self.path());
        if let Some(endpoint) = endpoint {
            storage = storage.replace(&self.server.endpoint, endpoint);
        }
        for line in extra.lines() {
            storage.push_str(&format!("    {line}\n"));
        }
        let text = format!(
            "etcd:\n  endpoints: [{}]\nspool-dir: {}\nencryption:\n  recipients: [{}]\n{storage}",
            self.cluster.member().client_url(),
            self.spool().display(),
            self.recipient,
        );
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn etcdsafe(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = etcdsafe();
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(config)
            .args(args);
        cmd
    }

    fn bucket_keys(&self) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .server
                .client()
                .await
                .list_objects_v2()
                .bucket(&self.bucket)
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect()
        })
    }

    fn incomplete_uploads(&self) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .server
                .client()
                .await
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .send()
                .await
                .unwrap();
            out.uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_string))
                .collect()
        })
    }

    fn download(&self, key: &str, to: &Path) {
        let bytes = self.rt.block_on(async {
            self.server
                .client()
                .await
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
        });
        std::fs::write(to, bytes).unwrap();
    }

    fn spool_is_empty(&self) -> bool {
        std::fs::read_dir(self.spool())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }
}

fn backup_fetch_and_stock_tools(version: EtcdVersion, kind: S3Kind) {
    let env = S3Env::new(version, kind, false);
    // Enough incompressible data for several 5 MiB parts.
    env.cluster
        .put_many_with("/registry/secrets/ns", 160, 100_000, true);
    let config = env.config("c.yaml", None, "");
    let manifest: Value = serde_json::from_str(&run_ok(
        &mut env.etcdsafe(&config, &["snapshot", "save", "-w", "json"]),
    ))
    .unwrap();
    let id = manifest["id"].as_str().unwrap();
    assert!(
        manifest["object"]["size"].as_u64().unwrap() > 10 << 20,
        "multipart-sized"
    );
    assert!(manifest["object"]["store"]
        .as_str()
        .unwrap()
        .starts_with("s3://"));
    let mut keys = env.bucket_keys();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("clusters/test/{id}{DATA_SUFFIX}"),
            format!("clusters/test/{id}{MANIFEST_SUFFIX}")
        ],
        "exactly two objects under the prefix"
    );
    assert!(env.incomplete_uploads().is_empty());
    assert!(env.spool_is_empty());

    // The object in the bucket opens with stock age + zstd and equals what fetch writes.
    let object = env.dir.path().join("object.age");
    env.download(&format!("clusters/test/{id}{DATA_SUFFIX}"), &object);
    let stock = env.dir.path().join("stock.db");
    let status = Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d -q -o {}",
            env.identity.display(),
            object.display(),
            stock.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let fetched = env.dir.path().join("fetched.db");
    run_ok(&mut env.etcdsafe(
        &config,
        &[
            "backups",
            "fetch",
            "latest",
            "-o",
            fetched.to_str().unwrap(),
            "--identity",
            env.identity.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&stock).unwrap()
    );
    let tool = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&fetched)
        .output()
        .unwrap();
    let tool: Value = serde_json::from_slice(&tool.stdout).unwrap();
    assert_eq!(tool["hash"], manifest["snapshot"]["hash"]);
    assert_eq!(tool["revision"], manifest["snapshot"]["revision"]);

    let listed: Value = serde_json::from_str(&run_ok(
        &mut env.etcdsafe(&config, &["backups", "list", "-w", "json"]),
    ))
    .unwrap();
    assert_eq!(listed["backups"][0]["id"], id);
}

#[test]
fn garage_backup_etcd_3_5() {
    backup_fetch_and_stock_tools(EtcdVersion::V3_5, S3Kind::Garage);
}

#[test]
fn garage_backup_etcd_3_4() {
    backup_fetch_and_stock_tools(EtcdVersion::V3_4, S3Kind::Garage);
}

#[test]
fn moto_object_lock_protects_backups() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Moto, true);
    env.cluster.ctl(&["put", "k", "v"]);
    let config = env.config(
        "c.yaml",
        None,
        "object-lock-days: 1\nobject-lock-mode: GOVERNANCE",
    );
    let id = run_ok(&mut env.etcdsafe(&config, &["snapshot", "save"]))
        .trim()
        .to_string();
    let key = format!("clusters/test/{id}{DATA_SUFFIX}");
    env.rt.block_on(async {
        let client = env.server.client().await;
        let head = client
            .head_object()
            .bucket(&env.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE")
        );
        assert!(head.object_lock_retain_until_date().is_some());
        let version = head.version_id().unwrap().to_string();
        let denied = client
            .delete_object()
            .bucket(&env.bucket)
            .key(&key)
            .version_id(version)
            .send()
            .await;
        assert!(denied.is_err(), "deleting a locked version must be denied");
    });
}

#[test]
fn wrong_credentials_fail_fast_and_name_the_bucket() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    let config = env.config("c.yaml", None, "");
    std::fs::write(env.dir.path().join("secret-access-key"), "not-the-secret\n").unwrap();
    let started = Instant::now();
    let err = run_err(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(err.contains(&env.bucket), "{err}");
    assert!(err.contains("credentials"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a 403 is not retried"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is never printed"
    );
    assert!(env.spool_is_empty());
}

#[test]
fn missing_bucket_is_named_with_the_fix() {
    let mut env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    env.bucket = "no-such-bucket-etcdsafe".to_string();
    let config = env.config("c.yaml", None, "");
    let err = run_err(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(err.contains("no-such-bucket-etcdsafe"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn unreachable_s3_fails_with_the_endpoint_named() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = env.config("c.yaml", Some(&dead), "max-attempts: 2");
    let err = run_err(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(err.contains(&env.bucket), "{err}");
    assert!(err.contains("reachable"), "{err}");
    assert!(env.spool_is_empty());
}

#[test]
fn s3_500s_then_recovery_succeeds() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    env.cluster.ctl(&["put", "k", "v"]);
    let upstream: u16 = env
        .server
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultyProxy::start(upstream);
    proxy.faults.fail_connections.store(3, Ordering::SeqCst);
    let config = env.config("c.yaml", Some(&proxy.endpoint()), "");
    let id = run_ok(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert_eq!(
        proxy.faults.served_500s.load(Ordering::SeqCst),
        3,
        "the 500s were seen and retried"
    );
    assert!(env
        .bucket_keys()
        .iter()
        .any(|k| k.ends_with(&format!("{}{MANIFEST_SUFFIX}", id.trim()))));
}

#[test]
fn s3_cut_mid_upload_leaves_nothing_and_the_next_run_cleans_up() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    env.cluster
        .put_many_with("/registry/secrets/ns", 200, 100_000, true);
    let upstream: u16 = env
        .server
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultyProxy::start(upstream);
    proxy
        .faults
        .cut_after_bytes
        .store(8 << 20, Ordering::SeqCst);
    let config = env.config(
        "c.yaml",
        Some(&proxy.endpoint()),
        "max-attempts: 2\nabort-incomplete-after: 0s",
    );
    let err = run_err(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(err.contains(&env.bucket), "{err}");
    assert!(env.spool_is_empty());
    assert!(
        env.bucket_keys()
            .iter()
            .all(|k| !k.ends_with(MANIFEST_SUFFIX)),
        "no manifest: {:?}",
        env.bucket_keys()
    );
    // The endpoint comes back: the next run aborts the stale upload and succeeds.
    proxy.heal();
    run_ok(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(
        env.incomplete_uploads().is_empty(),
        "{:?}",
        env.incomplete_uploads()
    );
    let listed: Value = serde_json::from_str(&run_ok(
        &mut env.etcdsafe(&config, &["backups", "list", "-w", "json"]),
    ))
    .unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1);
}

#[test]
fn killed_mid_upload_next_run_aborts_the_stale_upload() {
    let env = S3Env::new(EtcdVersion::V3_5, S3Kind::Garage, false);
    env.cluster
        .put_many_with("/registry/secrets/ns", 250, 100_000, true);
    let upstream: u16 = env
        .server
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultyProxy::start(upstream);
    let config = env.config(
        "c.yaml",
        Some(&proxy.endpoint()),
        "abort-incomplete-after: 0s",
    );
    let mut child = env
        .etcdsafe(&config, &["snapshot", "save"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.faults.upstream_bytes.load(Ordering::SeqCst) < 7 << 20 {
        assert!(Instant::now() < deadline, "the upload never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    assert!(
        !env.incomplete_uploads().is_empty(),
        "the killed run left an incomplete multipart upload"
    );
    assert!(env
        .bucket_keys()
        .iter()
        .all(|k| !k.ends_with(MANIFEST_SUFFIX)));

    run_ok(&mut env.etcdsafe(&config, &["snapshot", "save"]));
    assert!(
        env.incomplete_uploads().is_empty(),
        "{:?}",
        env.incomplete_uploads()
    );
    let listed: Value = serde_json::from_str(&run_ok(
        &mut env.etcdsafe(&config, &["backups", "list", "-w", "json"]),
    ))
    .unwrap();
    assert_eq!(
        listed["backups"].as_array().unwrap().len(),
        1,
        "no half backup is listed"
    );
}

#[test]
fn moto_sse_storage_class_and_env_credentials() {
    let env = S3Env::new(EtcdVersion::V3_4, S3Kind::Moto, false);
    env.cluster.ctl(&["put", "k", "v"]);
    let config = env.config("c.yaml", None, "sse: AES256\nstorage-class: STANDARD_IA");
    // Credentials from the standard AWS chain (env) instead of files.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("access-key-id-file") && !l.contains("secret-access-key-file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    let id = run_ok(
        env.etcdsafe(&config, &["snapshot", "save"])
            .env("AWS_ACCESS_KEY_ID", &env.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &env.server.secret_key),
    )
    .trim()
    .to_string();
    env.rt.block_on(async {
        let head = env
            .server
            .client()
            .await
            .head_object()
            .bucket(&env.bucket)
            .key(format!("clusters/test/{id}{DATA_SUFFIX}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("AES256")
        );
        assert_eq!(
            head.storage_class().map(|s| s.as_str()),
            Some("STANDARD_IA")
        );
    });
}
