//! Guided restore end to end on real etcd (3.5.1 and 3.4.23), with the kubelet played by a
//! harness (`common::kubelet`: real etcd from the manifest's flags, and a STAND-IN API server
//! that only answers /readyz).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Key/value pairs as etcdctl prints them.
type Pairs = Vec<(String, String)>;

use common::kubelet::{apiserver_manifest, etcd_manifest, Kubelet};
use common::*;

struct Node {
    /// First, so it stops its pods before the temp dir goes.
    _kubelet: Option<Kubelet>,
    version: EtcdVersion,
    dir: tempfile::TempDir,
    manifests: PathBuf,
    data_dir: PathBuf,
    client_port: u16,
    config: PathBuf,
    identity: PathBuf,
    original_etcd_yaml: String,
    original_apiserver_yaml: String,
}

impl Node {
    fn new(version: EtcdVersion) -> Node {
        Self::with_kubelet(version, false)
    }

    fn with_kubelet(version: EtcdVersion, never_stops: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let data_dir = dir.path().join("var-lib-etcd");
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_yaml = etcd_manifest(
            &version.bin("etcd"),
            "cp1",
            client_port,
            peer_port,
            &format!("cp1=http://127.0.0.1:{peer_port}"),
            &data_dir,
        );
        let api_yaml = apiserver_manifest(api_port);
        std::fs::write(manifests.join("etcd.yaml"), &etcd_yaml).unwrap();
        std::fs::write(manifests.join("kube-apiserver.yaml"), &api_yaml).unwrap();
        let log = dir.path().join("kubelet.log");
        let kubelet = if never_stops {
            Kubelet::never_stops(&manifests, &log)
        } else {
            Kubelet::start(&manifests, &log)
        };
        let (identity, recipient) = age_keypair(dir.path(), "key.txt");
        let config = dir.path().join("etcdsafe.yaml");
        std::fs::write(
            &config,
            format!(
                "etcd:\n  endpoints: [http://127.0.0.1:{client_port}]\nspool-dir: {}\ncompression: {{ level: 3 }}\nencryption:\n  recipients: [{recipient}]\nstorage:\n  local: {{ path: {} }}\nkubernetes:\n  manifests-dir: {}\n",
                dir.path().join("spool").display(),
                dir.path().join("store").display(),
                manifests.display()
            ),
        )
        .unwrap();
        let node = Node {
            version,
            dir,
            manifests,
            data_dir,
            client_port,
            config,
            identity,
            original_etcd_yaml: etcd_yaml,
            original_apiserver_yaml: api_yaml,
            _kubelet: Some(kubelet),
        };
        node.wait_healthy();
        node
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.version.bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{}", self.client_port))
            .arg("--dial-timeout=2s")
            .args(args)
            .output()
            .unwrap()
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy: {}",
                std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn put(&self, k: &str, v: &str) {
        let out = self.ctl(&["put", k, v]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every key and value etcd serves.
    fn all(&self) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "", "--prefix"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    fn etcdsafe(&self, args: &[&str]) -> Command {
        let mut cmd = etcdsafe();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("state/journal.json")
    }

    fn restore(&self, args: &[&str]) -> Command {
        self.restore_within(args, "60s")
    }

    fn restore_within(&self, args: &[&str], pod_timeout: &str) -> Command {
        let mut cmd = self.etcdsafe(&["restore"]);
        cmd.args(args)
            .arg("--journal")
            .arg(self.journal())
            .arg("--etcdutl")
            .arg(self.version.snapshot_tool())
            .arg("--pod-timeout")
            .arg(pod_timeout);
        cmd
    }

    fn identity(&self) -> &str {
        self.identity.to_str().unwrap()
    }

    fn backup(&self) -> String {
        run_ok(&mut self.etcdsafe(&["snapshot", "save"]))
            .trim()
            .to_string()
    }

    fn target(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("{}-restored-{id}", self.data_dir.display()))
    }

    fn manifests_are_original(&self) {
        assert_eq!(
            std::fs::read_to_string(self.manifests.join("etcd.yaml")).unwrap(),
            self.original_etcd_yaml
        );
        assert_eq!(
            std::fs::read_to_string(self.manifests.join("kube-apiserver.yaml")).unwrap(),
            self.original_apiserver_yaml
        );
    }

    /// Keys a/0..9 backed up, then b/0..4 written and a/0 overwritten after the backup.
    fn backup_with_later_writes(&self) -> (String, Pairs, Pairs) {
        for i in 0..10 {
            self.put(&format!("a/{i}"), &format!("v{i}"));
        }
        let backed_up = self.all();
        let id = self.backup();
        for i in 0..5 {
            self.put(&format!("b/{i}"), "later");
        }
        self.put("a/0", "changed-after-backup");
        let later = self.all();
        (id, backed_up, later)
    }
}

fn assert_only_data_dir_lines_differ(original: &str, now: &str, old: &Path, new: &Path) {
    let a: Vec<&str> = original.split_inclusive('\n').collect();
    let b: Vec<&str> = now.split_inclusive('\n').collect();
    assert_eq!(a.len(), b.len());
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(
        differing.len(),
        3,
        "--data-dir, mountPath, hostPath: {differing:?}"
    );
    for i in differing {
        assert_eq!(
            a[i].replace(&old.display().to_string(), &new.display().to_string()),
            b[i]
        );
        assert!(
            a[i].contains("--data-dir=") || a[i].contains("mountPath:") || a[i].contains("path:")
        );
    }
}

fn restore_on(version: EtcdVersion) {
    let node = Node::new(version);
    let (id, backed_up, _) = node.backup_with_later_writes();
    let out = run_ok(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(out.contains("too old to bump revisions"), "{out}");
    assert!(out.contains("watch caches"), "{out}");
    assert!(
        out.contains("restart kube-controller-manager, kube-scheduler"),
        "{out}"
    );
    node.wait_healthy();
    assert_eq!(
        node.all(),
        backed_up,
        "exactly the backed-up keys are served"
    );
    let target = node.target(&id);
    let now = std::fs::read_to_string(node.manifests.join("etcd.yaml")).unwrap();
    assert_only_data_dir_lines_differ(&node.original_etcd_yaml, &now, &node.data_dir, &target);
    assert!(
        node.data_dir.join("member").is_dir(),
        "the old data dir is kept"
    );
    assert!(target.join("member").is_dir());
    assert_eq!(
        std::fs::read_to_string(node.manifests.join("kube-apiserver.yaml")).unwrap(),
        node.original_apiserver_yaml
    );
    assert!(!node
        .manifests
        .parent()
        .unwrap()
        .join("manifests-etcdsafe-held")
        .exists());
}

#[test]
fn restore_end_to_end_3_5() {
    restore_on(EtcdVersion::V3_5);
}

#[test]
fn restore_end_to_end_3_4() {
    restore_on(EtcdVersion::V3_4);
}

#[test]
fn list_and_dry_run_change_nothing() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, _, later) = node.backup_with_later_writes();
    let list = run_ok(&mut node.restore(&["--list"]));
    assert!(
        list.contains(&id) && list.contains("REVISION") && list.contains("manual"),
        "{list}"
    );
    let out = run_ok(&mut node.restore(&["--dry-run", "latest", "--identity", node.identity()]));
    assert!(
        out.contains("restore plan for backup") && out.contains("dry run"),
        "{out}"
    );
    assert!(
        out.contains("snapshot restore --name=cp1") || out.contains("snapshot restore --name cp1"),
        "{out}"
    );
    node.manifests_are_original();
    assert!(!node.target(&id).exists());
    assert!(!node.journal().exists());
    assert_eq!(node.all(), later);
}

#[test]
fn failures_change_nothing() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, _, later) = node.backup_with_later_writes();
    // Wrong identity.
    let (other, _) = age_keypair(node.dir.path(), "other.txt");
    let err = run_err(&mut node.restore(&[&id, "--identity", other.to_str().unwrap(), "--yes"]));
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        err.to_lowercase().contains("identity") || err.contains("key"),
        "{err}"
    );
    // A backup that does not exist.
    let err = run_err(&mut node.restore(&["nope", "--identity", node.identity(), "--yes"]));
    assert!(err.contains("no backup \"nope\""), "{err}");
    // A non-empty target dir.
    let busy = node.dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("x"), "x").unwrap();
    let err = run_err(&mut node.restore(&[
        &id,
        "--identity",
        node.identity(),
        "--yes",
        "--data-dir",
        busy.to_str().unwrap(),
    ]));
    assert!(
        err.contains("not empty") && err.contains("nothing was changed"),
        "{err}"
    );
    // A corrupt stored object.
    let object = node
        .dir
        .path()
        .join("store")
        .join(format!("{id}.db.zst.age"));
    let mut bytes = std::fs::read(&object).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let err = run_err(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(err.contains("nothing was changed"), "{err}");
    node.manifests_are_original();
    assert!(!node.target(&id).exists());
    assert!(!node.journal().exists());
    assert_eq!(node.all(), later);
}

