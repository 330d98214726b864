//! Retention: which backups to keep and which to forget, as a pure function.
//!
//! The semantics follow restic's `forget`:
//!
//! * Backups are walked newest → oldest (ties on `created_at` broken by id, see [`plan`]).
//! * `keep-last N` keeps the N newest backups.
//! * `keep-hourly/daily/weekly/monthly/yearly N` divide time into calendar buckets on natural
//!   UTC boundaries (hour, day, ISO week, month, year) and keep the newest backup of each of the
//!   N most recent buckets *that contain a backup*: empty buckets do not use up the count.
//!   Weeks are ISO weeks, named by their ISO year: 2021-01-01 belongs to `2020-W53`.
//! * `keep-within D` keeps every backup created less than D before the newest backup (not
//!   before "now"), so a cluster that stopped backing up does not lose its history. The
//!   boundary is exclusive, as in restic: a backup exactly D older than the newest is not kept
//!   by this rule. With continuous backup, the window is measured from the newest backup or
//!   the newest sealed point of a delta chain, whichever is later, and a backup older than the
//!   window whose chain has a point inside it is kept too (`within D (its delta chain)`): a
//!   chain restores only from its own full backup, so this is what keeps every point inside
//!   the window restorable. Points are kept and deleted with their backup, whole chains.
//! * A backup is kept when any rule keeps it, and every rule that applies is recorded as a
//!   reason, so a dry run explains itself.
//!
//! On top of restic's rules:
//!
//! * A backup labelled `pin=true` is always kept (`pinned`).
//! * Pre-upgrade backups (`reason == "pre-upgrade"`) are counted on their own: the newest
//!   `keep-pre-upgrade` of them are kept (`pinned: pre-upgrade v1.23.3`, the version taken from
//!   the `to` label). They are ordinary backups as well: all of them take part in keep-last,
//!   the calendar rules and keep-within, so one beyond the pre-upgrade count survives if an
//!   ordinary rule wants it, and one within the count still fills (and uses up) a calendar
//!   bucket, exactly like any other backup.
//! * Pre-maintenance backups (`reason == "pre-maintenance"`, taken by `maintain defrag`) are
//!   kept the same way, with the same `keep-pre-upgrade` count but counted apart
//!   (`pinned: pre-maintenance`), so routine defrags never push a pre-upgrade backup out.
//! * The newest backup is never forgotten (`newest`).
//! * A backup dated after `now` is never forgotten (`dated in the future`). Such backups are
//!   evidence of a skewed clock, so they are kept *outside* the counting rules: they use up no
//!   keep-last, calendar or pre-upgrade slot and they are not the anchor of keep-within. The
//!   rules, and the `newest` guarantee, apply to the backups dated up to `now`, so a backup
//!   stamped in 2099 cannot push the real ones out.
//! * `min-keep M`: when fewer than M backups are kept after every other rule, the newest
//!   forgotten backups are kept as well (`min-keep`) until M are kept or none is left.
//!
//! Callers pass only committed, verified backups; this module never looks at storage.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// The `reason` of a backup taken just before an upgrade.
pub const PRE_UPGRADE_REASON: &str = "pre-upgrade";
/// The `reason` of a backup taken just before `maintain defrag`; kept like pre-upgrade ones.
pub const PRE_MAINTENANCE_REASON: &str = "pre-maintenance";
/// The label that pins a backup when its value is `true` (case-insensitive).
pub const PIN_LABEL: &str = "pin";
/// The label that names the version a pre-upgrade backup was taken before upgrading to.
pub const UPGRADE_TO_LABEL: &str = "to";
/// Column headers for the rows of [`render_rows`].
pub const TABLE_HEADERS: [&str; 4] = ["ID", "CREATED", "ACTION", "REASONS"];

/// The `retention:` section of the configuration file, as written.
///
/// Every key is optional; an absent count means 0 (the rule is off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// A humantime duration such as `48h`, `7d` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pre_upgrade: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_keep: Option<u32>,
}

/// Why a retention section is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: empty policy would delete every backup; set at least one keep-* rule")]
    EmptyPolicy,
    #[error(
        "retention.keep-within: {value:?} is not a usable duration ({source}); \
         write it like 48h, 7d or 1h30m"
    )]
    InvalidKeepWithin {
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error(
        "retention.keep-within: {value:?} is not a usable duration (it is too long); \
         write it like 48h, 7d or 1h30m"
    )]
    KeepWithinTooLong { value: String },
}

/// A validated retention policy. Build it with [`Policy::from_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    last: u32,
    hourly: u32,
    daily: u32,
    weekly: u32,
    monthly: u32,
    yearly: u32,
    within: Option<KeepWithin>,
    pre_upgrade: u32,
    min_keep: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeepWithin {
    /// As configured (trimmed), for the reason text.
    text: String,
    duration: TimeDelta,
}

impl Policy {
    /// Validates a raw section.
    ///
    /// A `keep-within` of zero (`0s`) counts as absent, like a count of 0. A policy in which
    /// nothing is set (every count 0 or absent, no keep-within) is refused: applied, it would
    /// forget everything but the newest backup, which is never what someone meant.
    pub fn from_raw(raw: &RawPolicy) -> Result<Policy, RetentionError> {
        let within = match &raw.keep_within {
            None => None,
            Some(value) => parse_within(value)?,
        };
        let policy = Policy {
            last: raw.keep_last.unwrap_or(0),
            hourly: raw.keep_hourly.unwrap_or(0),
            daily: raw.keep_daily.unwrap_or(0),
            weekly: raw.keep_weekly.unwrap_or(0),
            monthly: raw.keep_monthly.unwrap_or(0),
            yearly: raw.keep_yearly.unwrap_or(0),
            within,
            pre_upgrade: raw.keep_pre_upgrade.unwrap_or(0),
            min_keep: raw.min_keep.unwrap_or(0),
        };
        if policy.is_empty() {
            return Err(RetentionError::EmptyPolicy);
        }
        Ok(policy)
    }

    fn is_empty(&self) -> bool {
        self.within.is_none()
            && [
                self.last,
                self.hourly,
                self.daily,
                self.weekly,
                self.monthly,
                self.yearly,
                self.pre_upgrade,
                self.min_keep,
            ]
            .iter()
            .all(|n| *n == 0)
    }

    /// The `min-keep` floor (0 when unset).
    pub fn min_keep(&self) -> u32 {
        self.min_keep
    }
}

fn parse_within(value: &str) -> Result<Option<KeepWithin>, RetentionError> {
    let text = value.trim();
    let HumanDuration(std_duration) =
        HumanDuration::parse(value).map_err(|source| RetentionError::InvalidKeepWithin {
            value: value.to_string(),
            source,
        })?;
    if std_duration.is_zero() {
        return Ok(None);
    }
    let duration =
        TimeDelta::from_std(std_duration).map_err(|_| RetentionError::KeepWithinTooLong {
            value: value.to_string(),
        })?;
    Ok(Some(KeepWithin {
        text: text.to_string(),
        duration,
    }))
}

