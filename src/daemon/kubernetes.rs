//! The Kubernetes loop: the pod watchers' snapshot (plus the kubelet volume
//! stats on their own cadence) → the pure checks → the Lease → the eviction
//! policy → lag routing (the standbys' `replication_lag` checks, read from
//! the published state) → publish into [`SharedState`], so `/metrics` and
//! the status API read memory only.
//!
//! It runs beside the database poll loops and shares nothing with them but
//! the published state: an API server that cannot be reached makes the
//! Kubernetes checks fail or go unknown, never a database poll slow. The PVC
//! usage it publishes is read by the PostgreSQL poll loops into their
//! disk-free check (see `poller::Observer::add_kubernetes_volumes`).
// Without the `kubernetes` feature only the pure parts (the audit bridge,
// the unreachable status, the report type) are compiled.
#![cfg_attr(not(feature = "kubernetes"), allow(unused_imports, dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[cfg(feature = "kubernetes")]
use kube::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::kubernetes::checks::KubeCheck;
use crate::kubernetes::checks::{KubeCheckStatus, pod_checks};
#[cfg(feature = "kubernetes")]
use crate::kubernetes::client::build_client;
#[cfg(feature = "kubernetes")]
use crate::kubernetes::evict::EvictionRunner;
use crate::kubernetes::evict::{
    EvictionAudit, EvictionBudget, EvictionCandidate, EvictionDecision, EvictionOutcome,
    EvictionReport, REBUILD_POLICY_NAME,
};
#[cfg(feature = "kubernetes")]
use crate::kubernetes::lag_routing::LagRoutingRunner;
use crate::kubernetes::lag_routing::{LagRouteAudit, LagRouteChange, RouteOutcome, TargetLag};
#[cfg(feature = "kubernetes")]
use crate::kubernetes::lease::LeaseElector;
#[cfg(feature = "kubernetes")]
use crate::kubernetes::pods::PodObserver;
use crate::kubernetes::snapshot::VolumeUsage;
#[cfg(feature = "kubernetes")]
use crate::kubernetes::volumes;
use crate::kubernetes::{KubernetesSettings, KubernetesSnapshot, now_ms};
use crate::remediate::audit::{AuditLog, AuditRecord, Decision, Mode, RECENT_CAPACITY};
use crate::remediate::{Recorder, Remediation};
use crate::state::{KubernetesStatus, LeaseView, SharedState};
use crate::telemetry::metrics::Metrics;

/// How long one node's stats summary may take.
const PER_NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Volume readings older than this many `volume_stats_interval`s are dropped:
/// the disk-free check must not pass on an old reading.
const VOLUME_STALE_AFTER: u32 = 3;

/// The audit bridge of the pod actions (evictions, lag routing): their
/// records in the remediation audit file, with the same write-ahead rule
/// (the intent is `fsync`ed before the action), and each outcome carrying
/// its intent's action id.
pub struct PodAuditLog {
    log: Option<Arc<AuditLog>>,
    instance: String,
    mode: Mode,
    metrics: Arc<Metrics>,
    /// The action id of each pod's pending intent, by UID.
    pending: Mutex<HashMap<String, String>>,
}

impl PodAuditLog {
    pub fn new(rem: &Remediation, metrics: Arc<Metrics>) -> Self {
        let settings = rem.settings();
        PodAuditLog {
            log: rem.audit.clone(),
            instance: settings.instance().to_string(),
            mode: settings.mode,
            metrics,
            pending: Mutex::default(),
        }
    }

    fn id(&self, action: &str, uid: &str) -> String {
        format!("{}-{action}-{uid}-{}", self.instance, now_ms())
    }

    fn append(&self, record: &AuditRecord, durable: bool) -> Result<(), String> {
        let Some(log) = &self.log else {
            return Err("no audit file (observe mode)".into());
        };
        log.append(record, durable).map_err(|e| {
            self.metrics.audit_error();
            e.to_string()
        })
    }

