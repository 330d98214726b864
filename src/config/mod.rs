//! Configuration: raw serde structs (`raw`) are parsed first, then validated into [`Config`].
//!
//! Parsing rejects unknown keys and names them with their path (`etcd.endpoint`); validation
//! collects every problem it finds, so `etcdsafe config check` can name them all at once.

mod raw;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::Recipients;
use crate::retention::Policy;
use crate::storage::s3::{S3Config, S3Settings, DEFAULT_S3_TIMEOUT, MIN_PART_SIZE};
use crate::units;

pub use raw::RawConfig;

/// Where a config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/etcdsafe/config.yaml";
/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "ETCDSAFE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source} (pass --config FILE or set {CONFIG_ENV})")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config {path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Each problem on its own, for `config check`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            ConfigError::Parse { key, message, .. } => vec![format!("{key}: {message}")],
            other => vec![other.to_string()],
        }
    }
}

/// The most zstd workers `compression.threads` may ask for.
pub const MAX_ZSTD_THREADS: u32 = 64;
/// The range `storage.s3.timeout` must be in.
const S3_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));

/// What a command needs from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Everything: taking backups, the service, restores, upgrades.
    All,
    /// Only the store (and retention): `backups list|fetch|audit|prune`, which an operator may
    /// run away from the cluster with a config that has no `etcd` or `encryption` section.
    /// Sections that are present are still checked.
    Store,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub etcd: EtcdConfig,
    pub spool_dir: PathBuf,
    pub compression: Compression,
    pub encryption: Recipients,
    pub storage: StorageConfig,
    /// Retention rules; `None` keeps every backup.
    pub retention: Option<Policy>,
    pub kubernetes: KubernetesConfig,
    pub hooks: HooksConfig,
    pub service: ServiceConfig,
    /// Control-plane files kept with every backup (`include-files`), absolute paths.
    pub include_files: Vec<PathBuf>,
    /// Every backup's manifest is signed with this key (`signing`).
    pub signing: Option<SigningConfig>,
    /// Backups are checked against these signers before they are trusted (`verification`).
    pub verification: Option<VerificationConfig>,
    /// `maintenance`: defragmentation thresholds and the quota to compare sizes with.
    pub maintenance: MaintenanceConfig,
}

/// `maintenance`: which members `maintain defrag` defragments.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// `maintenance.defrag.min-fragmentation`: free share of the file (0.3).
    pub min_fragmentation: f64,
    /// `maintenance.defrag.min-reclaim-bytes`: free bytes worth a defrag (256MiB).
    pub min_reclaim_bytes: u64,
    /// `maintenance.quota-backend-bytes`: etcd's quota when Status does not report it (2GiB).
    pub quota_backend_bytes: u64,
    /// `maintenance.defrag-schedule`: when the service defragments; `None` is off.
    pub defrag_schedule: Option<crate::service::schedule::Schedule>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            min_fragmentation: 0.3,
            min_reclaim_bytes: 256 << 20,
            quota_backend_bytes: 2 << 30,
            defrag_schedule: None,
        }
    }
}

/// `signing`: the key that signs every backup's manifest (SSHSIG, namespace etcdsafe-backup).
#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub key_file: PathBuf,
    pub principal: String,
}

impl SigningConfig {
    /// Loads the key (checked at config load too; loaded again per backup so a rotated key
    /// file is picked up without a restart).
    pub fn load_key(&self) -> Result<crate::sshsig::SigningKey, crate::sshsig::SigError> {
        crate::sshsig::SigningKey::load(&self.key_file)
    }
}

/// `verification`: who may sign backups.
#[derive(Debug, Clone)]
pub struct VerificationConfig {
    pub allowed_signers_file: PathBuf,
}

impl VerificationConfig {
    pub fn load(&self) -> Result<crate::sshsig::AllowedSigners, crate::sshsig::SigError> {
        crate::sshsig::AllowedSigners::load(&self.allowed_signers_file)
    }
}

