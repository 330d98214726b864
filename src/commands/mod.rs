//! The glue between the CLI and the library: one module per subcommand, each reading its
//! arguments, calling the library with a plain request and printing the outcome. `anyhow`
//! lives here (and in `main.rs`), never below.

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;

use crate::catalog::signature::Trust;
use crate::catalog::{self, Manifest};
use crate::cli::{BackupsCommand, Cli, Command, ConfigCommand, SnapshotCommand};
use crate::config::{Config, Needs};
use crate::output::{self, Format};
use crate::units::human_bytes;

mod backups;
mod config;
mod drill;
mod maintain;
mod restore;
mod run;
mod snapshot;
mod snapshot_restore;
mod upgrade;

/// How a command loads its config: everything, or only what reaching the store needs.
struct ConfigSource {
    flag: Option<std::path::PathBuf>,
}

impl ConfigSource {
    fn all(&self) -> Result<Config> {
        read_config(self.flag.as_deref(), Needs::All)
    }

    fn store(&self) -> Result<Config> {
        read_config(self.flag.as_deref(), Needs::Store)
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let source = ConfigSource {
        flag: cli.config.clone(),
    };
    match cli.command {
        Command::Snapshot(SnapshotCommand::Status { file, write_out }) => {
            snapshot::status(file, write_out).await
        }
        Command::Snapshot(SnapshotCommand::Restore(args)) => {
            snapshot_restore::run(*args, || source.store()).await
        }
        Command::Snapshot(SnapshotCommand::Verify {
            file,
            write_out,
            skip_hash_check,
        }) => snapshot::verify(file, write_out, skip_hash_check).await,
        Command::Snapshot(SnapshotCommand::Save {
            write_out,
            reason,
            labels,
        }) => snapshot::save(&source.all()?, write_out, reason, labels).await,
        Command::Backups(BackupsCommand::List { write_out, points }) => {
            backups::list(&source.store()?, write_out, points).await
        }
        Command::Backups(BackupsCommand::Fetch {
            id,
            output,
            identity,
            allow_unsigned,
            point,
        }) => backups::fetch(&source, &id, &output, &identity, allow_unsigned, point.at()).await,
        Command::Backups(BackupsCommand::Audit { write_out }) => {
            backups::audit(&source.store()?, write_out).await
        }
        Command::Backups(BackupsCommand::Prune { dry_run, write_out }) => {
            backups::prune(&source.store()?, dry_run, write_out).await
        }
        Command::Maintain(command) => maintain::run(&source.all()?, command).await,
        Command::Upgrade(args) => upgrade::run(&source.all()?, &args).await,
        Command::Restore(args) => restore::run(&source.all()?, &args).await,
        Command::Drill(args) => drill::run(&source, &args).await,
        Command::Run(args) => run::run(source.all()?, &args).await,
        Command::Config(ConfigCommand::Check) => config::check(source.flag.as_deref()),
    }
}

/// What fetch, restore and drill require of a backup's signature.
pub fn trust(config: &Config, allow_unsigned: bool) -> Result<Trust> {
    Ok(Trust::from_config(config, allow_unsigned)?)
}

fn read_config(flag: Option<&std::path::Path>, needs: Needs) -> Result<Config> {
    let path = Config::locate(flag);
    Ok(Config::load_for(&path, needs)?)
}

fn print_status(status: &crate::snapshot::Status, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(status).expect("status serializes")
        ),
        Format::Table => print!("{}", crate::snapshot::render_table(status)),
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

/// [`ExitCode::SUCCESS`] when nothing went wrong, else [`ExitCode::FAILURE`].
fn success_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
