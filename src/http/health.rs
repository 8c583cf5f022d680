//! Health endpoints for load balancers and connection poolers, in the
//! manner of Patroni's (`docs/routing.md`):
//!
//! - `GET /health/<target>/primary`: 200 when the target is a primary.
//! - `GET /health/<target>/replica[?max_lag=5s]`: 200 when it is a standby
//!   no further behind than `max_lag` (default: the target's
//!   `replication_lag` threshold).
//! - `GET /health/<target>/read-only[?max_lag=5s]`: 200 when it can serve
//!   reads: a primary, or a standby that `/replica` would pass.
//!
//! Anything else, including a target that is down, never polled or whose
//! latest snapshot is stale, answers 503; the JSON body says why. Every
//! answer comes from the latest published snapshot ([`decide`], pure, time
//! as an argument): a health check never touches a database, so a load
//! balancer probing every second costs the server nothing. Like `/livez`
//! and `/readyz` these endpoints are open (HAProxy sends no credentials);
//! they tell a target's role, lag and freshness, and nothing else.

use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use super::AppState;
use crate::evaluate::{CheckId, standby_lag_seconds};
use crate::observe::Role;
use crate::state::TargetStatus;

/// A snapshot older than this many poll intervals, plus the poll timeout, is
/// stale: polls come every interval and each takes at most the poll timeout,
/// so a healthy loop always has a younger one; the slack of a second
/// interval covers one poll finishing late without flapping.
pub const STALE_AFTER_INTERVALS: u32 = 2;

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Primary,
    Replica,
    ReadOnly,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Primary => "primary",
            Endpoint::Replica => "replica",
            Endpoint::ReadOnly => "read-only",
        }
    }
}

/// One answer: the status code follows `healthy`; the rest is the body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub target: String,
    pub endpoint: &'static str,
    pub healthy: bool,
    /// Why, in a sentence.
    pub reason: String,
    pub up: bool,
    /// `primary` or `standby`, from the latest snapshot (absent without one).
    pub role: Option<&'static str>,
    /// A standby's replay delay as `replication_lag` measures it.
    pub lag_seconds: Option<f64>,
    /// The limit applied (`replica`, `read-only`).
    pub max_lag_seconds: Option<f64>,
    pub replay_paused: Option<bool>,
    /// `pg_stat_wal_receiver.status` on a standby.
    pub wal_receiver: Option<String>,
    /// Seconds since the latest successful poll finished.
    pub snapshot_age_seconds: Option<f64>,
    pub max_snapshot_age_seconds: f64,
}

/// How old a target's latest snapshot may be before it is stale.
pub fn max_snapshot_age(status: &TargetStatus) -> Duration {
    let interval = Duration::from_secs_f64(status.poll_interval_seconds.max(0.0));
    let timeout = Duration::from_secs_f64(status.poll_timeout_seconds.max(0.0));
    interval * STALE_AFTER_INTERVALS + timeout
}

/// The target's `replication_lag` threshold as of its latest poll.
pub fn default_max_lag(status: &TargetStatus) -> Option<f64> {
    status
        .checks
        .iter()
        .find(|c| c.check == CheckId::ReplicationLag)
        .map(|c| c.threshold)
}

