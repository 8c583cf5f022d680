//! The published state: the latest status of every target and of the
//! Kubernetes loop, written by the daemon's loops and read by the HTTP
//! surface and the metrics; and the alerts Alertmanager reports firing
//! ([`alerts`]). Readers take an `Arc` snapshot and never wait on a poll or
//! a database.

pub mod alerts;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::evaluate::probes::ProbeStatus;
use crate::evaluate::{CheckResult, Neo4jSummary, PgSummary};
use crate::kubernetes::KubernetesSnapshot;
use crate::kubernetes::checks::KubeCheck;
use crate::kubernetes::evict::EvictionReport;
use crate::observe::backups::{BackupError, BackupSnapshot};
use crate::observe::neo4j::Neo4jSnapshot;
use crate::observe::{PgSnapshot, PollError};

/// What is known about one target after its latest poll.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub kind: &'static str,
    pub up: bool,
    /// Polls finished so far, successful or not.
    pub polls_completed: u64,
    #[serde(serialize_with = "ser_time")]
    pub last_poll_at: Option<SystemTime>,
    pub last_poll_duration_seconds: Option<f64>,
    #[serde(serialize_with = "ser_time")]
    pub last_success_at: Option<SystemTime>,
    pub last_error: Option<PollError>,
    pub consecutive_failures: u32,
    /// Connections dbwarden holds to this target right now.
    pub open_connections: u32,
    /// The configured cadence, exported so alert rules can say "N polls missed".
    pub poll_interval_seconds: f64,
    pub poll_timeout_seconds: f64,
    pub checks: Vec<CheckResult>,
    /// PostgreSQL targets: the user's probes, each with its latest run and checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
    /// PostgreSQL targets: what the latest successful poll saw, summarised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<PgSummary>,
    /// The latest successful snapshot of a PostgreSQL target.
    #[serde(skip)]
    pub snapshot: Option<Arc<PgSnapshot>>,
    /// Neo4j targets: what the latest successful poll saw, summarised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neo4j: Option<Neo4jSummary>,
    /// The latest successful snapshot of a Neo4j target.
    #[serde(skip)]
    pub neo4j_snapshot: Option<Arc<Neo4jSnapshot>>,
}

impl TargetStatus {
    pub fn new(target: &str, kind: &'static str) -> Self {
        TargetStatus {
            target: target.to_string(),
            kind,
            up: false,
            polls_completed: 0,
            last_poll_at: None,
            last_poll_duration_seconds: None,
            last_success_at: None,
            last_error: None,
            consecutive_failures: 0,
            open_connections: 0,
            poll_interval_seconds: 0.0,
            poll_timeout_seconds: 0.0,
            checks: Vec::new(),
            probes: Vec::new(),
            summary: None,
            snapshot: None,
            neo4j: None,
            neo4j_snapshot: None,
        }
    }
}

/// The Lease as this instance last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub name: String,
    /// This instance's holder identity.
    pub identity: String,
    /// The current holder (`None`: nobody, or not read yet).
    pub holder: Option<String>,
    /// This instance holds the Lease and may act on Kubernetes objects.
    pub is_leader: bool,
    /// The last error reading or renewing the Lease, cleared by a success.
    pub error: Option<String>,
}

/// What the Kubernetes loop published last: plain data, read by `/metrics`
/// and the status API without calling the API server.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesStatus {
    pub snapshot: KubernetesSnapshot,
    pub checks: Vec<KubeCheck>,
    /// `None` without `[kubernetes.lease]`: this instance acts alone.
    pub lease: Option<LeaseView>,
    /// Whether the eviction policy is configured (and `[remediation]` with it).
    pub eviction_enabled: bool,
    /// The decisions of the latest eviction round that had candidates.
    pub last_evictions: Vec<EvictionReport>,
    /// Whether lag routing (`[kubernetes.lag_routing]`) is configured.
    pub lag_routing_enabled: bool,
    /// The decisions of the latest lag routing round that changed something.
    pub last_routes: Vec<crate::kubernetes::lag_routing::RouteReport>,
    /// Standbys that qualify to be taken out but stay, and why (the last
    /// ready endpoint of the Service, its endpoints unknown), as of the latest round.
    pub lag_routing_held_back: Vec<crate::kubernetes::lag_routing::LagRouteChange>,
    /// When the volume usage in the snapshot was read (ms since the epoch).
    pub volumes_at_ms: Option<u64>,
    /// With `rebuild_after`: per standby target, how long its replay has
    /// stood still with WAL to replay (s; 0 while it moves or has nothing to replay).
    pub replay_stalled_seconds: std::collections::BTreeMap<String, f64>,
}

/// What the latest observation of a `[backups.<name>]` location found.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    pub name: String,
    /// The target the backups protect.
    pub target: String,
    /// The location, redacted.
    pub url: String,
    pub store: &'static str,
    pub up: bool,
    pub observations_completed: u64,
    #[serde(serialize_with = "ser_time")]
    pub last_observation_at: Option<SystemTime>,
    #[serde(serialize_with = "ser_time")]
    pub last_success_at: Option<SystemTime>,
    pub last_error: Option<BackupError>,
    pub interval_seconds: f64,
    pub checks: Vec<CheckResult>,
    /// The latest successful observation.
    pub snapshot: Option<BackupSnapshot>,
}

