//! `etcdsafe upgrade -- <command>`: preflight checks, a verified pre-upgrade backup, then the
//! upgrade command (e.g. `kubeadm upgrade apply v1.23.3`), with its outcome recorded on the
//! backup.
//!
//! 1. Preflight ([`preflight`]), every check run and reported together:
//!    - the command's program exists and is executable (a typo costs no backup);
//!    - the current control-plane version: the API server's `/version` (`gitVersion`) when
//!      `kubernetes.kubeconfig` is set, else, and as the fallback when the API server does not
//!      answer, the image tag in `<kubernetes.manifests-dir>/kube-apiserver.yaml`;
//!    - the target: `--to`, else the one version the command names (`--to` and the command
//!      must agree);
//!    - the version-skew policy ([`skew::check_skew`]: same version, patch and next-minor
//!      upgrades pass; skipped minors, downgrades and major changes are refused);
//!    - etcd's health ([`crate::etcd::health`]: every member answers Status, no alarms);
//!    - the store (reachable and writable) and room in the spool dir.
//!
//!    `--skip-version-check` turns the version checks (unknown current or target, skew,
//!    `--to` disagreeing with the command) into warnings; a `--to` that is not a version is
//!    still refused. Unknown versions are labelled `unknown`.
//! 2. A backup through the whole pipeline, reason `pre-upgrade`, labels `from`, `to` and
//!    `upgrade-command`.
//! 3. The command, with the terminal attached. Its exit code becomes etcdsafe's (a signal `n`
//!    becomes `128+n`), and the backup's manifest is rewritten with `upgrade-exit-code` and
//!    `upgrade-duration-seconds` (and `upgrade-signal` / `upgrade-error` when they apply).
//!
//! Exit codes: [`EXIT_NOT_RUN`] (4, from [`crate::exit::Exit`]) when a check or the backup failed, so the command was
//! NOT run (one `error:` line says why); otherwise the command's own code; 127/126 when the
//! command could not be started (not found / not executable) after the backup was taken.
//!
//! `--dry-run` runs the same checks (the store check writes and removes a probe object, and
//! creates a missing local store directory, exactly like a backup would), prints the plan, and
//! takes no backup and runs nothing; it exits 0 when the upgrade would proceed and 2 when not.
//!
//! While the command runs, etcdsafe ignores SIGINT (the terminal delivers it to the command,
//! which is in the same process group, and the command decides) and forwards SIGTERM and SIGHUP
//! to it, so the outcome is always recorded.

pub mod plan;
pub mod skew;
pub mod version;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tracing::info;

use crate::catalog::{self, CatalogError, Manifest};
use crate::config::Config;
use crate::etcd::{health, Target};
use crate::pipeline::{self, SaveRequest};
use crate::storage::{self, ObjectStore};
use crate::units::human_bytes;

use plan::{Check, Plan};
use skew::check_skew;
use version::{Version, VersionSource};

/// Exit code when a preflight check or the pre-upgrade backup failed: the command was not run.
pub const EXIT_NOT_RUN: u8 = crate::exit::Exit::UpgradeNotRun.code();
/// The `reason` of the backup taken before an upgrade.
pub const REASON: &str = "pre-upgrade";

/// Label keys written on the pre-upgrade backup.
pub mod labels {
    pub const FROM: &str = "from";
    pub const TO: &str = "to";
    pub const COMMAND: &str = "upgrade-command";
    pub const EXIT_CODE: &str = "upgrade-exit-code";
    pub const DURATION: &str = "upgrade-duration-seconds";
    pub const SIGNAL: &str = "upgrade-signal";
    pub const ERROR: &str = "upgrade-error";
    /// The value of `from` / `to` when the version is not known (`--skip-version-check`).
    pub const UNKNOWN: &str = "unknown";
}

/// What the preflight found: the plan, and the store it opened (when it could).
pub struct Preflight {
    pub plan: Plan,
    pub store: Option<Box<dyn ObjectStore>>,
}

