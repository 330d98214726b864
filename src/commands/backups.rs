//! `etcdsafe backups list|fetch|audit|prune`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;

use crate::catalog::{self, signature::Trust};
use crate::config::Config;
use crate::crypto::Identities;
use crate::deltas;
use crate::output::{self, Format};
use crate::pipeline;
use crate::prune::{self, PruneReport};
use crate::retention::{self, Policy};
use crate::storage;

use super::{backups_table, success_if, ConfigSource};

/// `backups list`: every committed backup, and every problem the listing found.
pub async fn list(config: &Config, write_out: Format, points: bool) -> Result<ExitCode> {
    let store = storage::open(&config.storage).await?;
    let now = Utc::now();
    let listing = catalog::list_at(store.as_ref(), now).await?;
    let segments = deltas::load(store.as_ref()).await?;
    let chains = deltas::chain::views(&deltas::bases(&listing), &segments);
    if points {
        return print_points(&listing.backups, &chains, write_out);
    }
    let mut problems: Vec<String> = listing.problems.iter().map(|p| p.to_string()).collect();
    problems.extend(listing.future.iter().map(|m| m.future_problem(now)));
    let trust = Trust::from_config(config, false)?;
    let signed =
        catalog::signature::states(store.as_ref(), &listing, trust.signers.as_ref()).await?;
    for (id, state) in &signed {
        if let catalog::signature::Signed::Bad(why) = state {
            problems.push(format!(
                "backup {id} has a bad signature: {why}; do not restore it (forged or altered?)"
            ));
        }
    }
    match write_out {
        Format::Json => {
            let backups: Vec<serde_json::Value> = listing
                .backups
                .iter()
                .zip(&chains)
                .map(|(b, chain)| {
                    let mut v = serde_json::to_value(b).expect("a manifest serializes");
                    if let Some(chain) = chain {
                        v["deltas"] = serde_json::to_value(chain).expect("a chain serializes");
                    }
                    v
                })
                .collect();
            let doc = serde_json::json!({
                "backups": backups,
                "signed": signed,
                "futureDated": listing.future,
                "problems": problems,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Simple => {
            for b in &listing.backups {
                println!("{}", b.id);
            }
        }
        Format::Table => {
            print!("{}", backups_table(&listing.backups, &signed));
            if chains.iter().any(Option::is_some) {
                println!();
                print_points(&listing.backups, &chains, Format::Table)?;
            }
        }
    }
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    Ok(success_if(problems.is_empty()))
}

/// The restorable range of each full backup's delta chain.
fn print_points(
    backups: &[catalog::Manifest],
    chains: &[Option<deltas::ChainView>],
    write_out: Format,
) -> Result<ExitCode> {
    let points: Vec<serde_json::Value> = backups
        .iter()
        .zip(chains)
        .map(|(b, chain)| {
            let mut v = serde_json::json!({
                "backup": b.id,
                "revision": deltas::base_revision(b),
                "createdAt": b.created_at,
            });
            if let Some(chain) = chain {
                v["deltas"] = serde_json::to_value(chain).expect("a chain serializes");
            }
            v
        })
        .collect();
    match write_out {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "points": points }))?
        ),
        Format::Simple | Format::Table => {
            let rows: Vec<Vec<String>> = backups
                .iter()
                .zip(chains)
                .map(|(b, chain)| {
                    let (range, segments, last, broken) = match chain {
                        Some(c) if c.to_revision > deltas::base_revision(b) => (
                            format!("{}..={}", deltas::base_revision(b), c.to_revision),
                            c.segments.to_string(),
                            c.last_time.map_or("-".into(), |t| {
                                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            }),
                            c.broken.clone().unwrap_or_else(|| "-".into()),
                        ),
                        Some(c) => (
                            deltas::base_revision(b).to_string(),
                            "0".into(),
                            "-".into(),
                            c.broken.clone().unwrap_or_else(|| "-".into()),
                        ),
                        None => (
                            deltas::base_revision(b).to_string(),
                            "0".into(),
                            "-".into(),
                            "-".into(),
                        ),
                    };
                    vec![b.id.clone(), range, segments, last, broken]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "backup",
                        "restorable revisions",
                        "segments",
                        "last sealed",
                        "broken"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `backups fetch ID -o FILE [--at-*]`: download, decrypt and check one backup, or the
/// database at a point of its delta chain.
pub async fn fetch(
    source: &ConfigSource,
    id: &str,
    output: &Path,
    identity: &Path,
    allow_unsigned: bool,
    at: Option<deltas::At>,
) -> Result<ExitCode> {
    let identities = Identities::load(identity)?;
    let config = source.store()?;
    let store = storage::open(&config.storage).await?;
    let trust = super::trust(&config, allow_unsigned)?;
    if let Some(at) = at {
        let fetched =
            deltas::apply::fetch_at(store.as_ref(), id, at, identities, output, true, &trust)
                .await?;
        println!(
            "{}: backup {} + {} delta segments ({} events) at revision {} ({} keys, hash {:x}); restore it with `etcdutl snapshot restore {}`",
            output.display(),
            fetched.plan.base,
            fetched.plan.segments.len(),
            fetched.events,
            fetched.status.revision,
            fetched.status.total_key,
            fetched.status.hash,
            output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (manifest, status) =
        pipeline::fetch::fetch_with(store.as_ref(), id, identities, output, true, &trust).await?;
    println!(
        "{}: backup {} (revision {}, {} keys, hash {:x}); restore it with `etcdutl snapshot restore {}`",
        output.display(),
        manifest.id,
        status.revision,
        status.total_key,
        status.hash,
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `backups audit`: re-read every stored object against its manifest.
pub async fn audit(config: &Config, write_out: Format) -> Result<ExitCode> {
    let store = storage::open(&config.storage).await?;
    let trust = Trust::from_config(config, false)?;
    let report = catalog::audit::audit(store.as_ref(), trust.signers.as_ref()).await?;
    match write_out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => {
            let rows: Vec<Vec<String>> = report
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        if e.ok { "ok" } else { "CORRUPT" }.to_string(),
                        e.signed.clone(),
                        e.problem.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["id", "result", "signed", "problem"], &rows)
            );
        }
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    let failed = report.failed();
    if failed > 0 {
        eprintln!("error: {failed} backup(s) failed the integrity audit");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `backups prune [--dry-run]`: apply the retention rules.
pub async fn prune(config: &Config, dry_run: bool, write_out: Format) -> Result<ExitCode> {
    let policy = config.retention.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "config {}: no retention section: add retention rules (keep-last, keep-daily, ...) before pruning",
            config.source.display()
        )
    })?;
    let store = storage::open(&config.storage).await?;
    let trust = Trust::from_config(config, false)?;
    let distrust = prune::Distrust {
        signers: trust.signers.as_ref(),
        ..Default::default()
    };
    let report = prune::prune_with(store.as_ref(), policy, Utc::now(), dry_run, &distrust).await?;
    print_pruned(&report, policy, dry_run, write_out)?;
    for warning in report.sweep_errors.iter().chain(&report.future_dated) {
        eprintln!("warning: {warning}");
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    Ok(success_if(report.problems.is_empty()))
}

fn print_pruned(
    report: &PruneReport,
    policy: &Policy,
    dry_run: bool,
    write_out: Format,
) -> Result<()> {
    match write_out {
        Format::Json => {
            let doc = serde_json::json!({
                "dryRun": report.dry_run,
                "policy": policy.to_string(),
                "decisions": report.plan.decisions,
                "deleted": report.deleted,
                "problems": report.problems,
                "unreferenced": report.unreferenced,
                "orphanSegments": report.orphans.iter().map(|o| &o.key).collect::<Vec<_>>(),
                "sweepErrors": report.sweep_errors,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Table | Format::Simple => {
            print!(
                "{}",
                output::table(
                    &retention::TABLE_HEADERS,
                    &retention::render_rows(&report.plan)
                )
            );
            if !dry_run {
                println!("deleted {} backup(s)", report.deleted.len());
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            for key in &report.unreferenced {
                println!("{verb} {key}: no manifest names it, and its run started over a day ago");
            }
            for orphan in &report.orphans {
                println!(
                    "{verb} {}: no segment manifest names it, and {}",
                    orphan.key, orphan.why
                );
            }
        }
    }
    Ok(())
}
