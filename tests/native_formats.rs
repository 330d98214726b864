//! The WAL, `.snap` file and member/cluster ids written by `etcdsafe::native` against the stock
//! tools: `etcdutl snapshot restore` (3.5.1) and `etcdctl snapshot restore` (3.4.23), and real
//! etcd started on the result (loopback only, temp dirs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, run_ok, EtcdCluster, EtcdVersion};
use etcdsafe::native::membership::{id_hex, Membership};
use etcdsafe::native::pb;
use etcdsafe::native::snapfile::read_snap_file;
use etcdsafe::native::wal::{
    read_records, write_wal_and_snap, RaftStart, FIRST_WAL_NAME, METADATA_TYPE, SEGMENT_SIZE_BYTES,
    SNAPSHOT_TYPE,
};

const TOKEN: &str = "native-formats-token";

/// A three-member cluster layout on free loopback ports.
struct Layout {
    names: Vec<String>,
    peer: Vec<u16>,
    client: Vec<u16>,
    initial_cluster: String,
}

impl Layout {
    fn new(n: usize) -> Layout {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let peer: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let client: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial_cluster = names
            .iter()
            .zip(&peer)
            .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Layout {
            names,
            peer,
            client,
            initial_cluster,
        }
    }
}

/// Saves a snapshot of a fresh single-member cluster of `version` holding `foo=bar`.
fn make_snapshot(version: EtcdVersion, dir: &Path) -> PathBuf {
    let cluster = EtcdCluster::start(version);
    cluster.ctl(&["put", "foo", "bar"]);
    let path = dir.join("snap.db");
    cluster.ctl(&["snapshot", "save", path.to_str().unwrap()]);
    path
}

/// The stock restore of `snap` for member `name` into `data_dir`.
fn stock_restore(
    version: EtcdVersion,
    snap: &Path,
    initial_cluster: &str,
    name: &str,
    advertise: &str,
    data_dir: &Path,
) {
    run_ok(
        Command::new(version.snapshot_tool())
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(snap)
            .arg("--name")
            .arg(name)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg(TOKEN)
            .arg("--initial-advertise-peer-urls")
            .arg(advertise)
            .arg("--data-dir")
            .arg(data_dir),
    );
}

fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{} in {}: {found:?}", suffix, dir.display());
    found.pop().unwrap()
}

/// Running etcd members, killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcdctl(version: EtcdVersion, port: u16, args: &[&str]) -> std::process::Output {
    Command::new(version.bin("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{port}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// Starts real etcd of `version` on each data dir and waits until every member is healthy.
fn start_cluster(version: EtcdVersion, layout: &Layout, dirs: &[PathBuf], logs: &Path) -> Procs {
    let mut procs = Procs(Vec::new());
    for (i, dir) in dirs.iter().enumerate() {
        let log = std::fs::File::create(logs.join(format!("{}.log", layout.names[i]))).unwrap();
        let child = Command::new(version.bin("etcd"))
            .arg("--name")
            .arg(&layout.names[i])
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", layout.client[i]))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", layout.client[i]))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", layout.peer[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", layout.peer[i]))
            .arg("--initial-cluster")
            .arg(&layout.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(TOKEN)
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        procs.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, &port) in layout.client.iter().enumerate() {
        loop {
            if let Some(status) = procs.0[i].try_wait().unwrap() {
                panic!(
                    "etcd {} {} exited ({status}): {}",
                    version.label(),
                    layout.names[i],
                    std::fs::read_to_string(logs.join(format!("{}.log", layout.names[i])))
                        .unwrap_or_default()
                );
            }
            if etcdctl(version, port, &["endpoint", "health"])
                .status
                .success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} {} not healthy in 60s: {}",
                version.label(),
                layout.names[i],
                std::fs::read_to_string(logs.join(format!("{}.log", layout.names[i])))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    procs
}

