//! The facts of this node a restore is planned on, gathered in one place (read only).

use std::path::{Path, PathBuf};

use super::plan::{self, NodeFacts};
use super::readyz::Probe;
use super::steps::{self, Engine};
use super::RestoreError;

/// What was found on the node.
#[derive(Debug, Clone)]
pub struct Found {
    pub facts: NodeFacts,
    /// etcd.yaml as found (the journal keeps these bytes for --rollback).
    pub original_etcd_yaml: String,
    /// How to ask kube-apiserver whether it is ready, from its manifest as found.
    pub apiserver_readyz: Option<Probe>,
}

/// Reads the static pod manifests under `manifests_dir`, finds the restore tool (for the stock
/// engine), and looks at the target data dir (`data_dir`, or the default for `backup_id`).
pub fn gather(
    manifests_dir: &Path,
    data_dir: Option<&Path>,
    backup_id: &str,
    engine: Engine,
    etcdutl: Option<&Path>,
) -> Result<Found, RestoreError> {
    let etcd_yaml_path = manifests_dir.join(steps::ETCD_YAML);
    let original = std::fs::read_to_string(&etcd_yaml_path).map_err(|source| {
        RestoreError::NoEtcdManifest {
            path: etcd_yaml_path.clone(),
            source,
        }
    })?;
    let em = crate::etcd::EtcdManifest::parse(&etcd_yaml_path, &original)?;
    let flag = |n: &str| em.flag(n).map(str::to_string);
    let host_path = steps::etcd_data_host_path(&original);
    let tool = match engine {
        Engine::Etcdutl => steps::detect_tool(etcdutl),
        Engine::Native => None,
    };
    let old = host_path
        .clone()
        .or_else(|| flag("data-dir"))
        .unwrap_or_default();
    let target: PathBuf = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| plan::default_target(&old, backup_id));
    let apiserver_path = manifests_dir.join(steps::APISERVER_YAML);
    let apiserver_readyz = std::fs::read_to_string(&apiserver_path)
        .ok()
        .map(|t| Probe::from_manifest(&t));
    let facts = NodeFacts {
        name: flag("name"),
        initial_advertise_peer_urls: flag("initial-advertise-peer-urls"),
        initial_cluster: flag("initial-cluster"),
        data_dir: flag("data-dir"),
        host_path,
        apiserver_manifest: apiserver_path.exists(),
        manifests_dir: manifests_dir.to_path_buf(),
        target: steps::target_state(&target),
        free_bytes: steps::free_bytes_for(&target),
        tool,
    };
    Ok(Found {
        facts,
        original_etcd_yaml: original,
        apiserver_readyz,
    })
}
