//! Probes (`[postgres.<target>.probes.<name>]`): their settings through the
//! loader (the example's checklist probes, every kind of mistake), and their
//! runs against a real PostgreSQL 15 scratch cluster: counts moving, a
//! `created_at` going stale, a statement stopped at its timeout, a write
//! refused, labels over the series cap, a label column that is not text,
//! asserted through `/metrics`, `/api/v1/status` and `dbwarden check`.
//! Needs the Debian package `postgresql-15`.

mod support;

use std::time::Duration;

use dbwarden::config::{Config, ConfigError, ConfigIssue};
use serde_json::Value;
use support::{Daemon, psql, require, wait_until};

const EXAMPLE: &str = include_str!("../config/dbwarden.example.toml");
const EXAMPLE_ENV: [(&str, &str); 2] = [
    ("PG_PRIMARY_PASSWORD", "primary-secret-1"),
    ("PG_STANDBY_PASSWORD", "standby-secret-2"),
];

fn load(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(
        toml,
        EXAMPLE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[track_caller]
fn issues(toml: &str) -> Vec<ConfigIssue> {
    match load(toml) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(e) => panic!("expected ConfigError::Invalid, got {e}"),
    }
}

#[track_caller]
fn assert_issue(issues: &[ConfigIssue], path: &str, needles: &[&str]) {
    let at: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
    assert_eq!(at.len(), 1, "one issue at {path} expected in {issues:#?}");
    for n in needles {
        assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
    }
}

/// A target (database `app`, polled every 10s) with `probes` after it.
fn with_probes(probes: &str) -> String {
    format!("[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n\n{probes}")
}

/// The example's commented checklist probes, uncommented, load as written.
#[test]
fn the_examples_checklist_probes_load() {
    let start = EXAMPLE
        .find("# [postgres.primary.probes.entities]")
        .expect("the example has the entities probe");
    let end = start + EXAMPLE[start..].find("[postgres.standby]").unwrap();
    let block: String = EXAMPLE[start..end]
        .lines()
        // Uncomment the TOML lines (tables and keys), leave the prose commented.
        .map(|l| match l.strip_prefix("# ") {
            Some(t)
                if t.starts_with('[') || regex::Regex::new(r"^[a-z_]+ = ").unwrap().is_match(t) =>
            {
                t
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let toml = EXAMPLE.replacen(&EXAMPLE[start..end], &format!("{block}\n\n"), 1);
    let c = load(&toml).unwrap_or_else(|e| panic!("{e}\n{block}"));
    let primary = &c
        .postgres
        .iter()
        .find(|t| t.target.name == "primary")
        .unwrap()
        .target;
    let names: Vec<&str> = primary.probes.keys().map(String::as_str).collect();
    assert_eq!(names, ["entities", "investigations", "relationships"]);
    let entities = &primary.probes["entities"];
    assert_eq!(entities.checks["rows"].min, Some(1000.0));
    assert_eq!(entities.checks["rows"].hold, Some(Duration::from_secs(300)));
    assert_eq!(
        entities.checks["newest"].max_age,
        Some(Duration::from_secs(900))
    );
    assert_eq!(
        entities.checks["duration"].max,
        Some(dbwarden::observe::probes::Bound::Duration(
            Duration::from_secs(1)
        ))
    );
    // Defaults: six polls (poll_interval 5s), a timeout of half a poll at most.
    let rel = &primary.probes["relationships"];
    assert_eq!(
        rel.interval(Duration::from_secs(5)),
        Duration::from_secs(30)
    );
    assert_eq!(
        rel.timeout(Duration::from_secs(5)),
        Duration::from_millis(2500)
    );
    assert_eq!(primary.probes["investigations"].labels, ["status"]);
    // Printed and loaded back: the same probes.
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("[postgres.primary.probes.entities.checks.rows]"),
        "{printed}"
    );
}

#[test]
fn bad_probes_are_errors_at_their_key_paths() {
    let toml = with_probes(
        r#"
[postgres.main.probes.counts]
sql = "SELECT kind, count(*) AS rows FROM t GROUP BY kind"
labels = ["kind", "Bad-Name", "kind", "target"]
databases = ["other", "other"]
interval = "5s"
timeout = "10s"
max_series = 0

[postgres.main.probes.counts.checks]
rows = { min = 10, max = 5 }
kind = { min = 1 }
stale = { max_age = "5m", min = 1 }
slow = { max = "2s" }
empty = { for = "1m" }
duration = { max = 2 }

[postgres.main.probes.nosql]
labels = []

[postgres.main.probes.a]
sql = "SELECT 1 AS x"
[postgres.main.probes.a_b]
sql = "SELECT 1 AS x"
[postgres.main.probes.duration]
sql = "SELECT 1 AS x"
[postgres.main.probes.typo]
sql = "SELECT 1 AS x"
query = "SELECT 2"
"#,
    );
    let found = issues(&toml);
    let p = "postgres.main.probes.counts";
    let at = |k: &str| format!("{p}.{k}");
    assert_issue(
        &found,
        &at("checks.rows"),
        &["min 10 is greater than max 5"],
    );
    assert_issue(
        &found,
        &at("checks.kind"),
        &["\"kind\" is a label column", "only numeric and timestamp"],
    );
    assert_issue(
        &found,
        &at("checks.stale"),
        &["`max_age`", "cannot be combined"],
    );
    assert_issue(
        &found,
        &at("checks.slow.max"),
        &["is a duration", "use `max_age`"],
    );
    assert_issue(&found, &at("checks.empty"), &["no limit"]);
    assert_issue(
        &found,
        &at("checks.duration.max"),
        &["is a number", "duration such as \"2s\""],
    );
    assert_issue(&found, &at("databases"), &["\"other\" is listed twice"]);
    assert_issue(
        &found,
        &at("interval"),
        &["faster than the target's poll_interval \"10s\""],
    );
    assert_issue(
        &found,
        &at("timeout"),
        &["not shorter than the target's poll_interval"],
    );
    assert_issue(&found, &at("max_series"), &["1 to 10000"]);
    let labels: Vec<&str> = found
        .iter()
        .filter(|i| i.path == at("labels"))
        .map(|i| i.message.as_str())
        .collect();
    assert_eq!(labels.len(), 3, "{labels:#?}");
    assert!(
        labels
            .iter()
            .any(|m| m.contains("invalid label column \"Bad-Name\""))
    );
    assert!(
        labels
            .iter()
            .any(|m| m.contains("\"kind\" is listed twice"))
    );
    assert!(
        labels
            .iter()
            .any(|m| m.contains("\"target\" is dbwarden's own label"))
    );
    assert_issue(&found, "postgres.main.probes.nosql.sql", &["missing"]);
    assert_issue(
        &found,
        "postgres.main.probes.a_b",
        &["begins with probe \"a\"", "collide"],
    );
    assert_issue(
        &found,
        "postgres.main.probes.duration",
        &["dbwarden_probe_duration_seconds"],
    );
    assert!(
        found
            .iter()
            .any(|i| i.path.starts_with("postgres.main.probes.typo") && i.message.contains("query")),
        "{found:#?}"
    );
}

// ------------------------------------------------------------ PostgreSQL

/// Deadline for conditions that should hold within a few polls.
const T: Duration = Duration::from_secs(20);

fn target<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == name))
        .unwrap_or_else(|| panic!("no target {name:?} in {status:#}"))
}

