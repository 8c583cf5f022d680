//! The HTTP surface. Every handler reads the latest published state: none
//! waits on a poll or touches a database.
//!
//! - `GET /`: the status page for people ([`ui`]), with pause and resume
//!   forms behind the API token.
//! - `GET /metrics`, `/livez`, `/readyz`: for Prometheus and Kubernetes.
//! - `GET /api/v1/status`, `/api/v1/actions`: read-only JSON ([`api`]).
//! - `POST /api/v1/pause`, `/api/v1/resume`: the remediation kill switch,
//!   behind a bearer token ([`auth`]).
//! - `POST /api/v1/alertmanager`: Alertmanager's webhook receiver, behind
//!   its own bearer token; `GET` lists the alerts it reports firing ([`alertmanager`]).

mod alertmanager;
mod api;
pub mod auth;
mod reload;
mod settings;
mod ui;
mod view;

pub use reload::{ReloadRequest, ReloadResult, Reloads};
pub use settings::{DEFAULT_LISTEN, DEFAULT_RUNBOOK_URL, ServerSettings};
pub use ui::CHECK_ALERTS;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::remediate::Remediation;
use crate::state::SharedState;
use crate::telemetry::metrics::{CONTENT_TYPE, Metrics};

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    /// Present when remediation is configured.
    pub remediation: Option<Arc<Remediation>>,
    /// `[server]` as in force now: a reload may change all of it but the
    /// listen address (the Alertmanager receiver's token, the runbook URL).
    pub server: Arc<std::sync::RwLock<Arc<ServerSettings>>>,
    /// Where `POST /api/v1/reload` sends its request; `None` without a
    /// configuration file to reload.
    pub reloads: Option<Reloads>,
    /// The alerts Alertmanager reports firing, and its dedupe memory.
    pub alerts: Arc<crate::state::alerts::FiringAlerts>,
}

impl AppState {
    /// The `[server]` settings in force now.
    pub fn server(&self) -> Arc<ServerSettings> {
        self.server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/pause", get(ui::pause_form).post(ui::pause))
        .route("/ui/resume", get(ui::resume_form).post(ui::resume))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/actions", get(api::actions))
        .route("/api/v1/pause", post(api::pause))
        .route("/api/v1/resume", post(api::resume))
        .route("/api/v1/reload", post(reload::reload))
        .route(
            "/api/v1/alertmanager",
            post(alertmanager::receive).get(alertmanager::firing),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A JSON error body: `{"error": "..."}`.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}
