//! The service's keys (`schedule`, `server`, `coordination`, `lease`, ...) and `maintenance`
//! -> the service's and maintenance's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::problem::Problem;
use super::raw::{self, RawConfig};
use super::settings::{Coordination, LeaseSettings, ServiceSettings};
use super::validate::Paths;
use super::value::{read, ByteSize, HumanDuration, Parsed};
use super::{DeltasConfig, MaintenanceConfig};
use crate::schedule::{Schedule, ScheduleError};

const DEFAULT_SCHEDULE: &str = "0 */6 * * *";
const DEFAULT_AUDIT_SCHEDULE: &str = "30 3 * * 0";
const DEFAULT_LISTEN: &str = "127.0.0.1:9379";

/// The top-level keys the service reads.
pub(super) struct RawService {
    schedule: Option<String>,
    jitter: Option<Parsed<HumanDuration>>,
    timezone: Option<String>,
    server: Option<raw::RawServer>,
    coordination: Option<Parsed<Coordination>>,
    shutdown_timeout: Option<Parsed<HumanDuration>>,
    lease: Option<raw::RawLease>,
    audit_schedule: Option<String>,
}

impl RawService {
    /// Takes the service's keys out of `raw` (the time zone is shared with `maintenance`, so
    /// it stays).
    pub(super) fn take(raw: &mut RawConfig) -> RawService {
        RawService {
            schedule: raw.schedule.take(),
            jitter: raw.schedule_jitter.take(),
            timezone: raw.timezone.clone(),
            server: raw.server.take(),
            coordination: raw.coordination.take(),
            shutdown_timeout: raw.shutdown_timeout.take(),
            lease: raw.lease.take(),
            audit_schedule: raw.audit_schedule.take(),
        }
    }
}

