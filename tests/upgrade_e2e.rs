//! `etcdsafe upgrade` end to end on real etcd: the pre-upgrade backup is stored (and verified)
//! before a stand-in upgrade command starts, the command's exit code becomes etcdsafe's and is
//! recorded on the backup, and nothing runs when etcd, the store or the version-skew policy say
//! no. Also: reading the control-plane version from a kubeadm manifest and from a local HTTP
//! stand-in for the API server's `/version`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::apiserver::{write_kubeconfig, ApiServerStandIn};
use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, MANIFEST_SUFFIX};
use etcdsafe::upgrade::version::{self, Version, VersionSource, APISERVER_MANIFEST};
use serde_json::Value;

/// The crate's code for "the upgrade command was NOT run" (4; it was 2, clap's usage code).
const EXIT_NOT_RUN: i32 = etcdsafe::upgrade::EXIT_NOT_RUN as i32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade")
        .join(name)
}

/// The kubeadm v1.23 manifest fixture with another image line.
fn manifest_with_image(image: &str) -> String {
    let text = std::fs::read_to_string(fixture(APISERVER_MANIFEST)).unwrap();
    assert!(text.contains("    image: k8s.gcr.io/kube-apiserver:v1.23.2\n"));
    text.replace(
        "    image: k8s.gcr.io/kube-apiserver:v1.23.2\n",
        &format!("    image: {image}\n"),
    )
}

/// A config against `cluster` whose manifests dir holds the kubeadm fixture (v1.23.2), and the
/// stand-in installed as `kubeadm` in a bin dir.
fn upgrade_env(cluster: EtcdCluster) -> Env {
    let env = Env::with_cluster(cluster);
    let manifests = env.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::copy(
        fixture(APISERVER_MANIFEST),
        manifests.join(APISERVER_MANIFEST),
    )
    .unwrap();
    env.add_config(&format!(
        "kubernetes:\n  manifests-dir: {}\n",
        manifests.display()
    ));

    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(fixture("upgrade-stand-in.sh"), bin.join("kubeadm")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("kubeadm"), std::fs::Permissions::from_mode(0o755)).unwrap();
    env
}

/// This file's helpers on the common [`Env`].
impl Env {
    fn set_apiserver_image(&self, image: &str) {
        std::fs::write(
            self.path().join("manifests").join(APISERVER_MANIFEST),
            manifest_with_image(image),
        )
        .unwrap();
    }

    fn record(&self) -> PathBuf {
        self.path().join("record")
    }

    fn ran(&self) -> bool {
        self.record().join("ran").exists()
    }

