//! One Prometheus registry with typed handles. Names follow Prometheus conventions: base units
//! (seconds, bytes), `_total` for counters, `_timestamp_seconds` for times.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::catalog::Manifest;

/// Where a backup fails outside the pipeline: a pre-snapshot hook, or the service's leader
/// election.
pub const HOOK_STAGE: &str = "hook";
pub const COORDINATION_STAGE: &str = "coordination";

/// Stages whose failures are counted (`etcdsafe_backup_failures_total{stage}`): every pipeline
/// stage (`Stage::ALL`), then the service's own.
pub fn failure_stages() -> impl Iterator<Item = &'static str> {
    crate::pipeline::Stage::ALL
        .into_iter()
        .map(crate::pipeline::Stage::as_str)
        .chain([HOOK_STAGE, COORDINATION_STAGE])
}

pub struct Metrics {
    registry: Registry,
    pub last_success: Gauge,
    pub last_attempt: Gauge,
    pub duration: HistogramVec,
    pub runs: IntCounterVec,
    pub failures: IntCounterVec,
    pub bytes: IntGaugeVec,
    pub revision: IntGauge,
    pub stored: IntGaugeVec,
    pub retention_deleted: IntCounter,
    pub retention_failures: IntCounter,
    pub skipped: IntCounterVec,
    pub is_leader: IntGauge,
    pub schedule_interval: Gauge,
    pub hook_failures: IntCounterVec,
    pub audit_last_run: Gauge,
    pub audit_corrupt: IntGauge,
    pub future_dated: IntGauge,
    pub audit_unsigned: IntGauge,
    pub audit_bad_signatures: IntGauge,
    pub etcd_db_size: IntGaugeVec,
    pub etcd_db_size_in_use: IntGaugeVec,
    pub etcd_quota: IntGaugeVec,
    pub etcd_alarm: IntGaugeVec,
    pub defrag_runs: IntCounterVec,
    pub defrag_last_success: Gauge,
    pub delta_last_sealed_revision: IntGauge,
    pub delta_last_sealed_timestamp: Gauge,
    pub delta_lag: Gauge,
    pub delta_segments: IntCounterVec,
    pub delta_chain_breaks: IntCounterVec,
    pub delta_bytes: IntCounter,
    pub delta_interval: Gauge,
    pub delta_observed_revision: IntGauge,
}

