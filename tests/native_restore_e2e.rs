//! `etcdsafe snapshot restore` (the native engine) against the stock tool, with real etcd
//! 3.4.23 and 3.5.1 on loopback: the same data, the same ids, the same hash; the revision bump
//! on versions whose own tools cannot do it; and corrupt inputs refused leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// A snapshot with every kind of thing etcd keeps: puts, overwrites, deletes, a compaction,
/// a key on a lease, a txn, a user and a role, values on overflow pages.
fn rich_snapshot(version: EtcdVersion, dir: &Path) -> (PathBuf, i64) {
    let cluster = EtcdCluster::start(version);
    for i in 0..50 {
        cluster.ctl(&["put", &format!("k/{i:03}"), &format!("v{i}")]);
    }
    for i in 0..10 {
        cluster.ctl(&["put", &format!("k/{i:03}"), &format!("again{i}")]);
    }
    cluster.ctl(&["del", "k/040", "k/045"]);
    let rev = head_revision(
        &cluster
            .member()
            .etcdctl(None, &["get", "k/000", "-w", "json"])
            .stdout,
    );
    cluster.ctl(&["compact", &rev.to_string()]);
    let lease = cluster.ctl(&["lease", "grant", "3600"]);
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_string();
    cluster.ctl(&["put", "leased", "x", "--lease", &lease_id]);
    let mut txn = Command::new(version.bin("etcdctl"));
    txn.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.member().client_url()))
        .args(["txn"]);
    let mut child = txn
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"value(\"k/001\") = \"again1\"\n\nput t/a 1\nput t/b 2\n\nput t/c 3\n\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    cluster.ctl(&["user", "add", "alice:secret"]);
    cluster.ctl(&["role", "add", "reader"]);
    cluster.ctl(&[
        "role",
        "grant-permission",
        "reader",
        "read",
        "k/",
        "--prefix",
    ]);
    cluster.ctl(&["user", "grant-role", "alice", "reader"]);
    let big = "B".repeat(60 * 1024);
    cluster.ctl(&["put", "big/1", &big]);
    cluster.ctl(&["put", "big/2", &big]);
    cluster.ctl(&["put", "last", "one"]);
    let rev = head_revision(
        &cluster
            .member()
            .etcdctl(None, &["get", "last", "-w", "json"])
            .stdout,
    );
    let file = dir.join(format!("rich-{}.db", version.label()));
    cluster.ctl(&["snapshot", "save", file.to_str().unwrap()]);
    (file, rev)
}

fn empty_snapshot(version: EtcdVersion, dir: &Path) -> (PathBuf, i64) {
    let cluster = EtcdCluster::start(version);
    let file = dir.join(format!("empty-{}.db", version.label()));
    cluster.ctl(&["snapshot", "save", file.to_str().unwrap()]);
    (file, 1)
}

fn head_revision(json: &[u8]) -> i64 {
    let v: Value = serde_json::from_slice(json).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

struct Flags {
    name: String,
    peer_port: u16,
    initial_cluster: String,
    token: String,
}

impl Flags {
    fn single(name: &str) -> Flags {
        let peer_port = free_port();
        Flags {
            name: name.to_string(),
            peer_port,
            initial_cluster: format!("{name}=http://127.0.0.1:{peer_port}"),
            token: "native-test".to_string(),
        }
    }

    fn args(&self, data_dir: &Path) -> Vec<String> {
        vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--name".into(),
            self.name.clone(),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{}", self.peer_port),
        ]
    }
}

