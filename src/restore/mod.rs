//! Guided restore. (Being written; see issue 6.)

use std::process::ExitCode;

use crate::cli::RestoreArgs;
use crate::config::Config;

pub async fn run(_config: &Config, _args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("etcdsafe restore is not available in this build yet")
}