    /// Writes and syncs the intent `record(id, instance, mode)` of the pod `uid`.
    fn intent(
        &self,
        action: &str,
        uid: &str,
        record: impl FnOnce(&str, &str, Mode) -> AuditRecord,
    ) -> Result<(), String> {
        let id = self.id(action, uid);
        self.append(&record(&id, &self.instance, self.mode), true)?;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), id);
        Ok(())
    }

    /// Writes the outcome `record(id, instance, mode)` under its intent's id;
    /// a failure is logged (the action already happened).
    fn outcome(
        &self,
        action: &str,
        uid: &str,
        pod: &str,
        record: impl FnOnce(&str, &str, Mode) -> AuditRecord,
    ) {
        let id = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid)
            .unwrap_or_else(|| self.id(action, uid));
        if let Err(e) = self.append(&record(&id, &self.instance, self.mode), false) {
            tracing::error!(error = %e, pod = %pod, action, "cannot write the outcome to the audit file");
        }
    }
}

impl EvictionAudit for PodAuditLog {
    fn intent(&self, c: &EvictionCandidate) -> Result<(), String> {
        PodAuditLog::intent(self, "evict", &c.uid, |id, instance, mode| {
            c.audit_record(
                SystemTime::now(),
                id,
                instance,
                mode,
                Decision::Intent,
                "about to evict the pod",
            )
        })
    }

    fn outcome(&self, c: &EvictionCandidate, o: &EvictionOutcome) {
        PodAuditLog::outcome(self, "evict", &c.uid, &c.pod, |id, instance, mode| {
            c.audit_record(
                SystemTime::now(),
                id,
                instance,
                mode,
                decision_of(o),
                o.sentence(),
            )
        });
    }
}

impl LagRouteAudit for PodAuditLog {
    fn intent(&self, c: &LagRouteChange) -> Result<(), String> {
        PodAuditLog::intent(self, c.action(), &c.uid, |id, instance, mode| {
            c.audit_record(
                SystemTime::now(),
                id,
                instance,
                mode,
                Decision::Intent,
                "about to set the pod condition",
            )
        })
    }

    fn outcome(&self, c: &LagRouteChange, o: &RouteOutcome) {
        PodAuditLog::outcome(self, c.action(), &c.uid, &c.pod, |id, instance, mode| {
            c.audit_record(
                SystemTime::now(),
                id,
                instance,
                mode,
                o.decision(),
                o.sentence(c),
            )
        });
    }
}

/// The audit decision recording an eviction outcome.
pub fn decision_of(o: &EvictionOutcome) -> Decision {
    match o {
        EvictionOutcome::WouldEvict => Decision::WouldAct,
        EvictionOutcome::Evicted => Decision::Acted,
        EvictionOutcome::Refused(_) => Decision::Refused,
        EvictionOutcome::Gone | EvictionOutcome::Changed(_) => Decision::Skipped,
        EvictionOutcome::Failed(_) => Decision::Failed,
    }
}

/// What the targets' latest polls say about their lag, for lag routing:
/// PostgreSQL targets only; the role only after a successful poll.
pub fn target_lags(
    state: &SharedState,
    targets: &[String],
) -> std::collections::BTreeMap<String, TargetLag> {
    use crate::evaluate::{CheckId, CheckStatus};
    let mut out = std::collections::BTreeMap::new();
    for t in targets {
        let Some(status) = state.get(t) else { continue };
        if status.kind != "postgres" {
            continue;
        }
        let check = status
            .checks
            .iter()
            .find(|c| c.check == CheckId::ReplicationLag);
        let role = status
            .snapshot
            .as_ref()
            .filter(|_| status.up)
            .map(|s| s.server.role());
        out.insert(
            t.clone(),
            TargetLag {
                role,
                check: check.map_or(CheckStatus::Unknown, |c| c.status),
                lag_seconds: check.and_then(|c| c.value),
                passing_since_ms: None,
            },
        );
    }
    out
}

