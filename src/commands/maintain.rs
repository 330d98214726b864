//! `etcdsafe maintain status|defrag|alarms`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::MaintainCommand;
use crate::config::Config;
use crate::etcd::Target;
use crate::maintain::{self, Report};
use crate::output::Format;
use crate::storage;
use crate::units::human_bytes;

pub async fn run(config: &Config, command: MaintainCommand) -> Result<ExitCode> {
    let target = Target::resolve(&config.etcd)?;
    match command {
        MaintainCommand::Status { write_out } => status(config, &target, write_out).await,
        MaintainCommand::Defrag {
            dry_run,
            no_backup,
            write_out,
        } => defrag(config, dry_run, no_backup, write_out).await,
        MaintainCommand::Alarms { disarm } => alarms(config, &target, disarm).await,
    }
}

/// `maintain status`.
async fn status(config: &Config, target: &Target, write_out: Format) -> Result<ExitCode> {
    let status = maintain::status(target, &config.maintenance).await?;
    match write_out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        _ => print!("{}", maintain::render_table(&status)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `maintain defrag [--dry-run] [--no-backup]`.
async fn defrag(
    config: &Config,
    dry_run: bool,
    no_backup: bool,
    write_out: Format,
) -> Result<ExitCode> {
    let store = if no_backup || dry_run {
        None
    } else {
        Some(storage::open(&config.storage).await?)
    };
    let report = maintain::defrag(config, store.as_deref(), dry_run).await?;
    match write_out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print_defrag(&report),
    }
    if dry_run && !report.status.problems.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_defrag(report: &Report) {
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

/// `maintain alarms [--disarm]`.
async fn alarms(config: &Config, target: &Target, disarm: bool) -> Result<ExitCode> {
    let raised = maintain::alarms(target).await?;
    for alarm in &raised {
        println!(
            "memberID:{:x} name:{} alarm:{}",
            alarm.member_id, alarm.member_name, alarm.kind
        );
    }
    if disarm && raised.iter().any(|a| a.kind == "NOSPACE") {
        let status = maintain::status(target, &config.maintenance).await?;
        let facts: Vec<maintain::MemberFacts> =
            status.members.iter().map(|r| r.facts.clone()).collect();
        if let Err(why) = maintain::plan::may_disarm(&facts) {
            anyhow::bail!("NOSPACE alarm not disarmed: {why}");
        }
        for alarm in maintain::disarm(target).await? {
            println!("disarmed {alarm}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
