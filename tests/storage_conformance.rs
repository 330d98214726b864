//! One conformance suite for the `ObjectStore` contract, run against every backend: the local
//! directory store, and real S3-compatible servers (Garage and moto) started by the tests.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::s3::{S3Kind, S3Server};
use etcdsafe::storage::local::LocalStore;
use etcdsafe::storage::s3::{S3Config, S3Store};
use etcdsafe::storage::{ObjectStore, StorageError};
use tokio::io::AsyncReadExt;

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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

async fn keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// What a backend can show; the suite checks everything a backend can show.
struct Traits {
    /// The backend's multipart threshold.
    part_size: usize,
    /// Whether the backend reports when an incomplete upload started. moto does not: it reports
    /// every multipart upload as initiated on 2010-11-10, so every one looks stale.
    reports_upload_age: bool,
}

/// The contract every backend must meet.
async fn conformance(store: &dyn ObjectStore, traits: Traits) {
    let part_size = traits.part_size;
    store.preflight().await.expect("preflight");
    assert!(keys(store, "").await.is_empty(), "a fresh store is empty");

    // Small objects: put, get, overwrite, list with sizes.
    store
        .put("a/manifest.json", Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    assert_eq!(read_all(store, "a/manifest.json").await, b"{\"v\":1}");
    store
        .put("a/manifest.json", Bytes::from_static(b"{\"v\":22}"))
        .await
        .unwrap();
    assert_eq!(read_all(store, "a/manifest.json").await, b"{\"v\":22}");
    let listed = store.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "a/manifest.json");
    assert_eq!(listed[0].size, 8);

    // A large object streamed in uneven chunks through the multipart path.
    let big = pattern(part_size * 2 + 12345, 7);
    let mut writer = store.create("a/big.db.zst.age").await.unwrap();
    for chunk in big.chunks(777_777) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(
        keys(store, "").await,
        vec!["a/manifest.json"],
        "an uncommitted object is invisible"
    );
    let committed = writer.commit().await.unwrap();
    assert_eq!(committed.size, big.len() as u64);
    assert_eq!(read_all(store, "a/big.db.zst.age").await, big);

    // An object smaller than a part (single PUT), and an empty one.
    let mut writer = store.create("b/small").await.unwrap();
    writer.write(Bytes::from(pattern(1000, 1))).await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(read_all(store, "b/small").await, pattern(1000, 1));
    let writer = store.create("b/empty").await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(read_all(store, "b/empty").await, b"");

    // Abort leaves nothing, for both the single-PUT and the multipart path.
    for (key, len) in [
        ("c/aborted-small", 10usize),
        ("c/aborted-big", part_size + 1),
    ] {
        let mut writer = store.create(key).await.unwrap();
        writer.write(Bytes::from(pattern(len, 3))).await.unwrap();
        writer.abort().await.unwrap();
        assert!(matches!(
            store.get(key).await.err().unwrap(),
            StorageError::NotFound { .. }
        ));
    }
    assert!(keys(store, "c/").await.is_empty());

    // Prefix listing.
    assert_eq!(
        keys(store, "a/").await,
        vec!["a/big.db.zst.age", "a/manifest.json"]
    );
    assert_eq!(keys(store, "b/").await, vec!["b/empty", "b/small"]);
    assert_eq!(keys(store, "a/m").await, vec!["a/manifest.json"]);

    // Missing objects, idempotent delete.
    assert!(matches!(
        store.get("nope").await.err().unwrap(),
        StorageError::NotFound { .. }
    ));
    store.delete("b/small").await.unwrap();
    store.delete("b/small").await.unwrap();
    assert_eq!(keys(store, "b/").await, vec!["b/empty"]);

    // Keys that could escape the store are refused.
    for bad in ["", "/abs", "../up", "a/../b", "a//b"] {
        assert!(
            matches!(
                store.put(bad, Bytes::new()).await,
                Err(StorageError::BadKey { .. })
            ),
            "{bad:?} must be refused"
        );
    }

    // A writer "killed" mid-upload (forgotten, never committed nor aborted) leaves only
    // something `abort_stale` finds and removes; the object never becomes visible.
    let mut writer = store.create("d/crashed").await.unwrap();
    writer
        .write(Bytes::from(pattern(part_size + 10, 9)))
        .await
        .unwrap();
    std::mem::forget(writer);
    assert!(keys(store, "d/").await.is_empty());
    if traits.reports_upload_age {
        let young = store.abort_stale(Duration::from_secs(3600)).await.unwrap();
        assert!(young.is_empty(), "recent uploads are left alone: {young:?}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cleaned = store.abort_stale(Duration::from_secs(1)).await.unwrap();
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    assert!(cleaned[0].contains("crashed"), "{cleaned:?}");
    assert!(store.abort_stale(Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn local_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("store"));
    conformance(
        &store,
        Traits {
            part_size: 5 << 20,
            reports_upload_age: true,
        },
    )
    .await;
}

async fn s3_store(server: &S3Server, bucket: &str, prefix: &str) -> S3Store {
    let creds = tempfile::tempdir().unwrap();
    let (id, secret) = server.credential_files(creds.path());
    let store = S3Store::connect(S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
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
    // The credentials were read at connect; the files may go.
    drop(creds);
    store
}

#[tokio::test]
async fn garage_conformance() {
    let server = S3Server::start(S3Kind::Garage);
    let bucket = server.fresh_bucket(false).await;
    conformance(
        &s3_store(&server, &bucket, "clusters/prod/").await,
        Traits {
            part_size: 5 << 20,
            reports_upload_age: true,
        },
    )
    .await;
}

#[tokio::test]
async fn moto_conformance() {
    let server = S3Server::start(S3Kind::Moto);
    let bucket = server.fresh_bucket(false).await;
    conformance(
        &s3_store(&server, &bucket, "").await,
        Traits {
            part_size: 5 << 20,
            reports_upload_age: false,
        },
    )
    .await;
}

#[tokio::test]
async fn s3_listing_paginates_past_a_thousand_objects() {
    let server = S3Server::start(S3Kind::Garage);
    let bucket = server.fresh_bucket(false).await;
    let store = s3_store(&server, &bucket, "p/").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1100 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .put(&format!("k{i:05}.json"), Bytes::from_static(b"{}"))
                .await
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let listed = store.list("").await.unwrap();
    assert_eq!(listed.len(), 1100);
    assert_eq!(listed[0].key, "k00000.json");
    assert_eq!(listed[1099].key, "k01099.json");
}
