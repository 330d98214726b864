//! The long-running service (`etcdsafe run`): scheduled backups with single flight, gating on
//! the etcd leader, retries inside the schedule window, retention after each success, the HTTP
//! API and Prometheus metrics, and a bounded graceful shutdown on SIGTERM.
//!
//! Each job is a [`worker::Worker`] declared in [`workers`]: its attempt is a method here
//! (`backup_attempt`, `audit_attempt`, `defrag_attempt`) returning a [`worker::Outcome`]; jitter,
//! the single-flight lock, retries with backoff and the run/skip/failure counters are the
//! worker's (`worker.rs`).

mod capture;
pub use capture::CHAIN_BREAK_REASON;
pub mod http;
pub mod lease;
pub mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::{self, Manifest};
use crate::config::Config;
use crate::config::Coordination;
use crate::etcd::{self, Target};
use crate::hooks;
use crate::metrics::Metrics;
use crate::pipeline::{self, BackupError, SaveRequest};
use crate::prune;
use crate::schedule::Schedule;
use crate::storage::{self, ObjectStore, StorageError};
use worker::{Backoff, Counters, Outcome, Worker};

/// What the readiness probe reports besides the store.
#[derive(Debug, Clone, Default)]
struct Health {
    /// The last run's failure, if it failed.
    last_failure: Option<String>,
    /// Backups the last integrity audit found corrupt (id to problem): retention refuses to
    /// act while one is in the store.
    corrupt: std::collections::BTreeMap<String, String>,
}

pub struct Service {
    config: Config,
    store: Arc<dyn ObjectStore>,
    metrics: Metrics,
    /// Held while a backup (or a scheduled defrag) runs: scheduled ticks skip, on-demand
    /// requests wait.
    flight: Arc<tokio::sync::Mutex<()>>,
    health: Mutex<Health>,
    shutdown: CancellationToken,
    token: Option<String>,
    lease: Option<lease::LeaseCoordinator>,
}

/// Why a run did not produce a backup.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("could not tell whether this instance's etcd member leads: {0}")]
    Coordination(#[source] etcd::EtcdError),
    #[error("could not take or renew the snapshot Lease: {0}")]
    Lease(#[source] lease::LeaseError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl RunError {
    /// The `failures{stage}` label of this failure.
    pub fn stage(&self) -> &'static str {
        match self {
            RunError::Backup(e) => e.stage().as_str(),
            RunError::Coordination(_) | RunError::Lease(_) => crate::metrics::COORDINATION_STAGE,
            RunError::Hook(_) => crate::metrics::HOOK_STAGE,
            RunError::ShuttingDown => "shutdown",
        }
    }
}

/// What a backup run came to, for the worker's counters.
fn outcome<T>(result: &Result<T, RunError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(RunError::ShuttingDown) => Outcome::Stopped,
        Err(e) => Outcome::Failed { stage: e.stage() },
    }
}

impl Service {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Takes one backup now (on-demand: no leader gating, no retries), waiting for a running one.
    pub async fn backup_now(&self, request: SaveRequest) -> Result<Manifest, RunError> {
        if self.shutdown.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let _flight = self.flight.lock().await;
        let result = self.run_once(&request).await;
        self.backup_counters().count(&outcome(&result));
        result
    }

    /// What backups, scheduled or on demand, are counted in.
    fn backup_counters(&self) -> Counters {
        Counters {
            runs: Some(self.metrics.runs.clone()),
            failures: Some(self.metrics.failures.clone()),
            skipped: Some(self.metrics.skipped.clone()),
        }
    }

    /// One attempt of the scheduled backup. Leadership is asked on every attempt: it may move
    /// between them.
    async fn backup_attempt(self: Arc<Self>) -> Outcome {
        let request = SaveRequest {
            reason: "scheduled".to_string(),
            labels: Default::default(),
        };
        match self.is_snapshot_leader().await {
            Ok(true) => outcome(&self.run_once(&request).await),
            Ok(false) => {
                info!("scheduled backup skipped: another instance leads");
                // Keep this instance's view of the catalog (last success) current too.
                self.refresh_catalog().await;
                Outcome::Skipped("not-leader")
            }
            Err(e) => {
                self.metrics
                    .last_attempt
                    .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                self.record_failure(e.stage(), &e);
                Outcome::Failed { stage: e.stage() }
            }
        }
    }

