//! The loop of one `[backups.<name>]` location: list, evaluate, publish,
//! at the location's own slow interval, beside the database targets and
//! sharing only the published state. An observation is bounded by the
//! location's `timeout`; a failing store fails the location's
//! `backup_store` check and nothing else.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::TargetConfig;
use crate::evaluate::{BackupThresholds, HoldState, evaluate_backups, evaluate_backups_down};
use crate::observe::backups::{BackupError, BackupLocation, BackupSnapshot};
use crate::state::{BackupStatus, SharedState};
use crate::telemetry::metrics::Metrics;

/// A location's configuration, as the loop takes it.
pub type BackupConfig = TargetConfig<BackupLocation, BackupThresholds>;

/// One observation: the snapshot, or why there is none.
pub async fn observe_once(location: &BackupLocation) -> Result<BackupSnapshot, BackupError> {
    #[cfg(feature = "backups")]
    {
        let observer = crate::observe::backups::BackupObserver::new(location.clone())?;
        observer.observe().await
    }
    // Without the `backups` feature, validation refuses `[backups]`.
    #[cfg(not(feature = "backups"))]
    {
        let _ = location;
        Err(BackupError {
            kind: crate::observe::backups::BackupErrorKind::Config,
            message: "built without the `backups` feature".into(),
        })
    }
}

/// The status of a location from one observation's outcome.
pub fn status(
    config: &BackupConfig,
    previous: Option<&BackupStatus>,
    outcome: Result<BackupSnapshot, BackupError>,
    hold: &HoldState,
    now_ms: u64,
) -> (BackupStatus, HoldState) {
    let (location, thresholds) = (&config.target, &config.thresholds);
    let now = SystemTime::now();
    let mut s = BackupStatus {
        name: location.name.clone(),
        target: location.target.clone(),
        url: location.redacted_url(),
        store: location.store().map_or("unknown", |k| k.as_str()),
        up: false,
        observations_completed: previous.map_or(0, |p| p.observations_completed) + 1,
        last_observation_at: Some(now),
        last_success_at: previous.and_then(|p| p.last_success_at),
        last_error: None,
        interval_seconds: location.interval.as_secs_f64(),
        checks: Vec::new(),
        snapshot: None,
    };
    let next = match outcome {
        Ok(snapshot) => {
            let (checks, next) = evaluate_backups(&snapshot, thresholds, hold, now_ms);
            s.up = true;
            s.last_success_at = Some(now);
            s.checks = checks;
            s.snapshot = Some(snapshot);
            next
        }
        Err(e) => {
            s.checks = evaluate_backups_down(thresholds, &e);
            s.last_error = Some(e);
            hold.clone()
        }
    };
    (s, next)
}

/// Observes the location every `interval` until cancelled.
pub async fn run(
    config: BackupConfig,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let name = config.target.name.clone();
    let started = Instant::now();
    let mut hold = HoldState::default();
    let mut tick = tokio::time::interval(config.target.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = observe_once(&config.target) => o,
        };
        if let Err(e) = &outcome {
            tracing::warn!(backup = %name, kind = e.kind.as_str(), error = %e.message, "cannot observe the backup location");
        }
        let previous = state.backups().into_iter().find(|b| b.name == name);
        let now_ms = started.elapsed().as_millis() as u64;
        let (status, next) = status(&config, previous.as_deref(), outcome, &hold, now_ms);
        hold = next;
        metrics.record_backup_observation(&status);
        state.publish_backup(status);
    }
}
