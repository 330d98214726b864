//! The service's background jobs as workers. A [`Worker`] is declared, not programmed: a name,
//! when it runs ([`When`]), what one attempt does ([`Run`], returning an [`Outcome`]), and the
//! policies around it, which live here once for every worker:
//!
//! - `jitter`: a random delay before each firing (the backup's `schedule-jitter`);
//! - `flight`: a single-flight lock taken with `try_lock` for the whole firing, retries
//!   included; when it is held the firing is skipped as `overlap` (backups and defrag share the
//!   service's lock, so neither runs during the other);
//! - `backoff`: after a failed attempt, retry after `initial` (for a cron worker never more than
//!   a quarter of the schedule's interval), doubling up to `max`, while the retry still falls
//!   before the next firing (a cron worker) or until cancelled (a continuous worker);
//! - `counters`: each outcome is counted in the worker's metric vectors: `runs{result}`
//!   (`success`/`failure`), `failures{stage}` and `skipped{why}`; a worker without one of them
//!   counts nothing there.
//!
//! Every worker is started through [`add`]. A cron worker ([`When::Cron`]) fires on its schedule
//! in its own task, so a slow run never delays the scheduler. A continuous worker
//! ([`When::Continuous`], e.g. a capture that follows etcd until shutdown) is started once and
//! runs until the cancellation token fires: when an attempt fails (or is skipped or idle) it is
//! started again after its backoff (1 s to 10 min when it declares none), and when an attempt
//! ends done it is started again at once with the backoff reset. Its run should watch the same
//! token and return [`Outcome::Stopped`] once it fires.
//!
//! To add a worker: write its attempt as an `async fn(Arc<Service>) -> Outcome`, and declare it
//! in `workers()` of `src/service/mod.rs` with the counters and policies it needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prometheus::IntCounterVec;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::StartError;
use crate::schedule::Schedule;

/// One attempt of a worker.
pub type Run = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work: `runs{result="success"}`.
    Done,
    /// It did nothing, for a reason counted in `skipped{why}` ("not-leader"); not retried.
    Skipped(&'static str),
    /// It had nothing to do on this instance (another instance leads); counted nowhere.
    Idle,
    /// It failed at `stage`: `runs{result="failure"}` and `failures{stage}`; retried with the
    /// worker's backoff.
    Failed { stage: &'static str },
    /// The service is shutting down; counted nowhere, never retried.
    Stopped,
}

/// When a worker runs.
#[derive(Debug, Clone)]
pub enum When {
    /// On a cron schedule; a firing's retries end before the next firing.
    Cron(Box<Schedule>),
    /// Once, from start until the cancellation token fires; restarted after a failure.
    Continuous,
}

/// Retry after a failed attempt: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The backup's: 30 s (at most a quarter of the interval), doubling up to 10 min.
    pub const SCHEDULED: Backoff = Backoff {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(600),
    };

    /// The first delay: never more than a quarter of `interval`, never under a second.
    fn first(&self, interval: Option<Duration>) -> Duration {
        let initial = match interval {
            Some(interval) => self.initial.min(interval / 4),
            None => self.initial,
        };
        initial.max(Duration::from_secs(1))
    }
}

/// The metric vectors a worker's outcomes are counted in (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Labelled `success` or `failure`.
    pub runs: Option<IntCounterVec>,
    /// Labelled with the failed stage.
    pub failures: Option<IntCounterVec>,
    /// Labelled with why the run was skipped.
    pub skipped: Option<IntCounterVec>,
}

impl Counters {
    /// Counts one outcome.
    pub fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Done => {
                if let Some(runs) = &self.runs {
                    runs.with_label_values(&["success"]).inc();
                }
            }
            Outcome::Failed { stage } => {
                if let Some(runs) = &self.runs {
                    runs.with_label_values(&["failure"]).inc();
                }
                if let Some(failures) = &self.failures {
                    failures.with_label_values(&[stage]).inc();
                }
            }
            Outcome::Skipped(why) => {
                if let Some(skipped) = &self.skipped {
                    skipped.with_label_values(&[why]).inc();
                }
            }
            Outcome::Idle | Outcome::Stopped => {}
        }
    }
}

