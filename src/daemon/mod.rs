//! Wiring: one poll loop per target (and, where a policy applies, its
//! remediation loop, fed by [`remediation`]), the HTTP server, and shutdown.
//!
//! Every task hangs off one [`CancellationToken`] and one [`TaskTracker`]:
//! on SIGTERM/SIGINT the token is cancelled, each loop finishes the step it
//! is in (a poll is itself bounded by `poll_timeout`), and the process waits
//! at most `server.shutdown_grace` for them.

pub mod kubernetes;
pub mod poller;
pub mod reload;
pub mod remediation;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http;
use crate::observe::PostgresObserver;
#[cfg(feature = "neo4j")]
use crate::observe::neo4j::Neo4jObserver;
use crate::remediate::Remediation;
use crate::state::{SharedState, alerts};
use crate::telemetry::metrics::Metrics;

/// Runs the daemon until `shutdown` resolves, then drains within the grace period.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let local = listener.local_addr()?;

    let state = Arc::new(SharedState::new(
        config
            .postgres
            .iter()
            .map(|t| (t.target.name.as_str(), "postgres"))
            .chain(
                config
                    .neo4j
                    .iter()
                    .map(|t| (t.target.name.as_str(), "neo4j")),
            ),
    ));
    let metrics = Arc::new(Metrics::new(state.clone()));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();

    let remediation = match config.remediation.clone() {
        Some(settings) => Some(
            Remediation::start(settings, metrics.clone()).context("cannot start remediation")?,
        ),
        None => None,
    };
    if let Some(rem) = &remediation {
        let settings = rem.settings();
        tracing::info!(
            mode = settings.mode.as_str(),
            policies = settings.policies.len(),
            neo4j_policies = settings.neo4j_policies.len(),
            paused = rem.pause.is_paused(),
            "remediation configured"
        );
    }

    // Alerts Alertmanager reports, shared by the receiver and the alert gate of policies.
    let firing_alerts = Arc::new(alerts::FiringAlerts::new());
    for target_config in &config.postgres {
        let target = &target_config.target;
        // Polls use one connection; a target remediation acts on uses a second
        // one, the actor's (lock holder and signal sender). Validation keeps
        // both within the target's max_connections.
        let observer = PostgresObserver::new(target.clone());
        tracker.spawn(poller::run(
            observer,
            tokio::sync::watch::channel(target_config.clone()).1,
            state.clone(),
            metrics.clone(),
            token.child_token(),
        ));
        if let Some(rem) = remediation.as_ref().filter(|r| r.applies_to(&target.name))
            && let Some(task) = remediation::postgres(
                rem,
                target,
                state.clone(),
                firing_alerts.clone(),
                token.child_token(),
            )
        {
            tracker.spawn(task);
        }
    }
    #[cfg(feature = "neo4j")]
    for target_config in &config.neo4j {
        let target = &target_config.target;
        // One connection to poll; where remediation acts, a second one for the actor.
        tracker.spawn(poller::run(
            Neo4jObserver::new(target.clone()),
            tokio::sync::watch::channel(target_config.clone()).1,
            state.clone(),
            metrics.clone(),
            token.child_token(),
        ));
        if let Some(rem) = remediation
            .as_ref()
            .filter(|r| r.applies_to_neo4j(&target.name))
            && let Some(task) = remediation::neo4j(
                rem,
                target,
                state.clone(),
                firing_alerts.clone(),
                token.child_token(),
            )
        {
            tracker.spawn(task);
        }
    }
    // Without the `kubernetes` feature, validation refuses `[kubernetes]`.
    #[cfg(feature = "kubernetes")]
    if let Some(k) = config.kubernetes.clone() {
        start_kubernetes(
            k,
            state.clone(),
            metrics.clone(),
            remediation.clone(),
            &tracker,
            token.child_token(),
        )
        .await;
    }
    // What Alertmanager reports firing: fed by the receiver; remediation's
    // second gate ("act only while the named alert fires") reads it.
    let app = http::AppState {
        state: state.clone(),
        metrics: metrics.clone(),
        remediation: remediation.clone(),
        alertmanager_token: config.server.alertmanager_token.clone(),
        alerts: firing_alerts,
    };
    let http_token = token.clone();
    tracker.spawn(async move {
        if let Err(e) = http::serve(listener, app, http_token.clone().cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP server failed");
            http_token.cancel();
        }
    });
    tracker.close();
    tracing::info!(
        listen = %local,
        postgres = config.postgres.len(),
        neo4j = config.neo4j.len(),
        "dbwarden started"
    );

    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested: draining"),
        _ = token.cancelled() => tracing::error!("a component failed: shutting down"),
    }
    token.cancel();
    let grace = config.server.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace = %humantime::format_duration(grace), "tasks did not stop within the grace period; exiting anyway");
    }
    tracing::info!("dbwarden stopped");
    Ok(())
}

/// Builds the Kubernetes client and spawns the Kubernetes loop. Credentials
/// that cannot be loaded are reported as an unreachable API server in the
/// published status (and the log); the database targets run regardless.
#[cfg(feature = "kubernetes")]
pub async fn start_kubernetes(
    settings: crate::kubernetes::KubernetesSettings,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    remediation: Option<Arc<Remediation>>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    match crate::kubernetes::client::build_client(&settings.credentials(), &settings.namespace)
        .await
    {
        Ok(client) => {
            tracing::info!(
                namespace = %settings.namespace,
                targets = settings.targets.len(),
                eviction = settings.eviction.is_some(),
                lease = settings.lease.is_some(),
                "watching Kubernetes"
            );
            tracker.spawn(kubernetes::run(
                settings,
                client,
                state,
                metrics,
                remediation,
                tracker.clone(),
                cancel,
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch Kubernetes: the Kubernetes checks fail; database polling is unaffected");
            state.publish_kubernetes(kubernetes::unreachable_status(&settings, &e.to_string()));
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop dbwarden");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
