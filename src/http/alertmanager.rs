//! Alertmanager's webhook receiver.
//!
//! - `POST /api/v1/alertmanager` takes a webhook notification (payload
//!   version 4; unknown fields are ignored). For each alert that fires and
//!   names a watched `target` in its labels, the target's poll loop is woken:
//!   dbwarden polls and evaluates it at once. That only brings an
//!   evaluation forward; it never bypasses policy. Re-sends (repeat
//!   intervals, each peer of an HA pair) are recognised by fingerprint,
//!   `startsAt` and status, counted and not acted on again. Answers 202 with
//!   `{received, duplicates, woken, unknown_targets}`.
//! - `GET /api/v1/alertmanager` lists the alerts dbwarden believes firing
//!   ([`FiringAlerts`]).
//!
//! Both need `Authorization: Bearer <server.alertmanager_token>`; without a
//! configured token the receiver is disabled (403). Alertmanager retries on
//! 5xx only, so every mistake in a request is a 4xx: retrying cannot fix it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{AppState, auth, error};
use crate::state::alerts::{AlertReport, AlertStatus, FiringAlerts, Outcome, parse_rfc3339};

/// The webhook payload version this receiver understands.
pub const PAYLOAD_VERSION: &str = "4";

const DISABLED: &str = "the Alertmanager receiver is disabled: set server.alertmanager_token_file \
     or server.alertmanager_token_env to the bearer token Alertmanager sends \
     (http_config.authorization.credentials_file in its receiver)";

/// `POST /api/v1/alertmanager`.
pub(super) async fn receive(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = read_limited(body, super::BODY_LIMIT, DRAIN_LIMIT).await;
    let (response, counts) = handle(&app, &headers, body, SystemTime::now());
    app.metrics.record_alertmanager(
        response.status().as_u16(),
        counts.firing,
        counts.resolved,
        counts.duplicates,
    );
    response
}

/// `GET /api/v1/alertmanager`: the alerts dbwarden believes firing.
pub(super) async fn firing(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&app, &headers) {
        return refused;
    }
    Json(json!({"firing": app.alerts.firing(SystemTime::now())})).into_response()
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    firing: u64,
    resolved: u64,
    duplicates: u64,
}

/// The answer to a request without the right token, or `None` to go on.
fn refuse(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    let server = app.server();
    let Some(token) = server.alertmanager_token.as_ref() else {
        return Some(error(StatusCode::FORBIDDEN, DISABLED));
    };
    if !auth::bearer_ok(headers, token) {
        app.metrics
            .record_rejection(auth::Rejection::BearerToken.as_str());
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong bearer token"})),
            )
                .into_response(),
        );
    }
    None
}

/// An oversize body is still read (and dropped) up to this many bytes, so
/// the 413 reaches the client over a cleanly closed connection: closing a
/// socket with unread data resets it, and the client may lose the answer.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Why a request body could not be had.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads at most `limit` bytes of `body`; past that, drains up to `drain`
/// bytes and reports the body as too large.
async fn read_limited(mut body: Body, limit: usize, drain: usize) -> Result<Bytes, BodyError> {
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > drain {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if total > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(Bytes::from(buf))
    }
}

