//! Retention through the CLI on real backups: `backups prune --dry-run`, real pruning (manifest
//! first, then object), retention after `snapshot save`, and the cases where it must not delete.

mod common;

use std::path::Path;

use common::*;
use etcdsafe::catalog::{DATA_SUFFIX, FILES_SUFFIX};
use serde_json::Value;

/// A single etcd 3.5.1 member holding `k`, and a config with a local store and `retention`.
fn env_with(retention: &str) -> Env {
    let env = Env::new();
    env.cluster.ctl(&["put", "k", "v"]);
    env.add_config(retention);
    env
}

/// This file's helpers on the common [`Env`].
impl Env {
    /// Backdates a backup's manifest (as if it had been taken then).
    fn backdate(&self, id: &str, created_at: &str) {
        self.edit_manifest(id, |m| {
            m["createdAt"] = Value::String(created_at.to_string())
        });
    }
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn dry_run_then_prune_daily() {
    // Retention runs after each save too, so the rules go in after the five saves.
    let env = env_with("");
    let ids: Vec<String> = (0..5).map(|_| env.save()).collect();
    env.add_config("retention:\n  keep-daily: 2\n  min-keep: 1\n");
    let days = [
        "2026-11-18T10:00:00Z",
        "2026-11-19T10:00:00Z",
        "2026-11-19T18:00:00Z",
        "2026-11-20T09:00:00Z",
        "2026-11-20T21:00:00Z",
    ];
    for (id, day) in ids.iter().zip(days) {
        env.backdate(id, day);
    }
    let before = files(&env.store());
    let plan: Value =
        serde_json::from_str(&env.run_ok(&["backups", "prune", "--dry-run", "-w", "json"]))
            .unwrap();
    assert_eq!(files(&env.store()), before, "a dry run deletes nothing");
    let decisions = plan["decisions"].as_array().unwrap();
    let kept: Vec<&str> = decisions
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        vec![ids[4].as_str(), ids[2].as_str()],
        "newest per day, 2 days"
    );
    let reasons = decisions[0]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r == "daily 2026-11-20"),
        "{reasons:?}"
    );

    let table = env.run_ok(&["backups", "prune", "--dry-run"]);
    assert!(
        table.contains("forget") && table.contains("daily 2026-11-19"),
        "{table}"
    );

    let out = env.run_ok(&["backups", "prune"]);
    assert!(out.contains("deleted 3 backup(s)"), "{out}");
    let mut left = env.listed_ids();
    left.sort();
    let mut want = vec![ids[2].clone(), ids[4].clone()];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        files(&env.store()),
        4,
        "both objects of each deleted backup are gone"
    );
}

#[test]
fn retention_runs_after_each_save() {
    let env = env_with("retention:\n  keep-last: 2\n");
    for _ in 0..4 {
        env.save();
    }
    assert_eq!(env.listed_ids().len(), 2);
    assert_eq!(files(&env.store()), 4);
}

#[test]
fn incomplete_listing_deletes_nothing() {
    let env = env_with("retention:\n  keep-last: 1\n");
    let ids: Vec<String> = (0..3).map(|_| env.save()).collect();
    // A manifest in the middle becomes unreadable.
    std::fs::write(env.manifest_path(&ids[1]), b"{ truncated").unwrap();
    let before = files(&env.store());
    let err = env.run_err(&["backups", "prune"]);
    assert!(err.contains("incomplete"), "{err}");
    assert!(err.contains(&ids[1]), "names the broken manifest: {err}");
    assert_eq!(files(&env.store()), before);
    // A save with retention configured still stores its backup but reports the refusal.
    let err = env.run_err(&["snapshot", "save"]);
    assert!(err.contains("was stored, but retention failed"), "{err}");
    assert_eq!(files(&env.store()), before + 2);
}

