//! The capture worker: on the snapshot leader, watch the whole keyspace from where the chain
//! stands and seal segments every `deltas.interval` (or at `deltas.max-bytes`).
//!
//! One term (while this instance leads):
//! 1. Resume point, from the store: the newest segment's last revision + 1 (the chain goes on,
//!    also past full backups taken since it was sealed: the revisions between stay covered),
//!    unless a break was recorded after it and a newer full backup exists: then that backup's
//!    revision + 1 (a new chain); with no segment yet, the newest full backup's revision + 1.
//! 2. Watch everything from there (`prev_kv` off, progress notifications on). Events are
//!    checked to be contiguous (every revision changes at least one key, so revision `n + 1`
//!    follows `n`) and written to a plain spool file, with their sub-revision (their place in
//!    the revision's txn) and the time they arrived.
//! 3. Seal: the lease table (`LeaseLeases` + `LeaseTimeToLive`) and the compaction revision
//!    are read, the spool file is compressed and encrypted to a second spool file, uploaded,
//!    signed (with `signing`), and its manifest written exclusively under the first revision:
//!    of two instances sealing from one revision, one wins and the other starts again from
//!    the store.
//! 4. A watch that ends or fails is resumed from the last sealed revision. When etcd answers
//!    that the resume point was compacted, the chain is broken: a break record is written, a
//!    full backup is taken at once, and the next term starts a new chain from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::segment::{
    self, ChainBreak, Event, EventKind, LeaseRecord, RecordWriter, SegmentManifest, SegmentObject,
};
use super::DeltaError;
use crate::config::{DeltasConfig, EtcdConfig, SigningConfig};
use crate::crypto::Recipients;
use crate::etcd::Target;
use crate::metrics::Metrics;
use crate::service::worker::Outcome;
use crate::storage::{get_small, ObjectStore, StorageError};

/// The largest watch response accepted (etcd's own request limit is 1.5 MiB by default; a
/// catch-up response carries up to 1,000 revisions).
const WATCH_MESSAGE_LIMIT: usize = 256 << 20;

/// What the capture needs from the service it runs in.
#[async_trait]
pub trait Host: Send + Sync {
    /// Whether this instance is the snapshot leader now (`None`: it could not tell).
    async fn leadership(&self) -> Option<bool>;
    /// Whether this instance is known to be the snapshot leader now.
    async fn leads(&self) -> bool {
        self.leadership().await == Some(true)
    }
    /// Takes a full backup now (after a chain break), returning its id once it is done.
    async fn full_backup_now(&self) -> Option<String>;
    fn metrics(&self) -> &Metrics;
}

/// The capture's settings.
pub struct Capture {
    pub store: Arc<dyn ObjectStore>,
    pub etcd: EtcdConfig,
    pub recipients: Recipients,
    pub spool_dir: PathBuf,
    pub settings: DeltasConfig,
    pub signing: Option<SigningConfig>,
    /// Who captures (recorded in each segment).
    pub identity: String,
    /// The last chain break recorded (its `after` revision), so a retry does not count it
    /// again.
    pub last_break: std::sync::Mutex<Option<i64>>,
    /// A last sealed revision whose witness etcd compacted exactly (its compaction is the next
    /// revision): the chain resumes after it with the revision check only.
    pub unverifiable: std::sync::Mutex<Option<i64>>,
}

/// The reason a chain break records when etcd's history went back.
pub const REWOUND: &str = "rewound";

/// How a term ended without an error.
enum TermEnd {
    Cancelled,
    /// No full backup yet to start a chain from.
    Waiting,
    NotLeader,
    /// Another instance published a segment from our first revision.
    Lost,
    /// A full backup was taken to start a new chain after a rewind.
    NewChain,
    /// The last seal's witness was compacted: resume without it.
    Unverifiable,
    /// That full backup failed.
    NewChainFailed,
}

/// Where a term starts.
#[derive(Debug, Clone)]
enum Start {
    From(Resume),
    /// etcd's history went back below the chain, which ends at `last`, as seen at `since`
    /// (unix seconds): a new chain needs a full backup taken after that, above `above` (the
    /// highest revision anything stored by then holds).
    AfterRewind {
        last: i64,
        above: i64,
        since: f64,
    },
}

