//! The restore steps as values that know how to do and undo themselves. `execute` runs the
//! plan's steps in order; `rollback` undoes, in reverse, every step that may have begun (the done
//! ones and the one that was running when the restore stopped). Both are idempotent: a step
//! checks what is already done, so a step interrupted half way is run or undone again.

use std::path::Path;
use std::time::Duration;

use super::journal::{self, Journal};
use super::judge::Expected;
use super::plan::Step;
use super::{readyz, steps, RestoreError};
use crate::catalog::Manifest;
use crate::config::Config;
use crate::crypto::Identities;
use crate::storage::ObjectStore;

/// What the steps work with besides the journal.
pub struct Context<'a> {
    pub config: &'a Config,
    pub journal_path: &'a Path,
    /// How long the kubelet may take to stop or start a static pod.
    pub timeout: Duration,
    /// Where the fetch step gets the backup: only a new restore has it (a resumed journal has
    /// fetched already).
    pub fetch: Option<FetchFrom<'a>>,
}

pub struct FetchFrom<'a> {
    pub store: &'a dyn ObjectStore,
    pub manifest: &'a Manifest,
    pub identities: Identities,
    /// Who may sign delta segments (a point-in-time restore checks each one it applies).
    pub trust: crate::catalog::signature::Trust,
}

/// One step of a restore. Once `run` succeeded, the journal records `step()` in `done` (and
/// whatever `run` wrote into it: see each step).
#[async_trait::async_trait(?Send)]
pub trait ReversibleStep {
    fn step(&self) -> Step;
    async fn run(&self, cx: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError>;
    async fn undo(&self, cx: &Context<'_>, j: &Journal) -> Result<(), RestoreError>;
}

/// The value of each step.
pub fn of(step: Step) -> &'static dyn ReversibleStep {
    match step {
        Step::Fetch => &Fetch,
        Step::Preflight => &Preflight,
        Step::StopPods => &StopPods,
        Step::RestoreData => &RestoreData,
        Step::RestoreFiles => &RestoreFiles,
        Step::PointEtcd => &PointEtcd,
        Step::StartEtcd => &StartEtcd,
        Step::StartApiserver => &StartApiserver,
    }
}

/// Runs a blocking step body off the async thread.
async fn blocking<T: Send + 'static>(
    step: Step,
    f: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| RestoreError::Task { step, source })?
}

/// Downloads, decrypts and verifies the backup (and its control-plane files) into the work dir.
/// Nothing on the node is touched until the backup proved sound. Records `liveKeys`.
pub struct Fetch;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for Fetch {
    fn step(&self) -> Step {
        Step::Fetch
    }