/// How `etcdsafe run` schedules, serves and coordinates.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub schedule: crate::service::schedule::Schedule,
    pub jitter: Duration,
    pub listen: std::net::SocketAddr,
    /// Bearer token for the API; required when `listen` is not loopback.
    pub token_file: Option<PathBuf>,
    pub coordination: Coordination,
    /// How long SIGTERM waits for a running backup before aborting it.
    pub shutdown_timeout: Duration,
    pub lease: LeaseConfig,
    /// When the integrity audit re-reads every stored object (weekly by default).
    pub audit_schedule: crate::service::schedule::Schedule,
}

/// Which instance takes the scheduled snapshot when several run (a DaemonSet on every
/// control-plane node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// The instance whose local etcd member is the raft leader (default).
    EtcdLeader,
    /// Every instance takes every scheduled snapshot.
    None,
    /// The instance holding a coordination.k8s.io/v1 Lease.
    Lease,
}

/// The Lease used by `coordination: lease`.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Defaults to `$NODE_NAME`, then the hostname.
    pub identity: Option<String>,
}

/// Where the control plane's files are (kubeadm layout by default).
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub manifests_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
}

/// Commands run around each snapshot by the service (argv, not a shell line).
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    pub pre_snapshot: Option<Vec<String>>,
    pub post_snapshot: Option<Vec<String>>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Explicit endpoints; empty when they come from `manifest`.
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// kubeadm's etcd static pod manifest, to discover what is not given explicitly.
    pub manifest: Option<PathBuf>,
    pub dial_timeout: Duration,
    /// How long the snapshot stream may stay silent before the run fails.
    pub stream_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub level: i32,
    /// zstd worker threads; 0 compresses on the pipeline's own thread.
    pub threads: u32,
}

#[derive(Debug, Clone)]
pub enum StorageConfig {
    Local {
        path: PathBuf,
    },
    /// The bucket settings, and the timeouts (`S3Settings` derefs to the `S3Config`).
    S3(Box<S3Settings>),
}

impl StorageConfig {
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Local { path } => format!("local:{}", path.display()),
            StorageConfig::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }

    /// Leftovers of interrupted runs older than this are cleaned up before a backup.
    pub fn abort_incomplete_after(&self) -> Duration {
        match self {
            StorageConfig::Local { .. } => Duration::from_secs(3600),
            StorageConfig::S3(s3) => s3.abort_incomplete_after,
        }
    }
}

impl Config {
    /// The config path to use: the flag, then `$ETCDSAFE_CONFIG`, then the default.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        if let Some(path) = flag {
            return path.to_path_buf();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_for(path, Needs::All)
    }

    /// Reads, parses and validates a config file for a command that needs only part of it.
    pub fn load_for(path: &Path, needs: Needs) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_for(path, &text, needs)
    }

    /// Parses and validates config text; `path` is used in messages and to resolve relative paths.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_for(path, text, Needs::All)
    }

    pub fn from_yaml_for(path: &Path, text: &str, needs: Needs) -> Result<Config, ConfigError> {
        let raw = RawConfig::parse(text).map_err(|(key, message)| ConfigError::Parse {
            path: path.to_path_buf(),
            key,
            message,
        })?;
        validate(path, raw, needs)
    }
}

struct RawService {
    schedule: Option<String>,
    jitter: Option<String>,
    timezone: Option<String>,
    server: Option<raw::RawServer>,
    coordination: Option<String>,
    shutdown_timeout: Option<String>,
    lease: Option<raw::RawLease>,
    audit_schedule: Option<String>,
}