/// The answer of `endpoint` for a PostgreSQL target, from its published
/// status alone. `max_lag` (seconds) overrides the `replication_lag`
/// threshold. Pure: `now` is dbwarden's clock, compared with the time the
/// latest successful poll finished.
pub fn decide(
    endpoint: Endpoint,
    status: &TargetStatus,
    max_lag: Option<f64>,
    now: SystemTime,
) -> Health {
    let max_age = max_snapshot_age(status);
    let age = status
        .last_success_at
        .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO));
    let snapshot = status.snapshot.as_deref();
    let recovery = snapshot.and_then(|s| s.recovery.as_ref());
    let max_lag = match endpoint {
        Endpoint::Primary => None,
        Endpoint::Replica | Endpoint::ReadOnly => max_lag.or_else(|| default_max_lag(status)),
    };
    let mut h = Health {
        target: status.target.clone(),
        endpoint: endpoint.as_str(),
        healthy: false,
        reason: String::new(),
        up: status.up,
        role: snapshot.map(|s| s.server.role().as_str()),
        lag_seconds: snapshot.and_then(standby_lag_seconds),
        max_lag_seconds: max_lag,
        replay_paused: recovery.map(|r| r.replay_paused),
        wal_receiver: recovery.and_then(|r| r.receiver_status.clone()),
        snapshot_age_seconds: age.map(|a| a.as_secs_f64()),
        max_snapshot_age_seconds: max_age.as_secs_f64(),
    };
    let secs = |d: Duration| crate::evaluate::fmt_secs(d.as_secs_f64());
    let unhealthy = |mut h: Health, reason: String| {
        h.reason = reason;
        h
    };
    if status.polls_completed == 0 {
        return unhealthy(h, "not polled yet".into());
    }
    if !status.up {
        let kind = status
            .last_error
            .as_ref()
            .map_or("unknown", |e| e.kind.as_str());
        return unhealthy(h, format!("down: the latest poll failed ({kind})"));
    }
    let (Some(s), Some(age)) = (snapshot, age) else {
        return unhealthy(h, "no snapshot yet".into());
    };
    if age > max_age {
        return unhealthy(
            h,
            format!(
                "stale: the latest snapshot is {} old (more than {})",
                secs(age),
                secs(max_age)
            ),
        );
    }
    let role = s.server.role();
    let lag_ok = || -> Result<String, String> {
        let max = max_lag.ok_or("no max_lag and no replication_lag threshold")?;
        let paused = if recovery.is_some_and(|r| r.replay_paused) {
            " (replay paused)"
        } else {
            ""
        };
        match h.lag_seconds {
            Some(lag) if lag <= max => Ok(format!(
                "standby, replay delay {} within max_lag {}{paused}",
                crate::evaluate::fmt_secs(lag),
                crate::evaluate::fmt_secs(max)
            )),
            Some(lag) => Err(format!(
                "standby lagging: replay delay {} exceeds max_lag {}{paused}",
                crate::evaluate::fmt_secs(lag),
                crate::evaluate::fmt_secs(max)
            )),
            None => Err("standby whose replay delay is unknown (nothing replayed yet)".into()),
        }
    };
    let verdict = match (endpoint, role) {
        (Endpoint::Primary, Role::Primary) => Ok("primary".to_string()),
        (Endpoint::Primary, Role::Standby) => {
            Err("not a primary: the server is in recovery".into())
        }
        (Endpoint::Replica, Role::Primary) => Err("not a standby: the server is a primary".into()),
        (Endpoint::ReadOnly, Role::Primary) => Ok("primary: serves reads".to_string()),
        (Endpoint::Replica | Endpoint::ReadOnly, Role::Standby) => lag_ok(),
    };
    match verdict {
        Ok(reason) => {
            h.healthy = true;
            h.reason = reason;
            h
        }
        Err(reason) => unhealthy(h, reason),
    }
}

/// Reads the query string: only `max_lag`, a duration (`5s`, `500ms`,
/// `1m`) or a number of seconds. The message names the parameter.
pub fn parse_query(pairs: &[(String, String)]) -> Result<Option<f64>, String> {
    let mut max_lag = None;
    for (key, value) in pairs {
        if key != "max_lag" {
            return Err(format!(
                "unknown parameter {key:?}: the only parameter is max_lag (e.g. max_lag=5s)"
            ));
        }
        if max_lag.is_some() {
            return Err("max_lag is given more than once".into());
        }
        max_lag = Some(parse_max_lag(value)?);
    }
    Ok(max_lag)
}

