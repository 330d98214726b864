//! Whole-cluster health, as checked before an upgrade: every member in `MemberList` answers
//! `Status` on one of its client URLs, and no alarm (NOSPACE, CORRUPT) is raised.

use std::fmt;

use etcd_client::{AlarmAction, AlarmType, Client};

use super::{EtcdError, Target};

/// One member as seen from the cluster.
#[derive(Debug, Clone)]
pub struct MemberHealth {
    pub id: u64,
    /// Empty for a member that was added but never started.
    pub name: String,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    /// What `Status` said, when a client URL answered.
    pub status: Option<MemberStatus>,
    /// Why no client URL answered, one entry per URL tried.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub endpoint: String,
    pub version: String,
    pub db_size: i64,
    pub leader: u64,
    pub raft_term: u64,
    /// Errors the member itself reports (`StatusResponse.errors`).
    pub errors: Vec<ReportedError>,
}

/// One error a member reports in its Status (`StatusResponse.errors`). etcd sends them as text;
/// they are parsed here, once, so code decides on the variant: etcd puts each raised alarm
/// there as `memberID:<id> alarm:<NAME>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedError {
    /// A raised alarm, `NOSPACE` or `CORRUPT` (etcd's names).
    Alarm { member_id: u64, kind: String },
    /// Anything else, as etcd said it.
    Other(String),
}

impl ReportedError {
    pub fn parse(text: &str) -> ReportedError {
        let mut member_id = None;
        let mut kind = None;
        for word in text.split_whitespace() {
            if let Some(id) = word.strip_prefix("memberID:") {
                member_id = id.parse::<u64>().ok();
            } else if let Some(name) = word.strip_prefix("alarm:") {
                kind = Some(name.to_string());
            } else {
                return ReportedError::Other(text.to_string());
            }
        }
        match (member_id, kind) {
            (Some(member_id), Some(kind)) => ReportedError::Alarm { member_id, kind },
            _ => ReportedError::Other(text.to_string()),
        }
    }

    /// A NOSPACE alarm (which a defrag round repairs).
    pub fn is_nospace(&self) -> bool {
        matches!(self, ReportedError::Alarm { kind, .. } if kind == "NOSPACE")
    }
}

impl std::fmt::Display for ReportedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportedError::Alarm { member_id, kind } => {
                write!(f, "memberID:{member_id} alarm:{kind}")
            }
            ReportedError::Other(text) => f.write_str(text),
        }
    }
}

/// `a; b; c`.
fn joined(errors: &[ReportedError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl MemberHealth {
    pub fn is_healthy(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.errors.is_empty())
    }

    /// `m1 (8e9e05c52164694d)`, or the id alone for an unstarted member.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("unstarted member {:x}", self.id)
        } else {
            format!("{} ({:x})", self.name, self.id)
        }
    }
}

/// A raised alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: u64,
    pub member_name: String,
    /// `NOSPACE` or `CORRUPT` (etcd's names).
    pub kind: String,
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = match self.kind.as_str() {
            "NOSPACE" => "the database hit its space quota: compact, defragment, then `etcdctl alarm disarm`",
            "CORRUPT" => "a member's data is corrupt: find it with `etcdctl endpoint hashkv`, replace it, then disarm",
            _ => "check etcd's log, fix the cause, then `etcdctl alarm disarm`",
        };
        let member = if self.member_name.is_empty() {
            format!("{:x}", self.member_id)
        } else {
            format!("{} ({:x})", self.member_name, self.member_id)
        };
        write!(f, "alarm {} on member {member}: {fix}", self.kind)
    }
}

/// What [`cluster_health`] found. Unreachable members and alarms are data here, not errors;
/// [`ClusterHealth::check`] turns them into a refusal.
#[derive(Debug, Clone)]
pub struct ClusterHealth {
    /// The configured endpoint MemberList and AlarmList were asked through.
    pub endpoint: String,
    pub cluster_id: u64,
    pub members: Vec<MemberHealth>,
    pub alarms: Vec<Alarm>,
    /// Why AlarmList failed, when it did (then `alarms` is empty and unknown).
    pub alarm_error: Option<std::sync::Arc<EtcdError>>,
}

/// Why a cluster is not healthy enough to upgrade.
#[derive(Debug, Clone, thiserror::Error)]
#[error("etcd cluster is not healthy: {}", problems.join("; "))]
pub struct Unhealthy {
    pub problems: Vec<String>,
}

impl ClusterHealth {
    pub fn is_healthy(&self) -> bool {
        self.problems().is_empty()
    }

