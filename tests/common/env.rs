//! The one test environment of the end-to-end tests: a temp dir holding a config file, an age
//! key pair, a spool and a local store, next to a real etcd (3.4.23 or 3.5.1 on free loopback
//! ports, see [`EtcdCluster`]), and the `etcdsafe` binary run against them with its exit code
//! checked on every run.
//!
//! A test reads like what it does:
//!
//! ```ignore
//! let env = Env::new();
//! let id = env.save();
//! let stderr = env.run_err(&["backups", "fetch", "nope", "-o", "x.db"]);
//! let out = env.run_exit(&["restore", &id], Exit::RestoreStopped);
//! ```
//!
//! A test binary that needs more adds its own helpers in an `impl Env` block of its own (the way
//! `node.rs`'s `Node` is extended), built on these.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcdsafe::catalog::signature::SIGNATURE_SUFFIX;
use etcdsafe::catalog::{DATA_SUFFIX, FILES_SUFFIX, MANIFEST_SUFFIX};
use etcdsafe::exit::Exit;
use serde_json::Value;

use super::{age_keypair, etcdsafe, run_exit, write_config, EtcdCluster, EtcdVersion};

/// A temp dir with a config for `cluster`, an age key pair, a spool and a local store.
pub struct Env {
    pub cluster: EtcdCluster,
    pub dir: tempfile::TempDir,
    /// The config file (`etcdsafe.yaml` in `dir`); [`add_config`](Self::add_config) appends to it.
    pub config: PathBuf,
    /// The age identity file (0600) backups are encrypted to.
    pub identity: PathBuf,
    /// The public recipient of `identity`.
    pub recipient: String,
}

impl Env {
    /// A single etcd 3.5.1 member and a config with a local store.
    pub fn new() -> Env {
        Env::with_cluster(EtcdCluster::start(EtcdVersion::V3_5))
    }

    /// A config with a local store against a cluster the test started (a version, TLS or size
    /// of its own).
    pub fn with_cluster(cluster: EtcdCluster) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = age_keypair(dir.path(), "key.txt");
        let config = write_config(dir.path(), &cluster, &recipient);
        Env {
            cluster,
            dir,
            config,
            identity,
            recipient,
        }
    }

    /// Like [`with_cluster`](Self::with_cluster), with the config's `storage:` section replaced
    /// by `storage_yaml` (e.g. `S3Server::storage_yaml`).
    pub fn with_storage(cluster: EtcdCluster, storage_yaml: &str) -> Env {
        let env = Env::with_cluster(cluster);
        let text = std::fs::read_to_string(&env.config).unwrap();
        let (head, _) = text
            .split_once("storage:\n")
            .expect("write_config writes a storage section last");
        std::fs::write(&env.config, format!("{head}{storage_yaml}")).unwrap();
        env
    }

    /// The temp dir everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The local store's dir.
    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// The spool dir.
    pub fn spool(&self) -> PathBuf {
        self.path().join("spool")
    }

    /// Appends YAML to the config file.
    pub fn add_config(&self, yaml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(yaml);
        std::fs::write(&self.config, text).unwrap();
    }

    /// `etcdsafe --config <config> ARGS`, not run yet (add env vars or args, then hand it to
    /// `run_ok` / `run_err` / `run_exit`).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = etcdsafe();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Runs `etcdsafe ARGS`, which must succeed; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        super::run_ok(&mut self.cmd(args))
    }

    /// Runs `etcdsafe ARGS`, which must fail (exit code 1 or 2); returns stderr.
    pub fn run_err(&self, args: &[&str]) -> String {
        super::run_err(&mut self.cmd(args))
    }

    /// Runs `etcdsafe ARGS`, which must end with `exit`; returns the whole output.
    pub fn run_exit(&self, args: &[&str], exit: Exit) -> Output {
        run_exit(&mut self.cmd(args), exit)
    }

    /// `snapshot save`; returns the new backup's id.
    pub fn save(&self) -> String {
        self.run_ok(&["snapshot", "save"]).trim().to_string()
    }

    /// `snapshot save -w json`; returns the manifest it prints.
    pub fn save_json(&self) -> Value {
        serde_json::from_str(&self.run_ok(&["snapshot", "save", "-w", "json"]))
            .expect("manifest JSON")
    }

    /// `backups fetch ID -o OUT --identity <identity>`, not run yet.
    pub fn fetch_cmd(&self, id: &str, out: &Path) -> Command {
        let mut cmd = self.cmd(&["backups", "fetch", id, "-o"]);
        cmd.arg(out).arg("--identity").arg(&self.identity);
        cmd
    }

    /// The ids `backups list -w json` shows, in its order.
    pub fn listed_ids(&self) -> Vec<String> {
        let out: Value =
            serde_json::from_str(&self.run_ok(&["backups", "list", "-w", "json"])).unwrap();
        out["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// A backup's manifest in the local store.
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.store().join(format!("{id}{MANIFEST_SUFFIX}"))
    }

    /// A backup's encrypted snapshot in the local store.
    pub fn object_path(&self, id: &str) -> PathBuf {
        self.store().join(format!("{id}{DATA_SUFFIX}"))
    }

    /// A backup's encrypted control-plane files archive in the local store.
    pub fn files_path(&self, id: &str) -> PathBuf {
        self.store().join(format!("{id}{FILES_SUFFIX}"))
    }

    /// A backup's manifest signature in the local store.
    pub fn signature_path(&self, id: &str) -> PathBuf {
        self.store().join(format!("{id}{SIGNATURE_SUFFIX}"))
    }

    /// Edits a stored manifest in place (as someone who can write the store would).
    pub fn edit_manifest(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let path = self.manifest_path(id);
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut manifest);
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    }

    /// The names in the local store, sorted (none when it does not exist yet).
    pub fn stored(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}
