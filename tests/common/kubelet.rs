//! A stand-in kubelet for static pods. It is NOT Kubernetes: a thread polls a manifests dir
//! every 100 ms and plays two pods.
//!
//! - `etcd.yaml`: while the file is there it runs the real etcd binary with exactly the flags of
//!   the manifest's command list; it stops it (SIGTERM, wait) when the file disappears or changes.
//! - `kube-apiserver.yaml`: while the file is there it runs a STAND-IN API server, a thread that
//!   serves HTTPS on the manifest's `--advertise-address` and `--secure-port` with the
//!   certificate of `--tls-cert-file`/`--tls-private-key-file` (made with openssl by the test),
//!   and answers only what a kubelet's probes and `etcdsafe restore` ask: `GET /readyz` is 200
//!   "ok" while the etcd named in `--etcd-servers` answers its `/health` (the real `/readyz`
//!   includes an etcd check), 500 with the real server's `[-]etcd failed` line otherwise; `/livez`
//!   is 200; anything else 404. With `--anonymous-auth=false` every request without credentials
//!   gets 401, as from a real API server. Plain HTTP on the port gets the 400 Go's TLS server
//!   sends. Only `http://` etcd servers are checked (a `https://` one reads as failed, and the
//!   500 says why). A manifest without `--etcd-servers` (the old `apiserver_manifest(port)`,
//!   which does not know the etcd's port) is checked against the client URL of the `etcd.yaml`
//!   in the same manifests dir, i.e. the node's etcd.
//!
//! A real kubelet restarts pods that exit; this one leaves them for the test to see. What each
//! pod did goes to the kubelet log. `Kubelet::never_stops` ignores removals (a pod that never
//! stops); `Kubelet::slow_to_stop` stops etcd only some time after its manifest went away.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TestPki;
use etcdsafe::restore::steps::{APISERVER_YAML, ETCD_YAML};

pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
struct Behaviour {
    /// Pods keep running when their manifest goes away.
    ignore_removals: bool,
    /// etcd is stopped this long after its manifest went away (if it did not come back).
    stop_delay: Duration,
}

struct StandInApiServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl StandInApiServer {
    fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

fn first_container(text: &str) -> Option<serde_yaml::Value> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    doc["spec"]["containers"].as_sequence()?.first().cloned()
}

fn command_of(text: &str) -> Option<Vec<String>> {
    let c = first_container(text)?;
    Some(
        c["command"]
            .as_sequence()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

/// The value of `--name=value` in a manifest's command list (the last one wins, as in Go's flag).
fn flag_of(text: &str, name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    command_of(text)?
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix(&prefix).map(str::to_string))
}

fn log_line(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "kubelet stand-in: {line}");
    }
}

