//! Configuration in three steps: the file is parsed into raw serde structs ([`RawConfig`]),
//! [`validate`]d into a [`Config`] without touching the file system, and the files it names
//! are checked by [`check_environment`] (existence, 0600 secrets, keys that parse).
//! [`Config::load`] runs all three and reports every problem of the last two at once.
//!
//! Parsing rejects unknown keys and names them with their path (`etcd.endpoint`). Values with
//! their own syntax (durations, sizes, closed sets of names) are [`Parsed`] when read and
//! checked when validated, so a bad one is one problem among the others. The storage
//! backend's settings are the storage module's types: config depends on storage, never the
//! other way round. The service's settings live here (`settings`) and the cron math both
//! use in `crate::schedule`: the service depends on config, never the other way round.

mod environment;
mod problem;
mod raw;
mod s3;
mod service;
pub mod settings;
mod validate;
mod value;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::Recipients;
use crate::retention::Policy;

pub use environment::{check_environment, check_secret_file};
pub use problem::Problem;
pub use raw::RawConfig;
pub use validate::validate;
pub use value::{ByteSize, HumanDuration, Parsed};

// The service's settings (under their config names). The service depends on config, never
// the other way round; the cron math both use is `crate::schedule`.
pub use settings::{Coordination, LeaseSettings as LeaseConfig, ServiceSettings as ServiceConfig};
// The `storage` section: the storage module's settings of the backend it opens.
pub use crate::storage::StorageSettings as StorageConfig;

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
    /// Every recipient, once [`Config::load`] has read `recipients_file`; [`validate`] alone
    /// gives the inline ones.
    pub encryption: Recipients,
    /// `encryption.recipients-file`, whose keys `load` adds to `encryption`.
    pub recipients_file: Option<PathBuf>,
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
    /// `deltas`: continuous backup; `None` is off.
    pub deltas: Option<DeltasConfig>,
}

/// `deltas`: the service's snapshot leader watches etcd and seals segments of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltasConfig {
    /// `deltas.interval`: a segment is sealed at least this often (10s): the RPO.
    pub interval: Duration,
    /// `deltas.max-bytes`: or as soon as this much is pending (64MiB).
    pub max_bytes: u64,
}

