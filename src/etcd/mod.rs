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
    #[error("cannot reach etcd at {endpoint}: {source}{}", source.hint())]
    Unreachable {
        endpoint: String,
        #[source]
        source: EtcdCause,
    },
    #[error("cannot reach etcd at {endpoint}: connection timed out{HINT_NOT_RUNNING}")]
    ConnectTimeout { endpoint: String },
    #[error("cannot reach etcd at {endpoint}: no answer to Status{HINT_NOT_RUNNING}")]
    NoAnswer { endpoint: String },
    #[error("cannot reach etcd at (none): no endpoint configured")]
    NoEndpoint,
    #[error("etcd at {endpoint}: {call} failed: {source}")]
    Call {
        endpoint: String,
        call: &'static str,
        #[source]
        source: EtcdCause,
    },
    /// An error kept in a finding ([`health::ClusterHealth::alarm_error`]) and returned later.
    #[error(transparent)]
    Reported(std::sync::Arc<EtcdError>),
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
            .map_err(|_| EtcdError::ConnectTimeout {
                endpoint: endpoint.to_string(),
            })?
            .map_err(|e| unreachable(endpoint, e))?;
        tokio::time::timeout(self.dial_timeout, client.status())
            .await
            .map_err(|_| EtcdError::NoAnswer {
                endpoint: endpoint.to_string(),
            })?
            .map_err(|e| unreachable(endpoint, e))?;
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
        Err(last.unwrap_or(EtcdError::NoEndpoint))
    }
}

const HINT_NOT_RUNNING: &str = ": is etcd running, and is etcd.endpoints right?";
const HINT_CA: &str = ": the server certificate is not signed by etcd.cacert; point etcd.cacert at etcd's CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)";
const HINT_CLIENT_CERT: &str = ": etcd wants a client certificate; set etcd.cert and etcd.key (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt and .key)";

/// An `etcd_client::Error`, kept whole so code can decide on it ([`EtcdCause::hint`]). It displays as the root cause in one line (a refused connection, a
/// rejected certificate) rather than tonic's nested debug text; etcd-client's errors do not
/// expose their sources, so its variants are opened here. It has no `source` of its own, so
/// `main`'s one-line chain ends with that root cause.
#[derive(Debug)]
pub struct EtcdCause(pub etcd_client::Error);

impl EtcdCause {
    /// The innermost errors of the cause, outermost first (tonic's status or transport error
    /// and what they wrap).
    fn chain(&self) -> Vec<&(dyn std::error::Error + 'static)> {
        let mut out = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = match &self.0 {
            etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
            etcd_client::Error::TransportError(e) => Some(e),
            etcd_client::Error::IoError(e) => Some(e),
            _ => None,
        };
        while let Some(error) = next {
            out.push(error);
            // An io::Error made from another error (tokio-rustls wraps rustls's this way)
            // hides it from `source`; `get_ref` reaches it.
            if let Some(inner) = error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                out.push(inner);
            }
            next = error.source();
        }
        out
    }

    /// What to do about it, decided on the typed causes: rustls's certificate verdict or the
    /// alert the server sent, a refused or timed-out connection.
    pub fn hint(&self) -> &'static str {
        use rustls::AlertDescription;
        for error in self.chain() {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                match tls {
                    rustls::Error::InvalidCertificate(_) => return HINT_CA,
                    rustls::Error::AlertReceived(
                        AlertDescription::CertificateRequired | AlertDescription::BadCertificate,
                    ) => return HINT_CLIENT_CERT,
                    _ => {}
                }
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                ) {
                    return HINT_NOT_RUNNING;
                }
            }
        }
        ""
    }
}

impl std::fmt::Display for EtcdCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match &self.0 {
            etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
                Some(_) => self
                    .chain()
                    .last()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                None => format!("{:?}: {}", status.code(), status.message()),
            },
            etcd_client::Error::TransportError(_) => self
                .chain()
                .last()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            other => other.to_string(),
        };
        f.write_str(&text.replace('\n', " "))
    }
}

impl std::error::Error for EtcdCause {}

fn unreachable(endpoint: &str, error: etcd_client::Error) -> EtcdError {
    EtcdError::Unreachable {
        endpoint: endpoint.to_string(),
        source: EtcdCause(error),
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
            source: EtcdCause(e),
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