fn stock_restore(version: EtcdVersion, snapshot: &Path, flags: &Flags, data_dir: &Path) {
    let out = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", snapshot.to_str().unwrap()])
        .args(flags.args(data_dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stock restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn native_restore(snapshot: &Path, flags: &Flags, data_dir: &Path, extra: &[&str]) -> Value {
    let out = run_ok(
        etcdsafe()
            .args([
                "snapshot",
                "restore",
                snapshot.to_str().unwrap(),
                "-w",
                "json",
            ])
            .args(flags.args(data_dir))
            .args(extra),
    );
    serde_json::from_str(&out).unwrap()
}

/// What a started member shows: every kv, the hashkv, members and leases.
#[derive(Debug, PartialEq)]
struct Observed {
    kvs: Value,
    revision: i64,
    hash: u64,
    members: Vec<(String, String, Value)>,
    leases: Value,
}

fn observe(m: &EtcdMember) -> Observed {
    let json = |args: &[&str]| -> Value {
        let out = m.etcdctl(None, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = json(&["get", "", "--prefix", "-w", "json"]);
    let hash = json(&["endpoint", "hashkv", "-w", "json"]);
    let members = json(&["member", "list", "-w", "json"]);
    let leases = json(&["lease", "list", "-w", "json"]);
    let mut members: Vec<(String, String, Value)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["name"].as_str().unwrap_or("").to_string(),
                m["peerURLs"].clone(),
            )
        })
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Observed {
        kvs: all["kvs"].clone(),
        revision: all["header"]["revision"].as_i64().unwrap(),
        hash: hash[0]["HashKV"]["hash"].as_u64().unwrap(),
        members,
        leases: leases["leases"].clone(),
    }
}

fn same_as_stock(version: EtcdVersion, snapshot: &Path, dir: &Path) {
    let flags = Flags::single("r0");
    let stock_dir = dir.join("stock.etcd");
    let native_dir = dir.join("native.etcd");
    stock_restore(version, snapshot, &flags, &stock_dir);
    let restored = native_restore(snapshot, &flags, &native_dir, &[]);

    // The stock tool reads the patched database, and sees the stock restore's revision and keys.
    let status = |db: &Path| -> Value {
        let out = Command::new(EtcdVersion::V3_5.bin("etcdutl"))
            .args(["snapshot", "status", "-w", "json", db.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdutl snapshot status {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let native_status = status(&native_dir.join("member/snap/db"));
    // And so does ours (the database has no trailer any more: structure and status).
    let out = run_ok(
        etcdsafe()
            .args(["snapshot", "verify", "--skip-hash-check"])
            .arg(native_dir.join("member/snap/db")),
    );
    assert!(out.contains("sound etcd database"), "{out}");
    let stock_status = status(&stock_dir.join("member/snap/db"));
    assert_eq!(native_status["revision"], stock_status["revision"]);
    let mut stock = EtcdMember::start_existing(
        version,
        "r0",
        &stock_dir,
        flags.peer_port,
        &flags.initial_cluster,
    );
    let want = observe(&stock);
    stock.stop();
    let mut native = EtcdMember::start_existing(
        version,
        "r0",
        &native_dir,
        flags.peer_port,
        &flags.initial_cluster,
    );
    let got = observe(&native);
    assert_eq!(
        got,
        want,
        "native restore differs from the stock one ({})",
        version.label()
    );
    assert_eq!(restored["member_id"].as_str().unwrap(), got.members[0].0);
    assert_eq!(restored["revision"].as_i64().unwrap(), got.revision);
    // The restored member takes writes.
    let out = native.etcdctl(None, &["put", "after", "restore", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(head_revision(&out.stdout), got.revision + 1);
    native.stop();
}

#[test]
fn a_rich_snapshot_restores_like_the_stock_tool_on_3_4() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = rich_snapshot(EtcdVersion::V3_4, dir.path());
    same_as_stock(EtcdVersion::V3_4, &snapshot, dir.path());
}

#[test]
fn a_rich_snapshot_restores_like_the_stock_tool_on_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = rich_snapshot(EtcdVersion::V3_5, dir.path());
    same_as_stock(EtcdVersion::V3_5, &snapshot, dir.path());
}

#[test]
fn an_empty_database_restores_like_the_stock_tool_on_both_versions() {
    for version in ALL_VERSIONS {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = empty_snapshot(version, dir.path());
        same_as_stock(version, &snapshot, dir.path());
    }
}

fn bump(version: EtcdVersion) {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, rev) = rich_snapshot(version, dir.path());
    let flags = Flags::single("b0");
    let data = dir.path().join("bumped.etcd");
    let restored = native_restore(
        &snapshot,
        &flags,
        &data,
        &["--bump-revision", "1000000", "--mark-compacted"],
    );
    assert_eq!(restored["snapshot_revision"].as_i64().unwrap(), rev);
    assert_eq!(restored["revision"].as_i64().unwrap(), rev + 1_000_000);
    let mut m = EtcdMember::start_existing(
        version,
        "b0",
        &data,
        flags.peer_port,
        &flags.initial_cluster,
    );
    let now = observe(&m);
    assert_eq!(now.revision, rev + 1_000_000, "the revision after the bump");
    assert_eq!(
        now.kvs.as_array().unwrap().len(),
        51,
        "every key is still there"
    );
    // Reads and watches at any older revision are refused as compacted.
    for old in [1, rev, rev + 999_999] {
        let out = m.etcdctl(None, &["get", "last", "--rev", &old.to_string()]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"),
            "get --rev {old}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let watch = Command::new("timeout")
        .args(["10"])
        .arg(version.bin("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.client_url()))
        .args(["watch", "last", "--rev", &rev.to_string()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&watch.stdout),
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(
        text.contains("required revision has been compacted"),
        "watch from {rev}: {text}"
    );
    // The next write lands above the bump.
    let out = m.etcdctl(None, &["put", "next", "write", "-w", "json"]);
    assert!(out.status.success());
    assert_eq!(head_revision(&out.stdout), rev + 1_000_001);
    m.stop();
    // And it stays there across a restart.
    m.restart(None);
    assert_eq!(observe(&m).revision, rev + 1_000_001);
}

#[test]
fn bump_revision_works_on_3_4_which_has_no_such_flag() {
    bump(EtcdVersion::V3_4);
}

#[test]
fn bump_revision_works_on_3_5_1_which_has_no_such_flag() {
    bump(EtcdVersion::V3_5);
}

#[test]
fn three_members_two_native_one_stock_form_one_cluster() {
    for version in ALL_VERSIONS {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = rich_snapshot(version, dir.path());
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("c{i}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let flags = Flags {
                name: format!("c{i}"),
                peer_port: port,
                initial_cluster: initial_cluster.clone(),
                token: "three".into(),
            };
            let data = dir.path().join(format!("c{i}.etcd"));
            if i == 2 {
                stock_restore(version, &snapshot, &flags, &data);
            } else {
                native_restore(&snapshot, &flags, &data, &[]);
            }
            members.push(EtcdMember::spawn_existing(
                version,
                &format!("c{i}"),
                &data,
                port,
                &initial_cluster,
            ));
        }
        for m in &mut members {
            m.wait_ready();
        }
        let seen: Vec<Observed> = members.iter().map(observe).collect();
        assert_eq!(seen[0].members.len(), 3, "{:?}", seen[0].members);
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0], seen[2]);
        let out = members[2].etcdctl(None, &["put", "written", "by-stock-member"]);
        assert!(out.status.success());
        let got = members[0].etcdctl(None, &["get", "written", "--print-value-only"]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            "by-stock-member"
        );
    }
}

/// Entries of `dir` (names), to prove nothing was left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn corrupt_inputs_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = rich_snapshot(EtcdVersion::V3_5, dir.path());
    let bytes = std::fs::read(&snapshot).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let flags = Flags::single("x0");
    let target = work.join("x0.etcd");

    let truncated = work.join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = work.join("flipped.db");
    // The root page's type: a page the restore must read.
    let root = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let mut f = bytes.clone();
    f[root * 4096 + 8] = 0x40;
    std::fs::write(&flipped, &f).unwrap();
    let no_trailer = work.join("no-trailer.db");
    std::fs::write(&no_trailer, &bytes[..bytes.len() - 32]).unwrap();
    let before = entries(&work);

    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (&truncated, vec![], "SHA-256 trailer"),
        (&flipped, vec![], "SHA-256"),
        (&flipped, vec!["--skip-hash-check"], "page"),
        (&no_trailer, vec![], "--skip-hash-check"),
    ];
    for (input, extra, want) in cases {
        let err = run_err(
            etcdsafe()
                .args(["snapshot", "restore", input.to_str().unwrap()])
                .args(flags.args(&target))
                .args(&extra),
        );
        assert!(err.contains(want), "{} {extra:?}: {err}", input.display());
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert_eq!(
            entries(&work),
            before,
            "nothing left behind by {}",
            input.display()
        );
    }

    // A bare db file restores with --skip-hash-check.
    native_restore(&no_trailer, &flags, &target, &["--skip-hash-check"]);
    assert!(target.join("member/snap/db").exists());

    // A non-empty target is refused, and left alone.
    let err = run_err(
        etcdsafe()
            .args(["snapshot", "restore", snapshot.to_str().unwrap()])
            .args(flags.args(&target)),
    );
    assert!(err.contains("is not empty"), "{err}");
    assert!(target.join("member/snap/db").exists());
}

#[test]
fn flag_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, _) = empty_snapshot(EtcdVersion::V3_5, dir.path());
    let target = dir.path().join("t.etcd");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--name",
                "nope",
                "--initial-cluster",
                "a=http://127.0.0.1:2380",
            ],
            "--name \"nope\" is not in --initial-cluster",
        ),
        (
            &["--mark-compacted"],
            "--mark-compacted needs --bump-revision",
        ),
        (
            &[
                "--name",
                "a",
                "--initial-cluster",
                "a=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2999",
            ],
            "--initial-advertise-peer-urls",
        ),
    ];
    for (args, want) in cases {
        let err = run_err(
            etcdsafe()
                .args([
                    "snapshot",
                    "restore",
                    snapshot.to_str().unwrap(),
                    "--data-dir",
                    target.to_str().unwrap(),
                ])
                .args(*args),
        );
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!target.exists());
    }
}

