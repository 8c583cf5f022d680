//! The HTTP surface. Every handler reads the latest published state: none
//! waits on a poll or touches a database.
//!
//! - `GET /`: the status page for people ([`ui`]), with pause and resume
//!   forms behind the API token.
//! - `GET /metrics`, `/livez`, `/readyz`: for Prometheus and Kubernetes.
//! - `GET /health/<target>/primary|replica|read-only`: for load balancers
//!   and connection poolers ([`health`]), open like the probes.
//! - `GET /api/v1/status`, `/api/v1/actions`: read-only JSON ([`api`]).
//! - `POST /api/v1/pause`, `/api/v1/resume`: the remediation kill switch,
//!   behind a bearer token ([`auth`]).
//! - `POST /api/v1/alertmanager`: Alertmanager's webhook receiver, behind
//!   its own bearer token; `GET` lists the alerts it reports firing ([`alertmanager`]).
//!
//! Who may see which is [`access`]'s; TLS, basic auth and headers come from
//! the exporter-toolkit web configuration file ([`web_config`], [`tls`]);
//! connections are accepted and bounded by [`server`].

pub mod access;
mod alertmanager;
mod api;
pub mod auth;
pub mod health;
mod reload;
pub mod server;
mod settings;
pub mod tls;
mod ui;
mod view;
pub mod web_config;

pub use access::{Access, Security};
pub use reload::{ReloadRequest, ReloadResult, Reloads};
pub use settings::{DEFAULT_LISTEN, DEFAULT_RUNBOOK_URL, ServerSettings};
pub use ui::{CHECK_ALERTS, PROBE_ALERTS};

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::remediate::Remediation;
use crate::state::SharedState;
use crate::telemetry::metrics::{Format, Metrics};

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
    /// The web configuration in force (TLS, users, headers) and
    /// `api_query_text`; a reload may replace it.
    pub security: Arc<Security>,
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
    let metrics_route = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state(app.clone(), access::metrics_auth));
    let api = Router::new()
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/actions", get(api::actions))
        // The status page shows what the API does: the same authentication.
        .route("/", get(ui::index))
        .route("/ui/pause", get(ui::pause_form).post(ui::pause))
        .route("/ui/resume", get(ui::resume_form).post(ui::resume))
        .route_layer(from_fn_with_state(app.clone(), access::api_auth));
    Router::new()
        .merge(metrics_route)
        .merge(api)
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        // Open like the probes: HAProxy and poolers send no credentials.
        .route(
            "/health/{target}/primary",
            get(health::primary).options(health::primary),
        )
        .route(
            "/health/{target}/replica",
            get(health::replica).options(health::replica),
        )
        .route(
            "/health/{target}/read-only",
            get(health::read_only).options(health::read_only),
        )
        .route("/api/v1/pause", post(api::pause))
        .route("/api/v1/resume", post(api::resume))
        .route("/api/v1/reload", post(reload::reload))
        .route(
            "/api/v1/alertmanager",
            post(alertmanager::receive).get(alertmanager::firing),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(app.clone(), access::headers))
        .with_state(app)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
/// Warns when it listens beyond the loopback interface without TLS or
/// without authentication.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let access = app.security.current();
    if !local.ip().is_loopback() {
        if access.tls.is_none() {
            tracing::warn!(listen = %local, "serving plain HTTP beyond the loopback interface: set server.web_config_file with tls_server_config (see docs/security.md)");
        }
        if !access.web.authentication() {
            tracing::warn!(listen = %local, "/metrics and /api/v1/status answer anyone who can connect: configure basic_auth_users or client certificates in server.web_config_file (see docs/security.md)");
        }
    }
    let router = router(app.clone());
    server::serve(listener, app, router, shutdown).await
}

/// OpenMetrics when the client accepts it (Prometheus does), the text
/// format 0.0.4 otherwise; gzip when the client accepts it.
async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    // Rendering a large fleet's body (megabytes) and compressing it is CPU
    // work of tens of milliseconds: off the runtime's workers, which run the
    // polls, so that a scrape never delays a poll.
    let metrics = app.metrics.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let body = metrics.render_as(format);
        let compressed = gzip.then(|| gzip_body(&body)).flatten();
        (body, compressed)
    })
    .await;
    let (body, compressed) = match rendered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if let Some(compressed) = compressed {
        return (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "Accept, Accept-Encoding"),
            ],
            compressed,
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept, Accept-Encoding"),
        ],
        body,
    )
        .into_response()
}

/// The body gzipped at the fastest level (a scrape's text compresses about
/// tenfold at it; higher levels cost several times the CPU for a few percent).
fn gzip_body(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// Whether an `Accept-Encoding` value allows gzip (`gzip` or `*` with a
/// quality above zero).
fn accepts_gzip(value: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for part in value.split(',') {
        let mut fields = part.split(';');
        let coding = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = fields
            .filter_map(|f| f.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
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

#[cfg(test)]
mod tests {
    #[test]
    fn gzip_is_used_when_accepted() {
        use super::accepts_gzip;
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("*;q=0"));
        assert!(!accepts_gzip("gzip;q=0, *"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
    }
}
