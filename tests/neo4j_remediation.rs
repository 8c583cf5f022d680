//! Neo4j remediation against the Bolt test server over real TCP: the daemon
//! terminates exactly the transactions its policy selects (TERMINATE
//! TRANSACTIONS on 4.4+, dbms.killQuery before), re-checks each right
//! before acting, writes the intent before the kill, and stays within its
//! mode and budget. The re-check's outcomes are also driven directly.

#![cfg(feature = "neo4j")]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbwarden::config::Config;
use dbwarden::observe::neo4j::{Generation, Neo4jClient, Neo4jTransaction};
use dbwarden::remediate::audit::{AuditLog, AuditRecord, Decision};
use dbwarden::remediate::neo4j::{Neo4jOutcome, terminate};
use dbwarden::remediate::neo4j_policy::{Neo4jCandidate, Neo4jConditions};

use support::bolt::{BoltServer, KillMethod, Persona, ServerState, Tx};
use support::{Daemon, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);
const TARGET: &str = "graph";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("password"), "secret\n").expect("password file");
        Setup { dir }
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// A Neo4j target on `server`, and a `[remediation]` section in `mode`
    /// writing to `audit`, with `per_target` actions per window and the
    /// Neo4j policies in `policies` verbatim.
    fn config(
        &self,
        server: &BoltServer,
        mode: &str,
        audit: &Path,
        per_target: u32,
        policies: &str,
    ) -> String {
        let d = self.dir.path();
        format!(
            r#"
[neo4j.{TARGET}]
uri = "{uri}"
user = "neo4j"
password_file = "{password}"
poll_interval = "300ms"
poll_timeout = "300ms"
connect_timeout = "1s"
backoff_max = "1s"

[remediation]
mode = "{mode}"
instance = "test"
audit_file = "{audit}"
state_dir = "{state}"
pacing = "0s"

[remediation.budget]
per_target = {per_target}
global = 100
window = "1h"

{policies}
"#,
            uri = server.uri(),
            password = d.join("password").display(),
            audit = audit.display(),
            state = d.display(),
        )
    }
}

const SLOW_POLICY: &str = r#"
[remediation.neo4j_policies.slow]
when.running_for = "5s"
when.ignore_users = ["etl"]
"#;

/// The world: one slow transaction to kill, and transactions the policy
/// must leave alone for each of its reasons.
fn world(state: &mut ServerState) {
    state.transactions = vec![
        Tx::running(
            "neo4j-transaction-42",
            "query-614",
            "alice",
            "MATCH (n) RETURN n",
        )
        .elapsed_ms(93_000),
        Tx::running(
            "neo4j-transaction-43",
            "query-615",
            "bob",
            "MATCH (m) RETURN m",
        )
        .elapsed_ms(500),
        Tx::running(
            "neo4j-transaction-44",
            "query-616",
            "etl",
            "CALL apoc.load.csv(...)",
        )
        .elapsed_ms(900_000),
        Tx::running(
            "system-transaction-7",
            "query-617",
            "admin",
            "CREATE USER x SET PASSWORD 'p'",
        )
        .database("system")
        .elapsed_ms(900_000),
    ];
}

fn records(path: &Path) -> Vec<AuditRecord> {
    AuditLog::read_all(path).expect("read the audit file").0
}

fn transaction_of(r: &AuditRecord) -> &dbwarden::remediate::audit::AuditTransaction {
    r.transaction
        .as_ref()
        .unwrap_or_else(|| panic!("not a Neo4j record: {r:?}"))
}