/// The probe check `check` of target `main` in a status answer: (status, detail).
fn probe_check(status: &Value, check: &str) -> Option<(String, String)> {
    target(status, "main")["probes"]
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

fn builtin_check(status: &Value, check: &str) -> String {
    target(status, "main")["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["check"] == check))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

const PROBES: &str = r#"
[postgres.main.probes.entities]
sql = "SELECT count(*) AS rows, max(created_at) AS newest FROM entities"
databases = ["postgres"]
interval = "1s"
timeout = "300ms"

[postgres.main.probes.entities.checks]
rows = { min = 5 }
newest = { max_age = "3s" }
duration = { max = "250ms" }

[postgres.main.probes.kinds]
sql = "SELECT kind, count(*) AS rows FROM entities GROUP BY kind"
labels = ["kind"]
max_series = 3
interval = "1s"
timeout = "300ms"

[postgres.main.probes.slow]
sql = "SELECT 1 AS one FROM pg_sleep(5)"
interval = "1s"
timeout = "300ms"

[postgres.main.probes.writer]
sql = "INSERT INTO entities (kind) VALUES ('w') RETURNING id"
interval = "1s"
timeout = "300ms"
"#;

fn config(url: &str) -> String {
    format!(
        r#"[postgres.main]
url = "{url}"
sslmode = "disable"
poll_interval = "1s"
poll_timeout = "500ms"
statement_timeout = "400ms"
lock_timeout = "100ms"
connect_timeout = "2s"
backoff_max = "1s"
max_connections = 2
{PROBES}"#
    )
}

/// The daemon runs the probes between polls on its polling connection:
/// counts move, a timestamp goes stale, a slow probe is stopped at its
/// timeout, a write is refused, labels over the cap fail the probe; none of
/// it touches the `connection` check or the connection budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_run_between_polls_and_fail_only_themselves() {
    let pg = support::primary();
    let url = pg.url("postgres");
    psql(
        &pg,
        "CREATE TABLE entities (id serial PRIMARY KEY, kind text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO entities (kind) VALUES ('a'), ('b'), ('c');",
    );
    let d = Daemon::start(&config(&url)).await;

    // Three rows: the count check fails, the other checks pass; the count is a metric.
    // Probes run in the gaps between polls, as many as fit: wait until each
    // has run once (the first gap after start may be shorter than an interval).
    let status = wait_until(T, "every probe run once", async || {
        let s = d.status().await;
        let ran = ["probe:slow", "probe:writer", "probe:kinds"]
            .iter()
            .all(|p| probe_check(&s, p).is_some_and(|(st, _)| st != "unknown"));
        match probe_check(&s, "probe:entities:rows") {
            Some((st, _)) if st == "fail" && ran => Ok(s),
            other => Err(format!("entities:rows {other:?}, the others ran: {ran}")),
        }
    })
    .await;
    assert_eq!(probe_check(&status, "probe:entities").unwrap().0, "pass");
    assert_eq!(
        probe_check(&status, "probe:entities:newest").unwrap().0,
        "pass"
    );
    let (st, detail) = probe_check(&status, "probe:entities:rows").unwrap();
    assert!(detail.contains("rows = 3 is below min 5"), "{st} {detail}");
    let m = d.metrics().await;
    assert_eq!(
        require(&m, "dbwarden_probe_entities_rows", &[("target", "main")]),
        Ok(3.0)
    );
    assert_eq!(
        require(
            &m,
            "dbwarden_check_failing",
            &[("target", "main"), ("check", "probe:entities:rows")]
        ),
        Ok(1.0)
    );
    assert_eq!(
        require(
            &m,
            "dbwarden_probe_kinds_rows",
            &[("target", "main"), ("kind", "b")]
        ),
        Ok(1.0)
    );

    // The slow probe is stopped at its timeout and the write is refused:
    // each fails its own check, the target stays up and connected.
    let (st, detail) = probe_check(&status, "probe:slow").unwrap();
    assert_eq!(st, "fail");
    assert!(
        detail.contains("(timeout)") && detail.contains("300ms"),
        "{detail}"
    );
    let (st, detail) = probe_check(&status, "probe:writer").unwrap();
    assert_eq!(st, "fail");
    assert!(
        detail.contains("(read_only)") && detail.contains("tries to write"),
        "{detail}"
    );
    assert_eq!(builtin_check(&status, "connection"), "pass");
    assert_eq!(require(&m, "dbwarden_up", &[("target", "main")]), Ok(1.0));
    assert_eq!(
        require(
            &m,
            "dbwarden_probe_up",
            &[("target", "main"), ("probe", "slow")]
        ),
        Ok(0.0)
    );
    assert!(
        require(
            &m,
            "dbwarden_probe_failures_total",
            &[
                ("target", "main"),
                ("probe", "writer"),
                ("kind", "read_only")
            ]
        )
        .is_ok_and(|n| n >= 1.0)
    );
    assert!(
        require(&m, "dbwarden_open_connections", &[("target", "main")]).is_ok_and(|n| n <= 1.0)
    );
    // The status page lists the probe checks, failing first.
    let (code, page) = d.get("/").await.expect("GET /");
    assert_eq!(code, 200);
    assert!(
        page.contains("data-check=\"probe:entities:rows\"") && page.contains("Probe check"),
        "{page}"
    );
    // The write never happened.
    assert_eq!(
        psql(&pg, "SELECT count(*) FROM entities WHERE kind = 'w'").trim(),
        "0"
    );

    // Counts move: three more rows pass the count check.
    psql(
        &pg,
        "INSERT INTO entities (kind) VALUES ('a'), ('b'), ('c');",
    );
    wait_until(T, "the count reaches 6 and passes", async || {
        let m = d.metrics().await;
        let rows = require(&m, "dbwarden_probe_entities_rows", &[("target", "main")])?;
        let failing = require(
            &m,
            "dbwarden_check_failing",
            &[("target", "main"), ("check", "probe:entities:rows")],
        )?;
        if rows == 6.0 && failing == 0.0 {
            Ok(())
        } else {
            Err(format!("rows {rows}, failing {failing}"))
        }
    })
    .await;

    // No new row for 3s: the newest created_at goes stale.
    let (_, detail) = wait_until(T, "newest goes stale", async || {
        let s = d.status().await;
        match probe_check(&s, "probe:entities:newest") {
            Some((st, detail)) if st == "fail" => Ok((st, detail)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(detail.contains("max_age 3s"), "{detail}");
    let age = require(
        &d.metrics().await,
        "dbwarden_check_value",
        &[("target", "main"), ("check", "probe:entities:newest")],
    )
    .unwrap();
    assert!(age > 3.0, "age {age}");

    // Two more kinds: five series over max_series = 3, the probe fails and exports nothing.
    psql(&pg, "INSERT INTO entities (kind) VALUES ('d'), ('e');");
    let detail = wait_until(T, "kinds goes over its series cap", async || {
        let s = d.status().await;
        match probe_check(&s, "probe:kinds") {
            Some((st, detail)) if st == "fail" => Ok(detail),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        detail.contains("(series)") && detail.contains("max_series = 3"),
        "{detail}"
    );
    let m = d.metrics().await;
    assert!(
        require(
            &m,
            "dbwarden_probe_kinds_rows",
            &[("target", "main"), ("kind", "a")]
        )
        .is_err()
    );
    assert!(
        require(
            &m,
            "dbwarden_check_failing",
            &[("target", "main"), ("check", "connection")]
        ) == Ok(0.0)
    );
    d.stop().await;

    // Every row an hour old: the data is not recent.
    psql(
        &pg,
        "UPDATE entities SET created_at = now() - interval '1 hour';",
    );
    // `dbwarden check` runs every probe once, without hold, and says why each fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("check.toml");
    let badlabel = r#"
[postgres.main.probes.badlabel]
sql = "SELECT 1 AS n, 2 AS k"
labels = ["k"]
timeout = "300ms"
"#;
    std::fs::write(&path, format!("{}{badlabel}", config(&url))).unwrap();
    let out = support::dbwarden_check(&path, "text");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        support::describe_output(&out)
    );
    for want in [
        "  Probes\n",
        "PASS    probe:entities ",
        "PASS    probe:entities:rows",
        "FAIL    probe:entities:newest",
        "FAIL    probe:slow ",
        "FAIL    probe:writer ",
        "tries to write",
        "FAIL    probe:kinds ",
        "FAIL    probe:badlabel ",
        "label column \"k\" is int4, not text",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let out = support::dbwarden_check(&path, "json");
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let probes = json["targets"][0]["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 5, "{probes:#?}");
    let slow = probes.iter().find(|p| p["probe"] == "slow").unwrap();
    assert_eq!(slow["error"]["kind"], "timeout");
}

/// A reload changes probes in place: a check's limit, a probe added and one
/// removed, on the same connection (the same backend before and after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_probes_in_place() {
    let pg = support::primary();
    let url = pg.url("postgres");
    psql(
        &pg,
        "CREATE TABLE entities (id serial, kind text, created_at timestamptz DEFAULT now()); INSERT INTO entities (kind) VALUES ('a');",
    );
    let base = |probes: &str| {
        format!(
            "[postgres.main]\nurl = \"{url}\"\nsslmode = \"disable\"\npoll_interval = \"1s\"\npoll_timeout = \"500ms\"\n{probes}"
        )
    };
    let before = base(
        r#"
[postgres.main.probes.entities]
sql = "SELECT count(*) AS rows FROM entities"
interval = "1s"
timeout = "300ms"
checks.rows = { min = 100 }

[postgres.main.probes.old]
sql = "SELECT 1 AS one"
interval = "1s"
timeout = "300ms"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let d = support::DaemonProcess::spawn("probes-reload", dir.path(), &before).await;
    let metric = async |name: &str, labels: &[(&str, &str)]| -> Result<f64, String> {
        let text = d.try_metrics().await?;
        support::metric_value(&text, name, labels).ok_or_else(|| format!("no {name}{labels:?}"))
    };
    let rows_failing = [("target", "main"), ("check", "probe:entities:rows")];
    wait_until(T, "rows fails, old exports", async || {
        let failing = metric("dbwarden_check_failing", &rows_failing).await?;
        let old = metric("dbwarden_probe_old_one", &[("target", "main")]).await?;
        if failing == 1.0 && old == 1.0 {
            Ok(())
        } else {
            Err(format!("{failing} {old}"))
        }
    })
    .await;
    let backend = || {
        psql(
            &pg,
            "SELECT pid || ' ' || backend_start FROM pg_stat_activity WHERE application_name = 'dbwarden'",
        )
    };
    let backend_before = backend();

    let after = base(
        r#"
[postgres.main.probes.entities]
sql = "SELECT count(*) AS rows FROM entities"
interval = "1s"
timeout = "300ms"
checks.rows = { min = 1 }

[postgres.main.probes.fresh]
sql = "SELECT 2 AS two"
interval = "1s"
timeout = "300ms"
"#,
    );
    std::fs::write(&d.config_file, support::with_listen(&after, d.addr())).unwrap();
    let pid = rustix::process::Pid::from_raw(d.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    wait_until(T, "rows passes, fresh exports, old is gone", async || {
        let failing = metric("dbwarden_check_failing", &rows_failing).await?;
        let fresh = metric("dbwarden_probe_fresh_two", &[("target", "main")]).await?;
        let old = metric("dbwarden_probe_old_one", &[("target", "main")]).await;
        let old_check = metric(
            "dbwarden_check_failing",
            &[("target", "main"), ("check", "probe:old")],
        )
        .await;
        match (failing, fresh, old, old_check) {
            (0.0, 2.0, Err(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(backend(), backend_before, "the reload kept the connection");
}

/// A custom queries file in postgres_exporter's format, as a team keeps one:
/// every usage dbwarden reads, `master`, `cache_seconds` and `runonserver`.
const QUERIES_YAML: &str = r#"
# Custom queries for postgres_exporter (--extend.query-path).
pg_postmaster:
  query: "SELECT pg_postmaster_start_time() AS start_time_seconds"
  master: true
  metrics:
    - start_time_seconds:
        usage: "GAUGE"
        description: "When the postmaster started"

pg_database:
  query: "SELECT datname, pg_database_size(datname) AS size_bytes, datallowconn::text AS allow FROM pg_database WHERE datname NOT LIKE 'template%'"
  master: true
  cache_seconds: 30
  metrics:
    - datname:
        usage: "LABEL"
        description: "Database name"
    - size_bytes:
        usage: "GAUGE"
        description: "Disk space used by the database"
    - allow:
        usage: "DISCARD"
        description: "Not exported"

pg_table_activity:
  query: |
    SELECT schemaname, relname, seq_scan, n_tup_ins, n_live_tup,
           extract(epoch FROM now() - coalesce(last_autovacuum, 'epoch'))::float8 * 1000 AS since_vacuum_ms,
           last_analyze
    FROM pg_stat_user_tables
  runonserver: ">=14.0.0"
  metrics:
    - schemaname:
        usage: "LABEL"
        description: "Schema"
    - relname:
        usage: "LABEL"
        description: "Table"
    - seq_scan:
        usage: "COUNTER"
        description: "Sequential scans"
    - n_tup_ins:
        usage: "COUNTER"
        description: "Rows inserted"
    - n_live_tup:
        usage: "GAUGE"
        description: "Estimated live rows"
    - since_vacuum_ms:
        usage: "DURATION"
        description: "Milliseconds since the last autovacuum"
    - last_analyze:
        usage: "GAUGE"
        description: "Last manual analyze"

pg_recovery:
  query: "SELECT pg_is_in_recovery()::int AS is_in_recovery, extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS lag"
  metrics:
    - is_in_recovery:
        usage: "GAUGE"
        description: "1 on a standby"
    - lag:
        usage: "GAUGE"
        description: "Replay lag in seconds (none on a primary)"
"#;

#[test]
fn a_queries_file_loads_as_probes_and_its_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries.yaml");
    std::fs::write(&file, QUERIES_YAML).unwrap();
    let toml = format!(
        "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\nqueries_file = \"{}\"\n",
        file.display()
    );
    let c = load(&toml).unwrap_or_else(|e| panic!("{e}"));
    let t = &c.postgres[0].target;
    assert!(t.probes.is_empty());
    let names: Vec<&str> = t.active_probes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "pg_database",
            "pg_postmaster",
            "pg_recovery",
            "pg_table_activity"
        ]
    );
    let db = &t.active_probes["pg_database"];
    assert_eq!(db.labels, ["datname"]);
    assert_eq!(db.discard, ["allow"]);
    assert_eq!(db.interval, Some(Duration::from_secs(30)));
    assert_eq!(
        t.active_probes["pg_table_activity"].labels,
        ["schemaname", "relname"]
    );
    // The printed configuration names the file, not its queries.
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("queries_file") && !printed.contains("pg_postmaster"),
        "{printed}"
    );

    // What dbwarden cannot run as written is refused, named.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"
pg_state:
  query: "SELECT state, count(*) AS n FROM pg_stat_activity GROUP BY state"
  metrics:
    - state:
        usage: "MAPPEDMETRIC"
        mapping: { active: 1, idle: 0 }
    - n:
        usage: "GAUGEE"
"#,
    )
    .unwrap();
    let found = issues(&format!(
        "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\nqueries_file = \"{}\"\n",
        bad.display()
    ));
    let at = |q: &str| format!("postgres.main.queries_file.{q}");
    let state: Vec<&str> = found
        .iter()
        .filter(|i| i.path == at("pg_state"))
        .map(|i| i.message.as_str())
        .collect();
    assert!(
        state
            .iter()
            .any(|m| m.contains("MAPPEDMETRIC is not supported yet")),
        "{found:#?}"
    );
    assert!(
        state.iter().any(|m| m.contains("unknown usage \"GAUGEE\"")),
        "{found:#?}"
    );
    // A query named like a probe of the table, and a cache faster than the poll.
    let fast = dir.path().join("fast.yaml");
    std::fs::write(
        &fast,
        "fast:\n  query: \"SELECT 1 AS one\"\n  cache_seconds: 1\n  metrics:\n    - one:\n        usage: \"GAUGE\"\n",
    )
    .unwrap();
    let found = issues(&format!(
        "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\nqueries_file = \"{}\"\n\n[postgres.main.probes.fast]\nsql = \"SELECT 2 AS two\"\n",
        fast.display()
    ));
    assert_issue(
        &found,
        "postgres.main.probes.fast",
        &["also a query of queries_file"],
    );
    assert_issue(
        &found,
        &at("fast.interval"),
        &["faster than the target's poll_interval"],
    );
    let missing = issues(
        "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\nqueries_file = \"/nonexistent/queries.yaml\"\n",
    );
    assert_issue(
        &missing,
        "postgres.main.queries_file",
        &["cannot read", "/nonexistent/queries.yaml"],
    );
}

/// postgres_exporter's queries run unchanged against PostgreSQL 15 in
/// `dbwarden check`: every imported probe succeeds and exports its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queries_file_runs_against_postgresql() {
    let pg = support::primary();
    psql(
        &pg,
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10); ANALYZE t;",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries.yaml");
    std::fs::write(&file, QUERIES_YAML).unwrap();
    let path = dir.path().join("check.toml");
    std::fs::write(
        &path,
        format!(
            "[postgres.main]\nurl = \"{}\"\nsslmode = \"disable\"\nqueries_file = \"{}\"\n",
            pg.url("postgres"),
            file.display()
        ),
    )
    .unwrap();
    let out = support::dbwarden_check(&path, "json");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", support::describe_output(&out)));
    let probes = json["targets"][0]["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 4, "{probes:#?}");
    for p in probes {
        assert_eq!(p["ok"], true, "{p:#}");
    }
    let series = |name: &str| {
        probes.iter().find(|p| p["probe"] == name).unwrap()["series"]
            .as_u64()
            .unwrap()
    };
    // postgres and the table's database: one size each (allow is discarded).
    assert_eq!(series("pg_database"), 1);
    assert_eq!(series("pg_postmaster"), 1);
    // One user table, five value columns.
    assert_eq!(series("pg_table_activity"), 5);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        support::describe_output(&out)
    );
}

/// A probe across databases: the target's own on the polling connection,
/// the others each on a connection opened for the run; a pattern follows
/// the databases the server has at each run; every row carries its
/// database; a database that returns other columns fails the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_run_across_databases_within_the_connection_budget() {
    let pg = support::primary();
    for db in ["tenant_a", "tenant_b"] {
        psql(&pg, &format!("CREATE DATABASE {db}"));
    }
    let in_db = |db: &str, sql: &str| {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &pg.url(db), "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_db(
        "tenant_a",
        "CREATE TABLE entities (id int); INSERT INTO entities SELECT generate_series(1, 3)",
    );
    in_db(
        "tenant_b",
        "CREATE TABLE entities (id int); INSERT INTO entities SELECT generate_series(1, 5)",
    );
    in_db(
        "postgres",
        "CREATE TABLE entities (id int); INSERT INTO entities SELECT generate_series(1, 7)",
    );
    let toml = format!(
        r#"[postgres.main]
url = "{}"
sslmode = "disable"
poll_interval = "1s"
poll_timeout = "500ms"
statement_timeout = "400ms"
connect_timeout = "2s"
max_connections = 2

[postgres.main.probes.tenants]
sql = "SELECT count(*) AS rows FROM entities"
databases = ["tenant_*"]
interval = "1s"
timeout = "300ms"
checks.rows = {{ min = 4 }}

[postgres.main.probes.mixed]
sql = "SELECT count(*) AS rows FROM entities"
databases = ["postgres", "tenant_b"]
interval = "1s"
timeout = "300ms"
"#,
        pg.url("postgres")
    );
    let d = Daemon::start(&toml).await;
    // dbwarden's backends, sampled at every check of the waits below.
    let most = std::sync::atomic::AtomicI64::new(0);
    let sample = || {
        let n: i64 = psql(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbwarden%'",
        )
        .trim()
        .parse()
        .unwrap();
        most.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    };
    let want = |db: &'static str, probe: &'static str, n: f64| (probe, db, n);
    let wants = [
        want("tenant_a", "tenants", 3.0),
        want("tenant_b", "tenants", 5.0),
        want("postgres", "mixed", 7.0),
        want("tenant_b", "mixed", 5.0),
    ];
    wait_until(T, "rows per database", async || {
        sample();
        let text = d.try_metrics().await?;
        for (probe, db, n) in wants {
            let got = support::metric_value(
                &text,
                &format!("dbwarden_probe_{probe}_rows"),
                &[("target", "main"), ("database", db)],
            );
            if got != Some(n) {
                return Err(format!("{probe} {db}: {got:?}"));
            }
        }
        Ok(())
    })
    .await;
    // The worst database decides: tenant_a's 3 rows are under 4.
    let status = d.status().await;
    let (st, detail) = probe_check(&status, "probe:tenants:rows").expect("the check");
    assert_eq!(st, "fail", "{detail}");
    assert!(detail.contains("tenant_a"), "{detail}");
    // A new database matching the pattern joins at the next run.
    psql(&pg, "CREATE DATABASE tenant_c");
    in_db(
        "tenant_c",
        "CREATE TABLE entities (id int); INSERT INTO entities SELECT generate_series(1, 9)",
    );
    wait_until(T, "tenant_c counted", async || {
        sample();
        let text = d.try_metrics().await?;
        match support::metric_value(
            &text,
            "dbwarden_probe_tenants_rows",
            &[("target", "main"), ("database", "tenant_c")],
        ) {
            Some(9.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A database whose table has another shape fails the probe, by name.
    in_db(
        "tenant_c",
        "DROP TABLE entities; CREATE TABLE entities (id int, kind text)",
    );
    in_db("tenant_b", "DROP TABLE entities");
    let detail = wait_until(T, "tenants fails on tenant_b", async || {
        let s = d.status().await;
        match probe_check(&s, "probe:tenants") {
            Some((st, detail)) if st == "fail" => Ok(detail),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(detail.contains("entities"), "{detail}");
    // The connection budget held: never more than two backends of dbwarden
    // in any sample, and the probes' own connection was seen at least once
    // is not required (it lives for milliseconds).
    sample();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=2).contains(&most), "{most} dbwarden backends");
    assert_eq!(builtin_check(&d.status().await, "connection"), "pass");
    d.stop().await;
}

/// A probe in another database needs a second connection: with
/// `max_connections = 1`, or with remediation acting and only two, the
/// configuration says so.
#[test]
fn a_probe_in_another_database_needs_room_in_the_connection_budget() {
    let probe = "[postgres.main.probes.t]\nsql = \"SELECT 1 AS one\"\ndatabases = [\"tenant_*\"]\n";
    let base = "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n";
    let found = issues(&format!("{base}max_connections = 1\n{probe}"));
    assert_issue(
        &found,
        "postgres.main.probes.t.databases",
        &["second connection", "max_connections is 1"],
    );
    let remediation = "[remediation]\nmode = \"enforce\"\naudit_file = \"/var/lib/dbwarden/audit.jsonl\"\n\
        state_dir = \"/var/lib/dbwarden\"\n[remediation.policies.p]\naction = \"cancel\"\nwhen.query_running_for = \"5m\"\n";
    let found = issues(&format!("{base}{probe}{remediation}"));
    assert_issue(
        &found,
        "postgres.main.max_connections",
        &[
            "2 is too few",
            "a probe runs in another database",
            "max_connections = 3",
        ],
    );
    load(&format!("{base}max_connections = 3\n{probe}{remediation}"))
        .unwrap_or_else(|e| panic!("{e}"));
}