    /// The periodic integrity audit, taken by the instance that takes snapshots.
    async fn audit_attempt(self: Arc<Self>) -> Outcome {
        if !matches!(self.is_snapshot_leader().await, Ok(true)) {
            return Outcome::Idle;
        }
        let signers = match &self.config.verification {
            Some(v) => match v.load() {
                Ok(signers) => Some(signers),
                Err(e) => {
                    tracing::error!(error = %e, "integrity audit cannot read the allowed signers");
                    return Outcome::Failed { stage: "audit" };
                }
            },
            None => None,
        };
        match catalog::audit::audit(self.store.as_ref(), signers.as_ref()).await {
            Ok(report) => {
                let failed = report.failed();
                self.metrics.audit_corrupt.set(failed as i64);
                self.metrics.audit_unsigned.set(report.unsigned as i64);
                self.metrics
                    .audit_bad_signatures
                    .set(report.bad_signatures as i64);
                self.health.lock().unwrap().corrupt = report
                    .entries
                    .iter()
                    .filter(|e| !e.ok)
                    .map(|e| (e.id.clone(), e.problem.clone()))
                    .collect();
                self.metrics
                    .audit_last_run
                    .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                info!(
                    backups = report.entries.len(),
                    failed, "integrity audit finished"
                );
                Outcome::Done
            }
            Err(e) => {
                tracing::error!(error = %e, "integrity audit could not list the store");
                Outcome::Failed { stage: "audit" }
            }
        }
    }

    /// The scheduled `maintain defrag` (`maintenance.defrag-schedule`), taken by the instance
    /// that takes snapshots, under the backups' single flight (its worker holds it): never
    /// during a backup, and no backup during it (scheduled ticks skip as overlap, on-demand
    /// ones wait).
    async fn defrag_attempt(self: Arc<Self>) -> Outcome {
        if !matches!(self.is_snapshot_leader().await, Ok(true)) {
            return Outcome::Idle;
        }
        let outcome =
            match crate::maintain::defrag(&self.config, Some(self.store.as_ref()), false).await {
                Ok(report) => {
                    self.metrics
                        .defrag_last_success
                        .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                    info!(
                        defragmented = report.defragmented.len(),
                        backup = report.backup.as_deref().unwrap_or("-"),
                        disarmed = report.disarmed.len(),
                        "scheduled defrag finished"
                    );
                    Outcome::Done
                }
                Err(e) => {
                    tracing::error!(error = %e, "scheduled defrag failed");
                    Outcome::Failed { stage: "defrag" }
                }
            };
        self.observe_etcd().await;
        outcome
    }

    /// Sizes, quotas and alarms of every etcd member, for the metrics (every minute, on every
    /// instance: each sees the same cluster, so the alerts take the max).
    async fn observe_etcd(&self) {
        let observed = match Target::resolve(&self.config.etcd) {
            Ok(target) => crate::maintain::status(&target, &self.config.maintenance).await,
            Err(e) => Err(e),
        };
        match observed {
            Ok(status) => self.metrics.observe_etcd(&status),
            Err(e) => tracing::debug!(error = %e, "cannot read etcd member status for the metrics"),
        }
    }

    /// Whether this instance takes scheduled snapshots.
    async fn is_snapshot_leader(&self) -> Result<bool, RunError> {
        let leader = match self.config.service.coordination {
            Coordination::None => true,
            Coordination::EtcdLeader => {
                let target = Target::resolve(&self.config.etcd).map_err(RunError::Coordination)?;
                let (endpoint, mut client) =
                    target.connect_any().await.map_err(RunError::Coordination)?;
                let member = etcd::member_info(&mut client, &endpoint, target.dial_timeout)
                    .await
                    .map_err(RunError::Coordination)?;
                member.leader != 0 && member.leader == member.member_id
            }
            Coordination::Lease => {
                let coordinator = self
                    .lease
                    .as_ref()
                    .expect("a Lease coordinator exists when coordination is lease");
                let interval = self.config.service.schedule.interval_at(Utc::now());
                coordinator
                    .try_lead(lease::lease_duration(interval))
                    .await
                    .map_err(RunError::Lease)?
            }
        };
        self.metrics.is_leader.set(i64::from(leader));
        Ok(leader)
    }

