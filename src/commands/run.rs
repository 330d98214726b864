//! `etcdsafe run`: the long-running service.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::RunArgs;
use crate::config::Config;

pub async fn run(config: Config, args: &RunArgs) -> Result<ExitCode> {
    crate::service::run(config, &args.request()).await?;
    Ok(ExitCode::SUCCESS)
}
