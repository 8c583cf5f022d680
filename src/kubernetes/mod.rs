//! Kubernetes: pod and volume health through kube-rs watchers, the opt-in
//! eviction policy, and Lease election of the one replica that acts on
//! Kubernetes objects.
//!
//! Phase 1 is a self-contained library; the daemon, the configuration, the
//! metrics and the audit trail are wired to it through the seams below:
//!
//! - [`KubernetesSettings`]: `[kubernetes]`, its serde types and validation.
//! - [`client::build_client`]: a `kube::Client` from in-cluster credentials or a kubeconfig.
//! - [`pods::PodObserver`]: reflectors over the targets' pods (and the
//!   namespace's StatefulSets); [`pods::PodObserver::snapshot`] returns a
//!   [`snapshot::KubernetesSnapshot`], plain data.
//! - [`volumes::collect_volumes`]: the pods' persistent volume usage from the
//!   kubelet stats summary, through the API server's node proxy.
//! - [`checks::pod_checks`]: the pure checks over a snapshot.
//! - [`evict::select`] (pure) and [`evict::EvictionRunner`] (pause → mode →
//!   budget → audit intent → re-check → evict → audit outcome).
//! - [`rebuild::ReplayTracker`] (pure): which standbys' replay has stalled
//!   while their primary advances, the eviction policy's `rebuild_after` reason.
//! - [`lease::LeaseElector`]: `coordination.k8s.io` Lease election.
//! - [`lag_routing::select`] (pure): which standby pods leave or rejoin
//!   their Service through the `dbwarden.io/replication-lag-ok` readiness gate.
//!
//! Phase 2 wires it: the configuration loader reads the settings,
//! `daemon::kubernetes` runs the loop (publish → checks → Lease → eviction),
//! `telemetry::metrics` exports it, `dbwarden check` and the status API show it.
//!
//! Nothing here reads the clock behind the caller's back where a decision
//! depends on it: the pure functions take `now_ms`, and the runner and the
//! elector take it per call.

pub mod checks;
#[cfg(feature = "kubernetes")]
pub mod client;
pub mod evict;
pub mod lag_routing;
pub mod lease;
#[cfg(feature = "kubernetes")]
pub mod pods;
pub mod rebuild;
pub mod selector;
pub mod settings;
pub mod shards;
pub mod snapshot;
#[cfg(feature = "kubernetes")]
pub mod volumes;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use evict::EvictionPolicy;
pub use lag_routing::LagRoutingPolicy;
pub use lease::LeaseSettings;
pub use settings::KubernetesSettings;
pub use shards::ShardSettings;
pub use snapshot::KubernetesSnapshot;

/// How dbwarden authenticates to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// token and CA mounted under `/var/run/secrets/kubernetes.io/serviceaccount`).
    InCluster,
    /// A kubeconfig file (`None`: `$KUBECONFIG` or `~/.kube/config`) and an
    /// optional context (`None`: the file's current context).
    Kubeconfig {
        path: Option<PathBuf>,
        context: Option<String>,
    },
}

/// One dbwarden target tied to its pods by a label selector (e.g. `app=postgres`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesTarget {
    /// The dbwarden target name (the same name as the database target).
    pub name: String,
    /// A Kubernetes label selector, in the API's string form
    /// (`app=postgres,role!=backup`, `tier in (db)`, `!canary`).
    pub label_selector: String,
}

/// Milliseconds since the Unix epoch, the time unit of every snapshot.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Errors at this module's boundary, with a bounded [`KubeError::kind`] for metric labels.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load Kubernetes credentials: {0}")]
    Credentials(String),
    #[error("the API server answered {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("cannot reach the API server: {0}")]
    Unreachable(String),
    #[error("unexpected answer from the API server: {0}")]
    Decode(String),
}

impl KubeError {
    /// A bounded label: `credentials`, `forbidden`, `not_found`, `conflict`,
    /// `api`, `unreachable` or `decode`.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeError::Credentials(_) => "credentials",
            KubeError::Api { code: 403, .. } => "forbidden",
            KubeError::Api { code: 404, .. } => "not_found",
            KubeError::Api { code: 409, .. } => "conflict",
            KubeError::Api { .. } => "api",
            KubeError::Unreachable(_) => "unreachable",
            KubeError::Decode(_) => "decode",
        }
    }

    /// The HTTP status the API server answered, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(feature = "kubernetes")]
impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => KubeError::Api {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            kube::Error::SerdeError(e) => KubeError::Decode(e.to_string()),
            other => KubeError::Unreachable(other.to_string()),
        }
    }
}
