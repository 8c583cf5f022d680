//! dbwarden watching Neo4j, end to end over real TCP: the daemon
//! (in-process) and `dbwarden check` / `dbwarden config` (the binary)
//! against the Bolt test server of `tests/support/bolt`, which speaks Bolt
//! 4.x to neo4rs and answers as Neo4j 4.3, 4.4 or 5.x would (Community or
//! Enterprise, standalone or clustered).
//!
//! - Observation, per persona: exact metric values (version and edition,
//!   transactions by database and status, the longest, the slow count,
//!   indexes by state, counts, databases as requested, cluster members),
//!   the checks, the status API, which statements each version received
//!   (and on which database), that each carried dbwarden's `tx_metadata`, and
//!   that dbwarden's own transaction, which the server lists, is not counted.
//! - Faults: authentication failure, a procedure that does not exist, a
//!   server slower than `poll_timeout`, a connection dropped mid-stream and a
//!   port where nothing listens each take the target down with its error
//!   kind, while a PostgreSQL target of the same daemon keeps being polled;
//!   once the fault is gone the target comes back.
//! - `dbwarden check` exit codes and output, `dbwarden config` redaction,
//!   and the commented Neo4j target of `config/dbwarden.example.toml`.
//!
//! When `NEO4J_TEST_URI`, `NEO4J_TEST_USER` and `NEO4J_TEST_PASS` are set,
//! each observation test also runs against that real server after the stub
//! cases (up, version parsed, every Neo4j check present). What the stub
//! cannot prove (real Neo4j behaviour, privileges, clustering semantics,
//! performance) is listed in the README.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust) for the
//! fault tests, like the other integration tests.

#![cfg(feature = "neo4j")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbwarden::config::Config;
use dbwarden::observe::neo4j::{Generation as DbwGeneration, statements};
use serde_json::Value as Json;
use support::bolt::persona::{self, normalize};
use support::bolt::{
    BoltServer, ClusterMember, Db, Fault, Generation, Index, Persona, ServerState, Statement, Tx,
};
use support::*;

/// The machine's PostgreSQL, polled next to the Neo4j target in the fault tests.
const LOCAL_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long anything in these tests may take to show.
const DEADLINE: Duration = Duration::from_secs(30);
const PASSWORD: &str = "secret";
const CHECKS: [&str; 7] = [
    "connection",
    "slow_queries",
    "indexes_online",
    "databases_online",
    "cluster_healthy",
    "node_count",
    "relationship_count",
];

// ------------------------------------------------------------------ helpers

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A file holding `password` (what `password_file` reads), removed on drop.
fn password_file(password: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), format!("{password}\n")).expect("write the password file");
    f
}

/// A `[neo4j.NAME]` target with short intervals and every check at `for = "0s"`.
///
/// `connect_timeout` is longer than `poll_timeout` on purpose: neo4rs also
/// bounds every read by it (see
/// [`slow_statement_is_a_timeout_even_when_connect_timeout_is_shorter`]), so
/// a shorter one would race the poll's own timeout.
fn neo4j_target(name: &str, uri: &str, password_file: &Path) -> String {
    neo4j_target_as(name, uri, "neo4j", password_file)
}

fn neo4j_target_as(name: &str, uri: &str, user: &str, password_file: &Path) -> String {
    format!(
        r#"
[neo4j.{name}]
uri = {uri}
user = {user}
password_file = {pf}
databases = ["neo4j"]
poll_interval = "300ms"
poll_timeout = "300ms"
connect_timeout = "1s"
backoff_max = "1s"

[neo4j.{name}.thresholds]
slow_queries = {{ max = "1s", for = "0s" }}
indexes_online = {{ for = "0s" }}
databases_online = {{ for = "0s" }}
cluster_healthy = {{ for = "0s" }}
node_count = {{ min = 1, for = "0s" }}
relationship_count = {{ min = 1, for = "0s" }}
"#,
        uri = toml_str(uri),
        user = toml_str(user),
        pf = toml_str(&password_file.to_string_lossy()),
    )
}

/// The sum of every sample of `name` whose labels include `labels`.
fn sum_of(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// The labels of the one `dbwarden_neo4j_info` sample of `target`.
fn info_labels(text: &str, target: &str) -> Option<BTreeMap<String, String>> {
    parse_metrics(text)
        .into_iter()
        .find(|s| {
            s.name == "dbwarden_neo4j_info"
                && s.labels.iter().any(|(k, v)| k == "target" && v == target)
        })
        .map(|s| s.labels.into_iter().collect())
}

/// Owned form of [`Expectation`]s, checked against one scrape.
type Want2 = (&'static str, Vec<(&'static str, String)>, Want);

