//! `etcdsafe upgrade -- <command>`: the library prints the plan and the outcome itself, as the
//! command's terminal is shared with it.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::UpgradeArgs;
use crate::config::Config;

pub async fn run(config: &Config, args: &UpgradeArgs) -> Result<ExitCode> {
    Ok(crate::upgrade::run(config, &args.request()).await)
}
