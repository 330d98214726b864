//! Pre-upgrade hook: checks, a pinned pre-upgrade backup, then the upgrade command.
//! (Being written; see issue 5.)

use std::process::ExitCode;

use crate::cli::UpgradeArgs;
use crate::config::Config;

pub async fn run(_config: &Config, _args: &UpgradeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("etcdsafe upgrade is not available in this build yet")
}