fn check_wants(text: &str, wants: &[Want2]) -> Result<(), String> {
    let failed: Vec<String> = wants
        .iter()
        .filter_map(|(name, labels, want)| {
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let v = metric_value(text, name, &l);
            let holds = match (*want, v) {
                (Want::Absent, v) => v.is_none(),
                (_, None) => false,
                (Want::Eq(w), Some(v)) => v == w,
                (Want::Ge(w), Some(v)) => v >= w,
                (Want::Gt(w), Some(v)) => v > w,
                (Want::Le(w), Some(v)) => v <= w,
                (Want::Lt(w), Some(v)) => v < w,
            };
            (!holds).then(|| format!("{name}{l:?}: want {want:?}, got {v:?}"))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

fn l(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The status API's entry for `target`.
fn status_of(status: &Json, target: &str) -> Json {
    status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == target))
        .cloned()
        .unwrap_or_else(|| panic!("no target {target} in /api/v1/status: {status}"))
}

fn metadata_app(s: &Statement) -> Option<String> {
    s.tx_metadata()?.get("app")?.as_str().map(str::to_string)
}

fn db_of(s: &Statement) -> Option<String> {
    s.extra.get("db")?.as_str().map(str::to_string)
}

// ------------------------------------------------------------------ the world

/// The transactions every observation test sets up: one of 93 s and one of
/// 500 ms running, one Blocked, and one on another database (movies).
fn transactions() -> Vec<Tx> {
    vec![
        Tx::running(
            "neo4j-transaction-11",
            "query-21",
            "alice",
            "MATCH (p:Person)-[:KNOWS*1..6]->(q) RETURN count(q)",
        )
        .elapsed_ms(93_000),
        Tx::running(
            "neo4j-transaction-12",
            "query-22",
            "bob",
            "MATCH (m:Movie) RETURN m",
        )
        .elapsed_ms(500),
        Tx::running(
            "neo4j-transaction-13",
            "query-23",
            "carol",
            "MATCH (p:Person {name: $n}) SET p.seen = true",
        )
        .status("Blocked")
        .elapsed_ms(200),
        Tx::running(
            "movies-transaction-14",
            "query-24",
            "dave",
            "MATCH (m:Movie) RETURN m.title",
        )
        .elapsed_ms(300),
    ]
}

const FAILURE_MESSAGE: &str =
    "Index population failed: java.lang.IllegalStateException: disk full\n\tat org.neo4j.kernel...";

fn populate(state: &mut ServerState) {
    state.transactions = transactions();
    state.indexes = vec![
        Index::online("person_name", "Person", "name").with_id(1),
        Index::populating("movie_title", "Movie", "title", 40.0).with_id(2),
        Index::failed("person_email", "Person", "email", FAILURE_MESSAGE).with_id(3),
    ];
    state.node_count = 1234;
    state.relationship_count = 5678;
    state.databases = vec![
        Db::online("neo4j"),
        Db::online("system"),
        Db::new("movies", "online", "offline"),
    ];
}

/// Three members, the third unhealthy: unavailable on 5.x (SHOW SERVERS),
/// hosting no database on 4.x (dbms.cluster.overview reports no role).
fn members() -> Vec<ClusterMember> {
    let mut sick = ClusterMember::new("core-3", "10.0.0.3:7687", "FOLLOWER").health("Unavailable");
    sick.databases.clear();
    vec![
        ClusterMember::new("core-1", "10.0.0.1:7687", "LEADER"),
        ClusterMember::new("core-2", "10.0.0.2:7687", "FOLLOWER"),
        sick,
    ]
}

// ------------------------------------------------------------------ observation

/// Runs the daemon against `persona` with the world above and checks what
/// it exports, judges, shows and sent.
async fn observe_persona(persona: Persona) {
    let label = format!(
        "{} {:?}{}",
        persona.version,
        persona.edition,
        if persona.clustered { " clustered" } else { "" }
    );
    let v43 = persona.generation == Generation::V4_3;
    let v5 = persona.generation == Generation::V5;
    let clustered = persona.clustered;
    let edition = match persona.edition {
        support::bolt::Edition::Community => "community",
        support::bolt::Edition::Enterprise => "enterprise",
    };
    let version = persona.version.clone();

    let state = ServerState::shared();
    {
        let mut s = support::bolt::state::lock(&state);
        populate(&mut s);
        if clustered {
            s.cluster_members = members();
        }
    }
    let server = BoltServer::start(persona, state);
    let pw = password_file(PASSWORD);
    let t = "graph";
    let daemon = Daemon::start(&neo4j_target(t, &server.uri(), pw.path())).await;

    let mut wants: Vec<Want2> = vec![
        ("dbwarden_up", l(&[("target", t)]), Want::Eq(1.0)),
        (
            "dbwarden_neo4j_info",
            l(&[("target", t), ("version", &version), ("edition", edition)]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_neo4j_ping_seconds",
            l(&[("target", t)]),
            Want::Ge(0.0),
        ),
        (
            "dbwarden_neo4j_ping_seconds",
            l(&[("target", t)]),
            Want::Lt(1.0),
        ),
        (
            "dbwarden_neo4j_longest_transaction_seconds",
            l(&[("target", t), ("database", "neo4j")]),
            Want::Eq(93.0),
        ),
        (
            "dbwarden_neo4j_longest_transaction_seconds",
            l(&[("target", t), ("database", "movies")]),
            Want::Eq(0.3),
        ),
        (
            "dbwarden_neo4j_slow_transactions",
            l(&[("target", t), ("database", "neo4j")]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_neo4j_slow_transactions",
            l(&[("target", t), ("database", "movies")]),
            Want::Eq(0.0),
        ),
        (
            "dbwarden_neo4j_indexes",
            l(&[("target", t), ("database", "neo4j"), ("state", "ONLINE")]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_neo4j_indexes",
            l(&[
                ("target", t),
                ("database", "neo4j"),
                ("state", "POPULATING"),
            ]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_neo4j_indexes",
            l(&[("target", t), ("database", "neo4j"), ("state", "FAILED")]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_neo4j_nodes",
            l(&[("target", t), ("database", "neo4j")]),
            Want::Eq(1234.0),
        ),
        (
            "dbwarden_neo4j_relationships",
            l(&[("target", t), ("database", "neo4j")]),
            Want::Eq(5678.0),
        ),
        (
            "dbwarden_check_value",
            l(&[("target", t), ("check", "slow_queries")]),
            Want::Eq(93.0),
        ),
        (
            "dbwarden_check_threshold",
            l(&[("target", t), ("check", "slow_queries")]),
            Want::Eq(1.0),
        ),
        (
            "dbwarden_check_value",
            l(&[("target", t), ("check", "indexes_online")]),
            Want::Eq(2.0),
        ),
        (
            "dbwarden_open_connections",
            l(&[("target", t)]),
            Want::Le(1.0),
        ),
    ];
    // SHOW TRANSACTIONS statuses (dbms.listQueries' running/waiting read
    // the same on 4.3), dbwarden's own transaction excluded (the server
    // lists it as a third Running one on neo4j).
    for (db, status, n) in [
        ("neo4j", "Running", 2.0),
        ("neo4j", "Blocked", 1.0),
        ("neo4j", "Closing", 0.0),
        ("neo4j", "Terminated", 0.0),
        ("movies", "Running", 1.0),
        ("movies", "Blocked", 0.0),
    ] {
        wants.push((
            "dbwarden_neo4j_transactions",
            l(&[("target", t), ("database", db), ("status", status)]),
            Want::Eq(n),
        ));
    }
    let failing = [
        ("connection", false),
        ("slow_queries", true),
        ("indexes_online", true),
        ("databases_online", !v43),
        ("cluster_healthy", clustered),
        ("node_count", false),
        ("relationship_count", false),
    ];
    for (check, fails) in failing {
        wants.push((
            "dbwarden_check_failing",
            l(&[("target", t), ("check", check)]),
            Want::Eq(if fails { 1.0 } else { 0.0 }),
        ));
    }
    if v43 {
        // No SHOW DATABASES before 4.4: nothing to say about databases.
        wants.push((
            "dbwarden_neo4j_database_as_requested",
            l(&[("target", t), ("database", "neo4j")]),
            Want::Absent,
        ));
    } else {
        for (db, ok) in [("neo4j", 1.0), ("system", 1.0), ("movies", 0.0)] {
            wants.push((
                "dbwarden_neo4j_database_as_requested",
                l(&[("target", t), ("database", db)]),
                Want::Eq(ok),
            ));
        }
    }
    for (health, n) in [("healthy", 2.0), ("unhealthy", 1.0)] {
        wants.push((
            "dbwarden_neo4j_cluster_members",
            l(&[("target", t), ("health", health)]),
            if clustered { Want::Eq(n) } else { Want::Absent },
        ));
    }

    let text = wait_until(
        DEADLINE,
        &format!("{label}: the exact metrics of the populated server"),
        async || {
            let text = daemon.try_metrics().await?;
            check_wants(&text, &wants)?;
            Ok(text)
        },
    )
    .await;

    // Transactions per database, whatever the version calls their status;
    // dbwarden's own (listed by the server with its tx_metadata) excluded.
    assert_eq!(
        sum_of(
            &text,
            "dbwarden_neo4j_transactions",
            &[("target", t), ("database", "neo4j")]
        ),
        3.0,
        "{label}: 3 transactions on neo4j (dbwarden's own not counted)\n{text}"
    );
    assert_eq!(
        sum_of(
            &text,
            "dbwarden_neo4j_transactions",
            &[("target", t), ("database", "movies")]
        ),
        1.0,
        "{label}: 1 transaction on movies\n{text}"
    );
    for check in CHECKS {
        assert!(
            metric_value(
                &text,
                "dbwarden_check_threshold",
                &[("target", t), ("check", check)]
            )
            .is_some(),
            "{label}: no threshold exported for check {check}"
        );
    }

    // The status API: the indexes that are not online, with progress and failure.
    let st = status_of(&daemon.status().await, t);
    assert_eq!(st["kind"], "neo4j", "{label}: {st}");
    assert_eq!(st["up"], true, "{label}: {st}");
    assert_eq!(st["neo4j"]["version"], version.as_str(), "{label}: {st}");
    assert_eq!(st["neo4j"]["edition"], edition, "{label}: {st}");
    let not_online = st["neo4j"]["indexes_not_online"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: no indexes_not_online in {st}"));
    assert_eq!(not_online.len(), 2, "{label}: {not_online:?}");
    let populating = not_online
        .iter()
        .find(|i| i["name"] == "movie_title")
        .unwrap_or_else(|| panic!("{label}: movie_title not listed: {not_online:?}"));
    assert_eq!(populating["state"], "POPULATING");
    assert_eq!(populating["population_percent"], 40.0);
    assert_eq!(populating["database"], "neo4j");
    let failed = not_online
        .iter()
        .find(|i| i["name"] == "person_email")
        .unwrap_or_else(|| panic!("{label}: person_email not listed: {not_online:?}"));
    assert_eq!(failed["state"], "FAILED");
    if v43 {
        // db.indexes() has no failure message column.
        assert!(failed["failure_message"].is_null(), "{label}: {failed}");
    } else {
        assert_eq!(
            failed["failure_message"], FAILURE_MESSAGE,
            "{label}: {failed}"
        );
    }
    let checks = st["checks"].as_array().expect("checks");
    let detail = |c: &str| {
        checks
            .iter()
            .find(|x| x["check"] == c)
            .map(|x| x["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("{label}: no check {c} in {st}"))
    };
    assert!(
        detail("indexes_online").contains("neo4j.movie_title POPULATING (40.0%)"),
        "{label}: {}",
        detail("indexes_online")
    );
    if !v43 {
        assert!(
            detail("indexes_online").contains("neo4j.person_email FAILED: Index population failed"),
            "{label}: {}",
            detail("indexes_online")
        );
        assert!(
            detail("databases_online").contains("movies is offline (requested online)"),
            "{label}: {}",
            detail("databases_online")
        );
    }
    assert!(
        detail("slow_queries").contains("neo4j-transaction-11")
            || detail("slow_queries").contains("query-21"),
        "{label}: the slow check names the longest transaction: {}",
        detail("slow_queries")
    );

    // What the server received.
    let s = server.state().clone();
    assert!(!s.statements.is_empty(), "{label}: no statements received");
    for st in &s.statements {
        assert_eq!(
            metadata_app(st).as_deref(),
            Some("dbwarden"),
            "{label}: statement without tx_metadata app=dbwarden: {} {:?}",
            st.query,
            st.extra
        );
    }
    let sent = |q: &str| {
        s.statements
            .iter()
            .filter(|st| normalize(&st.query) == normalize(q))
            .collect::<Vec<_>>()
    };
    let names = [
        ("COMPONENTS", persona::COMPONENTS),
        ("PING", persona::PING),
        ("LIST_QUERIES", persona::LIST_QUERIES),
        ("SHOW_TRANSACTIONS", persona::SHOW_TRANSACTIONS),
        ("DB_INDEXES", persona::DB_INDEXES),
        ("SHOW_INDEXES", persona::SHOW_INDEXES),
        ("SHOW_INDEXES_5", persona::SHOW_INDEXES_5),
        ("SHOW_DATABASES", persona::SHOW_DATABASES),
        ("CLUSTER_OVERVIEW", persona::CLUSTER_OVERVIEW),
        ("SHOW_SERVERS", persona::SHOW_SERVERS),
        ("NODE_COUNT", persona::NODE_COUNT),
        ("RELATIONSHIP_COUNT", persona::RELATIONSHIP_COUNT),
    ];
    // The version picks the statements; the edition whether the cluster is
    // asked about (a standalone Enterprise server answers ProcedureNotFound
    // on 4.x and lists itself alone on 5.x: not clustered).
    let mut expected: Vec<&str> = if v43 {
        vec!["LIST_QUERIES", "DB_INDEXES"]
    } else if v5 {
        vec!["SHOW_TRANSACTIONS", "SHOW_INDEXES_5", "SHOW_DATABASES"]
    } else {
        vec!["SHOW_TRANSACTIONS", "SHOW_INDEXES", "SHOW_DATABASES"]
    };
    if edition == "enterprise" {
        expected.push(if v5 {
            "SHOW_SERVERS"
        } else {
            "CLUSTER_OVERVIEW"
        });
    }
    let always = ["COMPONENTS", "PING", "NODE_COUNT", "RELATIONSHIP_COUNT"];
    for (name, q) in names {
        let want = expected.contains(&name) || always.contains(&name);
        assert_eq!(
            !sent(q).is_empty(),
            want,
            "{label}: {name} {} (received: {:#?})",
            if want {
                "never received"
            } else {
                "received, but this version must not get it"
            },
            s.statements
                .iter()
                .map(|s| &s.query)
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    // Nothing else: every statement is one of those.
    for st in &s.statements {
        assert!(
            names
                .iter()
                .any(|(_, q)| normalize(q) == normalize(&st.query)),
            "{label}: unexpected statement {:?}",
            st.query
        );
    }
    // SHOW DATABASES on database system only, and only it; per-database
    // statements on the configured database.
    for st in &s.statements {
        let q = normalize(&st.query);
        let db = db_of(st);
        if q == normalize(persona::SHOW_DATABASES) {
            assert_eq!(db.as_deref(), Some("system"), "{label}: {}", st.query);
        } else {
            assert_ne!(db.as_deref(), Some("system"), "{label}: {}", st.query);
        }
        if [
            persona::SHOW_INDEXES,
            persona::SHOW_INDEXES_5,
            persona::DB_INDEXES,
            persona::NODE_COUNT,
            persona::RELATIONSHIP_COUNT,
        ]
        .iter()
        .any(|x| normalize(x) == q)
        {
            assert_eq!(db.as_deref(), Some("neo4j"), "{label}: {}", st.query);
        }
    }
    // Observation never acts.
    assert!(s.terminated.is_empty(), "{label}: {:?}", s.terminated);
    // At most one connection open at a time for the observer.
    assert!(
        s.active_connections <= 1,
        "{label}: {} open",
        s.active_connections
    );

    daemon.stop().await;
    server.shutdown().await;
}

/// dbwarden's statements are the persona's, verbatim (the claim of
/// `observe::neo4j::statements`).
#[test]
fn dbwarden_statements_are_the_ones_the_test_server_answers() {
    for (ours, theirs) in [
        (statements::COMPONENTS, persona::COMPONENTS),
        (statements::PING, persona::PING),
        (statements::SHOW_TRANSACTIONS, persona::SHOW_TRANSACTIONS),
        (statements::SHOW_TRANSACTION, persona::SHOW_TRANSACTION),
        (
            statements::TERMINATE_TRANSACTIONS,
            persona::TERMINATE_TRANSACTIONS,
        ),
        (statements::LIST_QUERIES, persona::LIST_QUERIES),
        (statements::KILL_QUERY, persona::KILL_QUERY),
        (statements::DB_INDEXES, persona::DB_INDEXES),
        (statements::SHOW_INDEXES, persona::SHOW_INDEXES),
        (statements::SHOW_INDEXES_5, persona::SHOW_INDEXES_5),
        (statements::SHOW_INDEX, persona::SHOW_INDEX),
        (statements::SHOW_INDEX_5, persona::SHOW_INDEX_5),
        (statements::NODE_COUNT, persona::NODE_COUNT),
        (statements::RELATIONSHIP_COUNT, persona::RELATIONSHIP_COUNT),
        (statements::SHOW_DATABASES, persona::SHOW_DATABASES),
        (statements::CLUSTER_OVERVIEW, persona::CLUSTER_OVERVIEW),
        (statements::SHOW_SERVERS, persona::SHOW_SERVERS),
    ] {
        assert_eq!(ours, theirs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_4_3() {
    observe_persona(Persona::neo4j_4_3()).await;
    real_server_if_configured().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_4_4() {
    observe_persona(Persona::neo4j_4_4()).await;
    real_server_if_configured().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_5() {
    observe_persona(Persona::neo4j_5()).await;
    real_server_if_configured().await;
}

/// A standalone Enterprise server: 4.4 answers `dbms.cluster.overview()`
/// with ProcedureNotFound (the poll carries on, not clustered), 5.x lists
/// itself alone in SHOW SERVERS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_4_4_enterprise_standalone() {
    observe_persona(Persona::neo4j_4_4().enterprise()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_5_enterprise_standalone() {
    observe_persona(Persona::neo4j_5().enterprise()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_4_4_enterprise_cluster_with_an_unhealthy_member() {
    observe_persona(Persona::neo4j_4_4().clustered()).await;
    real_server_if_configured().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_neo4j_5_enterprise_cluster_with_an_unhealthy_member() {
    observe_persona(Persona::neo4j_5().clustered()).await;
    real_server_if_configured().await;
}

/// Before 4.4 `dbms.listQueries()` says `running` and `waiting` where SHOW
/// TRANSACTIONS says `Running` and `Blocked`: the `status` label must not
/// depend on the server's version, or a dashboard or alert on
/// `status="Blocked"` sees nothing on 4.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo4j_4_3_transaction_statuses_use_the_show_transactions_names() {
    let state = ServerState::shared();
    populate(&mut support::bolt::state::lock(&state));
    let server = BoltServer::start(Persona::neo4j_4_3(), state);
    let pw = password_file(PASSWORD);
    let daemon = Daemon::start(&neo4j_target("old", &server.uri(), pw.path())).await;
    let text = wait_until(DEADLINE, "the 4.3 target up", async || {
        let text = daemon.try_metrics().await?;
        require(&text, "dbwarden_neo4j_info", &[("target", "old")])?;
        Ok(text)
    })
    .await;
    let statuses: Vec<(String, f64)> = parse_metrics(&text)
        .into_iter()
        .filter(|s| s.name == "dbwarden_neo4j_transactions")
        .filter(|s| {
            s.labels
                .iter()
                .any(|(k, v)| k == "database" && v == "neo4j")
        })
        .filter_map(|s| {
            let st = s.labels.iter().find(|(k, _)| k == "status")?.1.clone();
            Some((st, s.value))
        })
        .collect();
    let get = |name: &str| {
        statuses
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    };
    assert!(
        get("Running") == 2.0 && get("Blocked") == 1.0,
        "on 4.3 the statuses must read Running 2, Blocked 1 as on 4.4+; got {statuses:?}"
    );
    daemon.stop().await;
}

// ------------------------------------------------------------------ real server

/// `NEO4J_TEST_URI`, `NEO4J_TEST_USER`, `NEO4J_TEST_PASS`, when all are set.
fn real_server() -> Option<(String, String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Some((
        get("NEO4J_TEST_URI")?,
        get("NEO4J_TEST_USER")?,
        get("NEO4J_TEST_PASS")?,
    ))
}

/// Against a real Neo4j when configured: the target comes up, its version
/// parses to a supported generation and every Neo4j check is there.
async fn real_server_if_configured() {
    let Some((uri, user, pass)) = real_server() else {
        println!(
            "NEO4J_TEST_URI/NEO4J_TEST_USER/NEO4J_TEST_PASS not set: checked against the Bolt test server only"
        );
        return;
    };
    let pw = password_file(&pass);
    // A real server over a network may be slower than the stub: 2s polls.
    let toml = neo4j_target_as("real", &uri, &user, pw.path())
        .replace("poll_interval = \"300ms\"", "poll_interval = \"2s\"")
        .replace("poll_timeout = \"300ms\"", "poll_timeout = \"2s\"")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"");
    let daemon = Daemon::start(&toml).await;
    let text = wait_until(
        DEADLINE,
        &format!("the real Neo4j at {uri} up"),
        async || {
            let text = daemon.try_metrics().await?;
            if require(&text, "dbwarden_up", &[("target", "real")])? != 1.0 {
                let st = status_of(&daemon.status().await, "real");
                return Err(format!("down: {}", st["last_error"]));
            }
            Ok(text)
        },
    )
    .await;
    let info = info_labels(&text, "real").expect("dbwarden_neo4j_info of the real server");
    let version = &info["version"];
    assert!(
        DbwGeneration::of_version(version).is_some(),
        "the real server's version {version:?} does not parse"
    );
    assert!(
        ["community", "enterprise"].contains(&info["edition"].as_str()),
        "{info:?}"
    );
    for check in CHECKS {
        assert!(
            metric_value(
                &text,
                "dbwarden_check_failing",
                &[("target", "real"), ("check", check)]
            )
            .is_some(),
            "the real server: no check {check}\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_check_failing",
            &[("target", "real"), ("check", "connection")]
        ),
        Some(0.0)
    );
    println!("real Neo4j {version} {} at {uri}: up", info["edition"]);
    daemon.stop().await;
}

// ------------------------------------------------------------------ faults

/// A daemon watching the machine's PostgreSQL (`pg`) and the Neo4j target
/// `graph` at `uri`.
async fn daemon_with_pg(uri: &str, pw: &Path) -> Daemon {
    Daemon::start(&format!(
        "{}{}",
        fast_target("pg", LOCAL_PG, ""),
        neo4j_target("graph", uri, pw)
    ))
    .await
}

async fn wait_up(daemon: &Daemon, what: &str) -> String {
    wait_until(DEADLINE, what, async || {
        let text = daemon.try_metrics().await?;
        expect_metrics(
            &text,
            &[
                ("dbwarden_up", &[("target", "graph")], Want::Eq(1.0)),
                (
                    "dbwarden_check_failing",
                    &[("target", "graph"), ("check", "connection")],
                    Want::Eq(0.0),
                ),
                (
                    "dbwarden_neo4j_nodes",
                    &[("target", "graph")],
                    Want::Eq(1234.0),
                ),
                ("dbwarden_up", &[("target", "pg")], Want::Eq(1.0)),
            ],
        )?;
        Ok(text)
    })
    .await
}

/// Waits until `graph` is down with errors of `kind` only (since `before`,
/// the error counts when the fault began), and checks that the daemon and
/// its PostgreSQL target carry on meanwhile.
async fn assert_down_with(daemon: &Daemon, kind: &str, before: &BTreeMap<String, f64>, what: &str) {
    let text = wait_until(DEADLINE, &format!("{what}: graph down"), async || {
        let text = daemon.try_metrics().await?;
        expect_metrics(
            &text,
            &[
                ("dbwarden_up", &[("target", "graph")], Want::Eq(0.0)),
                (
                    "dbwarden_check_failing",
                    &[("target", "graph"), ("check", "connection")],
                    Want::Eq(1.0),
                ),
                ("dbwarden_neo4j_info", &[("target", "graph")], Want::Absent),
                ("dbwarden_neo4j_nodes", &[("target", "graph")], Want::Absent),
            ],
        )?;
        let errors = poll_errors(&text, "graph");
        if errors.values().sum::<f64>() > before.values().sum::<f64>() {
            Ok(text)
        } else {
            Err(format!("poll errors by kind: {errors:?}"))
        }
    })
    .await;
    // Every new error is of the expected kind.
    let errors = poll_errors(&text, "graph");
    let new: BTreeMap<&str, f64> = errors
        .iter()
        .map(|(k, n)| (k.as_str(), n - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    assert!(
        new.len() == 1 && new.contains_key(kind),
        "{what}: want poll errors of kind {kind} only; new errors by kind: {new:?}"
    );
    // The other Neo4j checks are unknown while down: no failing sample.
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_check_failing",
            &[("target", "graph"), ("check", "slow_queries")]
        ),
        None,
        "{what}"
    );
    let st = status_of(&daemon.status().await, "graph");
    assert_eq!(st["up"], false, "{what}: {st}");
    assert_eq!(st["last_error"]["kind"], kind, "{what}: {st}");
    assert!(
        !st["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(PASSWORD),
        "{what}: the error message shows the password: {st}"
    );

    // The daemon carries on: PostgreSQL keeps being polled and stays up.
    let pg_polls = require(&text, "dbwarden_polls_total", &[("target", "pg")]).expect("pg polls");
    wait_until(
        DEADLINE,
        &format!("{what}: pg polled twice more while graph is down"),
        async || {
            let text = daemon.try_metrics().await?;
            let n = require(&text, "dbwarden_polls_total", &[("target", "pg")])?;
            let up = require(&text, "dbwarden_up", &[("target", "pg")])?;
            let graph_up = require(&text, "dbwarden_up", &[("target", "graph")])?;
            if n >= pg_polls + 2.0 && up == 1.0 && graph_up == 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "pg polls {n} (from {pg_polls}), pg up {up}, graph up {graph_up}"
                ))
            }
        },
    )
    .await;
    match daemon.get("/livez").await {
        Ok((200, _)) => {}
        other => panic!("{what}: /livez {other:?}"),
    }
}

fn populated_server(persona: Persona) -> BoltServer {
    let state = ServerState::shared();
    populate(&mut support::bolt::state::lock(&state));
    BoltServer::start(persona, state)
}

/// Injects `fault` into a running, healthy target, expects it down with
/// `kind`, clears the fault and expects it back.
async fn fault_while_up(persona: Persona, fault: Fault, kind: &str) {
    let what = format!("{fault:?}");
    let server = populated_server(persona);
    let pw = password_file(PASSWORD);
    let daemon = daemon_with_pg(&server.uri(), pw.path()).await;
    let text = wait_up(&daemon, &format!("{what}: graph up before the fault")).await;
    let before = poll_errors(&text, "graph");
    server.state().inject(fault);
    assert_down_with(&daemon, kind, &before, &what).await;
    server.state().clear_faults();
    wait_up(&daemon, &format!("{what}: graph up again after the fault")).await;
    daemon.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_takes_the_target_down_as_auth_and_it_recovers() {
    let server = populated_server(Persona::neo4j_5());
    server.state().inject(Fault::AuthFailure);
    let pw = password_file(PASSWORD);
    let daemon = daemon_with_pg(&server.uri(), pw.path()).await;
    assert_down_with(&daemon, "auth", &BTreeMap::new(), "AuthFailure").await;
    server.state().clear_faults();
    wait_up(&daemon, "graph up once the server accepts the credentials").await;
    // A wrong password is the same kind: the server knows another one.
    daemon.stop().await;
    let wrong = password_file("not-the-password");
    let daemon = daemon_with_pg(&server.uri(), wrong.path()).await;
    assert_down_with(&daemon, "auth", &BTreeMap::new(), "wrong password").await;
    daemon.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_procedure_takes_the_target_down_as_query_and_it_recovers() {
    fault_while_up(
        Persona::neo4j_4_3(),
        Fault::ProcedureNotFound {
            procedure: "dbms.listQueries".into(),
        },
        "query",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_takes_the_target_down_as_timeout_and_it_recovers() {
    fault_while_up(
        Persona::neo4j_4_4(),
        Fault::Slow {
            delay: Duration::from_secs(2),
        },
        "timeout",
    )
    .await;
}

/// neo4rs bounds every read by its connection timeout (dbwarden's
/// `connect_timeout`) and reports it as `ConnectionTimedOut`, which
/// `classify` files under `connect`. A server that accepted the connection
/// and is slow to answer a statement is a `timeout`, whichever of the two
/// timers fires first: `connect` would send the operator to the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_statement_is_a_timeout_even_when_connect_timeout_is_shorter() {
    let server = populated_server(Persona::neo4j_5());
    let pw = password_file(PASSWORD);
    let toml = format!(
        "{}{}",
        fast_target("pg", LOCAL_PG, ""),
        neo4j_target("graph", &server.uri(), pw.path())
            .replace("connect_timeout = \"1s\"", "connect_timeout = \"100ms\"")
    );
    let daemon = Daemon::start(&toml).await;
    let text = wait_up(&daemon, "graph up before the slow statement").await;
    let before = poll_errors(&text, "graph");
    // Only the transaction listing is slow: the connection and the other
    // statements answer at once.
    server.state().inject(Fault::SlowMatching {
        contains: "SHOW TRANSACTIONS".into(),
        delay: Duration::from_secs(2),
    });
    assert_down_with(&daemon, "timeout", &before, "a slow SHOW TRANSACTIONS").await;
    server.state().clear_faults();
    wait_up(&daemon, "graph up again").await;
    daemon.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_stream_takes_the_target_down_as_io_and_it_recovers() {
    fault_while_up(
        Persona::neo4j_5(),
        Fault::DropMidStream { after_records: 2 },
        "io",
    )
    .await;
}

/// A port that accepts TCP connections but never answers the Bolt handshake
/// (a hung server, a proxy with nothing behind it): the poll is abandoned at
/// `poll_timeout`; once a server answers there, the target comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_takes_the_target_down_as_timeout_and_it_recovers() {
    let hole = Blackhole::new();
    let port: u16 = hole
        .url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("the blackhole's port");
    let pw = password_file(PASSWORD);
    let daemon = daemon_with_pg(&format!("bolt://127.0.0.1:{port}"), pw.path()).await;
    assert_down_with(&daemon, "timeout", &BTreeMap::new(), "a silent server").await;
    drop(hole);
    let state = ServerState::shared();
    populate(&mut support::bolt::state::lock(&state));
    let server = BoltServer::start_on(port, Persona::neo4j_5(), state);
    wait_up(&daemon, "graph up once a server answers on its port").await;
    daemon.stop().await;
    server.shutdown().await;
}

/// The same silent server with a `connect_timeout` shorter than
/// `poll_timeout`: the first statement of a new connection (connect,
/// handshake, log in) is bounded by `connect_timeout`, so it is a `connect`
/// failure and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_past_connect_timeout_is_a_connect_failure() {
    let hole = Blackhole::new();
    let port: u16 = hole
        .url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("the blackhole's port");
    let pw = password_file(PASSWORD);
    let toml = format!(
        "{}{}",
        fast_target("pg", LOCAL_PG, ""),
        neo4j_target("graph", &format!("bolt://127.0.0.1:{port}"), pw.path())
            .replace("connect_timeout = \"1s\"", "connect_timeout = \"100ms\"")
    );
    let daemon = Daemon::start(&toml).await;
    assert_down_with(&daemon, "connect", &BTreeMap::new(), "a silent server").await;
    let status = daemon.status().await;
    let graph = status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == "graph"))
        .cloned()
        .expect("graph in the status");
    let message = graph["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not connect and log in within connect_timeout 100ms"),
        "{graph}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_takes_the_target_down_as_connect_and_it_recovers() {
    let port = free_port();
    let pw = password_file(PASSWORD);
    let daemon = daemon_with_pg(&format!("bolt://127.0.0.1:{port}"), pw.path()).await;
    assert_down_with(&daemon, "connect", &BTreeMap::new(), "nothing listening").await;
    let state = ServerState::shared();
    populate(&mut support::bolt::state::lock(&state));
    let server = BoltServer::start_on(port, Persona::neo4j_4_4(), state);
    wait_up(&daemon, "graph up once a server listens on its port").await;
    daemon.stop().await;
    server.shutdown().await;
}

// ------------------------------------------------------------------ the binary

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbwarden_check_reports_a_neo4j_target_and_exits_by_its_checks() {
    let state = ServerState::shared();
    {
        let mut s = support::bolt::state::lock(&state);
        s.indexes = vec![Index::online("person_name", "Person", "name")];
        s.node_count = 10;
        s.relationship_count = 5;
        s.transactions = vec![
            Tx::running(
                "neo4j-transaction-12",
                "query-22",
                "bob",
                "MATCH (m) RETURN m",
            )
            .elapsed_ms(500),
        ];
    }
    let server = BoltServer::start(Persona::neo4j_5(), state);
    let pw = password_file(PASSWORD);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "check.toml",
        &neo4j_target("graph", &server.uri(), pw.path()),
    );

    // Healthy: every check passes, exit 0.
    let out = dbwarden_check(&file, "text");
    assert_eq!(out.status.code(), Some(0), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "target graph (neo4j)",
        "Neo4j 5.26.0 community",
        "neo4j: transactions Running 1",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    for check in CHECKS {
        assert!(text.contains(check), "check {check} not in\n{text}");
    }
    assert!(!text.contains(PASSWORD), "the password printed:\n{text}");
    let out = dbwarden_check(&file, "json");
    assert_eq!(out.status.code(), Some(0), "{}", describe_output(&out));
    let report: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}\n{}", describe_output(&out)));
    assert_eq!(report["ok"], true, "{report}");
    let target = &report["targets"][0];
    assert_eq!(target["kind"], "neo4j");
    assert_eq!(target["up"], true);
    assert_eq!(target["neo4j"]["version"], "5.26.0");
    let checks = target["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), CHECKS.len(), "{checks:?}");
    for c in checks {
        assert_eq!(c["status"], "pass", "{c}");
    }

    // A 93 s transaction: slow_queries fails, exit 1.
    server.state().transactions.push(
        Tx::running(
            "neo4j-transaction-11",
            "query-21",
            "alice",
            "MATCH (n) RETURN n",
        )
        .elapsed_ms(93_000),
    );
    let out = dbwarden_check(&file, "json");
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let report: Json = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    let checks = report["targets"][0]["checks"].as_array().expect("checks");
    let slow = checks
        .iter()
        .find(|c| c["check"] == "slow_queries")
        .expect("slow_queries");
    assert_eq!(slow["status"], "fail", "{slow}");
    assert_eq!(slow["value"], 93.0, "{slow}");
    for c in checks.iter().filter(|c| c["check"] != "slow_queries") {
        assert_eq!(c["status"], "pass", "{c}");
    }
    let out = dbwarden_check(&file, "text");
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("slow_queries") && l.to_lowercase().contains("fail")),
        "no failing slow_queries line in\n{text}"
    );

    // Down: exit 1 with the error kind.
    server.state().inject(Fault::AuthFailure);
    let out = dbwarden_check(&file, "json");
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let report: Json = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["targets"][0]["up"], false);
    assert_eq!(report["targets"][0]["error"]["kind"], "auth", "{report}");
    server.shutdown().await;
}

#[test]
fn dbwarden_config_prints_a_neo4j_target_without_its_password_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "n30-pw-Vb93-do-not-print";
    let pw = write(dir.path(), "neo4j.pw", secret);
    let file = write(
        dir.path(),
        "dbwarden.toml",
        &neo4j_target("graph", "bolt://graph.example.com:7687", &pw),
    );
    let out = run_dbwarden(&["config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe_output(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "[neo4j.graph]",
        "bolt://graph.example.com:7687",
        "password_file",
        "slow_queries",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
    }
    assert!(
        !describe_output(&out).contains(secret),
        "the password printed:\n{}",
        describe_output(&out)
    );
    let again = write(dir.path(), "printed.toml", &printed);
    let out2 = run_dbwarden(&["config", "--config", again.to_str().unwrap()]);
    assert_eq!(out2.status.code(), Some(0), "{}", describe_output(&out2));
    assert_eq!(String::from_utf8_lossy(&out2.stdout), printed);
    let config = Config::from_toml_with_env(&printed, std::iter::empty())
        .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
    assert_eq!(config.neo4j.len(), 1);
    assert_eq!(
        config.neo4j[0].target.uri(),
        "bolt://graph.example.com:7687"
    );
    assert_eq!(
        config.neo4j[0]
            .target
            .password
            .as_ref()
            .map(|p| p.expose().to_string()),
        Some(secret.to_string())
    );
}

/// The example's Neo4j target is commented out (the example test supplies
/// no Neo4j password); uncommented, with its password variable set, it is
/// valid and means what its comments say.
#[test]
fn the_example_configs_neo4j_target_is_valid_uncommented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dbwarden.example.toml");
    let text = std::fs::read_to_string(path).expect("read the example");
    let mut block = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("# [neo4j.") {
            inside = true;
        } else if inside && !line.starts_with('#') {
            inside = false;
        }
        if inside {
            let l = line
                .strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or(line);
            block.push_str(l);
            block.push('\n');
        }
    }
    assert!(
        block.contains("[neo4j.graph]") && block.contains("password_env"),
        "no commented [neo4j.graph] target with password_env in {path}:\n{block}"
    );
    let env = [("NEO4J_PASSWORD".to_string(), "example-pw".to_string())];
    let config = Config::from_toml_with_env(&block, env)
        .unwrap_or_else(|e| panic!("the example's Neo4j target is invalid: {e}\n{block}"));
    assert_eq!(config.neo4j.len(), 1);
    let t = &config.neo4j[0];
    assert_eq!(t.target.name, "graph");
    assert_eq!(
        t.target.password.as_ref().map(|p| p.expose().to_string()),
        Some("example-pw".into())
    );
    assert_eq!(t.target.databases(), ["neo4j", "movies"]);
    assert_eq!(t.target.settings.poll_interval(), Duration::from_secs(10));
    assert_eq!(t.thresholds.slow_queries.value, 30.0);
    assert_eq!(t.thresholds.slow_queries.hold, Duration::from_secs(60));
    assert_eq!(t.thresholds.node_count.min, Some(1000));
    assert_eq!(t.thresholds.relationship_count.max, Some(100_000_000));
}

/// The PostgreSQL-only settings and checks are refused on a Neo4j target,
/// each at its key path, as docs/configuration.md says.
#[test]
fn postgres_only_settings_are_rejected_on_a_neo4j_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "dbwarden.toml",
        "[neo4j.graph]\nuri = \"bolt://graph.example.com:7687\"\n\
         statement_timeout = \"1s\"\nmax_connections = 3\nsslmode = \"require\"\n\
         [neo4j.graph.thresholds.long_running_query]\nmax = \"5m\"\n",
    );
    let out = run_dbwarden(&["config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "neo4j.graph.statement_timeout",
        "neo4j.graph.max_connections",
        "neo4j.graph.sslmode",
        "neo4j.graph.thresholds.long_running_query",
    ] {
        assert!(err.contains(path), "{path} not reported in\n{err}");
    }
}
