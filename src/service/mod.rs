//! The long-running service. (Being written; see issue 4.)

use std::process::ExitCode;

use crate::cli::RunArgs;
use crate::config::Config;

pub async fn run(_config: Config, _args: &RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("etcdsafe run is not available in this build yet")
}
