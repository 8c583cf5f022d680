//! The Neo4j checks and summary. Pure, like the rest of the core.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    CheckId, CheckResult, CountRange, HoldState, Limit, Measurement, Neo4jThresholds, down,
    fmt_secs, judge,
};
use crate::observe::neo4j::Neo4jSnapshot;

fn limit(check: CheckId, t: &Neo4jThresholds) -> Limit {
    let count = |c: &CountRange| Limit {
        // The bound a count is judged against first: the minimum (a
        // shrinking graph is the runbook's data-loss signal), else the maximum.
        value: c.min.or(c.max).map_or(0.0, |v| v as f64),
        hold: c.hold,
    };
    match check {
        CheckId::SlowQueries => t.slow_queries,
        CheckId::IndexesOnline => t.indexes_online,
        CheckId::DatabasesOnline => t.databases_online,
        CheckId::ClusterHealthy => t.cluster_healthy,
        CheckId::NodeCount => count(&t.node_count),
        CheckId::RelationshipCount => count(&t.relationship_count),
        _ => Limit {
            value: 1.0,
            hold: std::time::Duration::ZERO,
        },
    }
}

/// Every Neo4j check's limit.
pub fn neo4j_limits(t: &Neo4jThresholds) -> Vec<(CheckId, Limit)> {
    CheckId::NEO4J.iter().map(|c| (*c, limit(*c, t))).collect()
}

