//! Reading kubeadm's etcd static pod manifest (`/etc/kubernetes/manifests/etcd.yaml`).
//!
//! kubeadm passes every setting as a `--flag=value` entry of the etcd container's `command`.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read etcd manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd manifest {path}: not a Pod manifest: {problem}")]
    NotAPod {
        path: PathBuf,
        #[source]
        problem: NotAPod,
    },
    #[error("etcd manifest {path}: no container runs etcd (looked for a container named etcd, or a command that starts with etcd)")]
    NoEtcdContainer { path: PathBuf },
}

/// Why a static pod manifest is not a Pod manifest.
#[derive(Debug, thiserror::Error)]
pub enum NotAPod {
    #[error("{0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("kind is not Pod")]
    Kind,
    #[error("no spec.containers")]
    NoContainers,
}

/// The containers of a static pod manifest (etcd's, kube-apiserver's).
pub fn pod_containers(text: &str) -> Result<Vec<Value>, NotAPod> {
    let doc: Value = serde_yaml::from_str(text).map_err(NotAPod::Yaml)?;
    if doc.get("kind").and_then(Value::as_str) != Some("Pod") {
        return Err(NotAPod::Kind);
    }
    doc.get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence)
        .cloned()
        .ok_or(NotAPod::NoContainers)
}

/// The `--name=value` flags of a static pod container's `command` then `args`, in the order
/// written (a bare `--name` reads as `true`). The one reader of kubeadm manifest flags: etcd
/// discovery, restore and the API server readiness probe all use it.
pub fn container_flags(container: &Value) -> Vec<(String, String)> {
    let mut flags = Vec::new();
    for field in ["command", "args"] {
        for word in container[field].as_sequence().into_iter().flatten() {
            if let Some(flag) = word.as_str().and_then(|w| w.strip_prefix("--")) {
                let (name, value) = flag.split_once('=').unwrap_or((flag, "true"));
                flags.push((name.to_string(), value.to_string()));
            }
        }
    }
    flags
}

/// The flags of the first container of a static pod manifest; none when it does not parse.
pub fn first_container_flags(text: &str) -> Vec<(String, String)> {
    let doc: Value = serde_yaml::from_str(text).unwrap_or_default();
    doc["spec"]["containers"]
        .as_sequence()
        .and_then(|s| s.first())
        .map(container_flags)
        .unwrap_or_default()
}

/// The etcd flags from a kubeadm static pod manifest, in the order written.
#[derive(Debug, Clone)]
pub struct EtcdManifest {
    pub path: PathBuf,
    pub flags: Vec<(String, String)>,
}

impl EtcdManifest {
    pub fn load(path: &Path) -> Result<EtcdManifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<EtcdManifest, ManifestError> {
        let containers = pod_containers(text).map_err(|problem| ManifestError::NotAPod {
            path: path.to_path_buf(),
            problem,
        })?;
        let words = |c: &Value, field: &str| -> Vec<String> {
            c.get(field)
                .and_then(Value::as_sequence)
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let container = containers
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some("etcd"))
            .or_else(|| {
                containers.iter().find(|c| {
                    words(c, "command")
                        .first()
                        .is_some_and(|w| w.rsplit('/').next() == Some("etcd"))
                })
            })
            .ok_or_else(|| ManifestError::NoEtcdContainer {
                path: path.to_path_buf(),
            })?;
        Ok(EtcdManifest {
            path: path.to_path_buf(),
            flags: container_flags(container),
        })
    }

    /// The last value given for a flag (etcd, like every pflag program, lets the last one win).
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The client URL to use from this node: a loopback URL etcd listens on, else the advertised one.
    pub fn client_endpoint(&self) -> Option<String> {
        let split = |flag| {
            self.flag(flag)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let listen = split("listen-client-urls");
        let loopback = listen
            .iter()
            .find(|u| u.contains("://127.0.0.1:") || u.contains("://localhost:"));
        loopback
            .cloned()
            .or_else(|| split("advertise-client-urls").into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubeadm v1.23 writes for a single control-plane node (trimmed of probes and resources).
    pub const KUBEADM_ETCD_YAML: &str = r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://10.0.0.10:2379
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.10:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://10.0.0.10:2380
    - --initial-cluster=cp1=https://10.0.0.10:2380
    - --key-file=/etc/kubernetes/pki/etcd/server.key
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.10:2379
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --listen-peer-urls=https://10.0.0.10:2380
    - --name=cp1
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    image: k8s.gcr.io/etcd:3.5.1-0
    imagePullPolicy: IfNotPresent
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  priorityClassName: system-node-critical
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /var/lib/etcd
      type: DirectoryOrCreate
    name: etcd-data
status: {}
"#;

    #[test]
    fn reads_kubeadm_flags() {
        let m = EtcdManifest::parse(Path::new("etcd.yaml"), KUBEADM_ETCD_YAML).unwrap();
        assert_eq!(m.flag("name"), Some("cp1"));
        assert_eq!(m.flag("data-dir"), Some("/var/lib/etcd"));
        assert_eq!(
            m.flag("trusted-ca-file"),
            Some("/etc/kubernetes/pki/etcd/ca.crt")
        );
        assert_eq!(
            m.client_endpoint().as_deref(),
            Some("https://127.0.0.1:2379")
        );
    }

    #[test]
    fn falls_back_to_advertised_url() {
        let text = KUBEADM_ETCD_YAML.replace(
            "    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.10:2379\n",
            "",
        );
        let m = EtcdManifest::parse(Path::new("etcd.yaml"), &text).unwrap();
        assert_eq!(
            m.client_endpoint().as_deref(),
            Some("https://10.0.0.10:2379")
        );
    }

    #[test]
    fn rejects_other_documents() {
        let err = EtcdManifest::parse(Path::new("x.yaml"), "kind: Deployment\n").unwrap_err();
        assert!(err.to_string().contains("not a Pod"), "{err}");
        let err = EtcdManifest::parse(
            Path::new("x.yaml"),
            "kind: Pod\nspec: { containers: [ { name: nginx, command: [nginx] } ] }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no container runs etcd"), "{err}");
    }
}