pub(super) fn validate_service(
    raw: RawService,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> ServiceSettings {
    let (schedule, audit_schedule) = schedules(&raw, problems);
    let jitter = read(
        &raw.jitter,
        "schedule-jitter",
        ": write it like 30s or 5m",
        HumanDuration(Duration::ZERO),
        problems,
    );
    let shutdown_timeout = read(
        &raw.shutdown_timeout,
        "shutdown-timeout",
        ": write it like 30s or 5m",
        HumanDuration(Duration::from_secs(60)),
        problems,
    );
    let (listen, token_file) = server(raw.server.unwrap_or_default(), paths, problems);
    let coordination = read(
        &raw.coordination,
        "coordination",
        "",
        Coordination::default(),
        problems,
    );
    let lease = raw.lease.unwrap_or_default();
    ServiceSettings {
        audit_schedule,
        schedule,
        jitter: jitter.0,
        listen,
        token_file,
        coordination,
        shutdown_timeout: shutdown_timeout.0,
        lease: LeaseSettings {
            name: lease
                .name
                .unwrap_or_else(|| "etcdsafe-snapshot".to_string()),
            namespace: lease.namespace,
            identity: lease.identity,
        },
    }
}

/// The backup schedule and the audit schedule, both in `timezone`.
fn schedules(raw: &RawService, problems: &mut Vec<Problem>) -> (Schedule, Schedule) {
    let timezone = raw.timezone.as_deref().unwrap_or("UTC");
    let text = raw.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let schedule = Schedule::parse(text, timezone).unwrap_or_else(|e| {
        problems.push(Problem::keyed(e));
        Schedule::parse(DEFAULT_SCHEDULE, "UTC").expect("the default schedule parses")
    });
    let text = raw
        .audit_schedule
        .as_deref()
        .unwrap_or(DEFAULT_AUDIT_SCHEDULE);
    let audit = Schedule::parse(text, timezone).unwrap_or_else(|e| {
        // A bad timezone was reported above, under its own key.
        if !matches!(e, ScheduleError::BadTimezone { .. }) {
            problems.push(Problem::keyed(format!("audit-{e}")));
        }
        Schedule::parse(DEFAULT_AUDIT_SCHEDULE, "UTC").expect("the default audit schedule parses")
    });
    (schedule, audit)
}

/// Where the API listens, and its token file, required when it is reachable from elsewhere.
fn server(
    raw: raw::RawServer,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> (SocketAddr, Option<PathBuf>) {
    let text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen = text.parse().unwrap_or_else(|_| {
        problems.push(Problem::new(
            "server.listen",
            format!(
                "{text:?} is not HOST:PORT with an IP address, e.g. 127.0.0.1:9379 or 0.0.0.0:9379"
            ),
        ));
        SocketAddr::from(([127, 0, 0, 1], 9379))
    });
    let token_file = raw.token_file.map(|p| paths.resolve(p));
    if token_file.is_none() && !listen.ip().is_loopback() {
        problems.push(Problem::new(
            "server.token-file",
            format!("required because server.listen ({listen}) is not loopback: the API can take backups"),
        ));
    }
    (listen, token_file)
}

/// `deltas`: the interval must be between 1s and 1h (a segment per second at most; an RPO of
/// over an hour is what full backups are for), and max-bytes between 1MiB and 1GiB.
pub(super) fn validate_deltas(raw: raw::RawDeltas, problems: &mut Vec<Problem>) -> DeltasConfig {
    let default = DeltasConfig::default();
    let interval = read(
        &raw.interval,
        "deltas.interval",
        ": write it like 10s or 1m",
        HumanDuration(default.interval),
        problems,
    )
    .0;
    let max_bytes = read(
        &raw.max_bytes,
        "deltas.max-bytes",
        ": write it like 64MiB",
        ByteSize(default.max_bytes),
        problems,
    )
    .0;
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
        problems.push(Problem::new(
            "deltas.interval",
            format!(
                "{}s is out of range: use 1s to 1h (10s seals a segment every 10 seconds)",
                interval.as_secs_f64()
            ),
        ));
    }
    if !(1 << 20..=1 << 30).contains(&max_bytes) {
        problems.push(Problem::new(
            "deltas.max-bytes",
            format!("{max_bytes} bytes is out of range: use 1MiB to 1GiB (64MiB by default)"),
        ));
    }
    DeltasConfig {
        interval,
        max_bytes,
    }
}

pub(super) fn validate_maintenance(
    raw: Option<raw::RawMaintenance>,
    timezone: &str,
    problems: &mut Vec<Problem>,
) -> MaintenanceConfig {
    let mut config = MaintenanceConfig::default();
    let Some(raw) = raw else {
        return config;
    };
    if let Some(text) = &raw.defrag_schedule {
        match Schedule::parse(text, timezone) {
            Ok(schedule) => config.defrag_schedule = Some(schedule),
            // A bad timezone is reported under its own key by the service's validation.
            Err(ScheduleError::BadTimezone { .. }) => {}
            Err(e) => problems.push(Problem::keyed(format!("maintenance.defrag-{e}"))),
        }
    }
    let hint = ": write it like 256MiB or 268435456";
    let key = "maintenance.quota-backend-bytes";
    let quota = ByteSize(config.quota_backend_bytes);
    config.quota_backend_bytes = read(&raw.quota_backend_bytes, key, hint, quota, problems).0;
    if let Some(defrag) = raw.defrag {
        let key = "maintenance.defrag.min-reclaim-bytes";
        let reclaim = ByteSize(config.min_reclaim_bytes);
        config.min_reclaim_bytes = read(&defrag.min_reclaim_bytes, key, hint, reclaim, problems).0;
        match defrag.min_fragmentation {
            Some(ratio) if (0.0..1.0).contains(&ratio) => config.min_fragmentation = ratio,
            Some(ratio) => problems.push(Problem::new(
                "maintenance.defrag.min-fragmentation",
                format!("{ratio} is out of range: use a share from 0 to 1 such as 0.3 (30% of the file free)"),
            )),
            None => {}
        }
    }
    if config.quota_backend_bytes == 0 {
        problems.push(Problem::new(
            "maintenance.quota-backend-bytes",
            "0: give etcd's --quota-backend-bytes (2GiB when etcd runs without it)",
        ));
    }
    config
}
