use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::evaluate::CheckId;
use crate::observe::neo4j::Generation;

fn tx(id: &str, user: &str, db: &str, status: &str, ms: i64) -> Neo4jTransaction {
    Neo4jTransaction {
        database: db.into(),
        id: id.into(),
        query_id: Some(format!("query-{id}")),
        username: user.into(),
        query: Some(format!("MATCH (n) WHERE n.id = '{id}' RETURN n")),
        status: status.into(),
        elapsed_ms: ms,
        own: false,
    }
}

fn snapshot(transactions: Vec<Neo4jTransaction>) -> Neo4jSnapshot {
    Neo4jSnapshot {
        observed_at: 0.0,
        version: "5.26.1".into(),
        edition: "community".into(),
        generation: Generation::Show5,
        ping_seconds: 0.0,
        transactions,
        indexes: vec![],
        counts: vec![],
        databases: vec![],
        cluster: None,
    }
}

fn policy(conditions: Neo4jConditions) -> Neo4jPolicy {
    Neo4jPolicy {
        name: "slow".into(),
        targets: None,
        action: "terminate".into(),
        victims: Victims::All,
        max_per_cycle: 10,
        conditions,
        only_while_failing: vec![],
        only_while_alerts: vec![],
    }
}

fn slow_for(secs: u64) -> Neo4jConditions {
    Neo4jConditions {
        running_for: Some(Duration::from_secs(secs)),
        ..Neo4jConditions::default()
    }
}

fn ids(c: &[Neo4jCandidate]) -> Vec<&str> {
    c.iter().map(|c| c.transaction.id.as_str()).collect()
}

#[test]
fn selects_exactly_the_long_runners_longest_first_and_explains() {
    let mut own = tx("own", "neo4j", "neo4j", "Running", 900_000);
    own.own = true;
    let s = snapshot(vec![
        tx("a", "alice", "neo4j", "Running", 299_999),
        tx("b", "bob", "neo4j", "Running", 300_000),
        tx("c", "carol", "movies", "Blocked", 600_000),
        tx("d", "dave", "neo4j", "Terminated", 900_000),
        tx("e", "erin", "system", "Running", 900_000),
        own,
    ]);
    let e = evaluate_policy(&policy(slow_for(300)), &s, Gates::default());
    assert_eq!(ids(&e.selected), ["c", "b"]);
    assert_eq!(e.selected[1].reason, "running 5m (>= 5m)");
    let protected: Vec<(&str, Neo4jProtection)> = e
        .protected
        .iter()
        .map(|(t, p)| (t.id.as_str(), *p))
        .collect();
    assert_eq!(
        protected,
        [
            ("d", Neo4jProtection::Ending),
            ("e", Neo4jProtection::SystemDatabase),
            ("own", Neo4jProtection::Own)
        ]
    );
}

#[test]
fn filters_combine_with_and_and_ignores_win() {
    let s = snapshot(vec![
        tx("a", "alice", "neo4j", "Running", 10_000),
        tx("b", "bob", "neo4j", "Blocked", 10_000),
        tx("c", "alice", "movies", "Blocked", 10_000),
    ]);
    let mut c = slow_for(5);
    c.statuses = vec!["blocked".into()];
    c.match_users = vec!["alice".into(), "bob".into()];
    c.ignore_databases = vec!["movies".into()];
    let e = evaluate_policy(&policy(c.clone()), &s, Gates::default());
    assert_eq!(ids(&e.selected), ["b"]);
    c.ignore_users = vec!["bob".into()];
    let e = evaluate_policy(&policy(c), &s, Gates::default());
    assert!(e.selected.is_empty());
}

