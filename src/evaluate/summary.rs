//! Aggregates of a snapshot that metrics and the status API export, computed
//! once per poll (never per scrape). Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::observe::{PgSnapshot, SessionState};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PgSummary {
    /// Client backends by state (every state present, zero included).
    pub sessions_by_state: BTreeMap<&'static str, u64>,
    /// All backends by `backend_type`.
    pub backends_by_type: BTreeMap<Arc<str>, u64>,
    pub connections_used: u64,
    pub connections_usable: u64,
    pub longest_active_query_seconds: f64,
    pub longest_transaction_seconds: f64,
    pub longest_idle_in_transaction_seconds: f64,
    pub longest_idle_seconds: f64,
    /// Sessions waiting on a lock.
    pub lock_waiters: u64,
    /// Distinct sessions others wait on.
    pub lock_blockers: u64,
    /// Worst `age(datfrozenxid)` over 2^31.
    pub wraparound_ratio: f64,
}

pub fn summarize(s: &PgSnapshot) -> PgSummary {
    let mut sum = PgSummary::default();
    for st in SessionState::ALL {
        sum.sessions_by_state.insert(st.as_str(), 0);
    }
    let mut blockers = std::collections::BTreeSet::new();
    for x in &s.sessions {
        *sum.backends_by_type
            .entry(x.backend_type.clone())
            .or_default() += 1;
        if x.waits_on_lock() {
            sum.lock_waiters += 1;
            blockers.extend(x.blocked_by.iter().copied());
        }
        if !x.is_client_backend() {
            continue;
        }
        *sum.sessions_by_state.entry(x.state.as_str()).or_default() += 1;
        if x.is_self {
            continue;
        }
        let max = |acc: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *acc = acc.max(v);
            }
        };
        max(
            &mut sum.longest_transaction_seconds,
            s.age_seconds(x.xact_start_us),
        );
        match x.state {
            SessionState::Active => max(
                &mut sum.longest_active_query_seconds,
                s.age_seconds(x.query_start_us),
            ),
            SessionState::Idle => max(
                &mut sum.longest_idle_seconds,
                s.age_seconds(x.state_change_us),
            ),
            SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted => max(
                &mut sum.longest_idle_in_transaction_seconds,
                s.age_seconds(x.state_change_us),
            ),
            _ => {}
        }
    }
    sum.lock_blockers = blockers.len() as u64;
    sum.connections_used = s.connections_used() as u64;
    sum.connections_usable = s.server.usable_connections() as u64;
    sum.wraparound_ratio =
        s.databases.iter().map(|d| d.xid_age).max().unwrap_or(0) as f64 / crate::observe::XID_WRAP;
    sum
}
