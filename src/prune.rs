//! Applying a retention plan to a store. The decision is `retention::plan` (pure); this module
//! does the I/O: list, refuse to act on an incomplete listing, delete manifest first, then object.
//!
//! Deleting the manifest first means a deletion interrupted halfway leaves an object with no
//! manifest (invisible, and never counted as a backup), never a manifest without its data.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::catalog::{self, CatalogError, Manifest};
use crate::retention::{self, Candidate, Plan, Policy};
use crate::storage::{ObjectStore, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{store}: retention refused to delete anything: the listing is incomplete ({problems}); fix or remove the broken manifests first")]
    IncompleteListing { store: String, problems: String },
    #[error("{store}: deleting backup {id} failed after {deleted} deletion(s): {source}")]
    Delete {
        store: String,
        id: String,
        deleted: usize,
        #[source]
        source: StorageError,
    },
}

/// What a prune decided and did.
#[derive(Debug)]
pub struct PruneReport {
    pub plan: Plan,
    /// Ids deleted (empty on a dry run).
    pub deleted: Vec<String>,
    pub dry_run: bool,
    /// Listing problems (a dry run still shows the plan, but a real run refuses).
    pub problems: Vec<String>,
}

impl From<&Manifest> for Candidate {
    fn from(m: &Manifest) -> Candidate {
        Candidate {
            id: m.id.clone(),
            created_at: m.created_at,
            reason: m.reason.clone(),
            labels: m.labels.clone(),
        }
    }
}

/// Plans retention over the committed backups and, unless `dry_run`, deletes what it forgets.
pub async fn prune(
    store: &dyn ObjectStore,
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, PruneError> {
    let listing = catalog::list(store).await?;
    let problems: Vec<String> = listing.problems.iter().map(|p| p.to_string()).collect();
    let candidates: Vec<Candidate> = listing.backups.iter().map(Candidate::from).collect();
    let plan = retention::plan(policy, &candidates, now);
    if dry_run {
        return Ok(PruneReport {
            plan,
            deleted: Vec::new(),
            dry_run,
            problems,
        });
    }
    if !problems.is_empty() {
        return Err(PruneError::IncompleteListing {
            store: store.describe(),
            problems: problems.join("; "),
        });
    }
    let by_id: HashMap<&str, &Manifest> =
        listing.backups.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut deleted = Vec::new();
    for decision in plan.forget() {
        let manifest = by_id[decision.id.as_str()];
        let delete_err = |source, deleted: &Vec<String>| PruneError::Delete {
            store: store.describe(),
            id: decision.id.clone(),
            deleted: deleted.len(),
            source,
        };
        store
            .delete(&catalog::manifest_key(&manifest.id))
            .await
            .map_err(|e| delete_err(e, &deleted))?;
        store
            .delete(&manifest.object.key)
            .await
            .map_err(|e| delete_err(e, &deleted))?;
        if let Some(files) = &manifest.files {
            store
                .delete(&files.key)
                .await
                .map_err(|e| delete_err(e, &deleted))?;
        }
        tracing::info!(backup_id = %decision.id, "retention deleted backup");
        deleted.push(decision.id.clone());
    }
    Ok(PruneReport {
        plan,
        deleted,
        dry_run,
        problems,
    })
}