/// Why a chain of delta segments broke (`etcdsafe_delta_chain_breaks_total{reason}`): etcd
/// compacted past the revision the watch had to resume from, etcd canceled the watch, or etcd's
/// history went back below the chain (restored without a revision bump).
pub const DELTA_CHAIN_BREAK_REASONS: [&str; 3] = ["compacted", "canceled", "rewound"];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let metrics = Metrics {
            last_success: reg!(Gauge::new(
                "etcdsafe_last_success_timestamp_seconds",
                "Unix time of the newest verified, stored backup."
            )),
            last_attempt: reg!(Gauge::new(
                "etcdsafe_last_attempt_timestamp_seconds",
                "Unix time the last backup attempt started."
            )),
            duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "etcdsafe_backup_duration_seconds",
                    "Duration of successful backups, by stage (total is the whole run)."
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0
                ]),
                &["stage"]
            )),
            runs: reg!(IntCounterVec::new(
                Opts::new("etcdsafe_backup_runs_total", "Backup runs, by result."),
                &["result"]
            )),
            failures: reg!(IntCounterVec::new(
                Opts::new(
                    "etcdsafe_backup_failures_total",
                    "Failed backup runs, by the stage that failed."
                ),
                &["stage"]
            )),
            bytes: reg!(IntGaugeVec::new(
                Opts::new(
                    "etcdsafe_backup_bytes",
                    "Size of the newest backup: the snapshot as etcd sent it, and the stored object."
                ),
                &["kind"]
            )),
            revision: reg!(IntGauge::new(
                "etcdsafe_backup_revision",
                "etcd revision of the newest backup."
            )),
            stored: reg!(IntGaugeVec::new(
                Opts::new("etcdsafe_backups_stored", "Verified backups in the store, by reason."),
                &["reason"]
            )),
            retention_deleted: reg!(IntCounter::new(
                "etcdsafe_retention_deleted_total",
                "Backups deleted by retention."
            )),
            retention_failures: reg!(IntCounter::new(
                "etcdsafe_retention_failures_total",
                "Retention runs that failed or refused to act."
            )),
            skipped: reg!(IntCounterVec::new(
                Opts::new(
                    "etcdsafe_skipped_runs_total",
                    "Scheduled runs not taken, by why (overlap: a backup was running; not-leader: another instance takes it)."
                ),
                &["why"]
            )),
            is_leader: reg!(IntGauge::new(
                "etcdsafe_is_snapshot_leader",
                "1 when this instance takes the scheduled snapshots."
            )),
            schedule_interval: reg!(Gauge::new(
                "etcdsafe_schedule_interval_seconds",
                "Expected time between scheduled backups."
            )),
            hook_failures: reg!(IntCounterVec::new(
                Opts::new("etcdsafe_hook_failures_total", "Hook commands that failed, by hook."),
                &["hook"]
            )),
            audit_last_run: reg!(Gauge::new(
                "etcdsafe_audit_last_run_timestamp_seconds",
                "Unix time the last integrity audit of the stored objects finished."
            )),
            audit_corrupt: reg!(IntGauge::new(
                "etcdsafe_audit_corrupt_backups",
                "Backups whose stored object failed the last integrity audit (size or SHA-256)."
            )),
            audit_unsigned: reg!(IntGauge::new(
                "etcdsafe_audit_unsigned_backups",
                "Backups without a manifest signature at the last integrity audit."
            )),
            audit_bad_signatures: reg!(IntGauge::new(
                "etcdsafe_audit_bad_signatures",
                "Backups whose manifest signature failed against the allowed signers at the last integrity audit."
            )),
            future_dated: reg!(IntGauge::new(
                "etcdsafe_backups_future_dated",
                "Backups dated more than 5 minutes after now (a node's clock is wrong): never latest, ignored by retention."
            )),
            etcd_db_size: reg!(IntGaugeVec::new(
                Opts::new(
                    "etcdsafe_etcd_db_size_bytes",
                    "Size of each etcd member's database file."
                ),
                &["member"]
            )),
            etcd_db_size_in_use: reg!(IntGaugeVec::new(
                Opts::new(
                    "etcdsafe_etcd_db_size_in_use_bytes",
                    "Bytes of each etcd member's database file in use (the rest a defrag gives back)."
                ),
                &["member"]
            )),
            etcd_quota: reg!(IntGaugeVec::new(
                Opts::new(
                    "etcdsafe_etcd_quota_bytes",
                    "Each etcd member's space quota (Status on etcd 3.6+, else maintenance.quota-backend-bytes)."
                ),
                &["member"]
            )),
            etcd_alarm: reg!(IntGaugeVec::new(
                Opts::new(
                    "etcdsafe_etcd_alarm",
                    "1 for each alarm raised on an etcd member (NOSPACE, CORRUPT)."
                ),
                &["member", "alarm"]
            )),
            defrag_runs: reg!(IntCounterVec::new(
                Opts::new(
                    "etcdsafe_defrag_runs_total",
                    "Scheduled defragmentation rounds, by result."
                ),
                &["result"]
            )),
            defrag_last_success: reg!(Gauge::new(
                "etcdsafe_defrag_last_success_timestamp_seconds",
                "Unix time the last defragmentation round succeeded."
            )),
            delta_last_sealed_revision: reg!(IntGauge::new(
                "etcdsafe_delta_last_sealed_revision",
                "Continuous backup: etcd revision of the last change in the newest sealed delta segment (restores reach up to it)."
            )),
            delta_last_sealed_timestamp: reg!(Gauge::new(
                "etcdsafe_delta_last_sealed_timestamp_seconds",
                "Continuous backup: Unix time the newest delta segment was sealed into the store (0 until one is)."
            )),
            delta_lag: reg!(Gauge::new(
                "etcdsafe_delta_lag_seconds",
                "Continuous backup: seconds since the newest change seen from etcd but not yet sealed was received (0 when every change seen is sealed)."
            )),
            delta_segments: reg!(IntCounterVec::new(
                Opts::new(
                    "etcdsafe_delta_segments_total",
                    "Continuous backup: delta segments sealed into the store (success) or that failed to be (failure)."
                ),
                &["result"]
            )),
            delta_chain_breaks: reg!(IntCounterVec::new(
                Opts::new(
                    "etcdsafe_delta_chain_breaks_total",
                    "Continuous backup: breaks in the chain of delta segments, by reason (compacted: etcd compacted past the revision to resume from; canceled: etcd canceled the watch; rewound: etcd's history went back below the chain, restored without a revision bump). Revisions in a break are reachable only from the next full backup on."
                ),
                &["reason"]
            )),
            delta_bytes: reg!(IntCounter::new(
                "etcdsafe_delta_bytes_total",
                "Continuous backup: bytes of delta segments stored (the encrypted objects)."
            )),
            delta_interval: reg!(Gauge::new(
                "etcdsafe_delta_interval_seconds",
                "Continuous backup: the configured deltas.interval, the longest a change should wait to be sealed (0 when continuous backup is off)."
            )),
            delta_observed_revision: reg!(IntGauge::new(
                "etcdsafe_delta_observed_revision",
                "Continuous backup: newest etcd revision etcd reported to the capture (watch headers, progress notifications); above the last sealed revision while changes wait to be sealed."
            )),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new("etcdsafe_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid");
        metrics
            .registry
            .register(Box::new(build_info.clone()))
            .expect("unique");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Create every labelled series up front, so alerts see zeros rather than nothing.
        for result in ["success", "failure"] {
            metrics.runs.with_label_values(&[result]);
        }
        for stage in failure_stages() {
            metrics.failures.with_label_values(&[stage]);
        }
        for why in ["overlap", "not-leader"] {
            metrics.skipped.with_label_values(&[why]);
        }
        for hook in ["pre-snapshot", "post-snapshot"] {
            metrics.hook_failures.with_label_values(&[hook]);
        }
        for result in ["success", "failure"] {
            metrics.defrag_runs.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            metrics.delta_segments.with_label_values(&[result]);
        }
        for reason in DELTA_CHAIN_BREAK_REASONS {
            metrics.delta_chain_breaks.with_label_values(&[reason]);
        }
        metrics
    }

    /// Continuous backup is on with this `deltas.interval`, or off (`Duration::ZERO`).
    pub fn delta_configured(&self, interval: std::time::Duration) {
        self.delta_interval.set(interval.as_secs_f64());
    }

    /// A delta segment ending at `last_revision` was sealed into the store at `sealed_at_unix`,
    /// `bytes` stored (the encrypted object). etcd reported at least that revision, so the
    /// observed revision is raised to it if it is behind.
    pub fn delta_sealed(&self, last_revision: i64, sealed_at_unix: f64, bytes: u64) {
        self.delta_last_sealed_revision.set(last_revision);
        self.delta_last_sealed_timestamp.set(sealed_at_unix);
        self.delta_bytes.inc_by(bytes);
        self.delta_segments.with_label_values(&["success"]).inc();
        if self.delta_observed_revision.get() < last_revision {
            self.delta_observed_revision.set(last_revision);
        }
    }

    /// Capture (re)starts after `last_revision`, sealed at `sealed_at_unix`: the gauges say
    /// what the store holds before this process seals anything (nothing is counted).
    pub fn delta_resumed(&self, last_revision: i64, sealed_at_unix: f64) {
        self.delta_last_sealed_revision.set(last_revision);
        self.delta_last_sealed_timestamp.set(sealed_at_unix);
        if self.delta_observed_revision.get() < last_revision {
            self.delta_observed_revision.set(last_revision);
        }
    }

    /// A delta segment could not be sealed into the store.
    pub fn delta_seal_failed(&self) {
        self.delta_segments.with_label_values(&["failure"]).inc();
    }

    /// etcd reported `revision` to the capture (a watch response header or a progress
    /// notification).
    pub fn delta_observed(&self, revision: i64) {
        self.delta_observed_revision.set(revision);
    }

    /// This instance does not capture (another one leads): its delta gauges go to 0, so a
    /// former leader's last seal never hides the RPO alert (which takes the max per job).
    pub fn delta_not_capturing(&self) {
        self.delta_lag.set(0.0);
        self.delta_last_sealed_revision.set(0);
        self.delta_last_sealed_timestamp.set(0.0);
        self.delta_observed_revision.set(0);
    }

    /// Seconds since the newest change seen but not yet sealed was received (0 when every change
    /// seen is sealed).
    pub fn delta_lag(&self, seconds: f64) {
        self.delta_lag.set(seconds);
    }

    /// The chain of delta segments broke: `reason` is `compacted`, `canceled` or `rewound`
    /// ([`DELTA_CHAIN_BREAK_REASONS`]).
    pub fn delta_chain_broken(&self, reason: &str) {
        self.delta_chain_breaks.with_label_values(&[reason]).inc();
    }

    /// Sets the catalog-derived gauges from a listing (oldest first).
    pub fn observe_catalog(&self, backups: &[Manifest]) {
        self.stored.reset();
        for reason in ["scheduled", "manual", "pre-upgrade"] {
            self.stored.with_label_values(&[reason]).set(0);
        }
        for b in backups {
            self.stored.with_label_values(&[&b.reason]).inc();
        }
        if let Some(newest) = backups.last() {
            self.observe_backup(newest);
        }
    }

    /// Records the newest stored backup.
    pub fn observe_backup(&self, m: &Manifest) {
        let created = m.created_at.timestamp_millis() as f64 / 1000.0;
        if created > self.last_success.get() {
            self.last_success.set(created);
        }
        self.revision.set(m.snapshot.revision);
        self.bytes
            .with_label_values(&["snapshot"])
            .set(m.snapshot.size as i64);
        self.bytes
            .with_label_values(&["stored"])
            .set(m.object.size as i64);
    }

    /// Records every member's sizes, quota and alarms from `maintain status`; members and
    /// alarms no longer seen are dropped.
    pub fn observe_etcd(&self, status: &crate::maintain::ClusterStatus) {
        for gauge in [
            &self.etcd_db_size,
            &self.etcd_db_size_in_use,
            &self.etcd_quota,
        ] {
            gauge.reset();
        }
        self.etcd_alarm.reset();
        for row in &status.members {
            let f = &row.facts;
            let member = f.name.as_str();
            self.etcd_db_size
                .with_label_values(&[member])
                .set(f.db_size as i64);
            self.etcd_db_size_in_use
                .with_label_values(&[member])
                .set(f.db_size_in_use as i64);
            self.etcd_quota
                .with_label_values(&[member])
                .set(f.quota as i64);
            for alarm in &row.alarms {
                self.etcd_alarm
                    .with_label_values(&[member, alarm.as_str()])
                    .set(1);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_has_its_failure_series_at_start() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for stage in crate::pipeline::Stage::ALL
            .iter()
            .map(|s| s.as_str())
            .chain([HOOK_STAGE, COORDINATION_STAGE])
        {
            let series = format!("etcdsafe_backup_failures_total{{stage=\"{stage}\"}} 0");
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
    }

    /// The exposition's sample lines, without HELP/TYPE.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn assert_sample(text: &str, series: &str) {
        assert!(
            samples(text).contains(&series),
            "{series:?} missing:\n{text}"
        );
    }

    #[test]
    fn delta_series_exist_at_start_as_zeros() {
        let text = Metrics::new().render();
        for series in [
            "etcdsafe_delta_last_sealed_revision 0",
            "etcdsafe_delta_last_sealed_timestamp_seconds 0",
            "etcdsafe_delta_lag_seconds 0",
            "etcdsafe_delta_segments_total{result=\"success\"} 0",
            "etcdsafe_delta_segments_total{result=\"failure\"} 0",
            "etcdsafe_delta_chain_breaks_total{reason=\"compacted\"} 0",
            "etcdsafe_delta_chain_breaks_total{reason=\"canceled\"} 0",
            "etcdsafe_delta_bytes_total 0",
            "etcdsafe_delta_interval_seconds 0",
            "etcdsafe_delta_observed_revision 0",
        ] {
            assert_sample(&text, series);
        }
        for (name, kind) in [
            ("etcdsafe_delta_last_sealed_revision", "gauge"),
            ("etcdsafe_delta_last_sealed_timestamp_seconds", "gauge"),
            ("etcdsafe_delta_lag_seconds", "gauge"),
            ("etcdsafe_delta_segments_total", "counter"),
            ("etcdsafe_delta_chain_breaks_total", "counter"),
            ("etcdsafe_delta_bytes_total", "counter"),
            ("etcdsafe_delta_interval_seconds", "gauge"),
            ("etcdsafe_delta_observed_revision", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} is not a {kind}:\n{text}"
            );
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
                .unwrap_or_else(|| panic!("{name} has no HELP:\n{text}"));
            assert!(help.starts_with("Continuous backup: "), "{name}: {help}");
        }
    }

    #[test]
    fn delta_methods_set_their_series() {
        let metrics = Metrics::new();
        metrics.delta_configured(std::time::Duration::from_millis(10_500));
        metrics.delta_observed(100);
        metrics.delta_lag(2.5);
        metrics.delta_sealed(90, 1_700_000_000.25, 1000);
        metrics.delta_sealed(95, 1_700_000_010.5, 24);
        metrics.delta_seal_failed();
        metrics.delta_chain_broken("compacted");
        metrics.delta_chain_broken("compacted");
        metrics.delta_chain_broken("canceled");
        let text = metrics.render();
        for series in [
            "etcdsafe_delta_interval_seconds 10.5",
            "etcdsafe_delta_observed_revision 100",
            "etcdsafe_delta_lag_seconds 2.5",
            "etcdsafe_delta_last_sealed_revision 95",
            "etcdsafe_delta_last_sealed_timestamp_seconds 1700000010.5",
            "etcdsafe_delta_bytes_total 1024",
            "etcdsafe_delta_segments_total{result=\"success\"} 2",
            "etcdsafe_delta_segments_total{result=\"failure\"} 1",
            "etcdsafe_delta_chain_breaks_total{reason=\"compacted\"} 2",
            "etcdsafe_delta_chain_breaks_total{reason=\"canceled\"} 1",
        ] {
            assert_sample(&text, series);
        }

        // A seal past the observed revision raises it (etcd reported at least that much), so an
        // idle cluster shows observed == last sealed; capture off is interval 0; lag back to 0.
        metrics.delta_sealed(120, 1_700_000_020.0, 0);
        metrics.delta_lag(0.0);
        metrics.delta_configured(std::time::Duration::ZERO);
        let text = metrics.render();
        for series in [
            "etcdsafe_delta_observed_revision 120",
            "etcdsafe_delta_last_sealed_revision 120",
            "etcdsafe_delta_lag_seconds 0",
            "etcdsafe_delta_interval_seconds 0",
            "etcdsafe_delta_segments_total{result=\"success\"} 3",
        ] {
            assert_sample(&text, series);
        }
        // A later, lower report from etcd (a restored cluster) is taken as it is.
        metrics.delta_observed(7);
        assert_sample(&metrics.render(), "etcdsafe_delta_observed_revision 7");
    }
}