/// Every PostgreSQL target's latest WAL positions, for the rebuild reason:
/// its latest successful snapshot, stamped with that poll's time, and
/// whether its latest poll succeeded.
pub fn wal_readings(
    state: &SharedState,
) -> std::collections::BTreeMap<String, crate::kubernetes::rebuild::WalReading> {
    let mut out = std::collections::BTreeMap::new();
    for status in state.all() {
        if status.kind != "postgres" {
            continue;
        }
        let (Some(s), Some(at)) = (&status.snapshot, status.last_success_at) else {
            continue;
        };
        let at_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        out.insert(
            status.target.clone(),
            crate::kubernetes::rebuild::WalReading {
                at_ms,
                up: status.up,
                in_recovery: s.server.in_recovery,
                system_id: s.server.system_identifier,
                wal_lsn: s.server.wal_lsn,
                receive_lsn: s.recovery.as_ref().and_then(|r| r.receive_lsn),
                replay_lsn: s.recovery.as_ref().and_then(|r| r.replay_lsn),
                lag_seconds: s.recovery.as_ref().and_then(|r| r.replay_delay_seconds),
            },
        );
    }
    out
}

/// The lag routing runner over the shared remediation state.
#[cfg(feature = "kubernetes")]
pub fn lag_routing_runner(
    settings: &KubernetesSettings,
    rem: &Arc<Remediation>,
    metrics: Arc<Metrics>,
    elector: Option<&Arc<LeaseElector>>,
) -> Option<LagRoutingRunner> {
    let policy = settings.lag_routing.clone()?;
    let paused = rem.clone();
    let is_actor: Arc<dyn Fn() -> bool + Send + Sync> = match elector {
        Some(e) => e.actor_flag(),
        None => Arc::new(|| true),
    };
    Some(LagRoutingRunner::new(
        policy,
        rem.settings().mode,
        Arc::new(SharedBudget(rem.clone())),
        Arc::new(move || paused.pause.is_paused()),
        is_actor,
        Arc::new(PodAuditLog::new(rem, metrics)),
    ))
}

/// The shared remediation budgets (per target and global) as the eviction
/// runner's budget.
struct SharedBudget(Arc<Remediation>);

impl EvictionBudget for SharedBudget {
    fn try_spend(&self, target: &str, now_ms: u64) -> bool {
        self.0.try_spend(target, now_ms)
    }
    fn refund(&self, target: &str, at_ms: u64) {
        self.0.refund(target, at_ms)
    }
}

/// The eviction runner over the shared remediation state, its cooldowns
/// seeded from the evictions the audit file remembers.
#[cfg(feature = "kubernetes")]
pub fn eviction_runner(
    settings: &KubernetesSettings,
    rem: &Arc<Remediation>,
    metrics: Arc<Metrics>,
    elector: Option<&Arc<LeaseElector>>,
    state: &Arc<SharedState>,
) -> Option<EvictionRunner> {
    let policy = settings.eviction.clone()?;
    let paused = rem.clone();
    let is_actor: Arc<dyn Fn() -> bool + Send + Sync> = match elector {
        Some(e) => e.actor_flag(),
        None => Arc::new(|| true),
    };
    // Evictions keep the mode and pacing they started with (a
    // reconfiguration applies to them at the next start).
    let settings = rem.settings();
    let mut runner = EvictionRunner::new(
        policy.clone(),
        settings.mode,
        settings.pacing,
        Arc::new(SharedBudget(rem.clone())),
        Arc::new(move || paused.pause.is_paused()),
        is_actor,
        Arc::new(PodAuditLog::new(rem, metrics)),
    );
    if policy.rebuild_after.is_some() {
        let state = state.clone();
        runner = runner.with_readings(Arc::new(move || wal_readings(&state)));
    }
    // After a restart, a StatefulSet evicted within the cooldown stays cooling.
    if let Some(log) = &rem.audit {
        let since = now_ms().saturating_sub(crate::kubernetes::duration_ms(policy.cooldown));
        for r in log.recent(RECENT_CAPACITY) {
            let Some(p) = &r.pod else { continue };
            if r.action == "evict"
                && r.time_ms >= since
                && matches!(r.decision, Decision::Acted | Decision::Failed)
            {
                let group = match &p.statefulset {
                    Some(s) => format!("{}/statefulset/{s}", p.namespace),
                    None => format!("{}/pod/{}", p.namespace, p.name),
                };
                runner.record_recent(group, r.time_ms);
            }
        }
    }
    Some(runner)
}

