//! Segment objects no segment manifest names, and which of them `prune` deletes. Pure,
//! table-tested; `prune.rs` lists, deletes and reports.
//!
//! A sealer uploads its data object (and its signature) before it writes the manifest that
//! publishes them, so a sealer killed in between, or one that lost the race for its first
//! revision (`put_new` refused) and could not delete what it uploaded, leaves objects nothing
//! names: orphans. For a data object `deltas/<first>-<last>-<nonce>.seg.zst.age` or a signature
//! `deltas/<first>-<last>-<nonce>.json.sig` that no loaded manifest names:
//! - a manifest holds its first revision (naming another object): another writer won that
//!   slot, and manifests are written exclusively and never replaced, so it can never be
//!   published: deleted ([`Why::LostSlot`]).
//! - its first revision is at or below the newest manifest's last revision: the chain has moved
//!   past it ([`Why::Passed`]). Deleted once the store says it was written [`SEAL_GRACE`] ago:
//!   two instances capturing at once (during a leadership change) can start from different
//!   points, one inside the other's range, and such a seal publishes its manifest after its
//!   upload.
//! - above every manifest's last revision: it may be a seal in flight. Kept, unless the store
//!   says it was written [`IN_FLIGHT_MAX_AGE`] ago: no seal takes that long, its sealer crashed
//!   ([`Why::Abandoned`]).
//!
//! A listing without modification times deletes by the first two rules at once and keeps the
//! third kind. An object whose first revision has a manifest key listed that was not loaded (its
//! content names another first revision) is kept: whether it is named cannot be told. Nothing
//! else under `deltas/` (manifests, `breaks/`, other names) is ever a candidate.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};

use super::chain::Segments;
use super::segment::{self, DATA_SUFFIX, PREFIX};
use crate::catalog::signature::{signature_key, SIGNATURE_SUFFIX};
use crate::storage::ObjectInfo;

/// An orphan inside the covered range is deleted only once written this long ago: longer than
/// any seal takes from its upload to its manifest.
pub const SEAL_GRACE: TimeDelta = TimeDelta::minutes(15);
/// An orphan above the newest segment is taken for a crashed sealer's once written this long ago.
pub const IN_FLIGHT_MAX_AGE: TimeDelta = TimeDelta::hours(1);

/// An object prune may delete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub key: String,
    pub first_revision: i64,
    pub why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Another segment was published from the same first revision.
    LostSlot,
    /// The chain has moved past its first revision.
    Passed,
    /// Above the newest segment, and too old to be a seal in flight.
    Abandoned,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::LostSlot => "another seal published a segment from its first revision",
            Why::Passed => "the chain has moved past its first revision",
            Why::Abandoned => {
                "it lies above the newest segment but was written over an hour ago (its sealer stopped)"
            }
        })
    }
}

/// The first revision a segment data object's or signature's key names; `None` for any other
/// key.
pub fn object_first(key: &str) -> Option<i64> {
    let name = key.strip_prefix(PREFIX)?;
    let stem = name
        .strip_suffix(DATA_SUFFIX)
        .or_else(|| name.strip_suffix(SIGNATURE_SUFFIX))?;
    let mut parts = stem.splitn(3, '-');
    let (first, last, nonce) = (parts.next()?, parts.next()?, parts.next()?);
    let revision = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (first, last) = (revision(first)?, revision(last)?);
    let nonce_ok = !nonce.is_empty() && nonce.bytes().all(|b| b.is_ascii_alphanumeric());
    (nonce_ok && first <= last).then_some(first)
}

