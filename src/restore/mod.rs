//! Guided restore (issue 6): fetch and verify a backup, stop the API server and etcd through
//! their static pod manifests, restore into a new data dir with the stock etcd tool, point etcd
//! at it, start etcd and the API server again, and check what etcd serves and that the API
//! server's readiness probe (`/readyz` over HTTPS, see `readyz`) answers 200.
//!
//! Each step is idempotent and recorded in a JSON journal (`--journal`), so an interrupted restore
//! continues with `--resume` or is undone with `--rollback`. The plan is a pure function
//! (`plan::plan`); the I/O of each step is in `steps`.
//!
//! Test hook: when `ETCDSAFE_RESTORE_STOP_AFTER=<step>` is set, the process exits with code 3
//! right after journaling that step (as if interrupted). Steps: fetch, preflight, stop-pods,
//! restore-data, point-etcd, start-etcd, start-apiserver.

pub mod edit;
pub mod journal;
pub mod plan;
pub mod readyz;
pub mod steps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::catalog;
use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::crypto::Identities;
use crate::storage;
use journal::Journal;
use plan::{BackupFacts, NodeFacts, PlanArgs, Step};

/// The test hook (see the module docs).
pub const STOP_AFTER_ENV: &str = "ETCDSAFE_RESTORE_STOP_AFTER";
/// Exit code when the test hook stopped the run.
pub const EXIT_STOPPED: u8 = 3;
/// Where the manifests wait while their pods are stopped: a sibling of the manifests dir (never
/// inside it: the kubelet would run what is there).
pub const HELD_DIR: &str = "manifests-etcdsafe-held";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Apiserver(#[from] readyz::ReadyzError),
    #[error(transparent)]
    Native(#[from] crate::native::restore::RestoreError),
}

pub fn held_dir(manifests_dir: &Path) -> PathBuf {
    manifests_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(HELD_DIR)
}

fn failed(e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Failed(e.to_string())
}

/// Moves `kube-apiserver.yaml` back into the manifests dir (if there was one) and waits until
/// its readiness probe answers (see `readyz`).
async fn bring_back_apiserver(
    j: &Journal,
    timeout: std::time::Duration,
) -> Result<(), RestoreError> {
    if j.had_apiserver {
        let live = j.manifests_dir.join(steps::APISERVER_YAML);
        steps::move_file(&j.held_dir.join(steps::APISERVER_YAML), &live)?;
        // Journals written before the probe was recorded: ask the manifest now.
        let probe = j.apiserver_readyz.clone().unwrap_or_else(|| {
            std::fs::read_to_string(&live)
                .map(|t| readyz::Probe::from_manifest(&t))
                .unwrap_or_else(|_| readyz::Probe::defaults(j.apiserver_port))
        });
        eprintln!("waiting for kube-apiserver: GET {}", probe.url());
        let ready = tokio::task::spawn_blocking(move || readyz::wait_ready(&probe, timeout))
            .await
            .map_err(failed)??;
        match ready.note {
            None => eprintln!("kube-apiserver is ready: GET {} answered 200", ready.url),
            Some(note) => eprintln!("note: {note}"),
        }
    }
    Ok(())
}

pub async fn run(config: &Config, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    // The journal records paths; absolute ones keep --resume and --rollback right from any
    // working directory.
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .map_err(|e| anyhow::anyhow!("{}: cannot make the path absolute: {e}", p.display()))
    };
    let args = &RestoreArgs {
        journal: absolute(&args.journal)?,
        files_root: absolute(&args.files_root)?,
        data_dir: args.data_dir.as_deref().map(absolute).transpose()?,
        ..args.clone()
    };
    let timeout = crate::units::parse_duration(&args.pod_timeout).ok_or_else(|| {
        anyhow::anyhow!(
            "--pod-timeout {:?}: not a duration (e.g. 90s, 5m)",
            args.pod_timeout
        )
    })?;
    if args.list {
        return list(config).await;
    }
    if args.rollback {
        return Ok(rollback(config, args, timeout).await?);
    }
    if args.resume {
        let Some(mut j) = Journal::load(&args.journal)? else {
            anyhow::bail!(
                "no restore journal at {}: nothing to resume (pass --journal if it is elsewhere)",
                args.journal.display()
            );
        };
        if j.rolled_back || j.complete() {
            anyhow::bail!(
                "the restore of {} in {} is already {}: nothing to resume",
                j.backup_id,
                args.journal.display(),
                if j.rolled_back {
                    "rolled back"
                } else {
                    "complete"
                }
            );
        }
        eprintln!(
            "resuming the restore of {} at step {}",
            j.backup_id,
            j.next_step().map(Step::name).unwrap_or("-")
        );
        return Ok(execute(config, args, &mut j, timeout).await?);
    }
    let id = args.id.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "name the backup to restore (an id, or latest), or use --list, --resume or --rollback"
        )
    })?;
    let identity = args.identity.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "--identity FILE is needed to decrypt the backup (or set ETCDSAFE_IDENTITY_FILE)"
        )
    })?;
    let identities = Identities::load(identity)?;
    if let Some(j) = Journal::load(&args.journal)? {
        if !j.rolled_back && !j.complete() {
            anyhow::bail!(
                "a restore of {} is in progress (journal {}): continue it with `etcdsafe restore --resume` or undo it with `etcdsafe restore --rollback`",
                j.backup_id,
                args.journal.display()
            );
        }
    }
    let store = storage::open(&config.storage).await?;
    let manifest = catalog::resolve(store.as_ref(), id).await?;
    // A forged backup is root on the cluster: its signature is checked before anything else.
    crate::catalog::signature::Trust::from_config(config, args.allow_unsigned)?
        .require(store.as_ref(), &manifest)
        .await?;

    // Facts from the node (read only).
    let manifests_dir = &config.kubernetes.manifests_dir;
    let etcd_yaml_path = manifests_dir.join(steps::ETCD_YAML);
    let original = std::fs::read_to_string(&etcd_yaml_path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e} (is this a kubeadm control-plane node? set kubernetes.manifests-dir)",
            etcd_yaml_path.display()
        )
    })?;
    let em = crate::etcd::EtcdManifest::parse(&etcd_yaml_path, &original)?;
    let flag = |n: &str| em.flag(n).map(str::to_string);
    let host_path = steps::etcd_data_host_path(&original);
    let engine = crate::cli::EngineFlag::resolve(args.engine, args.etcdutl.as_deref());
    let tool = match engine {
        steps::Engine::Etcdutl => steps::detect_tool(args.etcdutl.as_deref()),
        steps::Engine::Native => None,
    };
    let old = host_path
        .clone()
        .or_else(|| flag("data-dir"))
        .unwrap_or_default();
    let target = args
        .data_dir
        .clone()
        .unwrap_or_else(|| plan::default_target(&old, &manifest.id));
    let apiserver_path = manifests_dir.join(steps::APISERVER_YAML);
    let node = NodeFacts {
        name: flag("name"),
        initial_advertise_peer_urls: flag("initial-advertise-peer-urls"),
        initial_cluster: flag("initial-cluster"),
        data_dir: flag("data-dir"),
        host_path,
        apiserver_manifest: apiserver_path.exists(),
        manifests_dir: manifests_dir.clone(),
        target: steps::target_state(&target),
        free_bytes: steps::free_bytes_for(&target),
        tool: tool.clone(),
    };
    let backup = BackupFacts {
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
    };
    let p = plan::plan(
        &node,
        &backup,
        &PlanArgs {
            data_dir: args.data_dir.clone(),
            swap: args.swap,
            restore_files: args.restore_files.then(|| args.files_root.clone()),
            initial_cluster: args.initial_cluster.clone(),
            initial_cluster_token: args.initial_cluster_token.clone(),
            identity: args.identity.clone(),
            etcdutl: args.etcdutl.clone(),
            engine,
            bump_revision: (!args.no_bump_revision).then_some(args.bump_revision),
        },
    );
    print!("{}", p.render());
    if !p.blockers.is_empty() {
        anyhow::bail!(
            "restore not started, nothing was changed: {}",
            p.blockers.join("; ")
        );
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    // The stock engine has a tool (no blocker); the native one needs none.
    let (tool_path, tool_kind) = match &tool {
        Some(t) => (t.path.clone(), t.kind),
        None => (PathBuf::new(), plan::ToolKind::Etcdutl),
    };
    // The readiness probe, from the manifest as found (the held copy keeps these bytes).
    let apiserver_readyz = std::fs::read_to_string(&apiserver_path)
        .ok()
        .map(|t| readyz::Probe::from_manifest(&t));
    let apiserver_port = apiserver_readyz
        .as_ref()
        .map_or(readyz::DEFAULT_PORT, |p| p.port);
    let journal_dir = args
        .journal
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work_dir = journal_dir.join(format!("restore-{}", manifest.id));
    let started_at = chrono::Utc::now();
    let mut j = Journal {
        format_version: journal::FORMAT,
        backup_id: manifest.id.clone(),
        started_at,
        manifests_dir: manifests_dir.clone(),
        held_dir: held_dir(manifests_dir),
        work_dir: work_dir.clone(),
        original_etcd_yaml: original,
        had_apiserver: node.apiserver_manifest,
        old_data_dir_flag: node.data_dir.clone().unwrap_or_default(),
        old_data_dir: p.old_data_dir.clone(),
        target: p.target.clone(),
        swap: args.swap,
        swapped_aside: None,
        name: p.name.clone(),
        initial_cluster: p.initial_cluster.clone(),
        initial_cluster_token: p.initial_cluster_token.clone(),
        initial_advertise_peer_urls: p.initial_advertise_peer_urls.clone(),
        engine,
        tool: tool_path,
        tool_kind,
        bump_revision: p.bump_revision,
        expected_revision: p.expected_revision,
        total_key: manifest.snapshot.total_key,
        live_keys: None,
        files: args.restore_files.then(|| journal::JournalFiles {
            archive: work_dir.join("files.tar"),
            root: args.files_root.clone(),
            // One per run, so a later restore never mistakes an older run's originals for its own.
            previous: journal_dir.join(format!(
                "restore-{}-previous-files-{}",
                manifest.id,
                started_at.format("%Y%m%dT%H%M%SZ")
            )),
        }),
        apiserver_port,
        apiserver_readyz,
        done: Vec::new(),
        rolled_back: false,
        other_members_command: p.other_members_command.clone(),
        // Checked only with the derived token (a token given by hand may be the old one).
        old_cluster_id: if args.initial_cluster_token.is_none() {
            manifest.etcd.cluster_id.clone()
        } else {
            String::new()
        },
    };

    // Step 1: fetch. Nothing on the node is touched until the backup proved sound.
    if work_dir.exists() {
        std::fs::remove_dir_all(&work_dir)?;
    }
    std::fs::create_dir_all(&work_dir)?;
    let snapshot = work_dir.join("snapshot.db");
    let fetched = match &j.files {
        Some(files) => crate::pipeline::fetch::fetch_files(
            store.as_ref(),
            &manifest,
            identities.clone(),
            &files.archive,
        )
        .await
        .map(|entries| {
            eprintln!(
                "fetched and checked the control-plane files ({} entries)",
                entries.len()
            )
        }),
        None => Ok(()),
    };
    if let Err(e) = fetched {
        let _ = std::fs::remove_dir_all(&work_dir);
        anyhow::bail!("restore not started, nothing was changed: {e}");
    }
    match crate::pipeline::fetch::fetch_manifest(
        store.as_ref(),
        &manifest,
        identities,
        &snapshot,
        true,
    )
    .await
    {
        Ok(status) => {
            let path = snapshot.clone();
            let live =
                tokio::task::spawn_blocking(move || crate::snapshot::live_keys(&path)).await??;
            j.live_keys = Some(live);
            eprintln!(
                "fetched and verified backup {} (revision {}, {live} live keys)",
                manifest.id, status.revision
            )
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work_dir);
            anyhow::bail!("restore not started, nothing was changed: {e}");
        }
    }
    record(&mut j, Step::Fetch, &args.journal)?;
    Ok(execute(config, args, &mut j, timeout).await?)
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