/// A PATH with no program at all: no etcd, etcdctl or etcdutl can be found on it.
fn empty_path(dir: &Path) -> PathBuf {
    let bin = dir.join("empty-bin");
    std::fs::create_dir_all(&bin).unwrap();
    bin
}

fn revision_of(id: &str) -> i64 {
    id.rsplit_once("-rev").unwrap().1.parse().unwrap()
}

/// The guided restore (kubelet harness, real etcd from the static pod manifest) with no etcd
/// binary on PATH: the native engine writes the data dir, and bumps the revision by a billion.
fn guided_restore_without_etcd_tools(version: EtcdVersion) {
    use common::node::Node;
    let node = Node::new(version);
    for i in 0..10 {
        node.put(&format!("a/{i}"), &format!("v{i}"));
    }
    let backed_up = node.all();
    let id = node.backup();
    node.put("a/0", "changed-after-backup");
    let path = empty_path(&node.root);
    let (out, err) = run_ok_both(
        node.restore_cmd(&[&id, "--identity", node.identity(), "--yes"], "60s")
            .env("PATH", &path),
    );
    assert!(!out.contains("too old to bump"), "{out}");
    assert!(out.contains("native engine"), "{out}");
    assert!(err.contains("kube-apiserver is ready"), "{err}");
    node.wait_healthy();
    assert_eq!(
        node.all(),
        backed_up,
        "exactly the backed-up keys are served"
    );
    let status: Value =
        serde_json::from_str(&node.ctl_ok(&["endpoint", "status", "-w", "json"])).unwrap();
    assert_eq!(
        status[0]["Status"]["header"]["revision"].as_i64().unwrap(),
        revision_of(&id) + 1_000_000_000,
        "the revision is bumped by the default billion"
    );
    let journal: Value =
        serde_json::from_str(&std::fs::read_to_string(node.journal()).unwrap()).unwrap();
    assert_eq!(journal["engine"], "native");
    // Reads below the bump are refused as compacted; writes land above it.
    let old = node.ctl(&["get", "a/0", "--rev", &revision_of(&id).to_string()]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));
    node.put("after", "restore");
}

