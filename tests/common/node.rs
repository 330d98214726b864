//! A kubeadm-like control-plane node for restore tests: a manifests dir with `etcd.yaml` and
//! `kube-apiserver.yaml` run by the kubelet harness (`super::kubelet`: the real etcd binary on
//! free loopback ports, a STAND-IN API server), an age key pair, and an etcdsafe config pointing
//! at them.
//!
//! `NodeOpts` holds what the tests vary: how the kubelet behaves, which API server manifest it
//! runs, where backups go, extra config lines (such as `include-files:`), and for one member of a
//! kubeadm-shaped cluster its name, dir, ports, shared keys and the `--initial-cluster` it joins
//! with. A test binary adds its own helpers in an `impl Node` block of its own.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::kubelet::{
    apiserver_manifest, etcd_manifest, kubeadm_apiserver_manifest, ApiServerSpec, Kubelet,
};
use super::s3::S3Server;
use super::{age_keypair, etcdsafe, free_port, run_ok, EtcdVersion, TestPki};
use etcdsafe::restore::steps::{APISERVER_YAML, ETCD_YAML};

/// Key/value pairs as etcdctl prints them.
pub type Pairs = Vec<(String, String)>;

#[derive(Clone, Copy)]
pub enum KubeletKind {
    Normal,
    /// `Kubelet::never_stops`.
    NeverStops,
    /// `Kubelet::slow_to_stop`.
    SlowToStop(Duration),
}

/// Where a node keeps its files.
pub enum NodeDir {
    /// A temp dir of its own, removed with the node.
    Own(tempfile::TempDir),
    /// A dir someone else removes (e.g. a cluster's temp dir, which holds every node's).
    At(PathBuf),
}

/// Where the node's backups go.
pub enum Store<'a> {
    /// A local dir: `store` in the node's dir, or this one (e.g. shared by a cluster's nodes).
    Local(Option<PathBuf>),
    /// A bucket of a real S3 server, under the prefix `cluster-a/`.
    S3(&'a S3Server, String),
}

/// A node's loopback ports.
#[derive(Clone, Copy)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    /// The API server's `--secure-port`.
    pub api: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            client: free_port(),
            peer: free_port(),
            api: free_port(),
        }
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

/// How to build a test node.
pub struct NodeOpts<'a> {
    pub version: EtcdVersion,
    /// The etcd member's `--name`.
    pub name: &'static str,
    /// `None`: a fresh temp dir of the node's own.
    pub dir: Option<NodeDir>,
    /// `None`: free ones.
    pub ports: Option<Ports>,
    /// The `--initial-cluster` of a member that joins a running cluster, written as
    /// `kubeadm join` writes it (with `--initial-cluster-state=existing`). `None`: a new cluster
    /// of this member alone.
    pub joins: Option<String>,
    pub kubelet: KubeletKind,
    /// (identity file, recipient) shared with other nodes; `None`: a fresh pair in the node's dir.
    pub keys: Option<(PathBuf, String)>,
    pub store: Store<'a>,
    /// `compression: { level: N }` in the config; `None` leaves the line out (etcdsafe's default).
    pub compression_level: Option<u32>,
    /// Appended to the config, e.g. `include-files:` and its list.
    pub extra_config: String,
    /// The API server's `--etcd-servers`, when it is not the node's etcd.
    pub etcd_servers: Option<String>,
    pub anonymous_auth: bool,
    /// `apiserver_manifest(port)`, the form that names no etcd (the stand-in checks the node's
    /// etcd.yaml) and uses a shared PKI, instead of `kubeadm_apiserver_manifest`.
    pub legacy_apiserver_manifest: bool,
}

impl NodeOpts<'_> {
    pub fn new(version: EtcdVersion) -> Self {
        NodeOpts {
            version,
            name: "cp1",
            dir: None,
            ports: None,
            joins: None,
            kubelet: KubeletKind::Normal,
            keys: None,
            store: Store::Local(None),
            compression_level: Some(3),
            extra_config: String::new(),
            etcd_servers: None,
            anonymous_auth: true,
            legacy_apiserver_manifest: false,
        }
    }
}

pub struct Node {
    /// First, so it stops its pods before anything else goes.
    pub kubelet: Kubelet,
    pub version: EtcdVersion,
    pub name: &'static str,
    /// The node's dir: manifests, data dir, config, key, spool, journal.
    pub root: PathBuf,
    pub manifests: PathBuf,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub identity: PathBuf,
    pub original_etcd_yaml: String,
    pub original_apiserver_yaml: String,
    /// Last: removed after the kubelet stopped its pods.
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    pub fn new(version: EtcdVersion) -> Node {
        Self::build(NodeOpts::new(version))
    }