#[test]
fn query_conditions_never_act_on_hidden_text() {
    let mut hidden = tx("h", "alice", "neo4j", "Running", 10_000);
    hidden.query = None;
    let s = snapshot(vec![hidden, tx("v", "alice", "neo4j", "Running", 10_000)]);
    let mut c = slow_for(1);
    c.ignore_query = Some(crate::settings::Pattern(
        regex::Regex::new("backup").unwrap(),
    ));
    let e = evaluate_policy(&policy(c), &s, Gates::default());
    assert_eq!(ids(&e.selected), ["v"]);
    assert_eq!(e.protected[0].1, Neo4jProtection::QueryTextHidden);
    let mut c = slow_for(1);
    c.match_query = Some(crate::settings::Pattern(
        regex::Regex::new("WHERE").unwrap(),
    ));
    let e = evaluate_policy(&policy(c), &s, Gates::default());
    assert_eq!(ids(&e.selected), ["v"]);
}

#[test]
fn the_gates_close_the_policy() {
    let s = snapshot(vec![tx("a", "alice", "neo4j", "Running", 10_000)]);
    let mut p = policy(slow_for(1));
    p.only_while_failing = vec![CheckId::SlowQueries.into()];
    let e = evaluate_policy(&p, &s, Gates::default());
    assert!(!e.gate_open && e.selected.is_empty());
    assert_eq!(e.candidates.len(), 1, "candidates are still reported");
    let failing = [CheckName::Builtin(CheckId::SlowQueries)];
    let e = evaluate_policy(
        &p,
        &s,
        Gates {
            failing: &failing,
            firing_alerts: &[],
        },
    );
    assert_eq!(ids(&e.selected), ["a"]);
}

#[test]
fn select_acts_once_per_transaction_and_respects_targets() {
    let s = snapshot(vec![tx("a", "alice", "neo4j", "Running", 10_000)]);
    let mut second = policy(slow_for(1));
    second.name = "second".into();
    let mut elsewhere = policy(slow_for(1));
    elsewhere.name = "elsewhere".into();
    elsewhere.targets = Some(vec!["other".into()]);
    let (evals, chosen) = select(
        &[policy(slow_for(1)), second, elsewhere],
        "graph",
        &s,
        Gates::default(),
    );
    assert_eq!(evals.len(), 2);
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].policy, "slow");
}

// ------------------------------------------------------------- properties

const USERS: [&str; 3] = ["alice", "bob", "neo4j"];
const DATABASES: [&str; 3] = ["neo4j", "movies", "system"];
const STATUSES: [&str; 4] = ["Running", "Blocked", "Closing", "Terminated"];

fn arb_tx() -> impl Strategy<Value = Neo4jTransaction> {
    (
        0usize..3,
        0usize..3,
        0usize..4,
        -10i64..20_000,
        any::<bool>(),
        prop::option::weighted(0.8, "[a-z ]{0,12}"),
    )
        .prop_map(|(u, d, st, ms, own, query)| Neo4jTransaction {
            database: DATABASES[d].into(),
            id: String::new(),
            query_id: None,
            username: USERS[u].into(),
            query,
            status: STATUSES[st].into(),
            elapsed_ms: ms,
            own,
        })
}

fn arb_snapshot() -> impl Strategy<Value = Neo4jSnapshot> {
    prop::collection::vec(arb_tx(), 0..30).prop_map(|mut txs| {
        for (i, t) in txs.iter_mut().enumerate() {
            t.id = format!("{}-transaction-{i}", t.database);
        }
        snapshot(txs)
    })
}

