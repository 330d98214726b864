//! Pure decisions over the catalog of full backups and delta segments: what each full backup's
//! chain covers (for `backups list`), which points are restorable, and which backup and
//! segments a point-in-time fetch uses. No I/O; table-tested.
//!
//! Rules:
//! - Segments follow each other when `next.first == prev.last + 1` and `next.previousSha256`
//!   is `prev`'s object SHA-256. Anything else ends a run: a gap, a missing or resized object,
//!   a segment that names another predecessor.
//! - A full backup at revision `b` reaches revision `R > b` when the segments cover
//!   `b+1 ..= R` without a break. Its *chain* (what `backups list` shows for it) runs from
//!   `b+1` to where it reaches, but not past the next full backup's revision (from there the
//!   newer backup is the better base; a segment that straddles it belongs to both).
//! - A fetch at revision `R` uses the newest full backup at or below `R` that reaches `R`.
//! - History only goes forward: a segment sealed before a full backup was taken holds nothing
//!   newer than that backup. When one does ([`abandoned`]: sealed over [`CLOCK_SKEW`] before
//!   the backup, ending above its revision), etcd's history went back in between (a restore
//!   without a revision bump) and the backup belongs to the new history: it never reaches
//!   through segments of the old one, which stay restorable from their own backups.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::segment::{ChainBreak, LeaseRecord, SegmentManifest};

/// A full backup as the chain logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub id: String,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
}

/// What was found under `deltas/`.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    /// By first revision.
    pub by_first: BTreeMap<i64, SegmentManifest>,
    /// Data object key -> size, as listed.
    pub objects: HashMap<String, u64>,
    pub breaks: Vec<ChainBreak>,
}

/// Where to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Revision(i64),
    /// The last revision sealed at or before this time.
    Time(DateTime<Utc>),
    /// The newest sealed revision.
    Latest,
}

/// One full backup's delta chain, for listings (`-w json`: `deltas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainView {
    pub from_revision: i64,
    pub to_revision: i64,
    pub segments: usize,
    pub first_time: Option<DateTime<Utc>>,
    pub last_time: Option<DateTime<Utc>>,
    /// Why capture stopped inside this chain, when it did.
    pub broken: Option<String>,
}

/// What a point-in-time fetch does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub base: String,
    pub base_revision: i64,
    pub revision: i64,
    /// The segments to apply, in order (events above `revision` in the last are skipped).
    pub segments: Vec<SegmentManifest>,
    /// The lease table of the last seal at or before `revision`; `None` keeps the full
    /// backup's own.
    pub leases: Option<Vec<LeaseRecord>>,
    /// The newest compaction recorded at or below `revision` (0: none).
    pub compact_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("no full backup at or below revision {revision}: the oldest is {oldest} at revision {oldest_revision}; choose a revision from `etcdsafe backups list --points`")]
    BeforeEveryBackup {
        revision: i64,
        oldest: String,
        oldest_revision: i64,
    },
    #[error("there are no backups yet: take one with `etcdsafe snapshot save`")]
    NoBackups,
    #[error("revision {revision} is after the newest sealed revision {newest}: nothing newer was captured; choose a revision from `etcdsafe backups list --points`")]
    AfterNewest { revision: i64, newest: i64 },
    #[error("revision {revision} is in a gap of the delta chain from backup {base}: the segments reach revision {reached}, then {why}; choose a revision from `etcdsafe backups list --points`")]
    InGap {
        revision: i64,
        base: String,
        reached: i64,
        why: String,
    },
    #[error("nothing was sealed at or before {time}; the oldest point is {oldest}")]
    BeforeEveryPoint { time: String, oldest: String },
}

/// How far apart two instances' clocks may be: a seal and a backup closer in time than this
/// are not ordered by their timestamps. The catalog's tolerance for backups dated in the
/// future, so a backup it lists as sound is never taken for another history's.
pub const CLOCK_SKEW: chrono::Duration = crate::catalog::FUTURE_TOLERANCE;

/// Whether segment `s` belongs to a history etcd went back from before `base` was taken: it
/// was sealed before the backup (by more than [`CLOCK_SKEW`]) yet holds revisions above it.
pub fn abandoned(base: &Base, s: &SegmentManifest) -> bool {
    s.last_revision > base.revision && s.sealed_at + CLOCK_SKEW < base.created_at
}

