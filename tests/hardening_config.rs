//! Regression tests for the config and API defects of the hardening issue (#19): an empty
//! token file, durations and thread counts out of range, a bad timezone, colour codes in logs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

/// A complete config (plain http etcd, local store) with `extra` appended.
fn config_with(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nspool-dir: {spool}\nencryption: {{ recipients: [{RECIPIENT}] }}\nstorage: {{ local: {{ path: {store} }} }}\n{extra}",
        spool = dir.join("spool").display(),
        store = dir.join("store").display(),
    );
    let path = dir.join("etcdsafe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `config check` of a config it must refuse (it fails, exit code 1 or 2); its stderr.
fn config_check_refuses(config: &Path) -> String {
    run_err(
        etcdsafe()
            .arg("--config")
            .arg(config)
            .args(["config", "check"]),
    )
}

/// Defect 3: an empty or whitespace-only token file turned API authentication off, even on a
/// non-loopback listener, and `config check` said ok.
#[test]
fn an_empty_or_blank_token_file_is_a_config_error_naming_the_file() {
    for (name, content) in [("empty", ""), ("blank", "  \n\t\n")] {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join(format!("{name}-token"));
        std::fs::write(&token, content).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = config_with(
            dir.path(),
            &format!(
                "server: {{ listen: 0.0.0.0:{}, token-file: {} }}\n",
                free_port(),
                token.display()
            ),
        );
        // The {name} token file is refused.
        let err = config_check_refuses(&config);
        assert!(err.contains("server.token-file"), "{err}");
        assert!(err.contains(&token.display().to_string()), "{err}");
        assert!(err.contains("empty"), "{err}");

        // The service refuses to start with it, rather than serving the API without a token.
        let err = run_err(etcdsafe().arg("--config").arg(&config).arg("run"));
        assert!(err.contains(&token.display().to_string()), "{err}");
    }
}

/// Defect 9: `dial-timeout: 0s` and `compression.threads` of 0 or absurdly high were accepted.
#[test]
fn zero_dial_timeout_and_out_of_range_threads_are_refused_naming_the_range() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key, range) in [
        (
            "compression: { threads: 0 }\n",
            "compression.threads: 0",
            "1 to",
        ),
        (
            "compression: { threads: 100000 }\n",
            "compression.threads: 100000",
            "1 to",
        ),
    ] {
        // {extra} is refused.
        let err = config_check_refuses(&config_with(dir.path(), extra));
        assert!(err.contains(key), "{err}");
        assert!(err.contains(range), "{err}");
    }
    let config = dir.path().join("dial.yaml");
    std::fs::write(
        &config,
        format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379], dial-timeout: 0s, stream-timeout: 0s }}\nencryption: {{ recipients: [{RECIPIENT}] }}\n"
        ),
    )
    .unwrap();
    // dial-timeout: 0s is refused.
    let err = config_check_refuses(&config);
    assert!(err.contains("etcd.dial-timeout: 0s"), "{err}");
    assert!(err.contains("etcd.stream-timeout: 0s"), "{err}");
    assert!(err.contains("1s to"), "{err}");
}

/// Defect 9: a bad `timezone` also reported a key `audit-timezone` the config does not have.
#[test]
fn a_bad_timezone_is_reported_once_under_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_check_refuses(&config_with(dir.path(), "timezone: Mars/Olympus\n"));
    assert!(err.contains("timezone"), "{err}");
    assert!(err.contains("Mars/Olympus"), "{err}");
    assert!(!err.contains("audit-timezone"), "{err}");
    assert!(err.contains("1 problem(s)"), "{err}");
}

/// Defect 9: text logs carried ANSI colour codes when stderr is a file or a pipe.
#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // An S3 endpoint nobody listens on: the SDK logs at debug while it fails to connect.
    let port = free_port();
    let text = format!(
        "storage:\n  s3:\n    bucket: b\n    region: us-east-1\n    endpoint: http://127.0.0.1:{port}\n    force-path-style: true\n    max-attempts: 1\n"
    );
    let config = dir.path().join("s3.yaml");
    std::fs::write(&config, text).unwrap();
    let err = run_err(
        etcdsafe()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["--log-format", "text", "--log-level", "debug", "--config"])
            .arg(&config)
            .args(["backups", "list"]),
    );
    assert!(err.contains("DEBUG"), "no debug log lines: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in piped logs: {err:?}"
    );
}
