//! Cypher probes (`[neo4j.<target>.probes.<name>]`) over real Bolt, against
//! the Bolt test server's 4.3, 4.4 and 5.x personas: the daemon runs them
//! between polls on its one connection, in a read-access session with the
//! probe's timeout as the server's transaction timeout, in each of their
//! databases; their columns become metrics and their checks check results,
//! and a probe that writes, runs too long or returns what cannot be
//! exported fails alone. `dbwarden check` runs them once.
//!
//! What this proves and what it does not: the Bolt exchange (access mode,
//! `tx_timeout`, `db`, datetimes as Bolt 4.x encodes them) is real, and the
//! server's answers have Neo4j's shapes and error codes; the Cypher itself
//! is not executed (the server answers scripted rows).

mod support;

use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use support::bolt::{BoltServer, Canned, Fault, Persona, ServerState, Value};
use support::*;

const DEADLINE: Duration = Duration::from_secs(30);

const ENTITIES: &str = "MATCH (n:Entity) RETURN count(n) AS rows, max(n.created_at) AS newest";
const PER_DB: &str = "MATCH (n) RETURN labels(n)[0] AS label, count(n) AS n";
const WRITER: &str = "CREATE (n:Probe) RETURN 1 AS one";
const SLOW: &str = "MATCH (n:Slow) RETURN count(n) AS n";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn config(uri: &str, password_file: &std::path::Path) -> String {
    format!(
        r#"
[neo4j.graph]
uri = "{uri}"
password_file = "{pf}"
databases = ["neo4j"]
poll_interval = "1s"
poll_timeout = "500ms"
connect_timeout = "1s"
backoff_max = "1s"

[neo4j.graph.probes.entities]
cypher = "{ENTITIES}"
interval = "1s"
timeout = "150ms"
checks.rows = {{ min = 5 }}
checks.newest = {{ max_age = "10m" }}
checks.duration = {{ max = "5s" }}

[neo4j.graph.probes.per_db]
cypher = "{PER_DB}"
databases = ["neo4j", "movies"]
labels = ["label"]
interval = "1s"
timeout = "150ms"

[neo4j.graph.probes.writer]
cypher = "{WRITER}"
interval = "1s"
timeout = "150ms"

[neo4j.graph.probes.slow]
cypher = "{SLOW}"
interval = "1s"
timeout = "100ms"
"#,
        pf = password_file.display(),
    )
}

fn script(state: &mut ServerState, rows: i64, newest: Value) {
    state.canned.retain(|c| c.query != ENTITIES);
    state.canned.push(Canned::rows(
        ENTITIES,
        &["rows", "newest"],
        vec![vec![Value::Integer(rows), newest]],
    ));
}

fn server(persona: Persona) -> BoltServer {
    let state = ServerState::shared();
    {
        let mut s = support::bolt::state::lock(&state);
        s.node_count = 10;
        s.relationship_count = 10;
        // A datetime with an offset: the age must come out in UTC.
        script(&mut s, 3, Value::datetime(unix_now() - 60, 3600));
        s.canned.push(
            Canned::rows(
                PER_DB,
                &["label", "n"],
                vec![vec!["Person".into(), Value::Integer(5)]],
            )
            .in_database("neo4j"),
        );
        s.canned.push(
            Canned::rows(
                PER_DB,
                &["label", "n"],
                vec![vec!["Movie".into(), Value::Integer(7)]],
            )
            .in_database("movies"),
        );
        s.canned.push(Canned::write(WRITER));
        s.canned
            .push(Canned::rows(SLOW, &["n"], vec![vec![Value::Integer(1)]]));
        s.faults.push(Fault::SlowMatching {
            contains: "n:Slow".into(),
            delay: Duration::from_secs(5),
        });
    }
    BoltServer::start(persona, state)
}

