//! Who may see what. The web configuration in force ([`Access`], swapped
//! whole by a reload through [`Security`]) and the layers that apply it:
//!
//! - `/livez`, `/readyz`: open (the kubelet's probes); they tell up/down
//!   per target and nothing else.
//! - `/health/<target>/primary|replica|read-only`: open too (HAProxy's and
//!   the poolers' checks send no credentials); they tell one target's role,
//!   replay delay and snapshot age, and nothing else (no error message).
//! - `/metrics`: the web configuration's basic auth, when it has users
//!   (client certificates are checked by the TLS handshake).
//! - `/api/v1/status`, `/api/v1/actions`: authentication whenever any is
//!   configured: basic auth when there are users, else a client
//!   certificate verified by the client CA.
//! - Operator endpoints (pause, resume, reload, the Alertmanager
//!   receiver): their own bearer tokens, as before.
//!
//! Every response carries the configured `http_server_config.headers`.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::AppState;
use super::auth::{BasicAuth, Rejection};
use super::server::Connection;
use super::settings::ServerSettings;
use super::tls::TlsReloader;
use super::web_config::WebConfig;

/// The web configuration in force and what it needs at run time.
#[derive(Debug)]
pub struct Access {
    pub web: WebConfig,
    /// Present when TLS is configured.
    pub tls: Option<TlsReloader>,
    pub basic: BasicAuth,
    /// `server.api_query_text`: the API shows query texts unredacted.
    pub api_query_text: bool,
}

impl Access {
    /// Builds the access rules of `server` (reading its TLS files).
    pub fn new(server: &ServerSettings) -> Result<Access, String> {
        Self::build(
            server.web.clone().unwrap_or_default(),
            server.api_query_text,
        )
    }

    fn build(web: WebConfig, api_query_text: bool) -> Result<Access, String> {
        let tls = match &web.tls {
            Some(t) => Some(TlsReloader::new(t.clone())?),
            None => None,
        };
        Ok(Access {
            basic: BasicAuth::new(web.users.clone()),
            tls,
            web,
            api_query_text,
        })
    }

    /// Basic auth, when users are configured.
    async fn basic_auth(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        if self.basic.is_empty() {
            return Ok(());
        }
        self.basic.check(headers).await
    }

    /// Authentication of any configured kind: basic auth when users are
    /// configured, else a verified client certificate when certificates are
    /// verified, else none is needed.
    async fn any_auth(&self, headers: &HeaderMap, conn: Connection) -> Result<(), Rejection> {
        if !self.basic.is_empty() {
            return self.basic.check(headers).await;
        }
        if self.web.authentication() && !conn.verified_client_cert {
            return Err(Rejection::ClientCertificate);
        }
        Ok(())
    }
}

/// The [`Access`] in force; a reload replaces it whole, and so does a
/// change of the web configuration file itself.
#[derive(Debug)]
pub struct Security {
    current: RwLock<Arc<Access>>,
    /// The stamp of a changed web configuration file that did not load:
    /// not read again until it changes again.
    failed: std::sync::Mutex<Option<super::tls::Stamp>>,
}

impl Security {
    pub fn new(access: Access) -> Self {
        Security {
            current: RwLock::new(Arc::new(access)),
            failed: Default::default(),
        }
    }

    /// Looks at the web configuration file (one `stat`, at each new
    /// connection and each request) and, when it changed since it was read, reads it again
    /// and applies it, as exporter-toolkit does: users, headers and TLS
    /// settings change without a reload. A file that does not load keeps
    /// the configuration in force, with a warning (a reload reports it).
    pub fn refresh(&self) {
        let current = self.current();
        if current.web.path.as_os_str().is_empty() {
            return;
        }
        let now = super::tls::stamp(&current.web.path);
        if now == current.web.stamp {
            return;
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if *failed == Some(now) || self.current().web.stamp == now {
            return;
        }
        let loaded = super::web_config::load(&current.web.path)
            .map_err(|e| e.join("; "))
            .and_then(|web| Access::build(web, current.api_query_text));
        match loaded {
            Ok(access) => {
                tracing::info!(file = %current.web.path.display(), "the web configuration file changed: applied");
                self.replace(access);
                *failed = None;
            }
            Err(e) => {
                tracing::warn!(file = %current.web.path.display(), error = %e, "the web configuration file changed but does not load: the previous one stays in force");
                *failed = Some(now);
            }
        }
    }

    pub fn current(&self) -> Arc<Access> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn replace(&self, access: Access) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }
}

/// `/metrics`: the web configuration's basic auth.
pub(super) async fn metrics_auth(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let access = app.security.current();
    match access.basic_auth(req.headers()).await {
        Ok(()) => next.run(req).await,
        Err(r) => refuse(&app, r),
    }
}

/// The read-only API: any configured authentication.
pub(super) async fn api_auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let access = app.security.current();
    let conn = req
        .extensions()
        .get::<Connection>()
        .copied()
        .unwrap_or_default();
    match access.any_auth(req.headers(), conn).await {
        Ok(()) => next.run(req).await,
        Err(r) => refuse(&app, r),
    }
}

fn refuse(app: &AppState, reason: Rejection) -> Response {
    app.metrics.record_rejection(reason.as_str());
    let message = match reason {
        Rejection::ClientCertificate => {
            "a client certificate verified by the client CA is required"
        }
        _ => "authentication required",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            WWW_AUTHENTICATE,
            "Basic realm=\"dbwarden\", charset=\"UTF-8\"",
        )],
        Json(json!({"error": message})),
    )
        .into_response()
}

/// Applies a changed web configuration file (a keep-alive connection sees
/// it at its next request), and adds the configured headers to every
/// response. The outermost layer: it runs before the others.
pub(super) async fn headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    app.security.refresh();
    let access = app.security.current();
    let mut response = next.run(req).await;
    for (name, value) in &access.web.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}