/// One `etcdsafe upgrade`: what to upgrade to and the command that does it.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest {
    /// The Kubernetes version being upgraded to; `None`: the one version the command names.
    pub to: Option<String>,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// Turn the version checks into warnings.
    pub skip_version_check: bool,
    /// The upgrade command and its arguments.
    pub command: Vec<String>,
}

/// Runs the preflight, the pre-upgrade backup and the command, printing each outcome; the exit
/// code is the command's, or [`EXIT_NOT_RUN`] when it was not run. Nothing here fails apart
/// from what it reports.
pub async fn run(config: &Config, args: &UpgradeRequest) -> ExitCode {
    let Preflight { plan, store } = preflight(config, args).await;
    if args.dry_run {
        print!("{}", plan.render());
        return if plan.ready() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NOT_RUN)
        };
    }
    let store = match store {
        Some(store) if plan.ready() => store,
        _ => {
            eprintln!(
                "error: preflight failed, the upgrade command was not run: {}",
                plan.failure_line()
            );
            return ExitCode::from(EXIT_NOT_RUN);
        }
    };

    let request = SaveRequest {
        reason: REASON.to_string(),
        labels: plan.labels.clone(),
    };
    let manifest = match pipeline::save(config, store.as_ref(), &request).await {
        Ok(manifest) => manifest,
        Err(e) => {
            let text = e.to_string().replace('\n', " ");
            eprintln!(
                "error: the pre-upgrade backup failed ({} stage), the upgrade command was not run: {text}",
                e.stage()
            );
            return ExitCode::from(EXIT_NOT_RUN);
        }
    };
    eprintln!(
        "etcdsafe: pre-upgrade backup {} stored in {} ({} -> {}); running: {}",
        manifest.id,
        plan.store,
        plan.labels[labels::FROM],
        plan.labels[labels::TO],
        plan::display_command(&args.command)
    );

    let outcome = run_command(&args.command, true).await;
    if let Some(error) = &outcome.error {
        eprintln!("error: {error}");
    }
    let id = manifest.id.clone();
    let signer = match &config.signing {
        Some(signing) => match signing.load_key() {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!(
                    "warning: cannot sign the updated manifest of backup {}: {e}",
                    manifest.id
                );
                None
            }
        },
        None => None,
    };
    match record_outcome(store.as_ref(), manifest, &outcome, signer.as_ref()).await {
        Ok(()) => eprintln!(
            "etcdsafe: the upgrade command {} after {:.1}s; recorded on backup {id}",
            outcome.describe(),
            outcome.duration.as_secs_f64()
        ),
        Err(e) => eprintln!(
            "warning: the upgrade command {}, but recording that on backup {id} failed: {}",
            outcome.describe(),
            e.to_string().replace('\n', " ")
        ),
    }
    ExitCode::from(outcome.exit_code)
}

