//! The checks over sessions (`long_running_query`, `idle_session`,
//! `idle_in_transaction`), scoped as policies are. Pure.
//!
//! Each considers the client sessions in its states but dbwarden's own.
//! Of those, the ones the check's scope leaves out are counted by the key
//! that did ([`Exclusion`]) and not judged. Each remaining session is
//! judged against the limit of the first exception, most specific first,
//! whose lists take it, else the check's `max`. The check reports the
//! session nearest its limit (the largest ratio of its age to its limit):
//! its age is the value, its limit the threshold, so that the value
//! exceeds the threshold exactly when the check's condition holds.

use std::collections::BTreeMap;

use super::checks::fmt_secs;
use super::scope::Exclusion;
use super::thresholds::SessionCheck;
use super::{CheckId, Measurement, Thresholds};
use crate::observe::{PgSnapshot, Session, SessionState};

/// A session check's measurement, with what only session checks have.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMeasurement {
    pub measurement: Measurement,
    /// The limit of the session reported (the check's `max` when none is).
    pub threshold: f64,
    /// With a scope that sets a list: the sessions left out, by reason.
    pub excluded: Option<BTreeMap<Exclusion, u64>>,
}

/// What a check over sessions looks at: the states, the timestamp its
/// age runs from, and how its detail names a session.
pub(super) struct Kind {
    states: &'static [(SessionState, &'static str)],
    since: fn(&Session) -> Option<i64>,
}

pub(super) const LONG_RUNNING: Kind = Kind {
    states: &[(SessionState::Active, "active query running")],
    since: |s| s.query_start_us,
};
pub(super) const IDLE: Kind = Kind {
    states: &[(SessionState::Idle, "session idle")],
    since: |s| s.state_change_us,
};
pub(super) const IDLE_IN_TRANSACTION: Kind = Kind {
    states: &[
        (
            SessionState::IdleInTransaction,
            "session idle in transaction",
        ),
        (
            SessionState::IdleInTransactionAborted,
            "session idle in an aborted transaction",
        ),
    ],
    since: |s| s.state_change_us,
};

/// Measures a check over sessions; `None` for the other checks.
pub fn measure_sessions(
    check: CheckId,
    s: &PgSnapshot,
    t: &Thresholds,
) -> Option<SessionMeasurement> {
    let (kind, settings) = match check {
        CheckId::LongRunningQuery => (&LONG_RUNNING, &t.long_running_query),
        CheckId::IdleSession => (&IDLE, &t.idle_session),
        CheckId::IdleInTransaction => (&IDLE_IN_TRANSACTION, &t.idle_in_transaction),
        _ => return None,
    };
    Some(measure(kind, s, settings))
}

/// The session judged worst so far.
struct Worst<'a> {
    session: &'a Session,
    what: &'static str,
    age: f64,
    limit: f64,
    exception: Option<&'a str>,
}

impl Worst<'_> {
    fn ratio(&self) -> f64 {
        if self.limit > 0.0 {
            self.age / self.limit
        } else {
            f64::INFINITY
        }
    }
}

pub(super) fn measure(kind: &Kind, s: &PgSnapshot, c: &SessionCheck) -> SessionMeasurement {
    let scope = c.scope();
    let keys = scope.keys_set();
    let scoped = !keys.is_empty();
    let exceptions = c.exceptions_in_order();
    let own_max = c.max.as_secs_f64();
    // Every key the scope sets, so that one that leaves none out shows 0.
    let mut excluded: BTreeMap<Exclusion, u64> = keys.into_iter().map(|k| (k, 0)).collect();
    let mut worst: Option<Worst> = None;
    for x in s
        .sessions
        .iter()
        .filter(|x| x.is_client_backend() && !x.is_self)
    {
        let Some(&(_, what)) = kind.states.iter().find(|(st, _)| *st == x.state) else {
            continue;
        };
        if let Some(why) = scope.excludes(x) {
            *excluded.entry(why).or_default() += 1;
            continue;
        }
        let Some(age) = s.age_seconds((kind.since)(x)) else {
            continue;
        };
        let (limit, exception) = exceptions
            .iter()
            .find(|(_, e)| e.scope().excludes(x).is_none())
            .map_or((own_max, None), |(name, e)| {
                (e.max.as_secs_f64(), Some(*name))
            });
        let this = Worst {
            session: x,
            what,
            age,
            limit,
            exception,
        };
        // Nearest its limit first; then the oldest; then the lowest pid,
        // so that the report does not depend on the snapshot's order.
        let better = worst.as_ref().is_none_or(|w| {
            this.ratio()
                .total_cmp(&w.ratio())
                .then(this.age.total_cmp(&w.age))
                .then(w.session.pid.cmp(&this.session.pid))
                .is_gt()
        });
        if better {
            worst = Some(this);
        }
    }
    let (measurement, threshold) = match worst {
        None => {
            let what = kind.states[0].1;
            (
                Measurement {
                    value: 0.0,
                    violated: false,
                    detail: format!("no {what}"),
                },
                own_max,
            )
        }
        Some(w) => (
            Measurement {
                value: w.age,
                violated: w.age > w.limit,
                detail: format!(
                    "{} {} {} (pid {}, user {:?}, application {:?}), threshold {}{}",
                    if exceptions.is_empty() {
                        "longest"
                    } else {
                        "nearest its limit:"
                    },
                    w.what,
                    fmt_secs(w.age),
                    w.session.pid,
                    w.session.user.as_deref().unwrap_or(""),
                    w.session.application_name,
                    fmt_secs(w.limit),
                    w.exception
                        .map(|n| format!(" (exception {n})"))
                        .unwrap_or_default(),
                ),
            },
            w.limit,
        ),
    };
    SessionMeasurement {
        measurement,
        threshold,
        excluded: scoped.then_some(excluded),
    }
}
