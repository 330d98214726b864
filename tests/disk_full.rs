//! Full disks, on real small filesystems (tmpfs mounted by the test; needs root, as CI is):
//! a spool dir without room is refused before anything is written, and a store that fills up
//! mid-upload fails with the path named, leaving no partial object and no spool file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed (these tests need root, as CI runs them): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn config(dir: &Path, cluster: &EtcdCluster, spool: &Path, store: &Path) -> PathBuf {
    let (_, recipient) = age_keypair(dir, "key.txt");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "etcd: {{ endpoints: [{}] }}\nspool-dir: {}\nencryption: {{ recipients: [{recipient}] }}\nstorage: {{ local: {{ path: {} }} }}\n",
            cluster.member().client_url(),
            spool.display(),
            store.display()
        ),
    )
    .unwrap();
    path
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn spool_without_room_is_refused_up_front() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("small"), "4m");
    let spool = small.path.join("spool");
    let store = dir.path().join("store");
    let config = config(dir.path(), &cluster, &spool, &store);
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert!(err.contains(&spool.display().to_string()), "{err}");
    assert!(err.contains("free space"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(entries(&spool).is_empty());
    assert!(entries(&store).is_empty());
}

#[test]
fn store_filling_up_mid_upload_leaves_nothing() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    // ~12 MB of incompressible values: the stored object cannot fit in 4 MiB.
    cluster.put_many_with("/registry/secrets/ns", 120, 100_000, true);
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("small"), "4m");
    let store = small.path.join("store");
    let spool = dir.path().join("spool");
    let config = config(dir.path(), &cluster, &spool, &store);
    // With control-plane files: their object is written first and fits; the snapshot's does not,
    // and the files object must not outlive the failed run either.
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.crt"), "ca").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("include-files: [{}]\n", pki.display()));
    std::fs::write(&config, text).unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&config)
            .args(["snapshot", "save"]),
    );
    assert!(err.contains(&store.display().to_string()), "{err}");
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        entries(&store).is_empty(),
        "no partial object: {:?}",
        entries(&store)
    );
    assert!(
        entries(&spool).is_empty(),
        "no spool file: {:?}",
        entries(&spool)
    );
}