    /// `etcdsafe --config … upgrade ARGS`, with the stand-in first on PATH and told where to
    /// record and how to exit; etcdsafe must exit with `expect`.
    fn upgrade(&self, args: &[&str], stand_in_exit: i32, expect: i32) -> Output {
        let path = format!(
            "{}:{}",
            self.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = self
            .cmd(&["upgrade"])
            .args(args)
            .env("PATH", path)
            .env("STAND_IN_RECORD", self.record())
            .env("STAND_IN_STORE", self.store())
            .env("STAND_IN_EXIT", stand_in_exit.to_string())
            .output()
            .expect("run etcdsafe upgrade");
        assert_eq!(
            out.status.code(),
            Some(expect),
            "etcdsafe upgrade {args:?}:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn manifests(&self) -> Vec<Value> {
        files_in(&self.store())
            .iter()
            .filter(|f| f.ends_with(MANIFEST_SUFFIX))
            .map(|f| serde_json::from_slice(&std::fs::read(self.store().join(f)).unwrap()).unwrap())
            .collect()
    }
}

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the run was refused before anything happened: exit EXIT_NOT_RUN, one `error:` line containing
/// every `needle`, no backup, no command.
fn assert_refused(env: &Env, out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(EXIT_NOT_RUN),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(
        stderr.contains("the upgrade command was not run"),
        "{stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(!env.ran(), "the upgrade command must not run");
    assert!(
        files_in(&env.store()).is_empty(),
        "no backup: {:?}",
        files_in(&env.store())
    );
    stderr
}

#[test]
fn backup_is_stored_before_the_command_runs_and_its_exit_code_is_ours() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    env.cluster
        .ctl(&["put", "/registry/pods/default/web-0", "pod"]);
    let out = env.upgrade(&["--", "kubeadm", "upgrade", "apply", "v1.23.3"], 3, 3);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's exit code: {stderr}"
    );
    assert!(env.ran(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(env.record().join("args")).unwrap(),
        "upgrade apply v1.23.3\n"
    );

    // When the command started, the backup's manifest was already in the store, and said so.
    let at_start = std::fs::read_to_string(env.record().join("manifests-at-start")).unwrap();
    let at_start: Vec<&str> = at_start.lines().collect();
    assert_eq!(
        at_start.len(),
        1,
        "exactly one manifest at start: {at_start:?}"
    );
    let before: Value = serde_json::from_slice(
        &std::fs::read(env.record().join(format!("at-start-{}", at_start[0]))).unwrap(),
    )
    .unwrap();
    assert_eq!(before["reason"], etcdsafe::upgrade::REASON);
    assert_eq!(before["labels"]["from"], "v1.23.2");
    assert_eq!(before["labels"]["to"], "v1.23.3");
    assert_eq!(
        before["labels"]["upgrade-command"],
        "kubeadm upgrade apply v1.23.3"
    );
    assert!(before["labels"].get("upgrade-exit-code").is_none());
    let id = before["id"].as_str().unwrap().to_string();
    assert!(
        files_in(&env.store()).contains(&format!("{id}{DATA_SUFFIX}")),
        "the data object is stored"
    );
    assert!(
        before["snapshot"]["totalKey"].as_u64().unwrap() >= 1,
        "a verified snapshot"
    );
    let created = chrono::DateTime::parse_from_rfc3339(before["createdAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    let started: f64 = std::fs::read_to_string(env.record().join("started-at"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        created <= started,
        "backup at {created}, command at {started}"
    );

    // Afterwards the same manifest carries the outcome, and `backups list` shows it.
    let listed: Value =
        serde_json::from_str(&env.run_ok(&["backups", "list", "-w", "json"])).unwrap();
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1);
    let labels = &backups[0]["labels"];
    assert_eq!(backups[0]["id"], id.as_str());
    assert_eq!(labels["upgrade-exit-code"], "3");
    assert_eq!(labels["upgrade-command"], "kubeadm upgrade apply v1.23.3");
    assert_eq!(labels["from"], "v1.23.2");
    let seconds: f64 = labels["upgrade-duration-seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..60.0).contains(&seconds), "{seconds}");
    assert!(stderr.contains(&id), "names the backup: {stderr}");
    assert!(files_in(&env.spool()).is_empty(), "spool cleaned up");
}

#[test]
fn a_successful_upgrade_on_etcd_3_4_exits_zero() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_4));
    env.upgrade(
        &[
            "--to", "v1.24.0", "--", "kubeadm", "upgrade", "apply", "1.24.0", "-y",
        ],
        0,
        0,
    );
    assert!(env.ran());
    let manifests = env.manifests();
    assert_eq!(manifests.len(), 1);
    let labels = &manifests[0]["labels"];
    assert_eq!(labels["from"], "v1.23.2");
    assert_eq!(labels["to"], "v1.24.0");
    assert_eq!(labels["upgrade-exit-code"], "0");
    assert_eq!(labels["upgrade-command"], "kubeadm upgrade apply 1.24.0");
    assert!(manifests[0]["etcd"]["version"]
        .as_str()
        .unwrap()
        .starts_with("3.4"));
}

#[test]
fn etcd_down_means_no_backup_and_no_command() {
    let mut env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    env.cluster.members[0].stop();
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    let url = env.cluster.member().client_url();
    assert_refused(&env, &out, &["etcd health", "cannot reach etcd", &url]);
}