impl Segments {
    /// Whether segment `s`'s object is listed at its recorded size.
    fn object_problem(&self, s: &SegmentManifest) -> Option<String> {
        match self.objects.get(&s.object.key) {
            None => Some(format!("segment {} is missing", s.object.key)),
            Some(size) if *size != s.object.size => Some(format!(
                "segment {} is {size} bytes where its manifest says {}",
                s.object.key, s.object.size
            )),
            Some(_) => None,
        }
    }

    /// The segments that cover `from ..= upto` (from > 0), following links; `Err` names the
    /// revision reached and why the run ended there.
    pub fn run(&self, from: i64, upto: i64) -> Result<Vec<&SegmentManifest>, (i64, String)> {
        self.run_inner(from, upto, None)
    }

    /// [`Segments::run`] from full backup `base`: never into a history it does not belong to
    /// ([`abandoned`]).
    pub fn run_from(&self, base: &Base, upto: i64) -> Result<Vec<&SegmentManifest>, (i64, String)> {
        self.run_inner(base.revision + 1, upto, Some(base))
    }

    fn run_inner(
        &self,
        from: i64,
        upto: i64,
        base: Option<&Base>,
    ) -> Result<Vec<&SegmentManifest>, (i64, String)> {
        let mut out = Vec::new();
        let mut reached = from - 1;
        // The segment holding `from`: the one with the greatest first revision <= from.
        let mut current = match self.by_first.range(..=from).next_back() {
            Some((_, s)) if s.last_revision >= from => s,
            _ => return Err((reached, self.why_stopped(reached, "no segment follows"))),
        };
        loop {
            if let Some(problem) = self.object_problem(current) {
                return Err((reached, problem));
            }
            if let Some(base) = base.filter(|b| abandoned(b, current)) {
                return Err((
                    reached,
                    format!(
                        "segment {} (to revision {}) was sealed before backup {} (revision {}) was taken: etcd's history went back in between (restored without a revision bump), so the backup cannot be continued with it",
                        current.object.key, current.last_revision, base.id, base.revision
                    ),
                ));
            }
            out.push(current);
            reached = current.last_revision;
            if reached >= upto {
                return Ok(out);
            }
            match self.by_first.get(&(reached + 1)) {
                Some(next)
                    if next.previous_sha256.as_deref() == Some(current.object.sha256.as_str()) =>
                {
                    current = next
                }
                Some(next) => {
                    return Err((
                        reached,
                        format!(
                            "segment {} does not follow {} (its previous SHA-256 differs): the chain was tampered with or mixed with another cluster's",
                            next.object.key, current.object.key
                        ),
                    ))
                }
                None => return Err((reached, self.why_stopped(reached, "no segment follows"))),
            }
        }
    }

    fn why_stopped(&self, reached: i64, default: &str) -> String {
        match self.breaks.iter().find(|b| b.after_revision == reached) {
            Some(b) => format!("the chain broke ({}: {})", b.reason, b.detail),
            None => default.to_string(),
        }
    }

    /// How far `base` reaches (its revision when no segment continues it).
    pub fn reach(&self, base: &Base) -> i64 {
        match self.run_from(base, i64::MAX) {
            Ok(run) => run.last().map_or(base.revision, |s| s.last_revision),
            Err((reached, _)) => reached.max(base.revision),
        }
    }
}

