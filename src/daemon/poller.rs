//! The reconcile loop of one target (PostgreSQL or Neo4j): observe, evaluate, publish.
//! Each tick stands alone; only the published status and the hold state
//! carry over. Polls never overlap: the next one starts after the previous
//! finished (or was abandoned at `poll_timeout`), on the interval, or sooner
//! when the target is woken (an Alertmanager alert names it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::schedule;
use crate::config::TargetConfig;
use crate::evaluate::{self, CheckId, CheckResult, CheckStatus, HoldState, Limit};
#[cfg(feature = "neo4j")]
use crate::observe::neo4j::Neo4jObserver;
use crate::observe::probes::{ProbeRun, ProbeSettings};
use crate::observe::{self, PollError, PostgresObserver, TargetSettings};
use crate::state::{SharedState, TargetStatus};
use crate::telemetry::metrics::Metrics;

/// What the loop needs of an observer: the kind-specific parts of a tick.
pub trait Observer: Send + 'static {
    type Snapshot: Send;
    /// What the observer is built from, and may take again from a reload.
    type Target: Clone + Send + Sync + 'static;
    /// The limits its checks are evaluated against.
    type Thresholds: Clone + Send + Sync + 'static;
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn settings(&self) -> &TargetSettings;
    /// Takes the target's settings from a reload that left its connection alone.
    fn update(&mut self, target: Self::Target);
    /// Each check's limit, to tell which checks a reload changed.
    fn limits(thresholds: &Self::Thresholds) -> Vec<(CheckId, Limit)>;
    /// The checks a reload changed other than by their limit (a session
    /// check's lists or exceptions): their hold starts over too.
    fn rescoped(_before: &Self::Thresholds, _after: &Self::Thresholds) -> Vec<CheckId> {
        Vec::new()
    }
    fn poll(&mut self) -> impl Future<Output = Result<Self::Snapshot, PollError>> + Send;
    fn open_connections(&self) -> u32;
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// Evaluates a fresh snapshot into `status` (checks, summary, snapshot);
    /// returns the next hold state.
    fn evaluate(
        &self,
        snapshot: Self::Snapshot,
        thresholds: &Self::Thresholds,
        status: &mut TargetStatus,
        hold: &HoldState,
        now_ms: u64,
    ) -> HoldState;
    fn down(&self, thresholds: &Self::Thresholds, error: &str) -> Vec<CheckResult>;
    /// The target's probes (none for a kind without them).
    fn active_probes(&self) -> &BTreeMap<String, ProbeSettings> {
        &NO_PROBES
    }
    /// Runs the probes that are due and fit before `deadline` (the next poll).
    fn run_probes(&mut self, _deadline: Instant) -> impl Future<Output = Vec<ProbeRun>> + Send {
        async { Vec::new() }
    }
    /// Adds the target's persistent volumes, as the kubelet reports them,
    /// to a fresh snapshot before it is evaluated (no-op by default).
    fn add_kubernetes_volumes(
        &self,
        _snapshot: &mut Self::Snapshot,
        _volumes: &[crate::kubernetes::snapshot::VolumeUsage],
    ) {
    }
}

static NO_PROBES: BTreeMap<String, ProbeSettings> = BTreeMap::new();

/// The name a pod's persistent volume claim has among a target's watched
/// volumes (the `volume` label of the disk metrics, the disk-free check's detail).
pub fn pvc_volume_name(v: &crate::kubernetes::snapshot::VolumeUsage) -> String {
    format!("pvc/{}", v.pvc)
}