/// The metric label of one eviction decision (`None`: not an action).
fn action_label(d: &EvictionDecision) -> Option<&'static str> {
    match d {
        EvictionDecision::Done(o) => Some(o.as_str()),
        EvictionDecision::BudgetExhausted => Some("budget_exhausted"),
        EvictionDecision::AuditFailed => Some("audit_failed"),
        EvictionDecision::Paused
        | EvictionDecision::Observed
        | EvictionDecision::NotActor
        | EvictionDecision::Settled => None,
    }
}

/// The status published when no client could be built: every target's
/// `kubernetes_api_reachable` check fails with the reason, the others are unknown.
pub fn unreachable_status(settings: &KubernetesSettings, error: &str) -> KubernetesStatus {
    let snapshot = unreachable_snapshot(settings, error, now_ms());
    let checks = pod_checks(&snapshot, &settings.thresholds(), now_ms());
    KubernetesStatus {
        snapshot,
        checks,
        lease: None,
        eviction_enabled: false,
        last_evictions: Vec::new(),
        lag_routing_enabled: false,
        last_routes: Vec::new(),
        lag_routing_held_back: Vec::new(),
        volumes_at_ms: None,
        replay_stalled_seconds: Default::default(),
    }
}

/// A snapshot saying that no target's pods could be watched, and why.
pub fn unreachable_snapshot(
    settings: &KubernetesSettings,
    error: &str,
    now: u64,
) -> crate::kubernetes::KubernetesSnapshot {
    let mut s =
        crate::kubernetes::KubernetesSnapshot::unreachable(&settings.namespace, error.into(), now);
    s.targets = settings
        .targets
        .iter()
        .map(|t| crate::kubernetes::snapshot::TargetWatchStatus {
            target: t.name.clone(),
            label_selector: t.label_selector.clone(),
            synced: false,
            error: Some(error.to_string()),
        })
        .collect();
    s
}

/// What one look at the API server found.
#[derive(Debug, serde::Serialize)]
pub struct KubernetesReport {
    pub checks: Vec<KubeCheck>,
    pub snapshot: KubernetesSnapshot,
}

