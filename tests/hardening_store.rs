//! Regression tests for the store and fetch defects of the hardening issue (#19): `fetch` and a
//! `.part` it did not create, S3 calls that hang, a local store that does not exist, damaged
//! objects, `fetch latest` skipping a broken backup, and exclusive creation (two writers).

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::s3::S3Server;
use common::*;
use etcdsafe::storage::local::LocalStore;
use etcdsafe::storage::s3::{S3Config, S3Store};
use etcdsafe::storage::{ObjectStore, StorageError};
use tokio::io::AsyncReadExt;

/// Defect 7: `backups fetch` failed with "File exists" on a `<out>.part` it did not create, and
/// then deleted it.
#[test]
fn fetch_never_touches_a_part_file_it_did_not_create() {
    let env = Env::new();
    env.cluster.ctl(&["put", "a", "b"]);
    let id = env.save();
    let out = env.dir.path().join("snapshot.db");
    let theirs = env.dir.path().join("snapshot.db.part");
    std::fs::write(&theirs, b"someone else's download").unwrap();

    let (stdout, _) = run_ok_both(&mut env.fetch_cmd(&id, &out));
    assert!(stdout.contains(&id), "{stdout}");
    assert!(out.exists());
    assert_eq!(
        std::fs::read(&theirs).unwrap(),
        b"someone else's download",
        "the .part file the fetch did not create is untouched"
    );
    // Nothing of its own is left behind either.
    let mut names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("snapshot.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["snapshot.db", "snapshot.db.part"]);

    // A failing fetch (the output exists) leaves it alone too.
    let err = run_err(&mut env.fetch_cmd(&id, &out));
    assert!(err.contains("already exists"), "{err}");
    assert!(theirs.exists());
}

/// Keeps accepting TCP connections and never answers, like a wedged S3 endpoint.
fn silent_endpoint() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    port
}

/// Defect 8: against an endpoint that accepts and never answers, `backups list` took 301 s.
#[test]
fn s3_that_never_answers_fails_quickly_naming_endpoint_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = silent_endpoint();
    let config = dir.path().join("s3.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  s3:\n    bucket: backups\n    region: us-east-1\n    endpoint: http://127.0.0.1:{port}\n    force-path-style: true\n    timeout: 1s\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let err = run_err(
        etcdsafe()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(&config)
            .args(["backups", "list"]),
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "took {elapsed:?} to give up: {err}"
    );
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    let line = error_lines[0];
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("storage.s3.timeout"), "{line}");
    assert!(line.contains("1s"), "{line}");
    // The retries are said, at warn (the commands' default level).
    assert!(err.contains("retrying"), "{err}");

    // The key is validated like the other durations.
    std::fs::write(
        &config,
        "storage:\n  s3:\n    bucket: backups\n    timeout: 0s\n",
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["backups", "list"]),
    );
    assert!(err.contains("storage.s3.timeout"), "{err}");
}

/// The other way an endpoint fails (nothing listens): named, with the fix, without waiting.
#[test]
fn s3_that_refuses_connections_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("s3.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  s3:\n    bucket: backups\n    region: us-east-1\n    endpoint: http://127.0.0.1:{port}\n    force-path-style: true\n    max-attempts: 2\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let err = run_err(
        etcdsafe()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(&config)
            .args(["backups", "list"]),
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("backups"), "names the bucket: {line}");
    assert!(line.contains("reachable"), "{line}");
    assert!(line.contains("storage.s3.endpoint"), "{line}");
}

/// Defect 9: a local store path that does not exist listed as empty, with exit 0.
#[test]
fn a_local_store_that_does_not_exist_is_an_error_not_an_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-store");
    let config = dir.path().join("local.yaml");
    std::fs::write(
        &config,
        format!("storage: {{ local: {{ path: {} }} }}\n", missing.display()),
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["backups", "list"]),
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("storage.local.path"), "{err}");
    assert!(!missing.exists(), "listing created nothing");
}

