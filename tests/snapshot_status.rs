//! `etcdsafe`'s native snapshot status against the real tools, on real etcd snapshots:
//! `etcdutl snapshot status` (3.5.1) and `ETCDCTL_API=3 etcdctl snapshot status` (3.4.23) must
//! print exactly what we compute, as JSON and as a table. Damaged snapshots must give one-line
//! errors, never a panic.
//!
//! Needs the etcd binaries (see tests/common/mod.rs); a missing one fails the test by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{EtcdCluster, EtcdVersion, ALL_VERSIONS};
use etcdsafe::snapshot::digest::DigestBuilder;
use etcdsafe::snapshot::{self, testdb, SnapshotError};

/// `snapshot status -w <format>` by the real tool of `version`.
fn tool_status(version: EtcdVersion, path: &Path, format: &str) -> String {
    let tool = version.snapshot_tool();
    let out = Command::new(&tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", format])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "{} snapshot status {}: {}",
        tool.display(),
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The status as `snapshot save` computes it: from leaf digests made while the bytes streamed
/// into the spool (2 MiB at a time), reading only the pages without one.
fn status_from_digests(path: &Path) -> Result<snapshot::Status, SnapshotError> {
    let bytes = std::fs::read(path).unwrap();
    let mut builder = DigestBuilder::new(usize::MAX, snapshot::status::must_see);
    for block in bytes.chunks(2 << 20) {
        builder.update(block);
    }
    snapshot::status_with_digests(path, &builder.finish())
}

/// Our status, JSON and table, equals what both etcd versions' tools print; computed the
/// pipeline's way (with leaf digests) it is the same.
fn assert_parity(path: &Path) -> snapshot::Status {
    let ours = snapshot::status(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status_from_digests(path).unwrap_or_else(|e| panic!("{e}")),
        ours,
        "with leaf digests: {}",
        path.display()
    );
    let json = serde_json::to_string(&ours).unwrap();
    let table = snapshot::render_table(&ours);
    for version in ALL_VERSIONS {
        assert_eq!(
            format!("{json}\n"),
            tool_status(version, path, "json"),
            "JSON of {} vs {}",
            path.display(),
            version.label()
        );
        assert_eq!(
            table,
            tool_status(version, path, "table"),
            "table of {} vs {}",
            path.display(),
            version.label()
        );
    }
    ours
}

/// The CLI prints the same JSON as the library.
fn assert_cli_json(path: &Path, status: &snapshot::Status) {
    let out = common::run_ok(
        common::etcdsafe()
            .args(["snapshot", "status", "-w", "json"])
            .arg(path),
    );
    assert_eq!(out, format!("{}\n", serde_json::to_string(status).unwrap()));
}

fn save(cluster: &EtcdCluster, name: &str) -> PathBuf {
    let path = cluster.dir.path().join(name);
    cluster.ctl(&["snapshot", "save", path.to_str().unwrap()]);
    let verified = snapshot::verify(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        verified.trailer.total_len,
        std::fs::metadata(&path).unwrap().len()
    );
    path
}

fn lease_grant(cluster: &EtcdCluster, ttl: &str) -> String {
    let out = cluster.ctl(&["lease", "grant", ttl]);
    // "lease 694d7a2f1c3a4b0e granted with TTL(600s)"
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected lease output {out:?}"))
        .to_string()
}

fn parity(version: EtcdVersion) {
    let cluster = EtcdCluster::start(version);

    // A fresh cluster: only etcd's own buckets and keys.
    let empty = save(&cluster, "empty.db");
    let status = assert_parity(&empty);
    assert_cli_json(&empty, &status);

    // Several revisions of one key, deletions (tombstones), leases.
    for i in 0..50 {
        cluster.ctl(&["put", "/registry/configmaps/default/busy", &format!("v{i}")]);
    }
    for i in 0..20 {
        cluster.ctl(&["put", &format!("/registry/secrets/default/s{i}"), "x"]);
    }
    for i in 0..10 {
        cluster.ctl(&["del", &format!("/registry/secrets/default/s{i}")]);
    }
    let lease = lease_grant(&cluster, "600");
    cluster.ctl(&[
        "put",
        "--lease",
        &lease,
        "/registry/leases/kube-node-lease/n1",
        "held",
    ]);
    let short = lease_grant(&cluster, "3600");
    cluster.ctl(&["put", "--lease", &short, "/registry/events/e1", "event"]);
    cluster.ctl(&["lease", "revoke", &short]);
    let mixed = save(&cluster, "mixed.db");
    let status = assert_parity(&mixed);
    assert!(status.revision > 80, "{status:?}");

    // Values larger than a page: overflow pages.
    let big: String = (0..20_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let bigger: String = (0..100_000)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    cluster.ctl(&["put", "/registry/big/20k", &big]);
    cluster.ctl(&["put", "/registry/big/100k", &bigger]);
    cluster.ctl(&["put", "/registry/big/20k", &bigger]);
    let large = save(&cluster, "large.db");
    assert_parity(&large);

    // Thousands of keys: branch pages.
    cluster.put_many("/registry/pods/default", 5000, 300);
    let many = save(&cluster, "many.db");
    let status = assert_parity(&many);
    assert!(status.total_key > 5000, "{status:?}");
    assert_cli_json(&many, &status);

    // After a compaction most old revisions are gone, and their pages are free.
    cluster.ctl(&["compact", &status.revision.to_string()]);
    let compacted = save(&cluster, "compacted.db");
    assert_parity(&compacted);

    // Without its trailer a snapshot still has a status (like etcdutl), but does not verify.
    let raw = cluster.dir.path().join("raw.db");
    let bytes = std::fs::read(&many).unwrap();
    std::fs::write(&raw, &bytes[..bytes.len() - 32]).unwrap();
    assert_eq!(assert_parity(&raw), status);
    let err = snapshot::verify(&raw).unwrap_err();
    assert!(matches!(err, SnapshotError::NoTrailer { .. }), "{err}");
}

#[test]
fn parity_with_etcd_3_4() {
    parity(EtcdVersion::V3_4);
}

#[test]
fn parity_with_etcd_3_5() {
    parity(EtcdVersion::V3_5);
}

/// Every damaged file gives a one-line error that names it, from the library and the CLI.
fn assert_rejected(path: &Path, status_too: bool) -> String {
    let verify = snapshot::verify(path).expect_err("verify must fail");
    let text = verify.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.starts_with(&path.display().to_string()), "{text}");
    if status_too {
        let status = snapshot::status(path).expect_err("status must fail");
        assert!(!status.to_string().contains('\n'), "{status}");
        let digested = status_from_digests(path).expect_err("status with digests must fail");
        assert_eq!(digested.to_string(), status.to_string());
        let stderr = common::run_err(common::etcdsafe().args(["snapshot", "status"]).arg(path));
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }
    let stderr = common::run_err(common::etcdsafe().args(["snapshot", "verify"]).arg(path));
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    text
}

#[test]
fn damaged_snapshots() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.put_many("/registry/pods/default", 2000, 500);
    let good = save(&cluster, "good.db");
    let bytes = std::fs::read(&good).unwrap();
    let len = bytes.len();
    let dir = cluster.dir.path();
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    };

    // Truncated: a whole page short, mid-page, just the trailer short.
    for (name, cut) in [
        ("cut-page.db", len - 32 - 4096),
        ("cut-mid.db", len / 2 + 123),
        ("cut-tail.db", len - 10),
        ("cut-meta.db", 5000),
    ] {
        let path = write(name, &bytes[..cut]);
        let text = assert_rejected(&path, cut < len - 32);
        if cut < len - 32 {
            assert!(text.contains("truncated"), "{text}");
        }
    }

    // One flipped byte in the middle: the trailer catches it.
    let mut flipped = bytes.clone();
    flipped[len / 2] ^= 0x01;
    let path = write("flipped.db", &flipped);
    let text = assert_rejected(&path, false);
    assert!(text.contains("SHA-256 trailer does not match"), "{text}");

    // The trailer removed.
    let path = write("no-trailer.db", &bytes[..len - 32]);
    let text = assert_rejected(&path, false);
    assert!(text.contains("no SHA-256 trailer"), "{text}");

    // Zero-length.
    let path = write("zero.db", b"");
    let text = assert_rejected(&path, true);
    assert!(text.contains("empty"), "{text}");

    // Random bytes, with and without a valid trailer.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..len - 32)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = write("random.db", &random);
    assert!(assert_rejected(&path, true).contains("not a bbolt database"));
    let path = write("random-trailer.db", &testdb::with_trailer(&random));
    assert!(assert_rejected(&path, true).contains("not a bbolt database"));

    // A sound bbolt file that is not etcd's, even with a valid trailer.
    let mut root = testdb::Bucket::new();
    root.bucket("widgets").put("w1", "blue").put("w2", "green");
    root.bucket("gadgets");
    let built = testdb::build(&root, &testdb::Options::default());
    let path = write("bolt.db", &built.with_trailer());
    assert!(assert_rejected(&path, true).contains("not an etcd snapshot"));

    // Structure damage that keeps the trailer valid: a key moved out of order, re-sealed.
    let mut db = bytes[..len - 32].to_vec();
    let swapped = swap_first_two_keys_of_a_leaf(&mut db);
    assert!(
        swapped,
        "no leaf page with two equal-length keys in the snapshot"
    );
    let path = write("resealed.db", &testdb::with_trailer(&db));
    let text = assert_rejected(&path, true);
    assert!(text.contains("corrupt database"), "{text}");
}

