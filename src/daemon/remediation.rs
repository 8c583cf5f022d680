//! Feeds each target's remediation loop ([`runner::run`]): after every
//! publish of the target, the [`Cycle`] it decides on, built from the
//! published status (the latest successful snapshot, the failing checks)
//! and the alerts Alertmanager reports firing for it. The loop itself reads
//! neither the shared state nor the alerts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::evaluate::{CheckName, CheckStatus};
use crate::observe::PostgresTarget;
use crate::remediate::Remediation;
use crate::remediate::postgres::Postgres;
use crate::remediate::runner::{self, Cycle, Kind};
use crate::state::alerts::FiringAlerts;
use crate::state::{SharedState, TargetStatus};

/// A target's remediation, to spawn. Boxed: the loop's future is deep, and
/// the daemon's own future need not contain it.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where a kind of target's snapshot is in its published status.
type SnapshotOf<S> = fn(&TargetStatus) -> Option<&Arc<S>>;

/// The remediation of a PostgreSQL target (its feed and its loop), to
/// spawn; `None` for a target the state does not know.
pub fn postgres(
    rem: &Arc<Remediation>,
    target: &PostgresTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) -> Option<Task> {
    let kind = Postgres::new(target, rem.settings().instance());
    follow(kind, rem.clone(), state, alerts, cancel, |s| {
        s.snapshot.as_ref()
    })
}

/// The remediation of a Neo4j target, as [`postgres`]: two loops on the
/// same cycles, one for the transactions (`[remediation.neo4j_policies]`),
/// one for the index rebuild (`[remediation.neo4j_index_rebuild]`), each
/// of which selects nothing while its settings do not apply to the target.
#[cfg(feature = "neo4j")]
pub fn neo4j(
    rem: &Arc<Remediation>,
    target: &crate::observe::neo4j::Neo4jTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) -> Option<Task> {
    let transactions = crate::remediate::neo4j::Neo4j::new(target.clone());
    let indexes = crate::remediate::neo4j_index::Neo4jIndexRebuild::new(
        target.clone(),
        rem.clone(),
        transactions.actor(),
    );
    let snapshot_of: SnapshotOf<_> = |s| s.neo4j_snapshot.as_ref();
    let published = state.subscribe(&target.name)?;
    let (cycles, receiver) = watch::channel(None);
    let feed = Feed {
        target: target.name.clone(),
        state,
        alerts,
        snapshot_of,
    };
    let fed = feed.run(published, cycles, cancel.clone());
    let (rem, second) = (rem.clone(), receiver.clone());
    // Neither predicts a crossing yet (`Selection::crossings`).
    Some(Box::pin(async move {
        tokio::join!(
            fed,
            runner::run(rem.clone(), transactions, receiver, None, cancel.clone()),
            runner::run(rem, indexes, second, None, cancel),
        );
    }))
}

/// The loop and its feed, run together in one task. Subscribed before the
/// task starts, so the first publish after start-up is not missed.
fn follow<K: Kind>(
    kind: K,
    rem: Arc<Remediation>,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
    snapshot_of: SnapshotOf<K::Snapshot>,
) -> Option<Task> {
    let published = state.subscribe(kind.target())?;
    let poll_now = state.waker(kind.target());
    let (cycles, receiver) = watch::channel(None);
    let feed = Feed {
        target: kind.target().to_string(),
        state,
        alerts,
        snapshot_of,
    };
    let fed = feed.run(published, cycles, cancel.clone());
    Some(Box::pin(async move {
        tokio::join!(fed, runner::run(rem, kind, receiver, poll_now, cancel));
    }))
}

/// What one target's feed reads.
struct Feed<S> {
    target: String,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    snapshot_of: SnapshotOf<S>,
}

impl<S: Send + Sync + 'static> Feed<S> {
    /// Sends a cycle after every publish (`None` when the poll failed), until
    /// `cancel`, or until the loop is gone.
    async fn run(
        self,
        mut published: watch::Receiver<u64>,
        cycles: watch::Sender<Option<Cycle<S>>>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = published.changed() => if changed.is_err() { break },
            }
            let cycle = self
                .state
                .get(&self.target)
                .and_then(|status| cycle_of(&status, (self.snapshot_of)(&status), &self.alerts));
            if cycles.send(cycle).is_err() {
                break;
            }
        }
    }
}