/// Runs every preflight check and builds the plan; changes nothing beyond the store's probe.
pub async fn preflight(config: &Config, args: &UpgradeRequest) -> Preflight {
    let skip = args.skip_version_check;
    let mut checks = Vec::new();

    // The command: a typo should not cost a backup.
    let program = args.command.first().map(String::as_str).unwrap_or("");
    checks.push(match find_program(program) {
        Ok(path) => Check::ok("command", path.display().to_string()),
        Err(problem) => Check::failed("command", problem),
    });

    // Versions.
    let current = current_version(config).await;
    let current = match current {
        Ok(found) => {
            let note = match &found.instead_of {
                Some(problem) => format!("; not from the API server: {problem}"),
                None => String::new(),
            };
            checks.push(Check::ok(
                "current version",
                format!("{} ({}{note})", found.version, found.source),
            ));
            Some(found.version)
        }
        Err(looked) => {
            let detail = format!("not found: {}", looked.join("; "));
            checks.push(if skip {
                Check::warn("current version", format!("{detail} (--skip-version-check)"))
            } else {
                Check::failed(
                    "current version",
                    format!("{detail}: set kubernetes.manifests-dir or kubernetes.kubeconfig, or pass --skip-version-check"),
                )
            });
            None
        }
    };
    let target = match target_version(args) {
        Ok((version, from)) => {
            checks.push(Check::ok("target version", format!("{version} ({from})")));
            Some(version)
        }
        Err(invalid @ TargetProblem::Invalid(_)) => {
            checks.push(Check::failed("target version", invalid.to_string()));
            None
        }
        Err(TargetProblem::Unclear { reason, fallback }) => {
            let message = reason.to_string();
            checks.push(if skip {
                Check::warn(
                    "target version",
                    format!("{message} (--skip-version-check)"),
                )
            } else {
                Check::failed("target version", message)
            });
            if skip {
                fallback
            } else {
                None
            }
        }
    };
    checks.push(match (&current, &target) {
        _ if skip => Check::warn("version skew", "not checked (--skip-version-check)"),
        (Some(current), Some(target)) => match check_skew(current, target) {
            Ok(kind) => Check::ok("version skew", format!("{current} -> {target}: {kind}")),
            Err(refusal) => Check::failed("version skew", refusal.to_string()),
        },
        _ => Check::warn("version skew", "not checked: a version above is missing"),
    });

    // etcd.
    let health = match Target::resolve(&config.etcd) {
        Err(e) => Err(e.to_string()),
        Ok(target) => match health::cluster_health(&target).await {
            Err(e) => Err(e.to_string()),
            Ok(health) => match health.check() {
                Ok(()) => Ok(health),
                Err(unhealthy) => Err(unhealthy.problems.join("; ")),
            },
        },
    };
    let db_size = match &health {
        Ok(h) => {
            checks.push(Check::ok("etcd health", h.summary()));
            Some(h.max_db_size())
        }
        Err(problem) => {
            checks.push(Check::failed("etcd health", problem.clone()));
            None
        }
    };

    // The store.
    let store_name = config.storage.describe();
    let store = match storage::open(&config.storage).await {
        Err(e) => {
            checks.push(Check::failed("store", e.to_string()));
            None
        }
        Ok(store) => match store.preflight().await {
            Ok(()) => {
                checks.push(Check::ok(
                    "store",
                    format!("{} is reachable and writable", store.describe()),
                ));
                Some(store)
            }
            Err(e) => {
                checks.push(Check::failed("store", e.to_string()));
                None
            }
        },
    };

    // The spool dir.
    checks.push(spool_check(&config.spool_dir, db_size));

    let mut labels = BTreeMap::new();
    let text = |v: &Option<Version>| {
        v.as_ref()
            .map_or(labels::UNKNOWN.to_string(), Version::to_string)
    };
    labels.insert(labels::FROM.to_string(), text(&current));
    labels.insert(labels::TO.to_string(), text(&target));
    labels.insert(
        labels::COMMAND.to_string(),
        plan::command_summary(&args.command),
    );
    Preflight {
        plan: Plan {
            checks,
            store: store.as_ref().map_or(store_name, |s| s.describe()),
            reason: REASON.to_string(),
            labels,
            command: args.command.clone(),
        },
        store,
    }
}

/// The running control plane's version and where it was read.
#[derive(Debug, Clone)]
pub struct CurrentVersion {
    pub version: Version,
    pub source: VersionSource,
    /// Why the API server was not used, when a kubeconfig is set but the manifest answered.
    pub instead_of: Option<String>,
}