#[test]
fn unreachable_store_means_no_command() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    // The store path is a regular file: the directory cannot be created or written.
    std::fs::write(env.store(), b"not a directory").unwrap();
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_NOT_RUN), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(
        stderr.starts_with("error: preflight failed, the upgrade command was not run: store: "),
        "{stderr}"
    );
    assert!(
        stderr.contains(&env.store().display().to_string()),
        "{stderr}"
    );
    assert!(!env.ran());
    assert_eq!(std::fs::read(env.store()).unwrap(), b"not a directory");
    assert!(files_in(&env.spool()).is_empty());
}

#[test]
fn a_failed_backup_means_no_command() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    // Every check passes, but the pipeline cannot create its spool dir: the backup fails.
    std::fs::write(env.spool(), b"not a directory").unwrap();
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(
        &env,
        &out,
        &[
            "error: the pre-upgrade backup failed (spool stage)",
            &env.spool().display().to_string(),
        ],
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    // A typo in the command costs no backup.
    let out = env.upgrade(
        &["--", "kubeadmm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(&env, &out, &["command: kubeadmm: not found on PATH"]);

    let out = env.upgrade(
        &[
            "--to",
            "v1.23.3",
            "--dry-run",
            "--",
            "kubeadm",
            "upgrade",
            "apply",
            "v1.23.3",
        ],
        0,
        0,
    );
    let stdout = text(&out.stdout);
    for needle in [
        "dry run: nothing was changed",
        "ok     current version  v1.23.2 (image k8s.gcr.io/kube-apiserver:v1.23.2 in ",
        "ok     target version   v1.23.3 (from --to)",
        "ok     version skew     v1.23.2 -> v1.23.3: a patch upgrade",
        "ok     etcd health      1/1 members answer (m0 ",
        "no alarms",
        "ok     store            local:",
        "ok     spool space",
        "reason: pre-upgrade",
        "labels: from=v1.23.2, to=v1.23.3, upgrade-command=kubeadm upgrade apply v1.23.3",
        "command: kubeadm upgrade apply v1.23.3",
        "ready:",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let found = format!(
        "ok     command          {}\n",
        env.path().join("bin/kubeadm").display()
    );
    assert!(stdout.contains(&found), "{found:?} missing from:\n{stdout}");
    assert!(!env.ran(), "the command must not run in a dry run");
    assert!(files_in(&env.store()).is_empty(), "no backup in a dry run");
    assert!(!env.spool().exists(), "no spool dir in a dry run");

    // A dry run that would be refused says so, and exits as the real run would.
    let out = env.upgrade(
        &["--dry-run", "--", "kubeadm", "upgrade", "apply", "v1.25.0"],
        0,
        EXIT_NOT_RUN,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_NOT_RUN), "{stdout}");
    assert!(stdout.contains("FAILED version skew"), "{stdout}");
    assert!(stdout.contains("refused: 1 check(s) failed"), "{stdout}");
    assert!(!env.ran());
    assert!(files_in(&env.store()).is_empty());
}

#[test]
fn skipping_a_minor_is_refused_unless_skip_version_check() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    env.set_apiserver_image("registry.k8s.io/kube-apiserver:v1.22.5@sha256:4d8a0b7e5c9f7d6b2c1a0e9f8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c");
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.24.0"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(
        &env,
        &out,
        &["kubeadm upgrades one minor version at a time: v1.22.5 -> v1.24.0 skips v1.23; see https://kubernetes.io/releases/version-skew-policy/ — or pass --skip-version-check"],
    );

    // A downgrade is refused too.
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.22.4"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(&env, &out, &["v1.22.5 -> v1.22.4 is a downgrade"]);

    env.upgrade(
        &[
            "--skip-version-check",
            "--",
            "kubeadm",
            "upgrade",
            "apply",
            "v1.24.0",
        ],
        0,
        0,
    );
    assert!(env.ran());
    let manifests = env.manifests();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["labels"]["from"], "v1.22.5");
    assert_eq!(manifests[0]["labels"]["to"], "v1.24.0");
    assert_eq!(manifests[0]["labels"]["upgrade-exit-code"], "0");
}

