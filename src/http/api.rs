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
    let view = super::view::status(&app);
    let query_text = app.security.current().api_query_text;
    let mut body = serde_json::to_value(&view).unwrap_or_default();
    if q.snapshot
        && let Some(targets) = body["targets"].as_array_mut()
    {
        for (v, t) in targets.iter_mut().zip(&view.targets) {
            if t.kind == "neo4j" {
                v["neo4j_snapshot"] =
                    serde_json::to_value(t.neo4j_snapshot.as_deref()).unwrap_or_default();
                if !query_text {
                    redact_queries(&mut v["neo4j_snapshot"]["transactions"]);
                }
            } else {
                v["snapshot"] = serde_json::to_value(t.snapshot.as_deref()).unwrap_or_default();
                if !query_text {
                    redact_queries(&mut v["snapshot"]["sessions"]);
                }
            }
        }
    }
    Json(body).into_response()
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
    // The rule on query texts (server.api_query_text) is the view's, the
    // page's too.
    let records = super::view::recent_actions(&app, limit);
    Json(json!({"actions": records})).into_response()
}

/// Each element's `query`, redacted (unless `server.api_query_text`).
fn redact_queries(items: &mut serde_json::Value) {
    if let Some(items) = items.as_array_mut() {
        for item in items {
            if let Some(query) = item.get_mut("query") {
                redact(query);
            }
        }
    }
}

/// A query text with its literals replaced, as the audit's
/// `redact_queries` writes it: the shape of the query, not its data.
fn redact(query: &mut serde_json::Value) {
    if let Some(text) = query.as_str() {
        *query = crate::remediate::audit::redact_literals(text).into();
    }
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
    let Some(rem) = app.remediation.clone() else {
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
        app.metrics
            .record_rejection(auth::Rejection::BearerToken.as_str());
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
    match set_paused(&app, &rem, pause, body.by, body.reason, "the API") {
        Ok(info) => Json(json!({"paused": info})).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot persist the pause state: {e}"),
        ),
    }
}

/// Pauses or resumes remediation, logs who did it through `channel`, and
/// exports the new state. Shared by the API and the status page's forms.
pub(super) fn set_paused(
    app: &AppState,
    rem: &crate::remediate::Remediation,
    pause: bool,
    by: Option<String>,
    reason: Option<String>,
    channel: &str,
) -> std::io::Result<crate::remediate::pause::PauseInfo> {
    if pause {
        let by = by.unwrap_or_else(|| "api".into());
        let reason = reason.unwrap_or_else(|| format!("paused through {channel}"));
        tracing::warn!(by = %by, reason = %reason, "remediation paused through {channel}");
        rem.pause.pause(&by, &reason)?;
    } else {
        tracing::warn!(
            by = by.as_deref().unwrap_or("api"),
            "remediation resumed through {channel}"
        );
        rem.pause.resume()?;
    }
    let info = rem.pause.info();
    app.metrics.set_paused(info.paused);
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_texts_lose_their_literals() {
        let mut sessions = json!([
            {"pid": 1, "query": "ALTER ROLE app PASSWORD 'hunter2'"},
            {"pid": 2, "query": "SELECT * FROM t WHERE id = 42"},
            {"pid": 3}
        ]);
        redact_queries(&mut sessions);
        assert_eq!(sessions[0]["query"], "ALTER ROLE app PASSWORD ?");
        assert_eq!(sessions[1]["query"], "SELECT * FROM t WHERE id = ?");
        assert!(sessions[2].get("query").is_none());
        let mut transactions = json!([{"id": "neo4j-transaction-1", "query": "MATCH (u {token: 'abc'}) RETURN u"}, {"query": null}]);
        redact_queries(&mut transactions);
        assert_eq!(transactions[0]["query"], "MATCH (u {token: ?}) RETURN u");
        assert!(transactions[1]["query"].is_null());
    }
}