    async fn run(&self, cx: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        let Some(from) = &cx.fetch else {
            return Err(RestoreError::NotFetched {
                path: cx.journal_path.to_path_buf(),
            });
        };
        let work_dir = j.work_dir.clone();
        if work_dir.exists() {
            std::fs::remove_dir_all(&work_dir).map_err(RestoreError::io("removing", &work_dir))?;
        }
        std::fs::create_dir_all(&work_dir).map_err(RestoreError::io("creating", &work_dir))?;
        let fetched = fetch(from, j).await;
        if fetched.is_err() {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        fetched
    }

    async fn undo(&self, _: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        let _ = std::fs::remove_dir_all(&j.work_dir);
        Ok(())
    }
}

async fn fetch(from: &FetchFrom<'_>, j: &mut Journal) -> Result<(), RestoreError> {
    let not_started = |source| RestoreError::NotStarted { source };
    if let Some(files) = &j.files {
        let entries = crate::pipeline::fetch::fetch_files(
            from.store,
            from.manifest,
            from.identities.clone(),
            &files.archive,
        )
        .await
        .map_err(not_started)?;
        eprintln!(
            "fetched and checked the control-plane files ({} entries)",
            entries.len()
        );
    }
    let snapshot = j.work_dir.join("snapshot.db");
    let status = match j.at_revision {
        // A point in time: the backup plus its delta chain up to the revision, applied natively
        // and proved like a fetched backup before anything on the node changes.
        Some(revision) => {
            let fetched = crate::deltas::apply::fetch_at(
                from.store,
                &from.manifest.id,
                crate::deltas::At::Revision(revision),
                from.identities.clone(),
                &snapshot,
                true,
                &from.trust,
            )
            .await
            .map_err(|source| RestoreError::PointNotStarted { source })?;
            j.total_key = fetched.status.total_key;
            j.expected_revision = fetched.status.revision + j.bump_revision.unwrap_or(0) as i64;
            fetched.status
        }
        None => crate::pipeline::fetch::fetch_manifest(
            from.store,
            from.manifest,
            from.identities.clone(),
            &snapshot,
            true,
        )
        .await
        .map_err(not_started)?,
    };
    let live = blocking(Step::Fetch, move || {
        Ok(crate::snapshot::live_keys(&snapshot)?)
    })
    .await?;
    j.live_keys = Some(live);
    eprintln!(
        "fetched and verified backup {} (revision {}, {live} live keys)",
        from.manifest.id, status.revision
    );
    Ok(())
}

/// Checks again that the target is missing or empty and the fetched snapshot is there.
pub struct Preflight;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for Preflight {
    fn step(&self) -> Step {
        Step::Preflight
    }

    async fn run(&self, _: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        steps::preflight(j)
    }

    async fn undo(&self, _: &Context<'_>, _: &Journal) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Moves both manifests into the held dir and waits until etcd is gone. Undone by putting the
/// original etcd.yaml back, byte for byte, and starting etcd and the API server again.
pub struct StopPods;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for StopPods {
    fn step(&self) -> Step {
        Step::StopPods
    }

    async fn run(&self, cx: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        let (j2, timeout) = (j.clone(), cx.timeout);
        blocking(Step::StopPods, move || steps::stop_pods(&j2, timeout)).await
    }

    async fn undo(&self, cx: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        let live_etcd = j.manifests_dir.join(steps::ETCD_YAML);
        let untouched = node_untouched(
            std::fs::read_to_string(&live_etcd).ok().as_deref(),
            j.manifests_dir.join(steps::APISERVER_YAML).exists(),
            j,
        );
        if untouched {
            return Ok(());
        }
        stop_everything(cx, j, Step::StopPods).await?;
        // The original etcd.yaml, byte for byte, written atomically next to the manifests dir
        // and renamed in.
        let staged = j.held_dir.join("etcd.yaml.original");
        journal::write_atomic(&staged, j.original_etcd_yaml.as_bytes())
            .map_err(RestoreError::io("writing", &staged))?;
        steps::move_file(&staged, &live_etcd)?;
        let _ = std::fs::remove_file(j.held_dir.join(steps::ETCD_YAML));
        let endpoint = steps::client_endpoint(j);
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
                humantime::format_duration(cx.timeout)
            )
        });
        let what =
            steps::wait_etcd(cx.config, &endpoint, cx.timeout, None, note.as_deref()).await?;
        eprintln!("etcd is back on {}: {what}", j.old_data_dir.display());
        bring_back_apiserver(j, cx.timeout).await?;
        let _ = std::fs::remove_dir(&j.held_dir);
        Ok(())
    }
}

/// Whether the node runs as before the restore: etcd.yaml live with its original bytes, the
/// API server's manifest live (when there was one), no data dir swapped aside.
pub fn node_untouched(live_etcd_yaml: Option<&str>, apiserver_live: bool, j: &Journal) -> bool {
    live_etcd_yaml == Some(j.original_etcd_yaml.as_str())
        && (!j.had_apiserver || apiserver_live)
        && j.swapped_aside.is_none()
}

