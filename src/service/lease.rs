//! `coordination: lease`: the instance holding a `coordination.k8s.io/v1` Lease takes the
//! scheduled snapshot. Each tick, every instance reads the Lease; the holder renews it, and a
//! Lease not renewed within its duration is taken over. Writes carry the resourceVersion they
//! read, so when two instances race, the API server accepts one and answers 409 to the other:
//! exactly one instance snapshots per tick.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

const FORBIDDEN_HINT: &str = ": the service account needs get/create/update on leases in this namespace (see deploy/rbac.yaml)";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("kubernetes.kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes API configuration: set kubernetes.kubeconfig, or run in a pod with a service account ({source})")]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("no Kubernetes API configuration: set kubernetes.kubeconfig, or run in a pod with a service account ({source})")]
    Client {
        #[source]
        source: kube::Error,
    },
    /// The API server answered with an error status (its `message` is what it said).
    #[error("Lease {namespace}/{name}: {action} failed: {}{}", answer.message, if answer.code == 403 { FORBIDDEN_HINT } else { "" })]
    Api {
        namespace: String,
        name: String,
        action: &'static str,
        answer: kube::core::ErrorResponse,
    },
    #[error("Lease {namespace}/{name}: {action} failed: {source}: is the API server reachable?")]
    Unreachable {
        namespace: String,
        name: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// What this instance should do with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew it, and snapshot.
    Renew,
    /// Its holder stopped renewing: take it over, and snapshot.
    TakeOver { from: String },
    /// Someone else holds it: skip this tick.
    Follow { holder: String },
}

/// The Lease as far as the decision needs it.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<DateTime<Utc>>,
    pub duration: Duration,
}

/// Pure: what to do with a Lease read at `now`.
pub fn decide(lease: Option<&LeaseView>, me: &str, now: DateTime<Utc>) -> LeaseStep {
    let Some(lease) = lease else {
        return LeaseStep::Create;
    };
    match lease.holder.as_deref() {
        None | Some("") => LeaseStep::TakeOver {
            from: String::new(),
        },
        Some(holder) if holder == me => LeaseStep::Renew,
        Some(holder) => {
            let expired = match lease.renewed {
                None => true,
                Some(renewed) => {
                    now >= renewed + chrono::Duration::from_std(lease.duration).unwrap_or_default()
                }
            };
            if expired {
                LeaseStep::TakeOver {
                    from: holder.to_string(),
                }
            } else {
                LeaseStep::Follow {
                    holder: holder.to_string(),
                }
            }
        }
    }
}

/// How long a Lease lasts for a schedule: just under one interval, so that when the holder
/// dies another instance takes over at the next tick, while the holder's own renewal at each
/// tick keeps it.
pub fn lease_duration(interval: Duration) -> Duration {
    let ninety = interval.mul_f64(0.9);
    ninety.max(Duration::from_secs(1))
}

pub struct LeaseCoordinator {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
}

impl LeaseCoordinator {
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<LeaseCoordinator, LeaseError> {
        let config = match kubeconfig {
            Some(path) => {
                let err = |source| LeaseError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                };
                let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(err)?
            }
            None => kube::Config::incluster().map_err(|source| LeaseError::InCluster { source })?,
        };
        let client =
            kube::Client::try_from(config).map_err(|source| LeaseError::Client { source })?;
        Ok(LeaseCoordinator {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
        })
    }

    fn api_error(&self, action: &'static str, error: kube::Error) -> LeaseError {
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        match error {
            kube::Error::Api(answer) => LeaseError::Api {
                namespace,
                name,
                action,
                answer,
            },
            source => LeaseError::Unreachable {
                namespace,
                name,
                action,
                source,
            },
        }
    }

    /// Acquires or renews the Lease; `Ok(true)` when this instance holds it for this tick.
    pub async fn try_lead(&self, duration: Duration) -> Result<bool, LeaseError> {
        let now = Utc::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("read", e))?;
        let view = current.as_ref().map(|lease| {
            let spec = lease.spec.clone().unwrap_or_default();
            LeaseView {
                holder: spec.holder_identity,
                renewed: spec.renew_time.map(|t| t.0),
                duration: Duration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(0).max(0) as u64
                ),
            }
        });
        let step = decide(view.as_ref(), &self.identity, now);
        let seconds = duration.as_secs().max(1) as i32;
        let result = match (&step, current) {
            (LeaseStep::Follow { holder }, _) => {
                tracing::debug!(holder, "the Lease is held by another instance");
                return Ok(false);
            }
            (LeaseStep::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (LeaseStep::Renew, Some(mut lease)) | (LeaseStep::TakeOver { .. }, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if let LeaseStep::TakeOver { from } = &step {
                    tracing::info!(from, "taking over the snapshot Lease");
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(seconds);
                // Keeps metadata.resourceVersion: the update is conditional on what we read.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => unreachable!("renew and take-over are decided only for an existing Lease"),
        };
        match result {
            Ok(_) => Ok(true),
            // Another instance wrote first (409 Conflict or AlreadyExists): it leads this tick.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.api_error("write", e)),
        }
    }
}

/// This node's identity: `$NODE_NAME` (the downward API in the DaemonSet), else the hostname.
pub fn default_identity() -> String {
    if let Ok(name) = std::env::var("NODE_NAME") {
        if !name.is_empty() {
            return name;
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..end]).to_string();
    }
    "etcdsafe".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + chrono::Duration::seconds(s as i64)
    }

    fn view(holder: Option<&str>, renewed: Option<u32>, duration: u64) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_string),
            renewed: renewed.map(t),
            duration: Duration::from_secs(duration),
        }
    }

    #[test]
    fn decisions() {
        let table: Vec<(Option<LeaseView>, u32, LeaseStep)> = vec![
            (None, 0, LeaseStep::Create),
            (Some(view(Some("me"), Some(0), 10)), 5, LeaseStep::Renew),
            (Some(view(Some("me"), Some(0), 10)), 500, LeaseStep::Renew),
            (
                Some(view(Some("cp2"), Some(0), 10)),
                5,
                LeaseStep::Follow {
                    holder: "cp2".into(),
                },
            ),
            (
                Some(view(Some("cp2"), Some(0), 10)),
                10,
                LeaseStep::TakeOver { from: "cp2".into() },
            ),
            (
                Some(view(Some("cp2"), None, 10)),
                0,
                LeaseStep::TakeOver { from: "cp2".into() },
            ),
            (
                Some(view(None, Some(0), 10)),
                0,
                LeaseStep::TakeOver { from: "".into() },
            ),
            (
                Some(view(Some(""), Some(0), 10)),
                0,
                LeaseStep::TakeOver { from: "".into() },
            ),
        ];
        for (lease, now, want) in table {
            assert_eq!(
                decide(lease.as_ref(), "me", t(now)),
                want,
                "{lease:?} at +{now}s"
            );
        }
    }

    #[test]
    fn duration_is_just_under_one_interval() {
        assert_eq!(
            lease_duration(Duration::from_secs(3600)),
            Duration::from_secs(3240)
        );
        assert_eq!(
            lease_duration(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
    }
}