    /// One backup attempt with its bookkeeping: metrics, health, retention. Caller holds `flight`.
    async fn run_once(&self, request: &SaveRequest) -> Result<Manifest, RunError> {
        if self.shutdown.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        self.metrics
            .last_attempt
            .set(Utc::now().timestamp_millis() as f64 / 1000.0);
        let hooks = &self.config.hooks;
        let reason_env = [("ETCDSAFE_REASON".to_string(), request.reason.clone())];
        if let Some(argv) = &hooks.pre_snapshot {
            let outcome = hooks::run_hook("hooks.pre-snapshot", argv, hooks.timeout, &reason_env)
                .await
                .and_then(|o| o.into_result());
            if let Err(e) = outcome {
                self.metrics
                    .hook_failures
                    .with_label_values(&["pre-snapshot"])
                    .inc();
                let e = RunError::Hook(e);
                self.record_failure(e.stage(), &e);
                return Err(e);
            }
        }
        let result = self.save_and_record(request).await;
        if let Some(argv) = &hooks.post_snapshot {
            let (status, id) = match &result {
                Ok(m) => ("success", m.id.clone()),
                Err(_) => ("failure", String::new()),
            };
            let env = [
                reason_env[0].clone(),
                ("ETCDSAFE_RESULT".to_string(), status.to_string()),
                ("ETCDSAFE_BACKUP_ID".to_string(), id),
            ];
            let outcome = hooks::run_hook("hooks.post-snapshot", argv, hooks.timeout, &env)
                .await
                .and_then(|o| o.into_result());
            if let Err(e) = outcome {
                // The backup stands; the hook's failure is counted and logged.
                self.metrics
                    .hook_failures
                    .with_label_values(&["post-snapshot"])
                    .inc();
                tracing::error!(error = %e, "post-snapshot hook failed");
            }
        }
        result
    }

    async fn save_and_record(&self, request: &SaveRequest) -> Result<Manifest, RunError> {
        match pipeline::save(&self.config, self.store.as_ref(), request).await {
            Ok(manifest) => {
                for (stage, seconds) in &manifest.stage_seconds {
                    self.metrics
                        .duration
                        .with_label_values(&[stage])
                        .observe(*seconds);
                }
                self.metrics
                    .duration
                    .with_label_values(&["total"])
                    .observe(manifest.duration_seconds);
                self.metrics.observe_backup(&manifest);
                self.health.lock().unwrap().last_failure = None;
                self.apply_retention().await;
                Ok(manifest)
            }
            Err(e) => {
                let e = RunError::from(e);
                self.record_failure(e.stage(), &e);
                Err(e)
            }
        }
    }

    /// A failed backup attempt in the health the readiness probe reports, and the log. (Its
    /// counters are the worker's: [`Counters::count`].)
    fn record_failure(&self, stage: &str, error: &RunError) {
        let message = error.to_string();
        self.health.lock().unwrap().last_failure = Some(format!("{stage}: {message}"));
        tracing::error!(stage, error = message, "backup failed");
    }

    /// Retention after a successful backup (never before), then the catalog gauges.
    async fn apply_retention(&self) {
        if let Some(policy) = &self.config.retention {
            let signers = match &self.config.verification {
                Some(v) => match v.load() {
                    Ok(signers) => Some(signers),
                    Err(e) => {
                        self.metrics.retention_failures.inc();
                        tracing::error!(error = %e, "retention refused: cannot read the allowed signers");
                        self.refresh_catalog().await;
                        return;
                    }
                },
                None => None,
            };
            let distrust = prune::Distrust {
                corrupt: self.health.lock().unwrap().corrupt.clone(),
                signers: signers.as_ref(),
            };
            match prune::prune_with(self.store.as_ref(), policy, Utc::now(), false, &distrust).await
            {
                Ok(report) => self
                    .metrics
                    .retention_deleted
                    .inc_by(report.deleted.len() as u64),
                Err(e) => {
                    self.metrics.retention_failures.inc();
                    tracing::error!(error = %e, "retention failed");
                }
            }
        }
        self.refresh_catalog().await;
    }