fn subset<const N: usize>(all: [&'static str; N]) -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(all.to_vec(), 0..=N)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn arb_conditions() -> impl Strategy<Value = Neo4jConditions> {
    (
        prop::option::of(0u64..20),
        subset(STATUSES),
        subset(USERS),
        subset(USERS),
        subset(DATABASES),
        subset(DATABASES),
        prop::option::of(prop::sample::select(vec!["a", "b", "^x"])),
        prop::option::of(prop::sample::select(vec!["c", "d "])),
    )
        .prop_map(|(secs, statuses, mu, iu, md, id, mq, iq)| Neo4jConditions {
            running_for: secs.map(Duration::from_secs),
            statuses,
            match_users: mu,
            ignore_users: iu,
            match_databases: md,
            ignore_databases: id,
            match_query: mq.map(|r| crate::settings::Pattern(regex::Regex::new(r).unwrap())),
            ignore_query: iq.map(|r| crate::settings::Pattern(regex::Regex::new(r).unwrap())),
        })
}

/// An independent statement of the rules, for comparison.
fn allowed(c: &Neo4jConditions, t: &Neo4jTransaction) -> bool {
    let text_cond = c.match_query.is_some() || c.ignore_query.is_some();
    !t.own
        && !matches!(t.status.as_str(), "Closing" | "Terminated")
        && (t.database != "system" || c.match_databases.iter().any(|d| d == "system"))
        && !(text_cond && t.query.is_none())
        && c.running_for
            .is_none_or(|d| t.elapsed_ms >= 0 && t.elapsed_ms as u128 >= d.as_millis())
        && (c.statuses.is_empty() || c.statuses.contains(&t.status))
        && (c.match_users.is_empty() || c.match_users.contains(&t.username))
        && !c.ignore_users.contains(&t.username)
        && (c.match_databases.is_empty() || c.match_databases.contains(&t.database))
        && !c.ignore_databases.contains(&t.database)
        && c.match_query
            .as_ref()
            .is_none_or(|r| t.query.as_deref().is_some_and(|q| r.is_match(q)))
        && c.ignore_query
            .as_ref()
            .is_none_or(|r| !t.query.as_deref().is_some_and(|q| r.is_match(q)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn candidates_are_exactly_what_the_rules_allow(
        s in arb_snapshot(),
        c in arb_conditions(),
        cap in 1u32..6,
        oldest in any::<bool>(),
    ) {
        let mut p = policy(c.clone());
        p.max_per_cycle = cap;
        p.victims = if oldest { Victims::Oldest } else { Victims::All };
        let e = evaluate_policy(&p, &s, Gates::default());
        let mut expected: Vec<&str> = s
            .transactions
            .iter()
            .filter(|t| allowed(&c, t))
            .map(|t| t.id.as_str())
            .collect();
        expected.sort();
        let mut got = ids(&e.candidates);
        got.sort();
        prop_assert_eq!(got, expected);
        // Never a protected transaction, never more than the cap.
        let limit = if oldest { 1 } else { cap as usize };
        prop_assert!(e.selected.len() <= limit);
        prop_assert_eq!(e.selected.len(), e.candidates.len().min(limit));
        for sel in &e.selected {
            prop_assert!(!sel.transaction.own);
            prop_assert!(sel.transaction.status != "Terminated" && sel.transaction.status != "Closing");
            prop_assert!(!c.ignore_users.contains(&sel.transaction.username));
            prop_assert!(!c.ignore_databases.contains(&sel.transaction.database));
        }
        // Longest-running first: nothing left out runs longer than what was chosen.
        if let Some(last) = e.selected.last() {
            for c in &e.candidates[e.selected.len()..] {
                prop_assert!(c.transaction.elapsed_ms <= last.transaction.elapsed_ms);
            }
        }
    }

    #[test]
    fn adding_a_condition_never_adds_a_candidate(
        s in arb_snapshot(),
        c in arb_conditions(),
        users in subset(USERS),
        statuses in subset(STATUSES),
    ) {
        let wide = evaluate_policy(&policy(c.clone()), &s, Gates::default());
        let mut narrow = c;
        if narrow.match_users.is_empty() { narrow.match_users = users; }
        if narrow.statuses.is_empty() { narrow.statuses = statuses; }
        let narrow = evaluate_policy(&policy(narrow), &s, Gates::default());
        let wide_ids = ids(&wide.candidates);
        for id in ids(&narrow.candidates) {
            prop_assert!(wide_ids.contains(&id));
        }
    }

    #[test]
    fn a_closed_gate_selects_nothing(s in arb_snapshot(), c in arb_conditions()) {
        let mut p = policy(c);
        p.only_while_alerts = vec!["DbWardenNeo4jSlowQueries".into()];
        let e = evaluate_policy(&p, &s, Gates::default());
        prop_assert!(e.selected.is_empty());
    }
}