/// A background job (see the module doc).
pub struct Worker {
    /// What it is, in logs and errors: "backup", "integrity audit", "defrag".
    pub name: &'static str,
    pub when: When,
    /// A random delay up to this before each firing.
    pub jitter: Duration,
    /// Held for a whole firing, retries included; a firing that finds it held is skipped.
    pub flight: Option<Arc<tokio::sync::Mutex<()>>>,
    pub run: Run,
    /// Retry failed attempts; `None`: a failure waits for the next firing.
    pub backoff: Option<Backoff>,
    pub counters: Counters,
}

impl Worker {
    /// A cron worker with no jitter, no flight lock, no retries and no counters.
    pub fn cron(name: &'static str, schedule: &Schedule, run: Run) -> Worker {
        Worker {
            name,
            when: When::Cron(Box::new(schedule.clone())),
            jitter: Duration::ZERO,
            flight: None,
            run,
            backoff: None,
            counters: Counters::default(),
        }
    }

    /// A worker that runs from start until `shutdown`, restarted with `backoff` after a failure.
    pub fn continuous(name: &'static str, run: Run, backoff: Backoff) -> Worker {
        Worker {
            name,
            when: When::Continuous,
            jitter: Duration::ZERO,
            flight: None,
            run,
            backoff: Some(backoff),
            counters: Counters::default(),
        }
    }
}

/// The backoff of a continuous worker that declares none.
const CONTINUOUS_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(600),
};

/// Starts `worker`: a cron worker is added to `scheduler` (each firing spawns one task), a
/// continuous one is spawned now. Both stop at `shutdown`.
pub async fn add(
    scheduler: &JobScheduler,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let name = worker.name;
    let schedule = match &worker.when {
        When::Cron(schedule) => schedule.as_ref().clone(),
        // The caller may wait for it to stop at shutdown (a capture seals what it holds).
        When::Continuous => return Ok(Some(tokio::spawn(continuous(worker, shutdown)))),
    };
    let error = move |source| StartError::Worker {
        worker: name,
        source,
    };
    let job = Job::new_async_tz(schedule.with_seconds(), schedule.timezone(), move |_, _| {
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        Box::pin(async move {
            tokio::spawn(fire(worker, shutdown));
        })
    })
    .map_err(error)?;
    scheduler.add(job).await.map_err(error)?;
    Ok(None)
}