    /// Writes the manifests and the config, starts the kubelet and waits for etcd to be healthy.
    pub fn build(opts: NodeOpts<'_>) -> Node {
        let NodeOpts {
            version,
            name,
            dir,
            ports,
            joins,
            kubelet,
            keys,
            store,
            compression_level,
            extra_config,
            etcd_servers,
            anonymous_auth,
            legacy_apiserver_manifest,
        } = opts;
        let (root, dir) = match dir.unwrap_or_else(|| NodeDir::Own(tempfile::tempdir().unwrap())) {
            NodeDir::Own(dir) => (dir.path().to_path_buf(), Some(dir)),
            NodeDir::At(root) => (root, None),
        };
        let manifests = root.join("kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let data_dir = root.join("var-lib-etcd");
        let ports = ports.unwrap_or_else(Ports::free);
        let alone = format!("{name}={}", ports.peer_url());
        let initial_cluster = joins.as_deref().unwrap_or(&alone);
        let mut etcd_yaml = etcd_manifest(
            &version.bin("etcd"),
            name,
            ports.client,
            ports.peer,
            initial_cluster,
            &data_dir,
        );
        if joins.is_some() {
            // Right after `--initial-cluster`, as kubeadm sorts the flags.
            let line = format!("    - --initial-cluster={initial_cluster}\n");
            assert!(etcd_yaml.contains(&line), "{etcd_yaml}");
            etcd_yaml = etcd_yaml.replacen(
                &line,
                &format!("{line}    - --initial-cluster-state=existing\n"),
                1,
            );
        }
        let api_yaml = if legacy_apiserver_manifest {
            apiserver_manifest(ports.api)
        } else {
            let pki = TestPki::create(&root.join("kubernetes/pki"));
            let etcd_servers =
                etcd_servers.unwrap_or_else(|| format!("http://127.0.0.1:{}", ports.client));
            kubeadm_apiserver_manifest(&ApiServerSpec {
                port: ports.api,
                etcd_servers: Some(&etcd_servers),
                pki: &pki,
                anonymous_auth,
            })
        };
        std::fs::write(manifests.join(ETCD_YAML), &etcd_yaml).unwrap();
        std::fs::write(manifests.join(APISERVER_YAML), &api_yaml).unwrap();
        let log = root.join("kubelet.log");
        let kubelet = match kubelet {
            KubeletKind::Normal => Kubelet::start(&manifests, &log),
            KubeletKind::NeverStops => Kubelet::never_stops(&manifests, &log),
            KubeletKind::SlowToStop(delay) => Kubelet::slow_to_stop(&manifests, &log, delay),
        };
        let (identity, recipient) = keys.unwrap_or_else(|| age_keypair(&root, "key.txt"));
        let storage = match store {
            Store::Local(path) => format!(
                "storage:\n  local: {{ path: {} }}\n",
                path.unwrap_or_else(|| root.join("store")).display()
            ),
            Store::S3(server, bucket) => server.storage_yaml(&bucket, "cluster-a/", &root),
        };
        let compression = compression_level
            .map(|level| format!("compression: {{ level: {level} }}\n"))
            .unwrap_or_default();
        let config = root.join("etcdsafe.yaml");
        std::fs::write(
            &config,
            format!(
                "etcd:\n  endpoints: [http://127.0.0.1:{}]\nspool-dir: {}\n{compression}encryption:\n  recipients: [{recipient}]\n{storage}kubernetes:\n  manifests-dir: {}\n{extra_config}",
                ports.client,
                root.join("spool").display(),
                manifests.display()
            ),
        )
        .unwrap();
        let node = Node {
            kubelet,
            version,
            name,
            root,
            manifests,
            data_dir,
            client_port: ports.client,
            peer_port: ports.peer,
            api_port: ports.api,
            config,
            identity,
            original_etcd_yaml: etcd_yaml,
            original_apiserver_yaml: api_yaml,
            _dir: dir,
        };
        node.wait_healthy();
        node
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// This version's etcdctl against this node's etcd.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(self.version.bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .unwrap()
    }

    /// etcdctl that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{} etcdctl {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(&self.kubelet.log).unwrap_or_default()
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "{} not healthy: {}",
                self.name,
                self.kubelet_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Something listens on etcd's client port.
    pub fn etcd_answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
    }

    pub fn put(&self, k: &str, v: &str) {
        self.ctl_ok(&["put", k, v]);
    }

    pub fn get(&self, key: &str) -> String {
        self.ctl_ok(&["get", key, "--print-value-only"])
            .trim()
            .to_string()
    }

    /// Every key and value etcd serves (a linearizable read).
    pub fn all(&self) -> Pairs {
        pairs(&self.ctl_ok(&["get", "", "--prefix"]))
    }

    /// Every key and value this member holds itself (a serializable read).
    pub fn all_serializable(&self) -> Pairs {
        pairs(&self.ctl_ok(&["get", "", "--prefix", "--consistency=s"]))
    }

    /// `etcdsafe --config <this node's config> <args>`.
    pub fn etcdsafe(&self, args: &[&str]) -> Command {
        let mut cmd = etcdsafe();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `etcdsafe snapshot save`; the backup's id.
    pub fn backup(&self) -> String {
        run_ok(&mut self.etcdsafe(&["snapshot", "save"]))
            .trim()
            .to_string()
    }

    pub fn identity(&self) -> &str {
        self.identity.to_str().unwrap()
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join("state/journal.json")
    }

    /// Where a restore of `id` goes by default.
    pub fn target(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("{}-restored-{id}", self.data_dir.display()))
    }

    /// `etcdsafe restore <args>` with this node's journal, this version's restore tool and
    /// `--pod-timeout 60s`.
    pub fn restore(&self, args: &[&str]) -> Command {
        self.restore_within(args, "60s")
    }

    /// `restore` with another `--pod-timeout`.
    pub fn restore_within(&self, args: &[&str], pod_timeout: &str) -> Command {
        let mut cmd = self.restore_cmd(args, pod_timeout);
        cmd.arg("--etcdutl").arg(self.version.snapshot_tool());
        cmd
    }

    /// `etcdsafe restore <args>` with this node's journal and `--pod-timeout`, and no restore
    /// tool but the one `args` name.
    pub fn restore_cmd(&self, args: &[&str], pod_timeout: &str) -> Command {
        let mut cmd = self.etcdsafe(&["restore"]);
        cmd.args(args)
            .arg("--journal")
            .arg(self.journal())
            .arg("--pod-timeout")
            .arg(pod_timeout);
        cmd
    }
}

/// etcdctl's `get` output (key and value lines) as pairs.
fn pairs(text: &str) -> Pairs {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}