/// Where a term starts.
#[derive(Debug, Clone)]
struct Resume {
    from: i64,
    /// When what `from` follows was sealed (or the full backup taken), unix seconds.
    sealed_at: f64,
    previous: Option<String>,
    base: String,
    compact: i64,
    /// The last segment's witness (`lastRevisionSha256`): etcd's events at `from - 1` must
    /// match it before the chain goes on.
    witness: Option<String>,
}

impl Capture {
    /// One attempt of the service's `delta capture` worker (`worker::Worker::continuous`,
    /// which starts it again at once after `Done`, after its backoff after `Failed`, and
    /// polls quietly while `Idle`): a term while this instance leads.
    pub async fn attempt(&self, host: &dyn Host, cancel: &CancellationToken) -> Outcome {
        if cancel.is_cancelled() {
            return Outcome::Stopped;
        }
        host.metrics().delta_configured(self.settings.interval);
        self.sweep_spool();
        match host.leadership().await {
            Some(true) => {}
            // Another instance captures: this one's gauges must not hide the RPO alert.
            Some(false) => {
                host.metrics().delta_not_capturing();
                return Outcome::Idle;
            }
            // Unknown (coordination failing): keep what they say, so the alert still can fire.
            None => {
                host.metrics().delta_lag(0.0);
                return Outcome::Idle;
            }
        }
        match self.term(host, cancel).await {
            Ok(TermEnd::Cancelled) => Outcome::Stopped,
            Ok(TermEnd::Waiting) => Outcome::Idle,
            Ok(TermEnd::NotLeader) => {
                tracing::info!("no longer the snapshot leader: continuous capture paused");
                Outcome::Idle
            }
            Ok(TermEnd::Lost) => {
                tracing::warn!(
                    "another instance sealed the same revisions first: resuming from the store"
                );
                Outcome::Done
            }
            Ok(TermEnd::NewChain | TermEnd::Unverifiable) => Outcome::Done,
            Ok(TermEnd::NewChainFailed) => Outcome::Failed { stage: "capture" },
            Err(DeltaError::Rewound {
                endpoint,
                current,
                last,
            }) => {
                let detail = format!(
                    "etcd at {endpoint} was at revision {current}, not the history the chain recorded up to revision {last} (restored without a revision bump)"
                );
                self.rewound(host, last, &detail).await;
                Outcome::Idle
            }
            Err(DeltaError::Compacted {
                after,
                compact_revision,
            }) => {
                let detail = format!(
                    "revision {} was compacted (compact revision {compact_revision}) before capture could resume",
                    after + 1
                );
                // A retry (the full backup failed) is the same break: counted and logged once;
                // its record is written again (the same key) until the store has it.
                let first_time =
                    self.last_break.lock().expect("not poisoned").replace(after) != Some(after);
                if first_time {
                    tracing::error!(
                        after,
                        compact_revision,
                        "delta chain broken: {detail}; taking a full backup now"
                    );
                    host.metrics().delta_chain_broken("compacted");
                }
                if !self.record_break(after, "compacted", &detail).await {
                    return Outcome::Failed { stage: "capture" };
                }
                if host.full_backup_now().await.is_some() {
                    Outcome::Done
                } else {
                    Outcome::Failed { stage: "capture" }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "continuous capture failed; resuming from the last sealed revision");
                Outcome::Failed { stage: "capture" }
            }
        }
    }

    /// Removes the spool files of captures that are no longer running (a killed process's
    /// `delta-<token>-*.part` and `.seal`, see `spool.rs`); a live process's files are never touched.
    fn sweep_spool(&self) {
        super::spool::sweep(&self.spool_dir);
    }

    /// Writes the break record; false when the store did not take it.
    async fn record_break(&self, after: i64, reason: &str, detail: &str) -> bool {
        let record = ChainBreak {
            after_revision: after,
            reason: reason.to_string(),
            detail: detail.to_string(),
            at: Utc::now(),
            new_chain_base: None,
        };
        let json = serde_json::to_vec_pretty(&record).expect("a break record serializes");
        if let Err(e) = self
            .store
            .put(&segment::break_key(after), Bytes::from(json))
            .await
        {
            tracing::error!(error = %e, "could not record the chain break; retrying");
            return false;
        }
        true
    }

