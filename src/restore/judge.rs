//! Does the etcd that started serve the restored data? A pure decision on what was observed
//! (`steps::observe_etcd` asks etcd) against what the restore expects.

use crate::etcd::EtcdError;

/// What a restored etcd must serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub revision: i64,
    /// Every key revision in the snapshot (`Status::total_key`): an upper bound.
    pub total_key: u64,
    /// The live keys counted in the snapshot; exact when known.
    pub live_keys: Option<u64>,
    /// Other members restore the same snapshot; those already serving may have written (their
    /// API servers start), so the revision may be past the restored one.
    pub other_members: bool,
    /// The backed-up cluster's id: the restored cluster has a new token, so a member that still
    /// reports this id runs the old data (`None`: not checked, the token was given).
    pub old_cluster_id: Option<u64>,
}

/// One count of keys.
#[derive(Debug)]
pub enum Read {
    /// Not asked (there was no leader to ask, or nothing needed it).
    Skipped,
    Keys(u64),
    Failed {
        error: EtcdError,
        /// etcd answered OutOfRange: at a revision below the member's own, the revision is
        /// compacted.
        out_of_range: bool,
    },
}

/// What one member answered.
#[derive(Debug)]
pub struct Observed {
    pub endpoint: String,
    pub has_leader: bool,
    pub revision: i64,
    pub cluster_id: u64,
    /// Linearizable count of every key: the cluster has a quorum and this member is in it.
    pub keys: Read,
    /// Serializable count at the restored revision: this member's own data, whatever was
    /// written since (`Skipped` without an expectation).
    pub at_restored: Read,
}

/// Why etcd is not ready yet: asked again until the deadline.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("{endpoint} has no raft leader yet")]
    NoLeader { endpoint: String },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// etcd answers, but not with the restored data: final.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("{endpoint} still belongs to the backed-up cluster {cluster_id:x}: it is not serving the restored data (a new cluster); check etcd.yaml and its data dir, or `etcdsafe restore --rollback`")]
    OldCluster { endpoint: String, cluster_id: u64 },
    #[error("etcd is healthy but at revision {revision}, the restore expected {expected}: it is not serving the restored data; check etcd.yaml and its data dir, or `etcdsafe restore --rollback`")]
    Revision { revision: i64, expected: i64 },
    #[error("etcd is at revision {revision} but cannot read the restored revision {expected} ({source}): it is not serving the restored data; check etcd.yaml and its data dir, or `etcdsafe restore --rollback`")]
    Unreadable {
        revision: i64,
        expected: i64,
        #[source]
        source: EtcdError,
    },
    #[error("etcd serves {served} keys at revision {revision}, the backup holds {live}: it is not serving the restored data; check etcd.yaml and its data dir, or `etcdsafe restore --rollback`")]
    Keys {
        served: u64,
        revision: i64,
        live: u64,
    },
    #[error("etcd serves {served} keys, more than the {total_key} key revisions in the backup: it is not serving the restored data")]
    TooManyKeys { served: u64, total_key: u64 },
}

/// What a healthy member serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// At the expected revision (or, without an expectation, whatever it serves).
    Exact { revision: i64, keys: u64 },
    /// Past the restored revision, written by members already serving; `keys` at the restored
    /// revision.
    Later {
        revision: i64,
        restored: i64,
        keys: u64,
    },
    /// Past the restored revision, which those members compacted; `keys` now.
    LaterCompacted {
        revision: i64,
        restored: i64,
        keys: u64,
    },
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Served::Exact { revision, keys } => write!(f, "revision {revision}, {keys} keys"),
            Served::Later {
                revision,
                restored,
                keys,
            } => write!(
                f,
                "revision {revision} ({} writes since the restored revision {restored}, by members already serving), {keys} keys at revision {restored}",
                revision - restored
            ),
            Served::LaterCompacted {
                revision,
                restored,
                keys,
            } => write!(
                f,
                "revision {revision} ({} writes since the restored revision {restored}, by members already serving, which compacted it), {keys} keys",
                revision - restored
            ),
        }
    }
}

#[derive(Debug)]
pub enum Verdict {
    Serves(Served),
    NotYet(NotReady),
    Wrong(Mismatch),
}

