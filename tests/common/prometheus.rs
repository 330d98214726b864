//! A real Prometheus server (Debian `prometheus`) on a free loopback port, scraping one target
//! every second, with optional rule files; stopped on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::service::http;
use super::{free_port, system_tool};

pub struct Prometheus {
    pub port: u16,
    child: Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `127.0.0.1:target_port` as job `etcdsafe`.
    pub fn start(dir: &Path, target_port: u16, rules: Option<&Path>) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        let rule_files = rules
            .map(|r| format!("rule_files: [{}]\n", r.display()))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n{rule_files}scrape_configs:\n  - job_name: etcdsafe\n    static_configs: [{{ targets: ['127.0.0.1:{target_port}'] }}]\n"
            ),
        )
        .unwrap();
        let child = Command::new(system_tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/-/ready", None, "").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// GET an API path; asserts 200 and returns the JSON.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = http(self.port, "GET", path, None, "").expect("prometheus answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// An instant query; asserts it succeeded.
    pub fn query(&self, expr: &str) -> serde_json::Value {
        let mut encoded = String::new();
        for b in expr.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let v = self.api(&format!("/api/v1/query?query={encoded}"));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v
    }

    /// The state (pending/firing) of an alert, if it is active.
    pub fn alert_state(&self, name: &str) -> Option<String> {
        let alerts = self.api("/api/v1/alerts");
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
    }
}