    async fn refresh_catalog(&self) -> Option<catalog::Listing> {
        match catalog::list(self.store.as_ref()).await {
            Ok(listing) => {
                self.metrics.observe_catalog(&listing.backups);
                self.metrics.future_dated.set(listing.future.len() as i64);
                for m in &listing.future {
                    warn!(backup_id = %m.id, problem = %m.future_problem(Utc::now()), "backup dated in the future");
                }
                Some(listing)
            }
            Err(e) => {
                warn!(error = %e, "could not list the catalog");
                None
            }
        }
    }

    /// For `/readyz`: the store answers and the last run did not fail.
    async fn readiness(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.store.preflight()).await {
            Err(_) => {
                return Err(format!(
                    "store {}: no answer within 5s",
                    self.store.describe()
                ))
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(())) => {}
        }
        match &self.health.lock().unwrap().last_failure {
            Some(failure) => Err(format!("last backup failed: {failure}")),
            None => Ok(()),
        }
    }
}

/// One `etcdsafe run`.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Take one backup at start even if the newest one is recent.
    pub backup_now: bool,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StorageError),
    #[error("server.token-file {}", path.display())]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error("server.listen {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `what`: "starting the scheduler".
    #[error("{what}")]
    Scheduler {
        what: &'static str,
        #[source]
        source: tokio_cron_scheduler::JobSchedulerError,
    },
    #[error("scheduling the {worker} worker")]
    Worker {
        worker: &'static str,
        #[source]
        source: tokio_cron_scheduler::JobSchedulerError,
    },
}

/// Adds what the scheduler was doing to its error.
fn scheduling(
    what: &'static str,
) -> impl FnOnce(tokio_cron_scheduler::JobSchedulerError) -> StartError {
    move |source| StartError::Scheduler { what, source }
}

/// A worker's attempt from a method of the service.
fn attempt<F, Fut>(service: &Arc<Service>, f: F) -> worker::Run
where
    F: Fn(Arc<Service>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let service = service.clone();
    Arc::new(move || Box::pin(f(service.clone())))
}

/// Scheduled backups: jitter, the flight lock, leader gating, retries until the next tick.
fn backup_worker(service: &Arc<Service>) -> Worker {
    let settings = &service.config.service;
    Worker {
        jitter: settings.jitter,
        flight: Some(service.flight.clone()),
        backoff: Some(Backoff::SCHEDULED),
        counters: service.backup_counters(),
        ..Worker::cron(
            "backup",
            &settings.schedule,
            attempt(service, Service::backup_attempt),
        )
    }
}

