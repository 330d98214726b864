//! `etcdsafe maintain`: rolling, health-gated defragmentation and NOSPACE recovery.
//!
//! `maintain defrag`, in this order (docs/MAINTENANCE.md says why):
//! 1. Gate: every member answers Status without errors, a leader is known, and no alarm other
//!    than NOSPACE is raised; else it refuses, naming the member, before anything happens.
//! 2. Plan ([`plan::decide`], [`plan::order`]): members over both thresholds, followers first,
//!    the leader last.
//! 3. A verified backup through the normal pipeline, reason `pre-maintenance` (unless
//!    `--no-backup`, and only when there is something to defragment).
//! 4. One member at a time: check the others are healthy with quorum, Defragment, then wait
//!    until the member answers again and has applied the leader's raft index (within
//!    [`MAX_LAG`]). The first failure stops the round and names the member.
//! 5. After a successful round, a NOSPACE alarm is disarmed when every member is under its quota.

pub mod plan;

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};
use serde::Serialize;

use crate::config::{Config, MaintenanceConfig};
use crate::etcd::{self, health, EtcdError, Target};
use crate::pipeline::{self, BackupError, SaveRequest};
use crate::storage::ObjectStore;
use crate::units::human_bytes;

pub use plan::{Decision, MemberFacts};

/// The `reason` of the backup taken before a defragmentation round.
pub const REASON: &str = "pre-maintenance";
/// How far (raft entries) a defragmented member's applied index may trail the leader's index
/// taken just before, for the member to count as caught up.
pub const MAX_LAG: u64 = 16;
/// How long a member gets to answer and catch up after its defrag.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Defragment rewrites the whole file; it is given this long at least.
pub const DEFRAG_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("maintenance refused, nothing was changed: {}", problems.join("; "))]
    Refused { problems: Vec<String> },
    #[error("the pre-maintenance backup failed ({} stage), nothing was defragmented: {}", source.stage(), source.to_string().replace('\n', " "))]
    Backup {
        #[source]
        source: BackupError,
    },
    #[error("defrag stopped before member {member}: {problem}; members not yet defragmented were left as they were")]
    NotSafe { member: String, problem: String },
    #[error("defrag stopped before member {member}: {source}; members not yet defragmented were left as they were")]
    HealthUnknown {
        member: String,
        #[source]
        source: EtcdError,
    },
    #[error("defrag of member {member} failed: {source}; the round stopped, members not yet defragmented were left as they were: check that member's etcd log")]
    Defrag {
        member: String,
        #[source]
        source: EtcdError,
    },
    #[error("member {member} did not come back healthy and caught up within {timeout:?} after its defrag: {last}; the round stopped: check that member's etcd log")]
    NotCaughtUp {
        member: String,
        timeout: Duration,
        last: String,
    },
    #[error("NOSPACE alarm left raised: {0}")]
    StillFull(#[from] plan::StillFull),
}

