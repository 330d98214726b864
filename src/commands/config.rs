//! `etcdsafe config check`: validate a config and name every problem.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{Config, ConfigError};

pub fn check(flag: Option<&Path>) -> Result<ExitCode> {
    let path = Config::locate(flag);
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e @ ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => {
            report_problems(&path.display().to_string(), &e.problems());
            // A bad config is bad usage, as for every other command.
            return Ok(crate::exit::Exit::Usage.into());
        }
    };
    let mut problems = Vec::new();
    if let Err(e) = crate::etcd::Target::resolve(&config.etcd) {
        problems.push(e.to_string());
    }
    if let Err(e) = crate::files::check_sources(&config.include_files) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        report_problems(&path.display().to_string(), &problems);
        return Ok(crate::exit::Exit::Usage.into());
    }
    println!(
        "{}: ok (etcd {}, store {}, {} recipient(s))",
        path.display(),
        if config.etcd.endpoints.is_empty() {
            "from manifest".to_string()
        } else {
            config.etcd.endpoints.join(",")
        },
        config.storage.describe(),
        config.encryption.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn report_problems(path: &str, problems: &[String]) {
    eprintln!("error: config {path}: {} problem(s):", problems.len());
    for problem in problems {
        eprintln!("  - {problem}");
    }
}