#[test]
fn guided_restore_needs_no_etcd_binary_on_3_5() {
    guided_restore_without_etcd_tools(EtcdVersion::V3_5);
}

#[test]
fn guided_restore_needs_no_etcd_binary_on_3_4() {
    guided_restore_without_etcd_tools(EtcdVersion::V3_4);
}

/// `drill` restores natively (no bump: it compares the revision exactly) with only `--etcd`.
#[test]
fn drill_restores_natively_without_a_bump() {
    for version in ALL_VERSIONS {
        let cluster = EtcdCluster::start(version);
        for i in 0..20 {
            cluster.ctl(&["put", &format!("/registry/pods/ns/p{i}"), "v1"]);
        }
        cluster.ctl(&["del", "/registry/pods/ns/p7"]);
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = age_keypair(dir.path(), "key.txt");
        let config = write_config(dir.path(), &cluster, &recipient);
        let manifest: Value = serde_json::from_str(&run_ok(
            etcdsafe()
                .arg("--config")
                .arg(&config)
                .args(["snapshot", "save", "-w", "json"]),
        ))
        .unwrap();
        let out = run_ok(
            etcdsafe()
                .env("PATH", empty_path(dir.path()))
                .arg("--config")
                .arg(&config)
                .args(["drill", "latest", "-w", "json", "--identity"])
                .arg(&identity)
                .arg("--etcd")
                .arg(version.bin("etcd")),
        );
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            report["revision"],
            manifest["snapshot"]["revision"],
            "{}",
            version.label()
        );
        assert_eq!(report["liveKeys"], 19);
    }
}

