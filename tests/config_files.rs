//! Every shipped config parses, and `config check` names every problem in a bad one.

mod common;

use std::path::Path;

use common::*;
use etcdsafe::config::{Config, ConfigError, CONFIG_ENV};

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        match Config::load(&path) {
            Ok(_) => {}
            // Shipped configs point at files of the machine they run on (the etcd PKI, the
            // recipients file); those may be absent here. Any other problem is a defect.
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    assert!(
                        p.contains("cannot read /etc/")
                            || p.contains("cannot read /var/tmp/etcdsafe/"),
                        "{}: {p}",
                        path.display()
                    );
                }
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    assert!(seen >= 2, "config/ holds local.yaml and kubeadm.yaml");
}

#[test]
fn config_check_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "etcd:\n  endpoints: [https://127.0.0.1:2379, 10.0.0.1:2379]\ncompression: { level: 99 }\n",
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&bad)
            .args(["config", "check"]),
    );
    assert!(
        err.contains("3 problem(s)") || err.contains("4 problem(s)"),
        "{err}"
    );
    assert!(err.contains("etcd.cacert"), "{err}");
    assert!(err.contains("needs a scheme"), "{err}");
    assert!(err.contains("compression.level"), "{err}");
    assert!(err.contains("encryption: missing"), "{err}");

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "etcd:\n  endpoints: [http://127.0.0.1:2379]\nspool_dir: /tmp\n",
    )
    .unwrap();
    let err = run_err(
        etcdsafe()
            .arg("--config")
            .arg(&typo)
            .args(["config", "check"]),
    );
    assert!(err.contains("spool_dir"), "{err}");

    let (_, recipient) = age_keypair(dir.path(), "k.txt");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nencryption: {{ recipients: [{recipient}] }}\n"),
    )
    .unwrap();
    let out = run_ok(
        etcdsafe()
            .arg("--config")
            .arg(&good)
            .args(["config", "check"]),
    );
    assert!(out.contains("ok"), "{out}");

    // The config path falls back to $ETCDSAFE_CONFIG.
    let out = run_ok(etcdsafe().env(CONFIG_ENV, &good).args(["config", "check"]));
    assert!(out.contains(good.to_str().unwrap()), "{out}");
}
