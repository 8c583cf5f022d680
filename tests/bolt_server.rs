//! The Bolt test server (tests/support/bolt) against the real neo4rs 0.9
//! client over TCP: every supported statement on each persona, the
//! decoded row shapes, tx_metadata, paging, a Duration structure, each
//! fault, and version negotiation.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query, Row, query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::bolt::persona::{self, *};
use support::bolt::{
    BoltServer, ClusterMember, Db, Fault, Index, KillMethod, Persona, ServerState, Tx, Value,
};

const USER: &str = "neo4j";
const PASSWORD: &str = "secret";

/// Every test finishes well within this; a hang fails instead of stalling.
const DEADLINE: Duration = Duration::from_secs(20);

fn personas() -> [(&'static str, Persona); 3] {
    [
        ("4.3", Persona::neo4j_4_3()),
        ("4.4", Persona::neo4j_4_4()),
        ("5", Persona::neo4j_5()),
    ]
}

fn start(persona: Persona) -> BoltServer {
    BoltServer::start(persona, ServerState::shared())
}

fn graph(server: &BoltServer) -> Graph {
    Graph::new(server.uri(), USER, PASSWORD).expect("neo4rs config")
}

/// Runs `q` and collects every row.
async fn try_rows(graph: &Graph, q: impl Into<Query>) -> Result<Vec<Row>, neo4rs::Error> {
    let q = q.into();
    tokio::time::timeout(DEADLINE, async {
        let mut stream = graph.execute(q).await?;
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await? {
            rows.push(row);
        }
        Ok(rows)
    })
    .await
    .expect("the query hung")
}

async fn rows(graph: &Graph, q: impl Into<Query>) -> Vec<Row> {
    let q = q.into();
    let text = q.query().to_string();
    try_rows(graph, q)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The Neo4j error code of a failed query.
async fn error_code(graph: &Graph, q: impl Into<Query>) -> String {
    match try_rows(graph, q).await {
        Err(neo4rs::Error::Neo4j(e)) => e.code().to_string(),
        other => panic!("expected a Neo4j error, got {other:?}"),
    }
}

fn get<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> T {
    row.get::<T>(column)
        .unwrap_or_else(|e| panic!("column {column} of {row:?}: {e}"))
}

fn some_transactions() -> Vec<Tx> {
    vec![
        Tx::running(
            "neo4j-transaction-42",
            "query-614",
            "alice",
            "MATCH (n) RETURN n",
        )
        .status("Running")
        .elapsed_ms(93_000)
        .metadata([("app", "etl")]),
        Tx::idle("neo4j-transaction-43", "bob")
            .status("Blocked")
            .elapsed_ms(1_500),
        Tx::running(
            "movies-transaction-7",
            "query-9",
            "carol",
            "CALL apoc.periodic.iterate(...)",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_ping_on_every_persona() {
    for (name, persona) in personas() {
        let expected_version = persona.version.clone();
        let server = start(persona);
        let g = graph(&server);
        let r = rows(&g, COMPONENTS).await;
        assert_eq!(r.len(), 1, "{name}");
        assert_eq!(get::<String>(&r[0], "name"), "Neo4j Kernel");
        assert_eq!(get::<Vec<String>>(&r[0], "versions"), [expected_version]);
        assert_eq!(get::<String>(&r[0], "edition"), "community");
        let r = rows(&g, PING).await;
        assert_eq!(get::<i64>(&r[0], "1"), 1, "{name}");

        let s = server.state();
        let c = &s.connections[0];
        assert_eq!(c.bolt_version, Some((4, 4)), "neo4rs 0.9 gets Bolt 4.4");
        assert_eq!(c.principal.as_deref(), Some(USER));
        assert!(c.user_agent.as_deref().unwrap_or("").starts_with("neo4rs"));
        assert!(c.authenticated);
        let hello = &s.requests[0];
        assert_eq!(hello.message, "HELLO");
        assert_eq!(
            hello.fields[0].get("scheme").and_then(Value::as_str),
            Some("basic")
        );
        assert_eq!(
            hello.fields[0].get("credentials").and_then(Value::as_str),
            Some("<redacted>")
        );
    }
    let enterprise = start(Persona::neo4j_5().enterprise());
    let r = rows(&graph(&enterprise), COMPONENTS).await;
    assert_eq!(get::<String>(&r[0], "edition"), "enterprise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_transactions_shapes_by_version() {
    for (name, persona) in personas() {
        let server = start(persona);
        {
            let mut s = server.state();
            s.transactions = some_transactions();
            s.show_own_transaction = false;
        }
        let g = graph(&server);
        if name == "4.3" {
            assert_eq!(error_code(&g, SHOW_TRANSACTIONS).await, SYNTAX_ERROR);
            assert_eq!(
                error_code(&g, SHOW_TRANSACTIONS_DEFAULT).await,
                SYNTAX_ERROR
            );
            continue;
        }
        let r = rows(&g, SHOW_TRANSACTIONS).await;
        assert_eq!(r.len(), 3, "{name}");
        assert_eq!(get::<String>(&r[0], "database"), "neo4j");
        assert_eq!(
            get::<String>(&r[0], "transactionId"),
            "neo4j-transaction-42"
        );
        assert_eq!(get::<String>(&r[0], "currentQueryId"), "query-614");
        assert_eq!(get::<String>(&r[0], "username"), "alice");
        assert_eq!(get::<String>(&r[0], "currentQuery"), "MATCH (n) RETURN n");
        assert_eq!(get::<String>(&r[0], "status"), "Running");
        assert_eq!(get::<i64>(&r[0], "elapsedMs"), 93_000);
        assert_eq!(
            get::<HashMap<String, String>>(&r[0], "metaData"),
            HashMap::from([("app".to_string(), "etl".to_string())])
        );
        assert_eq!(get::<String>(&r[1], "status"), "Blocked");
        assert!(get::<HashMap<String, String>>(&r[1], "metaData").is_empty());
        // No current query: "" on 4.4, null on 5.x. Option<String> reads both.
        let idle_query = get::<Option<String>>(&r[1], "currentQuery");
        let idle_query_id = get::<Option<String>>(&r[1], "currentQueryId");
        if name == "4.4" {
            assert_eq!(idle_query.as_deref(), Some(""));
            assert_eq!(idle_query_id.as_deref(), Some(""));
        } else {
            assert_eq!(idle_query, None);
            assert_eq!(idle_query_id, None);
        }
        assert_eq!(get::<String>(&r[2], "database"), "movies");

        // The re-check by id.
        let one = rows(
            &g,
            query(SHOW_TRANSACTION).param("id", "neo4j-transaction-43"),
        )
        .await;
        assert_eq!(one.len(), 1);
        assert_eq!(get::<String>(&one[0], "username"), "bob");
        let none = rows(
            &g,
            query(SHOW_TRANSACTION).param("id", "neo4j-transaction-1"),
        )
        .await;
        assert!(none.is_empty());
        assert_eq!(
            error_code(&g, SHOW_TRANSACTION).await,
            persona::PARAMETER_MISSING
        );

        // Default columns: elapsedTime is a real Duration.
        let d = rows(&g, SHOW_TRANSACTIONS_DEFAULT).await;
        assert_eq!(d.len(), 3);
        assert_eq!(
            get::<Duration>(&d[0], "elapsedTime"),
            Duration::from_millis(93_000)
        );
        assert_eq!(
            get::<Duration>(&d[1], "elapsedTime"),
            Duration::from_millis(1_500)
        );
        assert_eq!(get::<String>(&d[0], "connectionId"), "bolt-1");
        assert_eq!(d[0].get::<i64>("allocatedBytes").is_ok(), name == "4.4");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_metadata_reaches_the_server_and_tags_the_own_transaction() {
    let server = start(Persona::neo4j_5());
    server.state().transactions = some_transactions();
    let g = graph(&server);
    // neo4rs 0.9 (without its unstable features) has no tx_metadata setter:
    // it goes into RUN's extra map under its Bolt name.
    let tagged = query(SHOW_TRANSACTIONS).extra(
        "tx_metadata",
        HashMap::from([("app", "dbwarden"), ("purpose", "observe")]),
    );
    let r = rows(&g, tagged).await;
    assert_eq!(r.len(), 4, "three transactions and the statement's own");
    let own = &r[3];
    assert_eq!(
        get::<HashMap<String, String>>(own, "metaData"),
        HashMap::from([
            ("app".to_string(), "dbwarden".to_string()),
            ("purpose".to_string(), "observe".to_string())
        ])
    );
    assert_eq!(get::<String>(own, "currentQuery"), SHOW_TRANSACTIONS);
    assert_eq!(get::<String>(own, "username"), USER);
    assert_eq!(get::<i64>(own, "elapsedMs"), 0);

    let s = server.state();
    let st = s.statements.last().expect("a statement");
    assert_eq!(st.query, SHOW_TRANSACTIONS);
    let meta = st.tx_metadata().expect("tx_metadata received");
    assert_eq!(meta.get("app").and_then(Value::as_str), Some("dbwarden"));
    assert_eq!(meta.get("purpose").and_then(Value::as_str), Some("observe"));
    // neo4rs 0.9 always sends the access mode; `db` only when configured.
    assert_eq!(st.extra.get("mode").and_then(Value::as_str), Some("w"));
    assert_eq!(st.extra.get("db"), None);
    assert_eq!(get::<String>(own, "transactionId"), st.transaction_id);
    assert_eq!(get::<String>(own, "currentQueryId"), st.query_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_database_are_received() {
    let server = start(Persona::neo4j_4_4());
    let config = ConfigBuilder::default()
        .uri(server.uri())
        .user(USER)
        .password(PASSWORD)
        .db("neo4j")
        .build()
        .unwrap();
    let g = Graph::connect(config).unwrap();
    let r = rows(
        &g,
        query(TERMINATE_TRANSACTIONS).param("ids", vec!["neo4j-transaction-1"]),
    )
    .await;
    assert_eq!(r.len(), 1);
    let s = server.state();
    let st = &s.statements[0];
    assert_eq!(st.extra.get("db").and_then(Value::as_str), Some("neo4j"));
    assert_eq!(st.param("ids"), Some(&Value::list(["neo4j-transaction-1"])));
    assert_eq!(st.tx_metadata(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_transactions_on_4_4_and_5() {
    for (name, persona) in personas() {
        let server = start(persona);
        server.state().transactions = some_transactions();
        let g = graph(&server);
        let q = query(TERMINATE_TRANSACTIONS)
            .param("ids", vec!["neo4j-transaction-42", "neo4j-transaction-99"]);
        if name == "4.3" {
            assert_eq!(error_code(&g, q).await, SYNTAX_ERROR);
            assert_eq!(server.state().transactions.len(), 3);
            continue;
        }
        let r = rows(&g, q).await;
        assert_eq!(r.len(), 2, "{name}");
        assert_eq!(
            get::<String>(&r[0], "transactionId"),
            "neo4j-transaction-42"
        );
        assert_eq!(
            get::<Option<String>>(&r[0], "username").as_deref(),
            Some("alice")
        );
        assert_eq!(get::<String>(&r[0], "message"), "Transaction terminated.");
        assert_eq!(
            get::<String>(&r[1], "transactionId"),
            "neo4j-transaction-99"
        );
        assert_eq!(get::<Option<String>>(&r[1], "username"), None);
        assert_eq!(get::<String>(&r[1], "message"), "Transaction not found.");

        // A single string is accepted too; Graph::run pipelines RUN with
        // DISCARD instead of PULL.
        tokio::time::timeout(
            DEADLINE,
            g.run(query(TERMINATE_TRANSACTIONS).param("ids", "movies-transaction-7")),
        )
        .await
        .expect("run hung")
        .expect("TERMINATE via Graph::run");
        assert_eq!(server.state().count_requests("DISCARD"), 1);

        let s = server.state();
        let left: Vec<&str> = s.transactions.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(left, ["neo4j-transaction-43"]);
        let killed: Vec<(&str, KillMethod)> = s
            .terminated
            .iter()
            .map(|t| (t.tx.id.as_str(), t.via))
            .collect();
        assert_eq!(
            killed,
            [
                ("neo4j-transaction-42", KillMethod::TerminateTransactions),
                ("movies-transaction-7", KillMethod::TerminateTransactions)
            ]
        );
        assert_eq!(s.terminated[0].tx.query_id.as_deref(), Some("query-614"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_kill_queries_before_5() {
    for (name, persona) in personas() {
        let server = start(persona);
        {
            let mut s = server.state();
            s.transactions = some_transactions();
            s.show_own_transaction = false;
        }
        let g = graph(&server);
        if name == "5" {
            assert_eq!(error_code(&g, LIST_QUERIES).await, PROCEDURE_NOT_FOUND);
            let q = query(KILL_QUERY).param("id", "query-614");
            assert_eq!(error_code(&g, q).await, PROCEDURE_NOT_FOUND);
            assert!(server.state().terminated.is_empty());
            continue;
        }
        let r = rows(&g, LIST_QUERIES).await;
        assert_eq!(r.len(), 2, "{name}: only transactions running a query");
        assert_eq!(get::<String>(&r[0], "queryId"), "query-614");
        assert_eq!(get::<String>(&r[0], "username"), "alice");
        assert_eq!(get::<String>(&r[0], "query"), "MATCH (n) RETURN n");
        assert_eq!(get::<String>(&r[0], "status"), "running");
        assert_eq!(get::<i64>(&r[0], "elapsedTimeMillis"), 93_000);
        assert_eq!(
            get::<HashMap<String, String>>(&r[0], "metaData")["app"],
            "etl"
        );
        assert_eq!(get::<String>(&r[1], "database"), "movies");
        assert!(r[0].get::<String>("transactionId").is_err());

        let with_tx = try_rows(&g, LIST_QUERIES_WITH_TRANSACTION).await;
        if name == "4.3" {
            assert!(matches!(with_tx, Err(neo4rs::Error::Neo4j(e)) if e.code() == SYNTAX_ERROR));
        } else {
            let r = with_tx.unwrap();
            assert_eq!(
                get::<String>(&r[0], "transactionId"),
                "neo4j-transaction-42"
            );
        }

        let r = rows(&g, query(KILL_QUERY).param("id", "query-614")).await;
        assert_eq!(get::<String>(&r[0], "queryId"), "query-614");
        assert_eq!(get::<String>(&r[0], "username"), "alice");
        assert_eq!(get::<String>(&r[0], "message"), "Query found");
        let r = rows(&g, query(KILL_QUERY_BARE).param("id", "query-614")).await;
        assert_eq!(
            get::<String>(&r[0], "message"),
            "No Query found with this id"
        );
        let r = rows(&g, query(KILL_QUERIES).param("ids", vec!["query-9"])).await;
        assert_eq!(get::<String>(&r[0], "message"), "Query found");

        let s = server.state();
        assert_eq!(s.transactions.len(), 1);
        assert_eq!(s.terminated.len(), 2);
        assert!(s.terminated.iter().all(|t| t.via == KillMethod::KillQuery));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_by_version() {
    let indexes = vec![
        Index::online("person_name", "Person", "name"),
        Index::populating("movie_title", "Movie", "title", 42.5),
        Index::failed("acted_role", "ACTED_IN", "role", "boom")
            .on_relationships()
            .with_type("TEXT"),
    ];
    for (name, persona) in personas() {
        let server = start(persona);
        server.state().indexes = indexes.clone();
        let g = graph(&server);
        let (r, default_type) = match name {
            "4.3" => {
                assert_eq!(error_code(&g, SHOW_INDEXES).await, SYNTAX_ERROR);
                let bare = rows(&g, DB_INDEXES_BARE).await;
                assert_eq!(get::<String>(&bare[0], "uniqueness"), "NONUNIQUE");
                assert_eq!(get::<i64>(&bare[0], "id"), 1);
                (rows(&g, DB_INDEXES).await, "BTREE")
            }
            "4.4" => {
                // Deprecated but present on 4.4.
                assert_eq!(rows(&g, DB_INDEXES).await.len(), 3);
                (rows(&g, SHOW_INDEXES).await, "BTREE")
            }
            _ => {
                assert_eq!(error_code(&g, DB_INDEXES).await, PROCEDURE_NOT_FOUND);
                assert_eq!(error_code(&g, SHOW_INDEXES).await, SYNTAX_ERROR);
                (rows(&g, SHOW_INDEXES_5).await, "RANGE")
            }
        };
        assert_eq!(r.len(), 3, "{name}");
        assert_eq!(get::<String>(&r[0], "name"), "person_name");
        assert_eq!(get::<String>(&r[0], "state"), "ONLINE");
        assert_eq!(get::<f64>(&r[0], "populationPercent"), 100.0);
        assert_eq!(get::<String>(&r[0], "type"), default_type);
        assert_eq!(get::<String>(&r[0], "entityType"), "NODE");
        assert_eq!(get::<Vec<String>>(&r[0], "labelsOrTypes"), ["Person"]);
        assert_eq!(get::<Vec<String>>(&r[0], "properties"), ["name"]);
        assert_eq!(get::<String>(&r[1], "state"), "POPULATING");
        assert_eq!(get::<f64>(&r[1], "populationPercent"), 42.5);
        assert_eq!(get::<String>(&r[2], "state"), "FAILED");
        assert_eq!(get::<String>(&r[2], "type"), "TEXT");
        assert_eq!(get::<String>(&r[2], "entityType"), "RELATIONSHIP");
        if name == "4.3" {
            assert!(r[2].get::<String>("failureMessage").is_err());
        } else {
            assert_eq!(get::<String>(&r[0], "failureMessage"), "");
            assert_eq!(get::<String>(&r[2], "failureMessage"), "boom");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts() {
    for (_, persona) in personas() {
        let server = start(persona);
        {
            let mut s = server.state();
            s.node_count = 123_456_789_012;
            s.relationship_count = 7;
        }
        let g = graph(&server);
        let r = rows(&g, NODE_COUNT).await;
        assert_eq!(get::<i64>(&r[0], "nodes"), 123_456_789_012);
        let r = rows(&g, RELATIONSHIP_COUNT).await;
        assert_eq!(get::<i64>(&r[0], "relationships"), 7);
        // Layout does not matter, the text does.
        let r = rows(&g, "MATCH (n)\n    RETURN count(n)   AS nodes;").await;
        assert_eq!(get::<i64>(&r[0], "nodes"), 123_456_789_012);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_and_cluster_topology() {
    for (name, persona) in personas() {
        let server = start(persona);
        server
            .state()
            .databases
            .push(Db::new("movies", "online", "offline"));
        let g = graph(&server);
        let r = rows(&g, SHOW_DATABASES).await;
        assert_eq!(r.len(), 3, "{name}");
        assert_eq!(get::<String>(&r[0], "name"), "neo4j");
        assert_eq!(get::<String>(&r[2], "requestedStatus"), "online");
        assert_eq!(get::<String>(&r[2], "currentStatus"), "offline");
        let role = if name == "5" { "primary" } else { "standalone" };
        assert_eq!(get::<String>(&r[0], "role"), role);
        if name == "5" {
            // A standalone 5.x lists itself.
            let r = rows(&g, SHOW_SERVERS).await;
            assert_eq!(r.len(), 1);
            assert_eq!(get::<String>(&r[0], "health"), "Available");
            assert_eq!(error_code(&g, CLUSTER_OVERVIEW).await, PROCEDURE_NOT_FOUND);
        } else {
            assert_eq!(error_code(&g, SHOW_SERVERS).await, SYNTAX_ERROR);
            assert_eq!(error_code(&g, CLUSTER_OVERVIEW).await, PROCEDURE_NOT_FOUND);
        }
    }

    let members = vec![
        ClusterMember::new("core-1", "core1:7687", "LEADER"),
        ClusterMember::new("core-2", "core2:7687", "FOLLOWER").health("Unavailable"),
    ];
    let server = start(Persona::neo4j_4_4().clustered());
    {
        let mut s = server.state();
        s.cluster_members = members.clone();
        s.databases = vec![Db::online("neo4j").role("leader")];
    }
    let g = graph(&server);
    let r = rows(&g, CLUSTER_OVERVIEW).await;
    assert_eq!(r.len(), 2);
    assert_eq!(get::<String>(&r[0], "id"), "core-1");
    assert_eq!(
        get::<Vec<String>>(&r[0], "addresses"),
        ["bolt://core1:7687"]
    );
    assert_eq!(
        get::<HashMap<String, String>>(&r[1], "databases"),
        HashMap::from([
            ("neo4j".to_string(), "FOLLOWER".to_string()),
            ("system".to_string(), "FOLLOWER".to_string())
        ])
    );
    assert!(get::<Vec<String>>(&r[0], "groups").is_empty());
    let r = rows(&g, SHOW_DATABASES).await;
    assert_eq!(get::<String>(&r[0], "role"), "leader");
    let r = rows(&graph(&server), COMPONENTS).await;
    assert_eq!(get::<String>(&r[0], "edition"), "enterprise");

    let server = start(Persona::neo4j_5().clustered());
    server.state().cluster_members = members;
    let r = rows(&graph(&server), SHOW_SERVERS).await;
    assert_eq!(r.len(), 2);
    assert_eq!(get::<String>(&r[1], "name"), "core-2");
    assert_eq!(get::<String>(&r[1], "address"), "core2:7687");
    assert_eq!(get::<String>(&r[1], "state"), "Enabled");
    assert_eq!(get::<String>(&r[1], "health"), "Unavailable");
    assert_eq!(get::<Vec<String>>(&r[1], "hosting"), ["neo4j", "system"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statement_fails_then_the_connection_is_reset_and_reused() {
    let server = start(Persona::neo4j_4_4());
    let g = graph(&server);
    let err = try_rows(&g, "MATCH (n) DETACH DELETE n").await.unwrap_err();
    match err {
        neo4rs::Error::Neo4j(e) => {
            assert_eq!(e.code(), SYNTAX_ERROR);
            assert!(
                e.message().contains("MATCH (n) DETACH DELETE n"),
                "{}",
                e.message()
            );
        }
        other => panic!("{other:?}"),
    }
    rows(&g, PING).await;
    let s = server.state();
    assert_eq!(s.connections.len(), 1, "the failed connection was reused");
    // RUN failed, the pipelined PULL was IGNORED, the pool's RESET cleared it.
    let names: Vec<&str> = s.requests.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(names, ["HELLO", "RUN", "PULL", "RESET", "RUN", "PULL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_structure_decodes() {
    for (_, persona) in personas() {
        let server = start(persona);
        let g = graph(&server);
        let r = rows(&g, "RETURN duration({seconds: 1, nanoseconds: 5}) AS d").await;
        assert_eq!(get::<Duration>(&r[0], "d"), Duration::new(1, 5));
        let r = rows(&g, "RETURN duration({days: 1, seconds: 2}) AS d").await;
        assert_eq!(get::<Duration>(&r[0], "d"), Duration::from_secs(86_402));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_over_1000_transactions_with_a_small_fetch_size() {
    let server = start(Persona::neo4j_4_4());
    server.state().transactions = (0..1000)
        .map(|i| {
            Tx::running(
                &format!("neo4j-transaction-{i}"),
                &format!("query-{i}"),
                "app",
                "MATCH (n) RETURN n",
            )
            .elapsed_ms(i)
        })
        .collect();
    let config = ConfigBuilder::default()
        .uri(server.uri())
        .user(USER)
        .password(PASSWORD)
        .fetch_size(64)
        .build()
        .unwrap();
    let g = Graph::connect(config).unwrap();
    let q = query(SHOW_TRANSACTIONS).extra("tx_metadata", HashMap::from([("app", "dbwarden")]));
    let r = rows(&g, q).await;
    assert_eq!(r.len(), 1001, "1000 transactions and the statement's own");
    for (i, row) in r.iter().take(1000).enumerate() {
        assert_eq!(
            get::<String>(row, "transactionId"),
            format!("neo4j-transaction-{i}")
        );
        assert_eq!(get::<i64>(row, "elapsedMs"), i as i64);
    }
    let own: HashMap<String, String> = get(&r[1000], "metaData");
    assert_eq!(own["app"], "dbwarden");

    // Stopping early: the rest is discarded and the connection reused.
    let mut stream = g.execute(query(SHOW_TRANSACTIONS)).await.unwrap();
    assert!(stream.next().await.unwrap().is_some());
    stream.finish().await.expect("DISCARD the rest");
    rows(&g, PING).await;

    let s = server.state();
    assert_eq!(s.connections.len(), 1);
    let discard = s.requests.iter().find(|r| r.message == "DISCARD").unwrap();
    assert_eq!(discard.fields[0].get("n").and_then(Value::as_int), Some(-1));
    let pulls: Vec<i64> = s
        .requests
        .iter()
        .filter(|r| r.message == "PULL")
        .map(|r| r.fields[0].get("n").and_then(Value::as_int).unwrap())
        .collect();
    // 16 pages of the 1001 rows, one page of the stream stopped early.
    assert_eq!(
        pulls.len(),
        1001usize.div_ceil(64) + 1 + 1,
        "one PULL per page (+ PING)"
    );
    assert!(pulls.iter().all(|&n| n == 64), "{pulls:?}");
    assert!(
        s.requests
            .iter()
            .filter(|r| r.message == "PULL")
            .all(|r| r.fields[0].get("qid").and_then(Value::as_int) == Some(-1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_transactions_use_qids_and_begin_extra() {
    let server = start(Persona::neo4j_5());
    let g = graph(&server);
    let mut txn = g.start_txn().await.expect("BEGIN");
    let mut stream = txn.execute(query(PING)).await.expect("RUN");
    let row = stream
        .next(txn.handle())
        .await
        .expect("PULL")
        .expect("a row");
    assert_eq!(get::<i64>(&row, "1"), 1);
    assert!(stream.next(txn.handle()).await.unwrap().is_none());
    txn.commit().await.expect("COMMIT");

    let s = server.state();
    let names: Vec<&str> = s.requests.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(names, ["HELLO", "BEGIN", "RUN", "PULL", "COMMIT"]);
    let pull = &s.requests[3].fields[0];
    assert_eq!(pull.get("qid").and_then(Value::as_int), Some(0));
    assert!(s.statements[0].begin_extra.is_some());
}

// ------------------------------------------------------------------ faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_fault_and_wrong_password() {
    let server = start(Persona::neo4j_4_4());
    server.state().inject(Fault::AuthFailure);
    match try_rows(&graph(&server), PING).await {
        Err(neo4rs::Error::AuthenticationError(m)) => {
            assert_eq!(
                m,
                "The client is unauthorized due to authentication failure."
            )
        }
        other => panic!("{other:?}"),
    }
    server.state().clear_faults();
    rows(&graph(&server), PING).await;

    let wrong = Graph::new(server.uri(), USER, "not-the-password").unwrap();
    assert!(matches!(
        try_rows(&wrong, PING).await,
        Err(neo4rs::Error::AuthenticationError(_))
    ));
    let s = server.state();
    let auth: Vec<bool> = s.connections.iter().map(|c| c.authenticated).collect();
    assert_eq!(auth, [false, true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedure_not_found_fault() {
    let server = start(Persona::neo4j_4_4());
    let g = graph(&server);
    assert_eq!(rows(&g, LIST_QUERIES).await.len(), 1, "the own query");
    server.state().inject(Fault::ProcedureNotFound {
        procedure: "dbms.listQueries".into(),
    });
    match try_rows(&g, LIST_QUERIES).await {
        Err(neo4rs::Error::Neo4j(e)) => {
            assert_eq!(e.code(), PROCEDURE_NOT_FOUND);
            assert!(e.message().contains("`dbms.listQueries`"));
        }
        other => panic!("{other:?}"),
    }
    // Other statements are unaffected.
    rows(&g, COMPONENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_beyond_the_client_timeout_then_a_new_connection_is_served() {
    let server = start(Persona::neo4j_5());
    let g = graph(&server);
    rows(&g, PING).await;
    server.state().inject(Fault::Slow {
        delay: Duration::from_secs(3),
    });
    let started = std::time::Instant::now();
    let timed_out = tokio::time::timeout(Duration::from_millis(300), rows(&g, PING)).await;
    assert!(timed_out.is_err(), "the client-side timeout fires");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.state().clear_faults();
    // The interrupted connection cannot be recycled: the pool opens another.
    let r = rows(&g, COMPONENTS).await;
    assert_eq!(r.len(), 1);
    {
        let s = server.state();
        assert_eq!(s.connections.len(), 2);
        assert_eq!(
            s.statements_containing("RETURN 1").len(),
            2,
            "the slow one arrived"
        );
    }

    // Only matching statements can be slowed down.
    server.state().inject(Fault::SlowMatching {
        contains: "SHOW TRANSACTIONS".into(),
        delay: Duration::from_secs(3),
    });
    rows(&g, PING).await;
    let show = tokio::time::timeout(Duration::from_millis(300), rows(&g, SHOW_TRANSACTIONS)).await;
    assert!(show.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mid_stream_then_recovery() {
    let server = start(Persona::neo4j_4_4());
    server.state().transactions = some_transactions();
    server
        .state()
        .inject(Fault::DropMidStream { after_records: 2 });
    let g = graph(&server);
    match try_rows(&g, SHOW_TRANSACTIONS).await {
        Err(neo4rs::Error::IOError { detail }) => {
            assert_eq!(detail.kind(), std::io::ErrorKind::UnexpectedEof)
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    server.state().clear_faults();
    let r = rows(&g, SHOW_TRANSACTIONS).await;
    assert_eq!(r.len(), 4);
    assert_eq!(
        server.state().connections.len(),
        2,
        "the broken connection was replaced"
    );
    support::wait_until(
        DEADLINE,
        "the dropped connection's task to end",
        async || match server.state().active_connections {
            1 => Ok(()),
            n => Err(format!("{n} active connections")),
        },
    )
    .await;
}

// ----------------------------------------------------- version negotiation

/// Sends the handshake with these proposals; returns the answer and the
/// socket.
async fn handshake(server: &BoltServer, proposals: [[u8; 4]; 4]) -> ([u8; 4], TcpStream) {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut hello = vec![0x60, 0x60, 0xB0, 0x17];
    for p in proposals {
        hello.extend_from_slice(&p);
    }
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 4];
    s.read_exact(&mut answer).await.unwrap();
    (answer, s)
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_negotiation() {
    let server = start(Persona::neo4j_5());
    let none = [0u8; 4];

    let (answer, mut s) = handshake(&server, [[0, 0, 0, 5], none, none, none]).await;
    assert_eq!(answer, [0, 0, 0, 0], "Bolt 5.0 only: no common version");
    assert!(closed(&mut s).await);

    let (answer, mut s) = handshake(
        &server,
        [[0, 0, 4, 4], [0, 0, 3, 4], [0, 0, 1, 4], [0, 0, 0, 4]],
    )
    .await;
    assert_eq!(answer, [0, 0, 4, 4]);
    // Speak Bolt over the raw socket: HELLO, then a RUN that fails, then an
    // IGNORED PULL, then RESET.
    let hello = Value::structure(
        0x01,
        vec![Value::map([
            ("user_agent", "raw/1"),
            ("scheme", "basic"),
            ("principal", USER),
            ("credentials", PASSWORD),
        ])],
    );
    let run = Value::structure(
        0x10,
        vec!["nope".into(), Value::empty_map(), Value::empty_map()],
    );
    let pull = Value::structure(0x3F, vec![Value::map([("n", -1)])]);
    let reset = Value::structure(0x0F, vec![]);
    for m in [&hello, &run, &pull, &reset] {
        s.write_all(&support::bolt::server::frame(
            &support::bolt::packstream::encode(m),
        ))
        .await
        .unwrap();
    }
    let mut tags = Vec::new();
    for _ in 0..4 {
        let bytes = support::bolt::server::read_message(&mut s)
            .await
            .unwrap()
            .expect("a response");
        match support::bolt::packstream::decode(&bytes).unwrap() {
            Value::Struct(st) => tags.push(st.tag),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(tags, [0x70, 0x7F, 0x7E, 0x70]);

    let (answer, mut s) = handshake(&server, [[0, 0, 1, 4], [0, 0, 0, 4], none, none]).await;
    assert_eq!(answer, [0, 0, 1, 4]);
    assert!(!closed(&mut s).await, "a negotiated connection stays open");

    let (answer, _) = handshake(&server, [[0, 2, 3, 4], none, none, none]).await;
    assert_eq!(answer, [0, 0, 1, 4], "the range 4.3..4.1 covers 4.1");

    let versions: Vec<_> = server
        .state()
        .connections
        .iter()
        .map(|c| c.bolt_version)
        .collect();
    assert_eq!(versions, [None, Some((4, 4)), Some((4, 1)), Some((4, 1))]);

    // Not Bolt at all: closed without an answer.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo4rs_speaks_bolt_4_1_to_a_server_without_4_4() {
    let server = start(Persona::neo4j_4_4().with_bolt_versions(&[(4, 1), (4, 0)]));
    let r = rows(&graph(&server), COMPONENTS).await;
    assert_eq!(r.len(), 1);
    assert_eq!(server.state().connections[0].bolt_version, Some((4, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_port_and_connections() {
    let server = start(Persona::neo4j_4_4());
    let addr = server.addr;
    let g = graph(&server);
    rows(&g, PING).await;
    let state = server.state.clone();
    server.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed"
    );
    assert_eq!(support::bolt::state::lock(&state).active_connections, 0);
    assert!(try_rows(&g, PING).await.is_err());
}
