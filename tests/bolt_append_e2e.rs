//! `native::bolt_append` against real etcd 3.4.23 and 3.5.1: a snapshot taken by the stock
//! tools gets change events appended at their original revisions (puts, an overwrite, several
//! sub-revisions in one revision, a delete's tombstone, a value on three pages), a fresh
//! SHA-256 trailer, and then the stock tools must accept it: `etcdutl snapshot status` reports
//! the new head and key count, the stock restore restores it, and etcd started on the restored
//! data dir answers reads at old and new revisions exactly as if the events had happened there.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::*;
use etcdsafe::native::bolt_append::{self, Appended};
use etcdsafe::native::pb::{put_bytes, put_uint};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a key looks like at some revision: create, mod, version, value.
type Kv = (i64, i64, i64, Vec<u8>);
/// Every live key at some revision.
type State = BTreeMap<Vec<u8>, Kv>;
/// A `key` bucket entry: revision key, marshaled `KeyValue`.
type Entry = (Vec<u8>, Vec<u8>);

enum Event {
    Put(&'static str, Vec<u8>),
    Del(&'static str),
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 from etcdctl")
}

/// The live keys an `etcdctl get -w json` answer shows, and its header revision.
fn state_of(json: &[u8]) -> (State, i64) {
    let v: Value = serde_json::from_slice(json).unwrap();
    let mut state = State::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        let int = |f: &str| kv[f].as_i64().unwrap_or(0);
        state.insert(
            b64(kv["key"].as_str().unwrap()),
            (
                int("create_revision"),
                int("mod_revision"),
                int("version"),
                kv["value"].as_str().map(b64).unwrap_or_default(),
            ),
        );
    }
    (state, v["header"]["revision"].as_i64().unwrap())
}

fn get_all(m: &EtcdMember, rev: Option<i64>) -> (State, i64) {
    let rev = rev.map(|r| r.to_string());
    let mut args = vec!["get", "", "--prefix", "-w", "json"];
    if let Some(rev) = &rev {
        args.extend(["--rev", rev]);
    }
    let out = m.etcdctl(None, &args);
    assert!(
        out.status.success(),
        "get {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    state_of(&out.stdout)
}

/// etcd's revision key: main and sub revision, big-endian, joined by `_`.
fn revision_key(main: i64, sub: i64) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// `mvccpb.KeyValue` as etcd marshals it (proto3: zero fields left out).
fn key_value(key: &[u8], create: i64, modified: i64, version: i64, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_bytes(&mut b, 1, key);
    for (field, v) in [(2, create), (3, modified), (4, version)] {
        if v != 0 {
            put_uint(&mut b, field, v as u64);
        }
    }
    if !value.is_empty() {
        put_bytes(&mut b, 5, value);
    }
    b
}

/// The events, one list per main revision from `head + 1`, turned into `key` bucket entries;
/// also the state after each revision (index 0: at `head`).
fn entries(head: i64, start: &State, events: &[Vec<Event>]) -> (Vec<Entry>, Vec<State>) {
    let mut state = start.clone();
    let mut states = vec![state.clone()];
    let mut out = Vec::new();
    for (i, revision) in events.iter().enumerate() {
        let main = head + 1 + i as i64;
        for (sub, event) in revision.iter().enumerate() {
            let mut rk = revision_key(main, sub as i64);
            match event {
                Event::Put(key, value) => {
                    let key = key.as_bytes().to_vec();
                    let (create, version) = match state.get(&key) {
                        Some((create, _, version, _)) => (*create, version + 1),
                        None => (main, 1),
                    };
                    out.push((rk, key_value(&key, create, main, version, value)));
                    state.insert(key, (create, main, version, value.clone()));
                }
                Event::Del(key) => {
                    let key = key.as_bytes().to_vec();
                    assert!(state.remove(&key).is_some(), "deleting a live key");
                    rk.push(b't');
                    out.push((rk, key_value(&key, 0, 0, 0, &[])));
                }
            }
        }
        states.push(state.clone());
    }
    (out, states)
}

/// The page size and the `key` bucket's root page (0: inline) of a bbolt file whose root is
/// one leaf (as etcd's is: a dozen buckets).
fn key_bucket_root(db: &[u8]) -> (usize, u64) {
    let u32_at = |o: usize| u32::from_le_bytes(db[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(db[o..o + 8].try_into().unwrap());
    let ps = u32_at(16 + 8) as usize;
    let meta = if u64_at(ps + 16 + 48) > u64_at(16 + 48) {
        ps + 16
    } else {
        16
    };
    let root = u64_at(meta + 16) as usize * ps;
    assert_eq!(
        u16::from_le_bytes([db[root + 8], db[root + 9]]),
        2,
        "a root leaf"
    );
    let count = u16::from_le_bytes([db[root + 10], db[root + 11]]) as usize;
    for i in 0..count {
        let e = root + 16 + i * 16;
        let (pos, ksize) = (u32_at(e + 4) as usize, u32_at(e + 8) as usize);
        if &db[e + pos..e + pos + ksize] == b"key" {
            return (ps, u64_at(e + pos + ksize));
        }
    }
    panic!("no key bucket");
}

fn status(file: &Path) -> Value {
    let out = Command::new(EtcdVersion::V3_5.bin("etcdutl"))
        .args(["snapshot", "status", "-w", "json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdutl snapshot status {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Takes a snapshot of `cluster` with the stock tool; returns it (trailer on) and the state.
fn snapshot(cluster: &EtcdCluster, dir: &Path) -> (PathBuf, State, i64) {
    let (state, head) = get_all(cluster.member(), None);
    let file = dir.join("snapshot.db");
    cluster.ctl(&["snapshot", "save", file.to_str().unwrap()]);
    (file, state, head)
}

/// Appends `events` after `head` to the snapshot `file` (trailer stripped, then renewed) and
/// proves the result with the stock tools of `version`. `inline`: whether the snapshot's `key`
/// bucket is inline (it is paged after the append: the events hold a three-page value).
fn append_and_prove(
    version: EtcdVersion,
    dir: &Path,
    file: &Path,
    start: &State,
    head: i64,
    inline: bool,
) {
    let events = vec![
        vec![Event::Put("new/a", b"1".to_vec())],
        vec![Event::Put("old/0", b"overwritten".to_vec())],
        vec![
            Event::Put("new/b", b"b".to_vec()),
            Event::Put("new/c", b"c".to_vec()),
            Event::Put("new/a", b"2".to_vec()),
        ],
        vec![Event::Del("new/b")],
        vec![Event::Put("big", vec![b'B'; 3 * 4096 - 300])],
        vec![Event::Put("new/b", b"again".to_vec())],
    ];
    let (list, states) = entries(head, start, &events);
    let new_head = head + events.len() as i64;
    let before = status(file);
    assert_eq!(before["revision"].as_i64().unwrap(), head);

    let mut bytes = std::fs::read(file).unwrap();
    let (ps, root) = key_bucket_root(&bytes);
    assert_eq!(
        root == 0,
        inline,
        "the snapshot's key bucket inline: {inline}"
    );
    if !inline {
        let at = root as usize * ps + 8;
        assert_eq!(bytes[at], 1, "the key bucket's root is a branch page");
    }
    match bytes.len() % ps {
        0 => {}
        32 => {
            let db = bytes.len() - 32;
            assert_eq!(&bytes[db..], Sha256::digest(&bytes[..db]).as_slice());
            bytes.truncate(db);
        }
        other => panic!("{} bytes: {other} past whole pages", bytes.len()),
    }
    let db = dir.join("appended.db");
    std::fs::write(&db, &bytes).unwrap();
    let n = list.len() as u64;
    let done: Appended = bolt_append::append(
        &db,
        b"key",
        list.into_iter().map(Ok::<_, std::convert::Infallible>),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(done.appended, n);
    assert_eq!(done.last_key, Some(revision_key(new_head, 0)));
    let mut bytes = std::fs::read(&db).unwrap();
    assert_eq!(bytes.len() as u64, done.pages * ps as u64);
    assert_ne!(
        key_bucket_root(&bytes).1,
        0,
        "paged after the three-page value"
    );
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    let snapshot = dir.join("appended.snapshot");
    std::fs::write(&snapshot, &bytes).unwrap();

    // The stock status: the new head, every appended entry counted.
    let after = status(&snapshot);
    assert_eq!(after["revision"].as_i64().unwrap(), new_head);
    assert_eq!(
        after["totalKey"].as_u64().unwrap(),
        before["totalKey"].as_u64().unwrap() + n
    );
    // And ours.
    let ours = etcdsafe::snapshot::verify(&snapshot).unwrap();
    assert_eq!(ours.status.revision, new_head);

    // The stock restore, then etcd itself.
    let peer_port = free_port();
    let initial_cluster = format!("r0=http://127.0.0.1:{peer_port}");
    let data = dir.join("restored.etcd");
    let out = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", snapshot.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap(), "--name", "r0"])
        .args(["--initial-cluster", &initial_cluster])
        .args(["--initial-cluster-token", "append-test"])
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} snapshot restore: {}",
        version.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = EtcdMember::start_existing(version, "r0", &data, peer_port, &initial_cluster);
    let (now, rev) = get_all(&m, None);
    assert_eq!(rev, new_head, "{}: the head revision", version.label());
    assert_eq!(
        now,
        states[events.len()],
        "{}: every key now",
        version.label()
    );
    for (i, want) in states.iter().enumerate() {
        let r = head + i as i64;
        let (got, _) = get_all(&m, Some(r));
        assert_eq!(&got, want, "{}: every key at revision {r}", version.label());
    }
    // The delete: there at its revision - 1, gone at its revision, back two later.
    let live = |r: i64| get_all(&m, Some(r)).0.contains_key(b"new/b".as_slice());
    assert!(live(head + 3) && !live(head + 4) && !live(head + 5) && live(head + 6));
    // The sub-revisions of one txn: three keys modified at one revision.
    let at = states[3]
        .values()
        .filter(|(_, modified, _, _)| *modified == head + 3)
        .count();
    assert_eq!(at, 3);
    assert_eq!(
        states[3][b"new/a".as_slice()].2,
        2,
        "new/a's second version"
    );
    // The member takes writes after the appended revisions.
    let out = m.etcdctl(None, &["put", "after", "append", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"]["revision"].as_i64().unwrap(), new_head + 1);
    m.stop();
}

/// A handful of keys: etcd keeps the `key` bucket inline.
fn inline_case(version: EtcdVersion) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(version);
    cluster.ctl(&["put", "old/0", "zero"]);
    cluster.ctl(&["put", "old/1", "one"]);
    cluster.ctl(&["put", "old/0", "zero again"]);
    let (file, state, head) = snapshot(&cluster, dir.path());
    drop(cluster);
    assert_eq!(state.len(), 2);
    append_and_prove(version, dir.path(), &file, &state, head, true);
}

/// Hundreds of keys: the `key` bucket is a tree of several pages.
fn paged_case(version: EtcdVersion) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(version);
    cluster.ctl(&["put", "old/0", "zero"]);
    cluster.put_many("p", 600, 200);
    cluster.ctl(&["del", "p/000005"]);
    let (file, state, head) = snapshot(&cluster, dir.path());
    drop(cluster);
    assert_eq!(state.len(), 600);
    append_and_prove(version, dir.path(), &file, &state, head, false);
}

#[test]
fn an_inline_key_bucket_on_3_4() {
    inline_case(EtcdVersion::V3_4);
}

#[test]
fn an_inline_key_bucket_on_3_5() {
    inline_case(EtcdVersion::V3_5);
}

#[test]
fn a_paged_key_bucket_on_3_4() {
    paged_case(EtcdVersion::V3_4);
}

#[test]
fn a_paged_key_bucket_on_3_5() {
    paged_case(EtcdVersion::V3_5);
}