impl Observer for PostgresObserver {
    type Snapshot = observe::PgSnapshot;
    type Target = observe::PostgresTarget;
    type Thresholds = evaluate::Thresholds;
    fn update(&mut self, target: Self::Target) {
        PostgresObserver::update(self, target)
    }
    fn limits(thresholds: &Self::Thresholds) -> Vec<(CheckId, Limit)> {
        evaluate::limits(thresholds)
    }
    fn rescoped(before: &Self::Thresholds, after: &Self::Thresholds) -> Vec<CheckId> {
        evaluate::rescoped(before, after)
    }
    const KIND: &'static str = "postgres";
    fn name(&self) -> &str {
        &self.target().name
    }
    fn settings(&self) -> &TargetSettings {
        &self.target().settings
    }
    fn poll(&mut self) -> impl Future<Output = Result<Self::Snapshot, PollError>> + Send {
        PostgresObserver::poll(self)
    }
    fn open_connections(&self) -> u32 {
        PostgresObserver::open_connections(self)
    }
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        PostgresObserver::close(self)
    }
    fn evaluate(
        &self,
        snapshot: Self::Snapshot,
        thresholds: &Self::Thresholds,
        status: &mut TargetStatus,
        hold: &HoldState,
        now_ms: u64,
    ) -> HoldState {
        let (checks, next) = evaluate::evaluate(&snapshot, thresholds, hold, now_ms);
        log_check_changes(&status.checks, &checks);
        status.checks = checks;
        status.summary = Some(evaluate::summarize(&snapshot));
        status.snapshot = Some(Arc::new(snapshot));
        next
    }
    fn down(&self, thresholds: &Self::Thresholds, error: &str) -> Vec<CheckResult> {
        evaluate::evaluate_down(thresholds, error)
    }
    fn active_probes(&self) -> &BTreeMap<String, ProbeSettings> {
        &self.target().active_probes
    }
    fn run_probes(&mut self, deadline: Instant) -> impl Future<Output = Vec<ProbeRun>> + Send {
        PostgresObserver::run_probes(self, deadline, false)
    }
    /// The pods' claims join the statvfs paths: the same disk-free check
    /// and disk metrics, the claim as the volume (`pvc/<claim>`).
    fn add_kubernetes_volumes(
        &self,
        snapshot: &mut Self::Snapshot,
        volumes: &[crate::kubernetes::snapshot::VolumeUsage],
    ) {
        for v in volumes {
            snapshot.disks.push(observe::DiskUsage {
                volume: pvc_volume_name(v),
                path: format!("{}:{}", v.pod, v.volume),
                size_bytes: v.capacity_bytes,
                free_bytes: v.available_bytes,
                error: None,
            });
        }
    }
}

#[cfg(feature = "neo4j")]
impl Observer for Neo4jObserver {
    type Snapshot = observe::neo4j::Neo4jSnapshot;
    type Target = observe::neo4j::Neo4jTarget;
    type Thresholds = evaluate::Neo4jThresholds;
    fn update(&mut self, target: Self::Target) {
        Neo4jObserver::update(self, target)
    }
    fn limits(thresholds: &Self::Thresholds) -> Vec<(CheckId, Limit)> {
        evaluate::neo4j_limits(thresholds)
    }
    const KIND: &'static str = "neo4j";
    fn name(&self) -> &str {
        &self.target().name
    }
    fn settings(&self) -> &TargetSettings {
        &self.target().settings
    }
    fn poll(&mut self) -> impl Future<Output = Result<Self::Snapshot, PollError>> + Send {
        Neo4jObserver::poll(self)
    }
    fn open_connections(&self) -> u32 {
        Neo4jObserver::open_connections(self)
    }
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        Neo4jObserver::close(self)
    }
    fn evaluate(
        &self,
        snapshot: Self::Snapshot,
        thresholds: &Self::Thresholds,
        status: &mut TargetStatus,
        hold: &HoldState,
        now_ms: u64,
    ) -> HoldState {
        let (checks, next) = evaluate::evaluate_neo4j(&snapshot, thresholds, hold, now_ms);
        log_check_changes(&status.checks, &checks);
        status.checks = checks;
        status.neo4j = Some(evaluate::summarize_neo4j(&snapshot, thresholds));
        status.neo4j_snapshot = Some(Arc::new(snapshot));
        next
    }
    fn down(&self, thresholds: &Self::Thresholds, error: &str) -> Vec<CheckResult> {
        evaluate::evaluate_neo4j_down(thresholds, error)
    }
    fn active_probes(&self) -> &BTreeMap<String, ProbeSettings> {
        &self.target().active_probes
    }
    fn run_probes(&mut self, deadline: Instant) -> impl Future<Output = Vec<ProbeRun>> + Send {
        Neo4jObserver::run_probes(self, deadline, false)
    }
}

/// A target's configuration as the poll loop receives it: at start, and
/// again after a reload that changed it in place.
pub type Updates<O> =
    watch::Receiver<TargetConfig<<O as Observer>::Target, <O as Observer>::Thresholds>>;

pub async fn run<O: Observer>(
    observer: O,
    updates: Updates<O>,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("poller", target = %observer.name(), kind = O::KIND);
    run_inner(observer, updates, state, metrics, cancel)
        .instrument(span)
        .await
}