/// The answer, and what the accepted alerts were (zero when refused).
fn handle(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BodyError>,
    now: SystemTime,
) -> (Response, Counts) {
    let refused = |r: Response| (r, Counts::default());
    if let Some(r) = refuse(app, headers) {
        return refused(r);
    }
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return refused(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the notification is larger than {} bytes: lower max_alerts in the \
                     Alertmanager receiver's webhook_config",
                    super::BODY_LIMIT
                ),
            ));
        }
        Err(BodyError::Read(e)) => {
            return refused(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    let alerts = match parse(&body) {
        Ok(a) => a,
        Err(e) => return refused(error(StatusCode::BAD_REQUEST, e)),
    };
    let (summary, counts) = apply(
        &app.alerts,
        &alerts,
        |t| app.state.get(t).is_some(),
        |t| app.state.wake(t),
        now,
    );
    (
        (StatusCode::ACCEPTED, Json(summary)).into_response(),
        counts,
    )
}

/// One alert of a notification, as parsed.
#[derive(Debug, Clone, PartialEq)]
struct Alert {
    status: AlertStatus,
    labels: BTreeMap<String, String>,
    starts_at: String,
    ends_at: Option<String>,
    fingerprint: String,
}

/// Records every alert, wakes the targets of new firing alerts, and builds
/// the summary.
fn apply(
    firing: &FiringAlerts,
    alerts: &[Alert],
    watched: impl Fn(&str) -> bool,
    wake: impl Fn(&str) -> bool,
    now: SystemTime,
) -> (Value, Counts) {
    let mut counts = Counts::default();
    let mut woken: Vec<&str> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    for a in alerts {
        match a.status {
            AlertStatus::Firing => counts.firing += 1,
            AlertStatus::Resolved => counts.resolved += 1,
        }
        let alertname = a.labels.get("alertname").map(String::as_str);
        let target = a.labels.get("target").map(String::as_str);
        let known = target.filter(|t| watched(t));
        if let Some(t) = target.filter(|t| !watched(t))
            && !unknown.contains(&t)
        {
            unknown.push(t);
        }
        let report = AlertReport {
            status: a.status,
            fingerprint: &a.fingerprint,
            starts_at: &a.starts_at,
            ends_at: a.ends_at.as_deref().and_then(parse_rfc3339),
            alertname,
            target: known,
        };
        match firing.observe(&report, now) {
            Outcome::Duplicate => counts.duplicates += 1,
            Outcome::New => {
                if let (AlertStatus::Firing, Some(t)) = (a.status, known) {
                    if !woken.contains(&t) && wake(t) {
                        woken.push(t);
                    }
                    tracing::info!(
                        alertname = alertname.unwrap_or(""),
                        target = t,
                        "Alertmanager reports an alert firing: polling the target now"
                    );
                }
            }
        }
    }
    if !unknown.is_empty() {
        tracing::info!(targets = ?unknown, "Alertmanager alerts name targets dbwarden does not watch");
    }
    tracing::debug!(
        received = alerts.len(),
        duplicates = counts.duplicates,
        "Alertmanager notification accepted"
    );
    let summary = json!({
        "received": alerts.len(),
        "duplicates": counts.duplicates,
        "woken": woken,
        "unknown_targets": unknown,
    });
    (summary, counts)
}

// ------------------------------------------------------------------ parsing

/// Reads a webhook notification. Unknown fields are ignored; a mistake is
/// reported with its path (`alerts[0].labels.target`) and what was found.
fn parse(body: &[u8]) -> Result<Vec<Alert>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("malformed JSON: {e} (expected an Alertmanager webhook notification, version {PAYLOAD_VERSION})")
    })?;
    let root = object(&v, "the body")?;
    let version = string(required(root, "", "version")?, "version")?;
    if version != PAYLOAD_VERSION {
        return Err(format!(
            "unsupported webhook payload version {version:?}: dbwarden understands version {PAYLOAD_VERSION}"
        ));
    }
    let list = required(root, "", "alerts")?;
    let list = list
        .as_array()
        .ok_or_else(|| format!("alerts: expected an array, found {}", kind(list)))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| alert(a, &format!("alerts[{i}]")))
        .collect()
}

fn alert(v: &Value, path: &str) -> Result<Alert, String> {
    let o = object(v, path)?;
    let status_path = format!("{path}.status");
    let status = match string(required(o, path, "status")?, &status_path)? {
        "firing" => AlertStatus::Firing,
        "resolved" => AlertStatus::Resolved,
        other => {
            return Err(format!(
                "{status_path}: expected \"firing\" or \"resolved\", found {other:?}"
            ));
        }
    };
    let labels_path = format!("{path}.labels");
    let mut labels = BTreeMap::new();
    for (k, v) in object(required(o, path, "labels")?, &labels_path)? {
        labels.insert(
            k.clone(),
            string(v, &format!("{labels_path}.{k}"))?.to_string(),
        );
    }
    let starts_at = string(required(o, path, "startsAt")?, &format!("{path}.startsAt"))?;
    let ends_at = match o.get("endsAt") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, &format!("{path}.endsAt"))?.to_string()),
    };
    // Alertmanager always sends one; without, the label set stands in.
    let fingerprint = match o.get("fingerprint") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, &format!("{path}.fingerprint"))?),
    };
    let fingerprint = match fingerprint.filter(|f| !f.is_empty()) {
        Some(f) => f.to_string(),
        None => serde_json::to_string(&labels).unwrap_or_default(),
    };
    Ok(Alert {
        status,
        labels,
        starts_at: starts_at.to_string(),
        ends_at,
        fingerprint,
    })
}