/// Each full backup's chain (`bases` oldest first), for `backups list`.
pub fn views(bases: &[Base], segments: &Segments) -> Vec<Option<ChainView>> {
    bases
        .iter()
        .enumerate()
        .map(|(i, base)| {
            let reach = segments.reach(base);
            let run = segments.run_from(base, reach).unwrap_or_default();
            // The next backup of the same history (one taken after etcd went back cannot
            // continue this chain, so it does not end it).
            let next = bases.get(i + 1..).and_then(|later| {
                later
                    .iter()
                    .filter(|b| !run.iter().any(|s| abandoned(b, s)))
                    .map(|b| b.revision)
                    .find(|r| *r > base.revision)
            });
            let to = next.map_or(reach, |n| reach.min(n));
            if to <= base.revision {
                let broken = segments
                    .breaks
                    .iter()
                    .find(|b| b.after_revision == base.revision)
                    .map(|b| format!("{}: {}", b.reason, b.detail));
                return broken.map(|broken| ChainView {
                    from_revision: base.revision + 1,
                    to_revision: base.revision,
                    segments: 0,
                    first_time: None,
                    last_time: None,
                    broken: Some(broken),
                });
            }
            let run = segments.run_from(base, to).unwrap_or_default();
            let broken = segments
                .breaks
                .iter()
                .find(|b| {
                    b.after_revision >= base.revision
                        && b.after_revision == reach
                        && next.is_none_or(|n| b.after_revision < n)
                })
                .map(|b| format!("{}: {}", b.reason, b.detail));
            Some(ChainView {
                from_revision: base.revision + 1,
                to_revision: to,
                segments: run.len(),
                first_time: run.first().map(|s| s.first_time),
                last_time: run.last().map(|s| s.last_time),
                broken,
            })
        })
        .collect()
}

/// Resolves `at` to a revision (`Time` and `Latest` read the seal times and reaches).
pub fn resolve(at: At, bases: &[Base], segments: &Segments) -> Result<i64, PointError> {
    match at {
        At::Revision(r) => Ok(r),
        At::Latest => bases
            .iter()
            .map(|b| segments.reach(b))
            .max()
            .ok_or(PointError::NoBackups),
        At::Time(t) => {
            // Each base taken at or before t: the newest point of its chain sealed by t (when,
            // and its revision). The latest of them wins: in one history that is also the
            // highest revision; after etcd's history went back, it is the new history's.
            let sealed_by_t = |base: &Base| {
                let mut point = (base.created_at, base.revision);
                if let Ok(run) = segments.run_from(base, segments.reach(base)) {
                    for s in run {
                        if s.sealed_at > t {
                            break;
                        }
                        point = (s.sealed_at.max(base.created_at), s.last_revision);
                    }
                }
                point
            };
            let candidates: Vec<&Base> = bases.iter().filter(|b| b.created_at <= t).collect();
            match candidates.iter().map(|b| sealed_by_t(b)).max() {
                Some((_, r)) => Ok(r),
                None => match bases.first() {
                    None => Err(PointError::NoBackups),
                    Some(oldest) => Err(PointError::BeforeEveryPoint {
                        time: t.to_rfc3339(),
                        oldest: oldest.created_at.to_rfc3339(),
                    }),
                },
            }
        }
    }
}

/// The plan for a fetch at revision `revision` (from [`resolve`]).
pub fn plan(revision: i64, bases: &[Base], segments: &Segments) -> Result<Plan, PointError> {
    let Some(oldest) = bases.iter().min_by_key(|b| b.revision) else {
        return Err(PointError::NoBackups);
    };
    let mut candidates: Vec<&Base> = bases.iter().filter(|b| b.revision <= revision).collect();
    if candidates.is_empty() {
        return Err(PointError::BeforeEveryBackup {
            revision,
            oldest: oldest.id.clone(),
            oldest_revision: oldest.revision,
        });
    }
    candidates.sort_by_key(|b| std::cmp::Reverse((b.revision, b.created_at)));
    // The newest revision anything holds: past it nothing was sealed; below it a failure is
    // a gap (a break, a missing or damaged segment) and is named.
    let newest = bases
        .iter()
        .map(|b| b.revision)
        .chain(segments.by_first.values().map(|s| s.last_revision))
        .max()
        .unwrap_or(0);
    let mut first_failure = None;
    for base in candidates {
        if base.revision == revision {
            return Ok(Plan {
                base: base.id.clone(),
                base_revision: base.revision,
                revision,
                segments: Vec::new(),
                leases: None,
                compact_revision: compaction_at(revision, segments),
            });
        }
        match segments.run_from(base, revision) {
            Ok(run) => {
                let leases = run
                    .iter()
                    .rev()
                    .find(|s| s.last_revision <= revision)
                    .map(|s| s.leases.clone());
                return Ok(Plan {
                    base: base.id.clone(),
                    base_revision: base.revision,
                    revision,
                    segments: run.into_iter().cloned().collect(),
                    leases,
                    compact_revision: compaction_at(revision, segments),
                });
            }
            Err((reached, why)) => {
                first_failure.get_or_insert((base.id.clone(), reached, why));
            }
        }
    }
    let (base, reached, why) = first_failure.expect("at least one candidate failed");
    if revision > newest {
        return Err(PointError::AfterNewest { revision, newest });
    }
    Err(PointError::InGap {
        revision,
        base,
        reached,
        why,
    })
}

