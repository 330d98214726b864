//! Whether the API server is ready, asked the way the kubelet asks it: the `readinessProbe`
//! kubeadm writes into kube-apiserver.yaml (`httpGet` to `https://<advertise-address>:6443/readyz`),
//! success = HTTP 200. The real `/readyz` includes an etcd check, so a 200 also says the API
//! server reaches the restored etcd.
//!
//! Like the kubelet's prober, the HTTPS client does NOT verify the serving certificate: it sends
//! no credentials and reads nothing but the status line (and a short excerpt of the body for
//! messages), so there is nothing to leak; a forged answer could only make the restore report the
//! API server ready early. The TLS config names the ring provider itself, so it works whether or
//! not the process installed a default provider.
//!
//! `Probe::from_manifest` is pure (what to ask); `wait_ready` does the asking.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};

/// kubeadm's API server port when the manifest does not say.
pub const DEFAULT_PORT: u16 = 6443;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(500);
/// More than any /readyz answer; the rest is not read.
const MAX_RESPONSE: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    Http,
    Https,
}

/// Where the probe's address came from (said in messages, so a surprise is explainable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `readinessProbe.httpGet` of the kube-apiserver container.
    ReadinessProbe,
    /// `--advertise-address` / `--secure-port` (no readinessProbe).
    Flags,
    /// Nothing usable in the manifest: `https://127.0.0.1:6443/readyz`.
    Defaults,
}

/// The HTTP GET that tells whether the API server is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub source: Source,
}

impl Probe {
    /// `https://127.0.0.1:<port>/readyz`.
    pub fn defaults(port: u16) -> Probe {
        Probe {
            scheme: Scheme::Https,
            host: "127.0.0.1".to_string(),
            port,
            path: "/readyz".to_string(),
            source: Source::Defaults,
        }
    }

    /// The probe for a kube-apiserver static pod manifest: its `readinessProbe.httpGet` (fields
    /// the probe leaves out take the kubelet's meaning: the node's address, which is the
    /// advertise address on a kubeadm node; path `/`; scheme HTTP), else `--advertise-address` and
    /// `--secure-port` with `/readyz` over HTTPS, else `https://127.0.0.1:6443/readyz`.
    pub fn from_manifest(text: &str) -> Probe {
        let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
        let containers = doc["spec"]["containers"].as_sequence();
        let container = containers
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["name"].as_str() == Some("kube-apiserver"))
                    .or_else(|| cs.first())
            })
            .cloned()
            .unwrap_or_default();
        let flags = crate::etcd::kubeadm::container_flags(&container);
        let flag = |name: &str| {
            flags
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let advertise = flag("advertise-address");
        let secure_port = flag("secure-port").and_then(|p| p.parse::<u16>().ok());
        let get = &container["readinessProbe"]["httpGet"];
        if get.is_mapping() {
            let port = match &get["port"] {
                serde_yaml::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                serde_yaml::Value::String(s) => {
                    s.parse().ok().or_else(|| named_port(&container, s))
                }
                _ => None,
            };
            return Probe {
                scheme: match get["scheme"].as_str() {
                    Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
                    _ => Scheme::Http,
                },
                host: get["host"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .or(advertise)
                    .unwrap_or_else(|| "127.0.0.1".to_string()),
                port: port.or(secure_port).unwrap_or(DEFAULT_PORT),
                path: match get["path"].as_str() {
                    Some(p) if p.starts_with('/') => p.to_string(),
                    Some(p) if !p.is_empty() => format!("/{p}"),
                    _ => "/".to_string(),
                },
                source: Source::ReadinessProbe,
            };
        }
        if advertise.is_none() && secure_port.is_none() {
            return Probe::defaults(DEFAULT_PORT);
        }
        Probe {
            scheme: Scheme::Https,
            host: advertise.unwrap_or_else(|| "127.0.0.1".to_string()),
            port: secure_port.unwrap_or(DEFAULT_PORT),
            path: "/readyz".to_string(),
            source: Source::Flags,
        }
    }

    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A probe's named port (`port: probe-port`) looked up in the container's `ports`.
fn named_port(container: &serde_yaml::Value, name: &str) -> Option<u16> {
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}

/// The API server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub url: String,
    pub status: u16,
    /// Set when readiness could not be checked (401/403): what it means and what to do.
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadyzError {
    #[error("kube-apiserver is not ready after {within}: GET {url} (from {source_name}), last answer: {last}. Check `crictl ps --name kube-apiserver` (and `crictl logs` of it) and `journalctl -u kubelet`; then `etcdsafe restore --resume` to wait again, or `etcdsafe restore --rollback`")]
    NotReady {
        url: String,
        source_name: &'static str,
        within: String,
        last: String,
    },
    #[error("cannot set up the TLS client for {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::ReadinessProbe => "the readinessProbe in kube-apiserver.yaml",
            Source::Flags => "--advertise-address/--secure-port in kube-apiserver.yaml",
            Source::Defaults => "the defaults: kube-apiserver.yaml has no probe or address",
        }
    }
}