/// The cycle a published status gives: only after a successful poll, which
/// left its snapshot.
fn cycle_of<S>(
    status: &TargetStatus,
    snapshot: Option<&Arc<S>>,
    alerts: &FiringAlerts,
) -> Option<Cycle<S>> {
    let snapshot = snapshot.filter(|_| status.up)?.clone();
    Some(Cycle {
        snapshot,
        failing: failing(status),
        firing: firing(alerts, &status.target),
        poll_interval: Duration::try_from_secs_f64(status.poll_interval_seconds)
            .unwrap_or_default(),
    })
}

/// The checks failing in a status, built-in and the probes': a policy's
/// pressure gate.
fn failing(status: &TargetStatus) -> Vec<CheckName> {
    let builtin = status
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| CheckName::Builtin(c.check));
    let probes = status
        .probes
        .iter()
        .flat_map(|p| &p.checks)
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| CheckName::Probe(c.check.clone()));
    builtin.chain(probes).collect()
}

/// The alerts Alertmanager reports firing for `target`: a policy's alert gate.
fn firing(alerts: &FiringAlerts, target: &str) -> Vec<String> {
    alerts
        .firing(SystemTime::now())
        .into_iter()
        .filter(|a| a.target == target)
        .map(|a| a.alertname)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::probes::{ProbeCheckResult, ProbeStatus};
    use crate::evaluate::{CheckId, CheckResult};
    use crate::state::alerts::{AlertReport, AlertStatus};

    fn check(check: CheckId, status: CheckStatus) -> CheckResult {
        CheckResult {
            check,
            status,
            value: None,
            threshold: 0.0,
            for_seconds: 0.0,
            held_seconds: 0.0,
            detail: String::new(),
            excluded: None,
        }
    }

    fn fire(alerts: &FiringAlerts, fingerprint: &str, alertname: &str, target: &str) {
        let report = AlertReport {
            status: AlertStatus::Firing,
            fingerprint,
            starts_at: "2026-01-01T00:00:00Z",
            ends_at: None,
            alertname: Some(alertname),
            target: Some(target),
        };
        alerts.observe(&report, SystemTime::now());
    }

    #[test]
    fn a_cycle_carries_the_failing_checks_and_the_target_s_firing_alerts() {
        let mut status = TargetStatus::new("main", "postgres");
        status.up = true;
        status.checks = vec![
            check(CheckId::ConnectionsUsed, CheckStatus::Fail),
            check(CheckId::ReplicationLag, CheckStatus::Pass),
            check(CheckId::IdleInTransaction, CheckStatus::Fail),
        ];
        let probe_check = |check: &str, status| ProbeCheckResult {
            check: check.to_string(),
            status,
            value: Some(1.0),
            threshold: 1.0,
            for_seconds: 0.0,
            held_seconds: 0.0,
            detail: String::new(),
        };
        status.probes = vec![ProbeStatus {
            probe: "entities".to_string(),
            ok: true,
            error: None,
            last_run_at: SystemTime::now(),
            duration_seconds: 0.1,
            series: 2,
            failures: Default::default(),
            rows: None,
            checks: vec![
                probe_check("probe:entities", CheckStatus::Pass),
                probe_check("probe:entities:rows", CheckStatus::Fail),
                probe_check("probe:entities:newest", CheckStatus::Pending),
            ],
        }];
        let alerts = FiringAlerts::new();
        fire(&alerts, "a", "ConnectionsHigh", "main");
        fire(&alerts, "b", "ConnectionsHigh", "other");
        let snapshot = Arc::new(7);
        let cycle = cycle_of(&status, Some(&snapshot), &alerts).expect("a cycle");
        assert!(Arc::ptr_eq(&cycle.snapshot, &snapshot));
        let failing = [
            CheckName::Builtin(CheckId::ConnectionsUsed),
            CheckName::Builtin(CheckId::IdleInTransaction),
            CheckName::Probe("probe:entities:rows".to_string()),
        ];
        assert_eq!(cycle.failing, failing);
        assert_eq!(cycle.firing, ["ConnectionsHigh"]);
    }

    #[test]
    fn no_cycle_without_a_successful_poll() {
        let alerts = FiringAlerts::new();
        let mut status = TargetStatus::new("main", "postgres");
        status.up = true;
        assert!(
            cycle_of::<u32>(&status, None, &alerts).is_none(),
            "no snapshot yet"
        );
        status.up = false;
        let stale = Arc::new(7);
        assert!(
            cycle_of(&status, Some(&stale), &alerts).is_none(),
            "down: the snapshot is old"
        );
    }
}