    /// Records that etcd's history went back below the chain ending at `last` (once counted
    /// and logged). The record is written once (its time is when the new history was first
    /// seen: only backups taken after it can start the new chain), and until the store has it.
    async fn rewound(&self, host: &dyn Host, last: i64, detail: &str) -> bool {
        let first_time = self.last_break.lock().expect("not poisoned").replace(last) != Some(last);
        if first_time {
            tracing::error!(
                last,
                "delta chain broken: {detail}; continuous capture stops this chain, and a new one starts from a full backup once etcd's revision passes everything stored"
            );
            host.metrics().delta_chain_broken(REWOUND);
        }
        let key = segment::break_key(last);
        match get_small(self.store.as_ref(), &key, 1 << 20).await {
            Ok(bytes) => {
                let recorded: Option<ChainBreak> = serde_json::from_slice(&bytes).ok();
                if recorded.is_some_and(|b| b.reason == REWOUND) {
                    return true;
                }
            }
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not read the chain break record; retrying");
                return false;
            }
        }
        self.record_break(last, REWOUND, detail).await
    }

    /// Names, in the `rewound` break record after `last`, the full backup the new chain
    /// starts from.
    async fn record_new_chain_base(&self, last: i64, detail: &str, id: &str) -> bool {
        let key = segment::break_key(last);
        let mut record = match get_small(self.store.as_ref(), &key, 1 << 20).await {
            Ok(bytes) => serde_json::from_slice::<ChainBreak>(&bytes).ok(),
            Err(_) => None,
        }
        .filter(|b| b.reason == REWOUND)
        .unwrap_or_else(|| ChainBreak {
            after_revision: last,
            reason: REWOUND.to_string(),
            detail: detail.to_string(),
            at: Utc::now(),
            new_chain_base: None,
        });
        record.new_chain_base = Some(id.to_string());
        let json = serde_json::to_vec_pretty(&record).expect("a break record serializes");
        match self.store.put(&key, Bytes::from(json)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "could not record the new chain's full backup; retrying");
                false
            }
        }
    }

    /// Where the chain stands in the store.
    async fn resume_point(&self) -> Result<Option<Start>, DeltaError> {
        let listing = crate::catalog::list(self.store.as_ref()).await?;
        if listing.backups.is_empty() {
            return Ok(None);
        }
        let segments = super::load(self.store.as_ref()).await?;
        let compact = segments
            .by_first
            .values()
            .map(|s| s.compact_revision)
            .max()
            .unwrap_or(0);
        let bases = super::bases(&listing);
        let new_chain = |base: &super::chain::Base| Resume {
            from: base.revision + 1,
            sealed_at: base.created_at.timestamp_millis() as f64 / 1000.0,
            previous: None,
            base: base.id.clone(),
            compact,
            witness: None,
        };
        if let Some(last) = segments.by_first.values().next_back() {
            // A full backup taken after the last seal (a restart, a pre-upgrade backup, a watch
            // that failed after a scheduled one) does not end the chain: starting over from it
            // would leave the revisions between the last seal and it in no chain, although
            // etcd may still have them. Only a recorded break does; if etcd compacted them
            // meanwhile, the watch says so and the break is recorded then.
            let breaks: Vec<_> = segments
                .breaks
                .iter()
                .filter(|b| b.after_revision == last.last_revision)
                .collect();
            let newest_base = bases.last().expect("a newest backup");
            // History went back after the last seal: recorded, or shown by a full backup taken
            // since with a lower revision (`chain::abandoned`).
            let recorded = breaks.iter().find(|b| b.reason == REWOUND);
            // The backup taken for the new chain, when the record names it (and it is listed),
            // or a newer one above it (taken by this history later, e.g. after the new chain
            // broke before its first seal).
            if let Some(named) = recorded
                .and_then(|b| b.new_chain_base.as_deref())
                .and_then(|id| bases.iter().find(|b| b.id == id))
            {
                let base = bases
                    .iter()
                    .filter(|b| b.created_at >= named.created_at && b.revision >= named.revision)
                    .max_by_key(|b| b.created_at)
                    .unwrap_or(named);
                return Ok(Some(Start::From(new_chain(base))));
            }
            let shown =
                super::chain::abandoned(newest_base, last).then_some(newest_base.created_at);
            if let Some(since) = recorded.map(|b| b.at).or(shown) {
                // Everything stored by then may be the old history's: a new chain starts only
                // from a backup taken later, above all of it.
                let above = bases
                    .iter()
                    .filter(|b| b.created_at <= since)
                    .map(|b| b.revision)
                    .chain([last.last_revision])
                    .max()
                    .unwrap_or(0);
                return Ok(Some(
                    match bases
                        .iter()
                        .filter(|b| b.created_at > since && b.revision > above)
                        .max_by_key(|b| b.created_at)
                    {
                        Some(base) => Start::From(new_chain(base)),
                        None => Start::AfterRewind {
                            last: last.last_revision,
                            above,
                            since: since.timestamp_millis() as f64 / 1000.0,
                        },
                    },
                ));
            }
            if breaks.is_empty() || last.last_revision >= newest_base.revision {
                return Ok(Some(Start::From(Resume {
                    from: last.last_revision + 1,
                    sealed_at: last.sealed_at.timestamp_millis() as f64 / 1000.0,
                    previous: Some(last.object.sha256.clone()),
                    base: last.chain_base.clone(),
                    compact,
                    witness: last.last_revision_sha256.clone(),
                })));
            }
        }
        Ok(Some(Start::From(new_chain(
            bases.last().expect("a newest backup"),
        ))))
    }

    /// After a rewind: waits (polling every `deltas.interval`) until etcd's revision is above
    /// everything the store held when it was seen, then takes the full backup the next term
    /// starts a new chain from.
    async fn after_rewind(
        &self,
        host: &dyn Host,
        cancel: &CancellationToken,
        last: i64,
        above: i64,
        since: f64,
    ) -> Result<TermEnd, DeltaError> {
        // Nothing of this history is sealed: the RPO alert fires while it goes uncaptured.
        host.metrics().delta_resumed(0, since);
        let target = Target::resolve(&self.etcd)?;
        let (endpoint, mut client) = target.connect_any().await?;
        let detail = format!(
            "etcd at {endpoint} went back below revision {last} (restored without a revision bump)"
        );
        if !self.rewound(host, last, &detail).await {
            return Ok(TermEnd::NewChainFailed);
        }
        let mut said = false;
        loop {
            let current = current_revision(&mut client).await?;
            host.metrics().delta_observed(current);
            if current > above {
                break;
            }
            if !said {
                tracing::info!(
                    current,
                    above,
                    "continuous capture waits for etcd's revision to pass everything stored before a new chain starts"
                );
                said = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(TermEnd::Cancelled),
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
            if !host.leads().await {
                return Ok(TermEnd::NotLeader);
            }
        }
        if !host.leads().await {
            return Ok(TermEnd::NotLeader);
        }
        let Some(id) = host.full_backup_now().await else {
            return Ok(TermEnd::NewChainFailed);
        };
        // The new chain starts from exactly this backup (not from one chosen by clocks).
        if !self.record_new_chain_base(last, &detail, &id).await {
            return Ok(TermEnd::NewChainFailed);
        }
        Ok(TermEnd::NewChain)
    }

    /// Whether etcd's revision is not below the chain's last sealed one (the watch then checks
    /// the last segment's witness).
    async fn check_history(
        &self,
        client: &mut Client,
        endpoint: &str,
        last: i64,
    ) -> Result<(), DeltaError> {
        let current = current_revision(client).await?;
        if current < last {
            return Err(DeltaError::Rewound {
                endpoint: endpoint.to_string(),
                current,
                last,
            });
        }
        Ok(())
    }

    async fn term(
        &self,
        host: &dyn Host,
        cancel: &CancellationToken,
    ) -> Result<TermEnd, DeltaError> {
        let mut resume = match self.resume_point().await? {
            None => {
                tracing::info!("continuous capture waits for the first full backup");
                return Ok(TermEnd::Waiting);
            }
            Some(Start::AfterRewind { last, above, since }) => {
                return self.after_rewind(host, cancel, last, above, since).await
            }
            Some(Start::From(resume)) => resume,
        };
        // What the store already holds, for the RPO metrics and alert from the first moment.
        host.metrics()
            .delta_resumed(resume.from - 1, resume.sealed_at);
        let target = Target::resolve(&self.etcd)?;
        let (endpoint, mut client) = target.connect_any().await?;
        if resume.previous.is_some() {
            // Never append another history's changes to the chain.
            self.check_history(&mut client, &endpoint, resume.from - 1)
                .await?;
        } else {
            let current = current_revision(&mut client).await?;
            if current < resume.from - 1 {
                // The full backup is ahead of etcd: etcd went back below it. A chain from it
                // would continue another history; one taken now is this history's.
                tracing::error!(
                    current,
                    base = %resume.base,
                    "etcd is below the newest full backup's revision {} (restored without a revision bump): taking a full backup to start the chain from",
                    resume.from - 1
                );
                return Ok(if host.full_backup_now().await.is_some() {
                    TermEnd::NewChain
                } else {
                    TermEnd::NewChainFailed
                });
            }
        }
        // With a witness, the watch starts at the last sealed revision: its events must match
        // the witness (etcd still has the chain's history) and are not captured again. (If
        // etcd compacted exactly up to `from`, that start is refused: the next term resumes
        // from `from` with the revision check only.)
        let unverifiable =
            *self.unverifiable.lock().expect("not poisoned") == Some(resume.from - 1);
        let mut witness = resume
            .witness
            .clone()
            .filter(|_| !unverifiable)
            .map(|expected| Witness::new(resume.from - 1, expected));
        let start = witness.as_ref().map_or(resume.from, |w| w.revision);
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(start)
            .with_progress_notify();
        // A watch catching up batches up to 1,000 revisions into one response: with Kubernetes
        // objects that is far past the client's default 4 MiB message limit.
        let mut stream = client
            .watch_client()
            .max_decoding_message_size(WATCH_MESSAGE_LIMIT)
            .watch(vec![0u8], Some(options))
            .await
            .map_err(|source| DeltaError::Watch {
                endpoint: endpoint.clone(),
                source,
            })?;
        tracing::info!(from = resume.from, base = %resume.base, "continuous capture started");
        let mut pending = Pending::create(&self.spool_dir, resume.from)?;
        // A new chain starts at its full backup's revision + 1, which need not have changed
        // anything (a fresh etcd is at revision 1 with no key): its first event may come later.
        // A chain that goes on must continue exactly.
        pending.strict = resume.previous.is_some();
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut opened = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // A last seal keeps what was captured before the shutdown.
                    if pending.count() > 0 {
                        self.seal(host, &mut client, &mut pending, &mut resume).await?;
                    }
                    return Ok(TermEnd::Cancelled);
                }
                _ = ticker.tick() => {
                    let lag = pending.newest_ms.map_or(0.0, |ms| (Utc::now().timestamp_millis() - ms) as f64 / 1000.0);
                    host.metrics().delta_lag(lag.max(0.0));
                    if opened.elapsed() >= self.settings.interval {
                        opened = tokio::time::Instant::now();
                        let _ = stream.request_progress().await;
                        if pending.count() > 0 {
                            if !host.leads().await {
                                return Ok(TermEnd::NotLeader);
                            }
                            if let Some(end) = self.seal(host, &mut client, &mut pending, &mut resume).await? {
                                return Ok(end);
                            }
                        } else if !host.leads().await {
                            return Ok(TermEnd::NotLeader);
                        }
                    }
                }
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(DeltaError::WatchEnded { endpoint }),
                        Err(source) => return Err(DeltaError::Watch { endpoint, source }),
                    };
                    if response.canceled() {
                        if witness.is_some() && response.compact_revision() == resume.from {
                            // etcd compacted exactly the witnessed revision: the chain can go
                            // on from the next one, checked by revision only.
                            tracing::warn!(
                                revision = resume.from - 1,
                                "etcd compacted the last sealed revision, so its witness cannot be checked; resuming after it with the revision check only"
                            );
                            *self.unverifiable.lock().expect("not poisoned") = Some(resume.from - 1);
                            return Ok(TermEnd::Unverifiable);
                        }
                        if response.compact_revision() > 0 {
                            // What arrived whole is kept; the chain breaks after it.
                            if pending.count() > 0 {
                                if let Some(end) = self.seal(host, &mut client, &mut pending, &mut resume).await? {
                                    return Ok(end);
                                }
                            }
                            return Err(DeltaError::Compacted {
                                after: pending.first - 1,
                                compact_revision: response.compact_revision(),
                            });
                        }
                        return Err(DeltaError::Canceled {
                            endpoint,
                            reason: response.cancel_reason().to_string(),
                        });
                    }
                    let head = response.header().map(|h| h.revision());
                    if let Some(head) = head {
                        host.metrics().delta_observed(head);
                    }
                    let rewound = |last| DeltaError::Rewound {
                        endpoint: endpoint.clone(),
                        current: head.unwrap_or(0),
                        last,
                    };
                    let now = Utc::now().timestamp_millis();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let kind = match event.event_type() {
                            EventType::Put => EventKind::Put {
                                kv: segment::encode_kv(
                                    kv.key(),
                                    kv.create_revision(),
                                    kv.mod_revision(),
                                    kv.version(),
                                    kv.value(),
                                    kv.lease(),
                                ),
                            },
                            EventType::Delete => EventKind::Delete { key: kv.key().to_vec() },
                        };
                        if let Some(w) = witness.as_mut() {
                            if kv.mod_revision() == w.revision {
                                w.feed(kind);
                                continue;
                            }
                            // Past the last sealed revision: its events must all have matched.
                            let w = witness.take().expect("checked");
                            if !w.matches() {
                                return Err(rewound(w.revision));
                            }
                        }
                        pending.push(kv.mod_revision(), now, kind)?;
                    }
                    // etcd sends a revision's events in one response.
                    if let Some(w) = witness.take_if(|w| w.seen > 0) {
                        if !w.matches() {
                            return Err(rewound(w.revision));
                        }
                    }
                    if pending.bytes >= self.settings.max_bytes {
                        opened = tokio::time::Instant::now();
                        if let Some(end) = self.seal(host, &mut client, &mut pending, &mut resume).await? {
                            return Ok(end);
                        }
                    }
                }
            }
        }
    }

    /// Seals `pending` into a segment; on success `pending` starts over after it. `Some` ends
    /// the term.
    async fn seal(
        &self,
        host: &dyn Host,
        client: &mut Client,
        pending: &mut Pending,
        resume: &mut Resume,
    ) -> Result<Option<TermEnd>, DeltaError> {
        let result = self.seal_inner(client, pending, resume).await;
        match result {
            Ok(Some(manifest)) => {
                host.metrics().delta_sealed(
                    manifest.last_revision,
                    manifest.sealed_at.timestamp_millis() as f64 / 1000.0,
                    manifest.object.size,
                );
                host.metrics().delta_lag(0.0);
                tracing::info!(
                    first = manifest.first_revision,
                    last = manifest.last_revision,
                    events = manifest.events,
                    bytes = manifest.object.size,
                    "delta segment sealed"
                );
                resume.previous = Some(manifest.object.sha256);
                resume.compact = manifest.compact_revision;
                *pending = Pending::create(&self.spool_dir, manifest.last_revision + 1)?;
                Ok(None)
            }
            Ok(None) => Ok(Some(TermEnd::Lost)),
            Err(e) => {
                host.metrics().delta_seal_failed();
                Err(e)
            }
        }
    }

    async fn seal_inner(
        &self,
        client: &mut Client,
        pending: &mut Pending,
        resume: &Resume,
    ) -> Result<Option<SegmentManifest>, DeltaError> {
        let leases = leases(client).await?;
        let compact = compaction(client, resume.compact).await?;
        let (first, last, count) = (pending.first, pending.next - 1, pending.count());
        let witness = hex::encode(pending.witness.clone().finalize());
        let (first_ms, last_ms) = (
            pending.first_ms.unwrap_or(0),
            pending.newest_ms.unwrap_or(0),
        );
        let plain = pending.finish()?;
        let sealed = plain.with_extension("seal");
        let recipients = self.recipients.clone();
        let (plain2, sealed2) = (plain.clone(), sealed.clone());
        tokio::task::spawn_blocking(move || encode(&plain2, &sealed2, &recipients))
            .await
            .expect("the encoder does not panic")
            .map_err(|source| DeltaError::Spool {
                path: sealed.clone(),
                source,
            })?;
        let _ = std::fs::remove_file(&plain);
        let nonce = format!("{:08x}", rand::random::<u32>());
        let key = segment::data_key(first, last, &nonce);
        let uploaded = self.upload(&sealed, &key).await;
        let _ = std::fs::remove_file(&sealed);
        let (size, sha256) = uploaded?;
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now);
        let manifest = SegmentManifest {
            format_version: segment::SEGMENT_FORMAT,
            first_revision: first,
            last_revision: last,
            first_time: time(first_ms),
            last_time: time(last_ms),
            sealed_at: Utc::now(),
            events: count,
            object: SegmentObject {
                key: key.clone(),
                size,
                sha256,
            },
            previous_sha256: resume.previous.clone(),
            chain_base: resume.base.clone(),
            compact_revision: compact,
            leases,
            recipients: self.recipients.public_keys(),
            captured_by: self.identity.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            last_revision_sha256: Some(witness),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a segment manifest serializes");
        // Named after this writer's object: a racing writer never overwrites it.
        let sig_key = crate::catalog::signature::signature_key(&segment::signature_id(&key));
        if let Some(signing) = &self.signing {
            let signed = match signing.load_key() {
                Ok(signer) => crate::catalog::signature::write_signature(
                    self.store.as_ref(),
                    &signer,
                    &segment::signature_id(&key),
                    &json,
                )
                .await
                .map_err(DeltaError::from),
                Err(e) => Err(DeltaError::SigningKey(e)),
            };
            if let Err(e) = signed {
                let _ = self.store.delete(&key).await;
                return Err(e);
            }
        }
        let manifest_key = segment::manifest_key(first);
        match self.store.put_new(&manifest_key, Bytes::from(json)).await {
            Ok(()) => Ok(Some(manifest)),
            Err(e) => {
                // A retried request whose first attempt succeeded answers "exists" too: what
                // the store holds decides whether this segment was published.
                let published =
                    crate::storage::get_small(self.store.as_ref(), &manifest_key, 64 << 20)
                        .await
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<SegmentManifest>(&bytes).ok());
                match published {
                    Some(m) if m.object.key == key => Ok(Some(manifest)),
                    Some(_) => {
                        // Another instance published this revision first: ours is not used.
                        let _ = self.store.delete(&key).await;
                        let _ = self.store.delete(&sig_key).await;
                        if matches!(e, StorageError::AlreadyExists { .. }) {
                            Ok(None)
                        } else {
                            Err(e.into())
                        }
                    }
                    // Unknown: the object is left (an orphan at worst, never a manifest that
                    // names a deleted object).
                    None => Err(e.into()),
                }
            }
        }
    }

    /// Uploads the sealed file; returns its size and SHA-256.
    async fn upload(&self, path: &Path, key: &str) -> Result<(u64, String), DeltaError> {
        let spool = |source| DeltaError::Spool {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(spool)?;
        let mut writer = self.store.create(key).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf).await.map_err(spool)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hasher.update(&buf);
            size += n as u64;
            if let Err(e) = writer.write(Bytes::from(buf)).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
        }
        writer.commit().await?;
        Ok((size, hex::encode(hasher.finalize())))
    }
}

