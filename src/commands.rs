//! The glue between the CLI and the library: load config, call, print. `anyhow` lives here.

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;

use crate::catalog::signature::Trust;
use crate::catalog::{self, Manifest};
use crate::cli::{BackupsCommand, Cli, Command, ConfigCommand, SnapshotCommand};
use crate::config::{Config, ConfigError, Needs};
use crate::crypto::Identities;
use crate::output::{self, Format};
use crate::pipeline::{self, SaveRequest};
use crate::prune;
use crate::retention;
use crate::snapshot;
use crate::storage;
use crate::units::human_bytes;

mod snapshot_restore;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config_flag = cli.config.clone();
    let load_config = || read_config(config_flag.as_deref(), Needs::All);
    let load_store_config = || read_config(config_flag.as_deref(), Needs::Store);
    match cli.command {
        Command::Snapshot(SnapshotCommand::Status { file, write_out }) => {
            let status = tokio::task::spawn_blocking(move || snapshot::status(&file)).await??;
            print_status(&status, write_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(SnapshotCommand::Restore(args)) => {
            snapshot_restore::run(args, load_store_config).await
        }
        Command::Snapshot(SnapshotCommand::Verify {
            file,
            write_out,
            skip_hash_check: true,
        }) => {
            // A member's `member/snap/db` has no trailer: structure and status only.
            let path = file.clone();
            let status = tokio::task::spawn_blocking(move || snapshot::status(&path)).await??;
            match write_out {
                Format::Simple => println!(
                    "{}: sound etcd database, no SHA-256 trailer checked (revision {}, {} keys, hash {:x})",
                    file.display(),
                    status.revision,
                    status.total_key,
                    status.hash
                ),
                other => print_status(&status, other),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(SnapshotCommand::Verify {
            file, write_out, ..
        }) => {
            let path = file.clone();
            let verified = tokio::task::spawn_blocking(move || snapshot::verify(&path)).await??;
            match write_out {
                Format::Simple => println!(
                    "{}: sound etcd snapshot (revision {}, {} keys, hash {:x})",
                    file.display(),
                    verified.status.revision,
                    verified.status.total_key,
                    verified.status.hash
                ),
                other => print_status(&verified.status, other),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(SnapshotCommand::Save {
            write_out,
            reason,
            labels,
        }) => {
            let config = load_config()?;
            let store = storage::open(&config.storage).await?;
            let request = SaveRequest {
                reason,
                labels: labels.into_iter().collect(),
            };
            // SIGINT (Ctrl-C) and SIGTERM abandon the backup cleanly: the pipeline aborts the
            // upload and removes its spool files, then this says so in one line.
            let cancel = tokio_util::sync::CancellationToken::new();
            let signals = watch_signals(cancel.clone())?;
            let saved = pipeline::save_until(&config, store.as_ref(), &request, &cancel).await;
            let interrupted_by = if cancel.is_cancelled() {
                signals.await.ok()
            } else {
                signals.abort();
                None
            };
            let manifest = match (saved, interrupted_by) {
                (Err(_), Some(signal)) => {
                    eprintln!(
                        "error: snapshot save interrupted by {signal}: no backup was stored; its spool files were removed and its upload aborted"
                    );
                    return Ok(interrupted_exit(signal));
                }
                (saved, _) => saved?,
            };
            match write_out {
                Format::Simple => println!("{}", manifest.id),
                Format::Json => println!("{}", manifest.to_json()),
                Format::Table => {
                    let state = match &config.signing {
                        Some(s) => catalog::signature::Signed::Yes(s.principal.clone()),
                        None => catalog::signature::Signed::No,
                    };
                    let signed = [(manifest.id.clone(), state)].into();
                    print!(
                        "{}",
                        backups_table(std::slice::from_ref(&manifest), &signed)
                    )
                }
            }
            if let Some(signal) = interrupted_by {
                eprintln!(
                    "error: snapshot save interrupted by {signal} after backup {} was stored; retention did not run",
                    manifest.id
                );
                return Ok(interrupted_exit(signal));
            }
            // Retention runs only after a successful backup, never before.
            if let Some(policy) = &config.retention {
                let trust = Trust::from_config(&config, false)?;
                let distrust = prune::Distrust {
                    signers: trust.signers.as_ref(),
                    ..Default::default()
                };
                match prune::prune_with(store.as_ref(), policy, Utc::now(), false, &distrust).await
                {
                    Ok(report) => {
                        if !report.deleted.is_empty() {
                            eprintln!(
                                "retention: deleted {} backup(s): {}",
                                report.deleted.len(),
                                report.deleted.join(", ")
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!(
                            "error: backup {} was stored, but retention failed: {}",
                            manifest.id, e
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backups(BackupsCommand::List { write_out }) => {
            let config = load_store_config()?;
            let store = storage::open(&config.storage).await?;
            let now = Utc::now();
            let listing = catalog::list_at(store.as_ref(), now).await?;
            let mut problems: Vec<String> =
                listing.problems.iter().map(|p| p.to_string()).collect();
            problems.extend(listing.future.iter().map(|m| m.future_problem(now)));
            let trust = Trust::from_config(&config, false)?;
            let signed =
                catalog::signature::states(store.as_ref(), &listing, trust.signers.as_ref())
                    .await?;
            for (id, state) in &signed {
                if let catalog::signature::Signed::Bad(why) = state {
                    problems.push(format!(
                        "backup {id} has a bad signature: {why}; do not restore it (forged or altered?)"
                    ));
                }
            }
            match write_out {
                Format::Json => {
                    let doc = serde_json::json!({
                        "backups": listing.backups,
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
                Format::Table => print!("{}", backups_table(&listing.backups, &signed)),
            }
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backups(BackupsCommand::Fetch {
            ref id,
            ref output,
            ref identity,
            allow_unsigned,
        }) => {
            let identities = Identities::load(identity)?;
            let config = load_store_config()?;
            let store = storage::open(&config.storage).await?;
            let trust = trust(&config, allow_unsigned)?;
            let (manifest, status) =
                pipeline::fetch::fetch_with(store.as_ref(), id, identities, output, true, &trust)
                    .await?;
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
        Command::Backups(BackupsCommand::Audit { write_out }) => {
            let config = load_store_config()?;
            let store = storage::open(&config.storage).await?;
            let trust = Trust::from_config(&config, false)?;
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
        Command::Backups(BackupsCommand::Prune { dry_run, write_out }) => {
            let config = load_store_config()?;
            let policy = config.retention.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "config {}: no retention section: add retention rules (keep-last, keep-daily, ...) before pruning",
                    config.source.display()
                )
            })?;
            let store = storage::open(&config.storage).await?;
            let trust = Trust::from_config(&config, false)?;
            let distrust = prune::Distrust {
                signers: trust.signers.as_ref(),
                ..Default::default()
            };
            let report =
                prune::prune_with(store.as_ref(), policy, Utc::now(), dry_run, &distrust).await?;
            match write_out {
                Format::Json => {
                    let doc = serde_json::json!({
                        "dryRun": report.dry_run,
                        "policy": policy.to_string(),
                        "decisions": report.plan.decisions,
                        "deleted": report.deleted,
                        "problems": report.problems,
                        "unreferenced": report.unreferenced,
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
                }
            }
            for warning in report.sweep_errors.iter().chain(&report.future_dated) {
                eprintln!("warning: {warning}");
            }
            for problem in &report.problems {
                eprintln!("error: {problem}");
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Maintain(command) => {
            let config = load_config()?;
            maintain(&config, command).await
        }
        Command::Upgrade(ref args) => {
            let config = load_config()?;
            crate::upgrade::run(&config, args).await
        }
        Command::Restore(ref args) => {
            let config = load_config()?;
            use crate::restore::{Action, RestoreRequest};
            let pod_timeout = crate::units::parse_duration(&args.pod_timeout).ok_or_else(|| {
                anyhow::anyhow!(
                    "--pod-timeout {:?}: not a duration (e.g. 90s, 5m)",
                    args.pod_timeout
                )
            })?;
            let request = RestoreRequest {
                action: match (args.list, args.rollback, args.resume) {
                    (true, _, _) => Action::List,
                    (_, true, _) => Action::Rollback,
                    (_, _, true) => Action::Resume,
                    _ => Action::Restore,
                },
                id: args.id.clone(),
                identity: args.identity.clone(),
                allow_unsigned: args.allow_unsigned,
                data_dir: args.data_dir.clone(),
                yes: args.yes,
                dry_run: args.dry_run,
                etcdutl: args.etcdutl.clone(),
                engine: crate::cli::EngineFlag::resolve(args.engine, args.etcdutl.as_deref()),
                bump_revision: (!args.no_bump_revision).then_some(args.bump_revision),
                initial_cluster: args.initial_cluster.clone(),
                initial_cluster_token: args.initial_cluster_token.clone(),
                swap: args.swap,
                restore_files: args.restore_files.then(|| args.files_root.clone()),
                journal: args.journal.clone(),
                pod_timeout,
            };
            Ok(crate::restore::run(&config, &request).await?)
        }
        Command::Drill(ref args) => {
            let identities = Identities::load(&args.identity)?;
            let config = load_config()?;
            let store = storage::open(&config.storage).await?;
            let work_dir = args
                .work_dir
                .clone()
                .unwrap_or_else(|| config.spool_dir.clone());
            let tools = crate::drill::DrillTools {
                etcd: args.etcd.clone(),
                etcdutl: args.etcdutl.clone(),
                engine: crate::cli::EngineFlag::resolve(args.engine, args.etcdutl.as_deref()),
            };
            let trust = trust(&config, args.allow_unsigned)?;
            let result = crate::drill::drill(
                store.as_ref(),
                &args.id,
                identities,
                &work_dir,
                &tools,
                &trust,
            )
            .await;
            if let Some(path) = &args.metrics_file {
                crate::drill::write_metrics_file(path, result.as_ref().map_err(|_| ()))
                    .map_err(|e| anyhow::anyhow!("--metrics-file {}: {e}", path.display()))?;
            }
            let report = result?;
            match args.write_out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                _ => println!(
                    "drill passed: backup {} restored into etcd {} serving revision {} and {} keys, in {:.1}s",
                    report.id,
                    report.etcd_version,
                    report.revision,
                    report.live_keys,
                    report.duration_seconds
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(ref args) => {
            let config = load_config()?;
            crate::service::run(config, args).await
        }
        Command::Config(ConfigCommand::Check) => {
            let path = Config::locate(config_flag.as_deref());
            match Config::load(&path) {
                Ok(config) => {
                    let mut problems = Vec::new();
                    if let Err(e) = crate::etcd::Target::resolve(&config.etcd) {
                        problems.push(e.to_string());
                    }
                    if let Err(e) = crate::files::check_sources(&config.include_files) {
                        problems.push(e.to_string());
                    }
                    if problems.is_empty() {
                        println!(
                            "{}: ok (etcd {}, store {}, {} recipient(s))",
                            path.display(),
                            if config.etcd.endpoints.is_empty() {
                                "from manifest".to_string()
                            } else {
                                config.etcd.endpoints.join(",")
                            },
                            config.storage.describe(),
                            config.encryption.len()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    report_problems(&path.display().to_string(), &problems);
                    Ok(ExitCode::FAILURE)
                }
                Err(e @ ConfigError::Read { .. }) => Err(e.into()),
                Err(e) => {
                    report_problems(&path.display().to_string(), &e.problems());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// Cancels `cancel` on the first SIGINT or SIGTERM; the task's result names the signal. The
/// handlers are in place when this returns, so a signal never kills the save half-way.
fn watch_signals(
    cancel: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<&'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        cancel.cancel();
        name
    }))
}

/// The shell's convention: 128 + the signal's number.
fn interrupted_exit(signal: &str) -> ExitCode {
    if signal == "SIGINT" {
        crate::exit::Exit::Interrupted.into()
    } else {
        crate::exit::Exit::Terminated.into()
    }
}

/// What fetch, restore and drill require of a backup's signature.
pub fn trust(config: &Config, allow_unsigned: bool) -> Result<Trust> {
    Ok(Trust::from_config(config, allow_unsigned)?)
}

fn report_problems(path: &str, problems: &[String]) {
    eprintln!("error: config {path}: {} problem(s):", problems.len());
    for problem in problems {
        eprintln!("  - {problem}");
    }
}

fn read_config(flag: Option<&std::path::Path>, needs: Needs) -> Result<Config> {
    let path = Config::locate(flag);
    Ok(Config::load_for(&path, needs)?)
}

fn print_status(status: &snapshot::Status, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(status).expect("status serializes")
        ),
        Format::Table => print!("{}", snapshot::render_table(status)),
        Format::Simple => println!(
            "{:x}, {}, {}, {}",
            status.hash,
            status.revision,
            status.total_key,
            human_bytes(status.total_size)
        ),
    }
}

fn backups_table(
    backups: &[Manifest],
    signed: &std::collections::BTreeMap<String, catalog::signature::Signed>,
) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.created_at_text(),
                age_text(now.signed_duration_since(b.created_at)),
                b.reason.clone(),
                b.snapshot.revision.to_string(),
                b.snapshot.total_key.to_string(),
                human_bytes(b.snapshot.total_size),
                human_bytes(b.object.size),
                b.etcd.member_name.clone(),
                signed.get(&b.id).map_or("-", |s| s.column()).to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "id", "created", "age", "reason", "revision", "keys", "db size", "stored", "member",
            "signed",
        ],
        &rows,
    )
}

/// kubectl-style ages: 45s, 12m, 5h, 3d.
fn age_text(age: chrono::Duration) -> String {
    let s = age.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `etcdsafe maintain ...`.
async fn maintain(config: &Config, command: crate::cli::MaintainCommand) -> Result<ExitCode> {
    use crate::cli::MaintainCommand;
    use crate::maintain;
    let target = crate::etcd::Target::resolve(&config.etcd)?;
    match command {
        MaintainCommand::Status { write_out } => {
            let status = maintain::status(&target, &config.maintenance).await?;
            match write_out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                _ => print!("{}", maintain::render_table(&status)),
            }
            Ok(ExitCode::SUCCESS)
        }
        MaintainCommand::Defrag {
            dry_run,
            no_backup,
            write_out,
        } => {
            let store = if no_backup || dry_run {
                None
            } else {
                Some(storage::open(&config.storage).await?)
            };
            let report = maintain::defrag(config, store.as_deref(), dry_run).await?;
            match write_out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                _ => {
                    print!("{}", maintain::render_table(&report.status));
                    if let Some(id) = &report.backup {
                        println!("pre-maintenance backup: {id}");
                    }
                    for step in &report.defragmented {
                        println!(
                            "defragmented {} ({}){}: {} -> {} in {:.1}s",
                            step.name,
                            step.endpoint,
                            if step.leader { " leader" } else { "" },
                            human_bytes(step.db_size_before),
                            human_bytes(step.db_size_after),
                            step.seconds
                        );
                    }
                    for alarm in &report.disarmed {
                        println!("disarmed {alarm}");
                    }
                }
            }
            if dry_run && !report.status.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        MaintainCommand::Alarms { disarm } => {
            let raised = maintain::alarms(&target).await?;
            for alarm in &raised {
                println!(
                    "memberID:{:x} name:{} alarm:{}",
                    alarm.member_id, alarm.member_name, alarm.kind
                );
            }
            if disarm && raised.iter().any(|a| a.kind == "NOSPACE") {
                let status = maintain::status(&target, &config.maintenance).await?;
                let facts: Vec<maintain::MemberFacts> =
                    status.members.iter().map(|r| r.facts.clone()).collect();
                if let Err(why) = maintain::plan::may_disarm(&facts) {
                    anyhow::bail!("NOSPACE alarm not disarmed: {why}");
                }
                for alarm in maintain::disarm(&target).await? {
                    println!("disarmed {alarm}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