/// Defect 9: a corrupt stored object gave "decryption error" / "failed to fill whole buffer"
/// with no fix.
#[test]
fn a_damaged_object_is_called_damaged_with_audit_and_an_older_backup_named() {
    let env = Env::new();
    env.cluster.ctl(&["put", "a", "b"]);
    let older = env.save();
    env.cluster.ctl(&["put", "c", "d"]);
    let newest = env.save();
    let object = env.object_path(&newest);
    let original = std::fs::read(&object).unwrap();
    let out = env.dir.path().join("out.db");

    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let mut truncated = original.clone();
    truncated.truncate(original.len() - 100);
    for (what, bytes) in [("flipped", flipped), ("truncated", truncated)] {
        std::fs::write(&object, &bytes).unwrap();
        let err = run_err(&mut env.fetch_cmd(&newest, &out));
        assert!(err.contains(&newest), "{what}: {err}");
        assert!(err.contains("damaged"), "{what}: {err}");
        assert!(err.contains("etcdsafe backups audit"), "{what}: {err}");
        assert!(
            err.contains(&older),
            "{what}: names the older backup: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(!out.exists());
    }
}

/// Defect 9: `fetch latest` printed an `error:` line for a missing object and then silently
/// fetched an older backup.
#[test]
fn fetch_latest_says_which_backup_it_took_and_why() {
    let env = Env::new();
    env.cluster.ctl(&["put", "a", "b"]);
    let older = env.save();
    env.cluster.ctl(&["put", "c", "d"]);
    let newest = env.save();
    std::fs::remove_file(env.object_path(&newest)).unwrap();

    let out = env.dir.path().join("latest.db");
    let (stdout, stderr) = run_ok_both(&mut env.fetch_cmd("latest", &out));
    assert!(stdout.contains(&older), "{stdout}");
    assert!(!stderr.contains("error:"), "{stderr}");
    let note = stderr
        .lines()
        .find(|l| l.contains(&older) && l.contains(&newest))
        .unwrap_or_else(|| panic!("no line names the backup taken and the one skipped: {stderr}"));
    assert!(note.contains("missing"), "says why: {note}");
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .get(key)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

/// The exclusive-create contract (defect 6, the storage half): the first `put_new` wins, a
/// second one for the same key fails as `AlreadyExists` and changes nothing, and of many
/// concurrent writers exactly one succeeds.
async fn exclusive_create_conformance(store: &dyn ObjectStore) {
    store.preflight().await.unwrap();
    store
        .put_new("b/x.json", Bytes::from_static(b"first"))
        .await
        .expect("first put_new");
    let err = store
        .put_new("b/x.json", Bytes::from_static(b"second"))
        .await
        .expect_err("second put_new must fail");
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("b/x.json"), "{err}");
    assert_eq!(read_all(store, "b/x.json").await, b"first");

    // Large objects (multipart on S3) too: the second writer's commit fails, changing nothing.
    let big = |seed: u8| Bytes::from(vec![seed; (5 << 20) + 4096]);
    for (seed, should_win) in [(1u8, true), (2u8, false)] {
        let mut writer = store.create_new("b/big.db.zst.age").await.unwrap();
        writer.write(big(seed)).await.unwrap();
        let result = writer.commit().await;
        assert_eq!(result.is_ok(), should_win, "{result:?}");
        if !should_win {
            assert!(
                matches!(result, Err(StorageError::AlreadyExists { .. })),
                "{result:?}"
            );
        }
    }
    assert_eq!(read_all(store, "b/big.db.zst.age").await, big(1).to_vec());
    store.delete("b/big.db.zst.age").await.unwrap();

    let writers = (0..8u8).map(|i| store.put_new("b/race.json", Bytes::from(vec![i; 64])));
    let results = futures::future::join_all(writers).await;
    let won: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(r, Err(StorageError::AlreadyExists { .. })),
            "{r:?}"
        );
    }
    assert_eq!(
        read_all(store, "b/race.json").await,
        vec![won[0] as u8; 64],
        "the object is the winner's"
    );
    let keys: Vec<String> = store
        .list("b/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        ["b/race.json", "b/x.json"],
        "no temporary files listed"
    );
}

/// Writers racing to claim a name built from the clock (as backup ids are) each end up with a
/// different one, and each may then write its object under it without replacing another's.
async fn claim_conformance(store: &dyn ObjectStore) {
    let claim = |_writer: u8| async move {
        etcdsafe::storage::claim_key(store, 20, |_attempt| {
            let now = chrono::Utc::now();
            format!("c/{}-rev7.db.zst.age", now.format("%Y%m%dT%H%M%S%.3fZ"))
        })
        .await
    };
    let keys: Vec<String> = futures::future::join_all((0..6u8).map(claim))
        .await
        .into_iter()
        .map(|r| r.expect("every writer gets a name"))
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "one name each: {keys:?}");
    // The claimed object is replaced by its writer's own data.
    let mut writer = store.create(&keys[0]).await.unwrap();
    writer.write(Bytes::from_static(b"data")).await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(read_all(store, &keys[0]).await, b"data");
}

/// Defect 6: two writers produced the same id and one backup silently replaced the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_creates_exclusively() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("store"));
    exclusive_create_conformance(&store).await;
    claim_conformance(&store).await;
    // Nothing but the two objects is left in the directory.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("store/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_creates_exclusively() {
    let server = S3Server::moto();
    let bucket = server.fresh_bucket(false).await;
    let creds = tempfile::tempdir().unwrap();
    let (id, secret) = server.credential_files(creds.path());
    let store = S3Store::connect(S3Config {
        bucket,
        prefix: "excl/".to_string(),
        region: server.region.clone(),
        endpoint: Some(server.endpoint.clone()),
        force_path_style: true,
        sse: None,
        kms_key_id: None,
        object_lock_days: None,
        object_lock_mode: etcdsafe::storage::s3::LockMode::Governance,
        storage_class: None,
        part_size: 5 << 20,
        concurrency: 2,
        access_key_id_file: Some(id),
        secret_access_key_file: Some(secret),
        max_attempts: 3,
        abort_incomplete_after: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    exclusive_create_conformance(&store).await;
    claim_conformance(&store).await;
}
