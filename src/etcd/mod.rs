//! Talking to etcd: which endpoint and TLS files to use, connecting, and the calls a backup needs.

pub mod health;
pub mod kubeadm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdConfig;
pub use kubeadm::{EtcdManifest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("etcd manifest {path}: no client URL in --listen-client-urls or --advertise-client-urls; set etcd.endpoints")]
    NoEndpointInManifest { path: PathBuf },
    #[error("{key}: cannot read {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd endpoint {endpoint} uses https but no CA is configured: set etcd.cacert (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)")]
    MissingCa { endpoint: String },
    #[error("cannot reach etcd at {endpoint}: {message}{hint}")]
    Unreachable {
        endpoint: String,
        message: String,
        hint: &'static str,
    },
    #[error("etcd at {endpoint}: {call} failed: {message}")]
    Call {
        endpoint: String,
        call: &'static str,
        message: String,
    },
    #[error("etcd at {endpoint}: {call} timed out after {timeout:?}: is etcd overloaded or the network path broken?")]
    Timeout {
        endpoint: String,
        call: &'static str,
        timeout: Duration,
    },
}

/// Where and how to connect, after discovery.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dial_timeout: Duration,
    pub stream_timeout: Duration,
}

impl Target {
    /// Resolves the config: explicit values win, the kubeadm manifest fills in what is missing.
    pub fn resolve(config: &EtcdConfig) -> Result<Target, EtcdError> {
        let mut target = Target {
            endpoints: config.endpoints.clone(),
            cacert: config.cacert.clone(),
            cert: config.cert.clone(),
            key: config.key.clone(),
            dial_timeout: config.dial_timeout,
            stream_timeout: config.stream_timeout,
        };
        if let Some(path) = &config.manifest {
            let manifest = EtcdManifest::load(path)?;
            if target.endpoints.is_empty() {
                let endpoint = manifest
                    .client_endpoint()
                    .ok_or_else(|| EtcdError::NoEndpointInManifest { path: path.clone() })?;
                target.endpoints.push(endpoint);
            }
            let from = |flag: &str| manifest.flag(flag).map(PathBuf::from);
            target.cacert = target.cacert.or_else(|| from("trusted-ca-file"));
            if target.cert.is_none() && target.key.is_none() {
                target.cert = from("cert-file");
                target.key = from("key-file");
            }
        }
        Ok(target)
    }

    fn tls_options(&self, endpoint: &str) -> Result<Option<TlsOptions>, EtcdError> {
        if !endpoint.to_ascii_lowercase().starts_with("https://") {
            return Ok(None);
        }
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| EtcdError::TlsFile {
                key,
                path: path.to_path_buf(),
                source,
            })
        };
        let ca = self.cacert.as_deref().ok_or_else(|| EtcdError::MissingCa {
            endpoint: endpoint.to_string(),
        })?;
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("etcd.cacert", ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read("etcd.cert", cert)?,
                read("etcd.key", key)?,
            ));
        }
        Ok(Some(tls))
    }

    /// Connects to one endpoint and proves the connection with a Status call.
    pub async fn connect(&self, endpoint: &str) -> Result<Client, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if let Some(tls) = self.tls_options(endpoint)? {
            options = options.with_tls(tls);
        }
        let connect = Client::connect([endpoint], Some(options));
        let mut client = tokio::time::timeout(self.dial_timeout, connect)
            .await
            .map_err(|_| unreachable(endpoint, "connection timed out".to_string()))?
            .map_err(|e| unreachable(endpoint, error_text(&e)))?;
        tokio::time::timeout(self.dial_timeout, client.status())
            .await
            .map_err(|_| unreachable(endpoint, "no answer to Status".to_string()))?
            .map_err(|e| unreachable(endpoint, error_text(&e)))?;
        Ok(client)
    }

    /// Connects to the first endpoint that answers, in the configured order.
    pub async fn connect_any(&self) -> Result<(String, Client), EtcdError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.connect(endpoint).await {
                Ok(client) => return Ok((endpoint.clone(), client)),
                Err(e) => {
                    if self.endpoints.len() > 1 {
                        tracing::warn!(endpoint = %endpoint, error = %e, "etcd endpoint not usable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EtcdError::Unreachable {
            endpoint: "(none)".to_string(),
            message: "no endpoint configured".to_string(),
            hint: "",
        }))
    }
}