#[test]
fn one_backup_is_always_kept_and_old_ones_respect_min_keep() {
    let env = env_with("retention:\n  keep-within: 1h\n  min-keep: 2\n");
    let first = env.save();
    env.backdate(&first, "2020-01-01T00:00:00Z");
    env.run_ok(&["backups", "prune"]);
    assert_eq!(
        env.listed_ids(),
        vec![first.clone()],
        "the only backup stays"
    );

    // All backups older than every rule: the newest is kept and min-keep keeps one more.
    let more: Vec<String> = (0..3).map(|_| env.save()).collect();
    for (i, id) in more.iter().enumerate() {
        env.backdate(id, &format!("2020-0{}-01T00:00:00Z", i + 2));
    }
    env.run_ok(&["backups", "prune"]);
    let mut left = env.listed_ids();
    left.sort();
    let mut want = vec![more[1].clone(), more[2].clone()];
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn empty_policy_is_refused_by_config_check() {
    let env = env_with("retention:\n  keep-last: 0\n");
    let err = env.run_err(&["config", "check"]);
    assert!(err.contains("empty policy"), "{err}");
}

#[test]
fn prune_removes_objects_no_manifest_names_once_their_run_is_a_day_old() {
    let env = env_with("retention:\n  keep-last: 5\n");
    let id = env.save();
    // A run killed between committing its objects and writing its manifest, two days ago...
    let dead = "20200101T000000.000Z-rev7";
    let dead_keys = [
        format!("{dead}{DATA_SUFFIX}"),
        format!("{dead}{FILES_SUFFIX}"),
    ];
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for key in &dead_keys {
        let path = env.store().join(key);
        std::fs::write(&path, b"orphan").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    // ...and one that started an hour ago and may still be about to write its manifest.
    let recent = format!(
        "{}-rev8{DATA_SUFFIX}",
        (chrono::Utc::now() - chrono::TimeDelta::hours(1)).format("%Y%m%dT%H%M%S%.3fZ")
    );
    std::fs::write(env.store().join(&recent), b"finishing").unwrap();
    // And one named two days old whose file was written just now (a host clock behind, or a
    // run suspended between its object and its manifest): the store's clock says it is new.
    let skewed = format!("20200102T000000.000Z-rev9{DATA_SUFFIX}");
    std::fs::write(env.store().join(&skewed), b"finishing").unwrap();
    // Neither is a backup.
    assert_eq!(env.listed_ids(), vec![id.clone()]);

    let before = files(&env.store());
    let dry = env.run_ok(&["backups", "prune", "--dry-run"]);
    for key in &dead_keys {
        assert!(dry.contains(&format!("would remove {key}")), "{dry}");
    }
    assert!(!dry.contains(&recent), "{dry}");
    assert!(!dry.contains(&skewed), "{dry}");
    assert_eq!(files(&env.store()), before, "a dry run removes nothing");

    let out = env.run_ok(&["backups", "prune", "-w", "json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["unreferenced"], serde_json::json!(dead_keys));
    assert_eq!(report["sweepErrors"], serde_json::json!([]));
    for key in &dead_keys {
        assert!(!env.store().join(key).exists(), "{key} is still there");
    }
    assert!(
        env.store().join(&recent).exists(),
        "a recent run's object was removed"
    );
    assert!(
        env.store().join(&skewed).exists(),
        "a freshly written object was removed"
    );
    // The backup is untouched, and still restores: fetch checks every digest.
    assert_eq!(env.listed_ids(), vec![id.clone()]);
    let out_db = env.dir.path().join("fetched.db");
    let key = env.dir.path().join("key.txt");
    env.run_ok(&[
        "backups",
        "fetch",
        &id,
        "-o",
        out_db.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
}

#[test]
fn listing_fetching_and_pruning_need_only_the_storage_section() {
    // At 3 a.m., on a workstation: the store and the age identity, no etcd, no recipients.
    let env = env_with("retention:\n  keep-last: 1\n");
    let first = env.save();
    let second = env.save();
    let reader = env.dir.path().join("reader.yaml");
    std::fs::write(
        &reader,
        format!(
            "storage: {{ local: {{ path: {} }} }}\nretention: {{ keep-last: 1 }}\n",
            env.store().display()
        ),
    )
    .unwrap();
    let cmd = |args: &[&str]| {
        let mut cmd = etcdsafe();
        cmd.arg("--config").arg(&reader).args(args);
        cmd
    };
    let listed = run_ok(&mut cmd(&["backups", "list", "-w", "simple"]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec![second.as_str()]);
    assert!(
        !listed.contains(&first),
        "retention after the save kept one"
    );
    let out_db = env.dir.path().join("fetched.db");
    let key = env.dir.path().join("key.txt");
    run_ok(&mut cmd(&[
        "backups",
        "fetch",
        "latest",
        "-o",
        out_db.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]));
    assert!(out_db.exists());
    run_ok(&mut cmd(&["backups", "audit"]));
    run_ok(&mut cmd(&["backups", "prune", "--dry-run"]));
    // Taking a backup with it is refused, naming what is missing.
    let err = run_err(&mut cmd(&["snapshot", "save"]));
    assert!(err.contains("etcd: no endpoint"), "{err}");
    assert!(err.contains("encryption: missing"), "{err}");
}
