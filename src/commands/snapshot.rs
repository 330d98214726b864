//! `etcdsafe snapshot status|verify|save`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, signature::Trust, Manifest};
use crate::config::Config;
use crate::exit::Exit;
use crate::output::Format;
use crate::pipeline::{self, SaveRequest};
use crate::prune;
use crate::snapshot;
use crate::storage::{self, ObjectStore};

use super::{backups_table, print_status};

/// `snapshot status FILE`.
pub async fn status(file: PathBuf, write_out: Format) -> Result<ExitCode> {
    let status = tokio::task::spawn_blocking(move || snapshot::status(&file)).await??;
    print_status(&status, write_out);
    Ok(ExitCode::SUCCESS)
}

/// `snapshot verify FILE [--skip-hash-check]`.
pub async fn verify(file: PathBuf, write_out: Format, skip_hash_check: bool) -> Result<ExitCode> {
    let path = file.clone();
    if skip_hash_check {
        // A member's `member/snap/db` has no trailer: structure and status only.
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
        return Ok(ExitCode::SUCCESS);
    }
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

/// `snapshot save`: one backup, then retention.
pub async fn save(
    config: &Config,
    write_out: Format,
    reason: String,
    labels: Vec<(String, String)>,
) -> Result<ExitCode> {
    let store = storage::open(&config.storage).await?;
    let request = SaveRequest {
        reason,
        labels: labels.into_iter().collect(),
    };
    // SIGINT (Ctrl-C) and SIGTERM abandon the backup cleanly: the pipeline aborts the
    // upload and removes its spool files, then this says so in one line.
    let cancel = CancellationToken::new();
    let signals = watch_signals(cancel.clone())?;
    let saved = pipeline::save_until(config, store.as_ref(), &request, &cancel).await;
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
    print_saved(config, &manifest, write_out);
    if let Some(signal) = interrupted_by {
        eprintln!(
            "error: snapshot save interrupted by {signal} after backup {} was stored; retention did not run",
            manifest.id
        );
        return Ok(interrupted_exit(signal));
    }
    retain(config, store.as_ref(), &manifest).await
}

fn print_saved(config: &Config, manifest: &Manifest, write_out: Format) {
    match write_out {
        Format::Simple => println!("{}", manifest.id),
        Format::Json => println!("{}", manifest.to_json()),
        Format::Table => {
            let state = match &config.signing {
                Some(s) => catalog::signature::Signed::Yes(s.principal.clone()),
                None => catalog::signature::Signed::No,
            };
            let signed = [(manifest.id.clone(), state)].into();
            print!("{}", backups_table(std::slice::from_ref(manifest), &signed))
        }
    }
}

/// Retention runs only after a successful backup, never before.
async fn retain(config: &Config, store: &dyn ObjectStore, manifest: &Manifest) -> Result<ExitCode> {
    let Some(policy) = &config.retention else {
        return Ok(ExitCode::SUCCESS);
    };
    let trust = Trust::from_config(config, false)?;
    let distrust = prune::Distrust {
        signers: trust.signers.as_ref(),
        ..Default::default()
    };
    match prune::prune_with(store, policy, Utc::now(), false, &distrust).await {
        Ok(report) => {
            if !report.deleted.is_empty() {
                eprintln!(
                    "retention: deleted {} backup(s): {}",
                    report.deleted.len(),
                    report.deleted.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: backup {} was stored, but retention failed: {}",
                manifest.id, e
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Cancels `cancel` on the first SIGINT or SIGTERM; the task's result names the signal. The
/// handlers are in place when this returns, so a signal never kills the save half-way.
fn watch_signals(cancel: CancellationToken) -> Result<tokio::task::JoinHandle<&'static str>> {
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
        Exit::Interrupted.into()
    } else {
        Exit::Terminated.into()
    }
}