/// What went wrong, in one line: the root cause (a refused connection, a rejected certificate)
/// rather than tonic's nested debug text. etcd-client's errors do not expose their sources, so
/// its variants are opened here.
fn error_text(error: &etcd_client::Error) -> String {
    fn deepest(error: &(dyn std::error::Error + 'static)) -> String {
        let mut current = error;
        while let Some(next) = current.source() {
            current = next;
        }
        current.to_string()
    }
    let text = match error {
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => deepest(source),
            None => format!("{:?}: {}", status.code(), status.message()),
        },
        etcd_client::Error::TransportError(e) => deepest(e),
        other => other.to_string(),
    };
    text.replace('\n', " ")
}

fn unreachable(endpoint: &str, message: String) -> EtcdError {
    let lower = message.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("badsignature")
        || lower.contains("invalid peer certificate")
    {
        ": the server certificate is not signed by etcd.cacert; point etcd.cacert at etcd's CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)"
    } else if lower.contains("certificate required") || lower.contains("bad certificate") {
        ": etcd wants a client certificate; set etcd.cert and etcd.key (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt and .key)"
    } else if lower.contains("refused")
        || lower.contains("timed out")
        || lower.contains("no answer")
    {
        ": is etcd running, and is etcd.endpoints right?"
    } else {
        ""
    };
    EtcdError::Unreachable {
        endpoint: endpoint.to_string(),
        message,
        hint,
    }
}

/// Facts about the member a snapshot is taken from, recorded in the manifest.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub endpoint: String,
    pub cluster_id: u64,
    pub member_id: u64,
    pub member_name: String,
    pub version: String,
    pub leader: u64,
    pub revision: i64,
    pub db_size: i64,
    /// Every member of the cluster (MemberList), in etcd's order.
    pub members: Vec<Member>,
}

/// One cluster member as MemberList reports it. A member added but never started has no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Runs one etcd call with a timeout, mapping errors to `EtcdError` with the endpoint and call.
pub(crate) async fn timed<T>(
    endpoint: &str,
    call: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| EtcdError::Timeout {
            endpoint: endpoint.to_string(),
            call,
            timeout,
        })?
        .map_err(|e| EtcdError::Call {
            endpoint: endpoint.to_string(),
            call,
            message: error_text(&e),
        })
}

/// Reads member, cluster and revision facts from the connected member.
pub async fn member_info(
    client: &mut Client,
    endpoint: &str,
    timeout: Duration,
) -> Result<MemberInfo, EtcdError> {
    let status = timed(endpoint, "Status", timeout, client.status()).await?;
    let (cluster_id, member_id, revision) = status
        .header()
        .map(|h| (h.cluster_id(), h.member_id(), h.revision()))
        .unwrap_or_default();
    let members = timed(endpoint, "MemberList", timeout, client.member_list()).await?;
    let member_name = members
        .members()
        .iter()
        .find(|m| m.id() == member_id)
        .map(|m| m.name().to_string())
        .unwrap_or_default();
    let all = members
        .members()
        .iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
        })
        .collect();
    Ok(MemberInfo {
        endpoint: endpoint.to_string(),
        cluster_id,
        member_id,
        member_name,
        version: status.version().to_string(),
        leader: status.leader(),
        revision,
        db_size: status.db_size(),
        members: all,
    })
}

/// Opens the `Maintenance.Snapshot` stream.
pub async fn open_snapshot(
    client: &mut Client,
    endpoint: &str,
    timeout: Duration,
) -> Result<etcd_client::SnapshotStreaming, EtcdError> {
    timed(endpoint, "Snapshot", timeout, client.snapshot()).await
}

/// Reads the next chunk of a snapshot stream, failing when etcd stays silent for `timeout`.
pub async fn next_chunk(
    stream: &mut etcd_client::SnapshotStreaming,
    endpoint: &str,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, EtcdError> {
    let message = timed(endpoint, "Snapshot stream", timeout, stream.message()).await?;
    // The chunk is taken out of the message, not copied (the message is dropped here).
    Ok(message.map(|mut m| std::mem::take(&mut m.0.blob)))
}
