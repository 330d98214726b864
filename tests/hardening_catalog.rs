//! Regression tests for the hardening issue's catalog defects, each reproduced as the issue
//! wrote it, on real backups of a real etcd 3.5.1 in a local store:
//! - a copied manifest (`cp NEWEST.json NEWEST.copy.json`), a manifest whose id was edited to
//!   another backup's, or whose object key names another backup's object, made `backups prune`
//!   delete the newest backup (defect 1);
//! - a future-dated backup (a node with a wrong clock) became `latest` for good (defect 4);
//! - `min-keep` counted a backup whose object was truncated, so prune deleted the good ones
//!   (defect 5), and `backups audit` showed "ok" rows for a backup whose object is missing.

mod common;

use std::process::Output;

use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, MANIFEST_SUFFIX};
use etcdsafe::exit::Exit;
use serde_json::Value;

/// This file's helpers on the common [`Env`].
impl Env {
    /// Three backups, oldest first, taken before `retention` is added to the config (a save
    /// applies retention after it).
    fn three_backups_then(&self, retention: &str) -> Vec<String> {
        let ids = (0..3)
            .map(|i| {
                self.cluster.ctl(&["put", "k", &format!("v{i}")]);
                self.save()
            })
            .collect();
        self.add_config(retention);
        ids
    }

    fn object_exists(&self, id: &str) -> bool {
        self.object_path(id).exists()
    }

    /// `fetch latest` must bring back exactly this backup.
    fn assert_latest_is(&self, id: &str) {
        let out = self.path().join(format!("latest-{}.db", rand_suffix()));
        let stdout = run_ok(&mut self.fetch_cmd("latest", &out));
        assert!(
            stdout.contains(&format!("backup {id} ")),
            "latest should be {id}: {stdout}"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

/// A single etcd 3.5.1 member holding `k`, and a config with a local store.
fn env_with_a_key() -> Env {
    let env = Env::new();
    env.cluster.ctl(&["put", "k", "v"]);
    env
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
    let env = env_with_a_key();
    let ids = env.three_backups_then(KEEP_ONE);
    let newest = &ids[2];
    let copy = env.store().join(format!("{newest}.copy.json"));
    std::fs::copy(env.manifest_path(newest), &copy).unwrap();

    // Before the fix: `list` exited 0 and `prune` printed keep and forget for the same id, then
    // deleted the newest backup.
    let list = env.run_exit(&["backups", "list"], Exit::Failed);
    assert!(
        !list.status.success(),
        "list must fail on a copied manifest"
    );
    let err = stderr(&list);
    assert!(err.contains(&format!("{newest}.copy.json")), "{err}");
    assert!(err.contains("is not its name"), "{err}");

    let prune = env.run_exit(&["backups", "prune"], Exit::Failed);
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
    env.run_ok(&["backups", "prune"]);
    assert!(env.object_exists(newest));
    assert!(!env.object_exists(&ids[0]) && !env.object_exists(&ids[1]));
    env.assert_latest_is(newest);
}

#[test]
fn a_manifest_edited_to_another_id_or_object_is_a_listing_problem() {
    let env = env_with_a_key();
    let ids = env.three_backups_then(KEEP_ONE);
    let (oldest, middle, newest) = (&ids[0], &ids[1], &ids[2]);

    // The id inside the oldest manifest edited to the newest backup's.
    env.edit_manifest(oldest, |m| m["id"] = Value::String(newest.clone()));
    // The middle manifest's object key edited to the newest backup's object.
    env.edit_manifest(middle, |m| {
        m["object"]["key"] = Value::String(format!("{newest}{DATA_SUFFIX}"))
    });
    let list = env.run_exit(&["backups", "list", "-w", "json"], Exit::Failed);
    let doc: Value = serde_json::from_slice(&list.stdout).unwrap();
    let listed: Vec<&str> = doc["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![newest.as_str()]);
    let problems = doc["problems"].to_string();
    assert!(
        problems.contains(&format!("{oldest}{MANIFEST_SUFFIX}")),
        "{problems}"
    );
    assert!(
        problems.contains(&format!("{middle}{MANIFEST_SUFFIX}")),
        "{problems}"
    );

    env.run_exit(&["backups", "prune"], Exit::Failed);
    for id in &ids {
        assert!(env.object_exists(id), "{id} must survive");
    }
    // Asked for by id, an edited manifest is refused too, naming the problem.
    let fetch = run_exit(
        &mut env.fetch_cmd(oldest, &env.path().join("old.db")),
        Exit::Failed,
    );
    assert!(
        stderr(&fetch).contains("edited or copied manifest"),
        "{}",
        stderr(&fetch)
    );
    env.assert_latest_is(newest);
}

#[test]
fn a_future_dated_backup_is_never_latest_never_counted_and_never_deleted() {
    let env = env_with_a_key();
    let ids = env.three_backups_then(KEEP_ONE);
    let (oldest, newest) = (&ids[0], &ids[2]);
    // The oldest backup, as if a node whose clock is a year ahead had taken it.
    env.edit_manifest(oldest, |m| {
        m["createdAt"] = Value::String("2099-01-01T00:00:00Z".into())
    });

    // Before the fix it became `latest`.
    env.assert_latest_is(newest);
    let list = env.run_exit(&["backups", "list", "-w", "json"], Exit::Failed);
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
    let prune = env.run_exit(&["backups", "prune"], Exit::Success);
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
    let env = env_with_a_key();
    let ids = env.three_backups_then(KEEP_ONE);
    let newest = &ids[2];
    let object = env.object_path(newest);
    let bytes = std::fs::read(&object).unwrap();
    std::fs::write(&object, &bytes[..bytes.len() / 2]).unwrap();

    // Before the fix: list exited 0 and prune kept only the broken newest backup.
    let list = env.run_exit(&["backups", "list"], Exit::Failed);
    let err = stderr(&list);
    assert!(
        err.contains(&format!("{newest}{MANIFEST_SUFFIX}"))
            && err.contains("the object is damaged"),
        "{err}"
    );

    env.run_exit(&["backups", "prune"], Exit::Failed);
    for id in &ids {
        assert!(env.object_exists(id), "{id} must survive");
    }
    // `latest` is the newest good backup.
    env.assert_latest_is(&ids[1]);
}

#[test]
fn audit_shows_a_backup_with_a_missing_object_as_a_failed_row() {
    let env = env_with_a_key();
    let ids = env.three_backups_then("");
    std::fs::remove_file(env.object_path(&ids[1])).unwrap();
    let out = env.run_exit(&["backups", "audit"], Exit::Failed);
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
    let env = env_with_a_key();
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
    let list = env.run_exit(&["backups", "list", "-w", "json"], Exit::Success);
    let doc: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(doc["backups"].as_array().unwrap().len(), ids.len());
    // Every printed id is a whole backup that fetches.
    for id in &ids {
        let out = env.path().join(format!("{id}.db"));
        run_ok(&mut env.fetch_cmd(id, &out));
    }
}
