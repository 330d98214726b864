//! Guided restore end to end on real etcd (3.5.1 and 3.4.23), with the kubelet played by a
//! harness (`common::kubelet`: real etcd from the manifest's flags, and a STAND-IN API server that
//! serves HTTPS and answers /readyz from whether its etcd answers), and backups in a local store
//! or in a real S3 server (Garage).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::node::{KubeletKind, Node, NodeOpts, Pairs, Store};
use common::s3::S3Server;
use common::*;
use etcdsafe::catalog::DATA_SUFFIX;
use etcdsafe::restore::steps::{APISERVER_YAML, ETCD_YAML};

/// The steps `ETCDSAFE_RESTORE_STOP_AFTER` can stop after (the last one, start-apiserver, is the
/// end of the restore).
const STEPS: [&str; 6] = [
    "fetch",
    "preflight",
    "stop-pods",
    "restore-data",
    "point-etcd",
    "start-etcd",
];

/// What only these tests ask of a node.
impl Node {
    /// etcd is healthy and serves exactly these keys and values.
    fn assert_serves(&self, expected: &Pairs, what: &str) {
        self.wait_healthy();
        assert_eq!(&self.all(), expected, "{what}");
    }

    /// The steps the journal records as done.
    fn journal_done(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.journal()).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        j["done"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// A restore with `ETCDSAFE_RESTORE_STOP_AFTER=<step>`: it must stop there with
    /// `EXIT_STOPPED` (3).
    fn restore_stopped_after(&self, step: &str, args: &[&str]) {
        let mut cmd = self.restore(args);
        cmd.env(etcdsafe::restore::STOP_AFTER_ENV, step);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(etcdsafe::restore::EXIT_STOPPED)),
            "stop after {step}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("stopped after step {step}")),
            "{stderr}"
        );
    }

    fn held(&self) -> PathBuf {
        self.manifests
            .parent()
            .unwrap()
            .join(etcdsafe::restore::HELD_DIR)
    }

    fn readyz_url(&self) -> String {
        format!("https://127.0.0.1:{}/readyz", self.api_port)
    }

    fn manifests_are_original(&self) {
        assert_eq!(
            std::fs::read_to_string(self.manifests.join(ETCD_YAML)).unwrap(),
            self.original_etcd_yaml
        );
        assert_eq!(
            std::fs::read_to_string(self.manifests.join(APISERVER_YAML)).unwrap(),
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
        assert_ne!(backed_up, later);
        (id, backed_up, later)
    }
}

/// Runs a command with `input` piped to its stdin (no TTY anywhere).
fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The one `error: ...` line of a failed command's stderr.
fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    lines[0]
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
    let (out, err) = run_ok_both(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(out.contains("too old to bump revisions"), "{out}");
    assert!(out.contains("watch caches"), "{out}");
    assert!(
        out.contains("restart kube-controller-manager, kube-scheduler"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "kube-apiserver is ready: GET {} answered 200",
            node.readyz_url()
        )),
        "{err}"
    );
    node.assert_serves(&backed_up, "exactly the backed-up keys are served");
    let target = node.target(&id);
    let now = std::fs::read_to_string(node.manifests.join(ETCD_YAML)).unwrap();
    assert_only_data_dir_lines_differ(&node.original_etcd_yaml, &now, &node.data_dir, &target);
    assert!(
        node.data_dir.join("member").is_dir(),
        "the old data dir is kept"
    );
    assert!(target.join("member").is_dir());
    assert_eq!(
        std::fs::read_to_string(node.manifests.join(APISERVER_YAML)).unwrap(),
        node.original_apiserver_yaml
    );
    assert!(!node.held().exists());
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
    let (other, _) = age_keypair(&node.root, "other.txt");
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
    let busy = node.root.join("busy");
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
    let object = node.root.join("store").join(format!("{id}{DATA_SUFFIX}"));
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
    let node = Node::build(NodeOpts {
        kubelet: KubeletKind::NeverStops,
        ..NodeOpts::new(EtcdVersion::V3_5)
    });
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

