//! Applying a retention plan to a store. The decision is `retention::plan` (pure); this module
//! does the I/O: list, refuse to act on an incomplete listing, delete manifest first, then object.
//!
//! Deleting the manifest first means a deletion interrupted halfway leaves an object with no
//! manifest (invisible, and never counted as a backup), never a manifest without its data. Such
//! unreferenced objects (and those of a run killed between its object and its manifest) are
//! removed by a later prune, once their run is a day old ([`sweepable`]). Delta segment objects
//! no segment manifest names are removed after the retention deletions, when
//! `deltas::orphans::sweepable` says they can never be published.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::catalog::signature::{self, Signed};
use crate::catalog::{self, CatalogError, Manifest};
use crate::deltas::orphans::Orphan;
use crate::retention::{self, Candidate, Plan, Policy};
use crate::sshsig::AllowedSigners;
use crate::storage::{ObjectInfo, ObjectStore, StorageError};

/// An object no manifest names is removed only when its run started at least this long ago: no
/// run takes a day, so none can still be about to write that object's manifest.
pub const UNREFERENCED_MIN_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(24);

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
    /// Unreferenced objects old enough to remove: removed, or on a dry run to be removed.
    pub unreferenced: Vec<String>,
    /// Delta segment objects and signatures no segment manifest names that can never be
    /// published (`deltas::orphans`): removed, or on a dry run to be removed.
    pub orphans: Vec<Orphan>,
    /// Unreferenced objects that could not be removed (an object lock, say), with the error.
    /// Warnings: the backups themselves are unaffected.
    pub sweep_errors: Vec<String>,
    /// Backups dated in the future (a node's clock is wrong), and unsigned ones while
    /// verification is on: neither counted nor deleted. Warnings, one line each.
    pub future_dated: Vec<String>,
}

/// The keys of the unreferenced objects whose run started at least `min_age` before `now`, and
/// which were last written at least that long ago too (when the store says): two clocks, the
/// backup host's in the id and the store's, must both call the object old. An object whose
/// name carries no backup id is not etcdsafe's to judge and is kept.
pub fn sweepable(
    unreferenced: &[ObjectInfo],
    now: DateTime<Utc>,
    min_age: chrono::TimeDelta,
) -> Vec<String> {
    unreferenced
        .iter()
        .filter(|object| {
            let run_is_old = catalog::object_id(&object.key)
                .and_then(catalog::id_started_at)
                .is_some_and(|started| now - started >= min_age);
            let write_is_old = object
                .modified
                .is_none_or(|modified| now - modified >= min_age);
            run_is_old && write_is_old
        })
        .map(|object| object.key.clone())
        .collect()
}