impl Default for DeltasConfig {
    fn default() -> Self {
        DeltasConfig {
            interval: Duration::from_secs(10),
            max_bytes: 64 << 20,
        }
    }
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
    pub defrag_schedule: Option<crate::schedule::Schedule>,
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
        let (mut config, mut problems) = validate::build(raw, path, needs);
        problems.extend(check_environment(&config));
        if problems.is_empty() {
            match environment::recipients(&config) {
                Ok(recipients) => config.encryption = recipients,
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            return Ok(config);
        }
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: problems.iter().map(ToString::to_string).collect(),
        })
    }
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

    #[test]
    fn validation_reads_no_file_and_the_environment_check_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let text = format!(
            "etcd: {{ endpoints: [https://127.0.0.1:2379], cacert: {m}/ca.crt }}\nencryption: {{ recipients: [{RECIPIENT}] }}\nstorage: {{ s3: {{ bucket: b, access-key-id-file: {m}/id, secret-access-key-file: {m}/secret }} }}\nserver: {{ listen: 0.0.0.0:9379, token-file: {m}/token }}\nsigning: {{ key-file: {m}/key, principal: me }}\n",
            m = missing.display()
        );
        let raw = RawConfig::parse(&text).unwrap();
        let config = validate(raw, &dir.path().join("c.yaml"), Needs::All).unwrap();
        let keys: Vec<String> = check_environment(&config)
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "etcd.cacert",
                "storage.s3.access-key-id-file",
                "storage.s3.secret-access-key-file",
                "signing.key-file",
                "server.token-file"
            ]
        );
        // Loading runs both, so the user sees every problem at once.
        let err = Config::from_yaml(&dir.path().join("c.yaml"), &text).unwrap_err();
        assert_eq!(err.problems().len(), 5, "{err}");
    }

    #[test]
    fn validation_problems_come_first_then_the_environment_ones() {
        let err = parse(&format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379], key: /nonexistent/k }}\nencryption: {{ recipients: [{RECIPIENT}] }}\ncoordination: leader\n"
        ))
        .unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("etcd.cert and etcd.key: give both"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("coordination: \"leader\": use etcd-leader"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("etcd.key: cannot read /nonexistent/k"),
            "{problems:?}"
        );
    }

    #[test]
    fn recipients_from_the_file_are_added_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# ops\n{RECIPIENT}\n")).unwrap();
        let text = "etcd: { endpoints: [http://127.0.0.1:2379] }\nencryption: { recipients-file: recipients.txt }\n";
        let source = dir.path().join("c.yaml");
        let raw = RawConfig::parse(text).unwrap();
        let validated = validate(raw, &source, Needs::All).unwrap();
        assert!(validated.encryption.is_empty(), "validation reads no file");
        assert_eq!(validated.recipients_file.as_deref(), Some(file.as_path()));
        let loaded = Config::from_yaml(&source, text).unwrap();
        assert_eq!(loaded.encryption.public_keys(), [RECIPIENT]);
        std::fs::write(&file, "# nobody\n").unwrap();
        let err = Config::from_yaml(&source, text).unwrap_err();
        assert!(
            err.to_string().contains("encryption: no recipients"),
            "{err}"
        );
    }

    #[test]
    fn typed_values_keep_their_messages() {
        let base = format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\nencryption: {{ recipients: [{RECIPIENT}] }}\n"
        );
        let cases = [
            ("coordination: lease\n", None),
            ("schedule-jitter: 5m\n", None),
            ("storage: { s3: { bucket: b, sse: aes256, object-lock-mode: compliance } }\n", None),
            ("coordination: leader\n", Some("coordination: \"leader\": use etcd-leader (the instance next to the etcd leader takes the snapshot), lease (a Kubernetes Lease) or none")),
            ("schedule-jitter: soon\n", Some("schedule-jitter: \"soon\" is not a duration: write it like 30s or 5m")),
            ("shutdown-timeout: 1\n", Some("shutdown-timeout: \"1\" is not a duration: write it like 30s or 5m")),
            ("hooks: { timeout: later }\n", Some("hooks.timeout: \"later\" is not a duration: write it like 60s")),
            ("storage: { s3: { bucket: b, sse: kms } }\n", Some("storage.s3.sse: \"kms\" is not supported: use AES256 or aws:kms")),
            ("storage: { s3: { bucket: b, kms-key-id: k } }\n", Some("storage.s3.kms-key-id: only applies with sse: aws:kms")),
            ("storage: { s3: { bucket: b, object-lock-mode: hold } }\n", Some("storage.s3.object-lock-mode: \"HOLD\": use GOVERNANCE or COMPLIANCE")),
            ("storage: { s3: { bucket: b, part-size: big } }\n", Some("storage.s3.part-size: \"big\" is not a size: write it like 16MiB")),
            ("storage: { s3: { bucket: b, part-size: 1024 } }\n", Some("storage.s3.part-size: 1024 bytes is outside S3's limits: use 5MiB to 5GiB")),
            ("storage: { s3: { bucket: b, timeout: 0s } }\n", Some("storage.s3.timeout: 0s is out of range: use 1s to 10m")),
            ("storage: { s3: { bucket: b, timeout: slow } }\n", Some("storage.s3.timeout: \"slow\" is not a duration: write it like 30s")),
            ("storage: { s3: { bucket: b, abort-incomplete-after: x } }\n", Some("storage.s3.abort-incomplete-after: \"x\" is not a duration: write it like 1h")),
            ("maintenance: { quota-backend-bytes: lots }\n", Some("maintenance.quota-backend-bytes: \"lots\" is not a size: write it like 256MiB or 268435456")),
        ];
        for (extra, want) in cases {
            let result = parse(&format!("{base}{extra}"));
            match (want, result) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("{extra}: {e}"),
                (Some(_), Ok(_)) => panic!("{extra}: accepted"),
                (Some(want), Err(e)) => {
                    let problems = e.problems();
                    assert!(problems[0].starts_with(want), "{extra}: {problems:?}");
                }
            }
        }
        let config = parse(&format!(
            "{base}storage: {{ s3: {{ bucket: b, sse: aes256, object-lock-mode: compliance, part-size: 32MiB }} }}\ncoordination: lease\n"
        ))
        .unwrap();
        let StorageConfig::S3(s3) = &config.storage else {
            panic!("not s3")
        };
        assert_eq!(s3.sse, Some(crate::storage::s3::Sse::Aes256));
        assert_eq!(
            s3.object_lock_mode,
            crate::storage::s3::LockMode::Compliance
        );
        assert_eq!(s3.part_size, 32 << 20);
        assert_eq!(config.service.coordination, Coordination::Lease);
    }
}
