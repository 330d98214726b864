//! `etcdsafe snapshot restore`: flags to [`RestoreOptions`], a file or a fetched backup into
//! the staging data dir, then the native engine; prints what it wrote.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::SnapshotRestoreArgs;
use crate::config::Config;
use crate::crypto::Identities;
use crate::native::restore::{restore_file, RestoreOptions, Restored, Staging};
use crate::output::{self, Format};
use crate::pipeline;
use crate::storage;

pub async fn run(
    args: SnapshotRestoreArgs,
    load_config: impl FnOnce() -> Result<Config>,
) -> Result<ExitCode> {
    let opts = options(&args);
    if args.snapshot.is_some() && args.point.at().is_some() {
        anyhow::bail!("--at-revision, --at-time and --at-latest pick a point of a stored backup's delta chain: use them with --backup, not a snapshot file");
    }
    let restored = match (&args.snapshot, &args.backup) {
        (Some(file), _) => {
            let file = file.clone();
            tokio::task::spawn_blocking(move || restore_file(&file, &opts)).await??
        }
        (None, Some(id)) => {
            let identity = args
                .identity
                .as_ref()
                .context("--backup needs --identity")?;
            let identities = Identities::load(identity)?;
            let config = load_config()?;
            let store = storage::open(&config.storage).await?;
            let trust = super::trust(&config, args.allow_unsigned)?;
            let mut staging = Staging::create(&opts)?;
            let db = staging.db_path().to_path_buf();
            let revision = match args.point.at() {
                Some(at) => {
                    let fetched = crate::deltas::apply::fetch_at(
                        store.as_ref(),
                        id,
                        at,
                        identities,
                        &db,
                        true,
                        &trust,
                    )
                    .await?;
                    tracing::info!(backup = %fetched.plan.base, revision = fetched.status.revision, segments = fetched.plan.segments.len(), "backup and delta segments fetched and verified into the staging data dir");
                    fetched.status.revision
                }
                None => {
                    let (manifest, status) = pipeline::fetch::fetch_with(
                        store.as_ref(),
                        id,
                        identities,
                        &db,
                        true,
                        &trust,
                    )
                    .await?;
                    tracing::info!(backup = %manifest.id, "backup fetched and verified into the staging data dir");
                    status.revision
                }
            };
            tokio::task::spawn_blocking(move || {
                staging.adopt_verified_snapshot(revision)?;
                staging.finish()
            })
            .await??
        }
        (None, None) => unreachable!("clap requires a snapshot or --backup"),
    };
    print(&restored, args.write_out)?;
    Ok(ExitCode::SUCCESS)
}

fn options(args: &SnapshotRestoreArgs) -> RestoreOptions {
    let mut opts = RestoreOptions::new(&args.name);
    if let Some(dir) = &args.data_dir {
        opts.data_dir = dir.clone();
    }
    opts.wal_dir = args.wal_dir.clone();
    if let Some(cluster) = &args.initial_cluster {
        opts.initial_cluster = cluster.clone();
    }
    opts.initial_cluster_token = args.initial_cluster_token.clone();
    opts.initial_advertise_peer_urls = args.initial_advertise_peer_urls.clone();
    opts.skip_hash_check = args.skip_hash_check;
    opts.bump_revision = args.bump_revision;
    opts.mark_compacted = args.mark_compacted;
    opts
}

fn print(r: &Restored, format: Format) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(r)?),
        Format::Table => print!(
            "{}",
            output::table(
                &[
                    "DATA DIR",
                    "MEMBER ID",
                    "CLUSTER ID",
                    "MEMBERS",
                    "REVISION",
                    "COMPACTED",
                    "DB SIZE"
                ],
                &[vec![
                    r.data_dir.display().to_string(),
                    r.member_id.clone(),
                    r.cluster_id.clone(),
                    r.members.to_string(),
                    r.revision.to_string(),
                    r.compacted_revision.to_string(),
                    crate::units::human_bytes(r.db_bytes),
                ]],
            )
        ),
        Format::Simple => {
            let bump = if r.revision != r.snapshot_revision {
                format!(
                    " (snapshot revision {}, bumped; older revisions compacted)",
                    r.snapshot_revision
                )
            } else {
                String::new()
            };
            println!(
                "restored {} member {} of cluster {} ({} member(s)) at revision {}{bump}",
                r.data_dir.display(),
                r.member_id,
                r.cluster_id,
                r.members,
                r.revision
            );
        }
    }
    Ok(())
}
