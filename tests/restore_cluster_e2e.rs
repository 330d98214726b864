//! `etcdsafe restore` on a three-member cluster shaped the way kubeadm builds one, with real etcd
//! (3.5.1 and 3.4.23) on loopback. Each control-plane node has its own kubelet harness
//! (`common::kubelet`: real etcd from the manifest's flags, a STAND-IN API server that only
//! answers /readyz) and its own manifests dir, all under one temp dir; the backup store is one
//! local directory shared by the nodes' configs.
//!
//! kubeadm's trap: node 1's etcd.yaml lists only itself in `--initial-cluster`, node 2's lists
//! nodes 1 and 2, node 3's all three (2 and 3 with `--initial-cluster-state=existing`). The
//! restore must use one list on every node: the membership recorded in the backup.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::node::{Node, NodeDir, NodeOpts, Pairs, Ports, Store};
use common::*;
use etcdsafe::restore::steps::ETCD_YAML;

const NAMES: [&str; 3] = ["cp1", "cp2", "cp3"];
/// The restores' `--pod-timeout` (etcd waits for a quorum of restored members within it).
const POD_TIMEOUT: &str = "120s";
/// What node 1 prints once while its member waits for the others.
const QUORUM_NOTE: &str = "runs the restored data but serves only once 2 of the 3 members do";

/// What only these tests ask of a member.
impl Node {
    /// `etcdctl member add`, retried like kubeadm retries it: etcd refuses to add a voting
    /// member until every member has been connected for a few seconds ("unhealthy cluster").
    fn member_add(&self, name: &str, peer_url: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ctl(&["member", "add", name, "--peer-urls", peer_url]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return;
            }
            assert!(
                stderr.contains("unhealthy cluster") && Instant::now() < deadline,
                "member add {name}: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(args)).unwrap()
    }
}

struct Cluster {
    nodes: Vec<Node>,
    identity: PathBuf,
    /// Last: removed after the kubelets stopped their pods.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Three control-plane nodes joined one after the other, as `kubeadm init` and
    /// `kubeadm join --control-plane` do: start cp1 alone, then for cp2 and cp3 `member add` on
    /// the running cluster and start the new member with the list it was given.
    fn kubeadm(version: EtcdVersion) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = age_keypair(dir.path(), "key.txt");
        let mut nodes: Vec<Node> = Vec::new();
        for name in NAMES {
            let ports = Ports::free();
            let peer_url = ports.peer_url();
            let joins = nodes.first().map(|first| {
                first.member_add(name, &peer_url);
                nodes
                    .iter()
                    .map(|n| format!("{}={}", n.name, n.peer_url()))
                    .chain([format!("{name}={peer_url}")])
                    .collect::<Vec<_>>()
                    .join(",")
            });
            nodes.push(Node::build(NodeOpts {
                name,
                dir: Some(NodeDir::At(dir.path().join(name))),
                ports: Some(ports),
                joins,
                keys: Some((identity.clone(), recipient.clone())),
                store: Store::Local(Some(dir.path().join("store"))),
                legacy_apiserver_manifest: true,
                ..NodeOpts::new(version)
            }));
        }
        let cluster = Cluster {
            nodes,
            identity,
            dir,
        };
        // The shape kubeadm leaves behind.
        let flag = |n: &Node, f: &str| {
            n.original_etcd_yaml.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("- --{f}="))
                    .map(str::to_string)
            })
        };
        let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
        assert_eq!(
            flag(n1, "initial-cluster").unwrap(),
            format!("cp1={}", n1.peer_url())
        );
        assert_eq!(
            flag(n2, "initial-cluster").unwrap(),
            format!("cp1={},cp2={}", n1.peer_url(), n2.peer_url())
        );
        assert_eq!(
            flag(n3, "initial-cluster").unwrap(),
            cluster.initial_cluster()
        );
        assert_eq!(flag(n1, "initial-cluster-state"), None);
        assert_eq!(
            flag(n2, "initial-cluster-state").as_deref(),
            Some("existing")
        );
        assert_eq!(
            flag(n3, "initial-cluster-state").as_deref(),
            Some("existing")
        );
        cluster.assert_one_cluster();
        cluster
    }

    /// Every member, as one `--initial-cluster`.
    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn identity(&self) -> &str {
        self.identity.to_str().unwrap()
    }

    /// The three members form one cluster: one cluster id, three distinct members, each listed
    /// by every member with its name and peer URL. Returns the cluster id.
    fn assert_one_cluster(&self) -> u64 {
        let mut cluster_ids = Vec::new();
        let mut member_ids = Vec::new();
        for node in &self.nodes {
            let status = node.json(&["endpoint", "status", "-w", "json"]);
            let header = &status[0]["Status"]["header"];
            cluster_ids.push(header["cluster_id"].as_u64().unwrap());
            member_ids.push(header["member_id"].as_u64().unwrap());
            let list = node.json(&["member", "list", "-w", "json"]);
            let mut listed: Vec<(String, Vec<String>)> = list["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["peerURLs"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|u| u.as_str().unwrap().to_string())
                            .collect(),
                    )
                })
                .collect();
            listed.sort();
            let expected: Vec<(String, Vec<String>)> = self
                .nodes
                .iter()
                .map(|n| (n.name.to_string(), vec![n.peer_url()]))
                .collect();
            assert_eq!(listed, expected, "member list on {}", node.name);
        }
        assert!(
            cluster_ids.iter().all(|c| *c == cluster_ids[0]),
            "one cluster: {cluster_ids:x?}"
        );
        member_ids.sort();
        member_ids.dedup();
        assert_eq!(member_ids.len(), 3, "three distinct members");
        cluster_ids[0]
    }
}

