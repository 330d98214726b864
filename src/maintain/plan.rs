//! The pure half of `maintain defrag`: which members to defragment, why, and in what order.

use serde::Serialize;

use crate::config::MaintenanceConfig;
use crate::units::human_bytes;

/// One member's sizes and role, as Status reported them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberFacts {
    pub id: String,
    pub name: String,
    pub endpoint: String,
    pub is_leader: bool,
    pub db_size: u64,
    pub db_size_in_use: u64,
    pub quota: u64,
    pub raft_index: u64,
}

impl MemberFacts {
    /// The free share of the file: what a defrag would give back, over the file size.
    pub fn fragmentation(&self) -> f64 {
        if self.db_size == 0 {
            0.0
        } else {
            self.reclaimable() as f64 / self.db_size as f64
        }
    }

    pub fn reclaimable(&self) -> u64 {
        self.db_size.saturating_sub(self.db_size_in_use)
    }

    /// `m1 (8e9e05c52164694d) at http://127.0.0.1:2379`.
    pub fn label(&self) -> String {
        format!("{} ({}) at {}", self.name, self.id, self.endpoint)
    }
}

/// Whether one member would be defragmented, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub defrag: bool,
    pub reason: String,
}

/// A member is defragmented only when both the free share and the free bytes reach their
/// thresholds: a small database is cheap to keep and a big one with little free space is
/// expensive to rewrite for nothing.
pub fn decide(member: &MemberFacts, thresholds: &MaintenanceConfig) -> Decision {
    let ratio = member.fragmentation();
    let free = member.reclaimable();
    let numbers = format!(
        "{:.0}% fragmented, {} reclaimable",
        ratio * 100.0,
        human_bytes(free)
    );
    if ratio < thresholds.min_fragmentation {
        return Decision {
            defrag: false,
            reason: format!(
                "skip: {numbers}, under min-fragmentation {:.0}%",
                thresholds.min_fragmentation * 100.0
            ),
        };
    }
    if free < thresholds.min_reclaim_bytes {
        return Decision {
            defrag: false,
            reason: format!(
                "skip: {numbers}, under min-reclaim-bytes {}",
                human_bytes(thresholds.min_reclaim_bytes)
            ),
        };
    }
    Decision {
        defrag: true,
        reason: format!("defrag: {numbers}"),
    }
}

/// The members to defragment, in order: followers first (each blocks only itself), the leader
/// last (a blocked leader stalls every write and may lose its role), one at a time.
pub fn order(members: &[MemberFacts], thresholds: &MaintenanceConfig) -> Vec<usize> {
    let chosen = |leader: bool| {
        members
            .iter()
            .enumerate()
            .filter(move |(_, m)| m.is_leader == leader && decide(m, thresholds).defrag)
            .map(|(i, _)| i)
    };
    chosen(false).chain(chosen(true)).collect()
}

/// After a round, a NOSPACE alarm may be disarmed only when every member is under its quota
/// (else etcd raises it again on the next write, or worse, accepts writes it cannot hold).
pub fn may_disarm(members: &[MemberFacts]) -> Result<(), StillFull> {
    match members.iter().find(|m| m.db_size >= m.quota) {
        Some(m) => Err(StillFull {
            member: m.label(),
            size: m.db_size,
            quota: m.quota,
        }),
        None => Ok(()),
    }
}

/// Why a NOSPACE alarm stays raised: a member still at or over its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member {member} is still at {} of its {} quota: delete or compact keys, defragment, then `etcdsafe maintain alarms --disarm`", human_bytes(*size), human_bytes(*quota))]
pub struct StillFull {
    pub member: String,
    pub size: u64,
    pub quota: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn member(name: &str, leader: bool, size: u64, in_use: u64) -> MemberFacts {
        MemberFacts {
            id: format!("{name}-id"),
            name: name.to_string(),
            endpoint: format!("http://{name}:2379"),
            is_leader: leader,
            db_size: size,
            db_size_in_use: in_use,
            quota: 2048 * MIB,
            raft_index: 10,
        }
    }

    fn thresholds(ratio: f64, bytes: u64) -> MaintenanceConfig {
        MaintenanceConfig {
            min_fragmentation: ratio,
            min_reclaim_bytes: bytes,
            ..MaintenanceConfig::default()
        }
    }

    #[test]
    fn decide_table() {
        // (db size, in use, min ratio, min bytes, defrag?, reason contains)
        let cases = [
            (
                1000 * MIB,
                400 * MIB,
                0.3,
                256 * MIB,
                true,
                "defrag: 60% fragmented",
            ),
            (
                1000 * MIB,
                800 * MIB,
                0.3,
                256 * MIB,
                false,
                "under min-fragmentation 30%",
            ),
            (
                100 * MIB,
                10 * MIB,
                0.3,
                256 * MIB,
                false,
                "under min-reclaim-bytes",
            ),
            (100 * MIB, 10 * MIB, 0.3, MIB, true, "90% fragmented"),
            (0, 0, 0.3, 0, false, "0% fragmented"),
            (100 * MIB, 70 * MIB, 0.3, 30 * MIB, true, "30% fragmented"),
            // Status can report in-use above the size during a write; never a negative free.
            (10 * MIB, 11 * MIB, 0.0, 0, true, "0 B reclaimable"),
        ];
        for (size, in_use, ratio, bytes, want, text) in cases {
            let d = decide(&member("m", false, size, in_use), &thresholds(ratio, bytes));
            assert_eq!(d.defrag, want, "{size} {in_use} {ratio} {bytes}: {d:?}");
            assert!(d.reason.contains(text), "{d:?} should contain {text:?}");
        }
    }

    #[test]
    fn followers_first_leader_last_skipped_left_out() {
        let t = thresholds(0.3, MIB);
        let members = [
            member("m0", true, 100 * MIB, 10 * MIB),
            member("m1", false, 100 * MIB, 10 * MIB),
            member("m2", false, 100 * MIB, 95 * MIB),
            member("m3", false, 100 * MIB, 20 * MIB),
        ];
        assert_eq!(order(&members, &t), vec![1, 3, 0]);
        let none_fragmented = [member("m0", true, 10 * MIB, 10 * MIB)];
        assert!(order(&none_fragmented, &t).is_empty());
    }

    #[test]
    fn disarm_only_when_every_member_is_under_quota() {
        let mut members = vec![
            member("m0", true, 100 * MIB, 10 * MIB),
            member("m1", false, 100 * MIB, 10 * MIB),
        ];
        assert!(may_disarm(&members).is_ok());
        members[1].quota = 100 * MIB;
        let why = may_disarm(&members).unwrap_err().to_string();
        assert!(why.contains("m1 (m1-id)") && why.contains("quota"), "{why}");
    }
}
