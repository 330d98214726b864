//! `etcdsafe restore`: flags to a [`RestoreRequest`], then the library's restore.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{EngineFlag, RestoreArgs};
use crate::config::Config;
use crate::restore::{Action, RestoreRequest};

pub async fn run(config: &Config, args: &RestoreArgs) -> Result<ExitCode> {
    let request = request(args)?;
    Ok(crate::restore::run(config, &request).await?)
}

fn request(args: &RestoreArgs) -> Result<RestoreRequest> {
    let pod_timeout = crate::units::parse_duration(&args.pod_timeout).ok_or_else(|| {
        anyhow::anyhow!(
            "--pod-timeout {:?}: not a duration (e.g. 90s, 5m)",
            args.pod_timeout
        )
    })?;
    Ok(RestoreRequest {
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
        engine: EngineFlag::resolve(args.engine, args.etcdutl.as_deref()),
        bump_revision: (!args.no_bump_revision).then_some(args.bump_revision),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        swap: args.swap,
        restore_files: args.restore_files.then(|| args.files_root.clone()),
        journal: args.journal.clone(),
        pod_timeout,
        at: args.point.at(),
    })
}
