//! The integrity audit: re-read every stored object and check its size and SHA-256 against its
//! manifest. It needs no private key (it checks the ciphertext), so the service runs it too.

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::signature::{self, Signed};
use super::{list, CatalogError, Manifest};
use crate::sshsig::AllowedSigners;
use crate::storage::ObjectStore;

/// One backup's audit result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    pub ok: bool,
    /// `yes`, `no`, `bad` or `?` (a signature, but no allowed signers to check it with).
    pub signed: String,
    /// Empty when ok; otherwise what is wrong, in one line.
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub entries: Vec<AuditEntry>,
    /// Listing problems that are not about one manifest (each manifest's is a failed entry).
    pub problems: Vec<String>,
    /// Backups without a signature (`etcdsafe_audit_unsigned_backups`).
    pub unsigned: usize,
    /// Backups whose signature does not verify against the allowed signers
    /// (`etcdsafe_audit_bad_signatures`); each is also a failed entry.
    pub bad_signatures: usize,
}

impl AuditReport {
    pub fn failed(&self) -> usize {
        self.entries.iter().filter(|e| !e.ok).count() + self.problems.len()
    }
}

/// Checks a backup's stored objects against its manifest, streaming them (bounded memory).
pub async fn audit_one(store: &dyn ObjectStore, manifest: &Manifest) -> AuditEntry {
    let mut result = check_object(
        store,
        "stored object",
        &manifest.object.key,
        manifest.object.size,
        &manifest.object.sha256,
    )
    .await;
    if let (Ok(()), Some(files)) = (&result, &manifest.files) {
        result = check_object(
            store,
            "control-plane files object",
            &files.key,
            files.size,
            &files.sha256,
        )
        .await;
    }
    AuditEntry {
        id: manifest.id.clone(),
        ok: result.is_ok(),
        signed: String::new(),
        problem: result.err().unwrap_or_default(),
    }
}

async fn check_object(
    store: &dyn ObjectStore,
    what: &str,
    key: &str,
    expected_size: u64,
    expected_sha256: &str,
) -> Result<(), String> {
    let mut reader = store.get(key).await.map_err(|e| e.to_string())?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    if size != expected_size {
        return Err(format!(
            "the {what} is {size} bytes, the manifest says {expected_size}"
        ));
    }
    let digest = hex::encode(sha.finalize());
    if digest != expected_sha256 {
        return Err(format!(
            "the {what}'s SHA-256 is {digest}, the manifest says {expected_sha256}: the object is corrupt"
        ));
    }
    Ok(())
}

/// Audits every backup in the store: every object's size and SHA-256, and with `signers`,
/// every manifest's signature.
pub async fn audit(
    store: &dyn ObjectStore,
    signers: Option<&AllowedSigners>,
) -> Result<AuditReport, CatalogError> {
    let listing = list(store).await?;
    let signed = signature::states(store, &listing, signers).await?;
    let mut report = AuditReport::default();
    // A backup the listing already found broken (a missing or short object, a manifest not
    // named after its id) is a failed row, not a line after a table of "ok" rows.
    for problem in &listing.problems {
        match problem {
            CatalogError::BadManifest { key, problem, .. } => report.entries.push(AuditEntry {
                id: key
                    .strip_suffix(super::MANIFEST_SUFFIX)
                    .unwrap_or(key)
                    .to_string(),
                ok: false,
                signed: "-".to_string(),
                problem: problem.to_string(),
            }),
            other => report.problems.push(other.to_string()),
        }
    }
    for manifest in &listing.backups {
        let mut entry = audit_one(store, manifest).await;
        let state = signed.get(&manifest.id).cloned().unwrap_or(Signed::No);
        entry.signed = state.column().to_string();
        match state {
            Signed::No => report.unsigned += 1,
            Signed::Bad(why) => {
                report.bad_signatures += 1;
                let problem = format!("bad signature: {why}");
                entry.problem = if entry.ok {
                    problem
                } else {
                    format!("{}; {problem}", entry.problem)
                };
                entry.ok = false;
            }
            Signed::Yes(_) | Signed::Unchecked => {}
        }
        if !entry.ok {
            tracing::error!(backup_id = %entry.id, problem = %entry.problem, "integrity audit failed");
        }
        report.entries.push(entry);
    }
    Ok(report)
}