/// The API server's etcd is not the node's (a port nobody listens on): its /readyz answers 500
/// for ever, like a real API server that cannot reach etcd.
#[test]
fn apiserver_that_never_gets_ready_times_out_with_a_clear_error() {
    let dead_etcd = format!("http://127.0.0.1:{}", free_port());
    let node = Node::build(NodeOpts {
        etcd_servers: Some(dead_etcd.clone()),
        ..NodeOpts::new(EtcdVersion::V3_5)
    });
    let (id, backed_up, _) = node.backup_with_later_writes();

    // The library's probe, in this process, where no process-wide rustls provider is installed:
    // it reads the manifest's readinessProbe and speaks TLS to the stand-in.
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "this check needs a process without a default rustls provider"
    );
    let probe = etcdsafe::restore::readyz::Probe::from_manifest(&node.original_apiserver_yaml);
    assert_eq!(probe.url(), node.readyz_url());
    assert_eq!(
        probe.source,
        etcdsafe::restore::readyz::Source::ReadinessProbe
    );
    let err = etcdsafe::restore::readyz::wait_ready(&probe, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("last answer: HTTP 500") && err.contains("[-]etcd failed"),
        "{err}"
    );

    let started = Instant::now();
    let err =
        run_err(&mut node.restore_within(&[&id, "--identity", node.identity(), "--yes"], "5s"));
    let line = error_line(&err);
    for part in [
        "kube-apiserver is not ready after 5s",
        &format!("GET {}", node.readyz_url()),
        "the readinessProbe in kube-apiserver.yaml",
        "last answer: HTTP 500",
        "[-]etcd failed",
        &dead_etcd,
        "crictl ps --name kube-apiserver",
        "journalctl -u kubelet",
        "etcdsafe restore --resume",
        "etcdsafe restore --rollback",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert!(started.elapsed() < Duration::from_secs(40));
    // etcd itself was restored; the journal waits at the API server.
    node.assert_serves(&backed_up, "etcd serves the backup");
    assert!(!node.journal_done().contains(&"start-apiserver".to_string()));
    assert!(node.journal_done().contains(&"start-etcd".to_string()));
    assert_eq!(
        std::fs::read_to_string(node.manifests.join(APISERVER_YAML)).unwrap(),
        node.original_apiserver_yaml,
        "the API server's manifest is back in place"
    );
}