/// The running control plane's version: from the API server when `kubernetes.kubeconfig` is
/// set, else (or when it does not answer) from kubeadm's kube-apiserver manifest. The error
/// lists every place looked at and why it gave no version.
pub async fn current_version(config: &Config) -> Result<CurrentVersion, Vec<String>> {
    let mut looked = Vec::new();
    if let Some(kubeconfig) = &config.kubernetes.kubeconfig {
        match version::version_from_apiserver(kubeconfig, version::APISERVER_TIMEOUT).await {
            Ok((version, source)) => {
                return Ok(CurrentVersion {
                    version,
                    source,
                    instead_of: None,
                })
            }
            Err(e) => looked.push(e.to_string()),
        }
    }
    let manifest = config
        .kubernetes
        .manifests_dir
        .join(version::APISERVER_MANIFEST);
    match version::version_from_manifest(&manifest) {
        Ok((version, source)) => Ok(CurrentVersion {
            version,
            source,
            instead_of: looked.pop(),
        }),
        Err(e) => {
            looked.push(e.to_string());
            Err(looked)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TargetProblem {
    /// `--to` is not a version: always refused.
    #[error("--to {0}")]
    Invalid(#[source] version::ParseVersionError),
    /// No single target; with `--skip-version-check` the fallback (if any) is used for the
    /// label.
    #[error("{reason}")]
    Unclear {
        reason: Unclear,
        fallback: Option<Version>,
    },
}

/// Why there is no single target version.
#[derive(Debug, thiserror::Error)]
enum Unclear {
    #[error("--to {to} but the command names {}: make them agree", list(named))]
    Disagree { to: Version, named: Vec<Version> },
    #[error("the command names no version: pass --to vX.Y.Z (or --skip-version-check)")]
    NoneNamed,
    #[error("the command names several versions ({}): pass --to vX.Y.Z", list(.0))]
    Several(Vec<Version>),
}

/// `v1.23.3, v1.24.0`.
fn list(versions: &[Version]) -> String {
    versions
        .iter()
        .map(Version::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The target: `--to`, else the one version the command names. `--to` and the command must agree.
fn target_version(args: &UpgradeRequest) -> Result<(Version, &'static str), TargetProblem> {
    let named = version::versions_in_command(&args.command);
    match &args.to {
        Some(text) => {
            let to = Version::parse(text).map_err(TargetProblem::Invalid)?;
            if named.is_empty() || named.contains(&to) {
                Ok((to, "from --to"))
            } else {
                Err(TargetProblem::Unclear {
                    fallback: Some(to.clone()),
                    reason: Unclear::Disagree { to, named },
                })
            }
        }
        None => match named.as_slice() {
            [one] => Ok((one.clone(), "from the command")),
            [] => Err(TargetProblem::Unclear {
                reason: Unclear::NoneNamed,
                fallback: None,
            }),
            several => Err(TargetProblem::Unclear {
                reason: Unclear::Several(several.to_vec()),
                fallback: None,
            }),
        },
    }
}

/// Where the command's program is: a path as given, else the first match on `PATH`, as the
/// spawn will find it; it must be an executable file.
pub fn find_program(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return Err(
            "no command given: put it after --, e.g. -- kubeadm upgrade apply v1.23.3".to_string(),
        );
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{program}: not an executable file: chmod +x it"))
        } else {
            Err(format!("{program}: no such file"))
        };
    }
    crate::tools::find_on_path_where(program, executable).ok_or_else(|| {
        format!("{program}: not found on PATH: is it installed? (or give its full path)")
    })
}

/// Room for the snapshot in the spool dir, the way the pipeline reckons it.
fn spool_check(spool_dir: &Path, db_size: Option<u64>) -> Check {
    let db = db_size.unwrap_or(0);
    let needed = pipeline::spool_bytes_needed(db);
    // The spool dir may not exist yet; the filesystem it will be on is its nearest ancestor's.
    let mut probe: PathBuf = spool_dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => probe = parent.to_path_buf(),
            _ => break,
        }
    }
    match pipeline::free_bytes(&probe) {
        Err(e) => Check::failed(
            "spool space",
            format!("spool-dir {}: cannot check free space: {e}", spool_dir.display()),
        ),
        Ok(free) if free < needed => Check::failed(
            "spool space",
            format!(
                "spool-dir {}: {} free, the snapshot needs about {}: free space or point spool-dir at a larger disk",
                spool_dir.display(),
                human_bytes(free),
                human_bytes(needed)
            ),
        ),
        Ok(free) => Check::ok(
            "spool space",
            format!(
                "spool-dir {}: {} free, the snapshot needs about {}{}",
                spool_dir.display(),
                human_bytes(free),
                human_bytes(needed),
                if db_size.is_none() { " (etcd's size unknown)" } else { "" }
            ),
        ),
    }
}

/// How the upgrade command ended.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// What etcdsafe exits with: the command's code, 128+signal, or 127/126 when it did not start.
    pub exit_code: u8,
    pub signal: Option<i32>,
    pub duration: Duration,
    /// Why it could not be started, when it could not.
    pub error: Option<String>,
}

impl CommandOutcome {
    fn describe(&self) -> String {
        match (self.signal, &self.error) {
            (Some(signal), _) => format!(
                "was killed by signal {signal} (exit code {})",
                self.exit_code
            ),
            (None, Some(_)) => format!("could not be started (exit code {})", self.exit_code),
            (None, None) => format!("exited with code {}", self.exit_code),
        }
    }
}

/// Runs the command with the terminal attached and waits for it. With `forward_signals`,
/// SIGINT no longer ends etcdsafe and SIGTERM/SIGHUP are passed on to the command.
pub async fn run_command(argv: &[String], forward_signals: bool) -> CommandOutcome {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{signal, SignalKind};

    let started = Instant::now();
    // From here on these signals no longer end etcdsafe, so the outcome is always recorded.
    let register = |kind| forward_signals.then(|| signal(kind).ok()).flatten();
    let mut sigint = register(SignalKind::interrupt());
    let mut sigterm = register(SignalKind::terminate());
    let mut sighup = register(SignalKind::hangup());
    let (program, args) = argv
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let name = Path::new(program)
        .file_name()
        .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned());
    let mut child = match tokio::process::Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(e) => {
            let (exit_code, hint) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, ": is it installed and on PATH?"),
                std::io::ErrorKind::PermissionDenied => (126, ": is it executable?"),
                _ => (126, ""),
            };
            return CommandOutcome {
                exit_code,
                signal: None,
                duration: started.elapsed(),
                error: Some(format!(
                    "cannot start the upgrade command {name}: {e}{hint}"
                )),
            };
        }
    };
    info!(command = %name, pid = child.id().unwrap_or(0), "upgrade command started");
    let pid = child.id().map(|p| p as libc::pid_t);
    let forward = |signal: libc::c_int| {
        if let Some(pid) = pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = next_signal(&mut sigterm) => forward(libc::SIGTERM),
            _ = next_signal(&mut sighup) => forward(libc::SIGHUP),
            // The terminal sends SIGINT to the command too; it decides what to do.
            _ = next_signal(&mut sigint) => {}
        }
    };
    let duration = started.elapsed();
    match status {
        Ok(status) => {
            let signal = status.signal();
            let exit_code = match (status.code(), signal) {
                (Some(code), _) => code.clamp(0, 255) as u8,
                (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
                (None, None) => 1,
            };
            CommandOutcome {
                exit_code,
                signal,
                duration,
                error: None,
            }
        }
        Err(e) => CommandOutcome {
            exit_code: 1,
            signal: None,
            duration,
            error: Some(format!(
                "waiting for the upgrade command {name} failed: {e}"
            )),
        },
    }
}