async fn run_inner<O: Observer>(
    mut observer: O,
    mut updates: Updates<O>,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let name = observer.name().to_string();
    let waker = state.waker(&name).unwrap_or_default();
    let mut status = TargetStatus::new(&name, O::KIND);
    let mut thresholds = updates.borrow_and_update().thresholds.clone();
    let mut hold = HoldState::default();
    let mut probe_book = evaluate::probes::ProbeBook::default();
    let clock = Instant::now();
    // A reload seen while waiting for the next poll.
    let mut reloaded = false;

    loop {
        if std::mem::take(&mut reloaded) || updates.has_changed().unwrap_or(false) {
            let new = updates.borrow_and_update().clone();
            observer.update(new.target);
            hold.keep_unchanged(&O::limits(&thresholds), &O::limits(&new.thresholds));
            hold.restart(&O::rescoped(&thresholds, &new.thresholds));
            thresholds = new.thresholds;
            // Probes a reload removed disappear at once; changed ones apply at their next run.
            probe_book.retain(observer.active_probes());
            status
                .probes
                .retain(|p| observer.active_probes().contains_key(&p.probe));
            tracing::info!("settings reloaded");
        }
        let settings = observer.settings().clone();
        let (interval, backoff_max) = (settings.poll_interval(), settings.backoff_max());
        status.poll_interval_seconds = interval.as_secs_f64();
        status.poll_timeout_seconds = settings.poll_timeout().as_secs_f64();
        let started = Instant::now();
        let started_wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        // Boxed: a poll's future is large and lives only while it runs, so
        // the loop's own task, which lives as long as the target, stays small
        // (a thousand targets spend most of their time waiting).
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = Box::pin(observer.poll()) => r,
        };
        let elapsed = started.elapsed();
        let was_up = status.up;
        let polled_before = status.polls_completed > 0;
        status.polls_completed += 1;
        status.last_poll_at = Some(SystemTime::now());
        status.last_poll_duration_seconds = Some(elapsed.as_secs_f64());
        let error_kind = match result {
            Ok(mut snapshot) => {
                // The latest volume usage the Kubernetes loop read (memory
                // only; it drops readings older than a few of its intervals).
                if let Some(k) = state.kubernetes() {
                    let mine: Vec<_> = k
                        .snapshot
                        .volumes
                        .iter()
                        .filter(|v| v.target == name)
                        .cloned()
                        .collect();
                    observer.add_kubernetes_volumes(&mut snapshot, &mine);
                }
                let now_ms = clock.elapsed().as_millis() as u64;
                hold = observer.evaluate(snapshot, &thresholds, &mut status, &hold, now_ms);
                status.up = true;
                status.last_success_at = status.last_poll_at;
                status.last_error = None;
                if !was_up {
                    tracing::info!(after_failures = status.consecutive_failures, "target is up");
                }
                status.consecutive_failures = 0;
                None
            }
            Err(e) => {
                status.consecutive_failures += 1;
                if was_up || !polled_before {
                    tracing::warn!(kind = e.kind.as_str(), error = %e.message, "poll failed: target is down");
                } else {
                    tracing::debug!(kind = e.kind.as_str(), error = %e.message, failures = status.consecutive_failures, "poll failed again");
                }
                status.up = false;
                status.checks = observer.down(&thresholds, &e.message);
                evaluate::probes::down(&mut status.probes);
                let kind = e.kind;
                status.last_error = Some(e);
                Some(kind)
            }
        };
        status.open_connections = observer.open_connections();
        metrics.record_poll(&name, elapsed.as_secs_f64(), error_kind);
        if let Some(published) = state.publish(status.clone()) {
            metrics.published(&published);
        }

        // Up: on the target's own grid, so that many targets spread over
        // the interval. Down: backing off, as often as the interval at most.
        let delay = if status.consecutive_failures == 0 {
            schedule::next_delay(started_wall, interval, schedule::phase(&name, interval))
        } else {
            observe::backoff(interval, backoff_max, status.consecutive_failures)
        };
        // The probes run in the gap before the next poll, on the same
        // connection, and publish their own results.
        if error_kind.is_none() && !observer.active_probes().is_empty() {
            let runs = tokio::select! {
                _ = cancel.cancelled() => break,
                r = Box::pin(observer.run_probes(started + delay)) => r,
            };
            if !runs.is_empty() {
                probe_book.record(runs);
                let now_ms = clock.elapsed().as_millis() as u64;
                status.probes = evaluate::probes::evaluate(
                    &mut probe_book,
                    observer.active_probes(),
                    now_ms,
                    true,
                );
                status.open_connections = observer.open_connections();
                if let Some(published) = state.publish(status.clone()) {
                    metrics.published(&published);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until((started + delay).into()) => {}
            _ = waker.notified() => tracing::debug!("woken early"),
            // A reload: its new settings and thresholds apply at once.
            Ok(()) = updates.changed() => reloaded = true,
        }
    }
    observer.close().await;
    tracing::debug!("poller stopped");
}

fn log_check_changes(before: &[evaluate::CheckResult], after: &[evaluate::CheckResult]) {
    for a in after {
        let prev = before.iter().find(|b| b.check == a.check).map(|b| b.status);
        if prev == Some(a.status) {
            continue;
        }
        match a.status {
            CheckStatus::Fail => {
                tracing::warn!(check = a.check.as_str(), value = a.value, threshold = a.threshold, detail = %a.detail, "check failing")
            }
            CheckStatus::Pass if prev.is_some_and(|p| p != CheckStatus::Unknown) => {
                tracing::info!(check = a.check.as_str(), detail = %a.detail, "check passing again")
            }
            _ => {}
        }
    }
}
