//! The config file exactly as written: kebab-case keys, unknown keys rejected.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    pub etcd: Option<RawEtcd>,
    pub spool_dir: Option<PathBuf>,
    pub compression: Option<RawCompression>,
    pub encryption: Option<RawEncryption>,
    pub storage: Option<RawStorage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEtcd {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub dial_timeout: Option<String>,
    pub stream_timeout: Option<String>,
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
            let key = if key == "." { "(top level)".to_string() } else { key };
            (key, e.into_inner().to_string())
        })
    }
}