#[test]
fn unknown_current_version_says_where_it_looked() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    let manifest = env.path().join("manifests").join(APISERVER_MANIFEST);
    std::fs::remove_file(&manifest).unwrap();
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(
        &env,
        &out,
        &[
            "current version: not found: cannot read",
            &manifest.display().to_string(),
            "--skip-version-check",
        ],
    );

    // Any command, no versions anywhere: allowed with --skip-version-check, labelled unknown.
    env.upgrade(
        &["--skip-version-check", "--", "kubeadm", "upgrade", "node"],
        0,
        0,
    );
    assert!(env.ran());
    let manifests = env.manifests();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["labels"]["from"], "unknown");
    assert_eq!(manifests[0]["labels"]["to"], "unknown");
    assert_eq!(
        manifests[0]["labels"]["upgrade-command"],
        "kubeadm upgrade node"
    );
}

#[test]
fn three_members_with_one_stopped_is_refused_naming_it() {
    let mut env = upgrade_env(EtcdCluster::start_with(EtcdVersion::V3_5, 3, false));
    let out = env.upgrade(
        &["--dry-run", "--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        0,
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3/3 members answer"), "{stdout}");
    for m in &env.cluster.members {
        assert!(stdout.contains(&m.client_url()), "{stdout}");
    }

    env.cluster.members[2].stop();
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    let url = env.cluster.members[2].client_url();
    let stderr = assert_refused(&env, &out, &["member m2 (", "does not answer Status", &url]);
    for m in &env.cluster.members[..2] {
        assert!(
            !stderr.contains(&format!("member {} (", m.name)),
            "{stderr}"
        );
    }
}

#[test]
fn a_raised_alarm_is_refused_naming_it() {
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    let url = env.cluster.member().client_url();
    let alarm = |action: etcd_client::AlarmAction| {
        let url = url.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut client = etcd_client::Client::connect([url], None).await.unwrap();
                let member = client.status().await.unwrap().header().unwrap().member_id();
                let mut options = etcd_client::AlarmOptions::new();
                options.with_member(member);
                client
                    .alarm(action, etcd_client::AlarmType::Nospace, Some(options))
                    .await
                    .unwrap();
            })
    };
    alarm(etcd_client::AlarmAction::Activate);
    let out = env.upgrade(
        &["--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        EXIT_NOT_RUN,
    );
    assert_refused(
        &env,
        &out,
        &["alarm NOSPACE on member m0", "etcdctl alarm disarm"],
    );

    alarm(etcd_client::AlarmAction::Deactivate);
    let out = env.upgrade(
        &["--dry-run", "--", "kubeadm", "upgrade", "apply", "v1.23.3"],
        0,
        0,
    );
    assert!(text(&out.stdout).contains("no alarms"));
}

#[test]
fn version_from_the_kubeadm_manifest_fixture() {
    let (found, source) = version::version_from_manifest(&fixture(APISERVER_MANIFEST)).unwrap();
    assert_eq!(found, Version::new(1, 23, 2));
    assert_eq!(
        source,
        VersionSource::Manifest {
            path: fixture(APISERVER_MANIFEST),
            image: "k8s.gcr.io/kube-apiserver:v1.23.2".to_string(),
        }
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(APISERVER_MANIFEST);
    for (image, want) in [
        (
            "registry.k8s.io/kube-apiserver:v1.24.0-rc.1@sha256:7b2d3e1f0a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
            "v1.24.0-rc.1",
        ),
        ("localhost:5000/mirror/kube-apiserver:v1.23.17", "v1.23.17"),
    ] {
        std::fs::write(&path, manifest_with_image(image)).unwrap();
        let (found, _) = version::version_from_manifest(&path).unwrap();
        assert_eq!(found.to_string(), want, "{image}");
    }
    std::fs::write(
        &path,
        manifest_with_image("k8s.gcr.io/kube-apiserver:latest"),
    )
    .unwrap();
    let err = version::version_from_manifest(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"latest\" is not a Kubernetes version"),
        "{err}"
    );
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn version_from_apiserver_stand_in() {
    let stand_in = ApiServerStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("admin.conf");
    write_kubeconfig(&kubeconfig, &stand_in.url);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (found, source) = runtime
        .block_on(version::version_from_apiserver(
            &kubeconfig,
            std::time::Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(found, Version::new(1, 23, 2));
    assert_eq!(
        source,
        VersionSource::ApiServer {
            kubeconfig: kubeconfig.clone(),
            server: stand_in.url.clone(),
            git_version: "v1.23.2".to_string(),
        }
    );
    assert_eq!(stand_in.version_hits(), 1);
    assert_eq!(
        stand_in.authorization().as_deref(),
        Some("Bearer stand-in-token")
    );

    // Nothing listening: the error names the server and the kubeconfig.
    let closed = format!("http://127.0.0.1:{}", free_port());
    write_kubeconfig(&kubeconfig, &closed);
    let err = runtime
        .block_on(version::version_from_apiserver(
            &kubeconfig,
            std::time::Duration::from_secs(5),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&closed), "{err}");
    assert!(err.contains("admin.conf"), "{err}");
}

#[test]
fn apiserver_stand_in_version_wins_over_the_manifest_and_the_manifest_is_the_fallback() {
    let stand_in = ApiServerStandIn::start();
    let env = upgrade_env(EtcdCluster::start(EtcdVersion::V3_5));
    // This node's manifest says v1.22.5; the API server (stand-in) says v1.23.2.
    env.set_apiserver_image("k8s.gcr.io/kube-apiserver:v1.22.5");
    let kubeconfig = env.path().join("admin.conf");
    write_kubeconfig(&kubeconfig, &stand_in.url);
    env.add_config(&format!("  kubeconfig: {}\n", kubeconfig.display()));

    let out = env.upgrade(
        &["--dry-run", "--", "kubeadm", "upgrade", "apply", "v1.24.0"],
        0,
        0,
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "current version  v1.23.2 (gitVersion v1.23.2 from {}/version",
            stand_in.url
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("v1.23.2 -> v1.24.0: one minor version up"),
        "{stdout}"
    );
    assert!(stand_in.version_hits() >= 1);

    // The API server does not answer: the manifest (v1.22.5) is used, so v1.24.0 skips v1.23.
    write_kubeconfig(&kubeconfig, &format!("http://127.0.0.1:{}", free_port()));
    let out = env.upgrade(
        &["--dry-run", "--", "kubeadm", "upgrade", "apply", "v1.24.0"],
        0,
        EXIT_NOT_RUN,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_NOT_RUN), "{stdout}");
    assert!(
        stdout.contains("current version  v1.22.5 (image k8s.gcr.io/kube-apiserver:v1.22.5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("; not from the API server: API server http://127.0.0.1:"),
        "says why the API server was not used: {stdout}"
    );
    assert!(stdout.contains("skips v1.23"), "{stdout}");
    assert!(!env.ran());
    assert!(files_in(&env.store()).is_empty());
}

/// The stand-in itself behaves: run directly, it records and exits as told.
#[test]
fn the_stand_in_records_what_it_saw() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("x.json"), "{}").unwrap();
    let record = dir.path().join("record");
    let status = Command::new("/bin/sh")
        .arg(fixture("upgrade-stand-in.sh"))
        .args(["upgrade", "apply", "v1.23.3"])
        .env("STAND_IN_RECORD", &record)
        .env("STAND_IN_STORE", &store)
        .env("STAND_IN_EXIT", "3")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(record.join("ran").exists());
    assert_eq!(
        std::fs::read_to_string(record.join("manifests-at-start")).unwrap(),
        "x.json\n"
    );
}
