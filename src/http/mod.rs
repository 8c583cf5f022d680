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
use bytes::Bytes;
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
///
/// The body is streamed: rendered piece by piece on a blocking thread (a
/// large fleet's body is megabytes, tens of milliseconds of CPU, off the
/// runtime's workers, which run the polls), gzipped as it goes, and sent in
/// chunks of [`SCRAPE_CHUNK`] bytes, so that a scrape holds a few chunks,
/// not the whole body and its compressed copy.
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
    let metrics = app.metrics.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let on_panic = tx.clone();
    let rendering = tokio::task::spawn_blocking(move || {
        let mut sink = Chunks::new(tx);
        let written = if gzip {
            let mut encoder = flate2::write::GzEncoder::new(&mut sink, flate2::Compression::fast());
            metrics
                .write_to(format, &mut encoder)
                .and_then(|()| encoder.finish().map(drop))
        } else {
            metrics.write_to(format, &mut sink)
        };
        if let Err(e) = written.and_then(|()| sink.flush_chunk()) {
            // The scraper hung up, or the body could not be rendered: the
            // client sees the response cut short, never a partial one as whole.
            tracing::debug!(error = %e, "a scrape was cut short");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = rendering.await {
            tracing::error!(error = %e, "rendering metrics failed");
            let _ = on_panic
                .send(Err(std::io::Error::other("rendering metrics failed")))
                .await;
        }
    });
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let mut response = (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept, Accept-Encoding"),
        ],
        body,
    )
        .into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// The size of the pieces a scrape's body is sent in.
const SCRAPE_CHUNK: usize = 64 * 1024;

/// A writer that sends what it is given as chunks of [`SCRAPE_CHUNK`]
/// bytes over a bounded channel (blocking while the client is slower than
/// the rendering); an error once the receiving side is gone.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn new(tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Self {
        Chunks {
            tx,
            buf: Vec::with_capacity(SCRAPE_CHUNK),
        }
    }

    /// Sends what is buffered.
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SCRAPE_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the scraper hung up"))
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = SCRAPE_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SCRAPE_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // A chunk goes out when full or at the end: flushing the encoder
        // (which `finish` does) must not send small pieces.
        Ok(())
    }
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
    use std::io::{Read, Write};

    use super::{Chunks, SCRAPE_CHUNK};

    /// A body of several chunks, gzipped through [`Chunks`] as a scrape
    /// does: full chunks, then the rest once; together, the whole body.
    #[test]
    fn a_scrape_is_sent_in_full_chunks_that_make_the_whole_body() {
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("dbwarden_sample{{target=\"t{i}\"}} {i}\n").into_bytes())
            .collect();
        for gzip in [false, true] {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let mut sink = Chunks::new(tx);
            if gzip {
                let mut encoder =
                    flate2::write::GzEncoder::new(&mut sink, flate2::Compression::fast());
                encoder.write_all(&body).unwrap();
                encoder.finish().unwrap();
            } else {
                sink.write_all(&body).unwrap();
            }
            sink.flush_chunk().unwrap();
            drop(sink);
            let mut chunks = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                chunks.push(chunk.expect("no error"));
            }
            assert!(chunks.len() > 1, "gzip {gzip}: {} chunks", chunks.len());
            let (last, full) = chunks.split_last().unwrap();
            assert!(full.iter().all(|c| c.len() == SCRAPE_CHUNK));
            assert!(!last.is_empty() && last.len() <= SCRAPE_CHUNK);
            let sent: Vec<u8> = chunks.concat();
            let plain = if gzip {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&sent[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                sent
            };
            assert!(plain == body, "gzip {gzip}: the body differs");
        }
    }

    /// A scraper that hung up stops the rendering: the next full chunk
    /// cannot be sent.
    #[test]
    fn a_scraper_that_hung_up_stops_the_rendering() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        drop(rx);
        let mut sink = Chunks::new(tx);
        let e = sink
            .write_all(&vec![b'x'; SCRAPE_CHUNK + 1])
            .expect_err("nobody receives");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }

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
