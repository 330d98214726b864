//! Guided restore (issue 6): fetch and verify a backup, stop the API server and etcd through
//! their static pod manifests, restore into a new data dir with the stock etcd tool, point etcd
//! at it, start etcd and the API server again, and check what etcd serves and that the API
//! server's readiness probe (`/readyz` over HTTPS, see `readyz`) answers 200.
//!
//! Each step is idempotent and recorded in a JSON journal (`--journal`), so an interrupted restore
//! continues with `--resume` or is undone with `--rollback`. The plan is a pure function
//! (`plan::plan`); each step is a value that runs and undoes itself (`reversible`), with its I/O
//! in `steps`; whether the started etcd serves the backup is the pure `judge::judge`. The
//! library takes a plain `RestoreRequest` and fails with a typed `RestoreError`.
//!
//! Test hook: when `ETCDSAFE_RESTORE_STOP_AFTER=<step>` is set, the process exits with code 3
//! right after journaling that step (as if interrupted). Steps: fetch, preflight, stop-pods,
//! restore-data, point-etcd, start-etcd, start-apiserver.

pub mod edit;
pub mod error;
pub mod journal;
pub mod judge;
pub mod node;
pub mod plan;
pub mod readyz;
pub mod request;
pub mod reversible;
pub mod steps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::catalog;
use crate::config::Config;
use crate::crypto::Identities;
use crate::storage;
pub use error::RestoreError;
use journal::Journal;
use plan::{BackupFacts, PlanArgs, Step};
pub use request::{Action, RestoreRequest};
use reversible::{Context, FetchFrom};

/// The test hook (see the module docs).
pub const STOP_AFTER_ENV: &str = "ETCDSAFE_RESTORE_STOP_AFTER";
/// Exit code when the test hook stopped the run.
pub const EXIT_STOPPED: u8 = 3;
/// Where the manifests wait while their pods are stopped: a sibling of the manifests dir (never
/// inside it: the kubelet would run what is there).
pub const HELD_DIR: &str = "manifests-etcdsafe-held";

pub fn held_dir(manifests_dir: &Path) -> PathBuf {
    manifests_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(HELD_DIR)
}

/// The journal records paths; absolute ones keep --resume and --rollback right from any
/// working directory.
fn absolute(path: &Path) -> Result<PathBuf, RestoreError> {
    std::path::absolute(path).map_err(|source| RestoreError::Absolute {
        path: path.to_path_buf(),
        source,
    })
}

pub async fn run(config: &Config, request: &RestoreRequest) -> Result<ExitCode, RestoreError> {
    let request = &RestoreRequest {
        journal: absolute(&request.journal)?,
        restore_files: request.restore_files.as_deref().map(absolute).transpose()?,
        data_dir: request.data_dir.as_deref().map(absolute).transpose()?,
        ..request.clone()
    };
    match request.action {
        Action::List => list(config).await,
        Action::Rollback => rollback(config, request).await,
        Action::Resume => resume(config, request).await,
        Action::Restore => start(config, request).await,
    }
}

async fn resume(config: &Config, request: &RestoreRequest) -> Result<ExitCode, RestoreError> {
    let Some(mut j) = Journal::load(&request.journal)? else {
        return Err(RestoreError::NoJournal {
            path: request.journal.clone(),
            nothing_to: "resume",
        });
    };
    if j.rolled_back || j.complete() {
        return Err(RestoreError::Finished {
            backup_id: j.backup_id.clone(),
            path: request.journal.clone(),
            state: if j.rolled_back {
                "rolled back"
            } else {
                "complete"
            },
        });
    }
    eprintln!(
        "resuming the restore of {} at step {}",
        j.backup_id,
        j.next_step().map(Step::name).unwrap_or("-")
    );
    let cx = Context {
        config,
        journal_path: &request.journal,
        timeout: request.pod_timeout,
        fetch: None,
    };
    execute(&cx, request.yes, &mut j).await
}