impl fmt::Display for Policy {
    /// `keep-last 3, keep-daily 7, keep-within 48h, min-keep 3`: the rules that are on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        for (name, n) in [
            ("keep-last", self.last),
            ("keep-hourly", self.hourly),
            ("keep-daily", self.daily),
            ("keep-weekly", self.weekly),
            ("keep-monthly", self.monthly),
            ("keep-yearly", self.yearly),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        if let Some(within) = &self.within {
            parts.push(format!("keep-within {}", within.text));
        }
        if self.pre_upgrade > 0 {
            parts.push(format!("keep-pre-upgrade {}", self.pre_upgrade));
        }
        if self.min_keep > 0 {
            parts.push(format!("min-keep {}", self.min_keep));
        }
        f.write_str(&parts.join(", "))
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Why it was taken: `scheduled`, `manual`, `pre-upgrade`, ...
    pub reason: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the newest point of this backup's delta chain was sealed (continuous backup):
    /// `keep-within` keeps a backup whose chain reaches into the window, so every point inside
    /// the window stays restorable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_until: Option<DateTime<Utc>>,
}

impl Candidate {
    pub fn new(
        id: impl Into<String>,
        created_at: DateTime<Utc>,
        reason: impl Into<String>,
    ) -> Self {
        Candidate {
            id: id.into(),
            created_at,
            reason: reason.into(),
            labels: BTreeMap::new(),
            points_until: None,
        }
    }

    fn is_pinned(&self) -> bool {
        self.labels
            .get(PIN_LABEL)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn is_pre_upgrade(&self) -> bool {
        self.reason == PRE_UPGRADE_REASON
    }

    fn is_pre_maintenance(&self) -> bool {
        self.reason == PRE_MAINTENANCE_REASON
    }
}

/// What happens to one backup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub keep: bool,
    /// Every rule that keeps it; empty when it is forgotten.
    pub reasons: Vec<String>,
}

/// The outcome for every candidate, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub decisions: Vec<Decision>,
}

impl Plan {
    /// The backups to keep, newest first.
    pub fn keep(&self) -> impl Iterator<Item = &Decision> + '_ {
        self.decisions.iter().filter(|d| d.keep)
    }

    /// The backups to forget, newest first.
    pub fn forget(&self) -> impl Iterator<Item = &Decision> + '_ {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

/// Rows for a table with [`TABLE_HEADERS`]: id, creation time (RFC 3339, seconds, `Z`),
/// `keep` or `forget`, and the reasons joined by `", "` (empty for a forgotten backup).
pub fn render_rows(plan: &Plan) -> Vec<Vec<String>> {
    plan.decisions
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                if d.keep { "keep" } else { "forget" }.to_string(),
                d.reasons.join(", "),
            ]
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Calendar {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Calendar {
    fn name(self) -> &'static str {
        match self {
            Calendar::Hourly => "hourly",
            Calendar::Daily => "daily",
            Calendar::Weekly => "weekly",
            Calendar::Monthly => "monthly",
            Calendar::Yearly => "yearly",
        }
    }

    /// The bucket's name; two times share a bucket exactly when their names are equal.
    fn bucket(self, t: DateTime<Utc>) -> String {
        match self {
            Calendar::Hourly => format!(
                "{:04}-{:02}-{:02} {:02}:00",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            ),
            Calendar::Daily => format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
            Calendar::Weekly => {
                let week = t.iso_week();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Calendar::Monthly => format!("{:04}-{:02}", t.year(), t.month()),
            Calendar::Yearly => format!("{:04}", t.year()),
        }
    }
}

/// Newest first; on equal times the greater id counts as newer (the reverse of sorting by
/// `(created_at, id)`); reason and labels settle the rest so the order never depends on the
/// input order.
fn newest_first(a: &Candidate, b: &Candidate) -> Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| b.id.cmp(&a.id))
        .then_with(|| b.reason.cmp(&a.reason))
        .then_with(|| b.labels.cmp(&a.labels))
}