/// One firing of a cron worker: jitter, the flight lock, then attempts with backoff. Also for a
/// firing outside the schedule (the backup taken at start when the newest one is overdue).
pub async fn fire(worker: Arc<Worker>, shutdown: CancellationToken) {
    if shutdown.is_cancelled() {
        return;
    }
    if !worker.jitter.is_zero() {
        let delay = worker.jitter.mul_f64(rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    let _flight = match &worker.flight {
        Some(flight) => match flight.clone().try_lock_owned() {
            Ok(guard) => Some(guard),
            Err(_) => {
                worker.counters.count(&Outcome::Skipped("overlap"));
                warn!(
                    worker = worker.name,
                    "scheduled {} skipped: the previous one is still running, or another job holding the same lock (backups and defrag share one)",
                    worker.name
                );
                return;
            }
        },
        None => None,
    };
    let span = tracing::info_span!("worker", name = worker.name);
    attempts(&worker, &shutdown).instrument(span).await
}

/// Attempts until one does not fail, while retries are allowed.
async fn attempts(worker: &Worker, shutdown: &CancellationToken) {
    let now = Utc::now();
    let (window_end, interval) = match &worker.when {
        When::Cron(schedule) => (
            Some(
                schedule
                    .next_after(now)
                    .unwrap_or(now + chrono::Duration::hours(1)),
            ),
            Some(schedule.interval_at(now)),
        ),
        When::Continuous => (None, None),
    };
    let backoff = worker.backoff.unwrap_or(CONTINUOUS_BACKOFF);
    let mut delay = backoff.first(interval);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let outcome = (worker.run)().await;
        worker.counters.count(&outcome);
        let continuous = matches!(worker.when, When::Continuous);
        match outcome {
            Outcome::Stopped => return,
            // A continuous worker's attempt ended without failing: start it again at once.
            Outcome::Done if continuous => {
                delay = backoff.first(None);
                continue;
            }
            Outcome::Failed { .. } if worker.backoff.is_some() || continuous => {}
            // Nothing to do on this instance now (another leads): look again after the
            // initial delay, quietly, without growing it (leadership may come any time).
            Outcome::Skipped(_) | Outcome::Idle if continuous => {
                delay = backoff.first(None);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            _ => return,
        }
        if let Some(end) = window_end {
            let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            if retry_at >= end - chrono::Duration::seconds(1) {
                warn!(
                    worker = worker.name,
                    "no retry left before the next scheduled run"
                );
                return;
            }
        }
        info!(
            worker = worker.name,
            retry_in_seconds = delay.as_secs_f64(),
            "retrying the failed {}",
            worker.name
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(backoff.max);
    }
}

/// A continuous worker: attempts until `shutdown`.
async fn continuous(worker: Arc<Worker>, shutdown: CancellationToken) {
    let span = tracing::info_span!("worker", name = worker.name);
    attempts(&worker, &shutdown).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(outcomes: Vec<Outcome>, calls: Arc<AtomicUsize>) -> Run {
        let outcomes = Arc::new(outcomes);
        Arc::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let outcome = outcomes.get(n).cloned().unwrap_or(Outcome::Stopped);
            Box::pin(async move { outcome })
        })
    }

    #[test]
    fn the_first_delay_is_at_most_a_quarter_of_the_interval_and_at_least_a_second() {
        let b = Backoff::SCHEDULED;
        assert_eq!(
            b.first(Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.first(Some(Duration::from_secs(60))),
            Duration::from_secs(15)
        );
        assert_eq!(
            b.first(Some(Duration::from_secs(2))),
            Duration::from_secs(1)
        );
        assert_eq!(b.first(None), Duration::from_secs(30));
    }

    #[test]
    fn outcomes_are_counted_in_the_workers_vectors() {
        let registry = prometheus::Registry::new();
        let vec = |name: &str, label: &str| {
            let v = IntCounterVec::new(prometheus::Opts::new(name, name), &[label]).unwrap();
            registry.register(Box::new(v.clone())).unwrap();
            v
        };
        let counters = Counters {
            runs: Some(vec("runs", "result")),
            failures: Some(vec("failures", "stage")),
            skipped: Some(vec("skipped", "why")),
        };
        for outcome in [
            Outcome::Done,
            Outcome::Failed { stage: "upload" },
            Outcome::Skipped("overlap"),
            Outcome::Idle,
            Outcome::Stopped,
        ] {
            counters.count(&outcome);
        }
        let get =
            |v: &Option<IntCounterVec>, l: &str| v.as_ref().unwrap().with_label_values(&[l]).get();
        assert_eq!(get(&counters.runs, "success"), 1);
        assert_eq!(get(&counters.runs, "failure"), 1);
        assert_eq!(get(&counters.failures, "upload"), 1);
        assert_eq!(get(&counters.skipped, "overlap"), 1);
    }

    #[tokio::test]
    async fn a_continuous_worker_is_restarted_after_a_failure_and_when_done_until_it_stops() {
        let calls = Arc::new(AtomicUsize::new(0));
        let run = counting(
            vec![
                Outcome::Failed { stage: "capture" },
                Outcome::Done,
                Outcome::Done,
                Outcome::Stopped,
            ],
            calls.clone(),
        );
        let worker = Arc::new(Worker::continuous("capture", run, CONTINUOUS_BACKOFF));
        continuous(worker, CancellationToken::new()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_continuous_worker_stops_when_cancelled_during_its_backoff() {
        let calls = Arc::new(AtomicUsize::new(0));
        let run = counting(
            vec![Outcome::Failed { stage: "capture" }; 10],
            calls.clone(),
        );
        let worker = Arc::new(Worker::continuous("capture", run, CONTINUOUS_BACKOFF));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(continuous(worker, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_firing_that_finds_the_flight_held_is_skipped() {
        let calls = Arc::new(AtomicUsize::new(0));
        let flight = Arc::new(tokio::sync::Mutex::new(()));
        let schedule = Schedule::parse("0 * * * *", "UTC").unwrap();
        let mut worker = Worker::cron(
            "backup",
            &schedule,
            counting(vec![Outcome::Done], calls.clone()),
        );
        worker.flight = Some(flight.clone());
        let worker = Arc::new(worker);
        let held = flight.lock().await;
        fire(worker.clone(), CancellationToken::new()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        drop(held);
        fire(worker, CancellationToken::new()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
