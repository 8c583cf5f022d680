//! The reconcile loop of one PostgreSQL target: observe, evaluate, publish.
//! Each tick stands alone; only the published status and the hold state
//! carry over. Polls never overlap: the next one starts after the previous
//! finished (or was abandoned at `poll_timeout`), on the interval, or sooner
//! when the target is woken (an Alertmanager alert names it).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::{SharedState, TargetStatus};
use crate::evaluate::{self, CheckStatus, HoldState};
use crate::observe::{self, PostgresObserver};
use crate::telemetry::metrics::Metrics;

pub async fn run(
    observer: PostgresObserver,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("poller", target = %observer.target().name);
    run_inner(observer, state, metrics, cancel)
        .instrument(span)
        .await
}

async fn run_inner(
    mut observer: PostgresObserver,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let target = observer.target().clone();
    let name = target.name.clone();
    let interval = target.settings.poll_interval;
    let backoff_max = target.settings.backoff_max;
    let thresholds = target.thresholds.clone();
    let waker = state.waker(&name).unwrap_or_default();
    let mut status = TargetStatus::new(&name, "postgres");
    status.poll_interval_seconds = interval.as_secs_f64();
    status.poll_timeout_seconds = target.settings.poll_timeout.as_secs_f64();
    let mut hold = HoldState::default();
    let clock = Instant::now();

    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = observer.poll() => r,
        };
        let elapsed = started.elapsed();
        let was_up = status.up;
        let polled_before = status.polls_completed > 0;
        status.polls_completed += 1;
        status.last_poll_at = Some(SystemTime::now());
        status.last_poll_duration_seconds = Some(elapsed.as_secs_f64());
        let error_kind = match result {
            Ok(snapshot) => {
                let now_ms = clock.elapsed().as_millis() as u64;
                let (checks, next) = evaluate::evaluate(&snapshot, &thresholds, &hold, now_ms);
                hold = next;
                log_check_changes(&status.checks, &checks);
                status.checks = checks;
                status.summary = Some(evaluate::summarize(&snapshot));
                status.snapshot = Some(Arc::new(snapshot));
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
                status.checks = evaluate::evaluate_down(&thresholds, &e.message);
                let kind = e.kind;
                status.last_error = Some(e);
                Some(kind)
            }
        };
        status.open_connections = observer.open_connections();
        metrics.record_poll(&name, elapsed.as_secs_f64(), error_kind);
        state.publish(status.clone());

        let delay = observe::backoff(interval, backoff_max, status.consecutive_failures);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until((started + delay).into()) => {}
            _ = waker.notified() => tracing::debug!("woken early"),
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