impl From<&Manifest> for Candidate {
    fn from(m: &Manifest) -> Candidate {
        Candidate {
            id: m.id.clone(),
            created_at: m.created_at,
            reason: m.reason.clone(),
            labels: m.labels.clone(),
            points_until: None,
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
    prune_with(store, policy, now, dry_run, &Distrust::default()).await
}

/// Backups retention must not count.
#[derive(Debug, Default)]
pub struct Distrust<'a> {
    /// Found corrupt by the last integrity audit (id to problem): they count as listing
    /// problems, so retention deletes nothing while one is in the store (a broken newest backup
    /// must never make `keep-last`/`min-keep` forget the good ones).
    pub corrupt: BTreeMap<String, String>,
    /// `verification.allowed-signers`: a backup with a bad signature is a listing problem (a
    /// forged newest backup must never make retention forget real ones), and an unsigned one is
    /// neither counted nor deleted.
    pub signers: Option<&'a AllowedSigners>,
}

/// [`prune`], distrusting what `distrust` names.
pub async fn prune_with(
    store: &dyn ObjectStore,
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
    distrust: &Distrust<'_>,
) -> Result<PruneReport, PruneError> {
    let mut listing = catalog::list_at(store, now).await?;
    // Every backup, also those retention does not count: their chains are theirs.
    let bases = crate::deltas::bases(&listing);
    let mut problems: Vec<String> = listing.problems.iter().map(|p| p.to_string()).collect();
    let signed = match distrust.signers {
        Some(signers) => Some(signature::states(store, &listing, Some(signers)).await?),
        None => None,
    };
    let mut unsigned = Vec::new();
    listing.backups.retain(|m| {
        if let Some(problem) = distrust.corrupt.get(&m.id) {
            problems.push(format!(
                "{}: backup {} failed the last integrity audit ({problem}): remove it or re-run `etcdsafe backups audit`",
                store.describe(),
                m.id
            ));
            return false;
        }
        match signed.as_ref().and_then(|s| s.get(&m.id)) {
            Some(Signed::Bad(why)) => {
                problems.push(format!(
                    "{}: backup {} has a bad signature ({why}): it may be forged; inspect and remove it",
                    store.describe(),
                    m.id
                ));
                false
            }
            Some(Signed::No) => {
                unsigned.push(format!(
                    "backup {} is not signed: retention neither counts nor deletes it while verification.allowed-signers is set",
                    m.id
                ));
                false
            }
            _ => true,
        }
    });
    let mut future_dated: Vec<String> = listing
        .future
        .iter()
        .map(|m| m.future_problem(now))
        .collect();
    future_dated.extend(unsigned);
    // Delta chains (continuous backup): a backup's chain is kept and deleted with it. The
    // objects are listed before the manifests are read, so an object whose manifest is written
    // meanwhile is seen named, or unnamed but just written (which `deltas::orphans` keeps).
    let delta_objects = store
        .list(crate::deltas::segment::PREFIX)
        .await
        .map_err(|e| PruneError::IncompleteListing {
            store: store.describe(),
            problems: e.to_string(),
        })?;
    let segments = crate::deltas::load(store)
        .await
        .map_err(|e| PruneError::IncompleteListing {
            store: store.describe(),
            problems: e.to_string(),
        })?;
    let chains = crate::deltas::chain::views(&bases, &segments);
    let points_until: HashMap<&str, chrono::DateTime<chrono::Utc>> = bases
        .iter()
        .zip(&chains)
        .filter_map(|(b, c)| Some((b.id.as_str(), c.as_ref()?.last_time?)))
        .collect();
    let candidates: Vec<Candidate> = listing
        .backups
        .iter()
        .map(|m| Candidate {
            points_until: points_until.get(m.id.as_str()).copied(),
            ..Candidate::from(m)
        })
        .collect();
    let plan = retention::plan(policy, &candidates, now);
    let unreferenced = sweepable(&listing.unreferenced, now, UNREFERENCED_MIN_AGE);
    // Ages by the store's clock: the newest write under `deltas/` (a seal every interval while
    // capture runs) stands in for its now, so a prune host whose clock is ahead never takes
    // an object a sealer is about to publish for an old one.
    // When capture has stopped, that freezes: it trails the local clock by at most an hour.
    let store_now = delta_objects
        .iter()
        .filter_map(|o| o.modified)
        .max()
        .map_or(now, |newest| {
            newest.min(now).max(now - chrono::Duration::hours(1))
        });
    let orphans = crate::deltas::orphans::sweepable(&delta_objects, &segments, store_now);
    if dry_run {
        return Ok(PruneReport {
            plan,
            deleted: Vec::new(),
            dry_run,
            problems,
            unreferenced,
            orphans,
            sweep_errors: Vec::new(),
            future_dated,
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
    // Delta chains go with their full backups (computed before anything is deleted).
    let forget: std::collections::HashSet<&str> = plan.forget().map(|d| d.id.as_str()).collect();
    let chains: Vec<crate::deltas::segment::SegmentManifest> =
        crate::deltas::chain::forgotten_segments(&bases, &segments, &forget)
            .into_iter()
            .cloned()
            .collect();
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
        // The manifest's signature goes with it (absent for an unsigned backup).
        store
            .delete(&catalog::signature::signature_key(&manifest.id))
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
    for segment in &chains {
        let first = segment.first_revision;
        for key in [
            crate::deltas::segment::manifest_key(first),
            catalog::signature::signature_key(&crate::deltas::segment::signature_id(
                &segment.object.key,
            )),
            segment.object.key.clone(),
        ] {
            store
                .delete(&key)
                .await
                .map_err(|source| PruneError::Delete {
                    store: store.describe(),
                    id: key.clone(),
                    deleted: deleted.len(),
                    source,
                })?;
        }
        tracing::info!(
            first,
            last = segment.last_revision,
            "retention deleted a delta segment with its full backup"
        );
    }
    let (mut removed, mut sweep_errors) = (Vec::new(), Vec::new());
    for key in unreferenced {
        match store.delete(&key).await {
            Ok(()) => {
                tracing::warn!(
                    object = %key,
                    "removed an object no manifest names (left by an interrupted run or prune)"
                );
                removed.push(key);
            }
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "cannot remove an object no manifest names");
                sweep_errors.push(format!("cannot remove unreferenced object {key}: {e}"));
            }
        }
    }
    // Last, the segment objects no segment manifest names (after the chains retention deleted,
    // which were named).
    let mut orphans_removed = Vec::new();
    for orphan in orphans {
        match store.delete(&orphan.key).await {
            Ok(()) => {
                tracing::warn!(
                    object = %orphan.key,
                    first = orphan.first_revision,
                    why = %orphan.why,
                    "removed a delta segment object no segment manifest names"
                );
                orphans_removed.push(orphan);
            }
            Err(e) => {
                tracing::warn!(object = %orphan.key, error = %e, "cannot remove a delta segment object no segment manifest names");
                sweep_errors.push(format!(
                    "cannot remove orphaned delta segment object {}: {e}",
                    orphan.key
                ));
            }
        }
    }
    Ok(PruneReport {
        plan,
        deleted,
        dry_run,
        problems,
        unreferenced: removed,
        orphans: orphans_removed,
        sweep_errors,
        future_dated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn only_unreferenced_objects_of_runs_a_day_old_are_swept() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let long_ago = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let object = |key: &str| ObjectInfo {
            key: key.to_string(),
            size: 1,
            modified: Some(long_ago),
        };
        let objects = [
            // A day and a second old: swept, data and files objects alike.
            object("20261124T115959.000Z-rev10.db.zst.age"),
            object("20261124T115959.000Z-rev10.files.tar.zst.age"),
            // Exactly a day: swept.
            object("20261124T120000.000Z-rev11.db.zst.age"),
            // A run that started an hour ago may still be writing its manifest: kept.
            object("20261125T110000.000Z-rev12.db.zst.age"),
            // Not named like a backup: not ours to judge.
            object("notes.db.zst.age"),
            object("old-rev1.db.zst.age"),
            object("20261124T115959.000Z-revXYZ.db.zst.age"),
            // Named a day old, but written an hour ago by the store's clock (the backup host's
            // clock is behind, or the run was suspended): kept.
            ObjectInfo {
                modified: Some(now - chrono::TimeDelta::hours(1)),
                ..object("20261120T000000.000Z-rev9.db.zst.age")
            },
        ];
        assert_eq!(
            sweepable(&objects, now, UNREFERENCED_MIN_AGE),
            vec![
                "20261124T115959.000Z-rev10.db.zst.age",
                "20261124T115959.000Z-rev10.files.tar.zst.age",
                "20261124T120000.000Z-rev11.db.zst.age",
            ]
        );
        assert!(sweepable(&objects, now, chrono::TimeDelta::days(2)).is_empty());
    }
}