/// An API server that refuses anonymous requests (`--anonymous-auth=false`) answers the probe
/// with 401: up, but its readiness cannot be checked; the restore says so and completes.
#[test]
fn apiserver_refusing_anonymous_readyz_counts_as_up_with_a_note() {
    let node = Node::build(NodeOpts {
        anonymous_auth: false,
        ..NodeOpts::new(EtcdVersion::V3_5)
    });
    let (id, backed_up, _) = node.backup_with_later_writes();
    let (_, err) = run_ok_both(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(
        err.contains(&format!(
            "note: kube-apiserver answers on {} but refuses anonymous requests (HTTP 401)",
            node.readyz_url()
        )),
        "{err}"
    );
    assert!(err.contains("needs anonymous access"), "{err}");
    node.assert_serves(&backed_up, "restored");
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn swap_restores_in_place_and_rolls_back_3_5() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, backed_up, later) = node.backup_with_later_writes();
    let target = node.root.join("restored-swap");
    let aside = PathBuf::from(format!("{}.etcdsafe-old-{id}", node.data_dir.display()));
    let original_inode = inode(&node.data_dir);
    let out = run_ok(&mut node.restore(&[
        &id,
        "--identity",
        node.identity(),
        "--yes",
        "--swap",
        "--data-dir",
        target.to_str().unwrap(),
    ]));
    assert!(
        out.contains(&format!("into {}", node.data_dir.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("kept at {}", aside.display())),
        "{out}"
    );
    node.manifests_are_original();
    assert!(
        !target.exists(),
        "the restored dir took the old one's place"
    );
    assert!(
        aside.join("member").is_dir(),
        "the old data dir is renamed aside"
    );
    assert_eq!(
        inode(&aside),
        original_inode,
        "aside is the original data dir"
    );
    let restored_inode = inode(&node.data_dir);
    assert_ne!(restored_inode, original_inode);
    assert!(node.data_dir.join("member").is_dir());
    node.assert_serves(&backed_up, "exactly the backed-up keys are served");

    run_ok(&mut node.restore(&["--rollback"]));
    node.manifests_are_original();
    assert!(!aside.exists());
    assert_eq!(
        inode(&node.data_dir),
        original_inode,
        "the original data is back in place"
    );
    assert_eq!(
        inode(&target),
        restored_inode,
        "the restored data is kept at the target"
    );
    node.assert_serves(&later, "every write after the backup is served again");
}

/// Answers are read line by line from a pipe: "n" at the first destructive step changes nothing
/// on the node; `--resume` with "y" to every prompt completes the restore.
#[test]
fn guided_restore_reads_answers_from_a_pipe() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, backed_up, later) = node.backup_with_later_writes();
    let out = run_with_input(
        &mut node.restore(&[&id, "--identity", node.identity()]),
        "n\ny\ny\ny\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}");
    assert!(stdout.contains("restore plan for backup"), "{stdout}");
    assert_eq!(stderr.matches("proceed with step").count(), 1, "{stderr}");
    assert!(
        stderr.contains("proceed with step stop-pods? [y/N] n\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped before step stop-pods")
            && stderr.contains("etcdsafe restore --resume")
            && stderr.contains("etcdsafe restore --rollback"),
        "{stderr}"
    );
    node.manifests_are_original();
    assert!(!node.held().exists());
    assert!(!node.target(&id).exists());
    assert_eq!(node.all(), later, "etcd still serves the later writes");
    assert_eq!(node.journal_done(), ["fetch", "preflight"]);

    let out = run_with_input(&mut node.restore(&["--resume"]), "y\ny\nyes\nY\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for step in ["stop-pods", "point-etcd", "start-etcd", "start-apiserver"] {
        assert!(
            stderr.contains(&format!("proceed with step {step}? [y/N] ")),
            "{step}: {stderr}"
        );
    }
    assert_eq!(stderr.matches("proceed with step").count(), 4, "{stderr}");
    node.assert_serves(&backed_up, "restored");
    assert_eq!(node.journal_done().len(), 7);

    // End of input is a no.
    run_ok(&mut node.restore(&["--rollback"]));
    let out = run_with_input(
        &mut node.restore(&[
            &id,
            "--identity",
            node.identity(),
            "--data-dir",
            node.root.join("t2").to_str().unwrap(),
        ]),
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("(end of input: no)"), "{stderr}");
    node.manifests_are_original();
    assert_eq!(node.all(), later);
}

/// What the node looks like right after the restore stopped after `step` (into `target`).
/// Restores `id` into `restored-<i>`, stopped after `step`; checks the state it leaves and
/// returns the target dir.
fn stop_after_step(
    node: &Node,
    i: usize,
    step: &str,
    id: &str,
    backed_up: &Pairs,
    later: &Pairs,
) -> PathBuf {
    let target = node.root.join(format!("restored-{i}"));
    let target_arg = target.to_str().unwrap();
    node.restore_stopped_after(
        step,
        &[
            id,
            "--identity",
            node.identity(),
            "--yes",
            "--data-dir",
            target_arg,
        ],
    );
    check_stopped_state(node, step, &target, backed_up, later);
    target
}

fn check_stopped_state(node: &Node, step: &str, target: &Path, backed_up: &Pairs, later: &Pairs) {
    let live_etcd = node.manifests.join(ETCD_YAML);
    let held_etcd = node.held().join(ETCD_YAML);
    match step {
        "fetch" | "preflight" => {
            node.manifests_are_original();
            assert!(!target.exists(), "{step}");
            assert_eq!(&node.all(), later, "{step}: etcd is untouched");
        }
        "stop-pods" | "restore-data" | "point-etcd" => {
            assert!(!live_etcd.exists() && held_etcd.exists(), "{step}");
            assert!(!node.manifests.join(APISERVER_YAML).exists(), "{step}");
            assert!(!node.etcd_answers(), "{step}: etcd is stopped");
            assert_eq!(
                target.join("member").is_dir(),
                step != "stop-pods",
                "{step}"
            );
            let held = std::fs::read_to_string(&held_etcd).unwrap();
            if step == "point-etcd" {
                assert_only_data_dir_lines_differ(
                    &node.original_etcd_yaml,
                    &held,
                    &node.data_dir,
                    target,
                );
            } else {
                assert_eq!(held, node.original_etcd_yaml, "{step}");
            }
        }
        "start-etcd" => {
            assert!(live_etcd.exists() && !held_etcd.exists(), "{step}");
            assert!(node.held().join(APISERVER_YAML).exists(), "{step}");
            node.assert_serves(backed_up, "start-etcd: etcd serves the backup");
        }
        _ => unreachable!(),
    }
}

