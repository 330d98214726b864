//! Control-plane files (`include-files`) end to end on real etcd 3.5.1: kept next to the snapshot
//! under the same id, opened with the stock `age`, `zstd` and `tar`, audited, pruned with their
//! backup, and put back (and taken back) by `etcdsafe restore --restore-files` on a node whose
//! kubelet is played by the harness in `common::kubelet` (real etcd; the API server is a STAND-IN).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::node::{Node, NodeDir, NodeOpts};
use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, FILES_SUFFIX, MANIFEST_SUFFIX};
use etcdsafe::exit::Exit;
use etcdsafe::restore::steps::ETCD_YAML;

/// A fake /etc/kubernetes: a PKI dir (with a 0600 key and a nested dir) and an encryption config.
struct ControlPlaneFiles {
    kubernetes: PathBuf,
}

impl ControlPlaneFiles {
    fn create(root: &Path) -> ControlPlaneFiles {
        let kubernetes = root.join("etc/kubernetes");
        let pki = kubernetes.join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        std::fs::write(pki.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nca\n").unwrap();
        std::fs::write(pki.join("ca.key"), "-----BEGIN PRIVATE KEY-----\nca\n").unwrap();
        std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(pki.join("sa.key"), "sa key\n").unwrap();
        std::fs::set_permissions(pki.join("sa.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(pki.join("etcd/ca.crt"), "etcd ca\n").unwrap();
        std::fs::write(
            kubernetes.join("enc.yaml"),
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n",
        )
        .unwrap();
        ControlPlaneFiles { kubernetes }
    }

    fn config_lines(&self) -> String {
        format!(
            "include-files:\n  - {}\n  - {}\n",
            self.kubernetes.join("pki").display(),
            self.kubernetes.join("enc.yaml").display()
        )
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.kubernetes.join(rel)).ok()
    }

    /// What a person does to the node after the backup: rotates a key, loses the encryption
    /// config and the etcd CA dir, adds a file.
    fn change_after_backup(&self) {
        std::fs::write(self.kubernetes.join("pki/ca.key"), "rotated\n").unwrap();
        std::fs::remove_file(self.kubernetes.join("enc.yaml")).unwrap();
        std::fs::remove_dir_all(self.kubernetes.join("pki/etcd")).unwrap();
        std::fs::write(self.kubernetes.join("pki/new.crt"), "new\n").unwrap();
    }

    fn assert_as_backed_up(&self) {
        assert_eq!(
            self.read("pki/ca.key").as_deref(),
            Some("-----BEGIN PRIVATE KEY-----\nca\n")
        );
        let mode = std::fs::metadata(self.kubernetes.join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key keeps its mode");
        assert!(self
            .read("enc.yaml")
            .unwrap()
            .contains("EncryptionConfiguration"));
        assert_eq!(self.read("pki/etcd/ca.crt").as_deref(), Some("etcd ca\n"));
    }

    fn assert_as_changed(&self) {
        assert_eq!(self.read("pki/ca.key").as_deref(), Some("rotated\n"));
        assert_eq!(self.read("enc.yaml"), None);
        assert!(!self.kubernetes.join("pki/etcd").exists());
        assert_eq!(self.read("pki/new.crt").as_deref(), Some("new\n"));
    }
}

/// One etcd 3.5.1 with a local store, plus control-plane files in the config, then `extra`.
fn env_with_files(extra: &str) -> Env {
    let env = Env::new();
    let files = ControlPlaneFiles::create(env.path());
    env.add_config(&files.config_lines());
    env.add_config(extra);
    env
}

/// This file's helpers on the common [`Env`].
impl Env {
    /// The control-plane files [`env_with_files`] made.
    fn files(&self) -> ControlPlaneFiles {
        ControlPlaneFiles {
            kubernetes: self.path().join("etc/kubernetes"),
        }
    }
}

/// `age -d -i KEY OBJ | zstd -d | tar -x -C DIR` with the stock tools.
fn stock_extract(object: &Path, identity: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let script = format!(
        "set -o pipefail; '{age}' -d -i '{id}' '{obj}' | '{zstd}' -d -q | '{tar}' -x -p -C '{into}'",
        age = system_tool("age").display(),
        zstd = system_tool("zstd").display(),
        tar = system_tool("tar").display(),
        id = identity.display(),
        obj = object.display(),
        into = into.display(),
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "stock tools failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn backup_keeps_control_plane_files_that_stock_tools_open() {
    let env = env_with_files("");
    env.cluster.ctl(&["put", "k", "v"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["snapshot", "save", "-w", "json"])).unwrap();
    let id = manifest["id"].as_str().unwrap().to_string();
    let files = &manifest["files"];
    assert_eq!(files["key"], format!("{id}{FILES_SUFFIX}"));
    // pki, ca.crt, ca.key, etcd/, etcd/ca.crt, sa.key, enc.yaml
    assert_eq!(files["entries"], 7);
    assert_eq!(files["paths"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.stored(),
        vec![
            format!("{id}{DATA_SUFFIX}"),
            format!("{id}{FILES_SUFFIX}"),
            format!("{id}{MANIFEST_SUFFIX}")
        ],
        "three objects under the same id"
    );
    let object = env.files_path(&id);
    assert_eq!(
        std::fs::metadata(&object).unwrap().len(),
        files["size"].as_u64().unwrap()
    );
    // Stock tools open it; the names are the absolute paths without the leading /.
    let out = env.dir.path().join("extracted");
    stock_extract(&object, &env.identity, &out);
    let inside = out.join(env.files().kubernetes.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(inside.join("pki/ca.key")).unwrap(),
        "-----BEGIN PRIVATE KEY-----\nca\n"
    );
    assert_eq!(
        std::fs::metadata(inside.join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(inside.join("enc.yaml"))
        .unwrap()
        .contains("EncryptionConfiguration"));

    // The audit checks the files object too, and names it when it is corrupt.
    env.run_ok(&["backups", "audit"]);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();
    let out = env.run_exit(&["backups", "audit"], Exit::Failed);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("control-plane files object"), "{text}");

    // A missing files object makes the listing incomplete (and so stops retention).
    std::fs::remove_file(&object).unwrap();
    let err = env.run_err(&["backups", "list"]);
    assert!(
        err.contains("control-plane files object") && err.contains("is missing"),
        "{err}"
    );
}

#[test]
fn a_missing_include_path_fails_loudly_and_stores_nothing() {
    let env = env_with_files("");
    std::fs::remove_file(env.files().kubernetes.join("enc.yaml")).unwrap();
    let enc = env.files().kubernetes.join("enc.yaml");
    let err = env.run_err(&["config", "check"]);
    assert!(
        err.contains(&format!("include-files: {}", enc.display()))
            && err.contains("remove it from include-files"),
        "{err}"
    );
    let err = env.run_err(&["snapshot", "save"]);
    assert!(err.contains(&format!("{}", enc.display())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        env.stored().is_empty(),
        "nothing stored: {:?}",
        env.stored()
    );
    assert!(
        std::fs::read_dir(env.dir.path().join("spool"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "no spool files left"
    );
}

#[test]
fn retention_removes_the_files_object_with_its_backup() {
    let env = env_with_files("retention:\n  keep-last: 1\n");
    let first = env.run_ok(&["snapshot", "save"]).trim().to_string();
    let second = env.run_ok(&["snapshot", "save"]).trim().to_string();
    assert_ne!(first, second);
    let stored = env.stored();
    assert!(
        stored.iter().all(|n| n.starts_with(&second)),
        "only the newest backup's three objects remain: {stored:?}"
    );
    assert_eq!(stored.len(), 3, "{stored:?}");
}

/// A kubeadm-like node (`common::node`: manifests dir run by the kubelet harness, etcd 3.5.1, a
/// local store) with control-plane files in its dir and in its config.
fn node_with_files() -> (Node, ControlPlaneFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = ControlPlaneFiles::create(dir.path());
    let node = Node::build(NodeOpts {
        dir: Some(NodeDir::Own(dir)),
        compression_level: None,
        extra_config: files.config_lines(),
        legacy_apiserver_manifest: true,
        ..NodeOpts::new(EtcdVersion::V3_5)
    });
    (node, files)
}

#[test]
fn restore_puts_control_plane_files_back_and_rollback_takes_them_back() {
    let (node, files) = node_with_files();
    node.put("k", "backed-up");
    let id = node.backup();
    node.put("k", "later");
    files.change_after_backup();
    let identity = node.identity.to_str().unwrap();

    let list = run_ok(&mut node.restore(&["--list"]));
    assert!(
        list.contains("FILES") && list.contains("7 entries"),
        "{list}"
    );
    // Without --restore-files the plan says the files exist and leaves them alone.
    let plan = run_ok(&mut node.restore(&["--dry-run", &id, "--identity", identity]));
    assert!(plan.contains("pass --restore-files"), "{plan}");
    assert!(!plan.contains("put back the control-plane files"), "{plan}");

    let (stdout, stderr) =
        run_ok_both(&mut node.restore(&[&id, "--identity", identity, "--yes", "--restore-files"]));
    assert!(stdout.contains("restored backup"), "{stdout}");
    // The fetch shows its progress (one line per tenth when stderr is not a terminal).
    assert!(
        stderr.contains(&format!("fetching {id}: ")) && stderr.contains("(100%)"),
        "{stderr}"
    );
    node.wait_healthy();
    assert_eq!(node.get("k"), "backed-up");
    files.assert_as_backed_up();
    assert_eq!(
        files.read("pki/new.crt").as_deref(),
        Some("new\n"),
        "files the backup does not have are left alone"
    );

    run_ok(&mut node.restore(&["--rollback"]));
    node.wait_healthy();
    assert_eq!(node.get("k"), "later");
    files.assert_as_changed();
    assert_eq!(
        std::fs::read_to_string(node.manifests.join(ETCD_YAML)).unwrap(),
        node.original_etcd_yaml
    );
}

#[test]
fn restore_files_interrupted_then_rolled_back_or_resumed() {
    let (node, files) = node_with_files();
    node.put("k", "backed-up");
    let id = node.backup();
    node.put("k", "later");
    files.change_after_backup();
    let identity = node.identity.to_str().unwrap();

    let stop_after = |step: &str, data_dir: &Path| {
        let mut cmd = node.restore(&[&id, "--identity", identity, "--yes", "--restore-files"]);
        cmd.arg("--data-dir").arg(data_dir);
        cmd.env(etcdsafe::restore::STOP_AFTER_ENV, step);
        run_exit(&mut cmd, Exit::RestoreStopped);
    };
    stop_after("restore-files", &node.root.join("restored-1"));
    files.assert_as_backed_up();
    run_ok(&mut node.restore(&["--rollback"]));
    node.wait_healthy();
    files.assert_as_changed();
    assert_eq!(node.get("k"), "later");

    // Again (a rolled-back journal does not block a new restore; the first restored dir is kept,
    // so a new one), interrupted before the files step; resume does it.
    stop_after("restore-data", &node.root.join("restored-2"));
    files.assert_as_changed();
    run_ok(&mut node.restore(&["--resume", "--yes"]));
    node.wait_healthy();
    files.assert_as_backed_up();
    assert_eq!(node.get("k"), "backed-up");
}

#[test]
fn s3_keeps_the_files_object_next_to_the_snapshot_and_prunes_it_with_it() {
    use common::s3::{S3Kind, S3Server};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = S3Server::start(S3Kind::Garage);
    let bucket = rt.block_on(server.fresh_bucket(false));
    let env = env_with_files("retention:\n  keep-last: 1\n");
    // The same config, with the Garage bucket instead of the local store.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let storage_at = text.find("storage:").unwrap();
    let after = &text[storage_at..];
    let end = after.find("\ninclude-files:").unwrap();
    let s3 = server.storage_yaml(&bucket, "clusters/files/", env.dir.path());
    let text = format!("{}{}{}", &text[..storage_at], s3, &after[end + 1..]);
    std::fs::write(&env.config, text).unwrap();
    let keys = || -> Vec<String> {
        rt.block_on(async {
            let out = server
                .client()
                .await
                .list_objects_v2()
                .bucket(&bucket)
                .send()
                .await
                .unwrap();
            let mut keys: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            keys.sort();
            keys
        })
    };
    let mut cmd = env.cmd(&["snapshot", "save"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    let first = run_ok(&mut cmd).trim().to_string();
    assert_eq!(
        keys(),
        vec![
            format!("clusters/files/{first}{DATA_SUFFIX}"),
            format!("clusters/files/{first}{FILES_SUFFIX}"),
            format!("clusters/files/{first}{MANIFEST_SUFFIX}"),
        ]
    );
    let mut cmd = env.cmd(&["backups", "audit"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    run_ok(&mut cmd);
    let mut cmd = env.cmd(&["snapshot", "save"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    let second = run_ok(&mut cmd).trim().to_string();
    let left = keys();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|k| k.contains(&second)), "{left:?}");
}
