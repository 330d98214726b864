//! Signed backups: `<id>.json.sig`, an armored SSHSIG signature (namespace `etcdsafe-backup`) of
//! the manifest's exact bytes, written before the manifest so a visible backup is always a
//! signed one. The manifest carries the SHA-256 of every object, so the signature covers them.
//!
//! Check one by hand with stock OpenSSH:
//! `ssh-keygen -Y verify -f allowed_signers -I PRINCIPAL -n etcdsafe-backup -s ID.json.sig < ID.json`

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{manifest_key, CatalogError, Manifest, MANIFEST_LIMIT};
use crate::sshsig::{AllowedSigners, SigError, Signature, SigningKey, BACKUP_NAMESPACE};
use crate::storage::{get_small, ObjectStore, StorageError};

/// Suffix of a manifest's signature.
pub const SIGNATURE_SUFFIX: &str = ".json.sig";

pub fn signature_key(id: &str) -> String {
    format!("{id}{SIGNATURE_SUFFIX}")
}

/// What the SIGNED column of `backups list` says.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "detail")]
pub enum Signed {
    /// A good signature by an allowed signer (the principal).
    Yes(String),
    /// No signature object.
    No,
    /// A signature that does not verify or whose signer is not allowed (why; shown as its
    /// message in JSON).
    Bad(#[serde(serialize_with = "as_message")] std::sync::Arc<SigError>),
    /// A signature exists, but no `verification.allowed-signers` is configured to check it.
    Unchecked,
}

fn as_message<S: serde::Serializer>(
    error: &std::sync::Arc<SigError>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(error)
}

impl Signed {
    pub fn column(&self) -> &'static str {
        match self {
            Signed::Yes(_) => "yes",
            Signed::No => "no",
            Signed::Bad(_) => "bad",
            Signed::Unchecked => "?",
        }
    }
}

/// Why a backup may not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("backup {id} is not signed (no {id}{SIGNATURE_SUFFIX}) and verification.allowed-signers is set: restore only signed backups, or pass --allow-unsigned for one taken before signing was turned on")]
    Unsigned { id: String },
    #[error("backup {id} has a bad signature: {source}; do not restore it (forged or altered?), pick an older backup")]
    Bad {
        id: String,
        #[source]
        source: SigError,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Signs a manifest's bytes and stores the signature, before the manifest is written.
pub async fn write_signature(
    store: &dyn ObjectStore,
    key: &SigningKey,
    id: &str,
    manifest_bytes: &[u8],
) -> Result<(), StorageError> {
    let sig = key.sign(BACKUP_NAMESPACE, manifest_bytes);
    store.put(&signature_key(id), Bytes::from(sig)).await
}

/// Checks a backup's signature against the allowed signers, at the time the backup was taken
/// (so a key retired later with `valid-before` still vouches for what it signed while valid).
/// Reads the manifest's bytes as stored.
pub async fn check(
    store: &dyn ObjectStore,
    signers: &AllowedSigners,
    manifest: &Manifest,
) -> Result<Signed, CatalogError> {
    let sig = match get_small(store, &signature_key(&manifest.id), 64 << 10).await {
        Ok(sig) => sig,
        Err(StorageError::NotFound { .. }) => return Ok(Signed::No),
        Err(e) => return Err(e.into()),
    };
    let bytes = get_small(store, &manifest_key(&manifest.id), MANIFEST_LIMIT).await?;
    Ok(match judge(signers, &sig, &bytes, manifest.created_at) {
        Ok(principal) => Signed::Yes(principal),
        Err(e) => Signed::Bad(std::sync::Arc::new(e)),
    })
}

/// The pure decision: the signature's bytes over the manifest's bytes, by an allowed signer at
/// `at`. Returns the principal.
pub fn judge(
    signers: &AllowedSigners,
    signature: &[u8],
    manifest_bytes: &[u8],
    at: DateTime<Utc>,
) -> Result<String, SigError> {
    let text = std::str::from_utf8(signature)
        .map_err(|_| SigError::Malformed(crate::sshsig::FormatError::NotText))?;
    let sig = Signature::parse(text)?;
    sig.verify(BACKUP_NAMESPACE, manifest_bytes)?;
    signers.principal_for(&sig.public, BACKUP_NAMESPACE, at)
}

/// What a fetch or restore requires of a backup's signature.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `verification.allowed-signers`; without it nothing is checked.
    pub signers: Option<AllowedSigners>,
    /// `--allow-unsigned`: let an unsigned backup through (never a bad signature).
    pub allow_unsigned: bool,
}