/// Decides, for every candidate, whether to keep it and why. `now` only tells which backups
/// are dated in the future; every other rule is relative to the backups themselves.
///
/// The result holds one decision per candidate, newest first, whatever the input order.
pub fn plan(policy: &Policy, candidates: &[Candidate], now: DateTime<Utc>) -> Plan {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| newest_first(a, b));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];

    // Indices (into `sorted`, so newest first) of the backups the counting rules look at.
    let mut timely: Vec<usize> = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        if c.created_at > now {
            reasons[i].push("dated in the future".to_string());
        } else {
            timely.push(i);
        }
    }

    for (i, c) in sorted.iter().enumerate() {
        if c.is_pinned() {
            reasons[i].push("pinned".to_string());
        }
    }

    let pre_upgrade = timely
        .iter()
        .copied()
        .filter(|&i| sorted[i].is_pre_upgrade())
        .take(policy.pre_upgrade as usize);
    for i in pre_upgrade {
        let reason = match sorted[i].labels.get(UPGRADE_TO_LABEL).map(|v| v.trim()) {
            Some(to) if !to.is_empty() => format!("pinned: pre-upgrade {to}"),
            _ => "pinned: pre-upgrade".to_string(),
        };
        reasons[i].push(reason);
    }
    // Pre-maintenance backups get the same count, on their own: a weekly defrag must not push
    // the backup taken before an upgrade out.
    let pre_maintenance = timely
        .iter()
        .copied()
        .filter(|&i| sorted[i].is_pre_maintenance())
        .take(policy.pre_upgrade as usize);
    for i in pre_maintenance {
        reasons[i].push("pinned: pre-maintenance".to_string());
    }

    for &i in timely.iter().take(policy.last as usize) {
        reasons[i].push("last".to_string());
    }

    for (calendar, count) in [
        (Calendar::Hourly, policy.hourly),
        (Calendar::Daily, policy.daily),
        (Calendar::Weekly, policy.weekly),
        (Calendar::Monthly, policy.monthly),
        (Calendar::Yearly, policy.yearly),
    ] {
        let mut left = count;
        let mut previous: Option<String> = None;
        for &i in &timely {
            if left == 0 {
                break;
            }
            let bucket = calendar.bucket(sorted[i].created_at);
            // Sorted newest first, so the first backup seen in a bucket is its newest.
            if previous.as_ref() != Some(&bucket) {
                reasons[i].push(format!("{} {bucket}", calendar.name()));
                left -= 1;
                previous = Some(bucket);
            }
        }
    }

    if let (Some(within), Some(&newest)) = (&policy.within, timely.first()) {
        // The anchor is the newest backup, or the newest point of a delta chain after it.
        let anchor = timely
            .iter()
            .filter_map(|&i| sorted[i].points_until)
            .filter(|p| *p <= now)
            .fold(sorted[newest].created_at, DateTime::max);
        let cutoff = anchor.checked_sub_signed(within.duration);
        for &i in &timely {
            let after = |t: DateTime<Utc>| cutoff.is_none_or(|cutoff| t > cutoff);
            if after(sorted[i].created_at) {
                reasons[i].push(format!("within {}", within.text));
            } else if sorted[i].points_until.is_some_and(after) {
                reasons[i].push(format!("within {} (its delta chain)", within.text));
            }
        }
    }

    if let Some(&newest) = timely.first() {
        if reasons[newest].is_empty() {
            reasons[newest].push("newest".to_string());
        }
    }

    let mut kept = reasons.iter().filter(|r| !r.is_empty()).count();
    for r in reasons.iter_mut() {
        if kept >= policy.min_keep as usize {
            break;
        }
        if r.is_empty() {
            r.push("min-keep".to_string());
            kept += 1;
        }
    }

    let decisions = sorted
        .iter()
        .zip(reasons)
        .map(|(c, reasons)| Decision {
            id: c.id.clone(),
            created_at: c.created_at,
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect();
    Plan { decisions }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `2026-11-20T14:00:00Z`, or the same without seconds and/or `Z`.
    fn ts(text: &str) -> DateTime<Utc> {
        let full = match text.len() {
            16 => format!("{text}:00Z"),
            19 => format!("{text}Z"),
            _ => text.to_string(),
        };
        DateTime::parse_from_rfc3339(&full)
            .unwrap_or_else(|e| panic!("bad test time {text:?}: {e}"))
            .with_timezone(&Utc)
    }

    /// `"id 2026-11-20T14:00 [reason] [k=v]..."`; the reason defaults to `scheduled`.
    fn cand(spec: &str) -> Candidate {
        let mut parts = spec.split_whitespace();
        let id = parts.next().expect("id");
        let time = ts(parts.next().expect("time"));
        let mut c = Candidate::new(id, time, "scheduled");
        for part in parts {
            match part.split_once('=') {
                Some(("points", v)) => c.points_until = Some(ts(v)),
                Some((k, v)) => {
                    c.labels.insert(k.to_string(), v.to_string());
                }
                None => c.reason = part.to_string(),
            }
        }
        c
    }

    fn raw(yaml: &str) -> RawPolicy {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test policy {yaml:?}: {e}"))
    }

    fn policy(yaml: &str) -> Policy {
        Policy::from_raw(&raw(yaml)).unwrap_or_else(|e| panic!("policy {yaml:?}: {e}"))
    }

    struct Case {
        name: &'static str,
        now: &'static str,
        policy: &'static str,
        backups: Vec<String>,
        keep: Vec<&'static str>,
        /// Exact reason lists for some ids.
        reasons: Vec<(&'static str, Vec<&'static str>)>,
    }

    fn case(
        name: &'static str,
        now: &'static str,
        policy: &'static str,
        backups: &[&str],
        keep: &[&'static str],
        reasons: &[(&'static str, &[&'static str])],
    ) -> Case {
        Case {
            name,
            now,
            policy,
            backups: backups.iter().map(|s| s.to_string()).collect(),
            keep: keep.to_vec(),
            reasons: reasons.iter().map(|(id, r)| (*id, r.to_vec())).collect(),
        }
    }

    /// `count` backups named `{prefix}{n}` (n = 0 is the newest), `step_minutes` apart,
    /// ending at `newest`.
    fn series(prefix: &str, newest: &str, count: usize, step_minutes: i64) -> Vec<String> {
        let newest = ts(newest);
        (0..count)
            .map(|n| {
                let t = newest - TimeDelta::minutes(step_minutes * n as i64);
                format!(
                    "{prefix}{n} {}",
                    t.to_rfc3339_opts(SecondsFormat::Secs, true)
                )
            })
            .collect()
    }

    fn cases() -> Vec<Case> {
        let now = "2026-11-20T15:00:00Z";
        vec![
            case(
                "keep-last keeps the newest N",
                now,
                "{keep-last: 3}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T12:00",
                    "d 2026-11-20T11:00",
                    "e 2026-11-20T10:00",
                ],
                &["a", "b", "c"],
                &[("a", &["last"]), ("c", &["last"]), ("d", &[])],
            ),
            case(
                "keep-last larger than the number of backups keeps all",
                now,
                "{keep-last: 10}",
                &["a 2026-11-20T14:00", "b 2026-11-19T14:00"],
                &["a", "b"],
                &[],
            ),
            case(
                "keep-hourly: newest of each hour, gaps do not count",
                now,
                "{keep-hourly: 3}",
                &[
                    "a 2026-11-20T14:50",
                    "b 2026-11-20T14:10",
                    "c 2026-11-20T13:30",
                    "d 2026-11-20T11:05",
                    "e 2026-11-20T11:00",
                    "f 2026-11-20T08:00",
                ],
                &["a", "c", "d"],
                &[
                    ("a", &["hourly 2026-11-20 14:00"]),
                    ("c", &["hourly 2026-11-20 13:00"]),
                    ("d", &["hourly 2026-11-20 11:00"]),
                ],
            ),
            case(
                "keep-hourly across midnight, zero-padded hours",
                now,
                "{keep-hourly: 3}",
                &[
                    "a 2026-11-20T04:10",
                    "b 2026-11-20T00:10",
                    "c 2026-11-19T23:50",
                    "d 2026-11-19T23:10",
                ],
                &["a", "b", "c"],
                &[
                    ("a", &["hourly 2026-11-20 04:00"]),
                    ("c", &["hourly 2026-11-19 23:00"]),
                ],
            ),
            case(
                "keep-daily across a month boundary",
                "2026-12-02T00:00:00Z",
                "{keep-daily: 3}",
                &[
                    "a 2026-12-01T01:00",
                    "b 2026-11-30T23:00",
                    "c 2026-11-30T10:00",
                    "d 2026-11-29T12:00",
                    "e 2026-11-29T11:00",
                    "f 2026-10-31T12:00",
                ],
                &["a", "b", "d"],
                &[
                    ("a", &["daily 2026-12-01"]),
                    ("b", &["daily 2026-11-30"]),
                    ("d", &["daily 2026-11-29"]),
                ],
            ),
            case(
                "keep-daily skips days without backups",
                now,
                "{keep-daily: 3}",
                &[
                    "a 2026-11-20T02:00",
                    "b 2026-11-17T02:00",
                    "c 2026-11-10T02:00",
                    "d 2026-11-09T02:00",
                ],
                &["a", "b", "c"],
                &[("c", &["daily 2026-11-10"]), ("d", &[])],
            ),
            case(
                "keep-daily over a leap day",
                "2024-03-02T00:00:00Z",
                "{keep-daily: 2}",
                &[
                    "a 2024-03-01T00:30",
                    "b 2024-02-29T23:59",
                    "c 2024-02-29T00:00",
                    "d 2024-02-28T23:59",
                ],
                &["a", "b"],
                &[("b", &["daily 2024-02-29"])],
            ),
            case(
                "keep-weekly across the ISO year boundary: 2020-12-31 and 2021-01-01 are 2020-W53",
                "2021-01-10T00:00:00Z",
                "{keep-weekly: 2}",
                &[
                    "a 2021-01-04T10:00",
                    "b 2021-01-02T10:00",
                    "c 2021-01-01T10:00",
                    "d 2020-12-31T10:00",
                    "e 2020-12-27T10:00",
                ],
                &["a", "b"],
                &[("a", &["weekly 2021-W01"]), ("b", &["weekly 2020-W53"])],
            ),
            case(
                "keep-weekly: different calendar years, one ISO week, one bucket",
                "2021-01-10T00:00:00Z",
                "{keep-weekly: 5}",
                &["a 2021-01-01T10:00", "b 2020-12-31T10:00"],
                &["a"],
                &[("a", &["weekly 2020-W53"]), ("b", &[])],
            ),
            case(
                "keep-weekly: late December can be week 1 of the next ISO year",
                "2026-01-05T00:00:00Z",
                "{keep-weekly: 2}",
                &[
                    "a 2026-01-01T10:00",
                    "b 2025-12-29T10:00",
                    "c 2025-12-28T10:00",
                    "d 2025-12-22T10:00",
                ],
                &["a", "c"],
                &[("a", &["weekly 2026-W01"]), ("c", &["weekly 2025-W52"])],
            ),
            case(
                "keep-weekly: single-digit weeks are zero-padded, Sunday closes the week",
                "2026-01-20T00:00:00Z",
                "{keep-weekly: 2}",
                &[
                    "a 2026-01-18T23:00",
                    "b 2026-01-12T00:00",
                    "c 2026-01-11T23:59",
                ],
                &["a", "c"],
                &[("a", &["weekly 2026-W03"]), ("c", &["weekly 2026-W02"])],
            ),
            case(
                "keep-monthly skips months without backups",
                now,
                "{keep-monthly: 3}",
                &[
                    "a 2026-11-20T02:00",
                    "b 2026-11-01T02:00",
                    "c 2026-10-15T02:00",
                    "d 2026-08-31T23:00",
                    "e 2026-08-01T00:00",
                    "f 2026-07-01T00:00",
                ],
                &["a", "c", "d"],
                &[
                    ("a", &["monthly 2026-11"]),
                    ("c", &["monthly 2026-10"]),
                    ("d", &["monthly 2026-08"]),
                ],
            ),
            case(
                "keep-monthly across a year boundary",
                "2027-01-03T00:00:00Z",
                "{keep-monthly: 2}",
                &[
                    "a 2027-01-02T00:00",
                    "b 2026-12-31T23:59",
                    "c 2026-12-01T00:00",
                    "d 2026-11-30T00:00",
                ],
                &["a", "b"],
                &[("a", &["monthly 2027-01"]), ("b", &["monthly 2026-12"])],
            ),
            case(
                "keep-yearly keeps the last backup of each year",
                now,
                "{keep-yearly: 2}",
                &[
                    "a 2026-03-01T00:00",
                    "b 2026-01-01T00:00",
                    "c 2025-12-31T23:59",
                    "d 2025-06-01T00:00",
                    "e 2024-12-31T00:00",
                ],
                &["a", "c"],
                &[("a", &["yearly 2026"]), ("c", &["yearly 2025"])],
            ),
            case(
                "one backup satisfies several rules; every reason is listed",
                now,
                "{keep-last: 1, keep-daily: 2, keep-monthly: 2, keep-yearly: 1}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-19T13:00",
                    "d 2026-10-19T13:00",
                    "e 2026-10-01T13:00",
                ],
                &["a", "c", "d"],
                &[
                    (
                        "a",
                        &["last", "daily 2026-11-20", "monthly 2026-11", "yearly 2026"],
                    ),
                    ("c", &["daily 2026-11-19"]),
                    ("d", &["monthly 2026-10"]),
                    ("b", &[]),
                ],
            ),
            case(
                "keep-last and keep-hourly overlap (restic: both reasons, separate counts)",
                now,
                "{keep-last: 2, keep-hourly: 2}",
                &[
                    "a 2026-11-20T14:40",
                    "b 2026-11-20T14:30",
                    "c 2026-11-20T14:20",
                    "d 2026-11-20T14:10",
                    "e 2026-11-20T13:50",
                    "f 2026-11-20T12:50",
                ],
                &["a", "b", "e"],
                &[
                    ("a", &["last", "hourly 2026-11-20 14:00"]),
                    ("b", &["last"]),
                    ("e", &["hourly 2026-11-20 13:00"]),
                ],
            ),
            case(
                "keep-within is measured from the newest backup, not from now",
                "2026-11-20T00:00:00Z",
                "{keep-within: 24h}",
                &[
                    "a 2026-11-01T12:00",
                    "b 2026-11-01T00:00",
                    "c 2026-10-31T12:01",
                    "d 2026-10-31T12:00",
                    "e 2026-10-30T12:00",
                ],
                &["a", "b", "c"],
                &[("a", &["within 24h"]), ("c", &["within 24h"]), ("d", &[])],
            ),
            case(
                "keep-within keeps a backup whose delta chain reaches into the window, with its chain",
                "2026-11-20T00:00:00Z",
                "{keep-within: 24h}",
                &[
                    "a 2026-11-01T12:00 points=2026-11-01T13:00",
                    "b 2026-10-31T06:00 points=2026-11-01T11:00",
                    "c 2026-10-30T06:00 points=2026-10-31T12:00",
                    "d 2026-10-29T06:00",
                ],
                &["a", "b"],
                &[
                    ("a", &["within 24h"]),
                    ("b", &["within 24h (its delta chain)"]),
                    ("c", &[]),
                ],
            ),
            case(
                "keep-within prints the duration as configured",
                now,
                "{keep-within: 1h30m}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T12:31",
                    "c 2026-11-20T12:30",
                ],
                &["a", "b"],
                &[("b", &["within 1h30m"])],
            ),
            case(
                "keep-within in days",
                now,
                "{keep-within: 7d}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-14T00:00",
                    "c 2026-11-13T14:00",
                    "d 2026-11-01T00:00",
                ],
                &["a", "b"],
                &[("a", &["within 7d"])],
            ),
            case(
                "keep-within together with calendar rules",
                now,
                "{keep-within: 2h, keep-daily: 2}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T11:00",
                    "d 2026-11-19T11:00",
                    "e 2026-11-19T10:00",
                ],
                &["a", "b", "d"],
                &[
                    ("a", &["daily 2026-11-20", "within 2h"]),
                    ("b", &["within 2h"]),
                    ("d", &["daily 2026-11-19"]),
                ],
            ),
            case(
                "a single backup is kept",
                now,
                "{keep-daily: 7}",
                &["a 2026-11-01T00:00"],
                &["a"],
                &[("a", &["daily 2026-11-01"])],
            ),
            case(
                "a single backup no rule wants is kept as the newest",
                now,
                "{keep-pre-upgrade: 3}",
                &["a 2026-11-01T00:00"],
                &["a"],
                &[("a", &["newest"])],
            ),
            case(
                "backups no rule wants: only the newest survives",
                now,
                "{keep-pre-upgrade: 2}",
                &[
                    "a 2025-11-01T00:00",
                    "b 2025-10-01T00:00",
                    "c 2025-09-01T00:00",
                    "d 2025-08-01T00:00",
                ],
                &["a"],
                &[("a", &["newest"]), ("b", &[])],
            ),
            case(
                "backups no rule wants: min-keep keeps more",
                now,
                "{keep-pre-upgrade: 2, min-keep: 3}",
                &[
                    "a 2025-11-01T00:00",
                    "b 2025-10-01T00:00",
                    "c 2025-09-01T00:00",
                    "d 2025-08-01T00:00",
                ],
                &["a", "b", "c"],
                &[
                    ("a", &["newest"]),
                    ("b", &["min-keep"]),
                    ("c", &["min-keep"]),
                ],
            ),
            case(
                "min-keep alone is a policy",
                now,
                "{min-keep: 2}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T12:00",
                ],
                &["a", "b"],
                &[("a", &["newest"]), ("b", &["min-keep"])],
            ),
            case(
                "min-keep tops up with the newest forgotten backups",
                now,
                "{keep-daily: 2, min-keep: 4}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T12:00",
                    "d 2026-11-19T14:00",
                    "e 2026-11-19T13:00",
                    "f 2026-11-18T13:00",
                ],
                &["a", "b", "c", "d"],
                &[
                    ("a", &["daily 2026-11-20"]),
                    ("b", &["min-keep"]),
                    ("c", &["min-keep"]),
                    ("d", &["daily 2026-11-19"]),
                ],
            ),
            case(
                "min-keep already met adds nothing",
                now,
                "{keep-last: 3, min-keep: 2}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T12:00",
                    "d 2026-11-20T11:00",
                ],
                &["a", "b", "c"],
                &[("c", &["last"])],
            ),
            case(
                "min-keep above the number of backups keeps them all",
                now,
                "{keep-last: 1, min-keep: 10}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-19T14:00",
                    "c 2026-11-18T14:00",
                ],
                &["a", "b", "c"],
                &[("c", &["min-keep"])],
            ),
            case(
                "a backup dated in the future is kept and uses up no keep-last slot",
                "2026-11-20T12:00:00Z",
                "{keep-last: 2}",
                &[
                    "f 2026-11-21T00:00",
                    "a 2026-11-20T11:00",
                    "b 2026-11-20T10:00",
                    "c 2026-11-20T09:00",
                ],
                &["f", "a", "b"],
                &[("f", &["dated in the future"]), ("b", &["last"])],
            ),
            case(
                "a backup dated at exactly now is not in the future",
                "2026-11-20T12:00:00Z",
                "{keep-last: 1}",
                &["a 2026-11-20T12:00", "b 2026-11-20T11:00"],
                &["a"],
                &[("a", &["last"])],
            ),
            case(
                "keep-within is anchored on the newest backup not dated in the future",
                "2026-11-20T12:00:00Z",
                "{keep-within: 48h}",
                &[
                    "f 2099-01-01T00:00",
                    "a 2026-11-20T11:00",
                    "b 2026-11-18T12:00",
                    "c 2026-11-18T10:00",
                ],
                &["f", "a", "b"],
                &[
                    ("f", &["dated in the future"]),
                    ("a", &["within 48h"]),
                    ("b", &["within 48h"]),
                ],
            ),
            case(
                "the newest real backup is kept even when a future one exists",
                "2026-11-20T12:00:00Z",
                "{keep-pre-upgrade: 1}",
                &[
                    "f 2026-12-01T00:00",
                    "a 2026-11-20T11:00",
                    "b 2026-11-19T11:00",
                ],
                &["f", "a"],
                &[("f", &["dated in the future"]), ("a", &["newest"])],
            ),
            case(
                "every backup dated in the future: all kept",
                "2026-11-20T12:00:00Z",
                "{keep-last: 1}",
                &["f 2026-12-01T00:00", "g 2026-11-30T00:00"],
                &["f", "g"],
                &[("g", &["dated in the future"])],
            ),
            case(
                "pin=true keeps an old backup; other pin values do not",
                now,
                "{keep-last: 1}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2025-01-01T00:00 pin=true",
                    "c 2024-01-01T00:00 pin=false",
                    "d 2023-01-01T00:00 pin=TRUE",
                ],
                &["a", "b", "d"],
                &[("b", &["pinned"]), ("c", &[]), ("d", &["pinned"])],
            ),
            case(
                "a pinned backup still takes part in the ordinary rules",
                now,
                "{keep-last: 2}",
                &[
                    "a 2026-11-20T14:00 pin=true",
                    "b 2026-11-20T13:00",
                    "c 2026-11-20T12:00",
                ],
                &["a", "b"],
                &[("a", &["pinned", "last"]), ("c", &[])],
            ),
            case(
                "keep-pre-upgrade keeps the newest N pre-upgrade backups",
                now,
                "{keep-last: 1, keep-pre-upgrade: 2}",
                &[
                    "a 2026-11-20T14:00",
                    "p4 2026-11-10T00:00 pre-upgrade to=v1.23.3",
                    "b 2026-11-09T00:00",
                    "p3 2026-10-10T00:00 pre-upgrade to=v1.23.2",
                    "p2 2026-09-10T00:00 pre-upgrade to=v1.23.1",
                    "p1 2026-08-10T00:00 pre-upgrade",
                ],
                &["a", "p4", "p3"],
                &[
                    ("p4", &["pinned: pre-upgrade v1.23.3"]),
                    ("p3", &["pinned: pre-upgrade v1.23.2"]),
                    ("p2", &[]),
                    ("b", &[]),
                ],
            ),
            case(
                "keep-pre-upgrade keeps as many pre-maintenance backups, counted on their own",
                now,
                "{keep-last: 1, keep-pre-upgrade: 1}",
                &[
                    "a 2026-11-20T14:00",
                    "m2 2026-11-15T04:00 pre-maintenance",
                    "m1 2026-11-08T04:00 pre-maintenance",
                    "p1 2026-11-01T00:00 pre-upgrade to=v1.23.3",
                ],
                &["a", "m2", "p1"],
                &[
                    ("m2", &["pinned: pre-maintenance"]),
                    ("m1", &[]),
                    ("p1", &["pinned: pre-upgrade v1.23.3"]),
                ],
            ),
            case(
                "a pre-upgrade backup without a `to` label",
                now,
                "{keep-pre-upgrade: 1}",
                &["a 2026-11-20T14:00", "p 2026-11-01T00:00 pre-upgrade"],
                &["a", "p"],
                &[("p", &["pinned: pre-upgrade"])],
            ),
            case(
                "pre-upgrade backups beyond the count fall to the ordinary rules",
                now,
                "{keep-pre-upgrade: 1, keep-daily: 3}",
                &[
                    "p2 2026-11-20T14:00 pre-upgrade to=v1.24.0",
                    "a 2026-11-20T13:00",
                    "p1 2026-11-19T14:00 pre-upgrade to=v1.23.0",
                    "b 2026-11-19T13:00",
                    "p0 2026-11-10T14:00 pre-upgrade to=v1.22.0",
                ],
                &["p2", "p1", "p0"],
                &[
                    ("p2", &["pinned: pre-upgrade v1.24.0", "daily 2026-11-20"]),
                    ("p1", &["daily 2026-11-19"]),
                    ("p0", &["daily 2026-11-10"]),
                    ("a", &[]),
                    ("b", &[]),
                ],
            ),
            case(
                "pre-upgrade backups use up keep-last slots like any backup",
                now,
                "{keep-last: 2}",
                &[
                    "p 2026-11-20T14:00 pre-upgrade to=v1.24.0",
                    "a 2026-11-20T13:00",
                    "b 2026-11-20T12:00",
                ],
                &["p", "a"],
                &[("p", &["last"])],
            ),
            case(
                "a future-dated pre-upgrade backup uses up no pre-upgrade slot",
                "2026-11-20T12:00:00Z",
                "{keep-pre-upgrade: 1}",
                &[
                    "f 2026-12-01T00:00 pre-upgrade to=v9",
                    "a 2026-11-20T11:00",
                    "p 2026-11-01T00:00 pre-upgrade to=v1.24.0",
                ],
                &["f", "a", "p"],
                &[
                    ("f", &["dated in the future"]),
                    ("p", &["pinned: pre-upgrade v1.24.0"]),
                ],
            ),
            case(
                "ties on timestamps: the greater id counts as newer",
                now,
                "{keep-last: 1}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T14:00",
                    "c 2026-11-20T13:00",
                ],
                &["b"],
                &[("b", &["last"]), ("a", &[])],
            ),
            case(
                "ties on timestamps in a calendar bucket",
                now,
                "{keep-hourly: 2}",
                &[
                    "x1 2026-11-20T14:00",
                    "x2 2026-11-20T14:00",
                    "y1 2026-11-20T13:00",
                    "y2 2026-11-20T13:00",
                ],
                &["x2", "y2"],
                &[("y2", &["hourly 2026-11-20 13:00"])],
            ),
            case(
                "unsorted input",
                now,
                "{keep-last: 2, keep-daily: 2}",
                &[
                    "c 2026-11-19T10:00",
                    "a 2026-11-20T14:00",
                    "d 2026-11-18T10:00",
                    "b 2026-11-20T13:00",
                ],
                &["a", "b", "c"],
                &[
                    ("a", &["last", "daily 2026-11-20"]),
                    ("b", &["last"]),
                    ("c", &["daily 2026-11-19"]),
                ],
            ),
            case(
                "keep-within of 0s is off; other rules still apply",
                now,
                "{keep-within: 0s, keep-last: 1}",
                &["a 2026-11-20T14:00", "b 2026-11-20T13:00"],
                &["a"],
                &[("a", &["last"])],
            ),
            case(
                "zero counts are off",
                now,
                "{keep-last: 0, keep-daily: 0, keep-hourly: 1}",
                &[
                    "a 2026-11-20T14:00",
                    "b 2026-11-20T14:30",
                    "c 2026-11-19T14:00",
                ],
                &["b"],
                &[("b", &["hourly 2026-11-20 14:00"])],
            ),
            case(
                "no backups, no decisions",
                now,
                "{keep-last: 3, min-keep: 3}",
                &[],
                &[],
                &[],
            ),
        ]
    }

    fn run(case: &Case) -> Plan {
        let candidates: Vec<Candidate> = case.backups.iter().map(|s| cand(s)).collect();
        plan(&policy(case.policy), &candidates, ts(case.now))
    }

    #[test]
    fn table_of_cases() {
        let cases = cases();
        assert!(cases.len() >= 30, "only {} cases", cases.len());
        for case in &cases {
            let plan = run(case);
            let kept: Vec<&str> = plan.keep().map(|d| d.id.as_str()).collect();
            assert_eq!(kept, case.keep, "case {:?}: kept ids\n{plan:#?}", case.name);
            assert_eq!(
                plan.decisions.len(),
                case.backups.len(),
                "case {:?}",
                case.name
            );
            for (id, want) in &case.reasons {
                let d = plan
                    .decisions
                    .iter()
                    .find(|d| d.id == *id)
                    .unwrap_or_else(|| panic!("case {:?}: no decision for {id}", case.name));
                assert_eq!(
                    d.reasons, *want,
                    "case {:?}: reasons of {id}\n{plan:#?}",
                    case.name
                );
                assert_eq!(d.keep, !want.is_empty(), "case {:?}: {id}", case.name);
            }
            check_invariants(&policy(case.policy), &plan, ts(case.now), case.name);
        }
    }

    #[test]
    fn production_policy_over_100_days() {
        // Every 6 hours for 100 days: s0 = 2026-11-20T12:00 (a Friday, ISO week 47) is the
        // newest, s(n) is n*6h earlier, the oldest (s399) is 2026-08-12T18:00.
        let newest = "2026-11-20T12:00";
        let mut backups = series("s", newest, 400, 6 * 60);
        backups.sort(); // not in time order
        let candidates: Vec<Candidate> = backups.iter().map(|s| cand(s)).collect();
        let p = policy("{keep-last: 3, keep-daily: 7, keep-weekly: 4, keep-monthly: 6}");
        let plan = plan(&p, &candidates, ts("2026-11-20T12:30"));
        check_invariants(&p, &plan, ts("2026-11-20T12:30"), "production");
        let id = |t: &str| format!("s{}", (ts(newest) - ts(t)).num_hours() / 6);
        let expect: Vec<(String, Vec<&str>)> = vec![
            (
                id(newest),
                vec![
                    "last",
                    "daily 2026-11-20",
                    "weekly 2026-W47",
                    "monthly 2026-11",
                ],
            ),
            (id("2026-11-20T06:00"), vec!["last"]),
            (id("2026-11-20T00:00"), vec!["last"]),
            (id("2026-11-19T18:00"), vec!["daily 2026-11-19"]),
            (id("2026-11-18T18:00"), vec!["daily 2026-11-18"]),
            (id("2026-11-17T18:00"), vec!["daily 2026-11-17"]),
            (id("2026-11-16T18:00"), vec!["daily 2026-11-16"]),
            // Sunday closes an ISO week.
            (
                id("2026-11-15T18:00"),
                vec!["daily 2026-11-15", "weekly 2026-W46"],
            ),
            (id("2026-11-14T18:00"), vec!["daily 2026-11-14"]),
            (id("2026-11-08T18:00"), vec!["weekly 2026-W45"]),
            (id("2026-11-01T18:00"), vec!["weekly 2026-W44"]),
            (id("2026-10-31T18:00"), vec!["monthly 2026-10"]),
            (id("2026-09-30T18:00"), vec!["monthly 2026-09"]),
            (id("2026-08-31T18:00"), vec!["monthly 2026-08"]),
        ];
        let kept: BTreeMap<&str, &Vec<String>> =
            plan.keep().map(|d| (d.id.as_str(), &d.reasons)).collect();
        assert_eq!(kept.len(), expect.len(), "{kept:#?}");
        for (id, reasons) in &expect {
            let want: Vec<String> = reasons.iter().map(|s| s.to_string()).collect();
            assert_eq!(kept.get(id.as_str()), Some(&&want), "{id}: {kept:#?}");
        }
        // Only four months hold backups, so keep-monthly 6 keeps four: empty months do not
        // count and no extra "oldest" backup is kept.
        assert_eq!(plan.forget().count(), 400 - expect.len());
        assert_eq!(plan.decisions[0].id, "s0");
        assert_eq!(plan.decisions[399].id, "s399");
    }

    #[test]
    fn empty_policy_is_refused() {
        for yaml in [
            "{}",
            "{keep-last: 0}",
            "{keep-last: 0, keep-hourly: 0, keep-daily: 0, keep-weekly: 0, keep-monthly: 0, \
             keep-yearly: 0, keep-pre-upgrade: 0, min-keep: 0}",
            "{keep-within: 0s}",
            "{keep-within: 0s, keep-daily: 0}",
        ] {
            let err = Policy::from_raw(&raw(yaml)).unwrap_err();
            assert_eq!(err, RetentionError::EmptyPolicy, "{yaml}");
            assert_eq!(
                err.to_string(),
                "retention: empty policy would delete every backup; set at least one keep-* rule"
            );
        }
        assert!(Policy::from_raw(&RawPolicy::default()).is_err());
    }

    #[test]
    fn each_single_rule_makes_a_policy() {
        for yaml in [
            "{keep-last: 1}",
            "{keep-hourly: 1}",
            "{keep-daily: 1}",
            "{keep-weekly: 1}",
            "{keep-monthly: 1}",
            "{keep-yearly: 1}",
            "{keep-within: 1s}",
            "{keep-pre-upgrade: 1}",
            "{min-keep: 1}",
        ] {
            assert!(Policy::from_raw(&raw(yaml)).is_ok(), "{yaml}");
        }
    }

    #[test]
    fn bad_keep_within_names_the_key() {
        for bad in ["forever", "", "48", "-1h", "1 fortnight", "3x"] {
            let r = RawPolicy {
                keep_within: Some(bad.to_string()),
                keep_last: Some(3),
                ..RawPolicy::default()
            };
            let err = Policy::from_raw(&r).unwrap_err();
            assert!(
                matches!(err, RetentionError::InvalidKeepWithin { .. }),
                "{bad:?}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.starts_with("retention.keep-within: "), "{text}");
            assert!(text.contains(&format!("{bad:?}")), "{text}");
        }
        let huge = RawPolicy {
            keep_within: Some("9999999999999999y".to_string()),
            ..RawPolicy::default()
        };
        let err = Policy::from_raw(&huge).unwrap_err();
        assert!(
            err.to_string().starts_with("retention.keep-within: "),
            "{err}"
        );
    }

    #[test]
    fn very_long_keep_within_keeps_everything() {
        let p = policy("{keep-within: 200000y}");
        let candidates = vec![cand("a 2026-11-20T14:00"), cand("b 1970-01-01T00:00")];
        let plan = plan(&p, &candidates, ts("2026-11-21T00:00"));
        assert_eq!(plan.keep().count(), 2);
    }

    #[test]
    fn config_section_parses_exactly_the_documented_keys() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            retention: RawPolicy,
        }
        let yaml = "\
retention:
  keep-last: 3
  keep-hourly: 24
  keep-daily: 7
  keep-weekly: 4
  keep-monthly: 6
  keep-yearly: 0
  keep-within: 48h                # everything newer than this, measured from the newest good backup
  keep-pre-upgrade: 5             # pre-upgrade backups are kept by their own count
  min-keep: 3                     # never go below this many verified backups, whatever the rules say