/// Plans a restore of the named backup, prints the plan, and (unless blocked or a dry run)
/// runs it from the fetch on.
async fn start(config: &Config, request: &RestoreRequest) -> Result<ExitCode, RestoreError> {
    let id = request.id.as_deref().ok_or(RestoreError::NoBackupNamed)?;
    let identity = request
        .identity
        .as_deref()
        .ok_or(RestoreError::NoIdentity)?;
    let identities = Identities::load(identity)?;
    if let Some(j) = Journal::load(&request.journal)? {
        if !j.rolled_back && !j.complete() {
            return Err(RestoreError::InProgress {
                backup_id: j.backup_id,
                path: request.journal.clone(),
            });
        }
    }
    let store = storage::open(&config.storage).await?;
    let trust = crate::catalog::signature::Trust::from_config(config, request.allow_unsigned)?;
    let (manifest, at_revision) = match request.at {
        None => (catalog::resolve(store.as_ref(), id).await?, None),
        Some(at) => {
            let (manifest, revision) = point_base(store.as_ref(), id, at).await?;
            (manifest, Some(revision))
        }
    };
    // A forged backup is root on the cluster: its signature is checked before anything else.
    trust.require(store.as_ref(), &manifest).await?;

    let found = node::gather(
        &config.kubernetes.manifests_dir,
        request.data_dir.as_deref(),
        &manifest.id,
        request.engine,
        request.etcdutl.as_deref(),
    )?;
    let mut facts = backup_facts(&manifest);
    if let Some(revision) = at_revision {
        // The database restored is the one at that revision (its key count is known once the
        // fetch has applied the chain).
        facts.revision = revision;
    }
    let p = plan::plan(
        &found.facts,
        &facts,
        &PlanArgs {
            data_dir: request.data_dir.clone(),
            swap: request.swap,
            restore_files: request.restore_files.clone(),
            initial_cluster: request.initial_cluster.clone(),
            initial_cluster_token: request.initial_cluster_token.clone(),
            identity: request.identity.clone(),
            etcdutl: request.etcdutl.clone(),
            engine: request.engine,
            bump_revision: request.bump_revision,
            at_revision,
        },
    );
    print!("{}", p.render());
    if !p.blockers.is_empty() {
        return Err(RestoreError::Blocked {
            blockers: p.blockers,
        });
    }
    if request.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let mut j = new_journal(request, &manifest, &found, &p);
    j.at_revision = at_revision;
    let cx = Context {
        config,
        journal_path: &request.journal,
        timeout: request.pod_timeout,
        fetch: Some(FetchFrom {
            store: store.as_ref(),
            manifest: &manifest,
            identities,
            trust,
        }),
    };
    execute(&cx, request.yes, &mut j).await
}

/// The full backup a point-in-time restore starts from (`id`, or for `latest` the newest one
/// whose chain reaches the point) and the revision `at` resolves to.
async fn point_base(
    store: &dyn crate::storage::ObjectStore,
    id: &str,
    at: crate::deltas::At,
) -> Result<(catalog::Manifest, i64), RestoreError> {
    use crate::deltas::{self, chain};
    let point = |source| RestoreError::PointNotStarted { source };
    let delta = |e: deltas::DeltaError| point(e.into());
    let listing = catalog::list(store).await?;
    let mut bases = deltas::bases(&listing);
    let segments = deltas::load(store).await.map_err(delta)?;
    let revision = chain::resolve(at, &bases, &segments).map_err(|e| point(e.into()))?;
    if id != "latest" {
        let named = catalog::resolve(store, id).await?;
        bases.retain(|b| b.id == named.id);
    }
    let plan = chain::plan(revision, &bases, &segments).map_err(|e| point(e.into()))?;
    let manifest = listing
        .backups
        .into_iter()
        .find(|m| m.id == plan.base)
        .expect("the plan's base is in the listing");
    Ok((manifest, revision))
}