async fn execute(
    config: &Config,
    args: &RestoreArgs,
    j: &mut Journal,
    timeout: Duration,
) -> Result<ExitCode, RestoreError> {
    while let Some(step) = j.next_step() {
        if step.destructive() && !args.yes && !confirm(step) {
            eprintln!(
                "stopped before step {}: continue with `etcdsafe restore --resume` or undo with `etcdsafe restore --rollback`",
                step.name()
            );
            return Ok(ExitCode::FAILURE);
        }
        eprintln!("step {}...", step.name());
        match step {
            Step::Fetch => {
                return Err(failed(format!(
                    "the journal {} has no fetched backup: run `etcdsafe restore --rollback`, then start again",
                    args.journal.display()
                )))
            }
            Step::Preflight => steps::preflight(j)?,
            Step::StopPods => {
                let j2 = j.clone();
                tokio::task::spawn_blocking(move || steps::stop_pods(&j2, timeout))
                    .await
                    .map_err(failed)??
            }
            Step::RestoreData => {
                let j2 = j.clone();
                tokio::task::spawn_blocking(move || steps::restore_data(&j2))
                    .await
                    .map_err(failed)??
            }
            Step::RestoreFiles => {
                let files = j.files.clone().ok_or_else(|| {
                    failed("the journal asks for no control-plane files: nothing to put back")
                })?;
                let index = crate::files::put_back(&files.archive, &files.root, &files.previous)
                    .map_err(failed)?;
                eprintln!(
                    "put back the control-plane files under {}: {} replaced, {} created; the replaced ones are kept in {}",
                    files.root.display(),
                    index.replaced.len(),
                    index.created.len(),
                    files.previous.display()
                );
            }
            Step::PointEtcd => steps::point_etcd(j)?,
            Step::StartEtcd => {
                steps::move_file(
                    &j.held_dir.join(steps::ETCD_YAML),
                    &j.manifests_dir.join(steps::ETCD_YAML),
                )?;
                let endpoint = steps::client_endpoint(j);
                let quorum_note = j.quorum_note(timeout);
                let what = steps::wait_etcd(
                    config,
                    &endpoint,
                    timeout,
                    Some(steps::Expect {
                        revision: j.expected_revision,
                        total_key: j.total_key,
                        live_keys: j.live_keys,
                        other_members: quorum_note.is_some(),
                        old_cluster_id: u64::from_str_radix(&j.old_cluster_id, 16).ok(),
                    }),
                    quorum_note.as_deref(),
                )
                .await?;
                eprintln!("etcd is healthy and serves the backup: {what}");
            }
            Step::StartApiserver => {
                bring_back_apiserver(j, timeout).await?;
            }
        }
        record(j, step, &args.journal)?;
    }
    let _ = std::fs::remove_dir_all(&j.work_dir);
    let _ = std::fs::remove_dir(&j.held_dir);
    println!(
        "restored backup {} into {}",
        j.backup_id,
        if j.swap {
            j.old_data_dir.display().to_string()
        } else {
            j.target.display().to_string()
        }
    );
    match &j.swapped_aside {
        Some(aside) => println!("the previous data dir is kept at {}", aside.display()),
        None => println!(
            "the previous data dir is kept at {}",
            j.old_data_dir.display()
        ),
    }
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
        args.journal.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn rollback(
    config: &Config,
    args: &RestoreArgs,
    timeout: Duration,
) -> Result<ExitCode, RestoreError> {
    let Some(mut j) = Journal::load(&args.journal)? else {
        return Err(failed(format!(
            "no restore journal at {}: nothing to roll back (pass --journal if it is elsewhere)",
            args.journal.display()
        )));
    };
    if j.rolled_back {
        println!("the restore of {} was already rolled back", j.backup_id);
        return Ok(ExitCode::SUCCESS);
    }
    let live_etcd = j.manifests_dir.join(steps::ETCD_YAML);
    let untouched = std::fs::read_to_string(&live_etcd).ok().as_deref()
        == Some(j.original_etcd_yaml.as_str())
        && (!j.had_apiserver || j.manifests_dir.join(steps::APISERVER_YAML).exists())
        && j.swapped_aside.is_none();
    if !untouched {
        // Stop whatever runs, then put the original back.
        std::fs::create_dir_all(&j.held_dir).map_err(failed)?;
        for name in [steps::APISERVER_YAML, steps::ETCD_YAML] {
            let live = j.manifests_dir.join(name);
            if live.exists() {
                let held = j.held_dir.join(name);
                if name == steps::ETCD_YAML && held.exists() {
                    // A held copy exists already; the live one is dropped (the journal has the
                    // original bytes).
                    std::fs::remove_file(&live).map_err(failed)?;
                } else {
                    steps::move_file(&live, &held)?;
                }
            }
        }
        let endpoint = steps::client_endpoint(&j);
        let target = j.target.display().to_string();
        let dirs = [j.old_data_dir_flag.as_str(), target.as_str()];
        let (e2, d2): (String, Vec<String>) =
            (endpoint, dirs.iter().map(|s| s.to_string()).collect());
        tokio::task::spawn_blocking(move || {
            let d: Vec<&str> = d2.iter().map(String::as_str).collect();
            steps::wait_gone(&e2, &d, timeout)
        })
        .await
        .map_err(failed)??;
        if let Some(aside) = j.swapped_aside.clone() {
            if aside.exists() {
                if j.old_data_dir.exists() && !j.target.exists() {
                    std::fs::rename(&j.old_data_dir, &j.target).map_err(failed)?;
                }
                if !j.old_data_dir.exists() {
                    std::fs::rename(&aside, &j.old_data_dir).map_err(failed)?;
                }
            }
        }
        undo_files(&j)?;
        // The original etcd.yaml, byte for byte, written atomically next to the manifests dir
        // and renamed in.
        let staged = j.held_dir.join("etcd.yaml.original");
        journal::write_atomic(&staged, j.original_etcd_yaml.as_bytes()).map_err(failed)?;
        steps::move_file(&staged, &live_etcd)?;
        let _ = std::fs::remove_file(j.held_dir.join(steps::ETCD_YAML));
        let endpoint = steps::client_endpoint(&j);
        let others = j.other_members();
        let note = (!others.is_empty()).then(|| {
            format!(
                "etcd member {} is back on its old data but serves only once a quorum of the old members is: roll back the others now ({}) with `etcdsafe restore --rollback`; waiting up to {}",
                j.name,
                others
                    .iter()
                    .map(|(n, u)| format!("{n} at {u}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(timeout)
            )
        });
        let what = steps::wait_etcd(config, &endpoint, timeout, None, note.as_deref()).await?;
        eprintln!("etcd is back on {}: {what}", j.old_data_dir.display());
        bring_back_apiserver(&j, timeout).await?;
        let _ = std::fs::remove_dir(&j.held_dir);
    }
    if untouched {
        undo_files(&j)?;
    }
    let _ = std::fs::remove_dir_all(&j.work_dir);
    j.rolled_back = true;
    j.save(&args.journal)?;
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

/// Puts back the control-plane files a restore replaced (a no-op when none were put back).
fn undo_files(j: &Journal) -> Result<(), RestoreError> {
    if let Some(files) = &j.files {
        let undone = crate::files::undo(&files.root, &files.previous).map_err(failed)?;
        if !undone && j.is_done(Step::RestoreFiles) {
            return Err(failed(format!(
                "the control-plane files were put back under {} but their index {} is gone: put the originals back by hand before starting etcd",
                files.root.display(),
                files.previous.join("INDEX.json").display()
            )));
        }
        if undone {
            eprintln!(
                "the control-plane files under {} are as they were before the restore (the originals stay in {})",
                files.root.display(),
                files.previous.display()
            );
        }
    }
    Ok(())
}

async fn list(config: &Config) -> anyhow::Result<ExitCode> {
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