/// Swaps the first two keys of the leftmost leaf of bucket `key` (17-byte revision keys),
/// found by following the tree from the meta page (so the page is surely in use).
fn swap_first_two_keys_of_a_leaf(db: &mut [u8]) -> bool {
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let ps = u32_at(db, 16 + 8);
    // Root bucket: a single leaf in a snapshot this small; find element "key".
    let root = u64_at(db, 16 + 16) * ps;
    let mut bucket_root = None;
    for i in 0..u16_at(db, root + 10) as usize {
        let e = root + 16 + i * 16;
        let k = e + u32_at(db, e + 4);
        if &db[k..k + u32_at(db, e + 8)] == b"key" {
            bucket_root = Some(u64_at(db, k + 3));
        }
    }
    let Some(mut page) = bucket_root else {
        return false;
    };
    // Down the leftmost branch.
    while u16_at(db, page * ps + 8) == 0x01 {
        page = u64_at(db, page * ps + 16 + 8);
    }
    let p = &mut db[page * ps..(page + 1) * ps];
    if u16_at(p, 8) != 0x02 || u16_at(p, 10) < 2 {
        return false;
    }
    let key = |p: &[u8], i: usize| {
        let e = 16 + i * 16;
        (e + u32_at(p, e + 4), u32_at(p, e + 8))
    };
    let ((k0, n0), (k1, n1)) = (key(p, 0), key(p, 1));
    if n0 != 17 || n1 != 17 {
        return false;
    }
    let first = p[k0..k0 + 17].to_vec();
    p.copy_within(k1..k1 + 17, k0);
    p[k1..k1 + 17].copy_from_slice(&first);
    true
}