/// Stops whatever runs: both manifests into the held dir (a live etcd.yaml is dropped when a
/// held copy exists: the journal has the original bytes), then waits until etcd is gone, on its
/// old data dir or on the restored one.
async fn stop_everything(cx: &Context<'_>, j: &Journal, step: Step) -> Result<(), RestoreError> {
    std::fs::create_dir_all(&j.held_dir).map_err(RestoreError::io("creating", &j.held_dir))?;
    for name in [steps::APISERVER_YAML, steps::ETCD_YAML] {
        let live = j.manifests_dir.join(name);
        if live.exists() {
            let held = j.held_dir.join(name);
            if name == steps::ETCD_YAML && held.exists() {
                std::fs::remove_file(&live).map_err(RestoreError::io("removing", &live))?;
            } else {
                steps::move_file(&live, &held)?;
            }
        }
    }
    let endpoint = steps::client_endpoint(j);
    let dirs = [j.old_data_dir_flag.clone(), j.target.display().to_string()];
    let timeout = cx.timeout;
    blocking(step, move || {
        let d: Vec<&str> = dirs.iter().map(String::as_str).collect();
        steps::wait_gone(&endpoint, &d, timeout)
    })
    .await
}

/// Restores the snapshot into the target data dir with the journal's engine. The restored dir
/// is kept on rollback (the rollback says where).
pub struct RestoreData;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for RestoreData {
    fn step(&self) -> Step {
        Step::RestoreData
    }

    async fn run(&self, _: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        let j2 = j.clone();
        blocking(Step::RestoreData, move || steps::restore_data(&j2)).await
    }