fn validate(path: &Path, raw: RawConfig, needs: Needs) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let raw_service = RawService {
        schedule: raw.schedule.clone(),
        jitter: raw.schedule_jitter.clone(),
        timezone: raw.timezone.clone(),
        server: raw.server.as_ref().map(|s| raw::RawServer {
            listen: s.listen.clone(),
            token_file: s.token_file.clone(),
        }),
        coordination: raw.coordination.clone(),
        shutdown_timeout: raw.shutdown_timeout.clone(),
        lease: raw.lease.as_ref().map(|l| raw::RawLease {
            name: l.name.clone(),
            namespace: l.namespace.clone(),
            identity: l.identity.clone(),
        }),
        audit_schedule: raw.audit_schedule.clone(),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

    let etcd = if needs == Needs::Store && raw.etcd.is_none() {
        // Not used; validated only to get the defaults.
        validate_etcd(None, &resolve, &mut Vec::new())
    } else {
        validate_etcd(raw.etcd, &resolve, &mut problems)
    };

    let spool_dir = resolve(
        raw.spool_dir
            .unwrap_or_else(|| "/var/lib/etcdsafe/spool".into()),
    );

    let include_files = raw.include_files.clone().unwrap_or_default();
    // Only the shape is checked here: a restore must still load the config when the files are
    // gone (that is when it is needed). `config check` and each backup check they exist.
    for path in include_files.iter().filter(|p| !p.is_absolute()) {
        problems.push(format!(
            "include-files: {} is not an absolute path: write it as /etc/kubernetes/...",
            path.display()
        ));
    }

    let compression = raw.compression.unwrap_or_default();
    // Level 1 by default: on Kubernetes-like data level 3 was no smaller and cost 40% more CPU on
    // a node that also runs etcd and the API server (README, Benchmark).
    let level = compression.level.unwrap_or(1);
    if !(1..=19).contains(&level) {
        problems.push(format!(
            "compression.level: {level} is out of range: use 1 (fastest) to 19 (smallest); 1 is the default"
        ));
    }
    let threads = compression.threads.unwrap_or(2);
    if !(1..=MAX_ZSTD_THREADS).contains(&threads) {
        problems.push(format!(
            "compression.threads: {threads} is out of range: use 1 to {MAX_ZSTD_THREADS} zstd workers (2, the default, suits a control-plane node)"
        ));
    }

    let encryption = match raw.encryption {
        None if needs == Needs::Store => Some(Recipients::none()),
        None => {
            problems.push(
                "encryption: missing: add encryption.recipients (age public keys, age1...) or encryption.recipients-file; backups are never stored unencrypted"
                    .to_string(),
            );
            None
        }
        Some(enc) => {
            let file = enc.recipients_file.map(&resolve);
            match Recipients::from_config(&enc.recipients.unwrap_or_default(), file.as_deref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push(format!("encryption: {e}"));
                    None
                }
            }
        }
    };

    let storage = match raw.storage {
        None => StorageConfig::Local {
            path: PathBuf::from("/var/backups/etcdsafe"),
        },
        Some(raw::RawStorage {
            local: Some(local),
            s3: None,
        }) => StorageConfig::Local {
            path: resolve(local.path),
        },
        Some(raw::RawStorage {
            local: None,
            s3: Some(s3),
        }) => StorageConfig::S3(Box::new(validate_s3(s3, &resolve, &mut problems))),
        Some(_) => {
            problems.push(
                "storage: choose exactly one backend: storage.local or storage.s3".to_string(),
            );
            StorageConfig::Local {
                path: PathBuf::new(),
            }
        }
    };

    let kubernetes = {
        let raw = raw.kubernetes.unwrap_or_default();
        KubernetesConfig {
            manifests_dir: resolve(
                raw.manifests_dir
                    .unwrap_or_else(|| PathBuf::from("/etc/kubernetes/manifests")),
            ),
            kubeconfig: raw.kubeconfig.map(&resolve),
        }
    };
    let hooks = {
        let raw = raw.hooks.unwrap_or_default();
        for (key, argv) in [
            ("hooks.pre-snapshot", &raw.pre_snapshot),
            ("hooks.post-snapshot", &raw.post_snapshot),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                problems.push(format!(
                    "{key}: give the command as a list, e.g. [/usr/local/bin/notify, --backup]"
                ));
            }
        }
        let timeout = match raw.timeout {
            None => Duration::from_secs(60),
            Some(text) => units::parse_duration(&text).unwrap_or_else(|| {
                problems.push(format!(
                    "hooks.timeout: {text:?} is not a duration: write it like 60s"
                ));
                Duration::from_secs(60)
            }),
        };
        HooksConfig {
            pre_snapshot: raw.pre_snapshot,
            post_snapshot: raw.post_snapshot,
            timeout,
        }
    };
    let signing = raw.signing.map(|raw| {
        let key_file = raw.key_file.map(&resolve).unwrap_or_default();
        let principal = raw.principal.unwrap_or_default();
        if key_file.as_os_str().is_empty() {
            problems.push(
                "signing.key-file: missing: give the OpenSSH ed25519 private key (ssh-keygen -t ed25519 -N '' -f /etc/etcdsafe/signing-key)"
                    .to_string(),
            );
        } else if let Err(e) = crate::sshsig::SigningKey::load(&key_file) {
            problems.push(format!("signing.key-file: {e}"));
        }
        if principal.trim().is_empty() || principal.contains(char::is_whitespace) {
            problems.push(format!(
                "signing.principal: {principal:?} is not a principal: write who signs as allowed_signers names it, e.g. etcdsafe@prod-eu-1"
            ));
        }
        SigningConfig {
            key_file,
            principal,
        }
    });
    let verification = raw.verification.map(|raw| {
        let file = raw.allowed_signers.map(&resolve).unwrap_or_default();
        if file.as_os_str().is_empty() {
            problems.push(
                "verification.allowed-signers: missing: give an OpenSSH allowed_signers file (principal namespaces=\"etcdsafe-backup\" ssh-ed25519 AAAA...)"
                    .to_string(),
            );
        } else if let Err(e) = crate::sshsig::AllowedSigners::load(&file) {
            problems.push(format!("verification.allowed-signers: {e}"));
        }
        VerificationConfig {
            allowed_signers_file: file,
        }
    });
    let service = validate_service(&raw_service, &resolve, &mut problems);
    let maintenance = validate_maintenance(
        raw.maintenance,
        raw.timezone.as_deref().unwrap_or("UTC"),
        &mut problems,
    );
    let retention = raw.retention.and_then(|raw| match Policy::from_raw(&raw) {
        Ok(policy) => Some(policy),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    });

    match (problems.is_empty(), encryption) {
        (true, Some(encryption)) => Ok(Config {
            source: path.to_path_buf(),
            etcd,
            spool_dir,
            compression: Compression { level, threads },
            encryption,
            storage,
            retention,
            kubernetes,
            hooks,
            service,
            include_files,
            signing,
            verification,
            maintenance,
        }),
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    }
}

