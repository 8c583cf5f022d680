//! This replica as a member of the shard group (`[kubernetes.shards]`):
//! every `renew_every` it reads the group's Leases, gives away the targets
//! its new view no longer gives it (the daemon stops their loops and
//! removes their series, as a reload removing them does, and answers only
//! once they have stopped), renews its Lease with that view, reads the
//! Leases again and takes the targets it claims and no other live member
//! claims (the daemon starts them as a reload adding them does). The rules
//! that keep two replicas from acting on one target are in
//! [`crate::kubernetes::shards`]; what is decided there is pure.
//!
//! A replica that cannot renew keeps its targets until one renewal period
//! before its Lease could expire, counted from when it sent its last
//! successful renewal, then stops them all.
// Without the `kubernetes` feature only the assignment type is compiled.
#![cfg_attr(not(feature = "kubernetes"), allow(unused_imports, dead_code))]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "kubernetes")]
use crate::kubernetes::shards::{self, ShardLeases};
use crate::kubernetes::{KubeError, now_ms};
use crate::telemetry::metrics::Metrics;

/// The targets this replica may act on from now on; the daemon answers on
/// `done` once the targets left out have stopped.
#[derive(Debug)]
pub struct Assignment {
    pub targets: BTreeSet<String>,
    pub done: oneshot::Sender<()>,
}

/// This member's side of the handover.
#[cfg(feature = "kubernetes")]
struct Member {
    leases: Arc<ShardLeases>,
    /// The configured targets' names (a reload changes them).
    configured: watch::Receiver<Vec<String>>,
    assignments: mpsc::Sender<Assignment>,
    metrics: Arc<Metrics>,
    /// What the daemon acts on, as last assigned.
    acting: BTreeSet<String>,
    /// Until when this replica may act: its last successful renewal's
    /// sending time plus `duration - renew_every`.
    act_until: Option<Instant>,
    /// The targets no live member claimed at the last reading (logged on change).
    unowned: Vec<String>,
    /// Another process with our identity was seen (logged once).
    twin_seen: bool,
}

/// Why a round stopped early.
#[cfg(feature = "kubernetes")]
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("{0}")]
    Api(#[from] KubeError),
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the daemon is shutting down")]
    Closed,
}

#[cfg(feature = "kubernetes")]
impl Member {
    async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, KubeError>>,
    ) -> Result<T, RoundError> {
        let limit = self.leases.settings().renew_every;
        match tokio::time::timeout(limit, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RoundError::Timeout(limit)),
        }
    }

    /// Hands `targets` to the daemon and waits until it applied them.
    async fn assign(&mut self, targets: BTreeSet<String>) -> Result<(), RoundError> {
        if targets == self.acting {
            return Ok(());
        }
        let (done, applied) = oneshot::channel();
        tracing::info!(
            stop = ?self.acting.difference(&targets).collect::<Vec<_>>(),
            start = ?targets.difference(&self.acting).collect::<Vec<_>>(),
            acting = targets.len(),
            "shard assignment changed"
        );
        // Until the daemon answers, count both: a round cut short here
        // (the Lease about to lapse) must still stop what may have started.
        let pending: BTreeSet<String> = self.acting.union(&targets).cloned().collect();
        self.acting = pending;
        self.assignments
            .send(Assignment {
                targets: targets.clone(),
                done,
            })
            .await
            .map_err(|_| RoundError::Closed)?;
        applied.await.map_err(|_| RoundError::Closed)?;
        self.acting = targets;
        Ok(())
    }

    /// One round: read, give away, renew with the new view, read again, take.
    async fn round(&mut self) -> Result<(), RoundError> {
        let me = self.leases.identity().to_string();
        let targets = self.configured.borrow().clone();
        let reading = self.call(self.leases.members(now_ms())).await?;
        if self.twin(&reading).await? {
            return Ok(());
        }
        let (members, own) = (reading.members, reading.own);
        let view = shards::view(&me, &members);
        let keep: BTreeSet<String> = self
            .acting
            .intersection(&shards::owned(&me, &view, &targets))
            .cloned()
            .collect();
        self.assign(keep).await?;
        let sent = Instant::now();
        self.call(self.leases.renew(now_ms(), &view, own)).await?;
        self.act_until = Some(sent + self.leases.settings().act_for());
        let reading = self.call(self.leases.members(now_ms())).await?;
        if self.twin(&reading).await? {
            return Ok(());
        }
        let members = reading.members;
        let report = shards::report(&members, &targets);
        self.metrics
            .record_shards(report.members, &report.claimed, report.unowned.len());
        if report.unowned != self.unowned {
            if !report.unowned.is_empty() {
                tracing::warn!(targets = ?report.unowned, "targets owned by no live member of the shard group");
            }
            self.unowned = report.unowned;
        }
        self.assign(shards::decide(&me, &view, &members, &targets))
            .await?;
        // Within this round's time bound: a slow delete only delays the next.
        let _ = tokio::time::timeout(self.leases.settings().renew_every, self.leases.sweep()).await;
        Ok(())
    }

    /// Whether another process runs with our identity (it wrote our Lease
    /// since we did): then we stop every target and stay out, and say so
    /// once.
    async fn twin(&mut self, reading: &shards::Reading) -> Result<bool, RoundError> {
        let Some(other) = &reading.twin else {
            self.twin_seen = false;
            return Ok(false);
        };
        if !self.twin_seen {
            tracing::error!(
                identity = self.leases.identity(),
                other_process = %other,
                "another dbwarden process runs with this replica's shard identity (remediation.instance or $HOSTNAME must be unique per replica): not acting while it holds the Lease"
            );
            self.twin_seen = true;
        }
        self.assign(BTreeSet::new()).await?;
        Ok(true)
    }

    /// Stops every target: this replica may no longer act.
    async fn fence(&mut self) {
        if self.acting.is_empty() {
            return;
        }
        tracing::warn!(
            targets = self.acting.len(),
            "cannot renew the shard Lease: stopping every target before the Lease can expire"
        );
        let _ = self.assign(BTreeSet::new()).await;
    }
}

/// Runs the member until `cancel`. The Lease is released by the daemon
/// once every target has stopped ([`ShardLeases::release`]).
#[cfg(feature = "kubernetes")]
pub async fn run(
    leases: Arc<ShardLeases>,
    configured: watch::Receiver<Vec<String>>,
    assignments: mpsc::Sender<Assignment>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let every = leases.settings().renew_every;
    let mut m = Member {
        leases,
        configured,
        assignments,
        metrics,
        acting: BTreeSet::new(),
        act_until: None,
        unowned: Vec::new(),
        twin_seen: false,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = m.act_until.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline), if !m.acting.is_empty() => {
                m.fence().await;
                continue;
            }
        }
        let deadline = m.act_until.unwrap_or_else(Instant::now);
        let acting = !m.acting.is_empty();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = m.round() => Some(r),
            _ = tokio::time::sleep_until(deadline), if acting => None,
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(RoundError::Closed)) => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read or renew the shard Leases");
            }
            None => m.fence().await,
        }
    }
}