fn stop_child(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where the stand-in API server looks for etcd.
#[derive(Clone)]
enum EtcdServers {
    /// `--etcd-servers`.
    Flag(Vec<String>),
    /// No flag: the client URL of the etcd.yaml in this manifests dir, read at each request.
    NodeManifest(PathBuf),
}

impl EtcdServers {
    fn urls(&self) -> Vec<String> {
        match self {
            EtcdServers::Flag(urls) => urls.clone(),
            EtcdServers::NodeManifest(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|t| flag_of(&t, "advertise-client-urls"))
                .map(|u| u.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }
}

/// Whether one of the etcd client URLs answers `GET /health` with `"health":"true"`.
fn etcd_answers(urls: &[String]) -> Result<(), String> {
    let mut why = "no etcd servers".to_string();
    for url in urls {
        let Some(host_port) = url.strip_prefix("http://") else {
            why = format!("{url}: the stand-in checks only http:// etcd servers");
            continue;
        };
        let host_port = host_port.trim_end_matches('/');
        let answer = (|| -> std::io::Result<String> {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(host_port)?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET /health HTTP/1.0\r\nHost: {host_port}\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })();
        match answer {
            Ok(text) if text.starts_with("HTTP/1.0 200") && text.contains(r#""health":"true""#) => {
                return Ok(())
            }
            Ok(text) => why = format!("{url}: {}", text.lines().last().unwrap_or_default()),
            Err(e) => why = format!("{url}: {e}"),
        }
    }
    Err(why)
}

fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert-file {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-private-key-file {}: {e}", key.display()))?;
    // The provider is named, not taken from a process default (none is installed in tests).
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate: {e}"))?;
    Ok(Arc::new(config))
}

fn start_apiserver(
    text: &str,
    manifests_dir: &Path,
    log: &Path,
) -> Result<StandInApiServer, String> {
    let port: u16 = flag_of(text, "secure-port")
        .and_then(|p| p.parse().ok())
        .ok_or("no --secure-port")?;
    let address = flag_of(text, "advertise-address").unwrap_or_else(|| "127.0.0.1".into());
    let cert = flag_of(text, "tls-cert-file").ok_or("no --tls-cert-file")?;
    let key = flag_of(text, "tls-private-key-file").ok_or("no --tls-private-key-file")?;
    let tls = server_tls(Path::new(&cert), Path::new(&key))?;
    let etcd = match flag_of(text, "etcd-servers") {
        Some(urls) => EtcdServers::Flag(urls.split(',').map(str::to_string).collect()),
        None => EtcdServers::NodeManifest(manifests_dir.join(ETCD_YAML)),
    };
    let anonymous = flag_of(text, "anonymous-auth").as_deref() != Some("false");
    let listener = TcpListener::bind((address.as_str(), port))
        .map_err(|e| format!("listen on {address}:{port}: {e}"))?;
    listener.set_nonblocking(true).unwrap();
    log_line(
        log,
        &format!("kube-apiserver serving https://{address}:{port}"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => serve(stream, &tls, &etcd, anonymous),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(StandInApiServer { stop, thread })
}

/// One request on one connection, as the real API server would answer it (see the module docs).
fn serve(stream: TcpStream, tls: &Arc<rustls::ServerConfig>, etcd: &EtcdServers, anonymous: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 1];
    if !matches!(stream.peek(&mut first), Ok(1)) {
        return;
    }
    if first[0] != 0x16 {
        // Not a TLS handshake: what Go's HTTP server answers on a TLS port.
        let mut stream = stream;
        let _ = stream.write_all(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        );
        return;
    }
    let Ok(conn) = rustls::ServerConnection::new(tls.clone()) else {
        return;
    };
    let mut tls_stream = rustls::StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 << 10 {
        match tls_stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let has_credentials = request
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
    let (status, body) = if !anonymous && !has_credentials {
        (
            "401 Unauthorized",
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#.to_string(),
        )
    } else if method != "GET" {
        ("405 Method Not Allowed", String::new())
    } else if path == "/readyz" {
        match etcd_answers(&etcd.urls()) {
            Ok(()) => ("200 OK", "ok".to_string()),
            Err(why) => (
                "500 Internal Server Error",
                format!(
                    "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld ({why})\n[+]poststarthook/start-apiserver-admission-initializer ok\nreadyz check failed\n"
                ),
            ),
        }
    } else if path == "/livez" {
        ("200 OK", "ok".to_string())
    } else {
        ("404 Not Found", "404 page not found\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls_stream.write_all(response.as_bytes());
    tls_stream.conn.send_close_notify();
    let _ = tls_stream.flush();
}

impl Kubelet {
    pub fn start(manifests_dir: &Path, log: &Path) -> Kubelet {
        Self::start_with(manifests_dir, log, Behaviour::default())
    }

    /// A kubelet that starts pods but never stops them.
    pub fn never_stops(manifests_dir: &Path, log: &Path) -> Kubelet {
        Self::start_with(
            manifests_dir,
            log,
            Behaviour {
                ignore_removals: true,
                ..Behaviour::default()
            },
        )
    }

    /// A kubelet that stops etcd only `delay` after its manifest went away.
    pub fn slow_to_stop(manifests_dir: &Path, log: &Path, delay: Duration) -> Kubelet {
        Self::start_with(
            manifests_dir,
            log,
            Behaviour {
                stop_delay: delay,
                ..Behaviour::default()
            },
        )
    }

    fn start_with(manifests_dir: &Path, log: &Path, behaviour: Behaviour) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let dir = manifests_dir.to_path_buf();
        let log_path = log.to_path_buf();
        let thread = std::thread::spawn(move || {
            let mut etcd: Option<(String, Child)> = None;
            let mut etcd_gone_since: Option<Instant> = None;
            let mut api: Option<(String, StandInApiServer)> = None;
            let mut api_failed: Option<String> = None;
            while !s.load(Ordering::SeqCst) {
                let etcd_text = std::fs::read_to_string(dir.join(ETCD_YAML)).ok();
                if etcd.is_some() && etcd_text.is_none() {
                    etcd_gone_since.get_or_insert_with(Instant::now);
                } else {
                    etcd_gone_since = None;
                }
                let changed = match (&etcd, &etcd_text) {
                    (Some((running, _)), Some(now)) => running != now,
                    (Some(_), None) => {
                        !behaviour.ignore_removals
                            && etcd_gone_since.is_some_and(|t| t.elapsed() >= behaviour.stop_delay)
                    }
                    (None, Some(_)) => true,
                    (None, None) => false,
                };
                if changed {
                    if let Some((_, mut child)) = etcd.take() {
                        stop_child(&mut child);
                        log_line(&log_path, "etcd stopped");
                    }
                    if let Some(text) = etcd_text {
                        if let Some(cmd) = command_of(&text) {
                            let out = std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&log_path)
                                .unwrap();
                            let child = Command::new(&cmd[0])
                                .args(&cmd[1..])
                                .env("ETCD_UNSUPPORTED_ARCH", "")
                                .stdin(Stdio::null())
                                .stdout(out.try_clone().unwrap())
                                .stderr(out)
                                .spawn()
                                .expect("kubelet stand-in: start etcd");
                            etcd = Some((text, child));
                        }
                    }
                }
                let api_text = std::fs::read_to_string(dir.join(APISERVER_YAML)).ok();
                let changed = match (&api, &api_text) {
                    (Some((running, _)), Some(now)) => running != now,
                    (Some(_), None) => !behaviour.ignore_removals,
                    (None, Some(now)) => api_failed.as_ref() != Some(now),
                    (None, None) => false,
                };
                if changed {
                    if let Some((_, server)) = api.take() {
                        server.shutdown();
                        log_line(&log_path, "kube-apiserver stopped");
                    }
                    api_failed = None;
                    if let Some(text) = api_text {
                        match start_apiserver(&text, &dir, &log_path) {
                            Ok(server) => api = Some((text, server)),
                            Err(e) => {
                                // Like a pod in CrashLoopBackOff: said once in the log.
                                log_line(&log_path, &format!("kube-apiserver cannot start: {e}"));
                                api_failed = Some(text);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some((_, mut child)) = etcd.take() {
                stop_child(&mut child);
            }
            if let Some((_, server)) = api.take() {
                server.shutdown();
            }
        });
        Kubelet {
            stop,
            thread: Some(thread),
            log: log.to_path_buf(),
        }
    }

    /// Stops the kubelet and every pod it runs.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A kubeadm-format etcd.yaml (command list, etcd-data hostPath volume) for a member on loopback.
pub fn etcd_manifest(
    etcd_bin: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
    data_dir: &Path,
) -> String {
    let data = data_dir.display();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: http://127.0.0.1:{client_port}
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - {bin}
    - --advertise-client-urls=http://127.0.0.1:{client_port}
    - --data-dir={data}
    - --initial-advertise-peer-urls=http://127.0.0.1:{peer_port}
    - --initial-cluster={initial_cluster}
    - --listen-client-urls=http://127.0.0.1:{client_port}
    - --listen-metrics-urls=http://127.0.0.1:{metrics}
    - --listen-peer-urls=http://127.0.0.1:{peer_port}
    - --name={name}
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:3.5.1-0
    imagePullPolicy: IfNotPresent
    name: etcd
    volumeMounts:
    - mountPath: {data}
      name: etcd-data
  hostNetwork: true
  priorityClassName: system-node-critical
  volumes:
  - hostPath:
      path: {data}
      type: DirectoryOrCreate
    name: etcd-data
status: {{}}
"#,
        bin = etcd_bin.display(),
        metrics = super::free_port(),
    )
}

/// What a kubeadm-shaped kube-apiserver.yaml for the stand-in says.
pub struct ApiServerSpec<'a> {
    /// `--secure-port` and the readinessProbe's port.
    pub port: u16,
    /// `--etcd-servers` (the node's etcd, e.g. `http://127.0.0.1:<client port>`). `None` leaves
    /// the flag out; the stand-in then checks the etcd.yaml next to it (see the module docs).
    pub etcd_servers: Option<&'a str>,
    /// `--tls-cert-file`, `--tls-private-key-file` (server.crt/key) and `--client-ca-file`.
    pub pki: &'a TestPki,
    /// `false` adds `--anonymous-auth=false`: /readyz then answers 401 to the probe.
    pub anonymous_auth: bool,
}

/// A kube-apiserver.yaml as kubeadm writes it (v1.33, advertise address 127.0.0.1): the flags
/// the stand-in reads, and the readinessProbe, livenessProbe and startupProbe blocks.
pub fn kubeadm_apiserver_manifest(spec: &ApiServerSpec<'_>) -> String {
    let port = spec.port;
    let etcd_servers = spec
        .etcd_servers
        .map(|u| format!("    - --etcd-servers={u}\n"))
        .unwrap_or_default();
    let anonymous = if spec.anonymous_auth {
        ""
    } else {
        "    - --anonymous-auth=false\n"
    };
    let probe = |path: &str, failures: u32, period: u32, delay: bool| {
        format!(
            "      failureThreshold: {failures}\n      httpGet:\n        host: 127.0.0.1\n        path: {path}\n        port: {port}\n        scheme: HTTPS\n{}      periodSeconds: {period}\n      timeoutSeconds: 15\n",
            if delay { "      initialDelaySeconds: 10\n" } else { "" }
        )
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 127.0.0.1:{port}
  creationTimestamp: null
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=127.0.0.1
    - --allow-privileged=true
{anonymous}    - --authorization-mode=Node,RBAC
    - --client-ca-file={ca}
    - --enable-admission-plugins=NodeRestriction
    - --enable-bootstrap-token-auth=true
{etcd_servers}    - --secure-port={port}
    - --service-cluster-ip-range=10.96.0.0/12
    - --tls-cert-file={cert}
    - --tls-private-key-file={key}
    image: registry.k8s.io/kube-apiserver:v1.33.0
    imagePullPolicy: IfNotPresent
    livenessProbe:
{liveness}    name: kube-apiserver
    readinessProbe:
{readiness}    resources:
      requests:
        cpu: 250m
    startupProbe:
{startup}    volumeMounts:
    - mountPath: {pki}
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: {pki}
      type: DirectoryOrCreate
    name: k8s-certs
status: {{}}
"#,
        ca = spec.pki.ca().display(),
        cert = spec.pki.server_cert().display(),
        key = spec.pki.server_key().display(),
        pki = spec.pki.dir.display(),
        liveness = probe("/livez", 8, 10, true),
        readiness = probe("/readyz", 3, 1, false),
        startup = probe("/livez", 24, 10, true),
    )
}

/// A throwaway PKI shared by the manifests of `apiserver_manifest(port)`, removed at exit.
fn shared_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("etcdsafe-apiserver-pki-")
            .tempdir()
            .unwrap()
            .keep();
        DIR.set(dir.clone()).unwrap();
        unsafe {
            libc::atexit(remove_dir);
        }
        TestPki::create(&dir)
    })
}

/// A kubeadm-shaped kube-apiserver.yaml on `port` with a shared test PKI. It names no
/// `--etcd-servers` (it does not know the etcd's port): the stand-in checks the etcd.yaml in the
/// same manifests dir. `kubeadm_apiserver_manifest` says everything explicitly.
pub fn apiserver_manifest(port: u16) -> String {
    kubeadm_apiserver_manifest(&ApiServerSpec {
        port,
        etcd_servers: None,
        pki: shared_pki(),
        anonymous_auth: true,
    })
}