    /// Each problem in one line, naming the member and its URLs.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for m in &self.members {
            if m.client_urls.is_empty() {
                problems.push(format!(
                    "member {} has no client URL (added but never started?): start it or remove it with `etcdctl member remove {:x}`",
                    m.label(),
                    m.id
                ));
                continue;
            }
            match &m.status {
                None => problems.push(format!(
                    "member {} does not answer Status at {}: {}",
                    m.label(),
                    m.client_urls.join(", "),
                    m.errors.join("; ")
                )),
                Some(s) if !s.errors.is_empty() => problems.push(format!(
                    "member {} at {} reports errors: {}",
                    m.label(),
                    s.endpoint,
                    joined(&s.errors)
                )),
                Some(_) => {}
            }
        }
        let leaders: Vec<u64> = self
            .members
            .iter()
            .filter_map(|m| m.status.as_ref().map(|s| s.leader))
            .collect();
        if !leaders.is_empty() && leaders.iter().all(|l| *l == 0) {
            problems.push("no member knows a raft leader: the cluster has lost quorum".to_string());
        }
        if let Some(error) = &self.alarm_error {
            problems.push(format!(
                "cannot tell whether an alarm is raised: {error} (a leader election may be under way; retry shortly)"
            ));
        }
        problems.extend(self.alarms.iter().map(|a| a.to_string()));
        problems
    }

    /// Ok when every member answers and no alarm is raised.
    pub fn check(&self) -> Result<(), Unhealthy> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Unhealthy { problems })
        }
    }

    /// The largest database among the members that answered, in bytes.
    pub fn max_db_size(&self) -> u64 {
        self.members
            .iter()
            .filter_map(|m| m.status.as_ref())
            .map(|s| s.db_size.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// One line for a plan: `3 members answer (m0 3.5.1 leader, m1 3.5.1, m2 3.5.1), no alarms`.
    pub fn summary(&self) -> String {
        let leader = self
            .members
            .iter()
            .filter_map(|m| m.status.as_ref())
            .map(|s| s.leader)
            .find(|l| *l != 0)
            .unwrap_or(0);
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                let name = if m.name.is_empty() {
                    format!("{:x}", m.id)
                } else {
                    m.name.clone()
                };
                match &m.status {
                    Some(s) => format!(
                        "{name} {} {}{}",
                        s.endpoint,
                        s.version,
                        if m.id == leader { " leader" } else { "" }
                    ),
                    None => format!("{name} DOWN"),
                }
            })
            .collect();
        let healthy = self.members.iter().filter(|m| m.is_healthy()).count();
        format!(
            "{healthy}/{} members answer ({}), {}",
            self.members.len(),
            members.join(", "),
            if self.alarm_error.is_some() {
                "alarms unknown".to_string()
            } else if self.alarms.is_empty() {
                "no alarms".to_string()
            } else {
                let kinds: Vec<&str> = self.alarms.iter().map(|a| a.kind.as_str()).collect();
                format!("alarms: {}", kinds.join(", "))
            }
        )
    }
}

