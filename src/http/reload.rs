//! `POST /api/v1/reload`: re-read the configuration file and apply it in
//! place, as `SIGHUP` does, and answer what changed or why nothing did.
//! Behind the same bearer token as pause and resume.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{AppState, auth, error};

/// What a reload answers: what changed, or every reason nothing did.
pub type ReloadResult = Result<String, Vec<String>>;

/// A request for the daemon to reload; `reply` hears the result.
#[derive(Debug)]
pub struct ReloadRequest {
    /// What asked: `SIGHUP`, `the API`, `the file watcher`.
    pub by: &'static str,
    pub reply: Option<oneshot::Sender<ReloadResult>>,
}

/// Where reload requests go (the daemon's reload loop, one at a time, in order).
pub type Reloads = mpsc::Sender<ReloadRequest>;

pub(super) async fn reload(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let token = app
        .remediation
        .as_ref()
        .and_then(|r| r.settings().api_token.clone());
    let Some(token) = token else {
        return error(
            StatusCode::FORBIDDEN,
            "the reload API is disabled: it needs remediation.api_token_file or api_token_env (SIGHUP and --watch-config still reload)",
        );
    };
    if !auth::bearer_ok(&headers, &token) {
        app.metrics
            .record_rejection(auth::Rejection::BearerToken.as_str());
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let Some(reloads) = app.reloads.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "this dbwarden was started without a configuration file to reload",
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = ReloadRequest {
        by: "the API",
        reply: Some(reply),
    };
    if reloads.try_send(request).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many reloads are waiting: try again",
        );
    }
    match answer.await {
        Ok(Ok(changes)) => Json(json!({"reloaded": true, "changes": changes})).into_response(),
        Ok(Err(errors)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"reloaded": false, "errors": errors})),
        )
            .into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "dbwarden is shutting down"),
    }
}