/// A process whose stderr is read line by line while it runs.
struct Running {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: JoinHandle<()>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdsafe");
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = BufReader::new(child.stderr.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            stdout,
            stderr,
            stderr_thread,
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` while the process still runs.
    fn wait_for_stderr(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr_so_far().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited ({status}) before printing {text:?}:\n{}",
                    self.stderr_so_far()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {within:?}:\n{}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (exit status, stdout, stderr)
    fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        let stdout = self.stdout.join().unwrap();
        self.stderr_thread.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stdout, stderr)
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The backup the tests restore.
struct Backup {
    id: String,
    /// Every key and value at the backup.
    keys: Pairs,
    revision: i64,
}

/// A kubeadm-shaped cluster with keys written through different members, a backup taken from
/// cp2's member (its manifest records all three members), and writes after the backup.
fn backed_up_cluster(version: EtcdVersion) -> (Cluster, Backup) {
    let started = Instant::now();
    let cluster = Cluster::kubeadm(version);
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    eprintln!(
        "{}: three kubeadm-shaped members up in {:?}",
        version.label(),
        started.elapsed()
    );
    for i in 0..10 {
        n1.put(&format!("a/{i}"), &format!("v{i}"));
    }
    n3.put("c/0", "from-cp3");
    let keys = n1.all();
    let id = n2.backup();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.path().join(format!("store/{id}.json"))).unwrap(),
    )
    .unwrap();
    let mut recorded: Vec<(String, String)> = manifest["etcd"]["members"]
        .as_array()
        .expect("the manifest records the membership")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["peerUrls"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    recorded.sort();
    assert_eq!(
        recorded,
        cluster
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.peer_url()))
            .collect::<Vec<_>>()
    );
    let revision = manifest["snapshot"]["revision"].as_i64().unwrap();
    // Written after the backup: gone after the restore.
    for i in 0..5 {
        n2.put(&format!("b/{i}"), "later");
    }
    n1.put("a/0", "changed-after-backup");
    (cluster, Backup { id, keys, revision })
}

/// Waits until a write made through one member is read (serializable) on every member.
fn assert_replicated(cluster: &Cluster, key: &str, value: &str) {
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = node.ctl_ok(&["get", key, "--consistency=s", "--print-value-only"]);
            if got.trim() == value {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} did not reach {}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn restore_three_members(version: EtcdVersion) {
    let started = Instant::now();
    let (cluster, backup) = backed_up_cluster(version);
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let Backup {
        id,
        keys: backed_up,
        revision,
    } = backup;

    let tool = version.snapshot_tool();
    let tool = tool.to_str().unwrap();
    let initial_cluster = cluster.initial_cluster();

    // The plan on cp1, whose etcd.yaml lists only itself: the recorded membership, and why.
    let plan = run_ok(&mut n1.restore_cmd(
        &[
            "--dry-run",
            &id,
            "--identity",
            cluster.identity(),
            "--etcdutl",
            tool,
        ],
        POD_TIMEOUT,
    ));
    assert!(
        plan.contains(&format!(
            "warning: using the membership recorded in the backup, {initial_cluster}, not etcd.yaml's --initial-cluster=cp1={}: kubeadm writes on each node only the members that existed when it joined, and every member must restore with the same list to form one cluster",
            n1.peer_url()
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "snapshot restore --name cp1 --initial-cluster {initial_cluster} --initial-cluster-token etcdsafe-restore-{id} --initial-advertise-peer-urls {} --data-dir {}",
            n1.peer_url(),
            n1.target(&id).display()
        )),
        "{plan}"
    );
    let command = format!(
        "etcdsafe restore {id} --identity {} --etcdutl {tool} --initial-cluster {initial_cluster} --yes",
        cluster.identity()
    );
    assert!(
        plan.contains(&format!(
            "on each other member (cp2 at {}, cp3 at {}), from its own node, the same restore:\n  {command}\n",
            n2.peer_url(),
            n3.peer_url()
        )),
        "{plan}"
    );
    assert!(
        plan.contains("warning: this is a 3-member cluster"),
        "{plan}"
    );
    assert!(plan.contains("dry run: nothing was changed"), "{plan}");
    assert_eq!(
        std::fs::read_to_string(n1.manifests.join(ETCD_YAML)).unwrap(),
        n1.original_etcd_yaml
    );
    assert!(!n1.journal().exists() && !n1.target(&id).exists());

    // The restore, on the three nodes at once. cp1 starts first: once its member waits for a
    // quorum it says so, once, and keeps waiting; then cp2 and cp3 start together.
    let restore = |n: &Node| {
        n.restore_cmd(
            &[
                &id,
                "--identity",
                cluster.identity(),
                "--etcdutl",
                tool,
                "--yes",
            ],
            POD_TIMEOUT,
        )
    };
    let restore_started = Instant::now();
    let mut first = Running::spawn(restore(n1));
    first.wait_for_stderr(QUORUM_NOTE, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "cp1 keeps waiting for the others:\n{}",
        first.stderr_so_far()
    );
    let others = [Running::spawn(restore(n2)), Running::spawn(restore(n3))];
    let mut outcomes = vec![first.finish()];
    outcomes.extend(others.into_iter().map(Running::finish));
    eprintln!(
        "{}: three restores done in {:?}",
        version.label(),
        restore_started.elapsed()
    );
    for (node, (status, stdout, stderr)) in cluster.nodes.iter().zip(&outcomes) {
        assert!(
            status.success(),
            "restore on {} failed ({status}):\nstdout: {stdout}\nstderr: {stderr}\nkubelet: {}",
            node.name,
            node.kubelet_log()
        );
        assert!(
            count(stderr, QUORUM_NOTE) <= 1,
            "printed once at most on {}:\n{stderr}",
            node.name
        );
        assert!(
            stderr.contains("etcd is healthy and serves the backup"),
            "{}: {stderr}",
            node.name
        );
        assert!(
            stdout.contains(&format!("restored backup {id}")),
            "{stdout}"
        );
    }
    let (_, stdout1, stderr1) = &outcomes[0];
    assert_eq!(count(stderr1, QUORUM_NOTE), 1, "{stderr1}");
    assert!(
        stderr1.contains(&format!(
            "etcd member cp1 {QUORUM_NOTE}: restore the other members now (cp2 at {}, cp3 at {}), from the same backup; on each, run:\n    {command}\nwaiting up to 2m for the quorum",
            n2.peer_url(),
            n3.peer_url()
        )),
        "{stderr1}"
    );
    assert!(
        stdout1.contains(&format!(
            "  - restore every other member that is not restored yet (cp2 at {}, cp3 at {}), from its own node, with:\n      {command}\n",
            n2.peer_url(),
            n3.peer_url()
        )),
        "{stdout1}"
    );

    // One cluster of the three restored members, each serving exactly the backup.
    let cluster_id = cluster.assert_one_cluster();
    for node in &cluster.nodes {
        let status = node.json(&["endpoint", "status", "-w", "json"]);
        assert_eq!(
            status[0]["Status"]["header"]["revision"].as_i64(),
            Some(revision),
            "{} serves the backup's revision (no bump with this etcd)",
            node.name
        );
        assert_eq!(node.all(), backed_up, "linearizable on {}", node.name);
        assert_eq!(
            node.all_serializable(),
            backed_up,
            "serializable on {}",
            node.name
        );
        assert!(
            node.data_dir.join("member").is_dir(),
            "the old data dir of {} is kept",
            node.name
        );
        assert!(node.target(&id).join("member").is_dir());
        let yaml = std::fs::read_to_string(node.manifests.join(ETCD_YAML)).unwrap();
        assert!(
            yaml.contains(&format!("--data-dir={}", node.target(&id).display())),
            "{yaml}"
        );
        assert!(!node
            .journal()
            .with_file_name(format!("restore-{id}"))
            .exists());
    }
    // A write after the restore reaches every member.
    n3.put("after/restore", "replicated");
    assert_replicated(&cluster, "after/restore", "replicated");
    assert_eq!(cluster.assert_one_cluster(), cluster_id);
    eprintln!("{}: test done in {:?}", version.label(), started.elapsed());
}

/// cp1 and cp2 restored together, then a write through the restored cluster (what the API server
/// of a restored node does at once), then cp3: its member catches up past the restored revision,
/// and its check accepts that because its data at the restored revision is exactly the backup.
/// With `compact`, the restored revision is compacted before cp3 comes (kube-apiserver compacts
/// every 5 minutes): cp3 is accepted because it answers in the restored cluster's quorum.
fn restore_one_after_another(version: EtcdVersion, compact: bool) {
    let (cluster, backup) = backed_up_cluster(version);
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let tool = version.snapshot_tool();
    let restore = |n: &Node| {
        Running::spawn(n.restore_cmd(
            &[
                &backup.id,
                "--identity",
                cluster.identity(),
                "--etcdutl",
                tool.to_str().unwrap(),
                "--yes",
            ],
            POD_TIMEOUT,
        ))
    };
    let first_two = [restore(n1), restore(n2)];
    for (node, running) in [n1, n2].into_iter().zip(first_two) {
        let (status, stdout, stderr) = running.finish();
        assert!(
            status.success(),
            "restore on {} failed ({status}):\nstdout: {stdout}\nstderr: {stderr}",
            node.name
        );
        assert!(
            stderr.contains(&format!(
                "etcd is healthy and serves the backup: revision {}, {} keys",
                backup.revision,
                backup.keys.len()
            )),
            "{stderr}"
        );
    }
    n1.put("written/before-cp3", "by-an-api-server");
    if compact {
        n1.ctl_ok(&["compact", &(backup.revision + 1).to_string()]);
    }
    let (status, stdout, stderr) = restore(n3).finish();
    assert!(
        status.success(),
        "restore on cp3 failed ({status}):\nstdout: {stdout}\nstderr: {stderr}"
    );
    if compact {
        assert!(
            stderr.contains(&format!(
                "etcd is healthy and serves the backup: revision {} (1 writes since the restored revision {}, by members already serving, which compacted it), {} keys",
                backup.revision + 1,
                backup.revision,
                backup.keys.len() + 1
            )),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains(&format!(
            "etcd is healthy and serves the backup: revision {} (1 writes since the restored revision {}, by members already serving), {} keys at revision {}",
            backup.revision + 1,
            backup.revision,
            backup.keys.len(),
            backup.revision
        )),
        "{stderr}"
    );
    }
    cluster.assert_one_cluster();
    let mut expected = backup.keys.clone();
    expected.push((
        "written/before-cp3".to_string(),
        "by-an-api-server".to_string(),
    ));
    expected.sort();
    for node in &cluster.nodes {
        assert_eq!(node.all(), expected, "linearizable on {}", node.name);
        assert_eq!(
            node.all_serializable(),
            expected,
            "serializable on {}",
            node.name
        );
        if compact {
            continue;
        }
        let at_backup = node.ctl_ok(&[
            "get",
            "",
            "--prefix",
            "--consistency=s",
            &format!("--rev={}", backup.revision),
            "--keys-only",
        ]);
        assert_eq!(
            at_backup.lines().filter(|l| !l.is_empty()).count(),
            backup.keys.len(),
            "{} at the restored revision",
            node.name
        );
    }
    n2.put("after/restore", "replicated");
    assert_replicated(&cluster, "after/restore", "replicated");
}

#[test]
fn restore_three_kubeadm_members_3_5() {
    restore_three_members(EtcdVersion::V3_5);
}

#[test]
fn restore_three_kubeadm_members_3_4() {
    restore_three_members(EtcdVersion::V3_4);
}

#[test]
fn restore_kubeadm_members_one_after_another_3_5() {
    restore_one_after_another(EtcdVersion::V3_5, false);
}

#[test]
fn restore_kubeadm_members_one_after_another_3_4() {
    restore_one_after_another(EtcdVersion::V3_4, false);
}

#[test]
fn restore_kubeadm_member_after_compaction_3_5() {
    restore_one_after_another(EtcdVersion::V3_5, true);
}
