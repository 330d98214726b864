//! Regression tests for the hardening issue's catalog defects, each reproduced as the issue
//! wrote it, on real backups of a real etcd 3.5.1 in a local store:
//! - a copied manifest (`cp NEWEST.json NEWEST.copy.json`), a manifest whose id was edited to
//!   another backup's, or whose object key names another backup's object, made `backups prune`
//!   delete the newest backup (defect 1);
//! - a future-dated backup (a node with a wrong clock) became `latest` for good (defect 4);
//! - `min-keep` counted a backup whose object was truncated, so prune deleted the good ones
//!   (defect 5), and `backups audit` showed "ok" rows for a backup whose object is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

struct Env {
    _cluster: EtcdCluster,
    dir: tempfile::TempDir,
    config: PathBuf,
    identity: PathBuf,
}

impl Env {
    fn new() -> Env {
        let cluster = EtcdCluster::start(EtcdVersion::V3_5);
        cluster.ctl(&["put", "k", "v"]);
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = age_keypair(dir.path(), "key.txt");
        let config = write_config(dir.path(), &cluster, &recipient);
        Env {
            _cluster: cluster,
            dir,
            config,
            identity,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = etcdsafe();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.store().join(format!("{id}.json"))
    }

    fn add_retention(&self, retention: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(retention);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Three backups, oldest first, taken before `retention` is added to the config (a save
    /// applies retention after it).
    fn three_backups_then(&self, retention: &str) -> Vec<String> {
        let ids = (0..3)
            .map(|i| {
                self._cluster.ctl(&["put", "k", &format!("v{i}")]);
                run_ok(&mut self.cmd(&["snapshot", "save"]))
                    .trim()
                    .to_string()
            })
            .collect();
        self.add_retention(retention);
        ids
    }

    fn edit_manifest(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let path = self.manifest_path(id);
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut manifest);
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    }

    fn object_exists(&self, id: &str) -> bool {
        self.store().join(format!("{id}.db.zst.age")).exists()
    }

    /// `fetch latest` must bring back exactly this backup.
    fn assert_latest_is(&self, id: &str) {
        let out = self.dir.path().join(format!("latest-{}.db", rand_suffix()));
        let stdout = run_ok(
            self.cmd(&["backups", "fetch", "latest", "-o"])
                .arg(&out)
                .arg("--identity")
                .arg(&self.identity),
        );
        assert!(
            stdout.contains(&format!("backup {id} ")),
            "latest should be {id}: {stdout}"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

const KEEP_ONE: &str = "retention:\n  keep-last: 1\n  min-keep: 1\n";

#[test]
fn a_copied_manifest_is_a_listing_problem_and_prune_deletes_nothing() {
    let env = Env::new();
    let ids = env.three_backups_then(KEEP_ONE);
    let newest = &ids[2];
    let copy = env.store().join(format!("{newest}.copy.json"));
    std::fs::copy(env.manifest_path(newest), &copy).unwrap();

    // Before the fix: `list` exited 0 and `prune` printed keep and forget for the same id, then
    // deleted the newest backup.
    let list = env.output(&["backups", "list"]);
    assert!(
        !list.status.success(),
        "list must fail on a copied manifest"
    );
    let err = stderr(&list);
    assert!(err.contains(&format!("{newest}.copy.json")), "{err}");
    assert!(err.contains("is not its name"), "{err}");

    let prune = env.output(&["backups", "prune"]);
    assert!(!prune.status.success());
    assert!(
        stderr(&prune).contains("retention refused to delete anything"),
        "{}",
        stderr(&prune)
    );
    for id in &ids {
        assert!(env.object_exists(id), "{id} must survive");
        assert!(
            env.manifest_path(id).exists(),
            "{id}'s manifest must survive"
        );
    }
    env.assert_latest_is(newest);

    // Once the stray copy is gone, retention works as planned: only the newest is kept.
    std::fs::remove_file(&copy).unwrap();
    run_ok(&mut env.cmd(&["backups", "prune"]));
    assert!(env.object_exists(newest));
    assert!(!env.object_exists(&ids[0]) && !env.object_exists(&ids[1]));
    env.assert_latest_is(newest);
}

#[test]
fn a_manifest_edited_to_another_id_or_object_is_a_listing_problem() {
    let env = Env::new();
    let ids = env.three_backups_then(KEEP_ONE);
    let (oldest, middle, newest) = (&ids[0], &ids[1], &ids[2]);

    // The id inside the oldest manifest edited to the newest backup's.
    env.edit_manifest(oldest, |m| m["id"] = Value::String(newest.clone()));
    // The middle manifest's object key edited to the newest backup's object.
    env.edit_manifest(middle, |m| {
        m["object"]["key"] = Value::String(format!("{newest}.db.zst.age"))
    });
    let list = env.output(&["backups", "list", "-w", "json"]);
    assert!(!list.status.success());
    let doc: Value = serde_json::from_slice(&list.stdout).unwrap();
    let listed: Vec<&str> = doc["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![newest.as_str()]);
    let problems = doc["problems"].to_string();
    assert!(problems.contains(&format!("{oldest}.json")), "{problems}");
    assert!(problems.contains(&format!("{middle}.json")), "{problems}");

    let prune = env.output(&["backups", "prune"]);
    assert!(!prune.status.success());
    for id in &ids {
        assert!(env.object_exists(id), "{id} must survive");
    }
    // Asked for by id, an edited manifest is refused too, naming the problem.
    let fetch = env
        .cmd(&["backups", "fetch", oldest, "-o"])
        .arg(env.dir.path().join("old.db"))
        .arg("--identity")
        .arg(&env.identity)
        .output()
        .unwrap();
    assert!(!fetch.status.success());
    assert!(
        stderr(&fetch).contains("edited or copied manifest"),
        "{}",
        stderr(&fetch)
    );
    env.assert_latest_is(newest);
}

#[test]
fn a_future_dated_backup_is_never_latest_never_counted_and_never_deleted() {
    let env = Env::new();
    let ids = env.three_backups_then(KEEP_ONE);
    let (oldest, newest) = (&ids[0], &ids[2]);
    // The oldest backup, as if a node whose clock is a year ahead had taken it.
    env.edit_manifest(oldest, |m| {
        m["createdAt"] = Value::String("2099-01-01T00:00:00Z".into())
    });

    // Before the fix it became `latest`.
    env.assert_latest_is(newest);
    let list = env.output(&["backups", "list", "-w", "json"]);
    assert!(
        !list.status.success(),
        "a future-dated backup is a problem to report"
    );
    let doc: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(doc["futureDated"][0]["id"], oldest.as_str());
    let err = stderr(&list);
    assert!(
        err.contains(&format!("backup {oldest} is dated 2099-01-01T00:00:00Z")),
        "{err}"
    );
    assert!(err.contains("check the clock"), "{err}");
    assert!(!doc["backups"].to_string().contains(oldest.as_str()));

    // Retention neither counts it (keep-last 1 keeps the newest) nor deletes it.
    let prune = env.output(&["backups", "prune"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert!(
        stderr(&prune).contains("in the future"),
        "{}",
        stderr(&prune)
    );
    assert!(
        env.object_exists(oldest),
        "the future-dated backup is not retention's to delete"
    );
    assert!(env.object_exists(newest));
    assert!(!env.object_exists(&ids[1]));
}

#[test]
fn a_truncated_newest_object_never_makes_prune_delete_the_good_backups() {
    let env = Env::new();
    let ids = env.three_backups_then(KEEP_ONE);
    let newest = &ids[2];
    let object = env.store().join(format!("{newest}.db.zst.age"));
    let bytes = std::fs::read(&object).unwrap();
    std::fs::write(&object, &bytes[..bytes.len() / 2]).unwrap();

    // Before the fix: list exited 0 and prune kept only the broken newest backup.
    let list = env.output(&["backups", "list"]);
    assert!(!list.status.success());
    let err = stderr(&list);
    assert!(
        err.contains(&format!("{newest}.json")) && err.contains("the object is damaged"),
        "{err}"
    );

    let prune = env.output(&["backups", "prune"]);
    assert!(!prune.status.success());
    for id in &ids {
        assert!(env.object_exists(id), "{id} must survive");
    }
    // `latest` is the newest good backup.
    env.assert_latest_is(&ids[1]);
}

#[test]
fn audit_shows_a_backup_with_a_missing_object_as_a_failed_row() {
    let env = Env::new();
    let ids = env.three_backups_then("");
    std::fs::remove_file(env.store().join(format!("{}.db.zst.age", ids[1]))).unwrap();
    let out = env.output(&["backups", "audit"]);
    assert!(!out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&ids[1]))
        .unwrap_or_else(|| panic!("no row for {}: {table}", ids[1]));
    assert!(
        row.contains("CORRUPT") && row.contains("is missing"),
        "{row}"
    );
    for id in [&ids[0], &ids[2]] {
        let row = table.lines().find(|l| l.contains(id.as_str())).unwrap();
        assert!(row.contains(" ok "), "{row}");
    }
    assert!(
        stderr(&out).contains("1 backup(s) failed"),
        "{}",
        stderr(&out)
    );
}

/// Defect 6: 40 pairs of concurrent `snapshot save` into one store gave 24 pairs with the same
/// id, both exiting 0, and one backup silently replaced the other. Now each run claims its id
/// exclusively: every success is its own backup.
#[test]
fn concurrent_saves_never_share_an_id() {
    let env = Env::new();
    let mut ids = Vec::new();
    for _round in 0..8 {
        let children: Vec<_> = (0..2)
            .map(|_| {
                env.cmd(&["snapshot", "save"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            ids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
    }
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "two successes printed one id: {ids:?}"
    );
    let list = env.output(&["backups", "list", "-w", "json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let doc: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(doc["backups"].as_array().unwrap().len(), ids.len());
    // Every printed id is a whole backup that fetches.
    for id in &ids {
        let out = env.dir.path().join(format!("{id}.db"));
        run_ok(
            env.cmd(&["backups", "fetch", id, "-o"])
                .arg(&out)
                .arg("--identity")
                .arg(&env.identity),
        );
    }
}
