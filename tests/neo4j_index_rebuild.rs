//! The Neo4j index rebuild against the Bolt test server over real TCP: in
//! enforce mode the daemon drops and creates again exactly the FAILED index
//! (the exact statements the server received), follows it to ONLINE (the
//! population metric moves, the index check passes again); dry-run sends
//! nothing and records the statements; the pause switch, `failed_for`,
//! constraint-backed indexes, one index at a time and Neo4j 4.3 are each
//! respected; the re-check right before the DROP refuses an index that
//! changed.

#![cfg(feature = "neo4j")]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbwarden::config::Config;
use dbwarden::observe::neo4j::{Generation, Neo4jClient, Neo4jTarget, observe};
use dbwarden::remediate::audit::{AuditIndex, AuditLog, AuditRecord, Decision};
use dbwarden::remediate::neo4j_index::{RebuildOutcome, rebuild};
use dbwarden::remediate::neo4j_index_policy::{IndexCandidate, IndexRebuildSettings, statements};

use support::bolt::{BoltServer, Fault, Index, Persona, ServerState};
use support::{Daemon, metric_value, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);
const TARGET: &str = "graph";

const EMAIL_CREATE: &str = "CREATE RANGE INDEX `person_email` FOR (n:`Person`) ON (n.`email`)";

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

    fn sentinel(&self) -> PathBuf {
        self.dir.path().join("pause")
    }

    /// A Neo4j target on `server` and `[remediation]` in `mode`, with the
    /// rebuild's table written verbatim.
    fn config(&self, server: &BoltServer, mode: &str, rebuild: &str) -> String {
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
sentinel_file = "{sentinel}"
pacing = "0s"

[remediation.budget]
per_target = 10
global = 100
window = "1h"

[remediation.neo4j_index_rebuild]
{rebuild}
"#,
            uri = server.uri(),
            password = d.join("password").display(),
            audit = self.audit().display(),
            state = d.display(),
            sentinel = self.sentinel().display(),
        )
    }
}

fn records(path: &Path) -> Vec<AuditRecord> {
    if !path.exists() {
        return Vec::new();
    }
    AuditLog::read_all(path).expect("read the audit file").0
}

fn index_of(r: &AuditRecord) -> &AuditIndex {
    r.index
        .as_ref()
        .unwrap_or_else(|| panic!("not an index record: {r:?}"))
}

async fn polls(daemon: &Daemon) -> u64 {
    daemon.status().await["targets"][0]["polls_completed"]
        .as_u64()
        .unwrap_or(0)
}

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

fn failed_email() -> Index {
    Index::failed(
        "person_email",
        "Person",
        "email",
        "java.io.IOException: disk full",
    )
}

async fn wait_for_schema_statements(server: &BoltServer, n: usize) {
    wait_until(DEADLINE, "the rebuild's statements", async || {
        let sent = server.state().schema_statements();
        if sent.len() >= n {
            Ok(())
        } else {
            Err(format!("{sent:?}"))
        }
    })
    .await;
}

