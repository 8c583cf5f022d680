//! Feeds each target's remediation loop ([`runner::run`]): after every
//! publish of the target, the [`Cycle`] it decides on, built from the
//! published status (the latest successful snapshot, the failing checks)
//! and the alerts Alertmanager reports firing for it. The loop itself reads
//! neither the shared state nor the alerts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::evaluate::CheckStatus;
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

/// The remediation of a Neo4j target, as [`postgres`].
#[cfg(feature = "neo4j")]
pub fn neo4j(
    rem: &Arc<Remediation>,
    target: &crate::observe::neo4j::Neo4jTarget,
    state: Arc<SharedState>,
    alerts: Arc<FiringAlerts>,
    cancel: CancellationToken,
) -> Option<Task> {
    let kind = crate::remediate::neo4j::Neo4j::new(target.clone());
    follow(kind, rem.clone(), state, alerts, cancel, |s| {
        s.neo4j_snapshot.as_ref()
    })
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
    let (cycles, receiver) = watch::channel(None);
    let feed = Feed {
        target: kind.target().to_string(),
        state,
        alerts,
        snapshot_of,
    };
    let fed = feed.run(published, cycles, cancel.clone());
    Some(Box::pin(async move {
        tokio::join!(fed, runner::run(rem, kind, receiver, cancel));
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
            let cycle = self.state.get(&self.target).and_then(|s| self.cycle(&s));
            if cycles.send(cycle).is_err() {
                break;
            }
        }
    }

    /// The cycle a published status gives: only after a successful poll.
    fn cycle(&self, status: &TargetStatus) -> Option<Cycle<S>> {
        let snapshot = (self.snapshot_of)(status).filter(|_| status.up)?.clone();
        Some(Cycle {
            snapshot,
            failing: failing(status),
            firing: firing(&self.alerts, &status.target),
        })
    }
}

/// The checks failing in a status: a policy's pressure gate.
fn failing(status: &TargetStatus) -> Vec<crate::evaluate::CheckId> {
    status
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.check)
        .collect()
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