fn parse_max_lag(value: &str) -> Result<f64, String> {
    let v = value.trim();
    let bad = || {
        format!(
            "invalid max_lag {value:?}: write a duration such as \"5s\" or \"500ms\", or a number of seconds"
        )
    };
    if let Ok(n) = v.parse::<f64>() {
        return if n.is_finite() && n >= 0.0 {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    humantime::parse_duration(v)
        .map(|d| d.as_secs_f64())
        .map_err(|_| bad())
}

async fn answer(
    app: AppState,
    target: String,
    endpoint: Endpoint,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let max_lag = match query
        .map_err(|e| format!("invalid query string: {e}"))
        .and_then(|Query(pairs)| parse_query(&pairs))
    {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e),
    };
    let Some(status) = app.state.get(&target) else {
        return super::error(StatusCode::NOT_FOUND, format!("no target named {target:?}"));
    };
    if status.kind != "postgres" {
        return super::error(
            StatusCode::NOT_FOUND,
            format!(
                "{target:?} is a {} target: health endpoints are for PostgreSQL targets",
                status.kind
            ),
        );
    }
    let h = decide(endpoint, &status, max_lag, SystemTime::now());
    let code = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

pub(super) async fn primary(
    State(app): State<AppState>,
    Path(target): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    answer(app, target, Endpoint::Primary, query).await
}

pub(super) async fn replica(
    State(app): State<AppState>,
    Path(target): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    answer(app, target, Endpoint::Replica, query).await
}

pub(super) async fn read_only(
    State(app): State<AppState>,
    Path(target): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    answer(app, target, Endpoint::ReadOnly, query).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::evaluate::{CheckResult, CheckStatus};
    use crate::observe::{
        Archiver, PgSnapshot, PollError, PollErrorKind, RecoveryStatus, ServerInfo,
    };

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: f64) -> SystemTime {
        let base = SystemTime::UNIX_EPOCH + T0;
        if secs >= 0.0 {
            base + Duration::from_secs_f64(secs)
        } else {
            base - Duration::from_secs_f64(-secs)
        }
    }

    fn snapshot(standby: Option<(Option<f64>, bool)>) -> PgSnapshot {
        PgSnapshot {
            server_now_us: 0,
            server: ServerInfo {
                version_num: 150000,
                version: "PostgreSQL 15".into(),
                max_connections: 100,
                superuser_reserved_connections: 3,
                in_recovery: standby.is_some(),
                data_checksums: true,
                database: "postgres".into(),
                system_identifier: None,
                wal_lsn: None,
            },
            sessions: vec![],
            standbys: vec![],
            slots: vec![],
            recovery: standby.map(|(delay, paused)| RecoveryStatus {
                receiver_status: Some("streaming".into()),
                replay_paused: paused,
                replay_delay_seconds: delay,
                replay_pending_bytes: Some(0.0),
                receive_lsn: None,
                replay_lsn: None,
            }),
            databases: vec![],
            archiver: Archiver::default(),
            invalid_indexes: 0,
            disks: vec![],
            statistics: None,
        }
    }

    /// A target polled every second (timeout 1s: stale after 3s), last
    /// successful at t=0, with a `replication_lag` threshold of 5s.
    fn status(standby: Option<(Option<f64>, bool)>) -> TargetStatus {
        let mut s = TargetStatus::new("pg", "postgres");
        s.up = true;
        s.polls_completed = 7;
        s.last_poll_at = Some(at(0.0));
        s.last_success_at = Some(at(0.0));
        s.poll_interval_seconds = 1.0;
        s.poll_timeout_seconds = 1.0;
        s.snapshot = Some(Arc::new(snapshot(standby)));
        s.checks = vec![CheckResult {
            check: CheckId::ReplicationLag,
            status: CheckStatus::Pass,
            value: Some(0.0),
            threshold: 5.0,
            for_seconds: 0.0,
            held_seconds: 0.0,
            detail: String::new(),
            excluded: None,
        }];
        s
    }

    fn code(e: Endpoint, s: &TargetStatus, max_lag: Option<f64>, now: f64) -> (bool, String) {
        let h = decide(e, s, max_lag, at(now));
        (h.healthy, h.reason)
    }

    #[test]
    fn a_primary_is_primary_and_read_only_never_replica() {
        let p = status(None);
        assert_eq!(
            code(Endpoint::Primary, &p, None, 0.5),
            (true, "primary".into())
        );
        assert!(code(Endpoint::ReadOnly, &p, None, 0.5).0);
        let (ok, why) = code(Endpoint::Replica, &p, None, 0.5);
        assert!(!ok);
        assert!(why.contains("is a primary"), "{why}");
        let h = decide(Endpoint::Primary, &p, Some(1.0), at(0.5));
        assert_eq!(h.role, Some("primary"));
        assert_eq!(h.max_lag_seconds, None, "max_lag means nothing to /primary");
    }

    #[test]
    fn a_standby_within_the_threshold_is_replica_and_read_only() {
        let s = status(Some((Some(2.0), false)));
        let (ok, why) = code(Endpoint::Replica, &s, None, 0.5);
        assert!(ok, "{why}");
        assert!(why.contains("2s within max_lag 5s"), "{why}");
        assert!(code(Endpoint::ReadOnly, &s, None, 0.5).0);
        let (ok, why) = code(Endpoint::Primary, &s, None, 0.5);
        assert!(!ok);
        assert!(why.contains("in recovery"), "{why}");
        // A tighter max_lag in the query wins over the threshold.
        let (ok, why) = code(Endpoint::Replica, &s, Some(1.0), 0.5);
        assert!(!ok);
        assert!(why.contains("exceeds max_lag 1s"), "{why}");
        assert!(!code(Endpoint::ReadOnly, &s, Some(1.0), 0.5).0);
        let h = decide(Endpoint::Replica, &s, Some(1.0), at(0.5));
        assert_eq!(
            (h.lag_seconds, h.max_lag_seconds, h.replay_paused),
            (Some(2.0), Some(1.0), Some(false))
        );
        assert_eq!(h.wal_receiver.as_deref(), Some("streaming"));
    }

    #[test]
    fn paused_replay_is_lag_only_when_wal_waits() {
        // Paused, but everything received is replayed: no lag (the measure says 0).
        let idle = status(Some((Some(0.0), true)));
        let (ok, why) = code(Endpoint::Replica, &idle, None, 0.5);
        assert!(ok, "{why}");
        assert!(why.contains("replay paused"), "{why}");
        // Paused behind WAL: the age of the last replayed transaction.
        let behind = status(Some((Some(42.0), true)));
        let (ok, why) = code(Endpoint::Replica, &behind, None, 0.5);
        assert!(!ok);
        assert!(
            why.contains("42s exceeds max_lag 5s (replay paused)"),
            "{why}"
        );
        // Nothing replayed yet: unknown is not healthy.
        let unknown = status(Some((None, false)));
        let (ok, why) = code(Endpoint::Replica, &unknown, None, 0.5);
        assert!(!ok);
        assert!(why.contains("unknown"), "{why}");
    }

    #[test]
    fn down_never_polled_and_stale_are_unhealthy_on_every_endpoint() {
        let mut down = status(None);
        down.up = false;
        down.last_error = Some(PollError {
            kind: PollErrorKind::Connect,
            message: "connection refused to secret-host".into(),
        });
        let mut never = TargetStatus::new("pg", "postgres");
        never.poll_interval_seconds = 1.0;
        let fresh = status(None);
        for e in [Endpoint::Primary, Endpoint::Replica, Endpoint::ReadOnly] {
            let (ok, why) = code(e, &down, None, 0.5);
            assert!(!ok);
            assert_eq!(why, "down: the latest poll failed (connect)");
            assert!(!why.contains("secret-host"), "no error message leaks");
            assert_eq!(code(e, &never, None, 0.5), (false, "not polled yet".into()));
        }
        // Stale after 2 intervals + the timeout: 3s.
        assert!(code(Endpoint::Primary, &fresh, None, 3.0).0);
        let (ok, why) = code(Endpoint::Primary, &fresh, None, 3.5);
        assert!(!ok);
        assert!(
            why.contains("stale: the latest snapshot is 3.5s old (more than 3s)"),
            "{why}"
        );
        // A clock that stepped back reads as age 0, not as an error.
        assert!(code(Endpoint::Primary, &fresh, None, -10.0).0);
    }

    #[test]
    fn the_query_takes_only_max_lag() {
        let q = |pairs: &[(&str, &str)]| {
            parse_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(q(&[]), Ok(None));
        assert_eq!(q(&[("max_lag", "5s")]), Ok(Some(5.0)));
        assert_eq!(q(&[("max_lag", "500ms")]), Ok(Some(0.5)));
        assert_eq!(q(&[("max_lag", "1m")]), Ok(Some(60.0)));
        assert_eq!(q(&[("max_lag", "2.5")]), Ok(Some(2.5)));
        assert_eq!(q(&[("max_lag", "0")]), Ok(Some(0.0)));
        for bad in ["", "-1", "five", "NaN", "inf", "5 parsecs"] {
            let e = q(&[("max_lag", bad)]).unwrap_err();
            assert!(e.starts_with("invalid max_lag"), "{bad}: {e}");
        }
        let e = q(&[("lag", "5s")]).unwrap_err();
        assert!(
            e.contains("unknown parameter \"lag\"") && e.contains("max_lag"),
            "{e}"
        );
        let e = q(&[("max_lag", "1s"), ("max_lag", "2s")]).unwrap_err();
        assert!(e.contains("max_lag is given more than once"), "{e}");
    }

    fn arb_status() -> impl Strategy<Value = TargetStatus> {
        (
            any::<bool>(),                                                             // up
            0u64..3, // polls completed
            proptest::option::of((proptest::option::of(0.0f64..20.0), any::<bool>())), // standby
            proptest::option::of(0.0f64..10.0), // threshold
        )
            .prop_map(|(up, polls, standby, threshold)| {
                let mut s = status(standby);
                s.up = up;
                s.polls_completed = polls;
                match threshold {
                    Some(t) => s.checks[0].threshold = t,
                    None => s.checks.clear(),
                }
                s
            })
    }

    proptest! {
        #[test]
        fn healthy_only_when_fresh_up_and_in_the_right_role(
            s in arb_status(),
            max_lag in proptest::option::of(0.0f64..20.0),
            now in -1.0f64..6.0,
        ) {
            let snap = s.snapshot.clone().unwrap();
            let role = snap.server.role();
            let fresh = s.up && s.polls_completed > 0 && now <= 3.0;
            let limit = max_lag.or_else(|| default_max_lag(&s));
            let lag = standby_lag_seconds(&snap);
            let within = matches!((lag, limit), (Some(l), Some(m)) if l <= m);
            let p = decide(Endpoint::Primary, &s, max_lag, at(now));
            let r = decide(Endpoint::Replica, &s, max_lag, at(now));
            let ro = decide(Endpoint::ReadOnly, &s, max_lag, at(now));
            prop_assert_eq!(p.healthy, fresh && role == Role::Primary);
            prop_assert_eq!(r.healthy, fresh && role == Role::Standby && within);
            // read-only is exactly "primary or a replica in bounds".
            prop_assert_eq!(ro.healthy, p.healthy || r.healthy);
            // Never both a primary and a replica.
            prop_assert!(!(p.healthy && r.healthy));
            for h in [&p, &r, &ro] {
                prop_assert!(!h.reason.is_empty());
                prop_assert_eq!(h.target.as_str(), "pg");
            }
            // A looser max_lag never turns a healthy replica unhealthy.
            if let (true, Some(m)) = (r.healthy, limit) {
                prop_assert!(decide(Endpoint::Replica, &s, Some(m + 1.0), at(now)).healthy);
            }
        }
    }
}
