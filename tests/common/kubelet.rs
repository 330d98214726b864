//! A stand-in kubelet for static pods: a thread polls a manifests dir every 100 ms. While
//! `etcd.yaml` is there it runs the real etcd binary with exactly the flags of the manifest's
//! command list; it stops it (SIGTERM, wait) when the file disappears or changes. While
//! `kube-apiserver.yaml` is there it runs a STAND-IN API server (not Kubernetes): a thread that
//! answers 200 to `GET /readyz` on 127.0.0.1 and the manifest's `--secure-port`.
//!
//! `Kubelet::never_stops` simulates a kubelet that never stops a pod (it ignores removals).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub log: PathBuf,
}

struct StandInApiServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn command_of(text: &str) -> Option<Vec<String>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let c = doc["spec"]["containers"].as_sequence()?.first()?;
    Some(
        c["command"]
            .as_sequence()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
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

fn start_apiserver(text: &str) -> Option<StandInApiServer> {
    let port: u16 = command_of(text)?
        .iter()
        .find_map(|w| w.strip_prefix("--secure-port="))
        .and_then(|p| p.parse().ok())?;
    let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 1024];
                    let n = stream.read(&mut buf).unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let resp = if req.starts_with("GET /readyz") {
                        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else {
                        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    };
                    let _ = stream.write_all(resp.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Some(StandInApiServer { stop, thread })
}

impl Kubelet {
    pub fn start(manifests_dir: &Path, log: &Path) -> Kubelet {
        Self::start_with(manifests_dir, log, false)
    }

    /// A kubelet that starts pods but never stops them.
    pub fn never_stops(manifests_dir: &Path, log: &Path) -> Kubelet {
        Self::start_with(manifests_dir, log, true)
    }

    fn start_with(manifests_dir: &Path, log: &Path, ignore_removals: bool) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let dir = manifests_dir.to_path_buf();
        let log_path = log.to_path_buf();
        let thread = std::thread::spawn(move || {
            let mut etcd: Option<(String, Child)> = None;
            let mut api: Option<(String, StandInApiServer)> = None;
            while !s.load(Ordering::SeqCst) {
                let etcd_text = std::fs::read_to_string(dir.join("etcd.yaml")).ok();
                let changed = match (&etcd, &etcd_text) {
                    (Some((running, _)), Some(now)) => running != now,
                    (Some(_), None) => !ignore_removals,
                    (None, Some(_)) => true,
                    (None, None) => false,
                };
                if changed {
                    if let Some((_, mut child)) = etcd.take() {
                        stop_child(&mut child);
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
                // A pod that exited is restarted by a kubelet; here it is left for the test to see.
                let api_text = std::fs::read_to_string(dir.join("kube-apiserver.yaml")).ok();
                let changed = match (&api, &api_text) {
                    (Some((running, _)), Some(now)) => running != now,
                    (Some(_), None) => !ignore_removals,
                    (None, Some(_)) => true,
                    (None, None) => false,
                };
                if changed {
                    if let Some((_, server)) = api.take() {
                        server.stop.store(true, Ordering::SeqCst);
                        let _ = server.thread.join();
                    }
                    if let Some(text) = api_text {
                        if let Some(server) = start_apiserver(&text) {
                            api = Some((text, server));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some((_, mut child)) = etcd.take() {
                stop_child(&mut child);
            }
            if let Some((_, server)) = api.take() {
                server.stop.store(true, Ordering::SeqCst);
                let _ = server.thread.join();
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

/// A kube-apiserver.yaml whose only meaning to the stand-in is `--secure-port`.
pub fn apiserver_manifest(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=127.0.0.1
    - --secure-port={port}
    - --etcd-servers=http://127.0.0.1:2379
    image: registry.k8s.io/kube-apiserver:v1.33.0
    name: kube-apiserver
  hostNetwork: true
status: {{}}
"#
    )
}
