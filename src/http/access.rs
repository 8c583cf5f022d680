//! Who may see what. The web configuration in force ([`Access`], swapped
//! whole by a reload through [`Security`]) and the layers that apply it:
//!
//! - `/livez`, `/readyz`: open (the kubelet's probes); they tell up/down
//!   per target and nothing else.
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
        let web = server.web.clone().unwrap_or_default();
        let tls = match &web.tls {
            Some(t) => Some(TlsReloader::new(t.clone())?),
            None => None,
        };
        Ok(Access {
            basic: BasicAuth::new(web.users.clone()),
            tls,
            web,
            api_query_text: server.api_query_text,
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

/// The [`Access`] in force; a reload replaces it whole.
#[derive(Debug)]
pub struct Security {
    current: RwLock<Arc<Access>>,
}

impl Security {
    pub fn new(access: Access) -> Self {
        Security {
            current: RwLock::new(Arc::new(access)),
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

/// Adds the configured headers to every response.
pub(super) async fn headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
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