/// The journal of a new restore: what was found, planned and asked for; nothing done yet.
fn new_journal(
    request: &RestoreRequest,
    manifest: &catalog::Manifest,
    found: &node::Found,
    p: &plan::Plan,
) -> Journal {
    // The stock engine has a tool (no blocker); the native one needs none.
    let (tool_path, tool_kind) = match &found.facts.tool {
        Some(t) => (t.path.clone(), t.kind),
        None => (PathBuf::new(), plan::ToolKind::Etcdutl),
    };
    let apiserver_port = found
        .apiserver_readyz
        .as_ref()
        .map_or(readyz::DEFAULT_PORT, |p| p.port);
    let journal_dir = request
        .journal
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work_dir = journal_dir.join(format!("restore-{}", manifest.id));
    let started_at = chrono::Utc::now();
    Journal {
        format_version: journal::FORMAT,
        backup_id: manifest.id.clone(),
        started_at,
        manifests_dir: found.facts.manifests_dir.clone(),
        held_dir: held_dir(&found.facts.manifests_dir),
        work_dir: work_dir.clone(),
        original_etcd_yaml: found.original_etcd_yaml.clone(),
        had_apiserver: found.facts.apiserver_manifest,
        old_data_dir_flag: found.facts.data_dir.clone().unwrap_or_default(),
        old_data_dir: p.old_data_dir.clone(),
        target: p.target.clone(),
        swap: request.swap,
        swapped_aside: None,
        name: p.name.clone(),
        initial_cluster: p.initial_cluster.clone(),
        initial_cluster_token: p.initial_cluster_token.clone(),
        initial_advertise_peer_urls: p.initial_advertise_peer_urls.clone(),
        engine: request.engine,
        tool: tool_path,
        tool_kind,
        bump_revision: p.bump_revision,
        expected_revision: p.expected_revision,
        total_key: manifest.snapshot.total_key,
        at_revision: None,
        live_keys: None,
        files: request
            .restore_files
            .as_ref()
            .map(|root| journal::JournalFiles {
                archive: work_dir.join("files.tar"),
                root: root.clone(),
                // One per run, so a later restore never mistakes an older run's originals for
                // its own.
                previous: journal_dir.join(format!(
                    "restore-{}-previous-files-{}",
                    manifest.id,
                    started_at.format("%Y%m%dT%H%M%SZ")
                )),
            }),
        apiserver_port,
        apiserver_readyz: found.apiserver_readyz.clone(),
        done: Vec::new(),
        rolled_back: false,
        other_members_command: p.other_members_command.clone(),
        // Checked only with the derived token (a token given by hand may be the old one).
        old_cluster_id: if request.initial_cluster_token.is_none() {
            manifest.etcd.cluster_id.clone()
        } else {
            String::new()
        },
    }
}

/// What the backup's manifest says, for the plan.
fn backup_facts(manifest: &catalog::Manifest) -> BackupFacts {
    BackupFacts {
        id: manifest.id.clone(),
        revision: manifest.snapshot.revision,
        total_key: manifest.snapshot.total_key,
        total_size: manifest.snapshot.total_size,
        member_name: manifest.etcd.member_name.clone(),
        files: manifest.files.as_ref().map(|f| {
            format!(
                "{} entries, {} from {}",
                f.entries,
                crate::units::human_bytes(f.content_bytes),
                f.paths.join(", ")
            )
        }),
        files_paths: manifest
            .files
            .as_ref()
            .map(|f| f.paths.iter().map(PathBuf::from).collect())
            .unwrap_or_default(),
        members: manifest
            .etcd
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer_urls.clone()))
            .collect(),
    }
}

/// Journals a step and applies the test hook.
fn record(j: &mut Journal, step: Step, path: &Path) -> Result<(), RestoreError> {
    j.mark(step, path)?;
    if std::env::var(STOP_AFTER_ENV).ok().as_deref() == Some(step.name()) {
        eprintln!(
            "stopped after step {} ({STOP_AFTER_ENV} test hook); continue with --resume or undo with --rollback",
            step.name()
        );
        std::process::exit(EXIT_STOPPED as i32);
    }
    Ok(())
}

/// Asks on stderr and reads one line of stdin: a terminal or a pipe (one answer per line; the
/// process-wide stdin buffer keeps the lines not read yet). End of input or an error is a no.
fn confirm(step: Step) -> bool {
    use std::io::{BufRead, IsTerminal};
    eprint!("proceed with step {}? [y/N] ", step.name());
    let stdin = std::io::stdin();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let answer = line.trim();
    if !stdin.is_terminal() {
        // Nothing was echoed: show what was read, so the transcript makes sense.
        match read {
            Ok(0) => eprintln!("(end of input: no)"),
            Err(e) => eprintln!("(cannot read stdin: {e}: no)"),
            Ok(_) => eprintln!("{answer}"),
        }
    }
    matches!(answer, "y" | "Y" | "yes")
}