fn validate_s3(
    raw: raw::RawS3,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    problems: &mut Vec<String>,
) -> S3Settings {
    let bucket = raw.bucket.unwrap_or_default();
    if bucket.is_empty() {
        problems.push("storage.s3.bucket: missing: name the bucket backups go to".to_string());
    }
    let prefix = raw
        .prefix
        .map(|p| p.trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .map(|p| if p.ends_with('/') { p } else { format!("{p}/") })
        .unwrap_or_default();
    let sse = raw.sse.map(|s| match s.as_str() {
        "aes256" | "AES256" => "AES256".to_string(),
        "aws:kms" | "AWS:KMS" => "aws:kms".to_string(),
        other => {
            problems.push(format!(
                "storage.s3.sse: {other:?} is not supported: use AES256 or aws:kms"
            ));
            other.to_string()
        }
    });
    if raw.kms_key_id.is_some() && sse.as_deref() != Some("aws:kms") {
        problems.push("storage.s3.kms-key-id: only applies with sse: aws:kms".to_string());
    }
    let object_lock_mode = raw
        .object_lock_mode
        .unwrap_or_else(|| "GOVERNANCE".to_string())
        .to_ascii_uppercase();
    if !matches!(object_lock_mode.as_str(), "GOVERNANCE" | "COMPLIANCE") {
        problems.push(format!(
            "storage.s3.object-lock-mode: {object_lock_mode:?}: use GOVERNANCE or COMPLIANCE"
        ));
    }
    if raw.object_lock_days == Some(0) {
        problems.push("storage.s3.object-lock-days: must be at least 1, or left out".to_string());
    }
    let part_size = match raw.part_size {
        None => 16 << 20,
        Some(raw::SizeValue::Bytes(n)) => n as usize,
        Some(raw::SizeValue::Text(text)) => units::parse_size(&text).unwrap_or_else(|| {
            problems.push(format!(
                "storage.s3.part-size: {text:?} is not a size: write it like 16MiB"
            ));
            16 << 20
        }) as usize,
    };
    if !(MIN_PART_SIZE..=(5usize << 30)).contains(&part_size) {
        problems.push(format!(
            "storage.s3.part-size: {part_size} bytes is outside S3's limits: use 5MiB to 5GiB"
        ));
    }
    let concurrency = raw.concurrency.unwrap_or(4);
    if !(1..=64).contains(&concurrency) {
        problems.push(format!(
            "storage.s3.concurrency: {concurrency}: use 1 to 64 (memory is part-size x concurrency)"
        ));
    }
    let abort_incomplete_after = match raw.abort_incomplete_after {
        None => Duration::from_secs(3600),
        Some(text) => units::parse_duration(&text).unwrap_or_else(|| {
            problems.push(format!(
                "storage.s3.abort-incomplete-after: {text:?} is not a duration: write it like 1h"
            ));
            Duration::from_secs(3600)
        }),
    };
    let timeout = match raw.timeout {
        None => DEFAULT_S3_TIMEOUT,
        Some(text) => match units::parse_duration(&text) {
            None => {
                problems.push(format!(
                    "storage.s3.timeout: {text:?} is not a duration: write it like 30s"
                ));
                DEFAULT_S3_TIMEOUT
            }
            Some(t) if !(S3_TIMEOUT_RANGE.0..=S3_TIMEOUT_RANGE.1).contains(&t) => {
                problems.push(format!(
                    "storage.s3.timeout: {text} is out of range: use 1s to 10m (the longest wait for a connection or an answer to one request; default 30s)"
                ));
                DEFAULT_S3_TIMEOUT
            }
            Some(t) => t,
        },
    };
    let access_key_id_file = raw.access_key_id_file.map(resolve);
    let secret_access_key_file = raw.secret_access_key_file.map(resolve);
    if access_key_id_file.is_some() != secret_access_key_file.is_some() {
        problems.push(
            "storage.s3: give both access-key-id-file and secret-access-key-file, or neither (then the AWS credential chain is used)"
                .to_string(),
        );
    }
    for (key, file) in [
        ("storage.s3.access-key-id-file", &access_key_id_file),
        ("storage.s3.secret-access-key-file", &secret_access_key_file),
    ] {
        if let Some(file) = file {
            if let Err(problem) = check_secret_file(file) {
                problems.push(format!("{key}: {problem}"));
            }
        }
    }
    let store = S3Config {
        bucket,
        prefix,
        region: raw.region.unwrap_or_else(|| "us-east-1".to_string()),
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        sse,
        kms_key_id: raw.kms_key_id,
        object_lock_days: raw.object_lock_days,
        object_lock_mode,
        storage_class: raw.storage_class,
        part_size,
        concurrency,
        access_key_id_file,
        secret_access_key_file,
        max_attempts: raw.max_attempts.unwrap_or(5).max(1),
        abort_incomplete_after,
    };
    S3Settings { store, timeout }
}

fn validate_maintenance(
    raw: Option<raw::RawMaintenance>,
    timezone: &str,
    problems: &mut Vec<String>,
) -> MaintenanceConfig {
    let mut config = MaintenanceConfig::default();
    let Some(raw) = raw else {
        return config;
    };
    if let Some(text) = &raw.defrag_schedule {
        use crate::service::schedule::{Schedule, ScheduleError};
        match Schedule::parse(text, timezone) {
            Ok(schedule) => config.defrag_schedule = Some(schedule),
            // A bad timezone is reported under its own key by the service's validation.
            Err(ScheduleError::BadTimezone { .. }) => {}
            Err(e) => problems.push(format!("maintenance.defrag-{e}")),
        }
    }
    let mut size = |key: &str, value: Option<raw::SizeValue>, default: u64| match value {
        None => default,
        Some(raw::SizeValue::Bytes(n)) => n,
        Some(raw::SizeValue::Text(text)) => units::parse_size(&text).unwrap_or_else(|| {
            problems.push(format!(
                "{key}: {text:?} is not a size: write it like 256MiB or 268435456"
            ));
            default
        }),
    };
    config.quota_backend_bytes = size(
        "maintenance.quota-backend-bytes",
        raw.quota_backend_bytes,
        config.quota_backend_bytes,
    );
    if let Some(defrag) = raw.defrag {
        config.min_reclaim_bytes = size(
            "maintenance.defrag.min-reclaim-bytes",
            defrag.min_reclaim_bytes,
            config.min_reclaim_bytes,
        );
        if let Some(ratio) = defrag.min_fragmentation {
            if (0.0..1.0).contains(&ratio) {
                config.min_fragmentation = ratio;
            } else {
                problems.push(format!(
                    "maintenance.defrag.min-fragmentation: {ratio} is out of range: use a share from 0 to 1 such as 0.3 (30% of the file free)"
                ));
            }
        }
    }
    if config.quota_backend_bytes == 0 {
        problems.push("maintenance.quota-backend-bytes: 0: give etcd's --quota-backend-bytes (2GiB when etcd runs without it)".to_string());
    }
    config
}

fn validate_service(
    raw: &RawService,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    problems: &mut Vec<String>,
) -> ServiceConfig {
    use crate::service::schedule::{Schedule, ScheduleError};
    let timezone = raw.timezone.as_deref().unwrap_or("UTC");
    let schedule_text = raw.schedule.as_deref().unwrap_or("0 */6 * * *");
    let schedule = match Schedule::parse(schedule_text, timezone) {
        Ok(s) => s,
        Err(e) => {
            problems.push(e.to_string());
            Schedule::parse("0 */6 * * *", "UTC").expect("the default schedule parses")
        }
    };
    let duration =
        |key: &str, value: &Option<String>, default: Duration, problems: &mut Vec<String>| {
            match value {
                None => default,
                Some(text) => units::parse_duration(text).unwrap_or_else(|| {
                    problems.push(format!(
                        "{key}: {text:?} is not a duration: write it like 30s or 5m"
                    ));
                    default
                }),
            }
        };
    let jitter = duration("schedule-jitter", &raw.jitter, Duration::ZERO, problems);
    let shutdown_timeout = duration(
        "shutdown-timeout",
        &raw.shutdown_timeout,
        Duration::from_secs(60),
        problems,
    );
    let server = raw.server.as_ref();
    let listen_text = server
        .and_then(|s| s.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9379".to_string());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "server.listen: {listen_text:?} is not HOST:PORT with an IP address, e.g. 127.0.0.1:9379 or 0.0.0.0:9379"
        ));
        std::net::SocketAddr::from(([127, 0, 0, 1], 9379))
    });
    let token_file = server.and_then(|s| s.token_file.clone()).map(resolve);
    match &token_file {
        Some(file) => {
            if let Err(problem) = check_secret_file(file).and_then(|()| check_token_file(file)) {
                problems.push(format!("server.token-file: {problem}"));
            }
        }
        None if !listen.ip().is_loopback() => problems.push(format!(
            "server.token-file: required because server.listen ({listen}) is not loopback: the API can take backups"
        )),
        None => {}
    }
    let coordination = match raw.coordination.as_deref().unwrap_or("etcd-leader") {
        "etcd-leader" => Coordination::EtcdLeader,
        "none" => Coordination::None,
        "lease" => Coordination::Lease,
        other => {
            problems.push(format!(
                "coordination: {other:?}: use etcd-leader (the instance next to the etcd leader takes the snapshot), lease (a Kubernetes Lease) or none"
            ));
            Coordination::EtcdLeader
        }
    };
    let raw_lease = raw.lease.as_ref();
    let lease = LeaseConfig {
        name: raw_lease
            .and_then(|l| l.name.clone())
            .unwrap_or_else(|| "etcdsafe-snapshot".to_string()),
        namespace: raw_lease
            .and_then(|l| l.namespace.clone())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "etcdsafe".to_string()),
        identity: raw_lease.and_then(|l| l.identity.clone()),
    };
    let audit_text = raw.audit_schedule.as_deref().unwrap_or("30 3 * * 0");
    let audit_schedule = Schedule::parse(audit_text, timezone).unwrap_or_else(|e| {
        // A bad timezone was reported above, under its own key.
        if !matches!(e, ScheduleError::BadTimezone { .. }) {
            problems.push(format!("audit-{e}"));
        }
        Schedule::parse("30 3 * * 0", "UTC").expect("the default audit schedule parses")
    });
    ServiceConfig {
        audit_schedule,
        schedule,
        jitter,
        listen,
        token_file,
        coordination,
        shutdown_timeout,
        lease,
    }
}