/// The segments a prune deletes with the backups it forgets: a segment belongs to every full
/// backup whose chain range `(revision, next backup's revision]` it overlaps (the newest
/// backup's range is open), and is deleted when every backup it belongs to is forgotten, or it
/// belongs to none (it ends at or below the oldest backup: nothing can use it). A segment
/// shared with a kept backup stays: a chain is deleted with its full backup, never before.
pub fn forgotten_segments<'a>(
    bases: &[Base],
    segments: &'a Segments,
    forget: &std::collections::HashSet<&str>,
) -> Vec<&'a SegmentManifest> {
    let mut sorted: Vec<&Base> = bases.iter().collect();
    sorted.sort_by_key(|b| (b.revision, b.created_at));
    // As `views` does: a backup of another history (taken after etcd went back) neither ends
    // a chain's range nor owns the chain's segments.
    let ranges: Vec<(&Base, i64)> = sorted
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let run = segments.run_from(b, segments.reach(b)).unwrap_or_default();
            let next = sorted[i + 1..]
                .iter()
                .filter(|n| !run.iter().any(|s| abandoned(n, s)))
                .map(|n| n.revision)
                .find(|r| *r > b.revision)
                .unwrap_or(i64::MAX);
            (*b, next)
        })
        .collect();
    segments
        .by_first
        .values()
        .filter(|s| {
            ranges
                .iter()
                .filter(|(b, high)| {
                    s.last_revision > b.revision && s.first_revision <= *high && !abandoned(b, s)
                })
                .all(|(b, _)| forget.contains(b.id.as_str()))
        })
        .collect()
}