async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Rewrites the backup's manifest with the command's outcome (an atomic put).
/// Records the upgrade command's outcome on its backup's manifest; with `signer`, the updated
/// manifest is signed again (the new signature is written first).
pub async fn record_outcome(
    store: &dyn ObjectStore,
    mut manifest: Manifest,
    outcome: &CommandOutcome,
    signer: Option<&crate::sshsig::SigningKey>,
) -> Result<(), CatalogError> {
    let labels = &mut manifest.labels;
    labels.insert(labels::EXIT_CODE.to_string(), outcome.exit_code.to_string());
    labels.insert(
        labels::DURATION.to_string(),
        format!("{:.3}", outcome.duration.as_secs_f64()),
    );
    if let Some(signal) = outcome.signal {
        labels.insert(labels::SIGNAL.to_string(), signal.to_string());
    }
    if let Some(error) = &outcome.error {
        labels.insert(labels::ERROR.to_string(), error.clone());
    }
    catalog::write_manifest_signed(store, &manifest, signer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(to: Option<&str>, command: &str, skip: bool) -> UpgradeRequest {
        UpgradeRequest {
            to: to.map(str::to_string),
            dry_run: false,
            skip_version_check: skip,
            command: command.split_whitespace().map(str::to_string).collect(),
        }
    }

    #[test]
    fn target_comes_from_to_or_the_command() {
        let v = |s| Version::parse(s).unwrap();
        let (t, from) = target_version(&args(None, "kubeadm upgrade apply v1.23.3", false))
            .ok()
            .unwrap();
        assert_eq!((t, from), (v("v1.23.3"), "from the command"));
        let (t, from) = target_version(&args(Some("1.24.0"), "my-upgrade.sh", false))
            .ok()
            .unwrap();
        assert_eq!((t, from), (v("v1.24.0"), "from --to"));
        let (t, _) = target_version(&args(
            Some("v1.23.3"),
            "kubeadm upgrade apply 1.23.3",
            false,
        ))
        .ok()
        .unwrap();
        assert_eq!(t, v("v1.23.3"));

        match target_version(&args(
            Some("v1.23.3"),
            "kubeadm upgrade apply v1.24.0",
            false,
        )) {
            Err(TargetProblem::Unclear { reason, fallback }) => {
                let message = reason.to_string();
                assert!(
                    message.contains("--to v1.23.3 but the command names v1.24.0"),
                    "{message}"
                );
                assert_eq!(fallback, Some(v("v1.23.3")));
            }
            _ => panic!("a disagreement is unclear"),
        }
        match target_version(&args(None, "kubeadm upgrade node", false)) {
            Err(TargetProblem::Unclear {
                reason,
                fallback: None,
            }) => {
                let message = reason.to_string();
                assert!(message.contains("pass --to"), "{message}")
            }
            _ => panic!("no version is unclear"),
        }
        match target_version(&args(None, "x v1.23.3 v1.24.0", false)) {
            Err(TargetProblem::Unclear { reason, .. }) => {
                let message = reason.to_string();
                assert!(
                    message.contains("several versions (v1.23.3, v1.24.0)"),
                    "{message}"
                )
            }
            _ => panic!("two versions are unclear"),
        }
        match target_version(&args(Some("latest"), "kubeadm upgrade apply v1.23.3", true)) {
            Err(invalid @ TargetProblem::Invalid(_)) => {
                let message = invalid.to_string();
                assert!(message.starts_with("--to \"latest\""), "{message}")
            }
            _ => panic!("--to garbage is invalid"),
        }
    }

    #[test]
    fn the_program_must_exist_and_be_executable() {
        assert_eq!(find_program("sh").unwrap().file_name().unwrap(), "sh");
        assert_eq!(find_program("/bin/sh").unwrap(), PathBuf::from("/bin/sh"));
        let err = find_program("kubeadm-no-such-program").unwrap_err();
        assert!(err.contains("not found on PATH"), "{err}");
        let err = find_program("/nonexistent/kubeadm").unwrap_err();
        assert!(err.contains("no such file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("upgrade.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = find_program(script.to_str().unwrap()).unwrap_err();
        assert!(err.contains("chmod +x"), "{err}");
        assert!(find_program("").is_err());
    }

    #[test]
    fn spool_check_looks_at_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let check = spool_check(&dir.path().join("not/yet/there"), Some(1 << 20));
        assert_eq!(check.status, plan::CheckStatus::Ok, "{check:?}");
        assert!(!dir.path().join("not").exists(), "nothing is created");
        let check = spool_check(dir.path(), Some(u64::MAX / 4));
        assert_eq!(check.status, plan::CheckStatus::Failed, "{check:?}");
        assert!(check.detail.contains("larger disk"), "{}", check.detail);
    }

    #[tokio::test]
    async fn command_exit_codes_and_signals_become_ours() {
        let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
        assert_eq!(run_command(&sh("exit 0"), false).await.exit_code, 0);
        assert_eq!(run_command(&sh("exit 3"), false).await.exit_code, 3);
        let killed = run_command(&sh("kill -9 $$"), false).await;
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        let missing = run_command(&["/nonexistent/kubeadm".to_string()], false).await;
        assert_eq!(missing.exit_code, 127);
        assert!(missing
            .error
            .unwrap()
            .contains("cannot start the upgrade command kubeadm"));
    }
}
