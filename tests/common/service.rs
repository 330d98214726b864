//! Running `etcdsafe run` as a real process in tests, and talking HTTP to it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{etcdsafe, free_port};

pub struct ServiceProcess {
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `etcdsafe --config CONFIG run`, with `server.listen` appended to the config.
    pub fn start(config: &Path, log: &Path) -> ServiceProcess {
        let port = free_port();
        let mut text = std::fs::read_to_string(config).unwrap();
        if !text.contains("server:") {
            text.push_str(&format!("server: {{ listen: 127.0.0.1:{port} }}\n"));
        } else {
            text = text.replace(
                "server: {",
                &format!("server: {{ listen: 127.0.0.1:{port}, "),
            );
        }
        std::fs::write(config, text).unwrap();
        let child = etcdsafe()
            .env("ETCDSAFE_LOG", "info")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start etcdsafe run");
        let mut service = ServiceProcess {
            port,
            log: log.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/healthz", None, "").map(|r| r.0) != Some(200) {
            if let Some(status) = service.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcdsafe run exited ({status}): {}", service.logs());
            }
            assert!(
                Instant::now() < deadline,
                "etcdsafe run not healthy: {}",
                service.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Reads one sample from /metrics (`name{labels}` exactly as exposed, or a bare name).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = http(self.port, "GET", "/metrics", None, "")?;
        assert_eq!(status, 200);
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    /// Waits until `cond` holds, polling; panics with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the service with SIGKILL, as a node loss or the OOM killer would (through libc:
    /// a minimal root has no `kill` binary).
    pub fn sigkill(&self) {
        // SAFETY: a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {}", self.pid());
    }

    /// Sends SIGTERM and waits; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("etcdsafe run ignored SIGTERM for 30s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the `server:` line [`ServiceProcess::start`] appended, so the config can start a
/// service again.
pub fn without_server_line(config: &Path) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("server:"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(config, text).unwrap();
}

/// A minimal HTTP/1.1 request on loopback; `None` when nothing answers.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