/// One member in `maintain status` and in the plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    #[serde(flatten)]
    pub facts: MemberFacts,
    pub fragmentation: f64,
    pub alarms: Vec<String>,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The whole cluster as `maintain status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub members: Vec<MemberRow>,
    /// Why the cluster may not be maintained now (down members, alarms other than NOSPACE).
    pub problems: Vec<String>,
    /// Members (ids) with a NOSPACE alarm.
    pub nospace: Vec<u64>,
    /// The defrag order, as member names.
    pub order: Vec<String>,
}

/// One member defragmented.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    pub id: String,
    pub endpoint: String,
    pub leader: bool,
    pub db_size_before: u64,
    pub db_size_after: u64,
    pub seconds: f64,
}

/// What a round did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    pub status: ClusterStatus,
    pub backup: Option<String>,
    pub defragmented: Vec<Step>,
    pub disarmed: Vec<String>,
}

/// Status of every member on its own client URL, plus the alarms, with each decision.
pub async fn status(
    target: &Target,
    thresholds: &MaintenanceConfig,
) -> Result<ClusterStatus, EtcdError> {
    let health = health::cluster_health(target).await?;
    let nospace: Vec<u64> = health
        .alarms
        .iter()
        .filter(|a| a.kind == "NOSPACE")
        .map(|a| a.member_id)
        .collect();
    let mut problems = without_nospace(&health).problems();
    let mut members = Vec::new();
    for m in &health.members {
        let Some(s) = &m.status else { continue };
        let facts = match member_facts(target, &s.endpoint, thresholds).await {
            Ok(f) => MemberFacts {
                name: m.name.clone(),
                ..f
            },
            Err(e) => {
                problems.push(format!("member {}: {e}", m.label()));
                continue;
            }
        };
        let alarms = health
            .alarms
            .iter()
            .filter(|a| a.member_id == m.id)
            .map(|a| a.kind.clone())
            .collect();
        members.push(MemberRow {
            fragmentation: facts.fragmentation(),
            decision: plan::decide(&facts, thresholds),
            facts,
            alarms,
        });
    }
    let facts: Vec<MemberFacts> = members.iter().map(|r| r.facts.clone()).collect();
    let order = plan::order(&facts, thresholds)
        .into_iter()
        .map(|i| facts[i].name.clone())
        .collect();
    Ok(ClusterStatus {
        members,
        problems,
        nospace,
        order,
    })
}

/// NOSPACE is what a defrag round repairs, so it does not block one; every other alarm and
/// every other error a member reports does.
fn without_nospace(health: &health::ClusterHealth) -> health::ClusterHealth {
    let mut gate = health.clone();
    gate.alarms.retain(|a| a.kind != "NOSPACE");
    for m in &mut gate.members {
        if let Some(s) = &mut m.status {
            s.errors.retain(|e| !e.is_nospace());
        }
    }
    gate
}

async fn member_facts(
    target: &Target,
    endpoint: &str,
    thresholds: &MaintenanceConfig,
) -> Result<MemberFacts, EtcdError> {
    let mut client = target.connect(endpoint).await?;
    let s = etcd::timed(endpoint, "Status", target.dial_timeout, client.status()).await?;
    let id = s.header().map(|h| h.member_id()).unwrap_or_default();
    let quota = if s.db_size_quota() > 0 {
        s.db_size_quota() as u64
    } else {
        thresholds.quota_backend_bytes
    };
    Ok(MemberFacts {
        id: format!("{id:x}"),
        name: String::new(),
        endpoint: endpoint.to_string(),
        is_leader: id != 0 && s.leader() == id,
        db_size: s.db_size().max(0) as u64,
        db_size_in_use: s.raft_used_db_size().max(0) as u64,
        quota,
        raft_index: s.raft_applied_index().max(s.raft_index()),
    })
}

/// `maintain defrag`. With `store` None no backup is taken (`--no-backup`).
pub async fn defrag(
    config: &Config,
    store: Option<&dyn ObjectStore>,
    dry_run: bool,
) -> Result<Report, MaintainError> {
    let target = Target::resolve(&config.etcd)?;
    let thresholds = &config.maintenance;
    let mut report = Report {
        dry_run,
        status: status(&target, thresholds).await?,
        backup: None,
        defragmented: Vec::new(),
        disarmed: Vec::new(),
    };
    if dry_run {
        return Ok(report);
    }
    if !report.status.problems.is_empty() {
        return Err(MaintainError::Refused {
            problems: report.status.problems.clone(),
        });
    }
    let facts: Vec<MemberFacts> = report
        .status
        .members
        .iter()
        .map(|r| r.facts.clone())
        .collect();
    let order = plan::order(&facts, thresholds);
    for r in &report.status.members {
        if !r.decision.defrag {
            tracing::info!(member = %r.facts.label(), reason = %r.decision.reason, "not defragmenting");
        }
    }
    if let (Some(store), false) = (store, order.is_empty()) {
        let request = SaveRequest {
            reason: REASON.to_string(),
            labels: Default::default(),
        };
        let manifest = pipeline::save(config, store, &request)
            .await
            .map_err(|source| MaintainError::Backup { source })?;
        tracing::info!(backup = %manifest.id, "pre-maintenance backup stored");
        report.backup = Some(manifest.id);
    }
    // During the round any member can answer cluster-wide calls: the configured endpoints
    // first, then every member's own, so one member going down is named, not a dead end.
    let mut round = target.clone();
    for m in &facts {
        if !round.endpoints.contains(&m.endpoint) {
            round.endpoints.push(m.endpoint.clone());
        }
    }
    for i in order {
        let step = defrag_one(&round, &facts[i], &facts).await?;
        report.defragmented.push(step);
    }
    if !report.status.nospace.is_empty() {
        let after = status(&target, thresholds).await?;
        let now: Vec<MemberFacts> = after.members.iter().map(|r| r.facts.clone()).collect();
        plan::may_disarm(&now).map_err(MaintainError::StillFull)?;
        report.disarmed = disarm(&target).await?;
    }
    Ok(report)
}

async fn defrag_one(
    target: &Target,
    member: &MemberFacts,
    all: &[MemberFacts],
) -> Result<Step, MaintainError> {
    let label = member.label();
    let health =
        health::cluster_health(target)
            .await
            .map_err(|source| MaintainError::HealthUnknown {
                member: label.clone(),
                source,
            })?;
    if let Some(problem) = without_nospace(&health).problems().into_iter().next() {
        return Err(MaintainError::NotSafe {
            member: label,
            problem,
        });
    }
    let started = Instant::now();
    tracing::info!(member = %label, leader = member.is_leader, "defragmenting");
    let mut client =
        target
            .connect(&member.endpoint)
            .await
            .map_err(|source| MaintainError::Defrag {
                member: label.clone(),
                source,
            })?;
    let timeout = DEFRAG_TIMEOUT.max(target.stream_timeout);
    etcd::timed(&member.endpoint, "Defragment", timeout, client.defragment())
        .await
        .map_err(|source| MaintainError::Defrag {
            member: label.clone(),
            source,
        })?;
    let after = wait_caught_up(target, member, all).await?;
    Ok(Step {
        name: member.name.clone(),
        id: member.id.clone(),
        endpoint: member.endpoint.clone(),
        leader: member.is_leader,
        db_size_before: member.db_size,
        db_size_after: after,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Waits until the member answers Status without errors and has applied what the leader had
/// committed just before; returns its db size.
async fn wait_caught_up(
    target: &Target,
    member: &MemberFacts,
    all: &[MemberFacts],
) -> Result<u64, MaintainError> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let mut last;
    loop {
        match caught_up(target, member, all).await {
            Ok(Ok(size)) => return Ok(size),
            Ok(Err(why)) => last = why,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(MaintainError::NotCaughtUp {
                member: member.label(),
                timeout: CATCH_UP_TIMEOUT,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn caught_up(
    target: &Target,
    member: &MemberFacts,
    all: &[MemberFacts],
) -> Result<Result<u64, String>, EtcdError> {
    let mut client: Client = target.connect(&member.endpoint).await?;
    let timeout = target.dial_timeout;
    let own = etcd::timed(&member.endpoint, "Status", timeout, client.status()).await?;
    let errors: Vec<String> = own
        .errors()
        .iter()
        .filter(|e| !health::ReportedError::parse(e).is_nospace())
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Ok(Err(format!("it reports errors: {errors:?}")));
    }
    if own.leader() == 0 {
        return Ok(Err("it knows no leader".to_string()));
    }
    let leader_index = if Some(own.leader()) == own.header().map(|h| h.member_id()) {
        own.raft_index()
    } else {
        // The leader's index, read before the member's applied one.
        let leader_id = format!("{:x}", own.leader());
        let Some(leader) = all.iter().find(|m| m.id == leader_id) else {
            return Ok(Err(format!("its leader {leader_id} is not a known member")));
        };
        let mut leader_client = match target.connect(&leader.endpoint).await {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(format!(
                    "its leader {} does not answer: {e}",
                    leader.label()
                )))
            }
        };
        etcd::timed(&leader.endpoint, "Status", timeout, leader_client.status())
            .await?
            .raft_index()
    };
    let own = etcd::timed(&member.endpoint, "Status", timeout, client.status()).await?;
    let applied = own.raft_applied_index().max(own.raft_index());
    if applied + MAX_LAG < leader_index {
        return Ok(Err(format!(
            "raft index {applied}, the leader's {leader_index}"
        )));
    }
    Ok(Ok(own.db_size().max(0) as u64))
}

/// The raised alarms, as `member-name ALARM`.
pub async fn alarms(target: &Target) -> Result<Vec<health::Alarm>, EtcdError> {
    let health = health::cluster_health(target).await?;
    match health.alarm_error {
        Some(e) => Err(EtcdError::Reported(e)),
        None => Ok(health.alarms),
    }
}

/// Disarms every NOSPACE alarm, member by member (etcd matches the member id); returns
/// `name ALARM` for each one disarmed.
pub async fn disarm(target: &Target) -> Result<Vec<String>, EtcdError> {
    let raised = alarms(target).await?;
    let (endpoint, mut client) = target.connect_any().await?;
    let mut done = Vec::new();
    for alarm in raised.iter().filter(|a| a.kind == "NOSPACE") {
        let mut options = AlarmOptions::new();
        options.with_member(alarm.member_id);
        etcd::timed(
            &endpoint,
            "Alarm(DEACTIVATE)",
            target.dial_timeout,
            client.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)),
        )
        .await?;
        done.push(format!(
            "{} ({:x}) NOSPACE",
            alarm.member_name, alarm.member_id
        ));
    }
    Ok(done)
}

/// `maintain status` / the dry-run plan as a table.
pub fn render_table(status: &ClusterStatus) -> String {
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|r| {
            let f = &r.facts;
            vec![
                f.id.clone(),
                f.name.clone(),
                f.endpoint.clone(),
                if f.is_leader { "leader" } else { "follower" }.to_string(),
                human_bytes(f.db_size),
                human_bytes(f.db_size_in_use),
                format!("{:.0}%", r.fragmentation * 100.0),
                human_bytes(f.quota),
                if r.alarms.is_empty() {
                    "-".to_string()
                } else {
                    r.alarms.join(",")
                },
                r.decision.reason.clone(),
            ]
        })
        .collect();
    let mut text = crate::output::table(
        &[
            "ID", "NAME", "ENDPOINT", "ROLE", "DB SIZE", "IN USE", "FRAG", "QUOTA", "ALARMS",
            "DEFRAG",
        ],
        &rows,
    );
    if status.order.is_empty() {
        text.push_str("order: nothing to defragment\n");
    } else {
        text.push_str(&format!("order: {}\n", status.order.join(" -> ")));
    }
    for p in &status.problems {
        text.push_str(&format!("blocked: {p}\n"));
    }
    text
}