fn required<'a>(
    o: &'a serde_json::Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, String> {
    let full = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    o.get(key).ok_or_else(|| format!("{full}: missing"))
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: expected an object, found {}", kind(v)))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{path}: expected a string, found {}", kind(v)))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn payload(alerts: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "dbwarden", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "newField": {"x": [1, 2]},
            "alerts": alerts,
        }))
        .unwrap()
    }

    fn one(status: &str, target: &str, fp: &str) -> Value {
        json!({"status": status, "labels": {"alertname": "DbWardenIdleSessions", "target": target},
               "annotations": {"description": "d"}, "startsAt": "2026-08-23T10:02:00Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p", "fingerprint": fp})
    }

    #[test]
    fn parses_version_4_and_ignores_unknown_fields() {
        let a = parse(&payload(json!([
            one("firing", "main", "f1"),
            one("resolved", "x", "f2")
        ])))
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].status, AlertStatus::Firing);
        assert_eq!(a[0].labels["target"], "main");
        assert_eq!(a[0].fingerprint, "f1");
        assert_eq!(a[0].ends_at.as_deref(), Some("0001-01-01T00:00:00Z"));
        assert_eq!(a[1].status, AlertStatus::Resolved);
    }

    #[test]
    fn reports_mistakes_with_their_path() {
        let err = |body: &[u8]| parse(body).unwrap_err();
        assert!(
            err(b"{").starts_with("malformed JSON: EOF while parsing an object at line 1 column 1"),
            "{}",
            err(b"{")
        );
        assert_eq!(err(b"[]"), "the body: expected an object, found an array");
        assert_eq!(err(br#"{"alerts": []}"#), "version: missing");
        assert_eq!(
            err(br#"{"version": "3", "alerts": []}"#),
            "unsupported webhook payload version \"3\": dbwarden understands version 4"
        );
        assert_eq!(
            err(br#"{"version": 4, "alerts": []}"#),
            "version: expected a string, found number 4"
        );
        assert_eq!(err(br#"{"version": "4"}"#), "alerts: missing");
        let mut bad = one("firing", "main", "f1");
        bad["labels"]["target"] = json!(5);
        assert_eq!(
            err(&payload(json!([one("firing", "main", "f0"), bad]))),
            "alerts[1].labels.target: expected a string, found number 5"
        );
        let mut bad = one("pending", "main", "f1");
        assert_eq!(
            err(&payload(json!([bad.clone()]))),
            "alerts[0].status: expected \"firing\" or \"resolved\", found \"pending\""
        );
        bad["status"] = json!("firing");
        bad.as_object_mut().unwrap().remove("startsAt");
        assert_eq!(err(&payload(json!([bad]))), "alerts[0].startsAt: missing");
    }

    #[test]
    fn a_missing_fingerprint_falls_back_to_the_labels() {
        let mut a = one("firing", "main", "");
        a.as_object_mut().unwrap().remove("fingerprint");
        let parsed = parse(&payload(json!([a]))).unwrap();
        assert_eq!(
            parsed[0].fingerprint,
            r#"{"alertname":"DbWardenIdleSessions","target":"main"}"#
        );
    }

    #[test]
    fn wakes_watched_targets_of_new_firing_alerts_only() {
        let firing = FiringAlerts::new();
        let woken = RefCell::new(Vec::new());
        let watched = |t: &str| t == "main" || t == "standby";
        let wake = |t: &str| {
            woken.borrow_mut().push(t.to_string());
            true
        };
        let now = SystemTime::now();
        let alerts = parse(&payload(json!([
            one("firing", "main", "f1"),
            one("firing", "main", "f2"),
            one("resolved", "standby", "f3"),
            one("firing", "elsewhere", "f4"),
            {"status": "firing", "labels": {"alertname": "Other"}, "startsAt": "2026-08-23T10:02:00Z", "fingerprint": "f5"},
        ])))
        .unwrap();
        let (summary, counts) = apply(&firing, &alerts, watched, wake, now);
        assert_eq!(
            summary,
            json!({"received": 5, "duplicates": 0, "woken": ["main"], "unknown_targets": ["elsewhere"]})
        );
        assert_eq!(
            (counts.firing, counts.resolved, counts.duplicates),
            (4, 1, 0)
        );
        assert_eq!(*woken.borrow(), vec!["main"]);
        assert!(firing.is_firing("DbWardenIdleSessions", "main", now));
        assert!(!firing.is_firing("DbWardenIdleSessions", "elsewhere", now));

        // The same notification again: all duplicates, nothing woken.
        let (summary, counts) = apply(&firing, &alerts, watched, wake, now);
        assert_eq!(summary["duplicates"], 5);
        assert_eq!(summary["woken"], json!([]));
        assert_eq!(counts.duplicates, 5);
        assert_eq!(woken.borrow().len(), 1);
    }
}