";
        let file: File = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            file.retention,
            RawPolicy {
                keep_last: Some(3),
                keep_hourly: Some(24),
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(6),
                keep_yearly: Some(0),
                keep_within: Some("48h".to_string()),
                keep_pre_upgrade: Some(5),
                min_keep: Some(3),
            }
        );
        let p = Policy::from_raw(&file.retention).unwrap();
        assert_eq!(
            p.to_string(),
            "keep-last 3, keep-hourly 24, keep-daily 7, keep-weekly 4, keep-monthly 6, \
             keep-within 48h, keep-pre-upgrade 5, min-keep 3"
        );
        assert_eq!(p.min_keep(), 3);

        // Absent keys are None; an empty section is an empty mapping.
        assert_eq!(raw("{}"), RawPolicy::default());
        assert_eq!(raw("keep-daily: 2").keep_daily, Some(2));

        for bad in [
            "keep-hourli: 3",
            "keep_last: 3",
            "keepLast: 3",
            "keep-last: -1",
            "keep-last: many",
            "keep-within: [48h]",
        ] {
            assert!(
                serde_yaml::from_str::<RawPolicy>(bad).is_err(),
                "{bad} should be refused"
            );
        }

        // Round trip, absent keys stay absent.
        let back = serde_yaml::to_string(&raw("{keep-last: 2, keep-within: 7d}")).unwrap();
        assert_eq!(back, "keep-last: 2\nkeep-within: 7d\n");
    }

    #[test]
    fn decisions_serialize_in_camel_case() {
        let p = policy("{keep-last: 1}");
        let candidates = vec![cand("a 2026-11-20T14:00"), cand("b 2026-11-20T13:00")];
        let plan = plan(&p, &candidates, ts("2026-11-21T00:00"));
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "decisions": [
                    {"id": "a", "createdAt": "2026-11-20T14:00:00Z", "keep": true, "reasons": ["last"]},
                    {"id": "b", "createdAt": "2026-11-20T13:00:00Z", "keep": false, "reasons": []},
                ]
            })
        );
        let one = serde_json::to_value(&plan.decisions[0]).unwrap();
        assert_eq!(one["createdAt"], "2026-11-20T14:00:00Z");
    }

    #[test]
    fn rows_for_the_table() {
        let p = policy("{keep-last: 1, keep-daily: 1}");
        let candidates = vec![cand("b 2026-11-20T13:00"), cand("a 2026-11-20T14:00:07Z")];
        let plan = plan(&p, &candidates, ts("2026-11-21T00:00"));
        assert_eq!(
            render_rows(&plan),
            vec![
                vec![
                    "a".to_string(),
                    "2026-11-20T14:00:07Z".to_string(),
                    "keep".to_string(),
                    "last, daily 2026-11-20".to_string(),
                ],
                vec![
                    "b".to_string(),
                    "2026-11-20T13:00:00Z".to_string(),
                    "forget".to_string(),
                    String::new(),
                ],
            ]
        );
        assert_eq!(TABLE_HEADERS.len(), render_rows(&plan)[0].len());
        let keep: Vec<&str> = plan.keep().map(|d| d.id.as_str()).collect();
        let forget: Vec<&str> = plan.forget().map(|d| d.id.as_str()).collect();
        assert_eq!((keep, forget), (vec!["a"], vec!["b"]));
    }

    // ---- property-style checks ----

    /// splitmix64: a small deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn count(&mut self) -> Option<u32> {
            match self.below(4) {
                0 => None,
                1 => Some(0),
                _ => Some(self.below(6) as u32),
            }
        }
    }

    fn random_policy(rng: &mut Rng) -> RawPolicy {
        let withins = ["30m", "2h", "48h", "7d", "1h30m", "0s", "365d"];
        RawPolicy {
            keep_last: rng.count(),
            keep_hourly: rng.count(),
            keep_daily: rng.count(),
            keep_weekly: rng.count(),
            keep_monthly: rng.count(),
            keep_yearly: rng.count(),
            keep_within: rng
                .chance(30)
                .then(|| withins[rng.below(withins.len() as u64) as usize].to_string()),
            keep_pre_upgrade: rng.count(),
            min_keep: rng.count(),
        }
    }

    fn random_candidates(rng: &mut Rng, now: DateTime<Utc>) -> Vec<Candidate> {
        let n = rng.below(40) as usize;
        // Spread: minutes, days or years, so every calendar rule has work to do.
        let span_minutes: i64 =
            [90, 3 * 24 * 60, 60 * 24 * 60, 3 * 365 * 24 * 60][rng.below(4) as usize];
        let mut out: Vec<Candidate> = Vec::with_capacity(n);
        for i in 0..n {
            let mut minutes = rng.below(span_minutes as u64) as i64;
            if rng.chance(20) {
                // Round to the hour to create ties.
                minutes -= minutes % 60;
            }
            let mut t = now - TimeDelta::minutes(minutes);
            if rng.chance(8) {
                t = now + TimeDelta::minutes(1 + rng.below(10_000) as i64);
            }
            if i > 0 && rng.chance(10) {
                t = out[rng.below(i as u64) as usize].created_at;
            }
            let mut c = Candidate::new(format!("b{:03}", rng.below(1000)), t, "scheduled");
            c.id.push_str(&format!("-{i}")); // unique ids
            if rng.chance(20) {
                c.reason = PRE_UPGRADE_REASON.to_string();
                if rng.chance(70) {
                    c.labels
                        .insert(UPGRADE_TO_LABEL.into(), format!("v1.{}.0", rng.below(30)));
                }
            }
            if rng.chance(10) {
                let v = if rng.chance(80) { "true" } else { "false" };
                c.labels.insert(PIN_LABEL.into(), v.into());
            }
            out.push(c);
        }
        out
    }

    fn shuffle(rng: &mut Rng, v: &mut [Candidate]) {
        for i in (1..v.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// What must hold for any policy and any set of backups.
    fn check_invariants(policy: &Policy, plan: &Plan, now: DateTime<Utc>, what: &str) {
        let d = &plan.decisions;
        for pair in d.windows(2) {
            assert!(
                (pair[0].created_at, &pair[0].id) >= (pair[1].created_at, &pair[1].id),
                "{what}: not newest first"
            );
        }
        for x in d {
            assert_eq!(x.keep, !x.reasons.is_empty(), "{what}: {x:?}");
            if x.created_at > now {
                assert!(x.keep, "{what}: forgot a future backup {x:?}");
            }
        }
        if let Some(first) = d.first() {
            assert!(first.keep, "{what}: forgot the newest");
        }
        if let Some(newest_real) = d.iter().find(|x| x.created_at <= now) {
            assert!(newest_real.keep, "{what}: forgot the newest real backup");
        }
        let kept = d.iter().filter(|x| x.keep).count();
        assert!(
            kept >= (policy.min_keep as usize).min(d.len()),
            "{what}: kept {kept} < min-keep {}",
            policy.min_keep
        );
        let timely: Vec<&Decision> = d.iter().filter(|x| x.created_at <= now).collect();
        for x in timely.iter().take(policy.last as usize) {
            assert!(x.keep, "{what}: keep-last forgot {x:?}");
        }
    }

    #[test]
    fn random_sets_and_policies_keep_the_invariants() {
        let mut rng = Rng(0x5EED_E7CD_5AFE);
        let mut checked = 0;
        for round in 0..3000 {
            let now = ts("2026-11-20T15:00") + TimeDelta::minutes(rng.below(500_000) as i64);
            let raw = random_policy(&mut rng);
            let policy = match Policy::from_raw(&raw) {
                Ok(p) => p,
                Err(e) => {
                    assert_eq!(e, RetentionError::EmptyPolicy, "round {round}: {raw:?}");
                    continue;
                }
            };
            let mut candidates = random_candidates(&mut rng, now);
            let what = format!("round {round}, policy {policy}");
            let first = plan(&policy, &candidates, now);
            assert_eq!(first.decisions.len(), candidates.len(), "{what}");
            check_invariants(&policy, &first, now, &what);

            for c in &candidates {
                let x = first.decisions.iter().find(|x| x.id == c.id).unwrap();
                assert_eq!(x.created_at, c.created_at);
                if c.is_pinned() {
                    assert!(
                        x.keep && x.reasons.contains(&"pinned".to_string()),
                        "{what}"
                    );
                }
            }
            let timely_pre_upgrade: Vec<&Candidate> = {
                let mut v: Vec<&Candidate> = candidates
                    .iter()
                    .filter(|c| c.is_pre_upgrade() && c.created_at <= now)
                    .collect();
                v.sort_by(|a, b| newest_first(a, b));
                v
            };
            for c in timely_pre_upgrade.iter().take(policy.pre_upgrade as usize) {
                let x = first.decisions.iter().find(|x| x.id == c.id).unwrap();
                assert!(
                    x.reasons
                        .iter()
                        .any(|r| r.starts_with("pinned: pre-upgrade")),
                    "{what}: {x:?}"
                );
            }

            // Same result whatever the input order.
            for _ in 0..3 {
                shuffle(&mut rng, &mut candidates);
                assert_eq!(plan(&policy, &candidates, now), first, "{what}");
            }
            checked += 1;
        }
        assert!(checked > 1000, "only {checked} rounds had a valid policy");
    }

    #[test]
    fn calendar_rules_keep_at_most_n_and_one_per_bucket() {
        let mut rng = Rng(42);
        for round in 0..500 {
            let now = ts("2026-11-20T15:00");
            let n = 1 + rng.below(6) as u32;
            let candidates: Vec<Candidate> = random_candidates(&mut rng, now)
                .into_iter()
                .filter(|c| c.created_at <= now)
                .collect();
            for (calendar, key) in [
                (Calendar::Hourly, "keep-hourly"),
                (Calendar::Daily, "keep-daily"),
                (Calendar::Weekly, "keep-weekly"),
                (Calendar::Monthly, "keep-monthly"),
                (Calendar::Yearly, "keep-yearly"),
            ] {
                let p = policy(&format!("{{{key}: {n}}}"));
                let plan = plan(&p, &candidates, now);
                let tagged: Vec<&Decision> = plan
                    .decisions
                    .iter()
                    .filter(|d| d.reasons.iter().any(|r| r.starts_with(calendar.name())))
                    .collect();
                let buckets: std::collections::BTreeSet<String> = candidates
                    .iter()
                    .map(|c| calendar.bucket(c.created_at))
                    .collect();
                assert_eq!(
                    tagged.len(),
                    buckets.len().min(n as usize),
                    "round {round} {key} {n}"
                );
                let distinct: std::collections::BTreeSet<String> = tagged
                    .iter()
                    .map(|d| calendar.bucket(d.created_at))
                    .collect();
                assert_eq!(distinct.len(), tagged.len(), "round {round} {key}");
                // Each tagged backup is the newest of its bucket.
                for d in &tagged {
                    let bucket = calendar.bucket(d.created_at);
                    assert!(candidates
                        .iter()
                        .filter(|c| calendar.bucket(c.created_at) == bucket)
                        .all(|c| c.created_at <= d.created_at));
                }
            }
        }
    }
}