/// Judges one observation. Without an expectation (a rollback), a member with a leader that
/// answers a linearizable read serves.
pub fn judge(observed: Observed, expected: Option<Expected>) -> Verdict {
    let Observed {
        endpoint,
        has_leader,
        revision,
        cluster_id,
        keys,
        at_restored,
    } = observed;
    if !has_leader {
        return Verdict::NotYet(NotReady::NoLeader { endpoint });
    }
    if expected.and_then(|e| e.old_cluster_id) == Some(cluster_id) {
        return Verdict::Wrong(Mismatch::OldCluster {
            endpoint,
            cluster_id,
        });
    }
    let count = match keys {
        Read::Keys(n) => n,
        Read::Failed { error, .. } => return Verdict::NotYet(NotReady::Etcd(error)),
        Read::Skipped => return Verdict::NotYet(NotReady::NoLeader { endpoint }),
    };
    let Some(expected) = expected else {
        return Verdict::Serves(Served::Exact {
            revision,
            keys: count,
        });
    };
    let rev = expected.revision;
    let later = expected.other_members && revision > rev;
    if revision != rev && !later {
        return Verdict::Wrong(Mismatch::Revision {
            revision,
            expected: rev,
        });
    }
    let restored = match at_restored {
        Read::Keys(n) => n,
        Read::Failed {
            error: error @ EtcdError::Timeout { .. },
            ..
        } => return Verdict::NotYet(NotReady::Etcd(error)),
        // kube-apiserver compacts every 5 minutes: on a member restored that much later than the
        // first ones, the restored revision is gone. It answers in the restored cluster's quorum
        // past the restored revision, which an etcd on old data cannot do.
        Read::Failed {
            out_of_range: true, ..
        } if later => {
            return Verdict::Serves(Served::LaterCompacted {
                revision,
                restored: rev,
                keys: count,
            })
        }
        Read::Failed { error, .. } => {
            return Verdict::Wrong(Mismatch::Unreadable {
                revision,
                expected: rev,
                source: error,
            })
        }
        Read::Skipped => return Verdict::NotYet(NotReady::NoLeader { endpoint }),
    };
    if let Some(live) = expected.live_keys {
        let counted = [(!later).then_some(count), Some(restored)];
        if let Some(n) = counted.into_iter().flatten().find(|n| *n != live) {
            return Verdict::Wrong(Mismatch::Keys {
                served: n,
                revision: rev,
                live,
            });
        }
    }
    let served = if later { restored } else { count.max(restored) };
    if served > expected.total_key {
        return Verdict::Wrong(Mismatch::TooManyKeys {
            served,
            total_key: expected.total_key,
        });
    }
    Verdict::Serves(if later {
        Served::Later {
            revision,
            restored: rev,
            keys: restored,
        }
    } else {
        Served::Exact {
            revision,
            keys: count,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OLD_CLUSTER: u64 = 0xabc;

    fn call_failed() -> EtcdError {
        EtcdError::Call {
            endpoint: "https://127.0.0.1:2379".into(),
            call: "Range",
            source: crate::etcd::EtcdCause(etcd_client::Error::InvalidArgs(
                "OutOfRange: etcdserver: mvcc: required revision has been compacted".into(),
            )),
        }
    }

    fn timed_out() -> EtcdError {
        EtcdError::Timeout {
            endpoint: "https://127.0.0.1:2379".into(),
            call: "Range",
            timeout: Duration::from_secs(1),
        }
    }

    fn compacted() -> Read {
        Read::Failed {
            error: call_failed(),
            out_of_range: true,
        }
    }

    /// A member at the expected revision serving exactly the backup's 10 keys.
    fn seen(revision: i64, keys: Read, at_restored: Read) -> Observed {
        Observed {
            endpoint: "https://127.0.0.1:2379".into(),
            has_leader: true,
            revision,
            cluster_id: 0xdef,
            keys,
            at_restored,
        }
    }

    fn single() -> Option<Expected> {
        Some(Expected {
            revision: 100,
            total_key: 12,
            live_keys: Some(10),
            other_members: false,
            old_cluster_id: Some(OLD_CLUSTER),
        })
    }

    fn member_of_three() -> Option<Expected> {
        Some(Expected {
            other_members: true,
            ..single().unwrap()
        })
    }

    #[test]
    fn table() {
        struct Case {
            what: &'static str,
            observed: Observed,
            expected: Option<Expected>,
            /// "serves: <text>", "not yet: <text>" or "wrong: <text>" (a prefix of the message)
            verdict: &'static str,
        }
        let cases = vec![
            Case {
                what: "single member serving the backup",
                observed: seen(100, Read::Keys(10), Read::Keys(10)),
                expected: single(),
                verdict: "serves: revision 100, 10 keys",
            },
            Case {
                what: "no leader yet",
                observed: Observed {
                    has_leader: false,
                    ..seen(100, Read::Skipped, Read::Skipped)
                },
                expected: single(),
                verdict: "not yet: https://127.0.0.1:2379 has no raft leader yet",
            },
            Case {
                what: "no quorum: the linearizable read fails",
                observed: seen(100, Read::Failed { error: timed_out(), out_of_range: false }, Read::Skipped),
                expected: member_of_three(),
                verdict: "not yet: etcd at https://127.0.0.1:2379: Range timed out",
            },
            Case {
                what: "still the old cluster (checked before anything else is read)",
                observed: Observed {
                    cluster_id: OLD_CLUSTER,
                    ..seen(100, Read::Failed { error: timed_out(), out_of_range: false }, Read::Skipped)
                },
                expected: single(),
                verdict: "wrong: https://127.0.0.1:2379 still belongs to the backed-up cluster abc",
            },
            Case {
                what: "the old cluster id is not checked when a token was given",
                observed: Observed {
                    cluster_id: OLD_CLUSTER,
                    ..seen(100, Read::Keys(10), Read::Keys(10))
                },
                expected: Some(Expected {
                    old_cluster_id: None,
                    ..single().unwrap()
                }),
                verdict: "serves: revision 100, 10 keys",
            },
            Case {
                what: "single member at another revision",
                observed: seen(101, Read::Keys(10), Read::Keys(10)),
                expected: single(),
                verdict: "wrong: etcd is healthy but at revision 101, the restore expected 100",
            },
            Case {
                what: "a member of several behind the restored revision",
                observed: seen(99, Read::Keys(10), Read::Keys(10)),
                expected: member_of_three(),
                verdict: "wrong: etcd is healthy but at revision 99, the restore expected 100",
            },
            Case {
                what: "a member of several past the restored revision",
                observed: seen(103, Read::Keys(11), Read::Keys(10)),
                expected: member_of_three(),
                verdict: "serves: revision 103 (3 writes since the restored revision 100, by members already serving), 10 keys at revision 100",
            },
            Case {
                what: "past the restored revision, which was compacted",
                observed: seen(103, Read::Keys(11), compacted()),
                expected: member_of_three(),
                verdict: "serves: revision 103 (3 writes since the restored revision 100, by members already serving, which compacted it), 11 keys",
            },
            Case {
                what: "compacted at the exact revision: not the restored data",
                observed: seen(100, Read::Keys(10), compacted()),
                expected: member_of_three(),
                verdict: "wrong: etcd is at revision 100 but cannot read the restored revision 100 (etcd at",
            },
            Case {
                what: "another failure past the restored revision",
                observed: seen(103, Read::Keys(11), Read::Failed { error: call_failed(), out_of_range: false }),
                expected: member_of_three(),
                verdict: "wrong: etcd is at revision 103 but cannot read the restored revision 100",
            },
            Case {
                what: "the read at the restored revision timed out",
                observed: seen(100, Read::Keys(10), Read::Failed { error: timed_out(), out_of_range: false }),
                expected: single(),
                verdict: "not yet: etcd at https://127.0.0.1:2379: Range timed out",
            },
            Case {
                what: "other keys than the backup's",
                observed: seen(100, Read::Keys(9), Read::Keys(9)),
                expected: single(),
                verdict: "wrong: etcd serves 9 keys at revision 100, the backup holds 10",
            },
            Case {
                what: "past the restored revision, the keys now are not compared",
                observed: seen(105, Read::Keys(30), Read::Keys(10)),
                expected: member_of_three(),
                verdict: "serves: revision 105",
            },
            Case {
                what: "past the restored revision, other keys at it",
                observed: seen(105, Read::Keys(10), Read::Keys(8)),
                expected: member_of_three(),
                verdict: "wrong: etcd serves 8 keys at revision 100, the backup holds 10",
            },
            Case {
                what: "live keys unknown: more than the backup's key revisions",
                observed: seen(100, Read::Keys(13), Read::Keys(13)),
                expected: Some(Expected {
                    live_keys: None,
                    ..single().unwrap()
                }),
                verdict: "wrong: etcd serves 13 keys, more than the 12 key revisions in the backup",
            },
            Case {
                what: "live keys unknown, within the bound",
                observed: seen(100, Read::Keys(12), Read::Keys(12)),
                expected: Some(Expected {
                    live_keys: None,
                    ..single().unwrap()
                }),
                verdict: "serves: revision 100, 12 keys",
            },
            Case {
                what: "rollback: no expectation, any revision",
                observed: seen(7, Read::Keys(3), Read::Skipped),
                expected: None,
                verdict: "serves: revision 7, 3 keys",
            },
            Case {
                what: "rollback: no quorum yet",
                observed: seen(7, Read::Failed { error: timed_out(), out_of_range: false }, Read::Skipped),
                expected: None,
                verdict: "not yet: etcd at",
            },
        ];
        for case in cases {
            let got = match judge(case.observed, case.expected) {
                Verdict::Serves(s) => format!("serves: {s}"),
                Verdict::NotYet(why) => format!("not yet: {why}"),
                Verdict::Wrong(m) => format!("wrong: {m}"),
            };
            assert!(
                got.starts_with(case.verdict),
                "{}:\n  got  {got}\n  want {}",
                case.what,
                case.verdict
            );
        }
    }
}