    async fn undo(&self, _: &Context<'_>, _: &Journal) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Puts the control-plane files back (`--restore-files`), keeping what they replace.
pub struct RestoreFiles;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for RestoreFiles {
    fn step(&self) -> Step {
        Step::RestoreFiles
    }

    async fn run(&self, _: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        let files = j.files.clone().ok_or(RestoreError::NoFilesInJournal)?;
        let index = crate::files::put_back(&files.archive, &files.root, &files.previous)?;
        eprintln!(
            "put back the control-plane files under {}: {} replaced, {} created; the replaced ones are kept in {}",
            files.root.display(),
            index.replaced.len(),
            index.created.len(),
            files.previous.display()
        );
        Ok(())
    }

    async fn undo(&self, _: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        let Some(files) = &j.files else {
            return Ok(());
        };
        let undone = crate::files::undo(&files.root, &files.previous)?;
        if !undone && j.is_done(Step::RestoreFiles) {
            return Err(RestoreError::FilesIndexGone {
                root: files.root.clone(),
                index: files.previous.join("INDEX.json"),
            });
        }
        if undone {
            eprintln!(
                "the control-plane files under {} are as they were before the restore (the originals stay in {})",
                files.root.display(),
                files.previous.display()
            );
        }
        Ok(())
    }
}

/// Points etcd at the restored data: rewrites the held etcd.yaml, or with `--swap` renames the
/// data dirs (records `swappedAside`). Undone by renaming them back; the original etcd.yaml
/// comes back with `StopPods`'s undo.
pub struct PointEtcd;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for PointEtcd {
    fn step(&self) -> Step {
        Step::PointEtcd
    }

    async fn run(&self, _: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        steps::point_etcd(j)
    }

    async fn undo(&self, _: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        // A swap interrupted before it was journaled has no `swappedAside` yet: its path is
        // known all the same.
        let aside = j
            .swapped_aside
            .clone()
            .or_else(|| j.swap.then(|| steps::swap_aside(j)));
        if let Some(aside) = aside {
            if aside.exists() {
                if j.old_data_dir.exists() && !j.target.exists() {
                    steps::rename(&j.old_data_dir, &j.target)?;
                }
                if !j.old_data_dir.exists() {
                    steps::rename(&aside, &j.old_data_dir)?;
                }
            }
        }
        Ok(())
    }
}

/// Moves etcd.yaml back and waits until etcd serves the restored data (see `judge`).
pub struct StartEtcd;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for StartEtcd {
    fn step(&self) -> Step {
        Step::StartEtcd
    }

    async fn run(&self, cx: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        steps::move_file(
            &j.held_dir.join(steps::ETCD_YAML),
            &j.manifests_dir.join(steps::ETCD_YAML),
        )?;
        let endpoint = steps::client_endpoint(j);
        let quorum_note = j.quorum_note(cx.timeout);
        let expected = Expected {
            revision: j.expected_revision,
            total_key: j.total_key,
            live_keys: j.live_keys,
            other_members: quorum_note.is_some(),
            old_cluster_id: u64::from_str_radix(&j.old_cluster_id, 16).ok(),
        };
        let what = steps::wait_etcd(
            cx.config,
            &endpoint,
            cx.timeout,
            Some(expected),
            quorum_note.as_deref(),
        )
        .await?;
        eprintln!("etcd is healthy and serves the backup: {what}");
        Ok(())
    }

    async fn undo(&self, cx: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        stop_everything(cx, j, Step::StartEtcd).await
    }
}

/// Moves kube-apiserver.yaml back and waits until its readiness probe answers.
pub struct StartApiserver;

#[async_trait::async_trait(?Send)]
impl ReversibleStep for StartApiserver {
    fn step(&self) -> Step {
        Step::StartApiserver
    }

    async fn run(&self, cx: &Context<'_>, j: &mut Journal) -> Result<(), RestoreError> {
        bring_back_apiserver(j, cx.timeout).await
    }

    async fn undo(&self, _: &Context<'_>, j: &Journal) -> Result<(), RestoreError> {
        let live = j.manifests_dir.join(steps::APISERVER_YAML);
        if live.exists() {
            std::fs::create_dir_all(&j.held_dir)
                .map_err(RestoreError::io("creating", &j.held_dir))?;
            steps::move_file(&live, &j.held_dir.join(steps::APISERVER_YAML))?;
        }
        Ok(())
    }
}

/// Moves `kube-apiserver.yaml` back into the manifests dir (if there was one) and waits until
/// its readiness probe answers (see `readyz`).
async fn bring_back_apiserver(j: &Journal, timeout: Duration) -> Result<(), RestoreError> {
    if !j.had_apiserver {
        return Ok(());
    }
    let live = j.manifests_dir.join(steps::APISERVER_YAML);
    steps::move_file(&j.held_dir.join(steps::APISERVER_YAML), &live)?;
    // Journals written before the probe was recorded: ask the manifest now.
    let probe = j.apiserver_readyz.clone().unwrap_or_else(|| {
        std::fs::read_to_string(&live)
            .map(|t| readyz::Probe::from_manifest(&t))
            .unwrap_or_else(|_| readyz::Probe::defaults(j.apiserver_port))
    });
    eprintln!("waiting for kube-apiserver: GET {}", probe.url());
    let ready = blocking(Step::StartApiserver, move || {
        Ok(readyz::wait_ready(&probe, timeout)?)
    })
    .await?;
    match ready.note {
        None => eprintln!("kube-apiserver is ready: GET {} answered 200", ready.url),
        Some(note) => eprintln!("note: {note}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::plan::{self, BackupFacts, NodeFacts, PlanArgs, TargetState};

    #[test]
    fn each_step_value_is_its_step() {
        for step in Step::ALL {
            assert_eq!(of(step).step(), step);
        }
    }

    /// Which steps a plan has, in order; the journal of the same restore runs the same ones.
    #[test]
    fn step_lists() {
        let node = NodeFacts {
            name: Some("cp1".into()),
            initial_advertise_peer_urls: Some("https://10.0.0.10:2380".into()),
            initial_cluster: Some("cp1=https://10.0.0.10:2380".into()),
            data_dir: Some("/var/lib/etcd".into()),
            host_path: Some("/var/lib/etcd".into()),
            apiserver_manifest: true,
            manifests_dir: "/etc/kubernetes/manifests".into(),
            target: TargetState::Missing,
            free_bytes: Some(10 << 30),
            tool: None,
        };
        let backup = BackupFacts {
            id: "b1".into(),
            revision: 42,
            total_key: 50,
            total_size: 1 << 20,
            member_name: "cp1".into(),
            files: Some("7 entries, 20 KiB from /etc/kubernetes/pki".into()),
            files_paths: vec!["/etc/kubernetes/pki".into()],
            members: vec![],
        };
        const WITHOUT_FILES: &[&str] = &[
            "fetch",
            "preflight",
            "stop-pods",
            "restore-data",
            "point-etcd",
            "start-etcd",
            "start-apiserver",
        ];
        const WITH_FILES: &[&str] = &[
            "fetch",
            "preflight",
            "stop-pods",
            "restore-data",
            "restore-files",
            "point-etcd",
            "start-etcd",
            "start-apiserver",
        ];
        let cases: Vec<(&str, PlanArgs, &[&str])> = vec![
            ("single member", PlanArgs::default(), WITHOUT_FILES),
            (
                "--restore-files",
                PlanArgs {
                    restore_files: Some("/".into()),
                    ..PlanArgs::default()
                },
                WITH_FILES,
            ),
            (
                "--swap",
                PlanArgs {
                    swap: true,
                    ..PlanArgs::default()
                },
                WITHOUT_FILES,
            ),
            (
                "--swap --restore-files",
                PlanArgs {
                    swap: true,
                    restore_files: Some("/".into()),
                    ..PlanArgs::default()
                },
                WITH_FILES,
            ),
        ];
        for (what, args, want) in cases {
            let p = plan::plan(&node, &backup, &args);
            assert!(p.blockers.is_empty(), "{what}: {:?}", p.blockers);
            let planned: Vec<&str> = p.steps.iter().map(|(s, _)| s.name()).collect();
            assert_eq!(planned, want, "{what}: the plan");
            let j = journal::tests::sample_with(args.restore_files.is_some(), args.swap);
            let run: Vec<&str> = j.steps().map(Step::name).collect();
            assert_eq!(run, want, "{what}: the journal");
        }
    }

    #[test]
    fn rollback_undoes_what_began_in_reverse() {
        let mut j = journal::tests::sample_with(false, false);
        let names = |j: &Journal| -> Vec<&'static str> {
            j.begun().into_iter().rev().map(Step::name).collect()
        };
        assert_eq!(
            names(&j),
            ["fetch"],
            "nothing done: only the fetch may have begun"
        );
        j.done = vec![Step::Fetch, Step::Preflight];
        assert_eq!(names(&j), ["stop-pods", "preflight", "fetch"]);
        j.done = Step::ALL
            .into_iter()
            .filter(|s| *s != Step::RestoreFiles)
            .collect();
        assert_eq!(
            names(&j),
            [
                "start-apiserver",
                "start-etcd",
                "point-etcd",
                "restore-data",
                "stop-pods",
                "preflight",
                "fetch"
            ]
        );
    }

    #[test]
    fn untouched_node() {
        let mut j = journal::tests::sample_with(false, false);
        let original = j.original_etcd_yaml.clone();
        assert!(node_untouched(Some(&original), true, &j));
        assert!(!node_untouched(None, true, &j), "etcd.yaml held");
        assert!(!node_untouched(Some("edited"), true, &j));
        assert!(
            !node_untouched(Some(&original), false, &j),
            "API server held"
        );
        j.had_apiserver = false;
        assert!(node_untouched(Some(&original), false, &j));
        j.swapped_aside = Some("/var/lib/etcd.etcdsafe-old-b".into());
        assert!(!node_untouched(Some(&original), false, &j), "swapped");
    }
}
