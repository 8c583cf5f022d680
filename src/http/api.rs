//! The JSON API: status, recent remediation decisions, and the kill switch.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, auth, error};
use crate::remediate::Recorder;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusQuery {
    /// Include each target's latest snapshot (sessions and all), e.g. to save it for `dbwarden replay`.
    #[serde(default)]
    snapshot: bool,
}

pub(super) async fn status(
    State(app): State<AppState>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "unknown query parameter: the only one is snapshot=true|false",
        );
    };
    let targets: Vec<_> = app
        .state
        .all()
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t.as_ref()).unwrap_or_default();
            if q.snapshot {
                if t.kind == "neo4j" {
                    v["neo4j_snapshot"] =
                        serde_json::to_value(t.neo4j_snapshot.as_deref()).unwrap_or_default();
                } else {
                    v["snapshot"] = serde_json::to_value(t.snapshot.as_deref()).unwrap_or_default();
                }
            }
            v
        })
        .collect();
    let remediation = app.remediation.as_ref().map(|r| {
        let settings = r.settings();
        json!({
            "mode": settings.mode,
            "paused": r.pause.info(),
            "policies": settings.policies.keys().cloned().collect::<Vec<_>>(),
            "neo4j_policies": settings.neo4j_policies.keys().cloned().collect::<Vec<_>>(),
        })
    });
    // The Kubernetes loop's latest status (pods, StatefulSets, volumes,
    // checks, the Lease, the latest eviction round): memory only.
    let kubernetes = app
        .state
        .kubernetes()
        .map(|k| serde_json::to_value(k.as_ref()).unwrap_or_default());
    // Every backup location's latest observation and checks.
    let backups: Vec<serde_json::Value> = app
        .state
        .backups()
        .iter()
        .map(|b| serde_json::to_value(b.as_ref()).unwrap_or_default())
        .collect();
    // The process itself: its live tasks (a leak shows here first).
    let runtime = json!({"tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks()});
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "targets": targets, "remediation": remediation, "kubernetes": kubernetes, "backups": backups, "runtime": runtime})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionsQuery {
    limit: Option<usize>,
}

/// Recent remediation decisions, newest first.
pub(super) async fn actions(
    State(app): State<AppState>,
    q: Result<Query<ActionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad query: the only parameter is limit=<1..1000>",
        );
    };
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, crate::remediate::audit::RECENT_CAPACITY);
    let records = app
        .remediation
        .as_ref()
        .and_then(|r| r.audit.as_ref())
        .map(|a| a.recent(limit))
        .unwrap_or_default();
    Json(json!({"actions": records})).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    /// Who pauses (free text, recorded).
    by: Option<String>,
    reason: Option<String>,
}

pub(super) async fn pause(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    switch(app, headers, body, true).await
}

pub(super) async fn resume(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    switch(app, headers, body, false).await
}

async fn switch(
    app: AppState,
    headers: HeaderMap,
    body: axum::body::Bytes,
    pause: bool,
) -> Response {
    let Some(rem) = app.remediation else {
        return error(StatusCode::NOT_FOUND, "remediation is not configured");
    };
    let settings = rem.settings();
    let Some(token) = settings.api_token.as_ref() else {
        return error(
            StatusCode::FORBIDDEN,
            "the pause API is disabled: set remediation.api_token_file or api_token_env (the sentinel file still works)",
        );
    };
    if !auth::bearer_ok(&headers, token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let body: PauseBody = if body.is_empty() {
        PauseBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid JSON body: {e} (expected {{\"by\": ..., \"reason\": ...}})"),
                );
            }
        }
    };
    let result = if pause {
        let by = body.by.unwrap_or_else(|| "api".into());
        let reason = body
            .reason
            .unwrap_or_else(|| "paused through the API".into());
        tracing::warn!(by = %by, reason = %reason, "remediation paused through the API");
        rem.pause.pause(&by, &reason)
    } else {
        tracing::warn!(
            by = body.by.as_deref().unwrap_or("api"),
            "remediation resumed through the API"
        );
        rem.pause.resume()
    };
    if let Err(e) = result {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot persist the pause state: {e}"),
        );
    }
    let info = rem.pause.info();
    app.metrics.set_paused(info.paused);
    Json(json!({"paused": info})).into_response()
}