/// A probe check of `graph` in a status answer: (status, detail).
fn probe_check(status: &Json, check: &str) -> Option<(String, String)> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == "graph")?["probes"]
        .as_array()?
        .iter()
        .flat_map(|p| p["checks"].as_array().into_iter().flatten())
        .find(|c| c["check"] == check)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn wait_check(d: &Daemon, check: &str, want: &str) -> String {
    wait_until(DEADLINE, &format!("{check} {want}"), async || {
        let s = d.status().await;
        match probe_check(&s, check) {
            Some((st, detail)) if st == want => Ok(detail),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn cypher_probes(persona: Persona) {
    let server = server(persona);
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "secret\n").unwrap();
    let toml = config(&server.uri(), pw.path());
    let d = Daemon::start(&toml).await;

    // Three entities: the count check fails, the age check passes.
    let detail = wait_check(&d, "probe:entities:rows", "fail").await;
    assert!(detail.contains('3'), "{detail}");
    wait_check(&d, "probe:entities:newest", "pass").await;
    wait_check(&d, "probe:entities:duration", "pass").await;
    // The write is refused by the read-access session, the slow statement
    // stopped by the server at the probe's timeout: each fails alone.
    let detail = wait_check(&d, "probe:writer", "fail").await;
    assert!(
        detail.contains("read_only") && detail.contains("read-access session"),
        "{detail}"
    );
    let detail = wait_check(&d, "probe:slow", "fail").await;
    assert!(detail.contains("timeout"), "{detail}");
    wait_check(&d, "probe:per_db", "pass").await;

    let text = wait_until(DEADLINE, "the probes' metrics", async || {
        let text = d.try_metrics().await?;
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
                    "dbwarden_probe_entities_rows",
                    &[("target", "graph")],
                    Want::Eq(3.0),
                ),
                (
                    "dbwarden_probe_per_db_n",
                    &[
                        ("target", "graph"),
                        ("database", "neo4j"),
                        ("label", "Person"),
                    ],
                    Want::Eq(5.0),
                ),
                (
                    "dbwarden_probe_per_db_n",
                    &[
                        ("target", "graph"),
                        ("database", "movies"),
                        ("label", "Movie"),
                    ],
                    Want::Eq(7.0),
                ),
                (
                    "dbwarden_probe_failures_total",
                    &[
                        ("target", "graph"),
                        ("probe", "writer"),
                        ("kind", "read_only"),
                    ],
                    Want::Ge(1.0),
                ),
                (
                    "dbwarden_probe_failures_total",
                    &[("target", "graph"), ("probe", "slow"), ("kind", "timeout")],
                    Want::Ge(1.0),
                ),
                (
                    "dbwarden_probe_up",
                    &[("target", "graph"), ("probe", "entities")],
                    Want::Eq(1.0),
                ),
            ],
        )?;
        Ok(text)
    })
    .await;
    // The datetime came with a +01:00 offset: its value is the UTC instant.
    let newest = metric_value(
        &text,
        "dbwarden_probe_entities_newest",
        &[("target", "graph")],
    )
    .expect("the newest column");
    let expected = (unix_now() - 60) as f64;
    assert!((newest - expected).abs() < 5.0, "{newest} vs {expected}");

    // Every probe statement ran in a read-access session, with the probe's
    // timeout, tagged as dbwarden's, in its database.
    {
        let state = server.state();
        let probes: Vec<_> = [ENTITIES, PER_DB, WRITER, SLOW]
            .iter()
            .flat_map(|q| state.statements_containing(q))
            .collect();
        assert!(probes.len() >= 4, "{probes:#?}");
        for s in &probes {
            assert_eq!(
                s.extra.get("mode").and_then(Value::as_str),
                Some("r"),
                "{s:#?}"
            );
            let timeout = s.extra.get("tx_timeout").and_then(Value::as_int);
            assert!(matches!(timeout, Some(100 | 150)), "{s:#?}");
            let app = s
                .extra
                .get("tx_metadata")
                .and_then(|m| m.get("app"))
                .and_then(Value::as_str);
            assert_eq!(app, Some("dbwarden"), "{s:#?}");
        }
        let dbs: std::collections::BTreeSet<_> = state
            .statements_containing(PER_DB)
            .iter()
            .filter_map(|s| {
                s.extra
                    .get("db")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(dbs, ["movies".to_string(), "neo4j".to_string()].into());
    }

    // Counts move and data goes stale: the checks follow.
    script(
        &mut server.state(),
        12,
        Value::local_datetime(unix_now() - 3600),
    );
    wait_check(&d, "probe:entities:rows", "pass").await;
    let detail = wait_check(&d, "probe:entities:newest", "fail").await;
    assert!(detail.contains("old") || detail.contains("age"), "{detail}");

    // `dbwarden check` runs every probe once and reports their checks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dbwarden.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = blocking(|| dbwarden_check(&path, "json"));
    let report: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", describe_output(&out)));
    let target = &report["targets"][0];
    let checks: Vec<(String, String)> = target["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["checks"].as_array().into_iter().flatten())
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (check, status) in [
        ("probe:entities:rows", "pass"),
        ("probe:entities:newest", "fail"),
        ("probe:writer", "fail"),
        ("probe:slow", "fail"),
        ("probe:per_db", "pass"),
    ] {
        assert!(
            checks.contains(&(check.to_string(), status.to_string())),
            "{check} {status} not in {checks:?}: {}",
            describe_output(&out)
        );
    }
    assert_eq!(out.status.code(), Some(1), "failing checks: exit 1");

    d.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cypher_probes_on_neo4j_4_3() {
    cypher_probes(Persona::neo4j_4_3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cypher_probes_on_neo4j_4_4() {
    cypher_probes(Persona::neo4j_4_4()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cypher_probes_on_neo4j_5() {
    cypher_probes(Persona::neo4j_5()).await;
}

/// Mistakes in a Cypher probe are named at their keys.
#[test]
fn cypher_probe_mistakes_are_named() {
    use dbwarden::config::{Config, ConfigError};
    let base = "[neo4j.graph]\nuri = \"bolt://db:7687\"\ndatabases = [\"neo4j\", \"movies\"]\n";
    let err = |probes: &str| -> Vec<(String, String)> {
        match Config::from_toml_with_env(&format!("{base}{probes}"), Vec::new()) {
            Err(ConfigError::Invalid(issues)) => {
                issues.into_iter().map(|i| (i.path, i.message)).collect()
            }
            other => panic!("expected issues, got {other:?}"),
        }
    };
    let has = |issues: &[(String, String)], path: &str, needle: &str| {
        assert!(
            issues.iter().any(|(p, m)| p == path && m.contains(needle)),
            "{path}: {needle:?} not in {issues:#?}"
        );
    };
    let i = err("[neo4j.graph.probes.a]\nsql = \"SELECT 1\"\n");
    has(&i, "neo4j.graph.probes.a.sql", "unknown key `sql`");
    let i = err("[neo4j.graph.probes.a]\ncypher = \"RETURN 1 AS one\"\nlock_timeout = \"1s\"\n");
    has(
        &i,
        "neo4j.graph.probes.a.lock_timeout",
        "unknown key `lock_timeout`",
    );
    let i = err(
        "[neo4j.graph.probes.a]\ncypher = \"RETURN 'x' AS database\"\nlabels = [\"database\"]\n",
    );
    has(
        &i,
        "neo4j.graph.probes.a.labels",
        "\"database\" is the label dbwarden adds",
    );
    let i = err("[neo4j.graph.probes.a]\ncypher = \"RETURN 1 AS one\"\ndatabases = [\"x\"]\n");
    has(
        &i,
        "neo4j.graph.probes.a.databases",
        "invalid database name \"x\"",
    );
    let i = err("[neo4j.graph.probes.a]\ninterval = \"1m\"\n");
    has(
        &i,
        "neo4j.graph.probes.a.cypher",
        "missing: the probe's Cypher statement",
    );
    let i = err(
        "[postgres.main]\nurl = \"postgres://a@db/app\"\n[postgres.main.probes.b]\ncypher = \"RETURN 1\"\n",
    );
    has(&i, "postgres.main.probes.b.cypher", "unknown key `cypher`");
}