/// The orphans among `listed` (everything under `deltas/`, as listed) that prune deletes, given
/// the manifests loaded from the same store (see the module doc), in listing order.
pub fn sweepable(listed: &[ObjectInfo], segments: &Segments, now: DateTime<Utc>) -> Vec<Orphan> {
    let named: HashSet<String> = segments
        .by_first
        .values()
        .flat_map(|m| {
            [
                m.object.key.clone(),
                signature_key(&segment::signature_id(&m.object.key)),
            ]
        })
        .collect();
    let unloaded: HashSet<i64> = listed
        .iter()
        .filter_map(|o| segment::manifest_first(&o.key))
        .filter(|first| !segments.by_first.contains_key(first))
        .collect();
    let newest_last = segments.by_first.values().map(|m| m.last_revision).max();
    listed
        .iter()
        .filter(|o| !named.contains(&o.key))
        .filter_map(|object| {
            let first = object_first(&object.key)?;
            if unloaded.contains(&first) {
                return None;
            }
            let age = object.modified.map(|modified| now - modified);
            let why = if segments.by_first.contains_key(&first) {
                Why::LostSlot
            } else if newest_last.is_some_and(|last| first <= last) {
                if age.is_some_and(|age| age < SEAL_GRACE) {
                    return None;
                }
                Why::Passed
            } else if age.is_some_and(|age| age >= IN_FLIGHT_MAX_AGE) {
                Why::Abandoned
            } else {
                return None;
            };
            Some(Orphan {
                key: object.key.clone(),
                first_revision: first,
                why,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deltas::segment::{SegmentManifest, SegmentObject};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap()
    }

    fn data(first: i64, last: i64, nonce: &str) -> String {
        segment::data_key(first, last, nonce)
    }

    fn sig(first: i64, last: i64, nonce: &str) -> String {
        signature_key(&segment::signature_id(&data(first, last, nonce)))
    }

    fn manifest(first: i64, last: i64, nonce: &str) -> SegmentManifest {
        SegmentManifest {
            format_version: 1,
            first_revision: first,
            last_revision: last,
            first_time: now(),
            last_time: now(),
            sealed_at: now(),
            events: 1,
            object: SegmentObject {
                key: data(first, last, nonce),
                size: 1,
                sha256: String::new(),
            },
            previous_sha256: None,
            chain_base: "b".into(),
            compact_revision: 0,
            leases: vec![],
            recipients: vec![],
            captured_by: "x".into(),
            tool_version: "t".into(),
            last_revision_sha256: None,
        }
    }

    /// Published: 11-20 (nonce a), 21-30 (nonce b), each with a signature.
    fn store() -> (Vec<ObjectInfo>, Segments) {
        let manifests = [manifest(11, 20, "a"), manifest(21, 30, "b")];
        let mut listed = Vec::new();
        for m in &manifests {
            for key in [
                segment::manifest_key(m.first_revision),
                m.object.key.clone(),
                signature_key(&segment::signature_id(&m.object.key)),
            ] {
                listed.push(ObjectInfo {
                    key,
                    size: 1,
                    modified: Some(now() - TimeDelta::days(1)),
                });
            }
        }
        let segments = Segments {
            by_first: manifests
                .into_iter()
                .map(|m| (m.first_revision, m))
                .collect(),
            ..Segments::default()
        };
        (listed, segments)
    }

    #[test]
    fn keys_of_segment_objects_and_signatures_only() {
        let cases: &[(&str, Option<i64>)] = &[
            (
                "deltas/00000000000000000011-00000000000000000020-0a1b2c3d.seg.zst.age",
                Some(11),
            ),
            (
                "deltas/00000000000000000011-00000000000000000020-0a1b2c3d.json.sig",
                Some(11),
            ),
            // Manifests, breaks, full backups and other names are never segment objects.
            ("deltas/00000000000000000011.json", None),
            ("deltas/breaks/00000000000000000020.json", None),
            (
                "deltas/00000000000000000011-00000000000000000020-.seg.zst.age",
                None,
            ),
            (
                "deltas/00000000000000000011-00000000000000000020-a/b.seg.zst.age",
                None,
            ),
            (
                "deltas/00000000000000000011-00000000000000000020-a-b.seg.zst.age",
                None,
            ),
            (
                "deltas/00000000000000000011-00000000000000000020-a.seg.zst",
                None,
            ),
            ("deltas/11-20-a.seg.zst.age", None),
            (
                "deltas/00000000000000000021-00000000000000000020-a.seg.zst.age",
                None,
            ),
            (
                "deltas/sub/00000000000000000011-00000000000000000020-a.seg.zst.age",
                None,
            ),
            (
                "00000000000000000011-00000000000000000020-a.seg.zst.age",
                None,
            ),
            ("20261124T115959.000Z-rev10.db.zst.age", None),
        ];
        for (key, first) in cases {
            assert_eq!(object_first(key), *first, "{key}");
        }
    }

    #[test]
    fn only_orphans_that_can_never_be_published_are_swept() {
        let fresh = Some(now() - TimeDelta::seconds(5));
        let settled = Some(now() - SEAL_GRACE);
        let stale = Some(now() - IN_FLIGHT_MAX_AGE);
        // what, key, written at, swept
        type Case = (&'static str, String, Option<DateTime<Utc>>, Option<Why>);
        let cases: &[Case] = &[
            // Named by a manifest: never.
            ("published object", data(11, 20, "a"), stale, None),
            ("published signature", sig(21, 30, "b"), stale, None),
            // Another writer published from the same first revision: at once.
            ("lost slot", data(21, 32, "c"), fresh, Some(Why::LostSlot)),
            (
                "lost slot, signature",
                sig(21, 32, "c"),
                fresh,
                Some(Why::LostSlot),
            ),
            (
                "lost slot, no time",
                data(11, 15, "c"),
                None,
                Some(Why::LostSlot),
            ),
            // Inside the covered range, no manifest at its first revision: after the grace.
            ("passed, fresh", data(15, 25, "d"), fresh, None),
            (
                "passed, settled",
                data(15, 25, "d"),
                settled,
                Some(Why::Passed),
            ),
            (
                "passed at the last revision",
                data(30, 35, "d"),
                settled,
                Some(Why::Passed),
            ),
            ("passed, no time", sig(15, 25, "d"), None, Some(Why::Passed)),
            // Above the newest segment: a seal in flight, unless an hour old.
            ("in flight", data(31, 40, "e"), fresh, None),
            ("in flight, settled", data(31, 40, "e"), settled, None),
            ("in flight, no time", data(31, 40, "e"), None, None),
            ("abandoned", data(31, 40, "e"), stale, Some(Why::Abandoned)),
            (
                "abandoned signature",
                sig(41, 50, "e"),
                stale,
                Some(Why::Abandoned),
            ),
            // Never candidates, however old.
            ("a manifest", segment::manifest_key(99), stale, None),
            ("a break", segment::break_key(30), stale, None),
            ("another name", "deltas/notes.txt".into(), stale, None),
        ];
        let (listed, segments) = store();
        for (what, key, modified, expected) in cases {
            let mut all = listed.clone();
            all.push(ObjectInfo {
                key: key.clone(),
                size: 1,
                modified: *modified,
            });
            let got = sweepable(&all, &segments, now());
            let want: Vec<Orphan> = expected
                .iter()
                .map(|why| Orphan {
                    key: key.clone(),
                    first_revision: object_first(key).unwrap(),
                    why: *why,
                })
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn without_segments_every_orphan_may_be_in_flight() {
        let listed = vec![ObjectInfo {
            key: data(11, 20, "a"),
            size: 1,
            modified: Some(now() - SEAL_GRACE),
        }];
        assert!(sweepable(&listed, &Segments::default(), now()).is_empty());
    }

    #[test]
    fn a_manifest_that_was_not_loaded_keeps_the_objects_of_its_revision() {
        // `deltas/00…021.json` is listed, but `deltas::load` skipped it (its content names
        // another first revision): the objects from 21 may be what it names.
        let (mut listed, mut segments) = store();
        segments.by_first.remove(&21);
        let got = sweepable(&listed, &segments, now());
        assert!(got.is_empty(), "{got:?}");
        // With no manifest key for 21 at all, they are above the newest segment and a day old:
        // a crashed sealer's.
        listed.retain(|o| o.key != segment::manifest_key(21));
        let got = sweepable(&listed, &segments, now());
        assert_eq!(
            got.iter()
                .map(|o| (o.key.clone(), o.why))
                .collect::<Vec<_>>(),
            vec![
                (data(21, 30, "b"), Why::Abandoned),
                (sig(21, 30, "b"), Why::Abandoned),
            ]
        );
    }
}