/// A file holding a secret must exist and be private to its owner.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}, readable by others: chmod 600 it (in Kubernetes, set defaultMode: 0400 on the Secret volume)",
            path.display()
        ));
    }
    Ok(())
}

/// An API token file must hold a token: an empty one would leave the API open to anyone.
fn check_token_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "{} is empty: write the API token into it (e.g. `openssl rand -hex 32 > {}`); an empty token would turn API authentication off",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

fn validate_etcd(
    raw: Option<raw::RawEtcd>,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    problems: &mut Vec<String>,
) -> EtcdConfig {
    let raw = raw.unwrap_or_default();
    let duration =
        |key: &str, value: Option<String>, default: u64, problems: &mut Vec<String>| match value {
            None => Duration::from_secs(default),
            Some(text) => units::parse_duration(&text).unwrap_or_else(|| {
                problems.push(format!(
                    "etcd.{key}: {text:?} is not a duration: write it like 5s, 2m or 1h"
                ));
                Duration::from_secs(default)
            }),
        };
    let in_range =
        |key: &str, value: Duration, max: u64, max_text: &str, problems: &mut Vec<String>| {
            if value < Duration::from_secs(1) || value > Duration::from_secs(max) {
                problems.push(format!(
                    "etcd.{key}: {} is out of range: use 1s to {max_text}",
                    humantime::format_duration(value)
                ));
            }
        };
    let dial_timeout = duration("dial-timeout", raw.dial_timeout, 5, problems);
    in_range("dial-timeout", dial_timeout, 300, "5m", problems);
    let stream_timeout = duration("stream-timeout", raw.stream_timeout, 60, problems);
    in_range("stream-timeout", stream_timeout, 3600, "1h", problems);
    let config = EtcdConfig {
        endpoints: raw.endpoints.unwrap_or_default(),
        cacert: raw.cacert.map(resolve),
        cert: raw.cert.map(resolve),
        key: raw.key.map(resolve),
        manifest: raw.manifest.map(resolve),
        dial_timeout,
        stream_timeout,
    };
    if config.endpoints.is_empty() && config.manifest.is_none() {
        problems.push(
            "etcd: no endpoint: set etcd.endpoints (e.g. [https://127.0.0.1:2379]) or etcd.manifest (kubeadm's /etc/kubernetes/manifests/etcd.yaml)"
                .to_string(),
        );
    }
    for endpoint in &config.endpoints {
        let lower = endpoint.to_ascii_lowercase();
        if lower.starts_with("https://") {
            if config.cacert.is_none() && config.manifest.is_none() {
                problems.push(format!(
                    "etcd.cacert: missing for {endpoint}: an https endpoint needs the etcd CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt), or the server certificate is rejected as UnknownIssuer"
                ));
            }
        } else if !lower.starts_with("http://") {
            problems.push(format!(
                "etcd.endpoints: {endpoint:?} needs a scheme: write https://HOST:PORT (TLS) or http://HOST:PORT (plain)"
            ));
        }
    }
    if config.cert.is_some() != config.key.is_some() {
        problems.push(
            "etcd.cert and etcd.key: give both (a client certificate and its key) or neither"
                .to_string(),
        );
    }
    for (key, file) in [
        ("etcd.cacert", &config.cacert),
        ("etcd.cert", &config.cert),
        ("etcd.key", &config.key),
        ("etcd.manifest", &config.manifest),
    ] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                problems.push(format!("{key}: cannot read {}: {e}", file.display()));
            }
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(Path::new("/nonexistent/test.yaml"), text)
    }

    #[test]
    fn minimal_plain_http_config() {
        let config = parse(&format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nspool-dir: /tmp/spool\nencryption: {{ recipients: [{RECIPIENT}] }}\nstorage: {{ local: {{ path: /tmp/b }} }}\n"
        ))
        .unwrap();
        assert_eq!(config.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(config.compression.level, 1);
        assert_eq!(config.encryption.len(), 1);
        assert_eq!(config.storage.describe(), "local:/tmp/b");
    }

    #[test]
    fn reading_the_store_needs_only_the_storage_section() {
        let path = Path::new("/nonexistent/test.yaml");
        let text = "storage: { local: { path: /tmp/b } }\nretention: { keep-last: 3 }\n";
        let config = Config::from_yaml_for(path, text, Needs::Store).unwrap();
        assert_eq!(config.storage.describe(), "local:/tmp/b");
        assert!(config.retention.is_some());
        assert!(
            config.encryption.is_empty(),
            "nothing can be encrypted with it"
        );
        // Taking a backup needs the rest, and says so.
        let joined = Config::from_yaml_for(path, text, Needs::All)
            .unwrap_err()
            .problems()
            .join("\n");
        assert!(joined.contains("etcd: no endpoint"), "{joined}");
        assert!(joined.contains("encryption: missing"), "{joined}");
        // A section that is there is still checked, and unknown keys are still refused.
        let broken =
            format!("{text}etcd: {{ endpoints: [http://127.0.0.1:2379], dial-timeout: soon }}\n");
        let err = Config::from_yaml_for(path, &broken, Needs::Store).unwrap_err();
        assert!(err.to_string().contains("etcd.dial-timeout"), "{err}");
        let typo = format!("{text}storage-class: cold\n");
        assert!(Config::from_yaml_for(path, &typo, Needs::Store).is_err());
    }

    #[test]
    fn maintenance_defaults_values_and_problems() {
        let base = format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nencryption: {{ recipients: [{RECIPIENT}] }}\nstorage: {{ local: {{ path: /tmp/b }} }}\n"
        );
        let config = parse(&base).unwrap();
        assert_eq!(config.maintenance.min_fragmentation, 0.3);
        assert_eq!(config.maintenance.min_reclaim_bytes, 256 << 20);
        assert_eq!(config.maintenance.quota_backend_bytes, 2 << 30);
        assert!(config.maintenance.defrag_schedule.is_none());

        let config = parse(&format!(
            "{base}maintenance:\n  defrag-schedule: \"0 4 * * 0\"\n  quota-backend-bytes: 8GiB\n  defrag: {{ min-fragmentation: 0.45, min-reclaim-bytes: 1GiB }}\n"
        ))
        .unwrap();
        assert_eq!(config.maintenance.min_fragmentation, 0.45);
        assert_eq!(config.maintenance.min_reclaim_bytes, 1 << 30);
        assert_eq!(config.maintenance.quota_backend_bytes, 8 << 30);
        assert_eq!(
            config.maintenance.defrag_schedule.unwrap().with_seconds(),
            "0 0 4 * * 0"
        );

        let err = parse(&format!(
            "{base}maintenance:\n  defrag-schedule: weekly\n  quota-backend-bytes: lots\n  defrag: {{ min-fragmentation: 1.5 }}\n"
        ))
        .unwrap_err();
        let joined = err.problems().join("\n");
        assert!(
            joined.contains("maintenance.defrag-schedule: \"weekly\""),
            "{joined}"
        );
        assert!(
            joined.contains("maintenance.quota-backend-bytes: \"lots\""),
            "{joined}"
        );
        assert!(
            joined.contains("maintenance.defrag.min-fragmentation: 1.5"),
            "{joined}"
        );
        let err = parse(&format!(
            "{base}maintenance: {{ defrag: {{ min-size: 1 }} }}\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("maintenance.defrag.min-size"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse("etcd:\n  endpoint: [http://127.0.0.1:2379]\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("etcd.endpoint"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn every_problem_is_named() {
        let err = parse(
            "etcd: { endpoints: [https://127.0.0.1:2379, 127.0.0.1:2380], dial-timeout: soon }\ncompression: { level: 40 }\n",
        )
        .unwrap_err();
        let problems = err.problems();
        let joined = problems.join("\n");
        assert!(joined.contains("etcd.cacert: missing"), "{joined}");
        assert!(joined.contains("needs a scheme"), "{joined}");
        assert!(joined.contains("etcd.dial-timeout"), "{joined}");
        assert!(joined.contains("compression.level: 40"), "{joined}");
        assert!(joined.contains("encryption: missing"), "{joined}");
        assert_eq!(problems.len(), 5, "{joined}");
    }

    #[test]
    fn a_private_key_in_recipients_is_refused_without_echoing_it() {
        let secret =
            "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
        let err = parse(&format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nencryption: {{ recipients: [{secret}] }}\n"
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("private key"), "{text}");
        assert!(!text.contains(secret), "the secret was echoed: {text}");
    }
}
