//! `etcdsafe drill`: restore a backup into a throwaway etcd and check it serves.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{DrillArgs, EngineFlag};
use crate::crypto::Identities;
use crate::drill::{self, DrillReport, DrillTools};
use crate::output::Format;
use crate::storage;

use super::ConfigSource;

pub async fn run(source: &ConfigSource, args: &DrillArgs) -> Result<ExitCode> {
    let identities = Identities::load(&args.identity)?;
    let config = source.all()?;
    let store = storage::open(&config.storage).await?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| config.spool_dir.clone());
    let tools = DrillTools {
        etcd: args.etcd.clone(),
        etcdutl: args.etcdutl.clone(),
        engine: EngineFlag::resolve(args.engine, args.etcdutl.as_deref()),
    };
    let trust = super::trust(&config, args.allow_unsigned)?;
    let result = drill::drill(
        store.as_ref(),
        &args.id,
        identities,
        &work_dir,
        &tools,
        &trust,
    )
    .await;
    if let Some(path) = &args.metrics_file {
        drill::write_metrics_file(path, result.as_ref().map_err(|_| ()))
            .map_err(|e| anyhow::anyhow!("--metrics-file {}: {e}", path.display()))?;
    }
    print_report(&result?, args.write_out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &DrillReport, write_out: Format) -> Result<()> {
    match write_out {
        Format::Json => println!("{}", serde_json::to_string_pretty(report)?),
        _ => println!(
            "drill passed: backup {} restored into etcd {} serving revision {} and {} keys, in {:.1}s",
            report.id,
            report.etcd_version,
            report.revision,
            report.live_keys,
            report.duration_seconds
        ),
    }
    Ok(())
}