/// `snapshot restore --backup`: a stored backup is fetched, decrypted, checked (signature
/// first) straight into the new data dir; a forged, damaged or undecryptable one is refused
/// leaving nothing behind.
#[test]
fn restore_from_a_stored_backup_checks_everything_first() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    for i in 0..40 {
        cluster.ctl(&[
            "put",
            &format!("/registry/pods/ns/p{i}"),
            &"x".repeat(i * 50),
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_keypair(dir.path(), "key.txt");
    let config = write_config(dir.path(), &cluster, &recipient);
    let key = dir.path().join("signing-key");
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backup@test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(
        dir.path().join("allowed_signers"),
        format!("backup@test namespaces=\"etcdsafe-backup\" {public}"),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "signing:\n  key-file: {}\n  principal: backup@test\nverification:\n  allowed-signers: {}\n",
        key.display(),
        dir.path().join("allowed_signers").display()
    ));
    std::fs::write(&config, text).unwrap();
    let manifest: Value = serde_json::from_str(&run_ok(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save", "-w", "json"]),
    ))
    .unwrap();
    let want = cluster.ctl(&["get", "", "--prefix", "-w", "json"]);
    let want: Value = serde_json::from_str(&want).unwrap();
    cluster.ctl(&["put", "/registry/pods/ns/after", "later"]);

    let work = dir.path().join("restores");
    std::fs::create_dir(&work).unwrap();
    let flags = Flags::single("s0");
    let restore = |target: &Path, identity: &Path| {
        let mut cmd = etcdsafe();
        cmd.arg("--config")
            .arg(&config)
            .args([
                "snapshot",
                "restore",
                "--backup",
                "latest",
                "-w",
                "json",
                "--identity",
            ])
            .arg(identity)
            .args(flags.args(target));
        cmd
    };
    let target = work.join("s0.etcd");
    let restored: Value = serde_json::from_str(&run_ok(&mut restore(&target, &identity))).unwrap();
    assert_eq!(restored["revision"], manifest["snapshot"]["revision"]);
    assert_eq!(
        entries(&work),
        vec!["s0.etcd".to_string()],
        "only the data dir"
    );
    let mut m = EtcdMember::start_existing(
        EtcdVersion::V3_5,
        "s0",
        &target,
        flags.peer_port,
        &flags.initial_cluster,
    );
    let got = observe(&m);
    assert_eq!(got.kvs, want["kvs"]);
    m.stop();
    std::fs::remove_dir_all(&target).unwrap();
    std::fs::remove_file(target.with_extension("log")).unwrap();

    // A key that is not the backup's: refused, nothing left.
    let (other, _) = age_keypair(dir.path(), "other.txt");
    let err = run_err(&mut restore(&target, &other));
    assert!(err.contains("decrypt") || err.contains("identity"), "{err}");
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));

    // A forged manifest (its signature no longer matches): refused before any byte is fetched.
    let manifest_path = dir
        .path()
        .join("store")
        .join(format!("{}.json", manifest["id"].as_str().unwrap()));
    let original = std::fs::read(&manifest_path).unwrap();
    let forged = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"reason\": \"manual\"", "\"reason\": \"forged\"");
    assert_ne!(
        forged.as_bytes(),
        original.as_slice(),
        "the manifest has a reason to forge"
    );
    std::fs::write(&manifest_path, forged).unwrap();
    let err = run_err(&mut restore(&target, &identity));
    assert!(err.contains("signature"), "{err}");
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));
    std::fs::write(&manifest_path, &original).unwrap();

    // A damaged object: refused, nothing left.
    let object = dir
        .path()
        .join("store")
        .join(manifest["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let err = run_err(&mut restore(&target, &identity));
    assert!(err.contains(manifest["id"].as_str().unwrap()), "{err}");
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));
}

