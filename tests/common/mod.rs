//! Shared helpers for integration tests: real etcd servers on free loopback ports in temp dirs,
//! a throwaway PKI made with openssl, configs, and the etcdsafe binary.
//!
//! Binaries are found in `.deps/etcd-v3.4.23` and `.deps/etcd-v3.5.1` (made by
//! `scripts/install-deps.sh`), or in `$ETCDSAFE_ETCD34_DIR` / `$ETCDSAFE_ETCD35_DIR`. A missing
//! binary fails the test loudly; nothing is skipped.
#![allow(dead_code)]

pub mod apiserver;
pub mod env;
pub mod kubelet;
pub mod node;
pub mod prometheus;
pub mod proxy;
pub mod s3;
pub mod service;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use env::Env;
use etcdsafe::exit::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    V3_4,
    V3_5,
}

pub const ALL_VERSIONS: [EtcdVersion; 2] = [EtcdVersion::V3_4, EtcdVersion::V3_5];

impl EtcdVersion {
    pub fn dir(self) -> PathBuf {
        let (env, default) = match self {
            EtcdVersion::V3_4 => ("ETCDSAFE_ETCD34_DIR", ".deps/etcd-v3.4.23"),
            EtcdVersion::V3_5 => ("ETCDSAFE_ETCD35_DIR", ".deps/etcd-v3.5.1"),
        };
        std::env::var_os(env)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default))
    }

    /// A binary of this version; panics with the fix when it is missing.
    pub fn bin(self, name: &str) -> PathBuf {
        let path = self.dir().join(name);
        assert!(
            path.exists(),
            "{} is missing: run `scripts/install-deps.sh` (or set ETCDSAFE_ETCD34_DIR / ETCDSAFE_ETCD35_DIR)",
            path.display()
        );
        path
    }

    /// The tool that has `snapshot status` / `snapshot restore`: etcdutl from 3.5, etcdctl in 3.4.
    pub fn snapshot_tool(self) -> PathBuf {
        match self {
            EtcdVersion::V3_4 => self.bin("etcdctl"),
            EtcdVersion::V3_5 => self.bin("etcdutl"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "3.4.23",
            EtcdVersion::V3_5 => "3.5.1",
        }
    }
}

/// A stock tool from the machine (age, zstd, openssl, promtool); panics with the fix when missing.
pub fn system_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("{name} is not on PATH: run `scripts/install-deps.sh`");
}

static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback port nobody listens on now, never handed out twice in one test process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        let mut seen = HANDED_OUT.lock().unwrap();
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    pub fn create(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = system_tool("openssl");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=etcd-test-ca",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
        )
        .unwrap();
        for (name, cn) in [("server", "etcd-server"), ("client", "etcdsafe")] {
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        TestPki {
            dir: dir.to_path_buf(),
        }
    }
}

/// One etcd member process.
pub struct EtcdMember {
    pub version: EtcdVersion,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub tls: bool,
    initial_cluster: String,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts etcd on a data dir that already holds a member (a restored one): `name` and
    /// `peer_port` must be those the data dir was restored with.
    pub fn start_existing(
        version: EtcdVersion,
        name: &str,
        data_dir: &Path,
        peer_port: u16,
        initial_cluster: &str,
    ) -> EtcdMember {
        let mut m = Self::spawn_existing(version, name, data_dir, peer_port, initial_cluster);
        m.wait_healthy(None);
        m
    }

    /// Starts etcd on `data_dir` like [`start_existing`](Self::start_existing), without
    /// waiting for it to be healthy (members of a new cluster wait for each other).
    pub fn spawn_existing(
        version: EtcdVersion,
        name: &str,
        data_dir: &Path,
        peer_port: u16,
        initial_cluster: &str,
    ) -> EtcdMember {
        let mut m = EtcdMember {
            version,
            name: name.to_string(),
            client_port: free_port(),
            peer_port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            tls: false,
            initial_cluster: String::new(),
            child: None,
        };
        m.spawn(initial_cluster, None);
        m
    }

