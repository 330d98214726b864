//! What a valid config needs from the machine: the files it names exist and can be read,
//! secrets are private to their owner (0600), keys and signer lists parse.

use std::path::Path;

use super::problem::Problem;
use super::Config;
use crate::crypto::Recipients;
use crate::storage::StorageSettings;

/// Checks the files a config names, in the order of the config's sections. Every problem is
/// returned; an empty list means the config can be used on this machine.
pub fn check_environment(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, file) in [
        ("etcd.cacert", &config.etcd.cacert),
        ("etcd.cert", &config.etcd.cert),
        ("etcd.key", &config.etcd.key),
        ("etcd.manifest", &config.etcd.manifest),
    ] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                problems.push(Problem::new(
                    key,
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
    }
    if let Err(problem) = recipients(config) {
        problems.push(problem);
    }
    if let StorageSettings::S3(s3) = &config.storage {
        for (key, file) in [
            ("storage.s3.access-key-id-file", &s3.access_key_id_file),
            (
                "storage.s3.secret-access-key-file",
                &s3.secret_access_key_file,
            ),
        ] {
            if let Some(Err(problem)) = file.as_deref().map(check_secret_file) {
                problems.push(Problem::new(key, problem));
            }
        }
    }
    problems.extend(check_signatures(config));
    if let Some(file) = &config.service.token_file {
        if let Err(problem) = check_secret_file(file).and_then(|()| check_token_file(file)) {
            problems.push(Problem::new("server.token-file", problem));
        }
    }
    problems
}

/// The signing key and the allowed signers load.
fn check_signatures(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(signing) = &config.signing {
        if !signing.key_file.as_os_str().is_empty() {
            if let Err(e) = signing.load_key() {
                problems.push(Problem::new("signing.key-file", e.to_string()));
            }
        }
    }
    if let Some(verification) = &config.verification {
        if !verification.allowed_signers_file.as_os_str().is_empty() {
            if let Err(e) = verification.load() {
                problems.push(Problem::new("verification.allowed-signers", e.to_string()));
            }
        }
    }
    problems
}

/// Every recipient: the inline ones and those in `encryption.recipients-file`.
pub(super) fn recipients(config: &Config) -> Result<Recipients, Problem> {
    let Some(file) = &config.recipients_file else {
        return Ok(config.encryption.clone());
    };
    Recipients::from_config(&config.encryption.public_keys(), Some(file))
        .map_err(|e| Problem::new("encryption", e.to_string()))
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
