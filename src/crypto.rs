//! age encryption: the public recipients a backup is encrypted to, and the private identities
//! a restore decrypts with. Private keys are read from files only, never logged or printed.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no recipients: list age public keys (age1...) in encryption.recipients or encryption.recipients-file")]
    NoRecipients,
    #[error("{origin}: entry {index} is an age private key, not a recipient: put the public key (age1..., from `age-keygen -y`) here and keep the private key off this node")]
    PrivateKeyAsRecipient { origin: String, index: usize },
    #[error("{origin}: entry {index} ({value:?}) is not an age X25519 recipient (age1...)")]
    BadRecipient {
        origin: String,
        index: usize,
        value: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity file {path}: permissions {mode:04o} are too open: run `chmod 600 {path}`")]
    IdentityTooOpen { path: PathBuf, mode: u32 },
    #[error("identity file {path}: holds no age identity (AGE-SECRET-KEY-1...)")]
    NoIdentity { path: PathBuf },
    /// The offending line is never quoted: it may be a secret.
    #[error("identity file {path}: cannot be parsed as age identities: a line is neither a comment nor an AGE-SECRET-KEY-1... identity")]
    BadIdentity { path: PathBuf },
    #[error("this backup is encrypted to {recipients}; the identity in {identity} does not match: pass --identity with the private key of one of those recipients")]
    WrongIdentity {
        recipients: String,
        identity: PathBuf,
    },
    #[error("not an age-encrypted object: {source}")]
    NotAge {
        #[source]
        source: age::DecryptError,
    },
}

/// The validated set of age X25519 recipients a backup is encrypted to.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.public_keys()).finish()
    }
}

impl Recipients {
    /// No recipients, for commands that only read the store. Encrypting to it fails.
    pub fn none() -> Recipients {
        Recipients { keys: Vec::new() }
    }

    /// Builds the set from inline entries plus an optional recipients file (one per line, `#` comments).
    pub fn from_config(inline: &[String], file: Option<&Path>) -> Result<Recipients, CryptoError> {
        let mut keys = Vec::new();
        for (index, entry) in inline.iter().enumerate() {
            keys.push(parse_recipient("encryption.recipients", index + 1, entry)?);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let origin = format!("encryption.recipients-file {}", path.display());
            let lines = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'));
            for (index, line) in lines.enumerate() {
                keys.push(parse_recipient(&origin, index + 1, line)?);
            }
        }
        if keys.is_empty() {
            return Err(CryptoError::NoRecipients);
        }
        Ok(Recipients { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys as text, for the manifest and messages.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    /// Wraps `output` in an age encryptor to every recipient. Call `finish()` on the result.
    pub fn encrypt<W: Write>(&self, output: W) -> std::io::Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(std::io::Error::other)?;
        encryptor.wrap_output(output)
    }
}

fn parse_recipient(
    origin: &str,
    index: usize,
    value: &str,
) -> Result<age::x25519::Recipient, CryptoError> {
    let value = value.trim();
    if value.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(CryptoError::PrivateKeyAsRecipient {
            origin: origin.to_string(),
            index,
        });
    }
    age::x25519::Recipient::from_str(value).map_err(|_| CryptoError::BadRecipient {
        origin: origin.to_string(),
        index,
        value: value.chars().take(80).collect(),
    })
}

/// Private keys loaded from an identity file, for decrypting a backup.
#[derive(Clone)]
pub struct Identities {
    path: PathBuf,
    identities: Vec<age::x25519::Identity>,
}

impl Identities {
    /// Reads an age identity file. The file must not be readable by group or others.
    pub fn load(path: &Path) -> Result<Identities, CryptoError> {
        let read_err = |source| CryptoError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::IdentityTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut identities = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(read_err)?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Never include the line itself in an error: it may be a secret.
            let identity =
                age::x25519::Identity::from_str(line).map_err(|_| CryptoError::BadIdentity {
                    path: path.to_path_buf(),
                })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(CryptoError::NoIdentity {
                path: path.to_path_buf(),
            });
        }
        Ok(Identities {
            path: path.to_path_buf(),
            identities,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts decrypting `input`. `recipients` (from the manifest) only improves the error message.
    pub fn decrypt<R: Read>(
        &self,
        input: R,
        recipients: &[String],
    ) -> Result<age::stream::StreamReader<R>, CryptoError> {
        let decryptor =
            age::Decryptor::new(input).map_err(|source| CryptoError::NotAge { source })?;
        decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CryptoError::WrongIdentity {
                    recipients: if recipients.is_empty() {
                        "recipients not recorded".to_string()
                    } else {
                        recipients.join(", ")
                    },
                    identity: self.path.clone(),
                },
                source => CryptoError::NotAge { source },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn round_trip_and_wrong_identity() {
        let dir = tempfile::tempdir().unwrap();
        let right = age::x25519::Identity::generate();
        let wrong = age::x25519::Identity::generate();
        let recipients =
            Recipients::from_config(&[right.to_public().to_string()], None).expect("recipients");

        let mut sealed = Vec::new();
        let mut w = recipients.encrypt(&mut sealed).unwrap();
        w.write_all(b"etcd snapshot bytes").unwrap();
        w.finish().unwrap();

        let write_key = |name: &str, id: &age::x25519::Identity, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("# test\n{}\n", id.to_string().expose_secret()),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let good = Identities::load(&write_key("good.txt", &right, 0o600)).unwrap();
        let mut plain = Vec::new();
        good.decrypt(&sealed[..], &recipients.public_keys())
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"etcd snapshot bytes");

        let bad = Identities::load(&write_key("bad.txt", &wrong, 0o600)).unwrap();
        let err = bad
            .decrypt(&sealed[..], &recipients.public_keys())
            .err()
            .expect("wrong identity must fail");
        let text = err.to_string();
        assert!(text.contains(&right.to_public().to_string()), "{text}");
        assert!(text.contains("bad.txt"), "{text}");

        let open = write_key("open.txt", &right, 0o644);
        let err = Identities::load(&open).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
