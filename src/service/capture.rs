//! The continuous-capture worker (`deltas`): a long-running task on the snapshot leader, not a
//! cron job. The capture itself is `crate::deltas::capture`; this file is what it needs from
//! the service: leadership, a full backup on demand (after a chain break), the metrics.

use std::sync::Arc;

use async_trait::async_trait;

use std::time::Duration;

use super::worker::{self, Backoff, Worker};
use super::Service;
use crate::deltas::capture::{Capture, Host};
use crate::metrics::Metrics;
use crate::pipeline::SaveRequest;

/// The reason recorded on a full backup taken because the delta chain broke.
pub const CHAIN_BREAK_REASON: &str = "delta-chain-break";

#[async_trait]
impl Host for Service {
    async fn leadership(&self) -> Option<bool> {
        self.is_snapshot_leader().await.ok()
    }

    async fn full_backup_now(&self) -> Option<String> {
        let request = SaveRequest {
            reason: CHAIN_BREAK_REASON.to_string(),
            labels: Default::default(),
        };
        match self.backup_now(request).await {
            Ok(manifest) => {
                tracing::info!(backup_id = %manifest.id, "full backup taken after the delta chain broke; a new chain starts from it");
                Some(manifest.id)
            }
            Err(e) => {
                tracing::error!(error = %e, "the full backup after a delta chain break failed");
                None
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The `delta capture` worker when `deltas` is configured: continuous (until shutdown), each
/// attempt a term on the snapshot leader; a failed one is retried after `deltas.interval`,
/// doubling up to a minute, and a non-leader looks again every `deltas.interval`.
pub fn worker(service: &Arc<Service>) -> Option<Worker> {
    let settings = service.config.deltas?;
    let capture = Arc::new(Capture {
        store: service.store.clone(),
        etcd: service.config.etcd.clone(),
        recipients: service.config.encryption.clone(),
        spool_dir: service.config.spool_dir.clone(),
        settings,
        signing: service.config.signing.clone(),
        identity: hostname(),
        last_break: Default::default(),
        unverifiable: Default::default(),
    });
    let service = service.clone();
    let run: worker::Run = Arc::new(move || {
        let (service, capture) = (service.clone(), capture.clone());
        Box::pin(async move {
            let cancel = service.shutdown.clone();
            capture.attempt(service.as_ref(), &cancel).await
        })
    });
    let backoff = Backoff {
        initial: settings.interval,
        max: settings.interval.max(Duration::from_secs(60)),
    };
    Some(Worker::continuous("delta capture", run, backoff))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