/// How long `dbwarden check` waits for the pod lists.
const KUBERNETES_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const VOLUME_STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Lists the targets' pods once (through the same watchers as the daemon,
/// stopped after the first complete list or the first error) and evaluates
/// the Kubernetes checks. Credentials that cannot be loaded or an API server
/// that cannot be reached fail `kubernetes_api_reachable`; the database
/// checks do not depend on any of it.
#[cfg(feature = "kubernetes")]
pub async fn observe_kubernetes_once(settings: &KubernetesSettings) -> KubernetesReport {
    let client = match build_client(&settings.credentials(), &settings.namespace).await {
        Ok(c) => c,
        Err(e) => {
            let snapshot = unreachable_snapshot(settings, &e.to_string(), now_ms());
            let checks = pod_checks(&snapshot, &settings.thresholds(), now_ms());
            return KubernetesReport { checks, snapshot };
        }
    };
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let observer = match PodObserver::spawn(
        client.clone(),
        &settings.namespace,
        &settings.targets,
        settings.statefulsets,
        &tracker,
        cancel.clone(),
    ) {
        Ok(o) => o,
        Err(e) => {
            let snapshot = unreachable_snapshot(settings, &e, now_ms());
            let checks = pod_checks(&snapshot, &settings.thresholds(), now_ms());
            return KubernetesReport { checks, snapshot };
        }
    };
    let mut changes = observer.subscribe();
    // Every target listed, or failing: the StatefulSets are listed beside
    // them and reported as far as they got.
    let settled = |s: &KubernetesSnapshot| s.targets.iter().all(|t| t.synced || t.error.is_some());
    let _ = tokio::time::timeout(KUBERNETES_SYNC_TIMEOUT, async {
        while !settled(&observer.snapshot(now_ms())) {
            if changes.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    let mut snapshot = observer.snapshot(now_ms());
    if snapshot
        .targets
        .iter()
        .any(|t| !t.synced && t.error.is_none())
    {
        snapshot.api_reachable = false;
        snapshot.error.get_or_insert_with(|| {
            format!(
                "the pods were not listed within {}",
                humantime::format_duration(KUBERNETES_SYNC_TIMEOUT)
            )
        });
        for t in snapshot.targets.iter_mut().filter(|t| !t.synced) {
            t.error = snapshot.error.clone();
        }
    }
    if settings.volume_stats && snapshot.api_reachable {
        let (v, e) = volumes::collect_volumes(&client, &snapshot, VOLUME_STATS_TIMEOUT).await;
        snapshot.volumes = v;
        snapshot.volumes_error = e;
    }
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    let checks = pod_checks(&snapshot, &settings.thresholds(), now_ms());
    KubernetesReport { checks, snapshot }
}

/// Volume usage read by its own task, so a slow kubelet never delays a publish.
#[derive(Debug, Default)]
#[cfg(feature = "kubernetes")]
struct Volumes {
    usage: Vec<VolumeUsage>,
    error: Option<String>,
    at_ms: Option<u64>,
}

/// Runs the loop until `cancel`: spawns the watchers (and the volume and
/// Lease tasks) on `tracker`. Never fails: an API server that cannot be
/// reached shows in the published status.
#[allow(clippy::too_many_arguments)]
#[cfg(feature = "kubernetes")]
pub async fn run(
    settings: KubernetesSettings,
    client: Client,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    remediation: Option<Arc<Remediation>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("kubernetes", namespace = %settings.namespace);
    run_inner(
        settings,
        client,
        state,
        metrics,
        remediation,
        tracker,
        cancel,
    )
    .instrument(span)
    .await
}

#[cfg(feature = "kubernetes")]
async fn run_inner(
    settings: KubernetesSettings,
    client: Client,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    remediation: Option<Arc<Remediation>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let observer = match PodObserver::spawn(
        client.clone(),
        &settings.namespace,
        &settings.targets,
        settings.statefulsets,
        &tracker,
        cancel.clone(),
    ) {
        Ok(o) => o,
        Err(e) => {
            // Validation parses every selector: this cannot happen with a loaded config.
            tracing::error!(error = %e, "cannot watch the pods");
            return;
        }
    };
    let wake = Arc::new(Notify::new());

    let elector = settings
        .lease
        .clone()
        .map(|l| Arc::new(LeaseElector::new(client.clone(), &settings.namespace, l)));
    if let Some(e) = &elector {
        let wake = wake.clone();
        tracker.spawn(
            e.clone()
                .run(cancel.clone(), move |_| wake.notify_one())
                .instrument(tracing::info_span!("kubernetes_lease")),
        );
    }

    let volumes = Arc::new(Mutex::new(Volumes::default()));
    if settings.volume_stats {
        let (client, observer, volumes, wake, cancel) = (
            client.clone(),
            observer.clone(),
            volumes.clone(),
            wake.clone(),
            cancel.clone(),
        );
        let every = settings.volume_stats_interval;
        tracker.spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let snap = observer.snapshot(now_ms());
                    let (usage, error) =
                        volumes::collect_volumes(&client, &snap, PER_NODE_TIMEOUT).await;
                    if let Some(e) = &error {
                        tracing::warn!(error = %e, "cannot read the volume usage of every pod");
                    }
                    let mut v = volumes.lock().unwrap_or_else(|e| e.into_inner());
                    // Keep what a failed node read last time only while it is fresh (below).
                    if error.is_none() || !usage.is_empty() {
                        v.usage = usage;
                        v.at_ms = Some(now_ms());
                    }
                    v.error = error;
                    drop(v);
                    wake.notify_one();
                }
            }
            .instrument(tracing::info_span!("kubernetes_volumes")),
        );
    }

    let mut runner = match (&remediation, &settings.eviction) {
        (Some(rem), Some(_)) => {
            eviction_runner(&settings, rem, metrics.clone(), elector.as_ref(), &state)
        }
        (None, Some(_)) => {
            // Validation requires [remediation] with an eviction policy.
            tracing::error!("the eviction policy needs [remediation]: not evicting");
            None
        }
        _ => None,
    };
    let mut router = match (&remediation, &settings.lag_routing) {
        (Some(rem), Some(_)) => {
            lag_routing_runner(&settings, rem, metrics.clone(), elector.as_ref())
        }
        (None, Some(_)) => {
            tracing::error!("lag routing needs [remediation]: not routing");
            None
        }
        _ => None,
    };
    // The mode the eviction runner was started in labels its decisions.
    let mode = remediation.as_ref().map(|r| r.settings().mode.as_str());
    let routed: Vec<String> = settings
        .lag_routing
        .as_ref()
        .map(|p| {
            settings
                .targets
                .iter()
                .filter(|t| p.applies_to(&t.name))
                .map(|t| t.name.clone())
                .collect()
        })
        .unwrap_or_default();
    if let (Some(mode), Some(policy), true) = (mode, &settings.lag_routing, router.is_some()) {
        for t in &routed {
            for action in ["route_out", "route_in"] {
                for outcome in [
                    "acted",
                    "would_act",
                    "skipped",
                    "failed",
                    "budget_exhausted",
                    "audit_failed",
                ] {
                    metrics.init_action(t, &policy.name, action, outcome, mode);
                }
            }
        }
    }
    let mut last_routes = Vec::new();
    let mut held_back = Vec::new();
    if let (Some(mode), Some(policy)) = (mode, &settings.eviction) {
        for t in settings
            .targets
            .iter()
            .filter(|t| policy.applies_to(&t.name))
        {
            for outcome in [
                "acted",
                "would_act",
                "refused",
                "skipped",
                "failed",
                "budget_exhausted",
                "audit_failed",
            ] {
                metrics.init_action(&t.name, &policy.name, "evict", outcome, mode);
                if policy.rebuild_after.is_some() {
                    metrics.init_action(&t.name, REBUILD_POLICY_NAME, "evict", outcome, mode);
                }
            }
        }
    }

    // Lag routing follows the standbys' polls, not only this loop's
    // interval: each publish of a routed target wakes the loop.
    if router.is_some() {
        for t in &routed {
            let Some(mut published) = state.subscribe(t) else {
                continue;
            };
            let (wake, cancel) = (wake.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = published.changed() => match r {
                            Ok(()) => wake.notify_one(),
                            Err(_) => break,
                        },
                    }
                }
            });
        }
    }

    let mut changes = observer.subscribe();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_evictions: Vec<EvictionReport> = Vec::new();
    let mut replay_stalled = std::collections::BTreeMap::new();
    let stale_ms = crate::kubernetes::duration_ms(settings.volume_stats_interval)
        .saturating_mul(u64::from(VOLUME_STALE_AFTER));
    let mut was_reachable = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { break },
            _ = wake.notified() => {}
        }
        let now = now_ms();
        let mut snapshot = observer.snapshot(now);
        let volumes_at_ms = if settings.volume_stats {
            let v = volumes.lock().unwrap_or_else(|e| e.into_inner());
            match v.at_ms {
                Some(at) if now.saturating_sub(at) <= stale_ms => {
                    snapshot.volumes = v.usage.clone();
                    snapshot.volumes_error = v.error.clone();
                }
                Some(at) => {
                    snapshot.volumes_error = Some(format!(
                        "the latest volume usage is {}s old: {}",
                        now.saturating_sub(at) / 1000,
                        v.error.as_deref().unwrap_or("no newer reading")
                    ));
                }
                None => snapshot.volumes_error = v.error.clone(),
            }
            v.at_ms
        } else {
            None
        };
        if snapshot.api_reachable != was_reachable {
            if snapshot.api_reachable {
                tracing::info!("the API server is reachable again");
            } else {
                tracing::warn!(
                    error = snapshot.error.as_deref().unwrap_or_default(),
                    "cannot reach the API server: Kubernetes checks are failing or unknown; database polling is unaffected"
                );
            }
            was_reachable = snapshot.api_reachable;
        }
        let checks = pod_checks(&snapshot, &settings.thresholds(), now);
        for c in &checks {
            if c.status == KubeCheckStatus::Fail {
                tracing::debug!(target = %c.target, check = c.check.as_str(), message = %c.message, "Kubernetes check failing");
            }
        }
        if let (Some(r), Some(rem), Some(mode)) = (runner.as_mut(), &remediation, mode) {
            let reports = r.run_once(&client, &snapshot, now, &cancel).await;
            if let Some(policy) = &settings.eviction {
                for t in settings
                    .targets
                    .iter()
                    .filter(|t| policy.applies_to(&t.name))
                {
                    let n = |p: &str| {
                        reports
                            .iter()
                            .filter(|x| x.candidate.target == t.name && x.candidate.policy == p)
                            .count()
                    };
                    metrics.set_candidates(&t.name, &policy.name, n(&policy.name));
                    if policy.rebuild_after.is_some() {
                        metrics.set_candidates(
                            &t.name,
                            REBUILD_POLICY_NAME,
                            n(REBUILD_POLICY_NAME),
                        );
                    }
                }
                if policy.rebuild_after.is_some() {
                    let tracker = r.tracker();
                    // Every standby followed, not only the policy's targets:
                    // the measure is the standby's, the eviction the policy's.
                    replay_stalled = tracker
                        .standbys()
                        .into_iter()
                        .map(|t| {
                            let ms = tracker.standing_still_ms(&t);
                            (t, ms as f64 / 1000.0)
                        })
                        .collect();
                }
            }
            for report in &reports {
                if let Some(label) = action_label(&report.decision) {
                    metrics.action(
                        &report.candidate.target,
                        &report.candidate.policy,
                        "evict",
                        label,
                        mode,
                    );
                }
            }
            if !reports.is_empty() {
                let targets: std::collections::BTreeSet<&str> = reports
                    .iter()
                    .map(|r| r.candidate.target.as_str())
                    .collect();
                for t in targets {
                    rem.publish_budgets(t);
                }
                last_evictions = reports;
            }
        }
        if let (Some(r), Some(rem), Some(mode)) = (router.as_mut(), &remediation, mode) {
            let lags = target_lags(&state, &routed);
            let (routing, reports) = r.run_once(&client, &snapshot, lags, now).await;
            held_back = routing.held_back.clone();
            for t in &routed {
                let n = routing.changes.iter().filter(|c| &c.target == t).count();
                metrics.set_candidates(t, &r.policy().name, n);
            }
            for report in &reports {
                if let Some(label) = report.outcome_label() {
                    metrics.action(
                        &report.change.target,
                        &report.change.policy,
                        report.change.action(),
                        label,
                        mode,
                    );
                }
            }
            if !reports.is_empty() {
                let targets: std::collections::BTreeSet<&str> =
                    reports.iter().map(|r| r.change.target.as_str()).collect();
                for t in targets {
                    rem.publish_budgets(t);
                }
                last_routes = reports;
            }
        }
        let lease = elector.as_ref().map(|e| LeaseView {
            name: settings
                .lease
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_default(),
            identity: e.identity().to_string(),
            holder: e.holder(),
            is_leader: e.is_leader(now_ms()),
            error: e.last_error(),
        });
        state.publish_kubernetes(KubernetesStatus {
            snapshot,
            checks,
            lease,
            eviction_enabled: runner.is_some(),
            last_evictions: last_evictions.clone(),
            lag_routing_enabled: router.is_some(),
            last_routes: last_routes.clone(),
            lag_routing_held_back: held_back.clone(),
            volumes_at_ms,
            replay_stalled_seconds: replay_stalled.clone(),
        });
    }
    tracing::debug!("Kubernetes loop stopped");
}
