//! The config file exactly as written: kebab-case keys, unknown keys rejected.

use std::path::PathBuf;

use serde::Deserialize;

use super::settings::Coordination;
use super::value::{ByteSize, HumanDuration, Parsed};
use crate::storage::s3::{LockMode, Sse};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    pub etcd: Option<RawEtcd>,
    pub spool_dir: Option<PathBuf>,
    pub compression: Option<RawCompression>,
    pub encryption: Option<RawEncryption>,
    pub storage: Option<RawStorage>,
    pub retention: Option<crate::retention::RawPolicy>,
    pub kubernetes: Option<RawKubernetes>,
    pub hooks: Option<RawHooks>,
    pub schedule: Option<String>,
    pub schedule_jitter: Option<Parsed<HumanDuration>>,
    pub timezone: Option<String>,
    pub server: Option<RawServer>,
    pub coordination: Option<Parsed<Coordination>>,
    pub shutdown_timeout: Option<Parsed<HumanDuration>>,
    pub lease: Option<RawLease>,
    pub audit_schedule: Option<String>,
    pub include_files: Option<Vec<PathBuf>>,
    pub signing: Option<RawSigning>,
    pub verification: Option<RawVerification>,
    pub maintenance: Option<RawMaintenance>,
    pub deltas: Option<RawDeltas>,
}

/// `deltas`: continuous backup (watch-captured segments between full backups).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDeltas {
    /// Seal and store a segment at least this often (the RPO).
    pub interval: Option<Parsed<HumanDuration>>,
    /// Or as soon as this much is pending.
    pub max_bytes: Option<Parsed<ByteSize>>,
}

/// `maintenance`: when `maintain defrag` defragments a member.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawMaintenance {
    pub defrag: Option<RawDefrag>,
    /// When the service runs `maintain defrag` (cron, in `timezone`); off when absent.
    pub defrag_schedule: Option<String>,
    /// etcd's --quota-backend-bytes, for etcd before 3.6 whose Status does not report it.
    pub quota_backend_bytes: Option<Parsed<ByteSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDefrag {
    pub min_fragmentation: Option<f64>,
    pub min_reclaim_bytes: Option<Parsed<ByteSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSigning {
    /// An unencrypted OpenSSH ed25519 private key, 0600.
    pub key_file: Option<PathBuf>,
    /// Who signs, as it appears in allowed_signers.
    pub principal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVerification {
    /// OpenSSH allowed_signers file.
    pub allowed_signers: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLease {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub identity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServer {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKubernetes {
    pub manifests_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHooks {
    /// A command (argv) run before each snapshot; a failure stops the backup.
    pub pre_snapshot: Option<Vec<String>>,
    /// A command (argv) run after each backup, successful or not.
    pub post_snapshot: Option<Vec<String>>,
    pub timeout: Option<Parsed<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEtcd {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub dial_timeout: Option<Parsed<HumanDuration>>,
    pub stream_timeout: Option<Parsed<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCompression {
    pub level: Option<i32>,
    pub threads: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEncryption {
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStorage {
    pub local: Option<RawLocalStorage>,
    pub s3: Option<RawS3>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawS3 {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub sse: Option<Parsed<Sse>>,
    pub kms_key_id: Option<String>,
    pub object_lock_days: Option<u32>,
    pub object_lock_mode: Option<Parsed<LockMode>>,
    pub storage_class: Option<String>,
    pub part_size: Option<Parsed<ByteSize>>,
    pub concurrency: Option<usize>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    pub abort_incomplete_after: Option<Parsed<HumanDuration>>,
    /// Connect and per-request timeout (`30s`).
    pub timeout: Option<Parsed<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLocalStorage {
    pub path: PathBuf,
}

impl RawConfig {
    /// Parses YAML; on error returns the dotted path of the offending key and serde's message.
    pub fn parse(text: &str) -> Result<RawConfig, (String, String)> {
        if text.trim().is_empty() {
            return Err(("(file)".to_string(), "the file is empty".to_string()));
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            (key, e.into_inner().to_string())
        })
    }
}
