//! The HTTP surface. Every handler reads the latest published state: none
//! waits on a poll or touches a database.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::daemon::state::SharedState;
use crate::telemetry::metrics::{CONTENT_TYPE, Metrics};

#[derive(Clone)]
pub struct AppState {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .fallback(not_found)
        .with_state(app)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(app): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], app.metrics.render()).into_response()
}

/// Alive means the process answers; it never depends on a database, so an
/// outage of the watched servers cannot turn into a restart loop.
async fn livez() -> &'static str {
    "ok\n"
}

/// Ready once every target has finished a poll, successful or not.
async fn readyz(State(app): State<AppState>) -> Response {
    let targets: Vec<_> = app
        .state
        .all()
        .iter()
        .map(|t| json!({"target": t.target, "polled": t.polls_completed > 0, "up": t.up}))
        .collect();
    let ready = app.state.all_polled();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": ready, "targets": targets}))).into_response()
}

async fn status(State(app): State<AppState>) -> Response {
    let targets: Vec<_> = app.state.all().iter().map(|t| t.as_ref().clone()).collect();
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "targets": targets})).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such endpoint"})),
    )
        .into_response()
}