/// Stopped after each step in turn, `--resume` completes the restore. One node for all steps:
/// each completed restore is rolled back before the next (which checks that rollback, too).
#[test]
fn interrupted_after_each_step_resumes() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, backed_up, later) = node.backup_with_later_writes();
    for (i, step) in STEPS.iter().enumerate() {
        let target = stop_after_step(&node, i, step, &id, &backed_up, &later);
        if i == 0 {
            let err = run_err(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
            assert!(
                err.contains("is in progress") && err.contains("--resume"),
                "{err}"
            );
        }
        let (_, err) = run_ok_both(&mut node.restore(&["--resume", "--yes"]));
        let next = STEPS.get(i + 1).copied().unwrap_or("start-apiserver");
        assert!(err.contains(&format!("at step {next}")), "{step}: {err}");
        node.assert_serves(&backed_up, &format!("resumed after {step}"));
        let now = std::fs::read_to_string(node.manifests.join(ETCD_YAML)).unwrap();
        assert_only_data_dir_lines_differ(&node.original_etcd_yaml, &now, &node.data_dir, &target);
        assert_eq!(
            std::fs::read_to_string(node.manifests.join(APISERVER_YAML)).unwrap(),
            node.original_apiserver_yaml
        );
        assert!(!node.held().exists(), "{step}");
        assert_eq!(node.journal_done().len(), 7, "{step}");
        let err = run_err(&mut node.restore(&["--resume", "--yes"]));
        assert!(err.contains("already complete"), "{err}");

        run_ok(&mut node.restore(&["--rollback"]));
        node.manifests_are_original();
        node.assert_serves(&later, &format!("rolled back after resuming from {step}"));
    }
}

/// Stopped after each step in turn, `--rollback` returns the original manifests byte for byte
/// and the original data with nothing lost. One node (3.4) for all steps.
#[test]
fn interrupted_after_each_step_rolls_back() {
    let node = Node::new(EtcdVersion::V3_4);
    let (id, backed_up, later) = node.backup_with_later_writes();
    for (i, step) in STEPS.iter().enumerate() {
        let target = stop_after_step(&node, i, step, &id, &backed_up, &later);
        let out = run_ok(&mut node.restore(&["--rollback"]));
        assert!(out.contains("rolled back the restore"), "{out}");
        node.manifests_are_original();
        assert!(!node.held().join(ETCD_YAML).exists(), "{step}");
        node.assert_serves(&later, &format!("rolled back after {step}: nothing lost"));
        let restored = !matches!(*step, "fetch" | "preflight" | "stop-pods");
        assert_eq!(
            target.join("member").is_dir(),
            restored,
            "{step}: a restored dir is kept aside"
        );
        assert!(
            !node.root.join(format!("state/restore-{id}")).exists(),
            "{step}: the work dir is removed"
        );
        let out = run_ok(&mut node.restore(&["--rollback"]));
        assert!(out.contains("already rolled back"), "{out}");
    }
}