/// The newest compaction any seal recorded that is at or below `revision`: history below it
/// was dropped by etcd, and the restored database says so as the original did.
fn compaction_at(revision: i64, segments: &Segments) -> i64 {
    segments
        .by_first
        .values()
        .map(|s| s.compact_revision)
        .filter(|c| *c <= revision)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deltas::segment::SegmentObject;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn seg(first: i64, last: i64, prev: Option<&str>, sealed: i64) -> SegmentManifest {
        SegmentManifest {
            format_version: 1,
            first_revision: first,
            last_revision: last,
            first_time: t(sealed - 1),
            last_time: t(sealed),
            sealed_at: t(sealed),
            events: (last - first + 1) as u64,
            object: SegmentObject {
                key: format!("o{first}"),
                size: 10,
                sha256: format!("h{first}"),
            },
            previous_sha256: prev.map(str::to_string),
            chain_base: "b".into(),
            compact_revision: 0,
            leases: vec![LeaseRecord { id: first, ttl: 60 }],
            recipients: vec![],
            captured_by: "x".into(),
            tool_version: "t".into(),
            last_revision_sha256: None,
        }
    }

    fn store(segs: Vec<SegmentManifest>) -> Segments {
        Segments {
            objects: segs.iter().map(|s| (s.object.key.clone(), 10)).collect(),
            by_first: segs.into_iter().map(|s| (s.first_revision, s)).collect(),
            breaks: vec![],
        }
    }

    fn base(id: &str, revision: i64, at: i64) -> Base {
        Base {
            id: id.into(),
            revision,
            created_at: t(at),
        }
    }

    /// base A at 10; segments 11-20, 21-30, 31-40 linked; base B at 25.
    fn fixture() -> (Vec<Base>, Segments) {
        (
            vec![base("A", 10, 0), base("B", 25, 50)],
            store(vec![
                seg(11, 20, None, 10),
                seg(21, 30, Some("h11"), 20),
                seg(31, 40, Some("h21"), 30),
            ]),
        )
    }

    #[test]
    fn plans_pick_the_newest_base_that_reaches() {
        let (bases, segs) = fixture();
        let cases: &[(i64, &str, &[i64], Option<i64>)] = &[
            // revision, base, segments (first revisions), lease table from
            (10, "A", &[], None),
            (15, "A", &[11], None),
            (20, "A", &[11], Some(11)),
            (24, "A", &[11, 21], Some(11)),
            (25, "B", &[], None),
            (26, "B", &[21], None),
            (40, "B", &[21, 31], Some(31)),
        ];
        for (rev, b, firsts, leases) in cases {
            let p = plan(*rev, &bases, &segs).unwrap();
            assert_eq!(&p.base, b, "revision {rev}");
            let got: Vec<i64> = p.segments.iter().map(|s| s.first_revision).collect();
            assert_eq!(&got, firsts, "revision {rev}");
            assert_eq!(p.leases.map(|l| l[0].id), *leases, "revision {rev}");
        }
    }

    #[test]
    fn gaps_missing_objects_and_bad_links_are_refused_by_name() {
        let (bases, mut segs) = fixture();
        assert!(matches!(
            plan(41, &bases, &segs),
            Err(PointError::AfterNewest { newest: 40, .. })
        ));
        assert!(matches!(
            plan(5, &bases, &segs),
            Err(PointError::BeforeEveryBackup {
                oldest_revision: 10,
                ..
            })
        ));
        segs.objects.remove("o21");
        // Before the missing segment still works; A after it does not, B from its own
        // revision needs o21 too.
        assert!(plan(20, &bases, &segs).is_ok());
        let err = plan(35, &bases, &segs).unwrap_err().to_string();
        assert!(err.contains("segment o21 is missing"), "{err}");
        let (_, mut segs) = fixture();
        segs.by_first.get_mut(&31).unwrap().previous_sha256 = Some("forged".into());
        let err = plan(35, &bases, &segs).unwrap_err().to_string();
        assert!(err.contains("does not follow"), "{err}");
        assert!(plan(30, &bases, &segs).is_ok());
    }

    #[test]
    fn a_break_is_named_and_a_new_chain_starts_at_the_next_backup() {
        let bases = vec![base("A", 10, 0), base("C", 60, 100)];
        let mut segs = store(vec![seg(11, 20, None, 10), seg(61, 70, None, 110)]);
        segs.breaks.push(ChainBreak {
            after_revision: 20,
            reason: "compacted".into(),
            detail: "revision 21 was compacted".into(),
            at: t(15),
            new_chain_base: None,
        });
        let err = plan(40, &bases, &segs).unwrap_err();
        assert!(
            matches!(err, PointError::InGap { reached: 20, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("compacted"), "{err}");
        assert_eq!(plan(65, &bases, &segs).unwrap().base, "C");
        let v = views(&bases, &segs);
        let a = v[0].as_ref().unwrap();
        assert_eq!((a.from_revision, a.to_revision, a.segments), (11, 20, 1));
        assert!(a.broken.as_deref().unwrap().starts_with("compacted"));
        let c = v[1].as_ref().unwrap();
        assert_eq!((c.to_revision, c.broken.clone()), (70, None));
    }

    #[test]
    fn a_backup_taken_after_history_went_back_never_reaches_the_old_chain() {
        // A at 10; its chain to 40 (sealed t10-t30). etcd is then restored without a bump to
        // revision 15; R (revision 18, t400) is the new history's backup. Once etcd passed 40,
        // N (45, t600) started a new chain.
        let bases = vec![base("A", 10, 0), base("R", 18, 400), base("N", 45, 600)];
        let mut segs = store(vec![
            seg(11, 20, None, 10),
            seg(21, 30, Some("h11"), 20),
            seg(31, 40, Some("h21"), 30),
            seg(46, 50, None, 610),
        ]);
        segs.breaks.push(ChainBreak {
            after_revision: 40,
            reason: "rewound".into(),
            detail: "etcd is at revision 16".into(),
            at: t(410),
            new_chain_base: None,
        });
        assert!(abandoned(&bases[1], &segs.by_first[&11]));
        assert!(!abandoned(&bases[0], &segs.by_first[&11]));
        // Within the clock skew (the catalog's future tolerance, 5 minutes) a seal and a
        // backup are not ordered: not abandoned.
        assert!(!abandoned(&base("S", 15, 309), &segs.by_first[&11]));
        assert!(abandoned(&base("S", 15, 311), &segs.by_first[&11]));
        let cases: &[(i64, &str, &[i64])] = &[
            (18, "R", &[]),
            // R does not reach 19: the old chain's 19 is the old history's (from A).
            (19, "A", &[11]),
            (40, "A", &[11, 21, 31]),
            (48, "N", &[46]),
        ];
        for (rev, b, firsts) in cases {
            let p = plan(*rev, &bases, &segs).unwrap();
            assert_eq!(&p.base, b, "revision {rev}");
            let got: Vec<i64> = p.segments.iter().map(|s| s.first_revision).collect();
            assert_eq!(&got, firsts, "revision {rev}");
        }
        assert_eq!(segs.reach(&bases[1]), 18);
        let v = views(&bases, &segs);
        assert!(v[1].is_none(), "R has no chain: {:?}", v[1]);
        assert_eq!(v[0].as_ref().unwrap().to_revision, 40);
        // A point in time after the restore is the new history's, not the old chain's higher
        // revision sealed earlier.
        assert_eq!(resolve(At::Time(t(450)), &bases, &segs).unwrap(), 18);
        assert_eq!(resolve(At::Time(t(35)), &bases, &segs).unwrap(), 40);
        assert_eq!(resolve(At::Time(t(620)), &bases, &segs).unwrap(), 50);
        assert_eq!(resolve(At::Latest, &bases, &segs).unwrap(), 50);
        // Retention: the old chain is A's, never R's (R neither owns it nor ends A's range).
        let forgotten = |forget: &[&str]| -> Vec<i64> {
            let forget = forget.iter().copied().collect();
            forgotten_segments(&bases, &segs, &forget)
                .iter()
                .map(|s| s.first_revision)
                .collect()
        };
        assert_eq!(forgotten(&["R"]), Vec::<i64>::new());
        assert_eq!(forgotten(&["A"]), vec![11, 21, 31]);
        assert_eq!(forgotten(&["A", "R"]), vec![11, 21, 31]);
        assert_eq!(forgotten(&["N"]), vec![46]);
    }

    #[test]
    fn a_chain_is_deleted_with_its_backup_and_shared_segments_stay() {
        let (bases, segs) = fixture();
        let ids = |forget: &[&str]| -> Vec<i64> {
            let forget = forget.iter().copied().collect();
            forgotten_segments(&bases, &segs, &forget)
                .iter()
                .map(|s| s.first_revision)
                .collect()
        };
        // A's range (10, 25] holds 11-20 and 21-30 (shared with B's (25, inf)).
        assert_eq!(ids(&["A"]), vec![11]);
        assert_eq!(ids(&["B"]), vec![31]);
        assert_eq!(ids(&[]), Vec::<i64>::new());
        assert_eq!(ids(&["A", "B"]), vec![11, 21, 31]);
        // Segments no backup can use (below the oldest) go too.
        let late = vec![base("B", 25, 50)];
        let forget = Default::default();
        let orphans: Vec<i64> = forgotten_segments(&late, &segs, &forget)
            .iter()
            .map(|s| s.first_revision)
            .collect();
        assert_eq!(orphans, vec![11]);
    }

    #[test]
    fn views_stop_at_the_next_backup_and_points_resolve() {
        let (bases, segs) = fixture();
        let v = views(&bases, &segs);
        assert_eq!(v[0].as_ref().unwrap().to_revision, 25);
        assert_eq!(v[0].as_ref().unwrap().segments, 2);
        assert_eq!(v[1].as_ref().unwrap().to_revision, 40);
        assert_eq!(resolve(At::Latest, &bases, &segs).unwrap(), 40);
        assert_eq!(resolve(At::Time(t(25)), &bases, &segs).unwrap(), 30);
        assert_eq!(resolve(At::Time(t(9)), &bases, &segs).unwrap(), 10);
        assert_eq!(resolve(At::Time(t(55)), &bases, &segs).unwrap(), 40);
        assert!(resolve(At::Time(t(-5)), &bases, &segs).is_err());
        assert_eq!(resolve(At::Revision(7), &bases, &segs).unwrap(), 7);
    }
}