/// Asks `probe` every half second until it answers 200 (ready) or 401/403 (up, readiness not
/// checkable without credentials), or `timeout` passes.
pub fn wait_ready(probe: &Probe, timeout: Duration) -> Result<Ready, ReadyzError> {
    let url = probe.url();
    let tls = insecure_client_config().map_err(|source| ReadyzError::Tls {
        url: url.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get(probe, &tls) {
            Ok(answer) if answer.status == 200 => {
                return Ok(Ready {
                    url,
                    status: 200,
                    note: None,
                })
            }
            Ok(answer) if answer.status == 401 || answer.status == 403 => {
                let note = format!(
                    "kube-apiserver answers on {url} but refuses anonymous requests (HTTP {}): treated as up, its readiness was NOT checked. /readyz needs anonymous access to be checked (kubeadm allows it by default: --anonymous-auth and the system:public-info-viewer role); check it with `kubectl get --raw='/readyz?verbose'`",
                    answer.status
                );
                return Ok(Ready {
                    url,
                    status: answer.status,
                    note: Some(note),
                });
            }
            Ok(answer) => answer.describe(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(ReadyzError::NotReady {
                url,
                source_name: probe.source.describe(),
                within: humantime::format_duration(timeout).to_string(),
                last,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// An HTTP answer: the status and a one-line excerpt of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub excerpt: String,
}

impl Answer {
    fn describe(&self) -> String {
        if self.excerpt.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {} ({})", self.status, self.excerpt)
        }
    }
}

/// One GET; `Err` says why there was no HTTP answer (connect, TLS, I/O), in one line.
fn get(probe: &Probe, tls: &Arc<rustls::ClientConfig>) -> Result<Answer, String> {
    let addrs: Vec<_> = (probe.host.as_str(), probe.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", probe.host))?
        .collect();
    let mut error = format!("{} has no address", probe.host);
    let mut sock = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let sock = sock.ok_or(error)?;
    let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
    let _ = sock.set_write_timeout(Some(IO_TIMEOUT));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: etcdsafe/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        probe.path,
        probe.authority(),
        env!("CARGO_PKG_VERSION")
    );
    let raw = match probe.scheme {
        Scheme::Http => exchange(sock, &request).map_err(|e| format!("HTTP: {e}"))?,
        Scheme::Https => {
            let name = ServerName::try_from(probe.host.clone())
                .map_err(|e| format!("{:?} is not a TLS server name: {e}", probe.host))?;
            let conn = rustls::ClientConnection::new(tls.clone(), name)
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(rustls::StreamOwned::new(conn, sock), &request)
                .map_err(|e| format!("TLS: {e}"))?
        }
    };
    parse_response(&raw)
}

fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_RESPONSE || response_complete(&buf) {
                    break;
                }
            }
            // A peer that closes without TLS close_notify, after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn split_head(raw: &[u8]) -> Option<(&str, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    Some((head, &raw[end + 4..]))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether a Content-Length answer is all there (others are read to the end).
fn response_complete(raw: &[u8]) -> bool {
    let Some((head, body)) = split_head(raw) else {
        return false;
    };
    header(head, "content-length")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// The status and a one-line excerpt of the body: the failed checks (`[-]...`) of a /readyz
/// answer, else its last line.
pub fn parse_response(raw: &[u8]) -> Result<Answer, String> {
    let (head, body) = split_head(raw).ok_or_else(|| {
        if raw.is_empty() {
            "the connection closed without an answer".to_string()
        } else {
            format!(
                "not an HTTP answer: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            )
        }
    })?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let body = if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let failed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("[-]"))
        .collect();
    let excerpt = if failed.is_empty() {
        lines.last().copied().unwrap_or_default().to_string()
    } else {
        failed.join("; ")
    };
    let mut excerpt: String = excerpt.chars().filter(|c| !c.is_control()).collect();
    if excerpt.chars().count() > 200 {
        excerpt = excerpt.chars().take(200).collect::<String>() + "...";
    }
    Ok(Answer { status, excerpt })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0) else {
            break;
        };
        let data = &body[eol + 2..];
        let take = size.min(data.len());
        out.extend_from_slice(&data[..take]);
        body = data.get(take + 2..).unwrap_or_default();
    }
    out
}

/// A client config that accepts any serving certificate (see the module docs) but still checks
/// the handshake signatures, with the ring provider named explicitly.
fn insecure_client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What the kubelet's prober does (Go's `InsecureSkipVerify`): no chain or name check.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.11
    - --etcd-servers=https://127.0.0.1:2379
    - --secure-port=6443
    image: registry.k8s.io/kube-apiserver:v1.33.0
    livenessProbe:
      httpGet:
        host: 10.0.0.11
        path: /livez
        port: 6443
        scheme: HTTPS
    name: kube-apiserver
    readinessProbe:
      failureThreshold: 3
      httpGet:
        host: 10.0.0.11
        path: /readyz
        port: 6443
        scheme: HTTPS
      periodSeconds: 1
  hostNetwork: true
"#;

    fn probe(scheme: Scheme, host: &str, port: u16, path: &str, source: Source) -> Probe {
        Probe {
            scheme,
            host: host.into(),
            port,
            path: path.into(),
            source,
        }
    }

    #[test]
    fn probe_from_manifest() {
        use Scheme::*;
        use Source::*;
        let cases: Vec<(&str, String, Probe)> = vec![
            (
                "kubeadm",
                KUBEADM.to_string(),
                probe(Https, "10.0.0.11", 6443, "/readyz", ReadinessProbe),
            ),
            (
                "no readinessProbe: the flags",
                KUBEADM.replace("readinessProbe:", "otherProbe:"),
                probe(Https, "10.0.0.11", 6443, "/readyz", Flags),
            ),
            (
                "no probe, other port",
                KUBEADM
                    .replace("readinessProbe:", "otherProbe:")
                    .replace("--secure-port=6443", "--secure-port=7443"),
                probe(Https, "10.0.0.11", 7443, "/readyz", Flags),
            ),
            (
                "probe without host: the advertise address",
                KUBEADM.replace("        host: 10.0.0.11\n        path: /readyz", "        path: /readyz"),
                probe(Https, "10.0.0.11", 6443, "/readyz", ReadinessProbe),
            ),
            (
                "probe without scheme: HTTP, as Kubernetes defaults it",
                KUBEADM.replace("        port: 6443\n        scheme: HTTPS\n      periodSeconds", "        port: 6443\n      periodSeconds"),
                probe(Http, "10.0.0.11", 6443, "/readyz", ReadinessProbe),
            ),
            (
                "named port",
                KUBEADM
                    .replace("        port: 6443\n        scheme: HTTPS\n      periodSeconds", "        port: https\n        scheme: HTTPS\n      periodSeconds")
                    .replace("    name: kube-apiserver\n", "    name: kube-apiserver\n    ports:\n    - containerPort: 8443\n      name: https\n"),
                probe(Https, "10.0.0.11", 8443, "/readyz", ReadinessProbe),
            ),
            (
                "IPv6",
                KUBEADM.replace("10.0.0.11", "fd00::11"),
                probe(Https, "fd00::11", 6443, "/readyz", ReadinessProbe),
            ),
            (
                "nothing usable",
                "kind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n".to_string(),
                probe(Https, "127.0.0.1", 6443, "/readyz", Defaults),
            ),
            (
                "not YAML",
                ":::".to_string(),
                probe(Https, "127.0.0.1", 6443, "/readyz", Defaults),
            ),
        ];
        for (what, text, want) in cases {
            assert_eq!(Probe::from_manifest(&text), want, "{what}");
        }
        assert_eq!(
            Probe::from_manifest(&KUBEADM.replace("10.0.0.11", "fd00::11")).url(),
            "https://[fd00::11]:6443/readyz"
        );
        assert_eq!(
            Probe::from_manifest(KUBEADM).url(),
            "https://10.0.0.11:6443/readyz"
        );
    }

    #[test]
    fn responses() {
        let a = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((a.status, a.excerpt.as_str()), (200, "ok"));
        let a = parse_response(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\n[+]ping ok\n[-]etcd failed\n\r\n14\r\nreadyz check failed\n\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((a.status, a.excerpt.as_str()), (500, "[-]etcd failed"));
        assert_eq!(a.describe(), "HTTP 500 ([-]etcd failed)");
        let a = parse_response(b"HTTP/1.0 403 Forbidden\r\n\r\n").unwrap();
        assert_eq!(a.describe(), "HTTP 403");
        assert!(parse_response(b"")
            .unwrap_err()
            .contains("without an answer"));
        assert!(parse_response(b"\x15\x03\x01\x00\x02\x02\x50")
            .unwrap_err()
            .contains("not an HTTP answer"));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"
        ));
    }

    #[test]
    fn timeout_names_the_url_and_the_last_answer() {
        // A port that refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = wait_ready(&Probe::defaults(port), Duration::from_millis(600)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("GET https://127.0.0.1:{port}/readyz")),
            "{text}"
        );
        assert!(text.contains("cannot connect"), "{text}");
        assert!(
            text.contains("crictl ps") && text.contains("journalctl -u kubelet"),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