#[test]
fn kubelet_that_never_stops_the_pod_times_out() {
    let node = Node::with_kubelet(EtcdVersion::V3_5, true);
    let (id, _, _) = node.backup_with_later_writes();
    let err =
        run_err(&mut node.restore_within(&[&id, "--identity", node.identity(), "--yes"], "3s"));
    assert!(
        err.contains("the kubelet did not stop etcd within 3s"),
        "{err}"
    );
    assert!(
        err.contains("crictl ps") && err.contains("journalctl -u kubelet"),
        "{err}"
    );
    assert!(
        !node.target(&id).exists(),
        "nothing restored while etcd runs"
    );
}

#[test]
fn interrupted_restore_resumes() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, backed_up, _) = node.backup_with_later_writes();
    let mut cmd = node.restore(&[&id, "--identity", node.identity(), "--yes"]);
    cmd.env("ETCDSAFE_RESTORE_STOP_AFTER", "point-etcd");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node.manifests.join("etcd.yaml").exists(), "etcd is held");
    let err = run_err(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(err.contains("--resume"), "{err}");
    run_ok(&mut node.restore(&["--resume", "--yes"]));
    node.wait_healthy();
    assert_eq!(node.all(), backed_up);
    assert!(node.data_dir.join("member").is_dir());
}

#[test]
fn interrupted_restore_rolls_back() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, _, later) = node.backup_with_later_writes();
    let mut cmd = node.restore(&[&id, "--identity", node.identity(), "--yes"]);
    cmd.env("ETCDSAFE_RESTORE_STOP_AFTER", "point-etcd");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(&mut node.restore(&["--rollback"]));
    node.manifests_are_original();
    node.wait_healthy();
    assert_eq!(
        node.all(),
        later,
        "the original data dir serves everything, nothing lost"
    );
    assert!(
        node.target(&id).join("member").is_dir(),
        "the restored dir is kept aside"
    );
}

#[test]
fn completed_restore_rolls_back() {
    let node = Node::new(EtcdVersion::V3_4);
    let (id, backed_up, later) = node.backup_with_later_writes();
    run_ok(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    node.wait_healthy();
    assert_eq!(node.all(), backed_up);
    run_ok(&mut node.restore(&["--rollback"]));
    node.manifests_are_original();
    node.wait_healthy();
    assert_eq!(node.all(), later);
}