impl Trust {
    /// Nothing is checked (no `verification` configured).
    pub fn none() -> Trust {
        Trust::default()
    }

    /// The configured allowed signers, loaded now (an edited file counts without a restart).
    pub fn from_config(
        config: &crate::config::Config,
        allow_unsigned: bool,
    ) -> Result<Trust, SigError> {
        let signers = match &config.verification {
            Some(v) => Some(v.load()?),
            None => None,
        };
        if signers.is_none() && allow_unsigned {
            eprintln!("warning: --allow-unsigned has no effect: verification.allowed-signers is not set, so no signature is checked");
        }
        Ok(Trust {
            signers,
            allow_unsigned,
        })
    }

    /// Checks `manifest`'s signature when allowed signers are configured; says loudly when an
    /// unsigned backup is let through.
    pub async fn require(
        &self,
        store: &dyn ObjectStore,
        manifest: &Manifest,
    ) -> Result<Option<String>, TrustError> {
        let Some(signers) = &self.signers else {
            return Ok(None);
        };
        let principal = require(store, signers, manifest, self.allow_unsigned).await?;
        match &principal {
            Some(p) => tracing::info!(backup_id = %manifest.id, principal = %p, "signature verified"),
            None => eprintln!(
                "warning: backup {} is NOT signed; trusting it only because --allow-unsigned was given",
                manifest.id
            ),
        }
        Ok(principal)
    }
}

/// Before a backup is fetched or restored: refuses an unsigned one (unless `allow_unsigned`)
/// and a bad signature, always. Returns the principal that signed, or None for an unsigned
/// backup let through.
pub async fn require(
    store: &dyn ObjectStore,
    signers: &AllowedSigners,
    manifest: &Manifest,
    allow_unsigned: bool,
) -> Result<Option<String>, TrustError> {
    let sig = match get_small(store, &signature_key(&manifest.id), 64 << 10).await {
        Ok(sig) => sig,
        Err(StorageError::NotFound { .. }) if allow_unsigned => {
            tracing::warn!(backup_id = %manifest.id, "backup is NOT signed; trusting it because --allow-unsigned was given");
            return Ok(None);
        }
        Err(StorageError::NotFound { .. }) => {
            return Err(TrustError::Unsigned {
                id: manifest.id.clone(),
            })
        }
        Err(e) => return Err(CatalogError::from(e).into()),
    };
    let bytes = get_small(store, &manifest_key(&manifest.id), MANIFEST_LIMIT)
        .await
        .map_err(CatalogError::from)?;
    // The manifest used for the restore must be the one signed.
    let signed = super::parse_manifest(store, &manifest_key(&manifest.id), &bytes)?;
    if &signed != manifest {
        return Err(TrustError::Bad {
            id: manifest.id.clone(),
            source: SigError::Mismatch,
        });
    }
    judge(signers, &sig, &bytes, manifest.created_at)
        .map(Some)
        .map_err(|source| TrustError::Bad {
            id: manifest.id.clone(),
            source,
        })
}

/// The SIGNED state of every backup in a listing: checked against `signers` when given, else
/// only whether a signature exists (`?`).
pub async fn states(
    store: &dyn ObjectStore,
    listing: &super::Listing,
    signers: Option<&AllowedSigners>,
) -> Result<std::collections::BTreeMap<String, Signed>, CatalogError> {
    let mut out = std::collections::BTreeMap::new();
    for manifest in &listing.backups {
        let state = match (signers, listing.signed.contains(&manifest.id)) {
            (_, false) => Signed::No,
            (None, true) => Signed::Unchecked,
            (Some(signers), true) => check(store, signers, manifest).await?,
        };
        out.insert(manifest.id.clone(), state);
    }
    Ok(out)
}