/// The service's other jobs: the integrity audit, defragmentation when
/// `maintenance.defrag-schedule` is set, and the etcd status metrics every minute.
fn workers(service: &Arc<Service>) -> Vec<Worker> {
    let mut workers = vec![Worker::cron(
        "integrity audit",
        &service.config.service.audit_schedule,
        attempt(service, Service::audit_attempt),
    )];
    if let Some(defrag) = &service.config.maintenance.defrag_schedule {
        workers.push(Worker {
            flight: Some(service.flight.clone()),
            counters: Counters {
                runs: Some(service.metrics.defrag_runs.clone()),
                failures: None,
                skipped: Some(service.metrics.skipped.clone()),
            },
            ..Worker::cron("defrag", defrag, attempt(service, Service::defrag_attempt))
        });
    }
    let every_minute = Schedule::parse("0 * * * * *", "UTC").expect("a valid cron expression");
    workers.push(Worker::cron(
        "etcd status metrics",
        &every_minute,
        attempt(service, |s: Arc<Service>| async move {
            s.observe_etcd().await;
            Outcome::Done
        }),
    ));
    // `deltas`: continuous backup, until shutdown.
    workers.extend(capture::worker(service));
    workers
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: Config, args: &RunRequest) -> Result<(), StartError> {
    let store: Arc<dyn ObjectStore> = Arc::from(storage::open(&config.storage).await?);
    let token = match &config.service.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| StartError::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let lease = service_lease(&config).await?;
    let service = Arc::new(Service {
        lease,
        metrics: Metrics::new(),
        store,
        flight: Arc::new(tokio::sync::Mutex::new(())),
        health: Mutex::new(Health::default()),
        shutdown: CancellationToken::new(),
        token,
        config,
    });
    let schedule = service.config.service.schedule.clone();
    service
        .metrics
        .schedule_interval
        .set(schedule.interval_at(Utc::now()).as_secs_f64());
    if let Err(e) = service.store.preflight().await {
        warn!(error = %e, "the store is not reachable yet; backups will fail until it is");
    }
    // The last success survives a restart: it is read from the catalog.
    let newest = service
        .refresh_catalog()
        .await
        .and_then(|l| l.backups.last().map(|m| m.created_at));

    let listener = tokio::net::TcpListener::bind(service.config.service.listen)
        .await
        .map_err(|source| StartError::Listen {
            address: service.config.service.listen,
            source,
        })?;
    info!(listen = %service.config.service.listen, schedule = schedule.text(), "etcdsafe service started");
    let http = tokio::spawn(http::serve(service.clone(), listener));

    let mut scheduler = tokio_cron_scheduler::JobScheduler::new()
        .await
        .map_err(scheduling("starting the scheduler"))?;
    let backup = Arc::new(backup_worker(&service));
    worker::add(&scheduler, backup.clone(), service.shutdown.clone()).await?;
    // Continuous workers (the delta capture) are waited for at shutdown: they finish what
    // they hold.
    let mut continuous = Vec::new();
    for w in workers(&service) {
        continuous.extend(worker::add(&scheduler, Arc::new(w), service.shutdown.clone()).await?);
    }
    scheduler
        .start()
        .await
        .map_err(scheduling("starting the scheduler"))?;
    {
        let service = service.clone();
        tokio::spawn(async move { service.observe_etcd().await });
    }

    if let Err(e) = service.is_snapshot_leader().await {
        warn!(error = %e, "could not tell whether this instance leads yet");
    }
    if args.backup_now || schedule.is_overdue(newest, Utc::now()) {
        info!("the newest backup is older than one schedule interval: taking one now");
        tokio::spawn(worker::fire(backup, service.shutdown.clone()));
    }

    wait_for_signal().await;
    info!("shutting down");
    service.shutdown.cancel();
    let _ = scheduler.shutdown().await;
    let timeout = service.config.service.shutdown_timeout;
    for handle in continuous {
        // The capture seals what it holds before it stops.
        if tokio::time::timeout(timeout, handle).await.is_err() {
            warn!("continuous capture was still sealing at the shutdown deadline");
        }
    }
    match tokio::time::timeout(timeout, service.flight.lock()).await {
        Ok(_) => info!("no backup running; stopped cleanly"),
        Err(_) => warn!(
            timeout_seconds = timeout.as_secs_f64(),
            "a backup was still running at the shutdown deadline: it is abandoned, nothing of it is visible"
        ),
    }
    http.abort();
    Ok(())
}

async fn service_lease(
    config: &Config,
) -> Result<Option<lease::LeaseCoordinator>, lease::LeaseError> {
    if config.service.coordination != Coordination::Lease {
        return Ok(None);
    }
    let settings = &config.service.lease;
    let identity = settings
        .identity
        .clone()
        .unwrap_or_else(lease::default_identity);
    let namespace = settings.namespace();
    let coordinator = lease::LeaseCoordinator::connect(
        config.kubernetes.kubeconfig.as_deref(),
        &namespace,
        &settings.name,
        &identity,
    )
    .await?;
    info!(lease = %settings.name, namespace = %namespace, identity = %identity, "coordinating through a Lease");
    Ok(Some(coordinator))
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