/// A restore interrupted under the previous release (whose journal names no engine: it always
/// ran the stock tool) resumes with this one, with the stock tool, and finishes.
#[test]
fn a_journal_of_the_previous_release_resumes_with_the_stock_tool() {
    use common::node::Node;
    let node = Node::new(EtcdVersion::V3_5);
    for i in 0..10 {
        node.put(&format!("a/{i}"), &format!("v{i}"));
    }
    let backed_up = node.all();
    let id = node.backup();
    node.put("a/0", "changed-after-backup");
    let out = node
        .restore(&[&id, "--identity", node.identity(), "--yes"])
        .env(etcdsafe::restore::STOP_AFTER_ENV, "stop-pods")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(i32::from(etcdsafe::restore::EXIT_STOPPED)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Make it the journal the previous release wrote: the same, without `engine`.
    let mut journal: Value =
        serde_json::from_str(&std::fs::read_to_string(node.journal()).unwrap()).unwrap();
    assert_eq!(journal["engine"], "etcdutl");
    journal.as_object_mut().unwrap().remove("engine");
    // Through a wrapper that notes each run, to see which engine the resume uses.
    let marker = node.root.join("stock-tool-ran");
    let wrapper = node.root.join("etcdutl-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            journal["tool"].as_str().unwrap()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    journal["tool"] = Value::String(wrapper.display().to_string());
    std::fs::write(
        node.journal(),
        serde_json::to_string_pretty(&journal).unwrap(),
    )
    .unwrap();

    run_ok(&mut node.restore_cmd(&["--resume", "--yes"], "60s"));
    let ran = std::fs::read_to_string(&marker).expect("the stock tool ran");
    assert!(ran.starts_with("snapshot restore "), "{ran}");
    node.wait_healthy();
    assert_eq!(node.all(), backed_up);
    let status: Value =
        serde_json::from_str(&node.ctl_ok(&["endpoint", "status", "-w", "json"])).unwrap();
    assert_eq!(
        status[0]["Status"]["header"]["revision"].as_i64().unwrap(),
        revision_of(&id),
        "the stock 3.5.1 tool restores the revision as it was"
    );
}

/// `--wal-dir`: the WAL goes there (as etcdutl puts it: the segment files directly in it), and
/// etcd started with the same `--wal-dir` serves the snapshot.
#[test]
fn a_separate_wal_dir_is_written_like_etcdutl_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, rev) = rich_snapshot(EtcdVersion::V3_5, dir.path());
    let flags = Flags::single("w0");
    let (stock_data, stock_wal) = (dir.path().join("stock.etcd"), dir.path().join("stock.wal"));
    let (data, wal) = (
        dir.path().join("native.etcd"),
        dir.path().join("native.wal"),
    );
    let out = Command::new(EtcdVersion::V3_5.snapshot_tool())
        .args([
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--wal-dir",
            stock_wal.to_str().unwrap(),
        ])
        .args(flags.args(&stock_data))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    native_restore(
        &snapshot,
        &flags,
        &data,
        &["--wal-dir", wal.to_str().unwrap()],
    );
    assert_eq!(entries(&wal), entries(&stock_wal));
    assert_eq!(
        entries(&data.join("member")),
        entries(&stock_data.join("member"))
    );
    assert!(!data.join("member/wal").exists());

    let client = free_port();
    let log = std::fs::File::create(dir.path().join("w0.log")).unwrap();
    let mut etcd = Command::new(EtcdVersion::V3_5.bin("etcd"))
        .args([
            "--name",
            "w0",
            "--data-dir",
            data.to_str().unwrap(),
            "--wal-dir",
            wal.to_str().unwrap(),
        ])
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!(
            "--listen-peer-urls=http://127.0.0.1:{}",
            flags.peer_port
        ))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{}",
            flags.peer_port
        ))
        .arg(format!("--initial-cluster={}", flags.initial_cluster))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        Command::new(EtcdVersion::V3_5.bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{client}"))
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ctl(&["endpoint", "health"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "etcd on the --wal-dir restore did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let got = ctl(&["get", "last", "-w", "json"]);
    let _ = etcd.kill();
    let _ = etcd.wait();
    assert_eq!(head_revision(&got.stdout), rev);
}