/// Asks the cluster (through the first configured endpoint that answers) for its members and
/// alarms, then asks every member for its status on its own client URLs, concurrently.
///
/// Errors only when no configured endpoint answers or MemberList/AlarmList fail; members that do
/// not answer and raised alarms are reported in the result.
pub async fn cluster_health(target: &Target) -> Result<ClusterHealth, EtcdError> {
    let (endpoint, mut client) = target.connect_any().await?;
    let timeout = target.dial_timeout;
    let list = super::timed(&endpoint, "MemberList", timeout, client.member_list()).await?;
    let cluster_id = list.header().map(|h| h.cluster_id()).unwrap_or_default();
    let members = list.members().to_vec();
    // AlarmList goes through raft: right after a leader is lost it can time out, and that must
    // not hide which member is down, so its failure is a finding too.
    let (alarms, statuses) = tokio::join!(
        super::timed(
            &endpoint,
            "AlarmList",
            timeout,
            client.alarm(AlarmAction::Get, AlarmType::None, None),
        ),
        futures::future::join_all(
            members
                .iter()
                .map(|m| member_status(target, m.client_urls().to_vec())),
        )
    );
    let members: Vec<MemberHealth> = members
        .iter()
        .zip(statuses)
        .map(|(m, (status, errors))| MemberHealth {
            id: m.id(),
            name: m.name().to_string(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
            status,
            errors,
        })
        .collect();
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let (alarms, alarm_error) = match alarms {
        Ok(response) => (
            response
                .alarms()
                .iter()
                .filter(|a| a.alarm() != AlarmType::None)
                .map(|a| Alarm {
                    member_id: a.member_id(),
                    member_name: name_of(a.member_id()),
                    kind: a.alarm().as_str_name().to_string(),
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(std::sync::Arc::new(e))),
    };
    Ok(ClusterHealth {
        endpoint,
        cluster_id,
        members,
        alarms,
        alarm_error,
    })
}

/// Status from the first of a member's client URLs that answers, or why none did.
async fn member_status(target: &Target, urls: Vec<String>) -> (Option<MemberStatus>, Vec<String>) {
    let mut errors = Vec::new();
    for url in urls {
        match status_at(target, &url).await {
            Ok(status) => return (Some(status), errors),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (None, errors)
}

async fn status_at(target: &Target, url: &str) -> Result<MemberStatus, EtcdError> {
    let mut client: Client = target.connect(url).await?;
    let status = super::timed(url, "Status", target.dial_timeout, client.status()).await?;
    Ok(MemberStatus {
        endpoint: url.to_string(),
        version: status.version().to_string(),
        db_size: status.db_size(),
        leader: status.leader(),
        raft_term: status.raft_term(),
        errors: status
            .errors()
            .iter()
            .map(|e| ReportedError::parse(e))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_alarms_are_parsed_and_the_rest_kept() {
        let nospace = ReportedError::parse("memberID:9372538179322589801 alarm:NOSPACE ");
        assert_eq!(
            nospace,
            ReportedError::Alarm {
                member_id: 9372538179322589801,
                kind: "NOSPACE".to_string()
            }
        );
        assert!(nospace.is_nospace());
        assert!(!ReportedError::parse("memberID:1 alarm:CORRUPT").is_nospace());
        let other = ReportedError::parse("raft: stopped alarm:NOSPACE");
        assert!(!other.is_nospace());
        assert_eq!(other.to_string(), "raft: stopped alarm:NOSPACE");
    }

    fn member(id: u64, name: &str, up: bool) -> MemberHealth {
        MemberHealth {
            id,
            name: name.to_string(),
            client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
            is_learner: false,
            status: up.then(|| MemberStatus {
                endpoint: format!("http://127.0.0.1:{}", 2379 + id),
                version: "3.5.1".to_string(),
                db_size: 20480 * id as i64,
                leader: 1,
                raft_term: 2,
                errors: vec![],
            }),
            errors: if up {
                vec![]
            } else {
                vec!["cannot reach etcd: connection refused".to_string()]
            },
        }
    }

    #[test]
    fn a_down_member_and_an_alarm_are_named() {
        let health = ClusterHealth {
            endpoint: "http://127.0.0.1:2380".to_string(),
            cluster_id: 7,
            members: vec![
                member(1, "m0", true),
                member(2, "m1", true),
                member(3, "m2", false),
            ],
            alarms: vec![Alarm {
                member_id: 1,
                member_name: "m0".to_string(),
                kind: "NOSPACE".to_string(),
            }],
            alarm_error: None,
        };
        let problems = health.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("m2 (3)") && problems[0].contains("127.0.0.1:2382"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("NOSPACE") && problems[1].contains("m0"),
            "{}",
            problems[1]
        );
        assert!(health.check().is_err());
        assert_eq!(health.max_db_size(), 40960);
        assert!(
            health.summary().contains("2/3 members answer"),
            "{}",
            health.summary()
        );
    }

    #[test]
    fn all_up_no_alarms_is_healthy() {
        let health = ClusterHealth {
            endpoint: "http://127.0.0.1:2380".to_string(),
            cluster_id: 7,
            members: vec![member(1, "m0", true), member(2, "m1", true)],
            alarms: vec![],
            alarm_error: None,
        };
        assert!(health.check().is_ok());
        assert!(
            health
                .summary()
                .contains("m0 http://127.0.0.1:2380 3.5.1 leader"),
            "{}",
            health.summary()
        );
    }

    #[test]
    fn an_unstarted_member_and_an_unknown_alarm_state_are_problems() {
        let mut m = member(9, "", false);
        m.client_urls.clear();
        let health = ClusterHealth {
            endpoint: String::new(),
            cluster_id: 1,
            members: vec![member(1, "m0", true), m],
            alarms: vec![],
            alarm_error: Some(std::sync::Arc::new(EtcdError::Timeout {
                endpoint: "x".to_string(),
                call: "AlarmList",
                timeout: std::time::Duration::from_secs(5),
            })),
        };
        let problems = health.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("unstarted member 9"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("cannot tell whether an alarm is raised"),
            "{}",
            problems[1]
        );
        assert!(
            health.summary().ends_with("alarms unknown"),
            "{}",
            health.summary()
        );
    }
}