/// `plain` -> zstd -> age -> `sealed` (0600).
fn encode(plain: &Path, sealed: &Path, recipients: &Recipients) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let input = std::fs::File::open(plain)?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(sealed)?;
    let age = recipients.encrypt(std::io::BufWriter::new(output))?;
    let mut zstd = zstd::stream::write::Encoder::new(age, 3)?;
    std::io::copy(&mut std::io::BufReader::new(input), &mut zstd)?;
    let age = zstd.finish()?;
    let mut out = age.finish()?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The check of a resumed chain's witness against etcd's events at its last revision.
struct Witness {
    revision: i64,
    expected: String,
    hasher: Sha256,
    /// Events fed (their sub-revisions).
    seen: u32,
}

impl Witness {
    fn new(revision: i64, expected: String) -> Witness {
        Witness {
            revision,
            expected,
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    fn feed(&mut self, kind: EventKind) {
        let event = Event {
            revision: self.revision,
            sub: self.seen,
            received_ms: 0,
            kind,
        };
        segment::witness_update(&mut self.hasher, &event);
        self.seen += 1;
    }

    /// Whether etcd's events at the revision were exactly the sealed ones (none: they were not).
    fn matches(&self) -> bool {
        self.seen > 0 && hex::encode(self.hasher.clone().finalize()) == self.expected
    }
}

/// The events captured since the last seal, in a plain spool file.
struct Pending {
    path: PathBuf,
    writer: Option<RecordWriter<std::io::BufWriter<std::fs::File>>>,
    /// The first revision this segment holds (the resume point).
    first: i64,
    /// The revision the next new revision must be.
    next: i64,
    /// The last event's revision and sub-revision.
    last: Option<(i64, u32)>,
    first_ms: Option<i64>,
    newest_ms: Option<i64>,
    bytes: u64,
    /// Whether the first event must be at `first` exactly.
    strict: bool,
    /// The witness of the events at the newest revision so far
    /// ([`segment::witness_update`]).
    witness: Sha256,
}

impl Pending {
    fn create(dir: &Path, first: i64) -> Result<Pending, DeltaError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = super::spool::part_path(dir, first)?;
        let spool = |source| DeltaError::Spool {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(spool)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(spool)?;
        let writer =
            RecordWriter::new(std::io::BufWriter::with_capacity(1 << 20, file)).map_err(spool)?;
        Ok(Pending {
            writer: Some(writer),
            path,
            first,
            next: first,
            last: None,
            first_ms: None,
            newest_ms: None,
            bytes: 0,
            strict: true,
            witness: Sha256::new(),
        })
    }

    fn count(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.count())
    }

    /// Appends one event; its revision must continue the stream.
    fn push(&mut self, revision: i64, received_ms: i64, kind: EventKind) -> Result<(), DeltaError> {
        let sub = match self.last {
            Some((r, s)) if r == revision => s + 1,
            _ if revision == self.next => 0,
            None if !self.strict && revision > self.next => 0,
            _ => {
                return Err(DeltaError::Gap {
                    expected: self.next,
                    got: revision,
                })
            }
        };
        if sub == 0 {
            self.next = revision + 1;
        }
        self.last = Some((revision, sub));
        self.first_ms.get_or_insert(received_ms);
        self.newest_ms = Some(received_ms);
        let event = Event {
            revision,
            sub,
            received_ms,
            kind,
        };
        if sub == 0 {
            self.witness = Sha256::new();
        }
        segment::witness_update(&mut self.witness, &event);
        let path = self.path.clone();
        let writer = self.writer.as_mut().expect("pending is open");
        self.bytes += writer
            .write(&event)
            .map_err(|source| DeltaError::Spool { path, source })?;
        Ok(())
    }

    /// Ends the stream and returns the file.
    fn finish(&mut self) -> Result<PathBuf, DeltaError> {
        let spool = |source| DeltaError::Spool {
            path: self.path.clone(),
            source,
        };
        let writer = self.writer.take().expect("pending is open");
        let buffered = writer.finish().map_err(spool)?;
        buffered
            .into_inner()
            .map_err(|e| spool(e.into_error()))?
            .sync_all()
            .map_err(spool)?;
        Ok(self.path.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Every lease with its granted TTL.
async fn leases(client: &mut Client) -> Result<Vec<LeaseRecord>, DeltaError> {
    let listed = client.leases().await.map_err(DeltaError::Leases)?;
    let mut out = Vec::with_capacity(listed.leases().len());
    for lease in listed.leases() {
        match client.lease_time_to_live(lease.id(), None).await {
            // A lease that expired between the two calls has TTL -1: it is gone.
            Ok(ttl) if ttl.ttl() >= 0 => out.push(LeaseRecord {
                id: lease.id(),
                ttl: ttl.granted_ttl(),
            }),
            Ok(_) => {}
            Err(e) => return Err(DeltaError::Leases(e)),
        }
    }
    out.sort_by_key(|l| l.id);
    Ok(out)
}

/// etcd's current revision.
async fn current_revision(client: &mut Client) -> Result<i64, DeltaError> {
    let response = client
        .get(vec![0u8], Some(GetOptions::new().with_count_only()))
        .await
        .map_err(DeltaError::Revision)?;
    Ok(response.header().map_or(0, |h| h.revision()))
}

/// etcd's compaction revision (0: none), found with ranges at old revisions: a range at
/// revision `r` fails with OUT_OF_RANGE exactly when `r` is below the compaction revision.
/// `known` is a revision known to be at or below it (one range when nothing changed).
pub async fn compaction(client: &mut Client, known: i64) -> Result<i64, DeltaError> {
    let low = known.max(1);
    if readable(client, low).await? {
        return Ok(known);
    }
    // `low` is compacted: the compaction revision is in (low, head].
    let head = client
        .get(vec![0u8], Some(GetOptions::new().with_count_only()))
        .await
        .map_err(DeltaError::Compaction)?
        .header()
        .map_or(low + 1, |h| h.revision());
    let (mut lo, mut hi) = (low, head.max(low + 1));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable(client, mid).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// Whether a range at `revision` is answered (false: OUT_OF_RANGE, it was compacted).
async fn readable(client: &mut Client, revision: i64) -> Result<bool, DeltaError> {
    let options = GetOptions::new().with_revision(revision).with_count_only();
    match client.get(vec![0u8], Some(options)).await {
        Ok(_) => Ok(true),
        Err(etcd_client::Error::GRpcStatus(status)) if status.code() == tonic::Code::OutOfRange => {
            Ok(false)
        }
        Err(e) => Err(DeltaError::Compaction(e)),
    }
}