/// Measures one Neo4j check.
pub fn measure(check: CheckId, s: &Neo4jSnapshot, t: &Neo4jThresholds) -> Measurement {
    match check {
        CheckId::SlowQueries => {
            let max = t.slow_queries.value;
            let slow: Vec<_> = s
                .others()
                .filter(|x| x.elapsed_ms as f64 / 1000.0 > max)
                .collect();
            let longest = s.others().max_by_key(|x| x.elapsed_ms);
            let value = longest.map_or(0.0, |x| x.elapsed_ms.max(0) as f64 / 1000.0);
            let detail = match longest {
                None => "no transactions running".to_string(),
                Some(x) => format!(
                    "{} over {}; longest {} ({} by {} on {}), threshold {}",
                    slow.len(),
                    fmt_secs(max),
                    fmt_secs(value),
                    x.id,
                    if x.username.is_empty() {
                        "?"
                    } else {
                        &x.username
                    },
                    x.database,
                    fmt_secs(max)
                ),
            };
            Measurement {
                value,
                violated: value > max,
                detail,
            }
        }
        CheckId::IndexesOnline => {
            let bad: Vec<_> = s.indexes_not_online().collect();
            let detail = if bad.is_empty() {
                format!("all {} indexes ONLINE", s.indexes.len())
            } else {
                bad.iter()
                    .map(|i| match i.state.as_str() {
                        "POPULATING" => format!(
                            "{}.{} POPULATING ({:.1}%)",
                            i.database, i.name, i.population_percent
                        ),
                        other => format!(
                            "{}.{} {other}{}",
                            i.database,
                            i.name,
                            i.failure_message
                                .as_deref()
                                .map(|m| format!(": {}", first_line(m)))
                                .unwrap_or_default()
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Measurement {
                value: bad.len() as f64,
                violated: !bad.is_empty(),
                detail,
            }
        }
        CheckId::DatabasesOnline => {
            let bad: Vec<_> = s.databases_not_as_requested().collect();
            let detail = if s.databases.is_empty() {
                "database states need Neo4j 4.4 or later (SHOW DATABASES)".to_string()
            } else if bad.is_empty() {
                format!("{} databases as requested", s.databases.len())
            } else {
                bad.iter()
                    .map(|d| {
                        format!(
                            "{} is {} (requested {})",
                            d.name, d.current_status, d.requested_status
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Measurement {
                value: bad.len() as f64,
                violated: !bad.is_empty(),
                detail,
            }
        }
        CheckId::ClusterHealthy => match &s.cluster {
            None => Measurement {
                value: 0.0,
                violated: false,
                detail: "not clustered".into(),
            },
            Some(members) => {
                let bad: Vec<_> = members.iter().filter(|m| !m.healthy).collect();
                let detail = if bad.is_empty() {
                    format!("{} members healthy", members.len())
                } else {
                    bad.iter()
                        .map(|m| format!("{} ({}) {} {}", m.id, m.address, m.role, m.health))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                Measurement {
                    value: bad.len() as f64,
                    violated: !bad.is_empty(),
                    detail,
                }
            }
        },
        CheckId::NodeCount => count(s, &t.node_count, "nodes", |c| c.nodes),
        CheckId::RelationshipCount => count(s, &t.relationship_count, "relationships", |c| {
            c.relationships
        }),
        // Reaching here means the target answered: the connection check passes.
        _ => Measurement {
            value: 1.0,
            violated: false,
            detail: format!("connected to Neo4j {} {}", s.version, s.edition),
        },
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn count(
    s: &Neo4jSnapshot,
    range: &CountRange,
    what: &str,
    of: impl Fn(&crate::observe::neo4j::Neo4jCounts) -> i64,
) -> Measurement {
    let expectation = match (range.min, range.max) {
        (None, None) => "no expectation configured".to_string(),
        (Some(a), None) => format!("expected at least {a}"),
        (None, Some(b)) => format!("expected at most {b}"),
        (Some(a), Some(b)) => format!("expected {a} to {b}"),
    };
    let outside: Vec<_> = s
        .counts
        .iter()
        .filter(|c| !range.contains(of(c).max(0) as u64))
        .collect();
    // The value shown: the first database outside the range, else the first.
    let shown = outside.first().copied().or(s.counts.first());
    let value = shown.map_or(0.0, |c| of(c) as f64);
    let detail = s
        .counts
        .iter()
        .map(|c| format!("{}: {} {what}", c.database, of(c)))
        .collect::<Vec<_>>()
        .join(", ");
    Measurement {
        value,
        violated: !outside.is_empty(),
        detail: format!("{detail}; {expectation}"),
    }
}

/// Evaluates every Neo4j check on a fresh snapshot (see [`super::evaluate`]).
pub fn evaluate_neo4j(
    snapshot: &Neo4jSnapshot,
    thresholds: &Neo4jThresholds,
    hold: &HoldState,
    now_ms: u64,
) -> (Vec<CheckResult>, HoldState) {
    let mut next = HoldState::default();
    let results = CheckId::NEO4J
        .iter()
        .map(|&check| {
            let m = measure(check, snapshot, thresholds);
            judge(check, m, limit(check, thresholds), hold, &mut next, now_ms)
        })
        .collect();
    (results, next)
}

/// The results for a Neo4j target whose poll failed.
pub fn evaluate_neo4j_down(thresholds: &Neo4jThresholds, error: &str) -> Vec<CheckResult> {
    down(&CheckId::NEO4J, |c| limit(c, thresholds), error)
}

/// One observation without history (`dbwarden check`): holds do not apply.
pub fn evaluate_neo4j_once(
    snapshot: &Neo4jSnapshot,
    thresholds: &Neo4jThresholds,
) -> Vec<CheckResult> {
    let mut t = thresholds.clone();
    for l in [
        &mut t.slow_queries,
        &mut t.indexes_online,
        &mut t.databases_online,
        &mut t.cluster_healthy,
    ] {
        l.hold = std::time::Duration::ZERO;
    }
    t.node_count.hold = std::time::Duration::ZERO;
    t.relationship_count.hold = std::time::Duration::ZERO;
    let mut results = evaluate_neo4j(snapshot, &t, &HoldState::default(), 0).0;
    for r in &mut results {
        r.for_seconds = limit(r.check, thresholds).hold.as_secs_f64();
    }
    results
}

/// What the metrics and the status API show of a Neo4j snapshot, per database.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Neo4jSummary {
    pub version: String,
    pub edition: String,
    pub ping_seconds: f64,
    /// Per database: transactions by status (dbwarden's own excluded).
    pub transactions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per database: the longest transaction's elapsed seconds.
    pub longest_transaction_seconds: BTreeMap<String, f64>,
    /// Per database: transactions over the slow-query threshold.
    pub slow_transactions: BTreeMap<String, u64>,
    /// Per database: indexes by state.
    pub indexes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every index that is not ONLINE, with its progress and failure.
    pub indexes_not_online: Vec<crate::observe::neo4j::Neo4jIndex>,
    pub nodes: BTreeMap<String, i64>,
    pub relationships: BTreeMap<String, i64>,
    pub databases: Vec<crate::observe::neo4j::Neo4jDatabase>,
    pub cluster: Option<Vec<crate::observe::neo4j::Neo4jMember>>,
}

pub fn summarize_neo4j(s: &Neo4jSnapshot, t: &Neo4jThresholds) -> Neo4jSummary {
    let mut sum = Neo4jSummary {
        version: s.version.clone(),
        edition: s.edition.clone(),
        ping_seconds: s.ping_seconds,
        indexes_not_online: s.indexes_not_online().cloned().collect(),
        databases: s.databases.clone(),
        cluster: s.cluster.clone(),
        ..Neo4jSummary::default()
    };
    // Every configured database appears, with zeros, so series do not vanish.
    for c in &s.counts {
        sum.nodes.insert(c.database.clone(), c.nodes);
        sum.relationships
            .insert(c.database.clone(), c.relationships);
        sum.transactions.entry(c.database.clone()).or_default();
        sum.longest_transaction_seconds
            .insert(c.database.clone(), 0.0);
        sum.slow_transactions.insert(c.database.clone(), 0);
        sum.indexes.entry(c.database.clone()).or_default();
    }
    for x in s.others() {
        *sum.transactions
            .entry(x.database.clone())
            .or_default()
            .entry(x.status.clone())
            .or_default() += 1;
        let secs = x.elapsed_ms.max(0) as f64 / 1000.0;
        let longest = sum
            .longest_transaction_seconds
            .entry(x.database.clone())
            .or_default();
        *longest = longest.max(secs);
        let slow = sum.slow_transactions.entry(x.database.clone()).or_default();
        if secs > t.slow_queries.value {
            *slow += 1;
        }
    }
    for i in &s.indexes {
        *sum.indexes
            .entry(i.database.clone())
            .or_default()
            .entry(i.state.clone())
            .or_default() += 1;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::neo4j::*;

    fn tx(id: &str, db: &str, ms: i64, own: bool) -> Neo4jTransaction {
        Neo4jTransaction {
            database: db.into(),
            id: id.into(),
            query_id: Some(format!("q-{id}")),
            username: "alice".into(),
            query: Some("MATCH (n) RETURN n".into()),
            status: "Running".into(),
            elapsed_ms: ms,
            own,
        }
    }

    fn snapshot() -> Neo4jSnapshot {
        Neo4jSnapshot {
            observed_at: 0.0,
            version: "5.26.1".into(),
            edition: "community".into(),
            generation: Generation::Show5,
            ping_seconds: 0.001,
            transactions: vec![],
            indexes: vec![],
            counts: vec![Neo4jCounts {
                database: "neo4j".into(),
                nodes: 100,
                relationships: 50,
            }],
            databases: vec![],
            cluster: None,
        }
    }

    fn status(results: &[CheckResult], check: CheckId) -> &'static str {
        results
            .iter()
            .find(|r| r.check == check)
            .map(|r| r.status.as_str())
            .unwrap()
    }

    #[test]
    fn slow_queries_ignore_own_transactions_and_use_the_threshold() {
        let t = Neo4jThresholds::default();
        let mut s = snapshot();
        s.transactions = vec![
            tx("a", "neo4j", 1000, false),
            tx("own", "neo4j", 60_000, true),
        ];
        let r = evaluate_neo4j_once(&s, &t);
        assert_eq!(
            status(&r, CheckId::SlowQueries),
            "pass",
            "1000 ms is not over 1000 ms"
        );
        s.transactions.push(tx("b", "neo4j", 1001, false));
        let r = evaluate_neo4j_once(&s, &t);
        assert_eq!(status(&r, CheckId::SlowQueries), "fail");
        let slow = r.iter().find(|r| r.check == CheckId::SlowQueries).unwrap();
        assert_eq!(slow.value, Some(1.001));
        assert!(slow.detail.starts_with("1 over 1s"), "{}", slow.detail);
        let sum = summarize_neo4j(&s, &t);
        assert_eq!(sum.slow_transactions["neo4j"], 1);
        assert_eq!(sum.transactions["neo4j"]["Running"], 2, "own excluded");
    }

    #[test]
    fn indexes_databases_cluster_and_counts() {
        let mut t = Neo4jThresholds::default();
        t.node_count.min = Some(101);
        let mut s = snapshot();
        s.indexes = vec![Neo4jIndex {
            database: "neo4j".into(),
            name: "idx".into(),
            state: "FAILED".into(),
            population_percent: 10.0,
            index_type: Some("RANGE".into()),
            entity_type: "NODE".into(),
            labels_or_types: vec!["Person".into()],
            properties: vec!["name".into()],
            failure_message: Some("disk full\nstack".into()),
            create_statement: None,
            owning_constraint: None,
        }];
        s.databases = vec![Neo4jDatabase {
            name: "movies".into(),
            requested_status: "online".into(),
            current_status: "offline".into(),
            role: None,
        }];
        s.cluster = Some(vec![Neo4jMember {
            id: "a".into(),
            address: "a:7687".into(),
            role: "Enabled".into(),
            health: "Unavailable".into(),
            healthy: false,
        }]);
        let r = evaluate_neo4j_once(&s, &t);
        for c in [
            CheckId::IndexesOnline,
            CheckId::DatabasesOnline,
            CheckId::ClusterHealthy,
            CheckId::NodeCount,
        ] {
            assert_eq!(status(&r, c), "fail", "{c:?}");
        }
        assert_eq!(status(&r, CheckId::RelationshipCount), "pass");
        let idx = r
            .iter()
            .find(|r| r.check == CheckId::IndexesOnline)
            .unwrap();
        assert_eq!(idx.detail, "neo4j.idx FAILED: disk full");
        // Holds apply in the daemon: a failed index is pending first.
        let (r, hold) = evaluate_neo4j(&s, &Neo4jThresholds::default(), &HoldState::default(), 0);
        assert_eq!(status(&r, CheckId::IndexesOnline), "pending");
        let (r, _) = evaluate_neo4j(&s, &Neo4jThresholds::default(), &hold, 300_000);
        assert_eq!(status(&r, CheckId::IndexesOnline), "fail");
    }

    #[test]
    fn down_fails_connection_only() {
        let r = evaluate_neo4j_down(&Neo4jThresholds::default(), "refused");
        assert_eq!(r.len(), CheckId::NEO4J.len());
        assert_eq!(status(&r, CheckId::Connection), "fail");
        assert_eq!(status(&r, CheckId::SlowQueries), "unknown");
    }
}