    /// Waits until this member answers `endpoint health`; panics with its log after 30 s.
    pub fn wait_ready(&mut self) {
        self.wait_healthy(None);
    }

    /// Starts a stopped member again on the same ports and data dir.
    pub fn restart(&mut self, pki: Option<&TestPki>) {
        assert!(self.child.is_none(), "member {} is running", self.name);
        let initial_cluster = self.initial_cluster.clone();
        self.spawn(&initial_cluster, pki);
        self.wait_healthy(pki);
    }

    /// The member id as etcdctl prints it (hex).
    pub fn id_hex(&self, pki: Option<&TestPki>) -> String {
        let out = self.etcdctl(pki, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("endpoint status json");
        format!(
            "{:x}",
            v[0]["Status"]["header"]["member_id"].as_u64().unwrap()
        )
    }

    /// Whether this member is the raft leader.
    pub fn is_leader(&self, pki: Option<&TestPki>) -> bool {
        let out = self.etcdctl(pki, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("endpoint status json");
        v[0]["Status"]["leader"] == v[0]["Status"]["header"]["member_id"]
    }

    fn spawn(&mut self, initial_cluster: &str, pki: Option<&TestPki>) {
        self.initial_cluster = initial_cluster.to_string();
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(self.version.bin("etcd"));
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg("etcdsafe-test")
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", free_port()))
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(pki) = pki {
            cmd.arg("--cert-file")
                .arg(pki.server_cert())
                .arg("--key-file")
                .arg(pki.server_key())
                .arg("--trusted-ca-file")
                .arg(pki.ca())
                .arg("--client-cert-auth");
        }
        self.child = Some(cmd.spawn().expect("start etcd"));
    }

    /// Runs this version's etcdctl against this member.
    pub fn etcdctl(&self, pki: Option<&TestPki>, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.version.bin("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=30s");
        if let Some(pki) = pki {
            cmd.arg(format!("--cacert={}", pki.ca().display()))
                .arg(format!("--cert={}", pki.client_cert().display()))
                .arg(format!("--key={}", pki.client_key().display()));
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    fn wait_healthy(&mut self, pki: Option<&TestPki>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "etcd {} exited early ({status}): {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let out = self.etcdctl(pki, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} not healthy after 30s: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the process and waits for it to exit (so its ports and data dir are free).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One or more etcd members forming a cluster on loopback, in a temp dir.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    pub pki: Option<TestPki>,
    pub dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(version: EtcdVersion) -> EtcdCluster {
        Self::start_with(version, 1, false)
    }

    pub fn start_tls(version: EtcdVersion) -> EtcdCluster {
        Self::start_with(version, 1, true)
    }

    pub fn start_with(version: EtcdVersion, size: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls.then(|| TestPki::create(&dir.path().join("pki")));
        let mut members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                version,
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                tls,
                initial_cluster: String::new(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.spawn(&initial_cluster, pki.as_ref());
        }
        for m in &mut members {
            m.wait_healthy(pki.as_ref());
        }
        EtcdCluster { members, pki, dir }
    }

    pub fn member(&self) -> &EtcdMember {
        &self.members[0]
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.members[0].etcdctl(self.pki.as_ref(), args)
    }

    /// Runs etcdctl and asserts success, returning stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes `count` keys `prefix/NNNNN` with values of `value_size` bytes, quickly (one client).
    pub fn put_many(&self, prefix: &str, count: usize, value_size: usize) {
        self.put_many_with(prefix, count, value_size, false)
    }

    /// Like `put_many`, with random (incompressible) values when `random` is set.
    pub fn put_many_with(&self, prefix: &str, count: usize, value_size: usize, random: bool) {
        let url = self.member().client_url();
        let pki = self.pki.as_ref().map(|p| {
            (
                std::fs::read(p.ca()).unwrap(),
                std::fs::read(p.client_cert()).unwrap(),
                std::fs::read(p.client_key()).unwrap(),
            )
        });
        let prefix = prefix.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut options = etcd_client::ConnectOptions::new();
            if let Some((ca, cert, key)) = pki {
                options = options.with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(ca))
                        .identity(etcd_client::Identity::from_pem(cert, key)),
                );
            }
            let mut client = etcd_client::Client::connect([url], Some(options))
                .await
                .unwrap();
            let pattern: Vec<u8> = (0..value_size).map(|i| b'a' + (i % 26) as u8).collect();
            for i in 0..count {
                let value = if random {
                    (0..value_size).map(|_| rand::random::<u8>()).collect()
                } else {
                    pattern.clone()
                };
                client
                    .put(format!("{prefix}/{i:06}"), value, None)
                    .await
                    .unwrap();
            }
        });
    }
}

/// A fresh age key pair: (identity file path (0600), public recipient).
pub fn age_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let out = Command::new(system_tool("age-keygen"))
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run age-keygen");
    assert!(out.status.success(), "age-keygen failed");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen prints the public key")
        .to_string();
    (path, public)
}

