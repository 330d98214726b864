//! Real S3-compatible servers for tests, started on free loopback ports in temp dirs:
//! Garage (a distributed S3 store, installed by scripts/install-deps.sh into
//! ~/.cache/etcdsafe/garage-2.5.0) and moto (PyPI `moto[server]`, the only one here with bucket
//! versioning and Object Lock). Each test gets a fresh bucket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    Garage,
    Moto,
}

pub struct S3Server {
    pub kind: S3Kind,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

pub fn garage_bin() -> PathBuf {
    let path = std::env::var_os("ETCDSAFE_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/etcdsafe/garage-2.5.0/bin/garage")
        });
    assert!(
        path.exists(),
        "{} is missing: run `scripts/install-deps.sh` (it builds garage 2.5.0 once into ~/.cache/etcdsafe)",
        path.display()
    );
    path
}

fn moto_bin() -> PathBuf {
    super::system_tool("moto_server")
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 60s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl S3Server {
    pub fn start(kind: S3Kind) -> S3Server {
        match kind {
            S3Kind::Garage => Self::garage(),
            S3Kind::Moto => Self::moto(),
        }
    }

    pub fn garage() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("garage.log");
        let mut child = Command::new(garage_bin())
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("garage.err")).unwrap())
            .spawn()
            .expect("start garage");
        wait_for_port(s3, &mut child, &log, "garage");
        let mut server = S3Server {
            kind: S3Kind::Garage,
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key: String::new(),
            secret_key: String::new(),
            region: "us-east-1".to_string(),
            config,
            dir,
            child: Some(child),
        };
        let node = server.garage_cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        server.garage_cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        server.garage_cli(&["layout", "apply", "--version", "1"]);
        let key = server.garage_cli(&["key", "create", "etcdsafe-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == name).then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| panic!("garage key create printed no {name}: {key}"))
        };
        server.access_key = field("Key ID");
        server.secret_key = field("Secret key");
        server.garage_cli(&[
            "key",
            "allow",
            "--create-bucket",
            &server.access_key.clone(),
        ]);
        server
    }

    pub fn moto() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("moto.log");
        let mut child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port, &mut child, &log, "moto_server");
        S3Server {
            kind: S3Kind::Moto,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: "testing".to_string(),
            secret_key: "testing".to_string(),
            region: "us-east-1".to_string(),
            config: PathBuf::new(),
            dir,
            child: Some(child),
        }
    }

    fn garage_cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(garage_bin())
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .expect("run garage");
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Writes the credentials as 0600 files, as a mounted Kubernetes Secret would provide them.
    pub fn credential_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let id = dir.join("access-key-id");
        let secret = dir.join("secret-access-key");
        for (path, value) in [(&id, &self.access_key), (&secret, &self.secret_key)] {
            std::fs::write(path, format!("{value}\n")).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (id, secret)
    }

    /// A client for test setup (creating buckets, inspecting objects).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "test",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates a fresh, uniquely named bucket (with Object Lock when asked; moto only).
    pub async fn fresh_bucket(&self, object_lock: bool) -> String {
        let name = format!("etcdsafe-test-{:08x}", rand::random::<u32>());
        let mut req = self.client().await.create_bucket().bucket(&name);
        if object_lock {
            req = req.object_lock_enabled_for_bucket(true);
        }
        req.send().await.expect("create bucket");
        name
    }

    /// The `storage.s3` config section for a bucket, credentials from files in `dir`.
    pub fn storage_yaml(&self, bucket: &str, prefix: &str, dir: &Path) -> String {
        let (id, secret) = self.credential_files(dir);
        format!(
            "storage:\n  s3:\n    bucket: {bucket}\n    prefix: {prefix}\n    region: {region}\n    endpoint: {endpoint}\n    force-path-style: true\n    part-size: 5MiB\n    concurrency: 2\n    access-key-id-file: {id}\n    secret-access-key-file: {secret}\n",
            region = self.region,
            endpoint = self.endpoint,
            id = id.display(),
            secret = secret.display(),
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