/// Runs the journal's steps that are not done yet, in order, journaling each.
async fn execute(cx: &Context<'_>, yes: bool, j: &mut Journal) -> Result<ExitCode, RestoreError> {
    while let Some(step) = j.next_step() {
        if step.destructive() && !yes && !confirm(step) {
            eprintln!(
                "stopped before step {}: continue with `etcdsafe restore --resume` or undo with `etcdsafe restore --rollback`",
                step.name()
            );
            return Ok(ExitCode::FAILURE);
        }
        if step != Step::Fetch {
            eprintln!("step {}...", step.name());
        }
        reversible::of(step).run(cx, j).await?;
        record(j, step, cx.journal_path)?;
    }
    let _ = std::fs::remove_dir_all(&j.work_dir);
    let _ = std::fs::remove_dir(&j.held_dir);
    print_done(j, cx.journal_path);
    Ok(ExitCode::SUCCESS)
}

/// What was restored, and what is left for the operator.
fn print_done(j: &Journal, journal_path: &Path) {
    println!(
        "restored backup {} into {}",
        j.backup_id,
        if j.swap {
            j.old_data_dir.display().to_string()
        } else {
            j.target.display().to_string()
        }
    );
    let kept = j.swapped_aside.as_ref().unwrap_or(&j.old_data_dir);
    println!("the previous data dir is kept at {}", kept.display());
    println!("left for you to do:");
    println!("  - restart kube-controller-manager, kube-scheduler and the kubelet on every control-plane node (they cache what they watched)");
    let others = j.other_members();
    if !others.is_empty() {
        println!(
            "  - restore every other member that is not restored yet ({}), from its own node, with:\n      {}",
            others
                .iter()
                .map(|(n, u)| format!("{n} at {u}"))
                .collect::<Vec<_>>()
                .join(", "),
            j.command_for_others()
        );
    }
    if j.bump_revision.is_none() {
        println!("  - the revision was not bumped (--no-bump-revision, or a stock tool too old to bump): restart everything that watches the API (controllers, operators) so no cache keeps newer revisions");
    }
    println!(
        "  - undo with `etcdsafe restore --rollback --journal {}` while the journal exists",
        journal_path.display()
    );
}

/// Undoes, in reverse, every step of the journal that may have begun.
async fn rollback(config: &Config, request: &RestoreRequest) -> Result<ExitCode, RestoreError> {
    let Some(mut j) = Journal::load(&request.journal)? else {
        return Err(RestoreError::NoJournal {
            path: request.journal.clone(),
            nothing_to: "roll back",
        });
    };
    if j.rolled_back {
        println!("the restore of {} was already rolled back", j.backup_id);
        return Ok(ExitCode::SUCCESS);
    }
    let cx = Context {
        config,
        journal_path: &request.journal,
        timeout: request.pod_timeout,
        fetch: None,
    };
    for step in j.begun().into_iter().rev() {
        reversible::of(step).undo(&cx, &j).await?;
    }
    j.rolled_back = true;
    j.save(&request.journal)?;
    println!(
        "rolled back the restore of {}: the manifests are as they were and etcd uses {}",
        j.backup_id,
        j.old_data_dir.display()
    );
    if j.target.exists() {
        println!(
            "the restored data dir is kept at {} (remove it when you no longer need it)",
            j.target.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(config: &Config) -> Result<ExitCode, RestoreError> {
    let store = storage::open(&config.storage).await?;
    let listing = catalog::list(store.as_ref()).await?;
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = listing
        .backups
        .iter()
        .rev()
        .map(|b| {
            let age = (now - b.created_at).to_std().unwrap_or_default();
            let age = Duration::from_secs(age.as_secs());
            vec![
                b.id.clone(),
                b.snapshot.revision.to_string(),
                humantime::format_duration(age).to_string(),
                b.reason.clone(),
                b.files
                    .as_ref()
                    .map(|f| format!("{} entries", f.entries))
                    .unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(&["ID", "REVISION", "AGE", "REASON", "FILES"], &rows)
    );
    for problem in &listing.problems {
        eprintln!("error: {problem}");
    }
    Ok(if listing.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