/// A config file for etcdsafe against `cluster`, with a local store and spool in `dir`.
pub fn write_config(dir: &Path, cluster: &EtcdCluster, recipient: &str) -> PathBuf {
    let mut etcd = format!("  endpoints: [{}]\n", cluster.member().client_url());
    if let Some(pki) = &cluster.pki {
        etcd.push_str(&format!(
            "  cacert: {}\n  cert: {}\n  key: {}\n",
            pki.ca().display(),
            pki.client_cert().display(),
            pki.client_key().display()
        ));
    }
    let text = format!(
        "etcd:\n{etcd}spool-dir: {spool}\ncompression: {{ level: 3 }}\nencryption:\n  recipients: [{recipient}]\nstorage:\n  local: {{ path: {store} }}\n",
        spool = dir.join("spool").display(),
        store = dir.join("store").display(),
    );
    let path = dir.join("etcdsafe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The etcdsafe binary under test.
pub fn etcdsafe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdsafe"));
    cmd.env_remove(etcdsafe::config::CONFIG_ENV)
        .env_remove("ETCDSAFE_IDENTITY_FILE")
        .env("ETCDSAFE_LOG", "warn");
    cmd
}

/// Runs a command and asserts it succeeded, returning stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    run_ok_both(cmd).0
}

/// Runs a command and asserts it succeeded, returning (stdout, stderr).
pub fn run_ok_both(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs a command that must fail the way the exit-code table says a failure ends (1: the
/// operation failed, 2: bad usage or config; not a panic's 101 or a signal), returning stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let failed = [
        etcdsafe::exit::Exit::Failed.code(),
        etcdsafe::exit::Exit::Usage.code(),
    ]
    .map(i32::from);
    assert!(
        out.status.code().is_some_and(|c| failed.contains(&c)),
        "{cmd:?} should have failed with exit code 1 or 2, got {:?}:\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Runs a command that must end with exactly `exit` (the crate's exit-code table), returning
/// its output.
pub fn run_exit(cmd: &mut Command, exit: Exit) -> Output {
    let out = cmd.output().expect("spawn");
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit.code())),
        "{cmd:?} should have ended with {exit:?} ({}), got {}:\nstdout: {}\nstderr: {}",
        exit.code(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Restores the snapshot file `db` with `version`'s stock tool (`etcdutl`, 3.4's `etcdctl`) into
/// a new data dir under `dir` and starts etcd on it, a single member on free loopback ports.
pub fn serve_snapshot(version: EtcdVersion, db: &Path, dir: &Path) -> EtcdMember {
    let peer = free_port();
    let data = dir.join(format!(
        "served-{}",
        db.file_name().unwrap().to_string_lossy()
    ));
    let cluster = format!("restored=http://127.0.0.1:{peer}");
    let out = Command::new(version.snapshot_tool())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(db)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "restored", "--initial-cluster", &cluster])
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stock snapshot restore of {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut member = EtcdMember::spawn_existing(version, "restored", &data, peer, &cluster);
    member.wait_ready();
    member
}

/// Every sealed delta segment manifest in the local store at `store`, by first revision.
pub fn local_segments(store: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = std::fs::read_dir(store.join("deltas"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|s| s["firstRevision"].as_i64().unwrap());
    out
}