/// Waits until the restore moved etcd.yaml out (it is now waiting for the pod to stop, which
/// this kubelet does only seconds later), then SIGKILLs it.
fn kill_while_waiting_for_pods(node: &Node, args: &[&str]) {
    let mut child = node
        .restore(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.held().join(ETCD_YAML).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended early"
        );
        assert!(
            Instant::now() < deadline,
            "the restore never stopped the pods"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        node.etcd_answers(),
        "etcd is still running: the restore is mid-step"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(node.journal_done(), ["fetch", "preflight"]);
    assert!(!node.manifests.join(ETCD_YAML).exists());
}

#[test]
fn killed_mid_step_resumes_and_rolls_back() {
    let node = Node::build(NodeOpts {
        kubelet: KubeletKind::SlowToStop(Duration::from_secs(3)),
        ..NodeOpts::new(EtcdVersion::V3_5)
    });
    let (id, backed_up, later) = node.backup_with_later_writes();
    let t1 = node.root.join("restored-1");
    kill_while_waiting_for_pods(
        &node,
        &[
            &id,
            "--identity",
            node.identity(),
            "--yes",
            "--data-dir",
            t1.to_str().unwrap(),
        ],
    );
    run_ok(&mut node.restore(&["--resume", "--yes"]));
    node.assert_serves(&backed_up, "resumed after SIGKILL");
    run_ok(&mut node.restore(&["--rollback"]));
    node.manifests_are_original();
    node.assert_serves(&later, "rolled back the resumed restore");

    let t2 = node.root.join("restored-2");
    kill_while_waiting_for_pods(
        &node,
        &[
            &id,
            "--identity",
            node.identity(),
            "--yes",
            "--data-dir",
            t2.to_str().unwrap(),
        ],
    );
    run_ok(&mut node.restore(&["--rollback"]));
    node.manifests_are_original();
    node.assert_serves(&later, "rolled back after SIGKILL: nothing lost");
    assert!(!t2.exists());
}

/// Also the old `apiserver_manifest(port)` (other tests use it): its stand-in checks the node's
/// etcd, so it is ready after the restore and after the rollback.
#[test]
fn completed_restore_rolls_back() {
    let node = Node::build(NodeOpts {
        legacy_apiserver_manifest: true,
        ..NodeOpts::new(EtcdVersion::V3_4)
    });
    assert!(!node.original_apiserver_yaml.contains("--etcd-servers"));
    let (id, backed_up, later) = node.backup_with_later_writes();
    let (_, err) = run_ok_both(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    assert!(
        err.contains(&format!("GET {} answered 200", node.readyz_url())),
        "{err}"
    );
    node.assert_serves(&backed_up, "restored");
    let (_, err) = run_ok_both(&mut node.restore(&["--rollback"]));
    assert!(
        err.contains(&format!("GET {} answered 200", node.readyz_url())),
        "{err}"
    );
    node.manifests_are_original();
    node.assert_serves(&later, "rolled back");
}

/// The scenario: write keys, back up to S3 (Garage, a fresh bucket), write more keys,
/// restore, and exactly the backed-up keys are served.
fn restore_from_s3(version: EtcdVersion) {
    let s3 = S3Server::garage();
    let bucket = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(s3.fresh_bucket(false));
    let node = Node::build(NodeOpts {
        store: Store::S3(&s3, bucket.clone()),
        ..NodeOpts::new(version)
    });
    let (id, backed_up, later) = node.backup_with_later_writes();
    let keys: Vec<String> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let listed = s3
            .client()
            .await
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    });
    assert!(
        keys.contains(&format!("cluster-a/{id}{DATA_SUFFIX}"))
            && keys.contains(&format!("cluster-a/{id}.json")),
        "the backup is in the bucket: {keys:?}"
    );
    assert!(!node.root.join("store").exists(), "nothing stored locally");
    assert_eq!(node.all(), later);
    run_ok(&mut node.restore(&[&id, "--identity", node.identity(), "--yes"]));
    node.assert_serves(&backed_up, "exactly the backed-up keys are served");
    let listing = run_ok(&mut node.restore(&["--list"]));
    assert!(listing.contains(&id), "{listing}");
}

#[test]
fn restore_from_s3_3_5() {
    restore_from_s3(EtcdVersion::V3_5);
}

#[test]
fn restore_from_s3_3_4() {
    restore_from_s3(EtcdVersion::V3_4);
}

#[test]
fn an_etcd_still_on_the_old_data_is_caught() {
    let node = Node::new(EtcdVersion::V3_5);
    let (id, _, _) = node.backup_with_later_writes();
    node.restore_stopped_after("point-etcd", &[&id, "--identity", node.identity(), "--yes"]);
    // Someone puts the original etcd.yaml back into the holding dir: etcd would start on the
    // old data dir, as the old cluster.
    let held = node
        .manifests
        .parent()
        .unwrap()
        .join(etcdsafe::restore::HELD_DIR)
        .join(ETCD_YAML);
    std::fs::write(&held, &node.original_etcd_yaml).unwrap();
    let err = run_err(&mut node.restore(&["--resume", "--yes"]));
    assert!(
        err.contains("still belongs to the backed-up cluster"),
        "{err}"
    );
}
