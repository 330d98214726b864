//! The service's background jobs as workers: a name, a schedule, and what one run does. Every
//! job the service runs (backups, the integrity audit, defragmentation, the etcd status
//! metrics) is registered through [`add`], so each fires on its schedule in its own task and a
//! slow run never delays the scheduler. What a run does on failure (the backup's backoff, the
//! metrics it updates) belongs to the run itself: `Service::scheduled_tick` and friends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::StartError;

/// One run of a worker.
pub type Run = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A background job.
pub struct Worker {
    /// What the job is, as errors name it ("the backup job", "the integrity audit").
    pub name: &'static str,
    /// A six-field cron expression (seconds first) and its timezone.
    pub cron: String,
    pub timezone: Tz,
    pub run: Run,
}

impl Worker {
    /// A worker from a service [`super::schedule::Schedule`].
    pub fn on(name: &'static str, schedule: &super::schedule::Schedule, run: Run) -> Worker {
        Worker {
            name,
            cron: schedule.with_seconds().to_string(),
            timezone: schedule.timezone(),
            run,
        }
    }
}

/// Adds `worker` to `scheduler`: each firing spawns one run.
pub async fn add(scheduler: &JobScheduler, worker: Worker) -> Result<(), StartError> {
    let Worker {
        name,
        cron,
        timezone,
        run,
    } = worker;
    let error = move |source| StartError::Scheduler { what: name, source };
    let job = Job::new_async_tz(cron.as_str(), timezone, move |_, _| {
        let run = run.clone();
        Box::pin(async move {
            tokio::spawn(run());
        })
    })
    .map_err(error)?;
    scheduler.add(job).await.map_err(error)?;
    Ok(())
}