async fn metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_value(&daemon.metrics().await, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_rebuilds_exactly_the_failed_index_and_follows_it_to_online() {
    for (name, persona) in [("4.4", Persona::neo4j_4_4()), ("5", Persona::neo4j_5())] {
        let setup = Setup::new();
        let server = BoltServer::start(persona, ServerState::shared());
        server.state().indexes = vec![
            Index::online("person_name", "Person", "name"),
            failed_email(),
        ];
        let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
        wait_for_schema_statements(&server, 2).await;
        // Several more cycles: nothing else is sent while it populates.
        more_polls(&daemon, 3).await;
        assert_eq!(
            server.state().schema_statements(),
            ["DROP INDEX `person_email`", EMAIL_CREATE],
            "{name}"
        );
        // The re-check ran by name right before the DROP, on the same connection.
        {
            let s = server.state();
            let drop = s
                .statements
                .iter()
                .position(|st| st.query.starts_with("DROP "))
                .unwrap();
            let before = &s.statements[drop - 1];
            assert!(
                before.query.contains("WHERE name = $name"),
                "{name}: {}",
                before.query
            );
            assert_eq!(
                before
                    .param("name")
                    .and_then(|v| v.as_str().map(String::from))
                    .as_deref(),
                Some("person_email")
            );
            assert_eq!(before.connection, s.statements[drop].connection);
            assert_eq!(s.index("person_email").unwrap().state, "POPULATING");
        }
        // The intent, with the exact statements, then the outcome.
        let recs = records(&setup.audit());
        let decisions: Vec<Decision> = recs.iter().map(|r| r.decision).collect();
        assert_eq!(
            decisions,
            [Decision::Intent, Decision::Acted],
            "{name}: {recs:#?}"
        );
        assert_eq!(recs[0].action_id, recs[1].action_id);
        assert_eq!(recs[0].action, "rebuild");
        assert_eq!(recs[0].policy, "neo4j_index_rebuild");
        let i = index_of(&recs[0]);
        assert_eq!(
            i.drop_statement.as_deref(),
            Some("DROP INDEX `person_email`")
        );
        assert_eq!(i.create_statement.as_deref(), Some(EMAIL_CREATE));
        assert_eq!(
            i.failure_message.as_deref(),
            Some("java.io.IOException: disk full")
        );
        assert!(i.failed_for_ms >= 1000, "{i:?}");
        assert_eq!(
            recs[1].outcome,
            "dropped and created again; followed until ONLINE"
        );

        // Followed: the population metric moves, the rebuild's gauge is there.
        let labels = [("target", TARGET), ("index", "person_email")];
        let started = metric(
            &daemon,
            "dbwarden_neo4j_index_rebuild_started_timestamp_seconds",
            &[("target", TARGET)],
        )
        .await;
        assert!(started.is_some_and(|t| t > 1.0e9), "{name}: {started:?}");
        server.state().advance_population("person_email", 40.0);
        wait_until(DEADLINE, "40% in the metrics", async || {
            match metric(&daemon, "dbwarden_neo4j_index_population_percent", &labels).await {
                Some(40.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        server.state().advance_population("person_email", 100.0);
        wait_until(DEADLINE, "the index check to pass again", async || {
            let text = daemon.metrics().await;
            let failing = metric_value(
                &text,
                "dbwarden_check_failing",
                &[("target", TARGET), ("check", "indexes_online")],
            );
            let population =
                metric_value(&text, "dbwarden_neo4j_index_population_percent", &labels);
            let rebuild = metric_value(
                &text,
                "dbwarden_neo4j_index_rebuild_started_timestamp_seconds",
                &[("target", TARGET)],
            );
            match (failing, population, rebuild) {
                (Some(0.0), None, Some(0.0)) => Ok(()),
                other => Err(format!("failing, population, rebuild: {other:?}")),
            }
        })
        .await;
        let acted = metric(
            &daemon,
            "dbwarden_remediation_actions_total",
            &[
                ("target", TARGET),
                ("policy", "neo4j_index_rebuild"),
                ("action", "rebuild"),
                ("outcome", "acted"),
            ],
        )
        .await;
        assert_eq!(acted, Some(1.0), "{name}");
        more_polls(&daemon, 2).await;
        assert_eq!(server.state().schema_statements().len(), 2, "{name}: once");
        daemon.stop().await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_nothing_and_records_the_statements_once() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![failed_email()];
    let daemon = Daemon::start(&setup.config(&server, "dry-run", "failed_for = \"1s\"")).await;
    wait_until(DEADLINE, "a would-act record", async || {
        match records(&setup.audit()).len() {
            0 => Err("no record yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    more_polls(&daemon, 3).await;
    let recs = records(&setup.audit());
    assert_eq!(recs.len(), 1, "reported once: {recs:#?}");
    assert_eq!(recs[0].decision, Decision::WouldAct);
    assert_eq!(recs[0].outcome, "would rebuild");
    let i = index_of(&recs[0]);
    assert_eq!(
        i.drop_statement.as_deref(),
        Some("DROP INDEX `person_email`")
    );
    assert_eq!(i.create_statement.as_deref(), Some(EMAIL_CREATE));
    assert!(server.state().schema_statements().is_empty());
    assert_eq!(
        server.state().index("person_email").unwrap().state,
        "FAILED"
    );

    // The live snapshot, replayed offline, explains the same decision.
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
        setup.config(&server, "dry-run", "failed_for = \"1s\""),
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
        text.contains(&format!(
            "WOULD REBUILD neo4j.person_email (FAILED for 1s (>= 1s): java.io.IOException: disk full): DROP INDEX `person_email`; then {EMAIL_CREATE}"
        )),
        "{text}"
    );
    assert!(
        text.contains("would rebuild 1 index(es) this cycle"),
        "{text}"
    );
    assert!(server.state().schema_statements().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_switch_stops_it_and_resuming_lets_it_act() {
    let setup = Setup::new();
    std::fs::write(setup.sentinel(), "").unwrap();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![failed_email()];
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
    // Long past failed_for, paused: nothing.
    more_polls(&daemon, 8).await;
    assert!(server.state().schema_statements().is_empty());
    assert!(records(&setup.audit()).is_empty());
    assert_eq!(
        metric(&daemon, "dbwarden_remediation_paused", &[]).await,
        Some(1.0)
    );
    std::fs::remove_file(setup.sentinel()).unwrap();
    wait_for_schema_statements(&server, 2).await;
    assert_eq!(
        server.state().schema_statements(),
        ["DROP INDEX `person_email`", EMAIL_CREATE]
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_backed_and_recent_failures_are_left_alone_unless_named() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes =
        vec![Index::failed("person_id", "Person", "id", "boom").of_constraint("person_id_unique")];
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
    wait_until(
        DEADLINE,
        "the constraint to be counted as held",
        async || match metric(
            &daemon,
            "dbwarden_neo4j_index_rebuild_held",
            &[("target", TARGET), ("reason", "constraint")],
        )
        .await
        {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    more_polls(&daemon, 3).await;
    assert!(server.state().schema_statements().is_empty());
    assert!(records(&setup.audit()).is_empty());
    daemon.stop().await;

    // Named: rebuilt through its constraint.
    let setup = Setup::new();
    let daemon = Daemon::start(&setup.config(
        &server,
        "enforce",
        "failed_for = \"1s\"\nconstraints = [\"person_id_unique\"]",
    ))
    .await;
    wait_for_schema_statements(&server, 2).await;
    assert_eq!(
        server.state().schema_statements(),
        [
            "DROP CONSTRAINT `person_id_unique`",
            "CREATE CONSTRAINT `person_id_unique` FOR (n:`Person`) REQUIRE (n.`id`) IS UNIQUE"
        ]
    );
    daemon.stop().await;

    // FAILED for less than failed_for: left alone.
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_4_4(), ServerState::shared());
    server.state().indexes = vec![failed_email()];
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1h\"")).await;
    wait_until(
        DEADLINE,
        "the index to be counted as too recent",
        async || match metric(
            &daemon,
            "dbwarden_neo4j_index_rebuild_held",
            &[("target", TARGET), ("reason", "too_recent")],
        )
        .await
        {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    more_polls(&daemon, 3).await;
    assert!(server.state().schema_statements().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failed_indexes_are_rebuilt_one_at_a_time() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![
        failed_email(),
        Index::failed("movie_title", "Movie", "title", "boom"),
    ];
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
    wait_for_schema_statements(&server, 2).await;
    more_polls(&daemon, 3).await;
    let first = server.state().schema_statements();
    assert_eq!(
        first.len(),
        2,
        "one index while the other populates: {first:?}"
    );
    let rebuilt = if first[0].contains("person_email") {
        "person_email"
    } else {
        "movie_title"
    };
    assert_eq!(
        metric(
            &daemon,
            "dbwarden_neo4j_index_rebuild_held",
            &[("target", TARGET), ("reason", "one_at_a_time")]
        )
        .await,
        Some(1.0)
    );
    server.state().advance_population(rebuilt, 100.0);
    wait_for_schema_statements(&server, 4).await;
    let all = server.state().schema_statements();
    let other = if rebuilt == "person_email" {
        "movie_title"
    } else {
        "person_email"
    };
    assert_eq!(all[2], format!("DROP INDEX `{other}`"));
    assert!(all[3].contains(&format!("`{other}`")), "{all:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_bounds_rebuilds() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![
        failed_email(),
        Index::failed("movie_title", "Movie", "title", "boom"),
    ];
    let config = setup
        .config(&server, "enforce", "failed_for = \"1s\"")
        .replace("per_target = 10", "per_target = 1");
    let daemon = Daemon::start(&config).await;
    wait_for_schema_statements(&server, 2).await;
    let first = server.state().schema_statements()[0].clone();
    let rebuilt = if first.contains("person_email") {
        "person_email"
    } else {
        "movie_title"
    };
    server.state().advance_population(rebuilt, 100.0);
    wait_until(
        DEADLINE,
        "the budget to stop the second rebuild",
        async || match metric(
            &daemon,
            "dbwarden_remediation_actions_total",
            &[
                ("policy", "neo4j_index_rebuild"),
                ("outcome", "budget_exhausted"),
            ],
        )
        .await
        {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    more_polls(&daemon, 2).await;
    assert_eq!(
        server.state().schema_statements().len(),
        2,
        "one rebuild per window"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo4j_4_3_is_refused_with_the_reason() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_4_3(), ServerState::shared());
    server.state().indexes = vec![failed_email().create_statement(None)];
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
    wait_until(DEADLINE, "a refused record", async || {
        match records(&setup.audit()).len() {
            0 => Err("no record yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    more_polls(&daemon, 3).await;
    let recs = records(&setup.audit());
    assert_eq!(recs.len(), 1, "refused once: {recs:#?}");
    assert_eq!(recs[0].decision, Decision::Refused);
    assert!(
        recs[0].outcome.contains("Neo4j 4.3.24 is older than 4.4")
            && recs[0].outcome.contains("db.indexes() does not report"),
        "{}",
        recs[0].outcome
    );
    assert_eq!(index_of(&recs[0]).drop_statement, None);
    // The status page and the actions API say it too.
    let (code, page) = daemon.get("/").await.expect("status page");
    assert_eq!(code, 200);
    assert!(page.contains("index neo4j.person_email FAILED"), "{page}");
    assert!(page.contains("is older than 4.4"), "{page}");
    let (code, actions) = daemon.get("/api/v1/actions").await.expect("actions");
    assert_eq!(code, 200);
    assert!(actions.contains("\"decision\":\"refused\""), "{actions}");
    let text = daemon.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_neo4j_index_rebuild_held",
            &[("target", TARGET), ("reason", "unsupported_version")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_remediation_actions_total",
            &[("policy", "neo4j_index_rebuild"), ("outcome", "refused")]
        ),
        Some(1.0)
    );
    assert!(server.state().schema_statements().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_after_the_drop_is_reported_and_followed() {
    let setup = Setup::new();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![
        failed_email(),
        Index::failed("movie_title", "Movie", "title", "boom"),
    ];
    server.state().inject(Fault::FailMatching {
        starts_with: "CREATE".into(),
        code: "Neo.DatabaseError.Schema.IndexCreationFailed".into(),
        message: "Unable to create index: disk full".into(),
    });
    let daemon = Daemon::start(&setup.config(&server, "enforce", "failed_for = \"1s\"")).await;
    wait_until(DEADLINE, "the failed outcome", async || {
        let recs = records(&setup.audit());
        match recs.last() {
            Some(r) if r.decision == Decision::Failed => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let recs = records(&setup.audit());
    let first = index_of(&recs[0]).name.clone();
    let create = index_of(&recs[0]).create_statement.clone().unwrap();
    assert_eq!(
        recs[1].outcome,
        format!(
            "dropped, but not created again: Neo.DatabaseError.Schema.IndexCreationFailed: Unable to create index: disk full; run by hand: {create}"
        )
    );
    // The index is gone: followed as a rebuild in progress, so the other
    // FAILED index is not touched, and the stuck alert's gauge stays set.
    more_polls(&daemon, 4).await;
    assert_eq!(
        server.state().schema_statements(),
        [format!("DROP INDEX `{first}`"), create.clone()]
    );
    assert!(server.state().index(&first).is_none());
    let started = metric(
        &daemon,
        "dbwarden_neo4j_index_rebuild_started_timestamp_seconds",
        &[("target", TARGET)],
    )
    .await;
    assert!(started.is_some_and(|t| t > 1.0e9), "{started:?}");
    daemon.stop().await;
}

// ------------------------------------------------------ the re-check itself

fn target(server: &BoltServer, dir: &Path) -> Neo4jTarget {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_refuses_an_index_that_changed_since_it_was_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let server = BoltServer::start(Persona::neo4j_5(), ServerState::shared());
    server.state().indexes = vec![failed_email()];
    let t = target(&server, dir.path());
    let client = Neo4jClient::new(&t, "remediate").expect("client");
    let snapshot = observe(&client, &t).await.expect("observe");
    let seen = snapshot.indexes[0].clone();
    assert_eq!(seen.create_statement.as_deref(), Some(EMAIL_CREATE));
    let c = IndexCandidate {
        statements: Some(statements(&seen).unwrap()),
        index: seen,
        failed_for_ms: 3_600_000,
        reason: "test".into(),
    };
    let s = c.statements.clone().unwrap();
    let settings = IndexRebuildSettings::default();
    let go = async |dropped: &mut bool| {
        rebuild(&client, Generation::Show5, &c, &s, &settings, dropped).await
    };

    // Redefined by someone in between: not dropped.
    server.state().indexes[0].create_statement =
        Some("CREATE TEXT INDEX `person_email` FOR (n:`Person`) ON (n.`email`)".into());
    let mut dropped = false;
    let o = go(&mut dropped).await;
    assert!(
        matches!(&o, RebuildOutcome::Changed(why) if why.starts_with("its definition changed")),
        "{o:?}"
    );
    assert!(!dropped);
    // Taken over by a constraint: not dropped.
    server.state().indexes = vec![failed_email().of_constraint("c")];
    server.state().indexes[0].create_statement = Some(EMAIL_CREATE.into());
    let o = go(&mut dropped).await;
    assert_eq!(
        o,
        RebuildOutcome::Changed(
            "it is now backed by constraint \"c\", which the settings do not name".into()
        )
    );
    // Rebuilt by hand meanwhile: POPULATING, not dropped.
    server.state().indexes = vec![Index::populating("person_email", "Person", "email", 5.0)];
    let o = go(&mut dropped).await;
    assert_eq!(o, RebuildOutcome::Changed("it is POPULATING now".into()));
    // Gone.
    server.state().indexes.clear();
    let o = go(&mut dropped).await;
    assert_eq!(o, RebuildOutcome::Changed("the index is gone".into()));
    assert!(server.state().schema_statements().is_empty());
    assert!(!dropped);
    // Unchanged: dropped and created.
    server.state().indexes = vec![failed_email()];
    let o = go(&mut dropped).await;
    assert_eq!(o, RebuildOutcome::Rebuilt);
    assert!(dropped);
    assert_eq!(
        server.state().schema_statements(),
        ["DROP INDEX `person_email`", EMAIL_CREATE]
    );
}