/// Our WAL and `.snap` in `ours` against the stock tool's in `stock` (same flags).
fn compare_dirs(
    version: EtcdVersion,
    stock: &Path,
    ours: &Path,
    membership: &Membership,
    name: &str,
) {
    let commit = membership.members.len() as u64;
    // --- WAL ---
    let stock_wal = std::fs::read(stock.join("member/wal").join(FIRST_WAL_NAME)).unwrap();
    let our_wal = std::fs::read(ours.join("member/wal").join(FIRST_WAL_NAME)).unwrap();
    assert_eq!(
        stock_wal.len() as u64,
        SEGMENT_SIZE_BYTES,
        "stock preallocation"
    );
    assert_eq!(our_wal.len(), stock_wal.len(), "WAL file length");
    let (stock_recs, stock_end) = read_records(&stock_wal).unwrap();
    let (our_recs, our_end) = read_records(&our_wal).unwrap();
    let types = |recs: &[etcdsafe::native::wal::WalRecord]| {
        recs.iter().map(|r| r.record_type).collect::<Vec<_>>()
    };
    // crc, metadata, empty snapshot, one conf-change entry per member, hard state, snapshot.
    let mut expected_types = vec![4, 1, 5];
    expected_types.extend(membership.members.iter().map(|_| 2));
    expected_types.extend([3, 5]);
    assert_eq!(types(&stock_recs), expected_types);
    assert_eq!(types(&our_recs), types(&stock_recs));
    assert!(stock_end > 300 && stock_end % 8 == 0, "{stock_end}");
    assert!(
        stock_wal[stock_end..].iter().all(|&b| b == 0),
        "stock WAL is zero after its records"
    );
    assert!(our_wal[our_end..].iter().all(|&b| b == 0));
    let wal_entries = |d: &Path| {
        std::fs::read_dir(d.join("member/wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    };
    assert_eq!(wal_entries(stock), wal_entries(ours), "WAL dir listing");
    match version {
        EtcdVersion::V3_5 => {
            assert_eq!(our_end, stock_end, "written WAL length");
            assert!(
                our_wal[..our_end] == stock_wal[..stock_end],
                "WAL records differ from etcdutl's"
            );
        }
        EtcdVersion::V3_4 => {
            // 3.4's walpb.Snapshot has no conf_state: everything but the last record
            // (the snapshot at the commit) is byte-identical.
            let n = stock_recs.len();
            assert_eq!(our_recs.len(), n);
            assert_eq!(our_recs[..n - 1], stock_recs[..n - 1]);
            let last_frame_start = stock_end
                - (8 + {
                    let rec = pb::wal_record(
                        SNAPSHOT_TYPE,
                        stock_recs[n - 1].crc,
                        stock_recs[n - 1].data.as_deref(),
                    );
                    rec.len().div_ceil(8) * 8
                });
            assert!(our_wal[..last_frame_start] == stock_wal[..last_frame_start]);
            let last = |recs: &[etcdsafe::native::wal::WalRecord]| {
                let data = recs[n - 1].data.clone().unwrap();
                let f = pb::decode(&data).unwrap();
                (
                    recs[n - 1].record_type,
                    pb::field(&f, 1).unwrap().as_u64(),
                    pb::field(&f, 2).unwrap().as_u64(),
                )
            };
            assert_eq!(last(&our_recs), last(&stock_recs));
            assert_eq!(
                pb::wal_snapshot(commit, 1, None),
                stock_recs[n - 1].data.clone().unwrap()
            );
        }
    }

    // Member and cluster ids from the stock WAL's metadata.
    let meta = stock_recs
        .iter()
        .find(|r| r.record_type == METADATA_TYPE)
        .unwrap();
    let f = pb::decode(meta.data.as_deref().unwrap()).unwrap();
    assert_eq!(
        pb::field(&f, 1).unwrap().as_u64(),
        Some(membership.member(name).unwrap().id)
    );
    assert_eq!(
        pb::field(&f, 2).unwrap().as_u64(),
        Some(membership.cluster_id)
    );

    // --- .snap ---
    let stock_snap = only_file(&stock.join("member/snap"), ".snap");
    let our_snap = only_file(&ours.join("member/snap"), ".snap");
    assert_eq!(stock_snap.file_name(), our_snap.file_name());
    assert_eq!(
        stock_snap.file_name().unwrap().to_str().unwrap(),
        format!("0000000000000001-{commit:016x}.snap")
    );
    let stock_bytes = std::fs::read(&stock_snap).unwrap();
    let our_bytes = std::fs::read(&our_snap).unwrap();
    let stock_inner = read_snap_file(&stock_bytes).unwrap();
    let our_inner = read_snap_file(&our_bytes).unwrap();
    // Compare the v2 JSON first for a readable failure, then the whole files.
    let json = |inner: &[u8]| {
        let f = pb::decode(inner).unwrap();
        String::from_utf8(pb::field(&f, 1).unwrap().as_bytes().unwrap().to_vec()).unwrap()
    };
    assert_eq!(json(our_inner), json(stock_inner), "v2 store JSON");
    assert!(our_bytes == stock_bytes, ".snap files differ");
}

/// Our files against the stock tool's, then a real cluster of `version` on our WAL + snap
/// (with the stock tool's bbolt file, which is not this module's job).
fn prove(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let snap = make_snapshot(version, tmp.path());
    let layout = Layout::new(3);
    let membership = Membership::from_flags(&layout.initial_cluster, TOKEN).unwrap();

    let mut ours_dirs = Vec::new();
    for i in 0..layout.names.len() {
        let stock = tmp.path().join(format!("stock-{i}"));
        let ours = tmp.path().join(format!("ours-{i}"));
        stock_restore(
            version,
            &snap,
            &layout.initial_cluster,
            &layout.names[i],
            &format!("http://127.0.0.1:{}", layout.peer[i]),
            &stock,
        );
        let start = write_wal_and_snap(&ours, None, &membership, &layout.names[i]).unwrap();
        assert_eq!(start, RaftStart { commit: 3, term: 1 });

        compare_dirs(version, &stock, &ours, &membership, &layout.names[i]);

        // Our dir gets the stock bbolt file (written by the other half of the restore).
        std::fs::copy(stock.join("member/snap/db"), ours.join("member/snap/db")).unwrap();
        ours_dirs.push(ours);
    }

    // --- real etcd on our WAL + snap ---
    let procs = start_cluster(version, &layout, &ours_dirs, tmp.path());
    for (i, &port) in layout.client.iter().enumerate() {
        let out = etcdctl(version, port, &["member", "list", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["header"]["cluster_id"].as_u64(),
            Some(membership.cluster_id),
            "cluster id {}",
            id_hex(membership.cluster_id)
        );
        assert_eq!(
            v["header"]["member_id"].as_u64(),
            Some(membership.member(&layout.names[i]).unwrap().id)
        );
        let mut listed: Vec<(u64, String, Vec<String>)> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["ID"].as_u64().unwrap(),
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["peerURLs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        listed.sort();
        let expected: Vec<(u64, String, Vec<String>)> = membership
            .members
            .iter()
            .map(|m| (m.id, m.name.clone(), m.peer_urls.clone()))
            .collect();
        assert_eq!(listed, expected);
        let out = etcdctl(version, port, &["get", "foo", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bar");
    }
    // The cluster takes writes (raft continues from our log).
    let out = etcdctl(version, layout.client[0], &["put", "after", "restore"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(
        version,
        layout.client[2],
        &["get", "after", "--print-value-only", "--consistency=l"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "restore");
    drop(procs);
}

#[test]
fn matches_etcdutl_3_5_and_etcd_3_5_starts() {
    prove(EtcdVersion::V3_5);
}

#[test]
fn matches_etcdctl_3_4_and_etcd_3_4_starts() {
    prove(EtcdVersion::V3_4);
}

/// A member with two peer URLs given out of order and an upper-case scheme: ids, URL order
/// and the member JSON still match the stock tool (files only; nothing is started).
fn prove_multi_url(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let snap = make_snapshot(version, tmp.path());
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let initial_cluster =
        format!("a=HTTP://127.0.0.1:{p2},a=http://127.0.0.1:{p1},,b=http://localhost:{p3}");
    let membership = Membership::from_flags(&initial_cluster, TOKEN).unwrap();
    let a = membership.member("a").unwrap();
    let mut expected = vec![
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    ];
    expected.sort();
    assert_eq!(a.peer_urls, expected);
    for (name, advertise) in [
        ("a", format!("http://127.0.0.1:{p1},http://127.0.0.1:{p2}")),
        ("b", format!("http://localhost:{p3}")),
    ] {
        let stock = tmp.path().join(format!("stock-{name}"));
        let ours = tmp.path().join(format!("ours-{name}"));
        stock_restore(version, &snap, &initial_cluster, name, &advertise, &stock);
        write_wal_and_snap(&ours, None, &membership, name).unwrap();
        compare_dirs(version, &stock, &ours, &membership, name);
    }
}

#[test]
fn multi_url_member_matches_etcdutl_3_5() {
    prove_multi_url(EtcdVersion::V3_5);
}

#[test]
fn multi_url_member_matches_etcdctl_3_4() {
    prove_multi_url(EtcdVersion::V3_4);
}

#[test]
fn single_default_member_ids_match_etcd() {
    // The ids a stock single-member etcd reports for the harness's flags.
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let m = cluster.member();
    let membership =
        Membership::from_flags(&format!("{}={}", m.name, m.peer_url()), "etcdsafe-test").unwrap();
    let out = cluster.ctl(&["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["header"]["cluster_id"].as_u64(),
        Some(membership.cluster_id)
    );
    assert_eq!(
        v["members"][0]["ID"].as_u64(),
        Some(membership.members[0].id)
    );
    assert_eq!(m.id_hex(None), id_hex(membership.members[0].id));
}