/// Shared between the poll loops (writers, one per target) and the HTTP
/// handlers (readers). Targets come and go with a reload.
#[derive(Debug)]
pub struct SharedState {
    targets: RwLock<BTreeMap<String, Arc<TargetStatus>>>,
    /// Per target: its waker, and a channel bumped on every publish so that
    /// followers (remediation) run after each poll.
    channels: RwLock<BTreeMap<String, Channels>>,
    /// The latest Kubernetes status, when `[kubernetes]` is configured.
    kubernetes: RwLock<Option<Arc<KubernetesStatus>>>,
    /// The latest configuration reload, when one was tried.
    last_reload: RwLock<Option<Arc<ReloadOutcome>>>,
    /// The latest status of every backup location, by name.
    backups: RwLock<BTreeMap<String, Arc<BackupStatus>>>,
}

/// What the latest configuration reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// When it was tried, as RFC 3339.
    pub at: String,
    /// What asked for it: `SIGHUP`, `the API`, `the file watcher`.
    pub by: String,
    pub successful: bool,
    /// What changed (success) or every reason nothing did (failure).
    pub messages: Vec<String>,
}

#[derive(Debug)]
struct Channels {
    waker: Arc<Notify>,
    published: watch::Sender<u64>,
}

impl SharedState {
    /// State for the named targets, none polled yet.
    pub fn new<'a>(targets: impl IntoIterator<Item = (&'a str, &'static str)>) -> Self {
        let state = SharedState {
            targets: RwLock::new(BTreeMap::new()),
            channels: RwLock::new(BTreeMap::new()),
            kubernetes: RwLock::new(None),
            last_reload: RwLock::new(None),
            backups: RwLock::new(BTreeMap::new()),
        };
        for (name, kind) in targets {
            state.add_target(name, kind);
        }
        state
    }

    /// Starts tracking a target (none polled yet); a target already
    /// tracked keeps its status.
    pub fn add_target(&self, name: &str, kind: &'static str) {
        let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(TargetStatus::new(name, kind)));
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Channels {
                waker: Arc::new(Notify::new()),
                published: watch::channel(0).0,
            });
    }

    /// Stops tracking a target: its status leaves the metrics and the API,
    /// and its followers see their channel close.
    pub fn remove_target(&self, name: &str) {
        let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
        map.remove(name);
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Publishes the Kubernetes loop's latest status.
    pub fn publish_kubernetes(&self, status: KubernetesStatus) {
        let mut k = self.kubernetes.write().unwrap_or_else(|e| e.into_inner());
        *k = Some(Arc::new(status));
    }

    /// Publishes a backup location's latest status.
    pub fn publish_backup(&self, status: BackupStatus) {
        let mut b = self.backups.write().unwrap_or_else(|e| e.into_inner());
        b.insert(status.name.clone(), Arc::new(status));
    }

    /// Forgets a backup location (a reload removed it).
    pub fn remove_backup(&self, name: &str) {
        let mut b = self.backups.write().unwrap_or_else(|e| e.into_inner());
        b.remove(name);
    }

    /// Every backup location's latest status, by name.
    pub fn backups(&self) -> Vec<Arc<BackupStatus>> {
        self.backups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The latest Kubernetes status, if any was published.
    pub fn record_reload(&self, outcome: ReloadOutcome) {
        *self.last_reload.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(outcome));
    }

    /// The latest configuration reload, if one was tried since start.
    pub fn last_reload(&self) -> Option<Arc<ReloadOutcome>> {
        self.last_reload
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn kubernetes(&self) -> Option<Arc<KubernetesStatus>> {
        self.kubernetes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes a target's latest status and returns it as stored (the
    /// metrics render its series from it); ignored for a target no longer
    /// tracked (its poll loop is stopping).
    pub fn publish(&self, status: TargetStatus) -> Option<Arc<TargetStatus>> {
        let name = status.target.clone();
        let polls = status.polls_completed;
        let published = Arc::new(status);
        {
            let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
            let slot = map.get_mut(&name)?;
            *slot = published.clone();
        }
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(&name) {
            c.published.send_replace(polls);
        }
        Some(published)
    }

    /// A receiver that changes after every publish for `target`.
    pub fn subscribe(&self, target: &str) -> Option<watch::Receiver<u64>> {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .map(|c| c.published.subscribe())
    }

    pub fn get(&self, target: &str) -> Option<Arc<TargetStatus>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned()
    }

    /// Every target's latest status, by name.
    pub fn all(&self) -> Vec<Arc<TargetStatus>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Wakes the target's poll loop so it polls now instead of at its next tick.
    /// Returns false for an unknown target.
    pub fn wake(&self, target: &str) -> bool {
        match self.waker(target) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn waker(&self, target: &str) -> Option<Arc<Notify>> {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .map(|c| c.waker.clone())
    }

    /// True once every target has finished at least one poll.
    pub fn all_polled(&self) -> bool {
        self.all().iter().all(|t| t.polls_completed > 0)
    }
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// Seconds since the Unix epoch, for timestamp metrics.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