async fn polls(daemon: &Daemon) -> u64 {
    daemon.status().await["targets"][0]["polls_completed"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the daemon has finished `n` more polls (and so as many
/// remediation cycles had their chance to act).
async fn more_polls(daemon: &Daemon, n: u64) {
    let from = polls(daemon).await;
    wait_until(DEADLINE, "more polls", async || {
        let now = polls(daemon).await;
        if now >= from + n {
            Ok(())
        } else {
            Err(format!("{now} polls, waiting for {}", from + n))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_terminates_exactly_the_selected_transaction_on_each_version() {
    for (name, persona, method, killed_id) in [
        (
            "4.3",
            Persona::neo4j_4_3(),
            KillMethod::KillQuery,
            "query-614",
        ),
        (
            "4.4",
            Persona::neo4j_4_4(),
            KillMethod::TerminateTransactions,
            "neo4j-transaction-42",
        ),
        (
            "5",
            Persona::neo4j_5(),
            KillMethod::TerminateTransactions,
            "neo4j-transaction-42",
        ),
    ] {
        let setup = Setup::new();
        let server = BoltServer::start(persona, ServerState::shared());
        world(&mut server.state());
        let daemon =
            Daemon::start(&setup.config(&server, "enforce", &setup.audit(), 10, SLOW_POLICY)).await;
        wait_until(
            DEADLINE,
            "the slow transaction to be terminated",
            async || match server.state().terminated.len() {
                0 => Err("nothing terminated yet".to_string()),
                _ => Ok(()),
            },
        )
        .await;
        // Several more cycles: nothing else is ever terminated.
        more_polls(&daemon, 3).await;
        {
            let s = server.state();
            let killed: Vec<(&str, KillMethod)> = s
                .terminated
                .iter()
                .map(|t| (t.tx.username.as_str(), t.via))
                .collect();
            assert_eq!(killed, [("alice", method)], "{name}");
            let left: Vec<&str> = s.transactions.iter().map(|t| t.username.as_str()).collect();
            assert_eq!(left, ["bob", "etl", "admin"], "{name}");
        }
        // The intent was on disk before the kill, the outcome after, with
        // the transaction as the decision saw it.
        let recs = records(&setup.audit());
        let decisions: Vec<Decision> = recs.iter().map(|r| r.decision).collect();
        assert_eq!(decisions, [Decision::Intent, Decision::Acted], "{name}");
        assert_eq!(recs[0].action_id, recs[1].action_id);
        let t = transaction_of(&recs[1]);
        assert_eq!(t.id, killed_id, "{name}");
        assert_eq!(
            (t.username.as_str(), t.database.as_str()),
            ("alice", "neo4j")
        );
        assert_eq!(t.elapsed_ms, 93_000);
        assert_eq!(t.query, "MATCH (n) RETURN n");
        assert_eq!(recs[1].outcome, "terminated");
        assert_eq!(recs[1].reason, "running 1m 33s (>= 5s)");
        // The re-check ran on the actor's connection right before the kill.
        {
            let s = server.state();
            let by = s.terminated[0].by_connection;
            let on_actor: Vec<&str> = s
                .statements
                .iter()
                .filter(|st| st.connection == by)
                .map(|st| st.query.as_str())
                .collect();
            let recheck = if method == KillMethod::KillQuery {
                dbwarden::observe::neo4j::statements::LIST_QUERIES
            } else {
                dbwarden::observe::neo4j::statements::SHOW_TRANSACTION
            };
            let kill_at = on_actor.len() - 1;
            assert!(
                kill_at >= 1 && on_actor[kill_at - 1] == recheck,
                "{name}: {on_actor:?}"
            );
            // Every statement dbwarden sent is tagged as its own.
            for st in &s.statements {
                let app = st
                    .tx_metadata()
                    .and_then(|m| m.get("app").and_then(|v| v.as_str().map(String::from)));
                assert_eq!(app.as_deref(), Some("dbwarden"), "{name}: {}", st.query);
            }
        }
        let metrics = daemon.metrics().await;
        let acted = support::metric_value(
            &metrics,
            "dbwarden_remediation_actions_total",
            &[("target", TARGET), ("policy", "slow"), ("outcome", "acted")],
        );
        assert_eq!(acted, Some(1.0), "{name}");
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_once_and_kills_nothing() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    world(&mut server.state());
    let daemon =
        Daemon::start(&setup.config(&server, "dry-run", &setup.audit(), 10, SLOW_POLICY)).await;
    wait_until(DEADLINE, "a would-act record", async || {
        match records(&setup.audit()).len() {
            0 => Err("no record yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    more_polls(&daemon, 3).await;
    let recs = records(&setup.audit());
    assert_eq!(recs.len(), 1, "reported once, not every cycle: {recs:#?}");
    assert_eq!(recs[0].decision, Decision::WouldAct);
    assert_eq!(transaction_of(&recs[0]).username, "alice");
    assert!(server.state().terminated.is_empty());

    // The live snapshot, saved and replayed offline, explains the same decision.
    let (code, body) = daemon
        .get("/api/v1/status?snapshot=true")
        .await
        .expect("status");
    assert_eq!(code, 200);
    let saved = setup.dir.path().join("snapshot.json");
    std::fs::write(&saved, body).unwrap();
    let config = setup.dir.path().join("dbwarden.toml");
    std::fs::write(
        &config,
        setup.config(&server, "dry-run", &setup.audit(), 10, SLOW_POLICY),
    )
    .unwrap();
    let out = support::run_dbwarden(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--snapshot",
        saved.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        support::describe_output(&out)
    );
    assert!(
        text.contains("WOULD TERMINATE neo4j-transaction-42 user \"alice\""),
        "{text}"
    );
    assert!(
        text.contains(
            "PROTECTED system-transaction-7 user \"admin\" db \"system\": SystemDatabase"
        ),
        "{text}"
    );
    assert!(
        text.contains("would terminate 1 transaction(s) this cycle"),
        "{text}"
    );
    assert!(server.state().statements_containing("TERMINATE").is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_kills_and_an_unwritable_audit_stops_them() {
    // Three slow transactions, a budget of two.
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_4_4(), ServerState::shared());
    server.state().transactions = (0..3)
        .map(|i| {
            Tx::running(
                &format!("neo4j-transaction-{i}"),
                &format!("query-{i}"),
                "alice",
                "MATCH (n) RETURN n",
            )
            .elapsed_ms(60_000 + i)
        })
        .collect();
    let daemon =
        Daemon::start(&setup.config(&server, "enforce", &setup.audit(), 2, SLOW_POLICY)).await;
    wait_until(DEADLINE, "two terminations", async || {
        match server.state().terminated.len() {
            2 => Ok(()),
            n => Err(format!("{n} terminated")),
        }
    })
    .await;
    wait_until(
        DEADLINE,
        "the budget to be reported exhausted",
        async || {
            let m = daemon.metrics().await;
            match support::metric_value(
                &m,
                "dbwarden_remediation_actions_total",
                &[("target", TARGET), ("outcome", "budget_exhausted")],
            ) {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("budget_exhausted {other:?}")),
            }
        },
    )
    .await;
    more_polls(&daemon, 3).await;
    {
        let s = server.state();
        assert_eq!(s.terminated.len(), 2);
        // Longest-running first.
        let ids: Vec<&str> = s.terminated.iter().map(|t| t.tx.id.as_str()).collect();
        assert_eq!(ids, ["neo4j-transaction-2", "neo4j-transaction-1"]);
    }
    daemon.stop().await;

    // An audit file that cannot be written: no intent, no kill.
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    world(&mut server.state());
    let daemon =
        Daemon::start(&setup.config(&server, "enforce", Path::new("/dev/full"), 10, SLOW_POLICY))
            .await;
    wait_until(DEADLINE, "the audit failure to be counted", async || {
        let m = daemon.metrics().await;
        match support::metric_value(
            &m,
            "dbwarden_remediation_actions_total",
            &[("target", TARGET), ("outcome", "audit_failed")],
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("audit_failed {other:?}")),
        }
    })
    .await;
    more_polls(&daemon, 2).await;
    assert!(server.state().terminated.is_empty());
    assert!(server.state().statements_containing("TERMINATE").is_empty());
    daemon.stop().await;
}

// ------------------------------------------------------ the re-check itself

fn target(server: &BoltServer, dir: &Path) -> dbwarden::observe::neo4j::Neo4jTarget {
    std::fs::write(dir.join("password"), "secret").unwrap();
    let toml = format!(
        "[neo4j.{TARGET}]\nuri = \"{}\"\npassword_file = \"{}\"\n",
        server.uri(),
        dir.join("password").display()
    );
    Config::from_toml_with_env(&toml, std::iter::empty())
        .expect("valid config")
        .neo4j
        .remove(0)
        .target
}

fn candidate(id: &str, user: &str, query: &str, elapsed_ms: i64) -> Neo4jCandidate {
    Neo4jCandidate {
        policy: "slow".into(),
        reason: "test".into(),
        transaction: Neo4jTransaction {
            database: "neo4j".into(),
            id: id.into(),
            query_id: None,
            username: user.into(),
            query: Some(query.into()),
            status: "Running".into(),
            elapsed_ms,
            own: false,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_skips_what_ended_or_changed_and_reads_the_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    let client = Neo4jClient::new(&target(&server, dir.path()), "remediate").expect("client");
    let conditions = Neo4jConditions {
        running_for: Some(Duration::from_secs(5)),
        match_query: Some(dbwarden::settings::Pattern(
            regex::Regex::new("MATCH").unwrap(),
        )),
        ..Neo4jConditions::default()
    };
    let q = "MATCH (n) RETURN n";
    let run = async |c: &Neo4jCandidate| {
        tokio::time::timeout(
            DEADLINE,
            terminate(&client, Generation::Show5, c, &conditions),
        )
        .await
        .expect("terminate hung")
    };

    // Gone between the poll and the kill.
    assert_eq!(
        run(&candidate("neo4j-transaction-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Gone
    );

    // The id now belongs to a transaction of another user: not killed.
    server.state().transactions =
        vec![Tx::running("neo4j-transaction-1", "query-1", "mallory", q).elapsed_ms(61_000)];
    assert_eq!(
        run(&candidate("neo4j-transaction-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Changed("its user changed from \"alice\" to \"mallory\"".into())
    );
    // Its query changed and the policy conditions on the query.
    server.state().transactions = vec![
        Tx::running("neo4j-transaction-1", "query-2", "alice", "CREATE (n)").elapsed_ms(61_000),
    ];
    assert!(matches!(
        run(&candidate("neo4j-transaction-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Changed(why) if why == "its query changed"
    ));
    // Now ending on its own.
    server.state().transactions = vec![
        Tx::running("neo4j-transaction-1", "query-1", "alice", q)
            .status("Terminated")
            .elapsed_ms(61_000),
    ];
    assert!(matches!(
        run(&candidate("neo4j-transaction-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Changed(why) if why == "it is already Terminated"
    ));
    assert!(server.state().terminated.is_empty());
    assert!(server.state().statements_containing("TERMINATE").is_empty());

    // Still there and still matching: terminated, from the server's message.
    server.state().transactions =
        vec![Tx::running("neo4j-transaction-1", "query-1", "alice", q).elapsed_ms(61_000)];
    assert_eq!(
        run(&candidate("neo4j-transaction-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Terminated
    );
    assert_eq!(server.state().terminated.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_4_4_the_recheck_reads_list_queries_and_kills_by_query_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = BoltServer::start(Persona::neo4j_4_3(), ServerState::shared());
    let client = Neo4jClient::new(&target(&server, dir.path()), "remediate").expect("client");
    let conditions = Neo4jConditions {
        running_for: Some(Duration::from_secs(5)),
        ..Neo4jConditions::default()
    };
    let q = "MATCH (n) RETURN n";
    server.state().transactions = vec![
        Tx::running("neo4j-transaction-1", "query-1", "alice", q).elapsed_ms(61_000),
        Tx::running("neo4j-transaction-2", "query-2", "bob", q).elapsed_ms(1_000),
    ];
    let run = async |c: &Neo4jCandidate| {
        tokio::time::timeout(
            DEADLINE,
            terminate(&client, Generation::Procedures, c, &conditions),
        )
        .await
        .expect("terminate hung")
    };
    // No longer over running_for by the server's own account: not killed.
    let young = candidate("query-2", "bob", q, 10_000);
    assert!(matches!(run(&young).await, Neo4jOutcome::Changed(_)));
    assert_eq!(
        run(&candidate("query-9", "alice", q, 60_000)).await,
        Neo4jOutcome::Gone
    );
    assert_eq!(
        run(&candidate("query-1", "alice", q, 60_000)).await,
        Neo4jOutcome::Terminated
    );
    let s = server.state();
    let killed: Vec<(&str, KillMethod)> = s
        .terminated
        .iter()
        .map(|t| (t.tx.id.as_str(), t.via))
        .collect();
    assert_eq!(killed, [("neo4j-transaction-1", KillMethod::KillQuery)]);
}

/// The example configuration's commented Neo4j target and Neo4j policy,
/// uncommented into the rest of the example, load and mean what their
/// comments say.
#[test]
fn the_example_neo4j_policy_is_valid_uncommented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dbwarden.example.toml");
    let text = std::fs::read_to_string(path).expect("read the example");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("# [neo4j.") || line.starts_with("# [remediation.neo4j_policies.") {
            inside = true;
        } else if inside && !line.starts_with('#') {
            inside = false;
        }
        if inside {
            let l = line
                .strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or(line);
            out.push_str(l);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let env = [
        ("PG_PRIMARY_PASSWORD", "p1"),
        ("PG_STANDBY_PASSWORD", "p2"),
        ("NEO4J_PASSWORD", "p3"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::from_toml_with_env(&out, env)
        .unwrap_or_else(|e| panic!("the example, uncommented, is invalid: {e}"));
    let rem = config.remediation.expect("[remediation]");
    let p = &rem.neo4j_policies[0];
    assert_eq!(p.name, "runbook-slow-queries");
    assert!(p.targets.is_none());
    assert_eq!(p.max_per_cycle, 5);
    assert_eq!(
        p.only_while_failing,
        [dbwarden::evaluate::CheckName::Builtin(
            dbwarden::evaluate::CheckId::SlowQueries
        )]
    );
    assert_eq!(p.conditions.running_for, Some(Duration::from_secs(300)));
    assert_eq!(p.conditions.statuses, ["Running"]);
    assert_eq!(p.conditions.ignore_users, ["backup"]);
    let ignore = p.conditions.ignore_query.as_ref().expect("ignore_query");
    assert!(ignore.is_match("call apoc.periodic.iterate(...)"));
    assert!(!ignore.is_match("MATCH (n) RETURN n"));
}
