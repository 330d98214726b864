//! Raw config -> [`Config`], without touching the file system: every value is checked for
//! what it says, and every problem is collected. Whether the files it names exist is
//! [`super::check_environment`]'s business.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::problem::Problem;
use super::raw::{self, RawConfig};
use super::value::{read, HumanDuration, Parsed};
use super::{
    Compression, Config, EtcdConfig, HooksConfig, KubernetesConfig, Needs, SigningConfig,
    VerificationConfig, MAX_ZSTD_THREADS,
};
use crate::crypto::Recipients;
use crate::retention::Policy;
use crate::storage::StorageSettings;

/// Validates a parsed config; `source` is the file it came from (relative paths in it are
/// relative to its directory). Pure: reads no file.
pub fn validate(raw: RawConfig, source: &Path, needs: Needs) -> Result<Config, Vec<Problem>> {
    match build(raw, source, needs) {
        (config, problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(problems),
    }
}

/// Resolves the paths a config file names against the file's directory.
pub(super) struct Paths {
    base: PathBuf,
}

impl Paths {
    fn of(source: &Path) -> Paths {
        let base = source.parent().unwrap_or(Path::new("."));
        Paths {
            base: base.to_path_buf(),
        }
    }

    pub(super) fn resolve(&self, path: PathBuf) -> PathBuf {
        if path.is_relative() {
            self.base.join(path)
        } else {
            path
        }
    }
}

/// The config, with defaults where a value is wrong, and every problem found.
pub(super) fn build(mut raw: RawConfig, source: &Path, needs: Needs) -> (Config, Vec<Problem>) {
    let mut problems = Vec::new();
    let paths = Paths::of(source);
    let service_section = super::service::RawService::take(&mut raw);
    let timezone = raw.timezone.clone().unwrap_or_else(|| "UTC".to_string());
    let etcd = match raw.etcd {
        // Not used; validated only to get the defaults.
        None if needs == Needs::Store => etcd(None, &paths, &mut Vec::new()),
        section => etcd(section, &paths, &mut problems),
    };
    let spool_dir = paths.resolve(
        raw.spool_dir
            .unwrap_or_else(|| "/var/lib/etcdsafe/spool".into()),
    );
    let include_files = include_files(raw.include_files.unwrap_or_default(), &mut problems);
    let compression = compression(raw.compression.unwrap_or_default(), &mut problems);
    let (encryption, recipients_file) = encryption(raw.encryption, needs, &paths, &mut problems);
    let storage = storage(raw.storage, &paths, &mut problems);
    let kubernetes = kubernetes(raw.kubernetes.unwrap_or_default(), &paths);
    let hooks = hooks(raw.hooks.unwrap_or_default(), &mut problems);
    let signing = raw.signing.map(|s| signing(s, &paths, &mut problems));
    let verification = raw
        .verification
        .map(|v| verification(v, &paths, &mut problems));
    let service = super::service::validate_service(service_section, &paths, &mut problems);
    let maintenance =
        super::service::validate_maintenance(raw.maintenance, &timezone, &mut problems);
    let retention = retention(raw.retention, &mut problems);
    let deltas = raw
        .deltas
        .map(|d| super::service::validate_deltas(d, &mut problems));
    let config = Config {
        source: source.to_path_buf(),
        etcd,
        spool_dir,
        compression,
        encryption,
        recipients_file,
        storage,
        retention,
        kubernetes,
        hooks,
        service,
        include_files,
        signing,
        verification,
        maintenance,
        deltas,
    };
    (config, problems)
}

fn etcd(raw: Option<raw::RawEtcd>, paths: &Paths, problems: &mut Vec<Problem>) -> EtcdConfig {
    let raw = raw.unwrap_or_default();
    let dial_timeout = etcd_timeout("dial-timeout", &raw.dial_timeout, 5, (300, "5m"), problems);
    let stream_timeout = etcd_timeout(
        "stream-timeout",
        &raw.stream_timeout,
        60,
        (3600, "1h"),
        problems,
    );
    let config = EtcdConfig {
        endpoints: raw.endpoints.unwrap_or_default(),
        cacert: raw.cacert.map(|p| paths.resolve(p)),
        cert: raw.cert.map(|p| paths.resolve(p)),
        key: raw.key.map(|p| paths.resolve(p)),
        manifest: raw.manifest.map(|p| paths.resolve(p)),
        dial_timeout,
        stream_timeout,
    };
    if config.endpoints.is_empty() && config.manifest.is_none() {
        problems.push(Problem::new(
            "etcd",
            "no endpoint: set etcd.endpoints (e.g. [https://127.0.0.1:2379]) or etcd.manifest (kubeadm's /etc/kubernetes/manifests/etcd.yaml)",
        ));
    }
    for endpoint in &config.endpoints {
        etcd_endpoint(endpoint, &config, problems);
    }
    if config.cert.is_some() != config.key.is_some() {
        problems.push(Problem::new(
            "etcd.cert and etcd.key",
            "give both (a client certificate and its key) or neither",
        ));
    }
    config
}

/// An etcd timeout: a duration from 1s to `max`.
fn etcd_timeout(
    key: &str,
    value: &Option<Parsed<HumanDuration>>,
    default_secs: u64,
    (max_secs, max_text): (u64, &str),
    problems: &mut Vec<Problem>,
) -> Duration {
    let key = format!("etcd.{key}");
    let default = HumanDuration(Duration::from_secs(default_secs));
    let value = read(
        value,
        &key,
        ": write it like 5s, 2m or 1h",
        default,
        problems,
    )
    .0;
    if value < Duration::from_secs(1) || value > Duration::from_secs(max_secs) {
        problems.push(Problem::new(
            key,
            format!(
                "{} is out of range: use 1s to {max_text}",
                humantime::format_duration(value)
            ),
        ));
    }
    value
}

fn etcd_endpoint(endpoint: &str, config: &EtcdConfig, problems: &mut Vec<Problem>) {
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("https://") {
        if config.cacert.is_none() && config.manifest.is_none() {
            problems.push(Problem::new(
                "etcd.cacert",
                format!("missing for {endpoint}: an https endpoint needs the etcd CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt), or the server certificate is rejected as UnknownIssuer"),
            ));
        }
    } else if !lower.starts_with("http://") {
        problems.push(Problem::new(
            "etcd.endpoints",
            format!("{endpoint:?} needs a scheme: write https://HOST:PORT (TLS) or http://HOST:PORT (plain)"),
        ));
    }
}

/// Only the shape is checked: a restore must still load the config when the files are gone
/// (that is when it is needed). `config check` and each backup check they exist.
fn include_files(files: Vec<PathBuf>, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    for path in files.iter().filter(|p| !p.is_absolute()) {
        problems.push(Problem::new(
            "include-files",
            format!(
                "{} is not an absolute path: write it as /etc/kubernetes/...",
                path.display()
            ),
        ));
    }
    files
}

fn compression(raw: raw::RawCompression, problems: &mut Vec<Problem>) -> Compression {
    // Level 1 by default: on Kubernetes-like data level 3 was no smaller and cost 40% more CPU on
    // a node that also runs etcd and the API server (README, Benchmark).
    let level = raw.level.unwrap_or(1);
    if !(1..=19).contains(&level) {
        problems.push(Problem::new(
            "compression.level",
            format!("{level} is out of range: use 1 (fastest) to 19 (smallest); 1 is the default"),
        ));
    }
    let threads = raw.threads.unwrap_or(2);
    if !(1..=MAX_ZSTD_THREADS).contains(&threads) {
        problems.push(Problem::new(
            "compression.threads",
            format!("{threads} is out of range: use 1 to {MAX_ZSTD_THREADS} zstd workers (2, the default, suits a control-plane node)"),
        ));
    }
    Compression { level, threads }
}

/// The inline recipients, and the recipients file (read by the environment check and by
/// `Config::load`, which adds its keys).
fn encryption(
    raw: Option<raw::RawEncryption>,
    needs: Needs,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> (Recipients, Option<PathBuf>) {
    let Some(raw) = raw else {
        if needs == Needs::All {
            problems.push(Problem::new(
                "encryption",
                "missing: add encryption.recipients (age public keys, age1...) or encryption.recipients-file; backups are never stored unencrypted",
            ));
        }
        return (Recipients::none(), None);
    };
    let inline = raw.recipients.unwrap_or_default();
    let file = raw.recipients_file.map(|p| paths.resolve(p));
    if inline.is_empty() && file.is_some() {
        return (Recipients::none(), file);
    }
    match Recipients::from_config(&inline, None) {
        Ok(recipients) => (recipients, file),
        Err(e) => {
            problems.push(Problem::new("encryption", e.to_string()));
            (Recipients::none(), file)
        }
    }
}

fn storage(
    raw: Option<raw::RawStorage>,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> StorageSettings {
    match raw {
        None => StorageSettings::Local {
            path: PathBuf::from("/var/backups/etcdsafe"),
        },
        Some(raw::RawStorage {
            local: Some(local),
            s3: None,
        }) => StorageSettings::Local {
            path: paths.resolve(local.path),
        },
        Some(raw::RawStorage {
            local: None,
            s3: Some(s3),
        }) => StorageSettings::S3(Box::new(super::s3::validate_s3(s3, paths, problems))),
        Some(_) => {
            problems.push(Problem::new(
                "storage",
                "choose exactly one backend: storage.local or storage.s3",
            ));
            StorageSettings::Local {
                path: PathBuf::new(),
            }
        }
    }
}

fn kubernetes(raw: raw::RawKubernetes, paths: &Paths) -> KubernetesConfig {
    KubernetesConfig {
        manifests_dir: paths.resolve(
            raw.manifests_dir
                .unwrap_or_else(|| PathBuf::from("/etc/kubernetes/manifests")),
        ),
        kubeconfig: raw.kubeconfig.map(|p| paths.resolve(p)),
    }
}

fn hooks(raw: raw::RawHooks, problems: &mut Vec<Problem>) -> HooksConfig {
    for (key, argv) in [
        ("hooks.pre-snapshot", &raw.pre_snapshot),
        ("hooks.post-snapshot", &raw.post_snapshot),
    ] {
        if argv
            .as_ref()
            .is_some_and(|a| a.is_empty() || a[0].is_empty())
        {
            problems.push(Problem::new(
                key,
                "give the command as a list, e.g. [/usr/local/bin/notify, --backup]",
            ));
        }
    }
    let default = HumanDuration(Duration::from_secs(60));
    let timeout = read(
        &raw.timeout,
        "hooks.timeout",
        ": write it like 60s",
        default,
        problems,
    );
    HooksConfig {
        pre_snapshot: raw.pre_snapshot,
        post_snapshot: raw.post_snapshot,
        timeout: timeout.0,
    }
}

fn signing(raw: raw::RawSigning, paths: &Paths, problems: &mut Vec<Problem>) -> SigningConfig {
    let key_file = raw.key_file.map(|p| paths.resolve(p)).unwrap_or_default();
    let principal = raw.principal.unwrap_or_default();
    if key_file.as_os_str().is_empty() {
        problems.push(Problem::new(
            "signing.key-file",
            "missing: give the OpenSSH ed25519 private key (ssh-keygen -t ed25519 -N '' -f /etc/etcdsafe/signing-key)",
        ));
    }
    if principal.trim().is_empty() || principal.contains(char::is_whitespace) {
        problems.push(Problem::new(
            "signing.principal",
            format!("{principal:?} is not a principal: write who signs as allowed_signers names it, e.g. etcdsafe@prod-eu-1"),
        ));
    }
    SigningConfig {
        key_file,
        principal,
    }
}

fn verification(
    raw: raw::RawVerification,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> VerificationConfig {
    let file = raw
        .allowed_signers
        .map(|p| paths.resolve(p))
        .unwrap_or_default();
    if file.as_os_str().is_empty() {
        problems.push(Problem::new(
            "verification.allowed-signers",
            "missing: give an OpenSSH allowed_signers file (principal namespaces=\"etcdsafe-backup\" ssh-ed25519 AAAA...)",
        ));
    }
    VerificationConfig {
        allowed_signers_file: file,
    }
}

fn retention(
    raw: Option<crate::retention::RawPolicy>,
    problems: &mut Vec<Problem>,
) -> Option<Policy> {
    match Policy::from_raw(&raw?) {
        Ok(policy) => Some(policy),
        Err(e) => {
            problems.push(Problem::keyed(e));
            None
        }
    }
}
