//! End to end with the real monitoring stack: the Debian binaries of
//! Prometheus and Alertmanager against the daemon running in-process and
//! scratch PostgreSQL servers.
//!
//! 1. Prometheus scrapes the daemon (primary with WAL archiving and a
//!    replication slot, its streaming standby, a watched volume, and the
//!    Bolt test server of `tests/support/bolt` as a clustered Neo4j 5
//!    Enterprise, so the Neo4j rules and dashboard have data; both targets'
//!    pods served by the fake Kubernetes API server of
//!    `tests/support/kube_fake.rs` over HTTP, so the Kubernetes rules and
//!    dashboard have data), loads
//!    `deploy/prometheus/dbwarden-rules.yaml` and evaluates it every second:
//!    every rule must be healthy, and every query of every dashboard must
//!    run, with data unless listed in [`EXPECTED_EMPTY`].
//! 2. An alert fires for real (an idle session past a 1 s threshold) and
//!    travels Prometheus → Alertmanager → dbwarden's receiver, with the
//!    bearer token from a credentials file: the receiver counts it and the
//!    target is polled at once.
//!
//! Needs the Debian packages `prometheus`, `prometheus-alertmanager` and
//! `postgresql-15`; fails, never skips, without them. Every child process
//! is killed and reaped when the test ends, also on panic.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbwarden::config::Config;
use dbwarden::scratch::{ClusterOptions, ScratchCluster};
use dbwarden::secret::Secret;
use serde_json::Value;
use support::bolt::{BoltServer, ClusterMember, Db, Index, Persona, ServerState, Tx};
use support::child::{ChildGuard, wait_ready};
use support::kube_fake::{FakeCluster, KubeFake};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const RULES: &str = "deploy/prometheus/dbwarden-rules.yaml";
const TOKEN: &str = "e2e-alertmanager-token-71d2";

/// Dashboard queries that may rightly return nothing here, by a fragment of
/// the expression, with the reason.
const EXPECTED_EMPTY: &[(&str, &str)] = &[
    (
        "rate(dbwarden_poll_errors_total",
        "`> 0` keeps only targets with failing polls: no poll fails here",
    ),
    (
        "increase(dbwarden_postgres_checksum_failures_total",
        "`> 0` keeps only databases with new checksum failures: the pages are intact",
    ),
    (
        "increase(dbwarden_postgres_deadlocks_total",
        "`> 0` keeps only databases with new deadlocks: nothing deadlocks here",
    ),
    (
        "dbwarden_neo4j_index_population_percent",
        "exported only for indexes that are not ONLINE: the Neo4j here has one \
         index, ONLINE, so that no Neo4j alert fires",
    ),
    (
        "dbwarden_neo4j_index_rebuild_started_timestamp_seconds",
        "`> 0` only while an index rebuild runs: no index is FAILED here",
    ),
    (
        "outcome=~\"refused|failed|audit_failed|budget_exhausted\"",
        "`> 0` keeps only decisions held back or failed: the dry-run policy's \
         decisions are would_act until its budget runs out",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

// ------------------------------------------------------------------ daemon

/// The daemon in-process, from a validated `Config`.
struct Daemon {
    base: String,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    async fn start(body: &str, token: Option<&str>) -> Daemon {
        init_logging();
        let port = free_port();
        let toml =
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n\n{body}");
        let mut config = Config::from_toml_with_env(&toml, std::iter::empty())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        config.server.alertmanager_token = token.map(Secret::new);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dbwarden::daemon::run(config, async move {
            let _ = rx.await;
        }));
        let d = Daemon {
            base: format!("http://127.0.0.1:{port}"),
            port,
            stop: Some(tx),
            handle: Some(handle),
        };
        let c = client();
        wait_until(
            Duration::from_secs(30),
            "the daemon's /readyz",
            async || {
                if d.handle.as_ref().is_some_and(|h| h.is_finished()) {
                    panic!("the daemon stopped during start-up");
                }
                match c.get(format!("{}/readyz", d.base)).send().await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        d
    }

    async fn metrics(&self) -> Result<String, String> {
        let r = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

// ------------------------------------------------------------------ Prometheus

struct Prometheus {
    child: ChildGuard,
    base: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `scrape` every second, evaluating
    /// `rule_files` every second, and alerting to `alertmanager` if given.
    async fn start(
        dir: &Path,
        scrape: u16,
        rule_files: &[PathBuf],
        alertmanager: Option<u16>,
    ) -> Prometheus {
        let port = free_port();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: dbwarden\n    static_configs:\n      - targets: ['127.0.0.1:{scrape}']\n",
            rule_files
                .iter()
                .map(|f| format!("  - {}\n", f.display()))
                .collect::<String>()
        );
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, &config).expect("write prometheus.yml");
        let data = dir.join("prometheus-data");
        let args = vec![
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-lifecycle".to_string(),
        ];
        let mut child = ChildGuard::spawn(
            "prometheus",
            PROMETHEUS,
            "prometheus",
            &args,
            dir.join("prometheus.log"),
        );
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&mut child, &format!("{base}/-/ready")).await;
        Prometheus { child, base }
    }

    /// `GET /api/v1/<path>` with query parameters; the `data` of a success.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let r = client()
            .get(format!("{}/api/v1/{path}", self.base))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET /api/v1/{path}: {e}"))?;
        let code = r.status();
        let body: Value = r
            .json()
            .await
            .map_err(|e| format!("/api/v1/{path}: not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("/api/v1/{path} {params:?} answered {code}: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// An instant query's result vector (or scalar, as one element).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![data["result"].clone()],
        })
    }
}

// ------------------------------------------------------------------ dashboards

/// Every query of a dashboard, with where it is: panel targets (also in
/// rows) and the queries of template variables.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["definition"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .or_else(|| v["query"].as_str());
            if let Some(q) = q {
                out.push((
                    format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                    q.to_string(),
                ));
            }
        }
    }
    out
}

/// Replaces Grafana's variables: the interval macros by durations, and the
/// dashboard's own variables (used in `=~` matchers) by `.*`. Panics on a
/// variable the dashboard does not define.
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("${__interval}", "15s")
        .replace("$__range", "1h");
    let mut vars: Vec<&String> = variables.iter().collect();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in vars {
        e = e.replace(&format!("${{{v}}}"), ".*");
        let pat = format!("${v}");
        let mut out = String::new();
        let mut rest = e.as_str();
        while let Some(i) = rest.find(&pat) {
            let after = &rest[i + pat.len()..];
            let boundary = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            out.push_str(&rest[..i]);
            out.push_str(if boundary { ".*" } else { &pat });
            rest = after;
        }
        out.push_str(rest);
        e = out;
    }
    let leftover = e.match_indices('$').find(|(i, _)| {
        e[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '{')
    });
    assert!(
        leftover.is_none(),
        "undefined Grafana variable in {expr:?} (after substitution: {e:?})"
    );
    e
}

/// `label_values(selector, label)` → `(selector, label)`.
fn label_values(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim().to_string(), label.trim().to_string()))
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dashboards/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let rel = format!("dashboards/{}", p.file_name().unwrap().to_string_lossy());
            let v = serde_json::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

// ------------------------------------------------------------------ tests

/// A primary with data checksums, WAL archiving (to nowhere), a physical
/// replication slot and `pg_stat_statements`, and its streaming standby:
/// every family shows up.
fn replicated() -> (ScratchCluster, ScratchCluster) {
    let primary = primary_with(ClusterOptions {
        extra_conf: vec![
            "archive_mode = on".into(),
            "archive_command = 'true'".into(),
            "shared_preload_libraries = 'pg_stat_statements'".into(),
        ],
        ..ClusterOptions::default()
    });
    psql(&primary, "CREATE EXTENSION pg_stat_statements");
    psql(
        &primary,
        "SELECT pg_create_physical_replication_slot('dbwarden_e2e', true)",
    );
    psql(
        &primary,
        "CREATE TABLE e2e (id int); INSERT INTO e2e VALUES (1)",
    );
    psql(&primary, "SELECT pg_switch_wal()");
    let standby = standby(&primary);
    (primary, standby)
}

fn watched(name: &str, c: &ScratchCluster, interval: &str) -> String {
    format!(
        "[postgres.{name}]\nurl = {url:?}\nsslmode = \"disable\"\npoll_interval = \"{interval}\"\n\
         poll_timeout = \"1s\"\nstatement_timeout = \"900ms\"\nconnect_timeout = \"1s\"\n\
         database_sizes_interval = \"1s\"\n[postgres.{name}.paths]\ndata = {data:?}\n\n",
        url = c.url("postgres"),
        data = c.data_dir().to_string_lossy(),
    )
}

/// The Bolt test server as a healthy clustered Neo4j 5 Enterprise with a
/// running transaction, an ONLINE index, counts and databases: every Neo4j
/// family has data and no Neo4j alert fires.
fn neo4j() -> BoltServer {
    let state = ServerState::shared();
    {
        let mut s = support::bolt::state::lock(&state);
        s.transactions = vec![
            Tx::running(
                "neo4j-transaction-7",
                "query-9",
                "alice",
                "MATCH (n) RETURN n",
            )
            .elapsed_ms(200),
        ];
        s.indexes = vec![Index::online("person_name", "Person", "name")];
        s.node_count = 1234;
        s.relationship_count = 5678;
        s.databases = vec![Db::online("neo4j"), Db::online("system")];
        s.cluster_members = vec![
            ClusterMember::new("core-1", "10.0.0.1:7687", "PRIMARY"),
            ClusterMember::new("core-2", "10.0.0.2:7687", "PRIMARY"),
            ClusterMember::new("core-3", "10.0.0.3:7687", "PRIMARY"),
        ];
    }
    BoltServer::start(Persona::neo4j_5().clustered(), state)
}

/// A `[neo4j.NAME]` target on `server`, polled every `interval`.
fn watched_neo4j(name: &str, server: &BoltServer, password_file: &Path, interval: &str) -> String {
    format!(
        "[neo4j.{name}]\nuri = {uri:?}\nuser = \"neo4j\"\npassword_file = {pw:?}\n\
         poll_interval = \"{interval}\"\npoll_timeout = \"1s\"\nconnect_timeout = \"1s\"\n\n",
        uri = server.uri(),
        pw = password_file.to_string_lossy(),
    )
}

/// `table` (a `[postgres.NAME]` or `[neo4j.NAME]` table) with the pods
/// `selector` added to its first lines.
fn with_pods(table: &str, selector: &str) -> String {
    let (header, rest) = table.split_once('\n').expect("a table header");
    format!("{header}\npods = {selector:?}\n{rest}")
}

/// The Kubernetes rules, by whether the fake cluster makes their condition
/// hold (then they are pending or firing, never inactive).
const KUBERNETES_RULES: &[(&str, bool)] = &[
    // Both watches reach the fake API server.
    ("DbWardenKubernetesApiUnreachable", false),
    // postgres-2: not ready, CrashLoopBackOff, last termination OOMKilled.
    ("DbWardenKubernetesPodNotReady", true),
    ("DbWardenKubernetesPodCrashLooping", true),
    ("DbWardenKubernetesPodOOMKilled", true),
    // First seen by this dbwarden: at most one restart counted per pod.
    ("DbWardenKubernetesPodRestarting", false),
    // StatefulSet postgres: 2 of 3 ready.
    ("DbWardenKubernetesStatefulSetNotReady", true),
    // neo4j-0's claim at 20 % free, below the default 30 %.
    ("DbWardenKubernetesVolumeFreeLow", true),
];

/// The backup rules, by location: `nightly`'s newest backup is an HTML
/// page a tenth the size of the dump before it (shrunk and corrupt),
/// `stopped`'s only backup is two days old, `gone` does not exist.
const BACKUP_RULES: &[(&str, &str)] = &[
    ("DbWardenBackupShrunk", "nightly"),
    ("DbWardenBackupCorrupt", "nightly"),
    ("DbWardenBackupStale", "stopped"),
    ("DbWardenBackupStoreFailing", "gone"),
];

/// Three `file://` backup locations under `dir` (see [`BACKUP_RULES`]).
fn backup_locations(dir: &Path) -> String {
    let dump = format!(
        "--\n-- PostgreSQL database dump\n--\n{}",
        "INSERT INTO t VALUES (1);\n".repeat(400)
    );
    let nightly = dir.join("nightly");
    let stopped = dir.join("stopped");
    for d in [&nightly, &stopped] {
        std::fs::create_dir_all(d).expect("create a backup directory");
    }
    let write = |path: PathBuf, body: &str, age: Duration| {
        std::fs::write(&path, body).expect("write a backup");
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - age))
            .expect("date a backup");
    };
    write(nightly.join("db-1.sql"), &dump, Duration::from_secs(86400));
    write(
        nightly.join("db-2.sql"),
        "<html>502 Bad Gateway</html>",
        Duration::from_secs(60),
    );
    write(
        stopped.join("db-1.sql"),
        &dump,
        Duration::from_secs(2 * 86400),
    );
    [("nightly", nightly), ("stopped", stopped), ("gone", dir.join("gone"))]
        .iter()
        .map(|(name, d)| {
            format!(
                "[backups.{name}]\ntarget = \"primary\"\nurl = \"file://{}/\"\npattern = \"db-*.sql\"\ninterval = \"1s\"\ntimeout = \"1s\"\n\n",
                d.display()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_rule_and_dashboard_query() {
    let started = Instant::now();
    let (primary, standby) = replicated();
    // Remediation in dry-run mode (it audits what it would do and signals
    // nothing), with an idle session its policy selects held open, so that
    // the remediation families have data.
    psql(&primary, "CREATE ROLE e2e_idle LOGIN");
    let idle = connect_as(&primary, "e2e_idle", "e2e-idle").await;
    let remediation_dir = tempfile::tempdir().expect("tempdir");
    let remediation = format!(
        "[remediation]\nmode = \"dry-run\"\ninstance = \"e2e\"\naudit_file = {:?}\nstate_dir = {:?}\n\n\
         [remediation.policies.idle]\ntargets = [\"primary\"]\naction = \"terminate\"\n\
         [remediation.policies.idle.when]\nstate = [\"idle\"]\nidle_for = \"1s\"\n\
         match_users = [\"e2e_idle\"]\n",
        remediation_dir.path().join("audit.jsonl").to_string_lossy(),
        remediation_dir.path().join("state").to_string_lossy(),
    );
    let graph = neo4j();
    let kube = KubeFake::start(FakeCluster::databases());
    // Dry-run eviction of the crash-looping pod, so the eviction panel has
    // data; `rebuild_after` follows the standby's replay (never stalled
    // here), so the replay-stalled panel has data.
    let kubernetes = kube.config_section(
        "statefulsets = true\nvolume_stats = true\nvolume_stats_interval = \"10s\"\ninterval = \"1s\"\n\n\
         [kubernetes.lease]\nname = \"dbwarden\"\n\n\
         [kubernetes.eviction]\ntargets = [\"primary\"]\nnot_ready_for = \"30s\"\n\
         rebuild_after = \"10m\"\n",
    );
    let neo4j_password = remediation_dir.path().join("neo4j-password");
    std::fs::write(&neo4j_password, "secret\n").expect("write the Neo4j password file");
    // A scoped session check, so the excluded-sessions panel has data.
    let scoped = "[thresholds.idle_session]\nignore_applications = [\"psql\"]\n\n";
    let backups = backup_locations(remediation_dir.path());
    let daemon = Daemon::start(
        &format!(
            "{scoped}{}{}{}{}{remediation}\n{kubernetes}\n{backups}",
            with_pods(&watched("primary", &primary, "1s"), "app=postgres"),
            // The top statements (here dbwarden's own), for their panels.
            "[postgres.primary.statistics.statements]\ntop = 10\n\n",
            watched("standby", &standby, "1s"),
            with_pods(
                &watched_neo4j("graph", &graph, &neo4j_password, "1s"),
                "app=neo4j"
            ),
        ),
        None,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prom = Prometheus::start(dir.path(), daemon.port, &[root().join(RULES)], None).await;
    println!("daemon and Prometheus up after {:.1?}", started.elapsed());

    // Three scrapes of every target, so rate() over 1m has samples.
    wait_until(
        Duration::from_secs(20),
        "three scrapes of the three targets",
        async || {
            prom.child.assert_running();
            let r = prom.query("count_over_time(dbwarden_up[1m]) >= 3").await?;
            if r.len() == 3 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;

    // The Kubernetes series (volume readings come every 10s, the PVC usage
    // joins the primary's disk metrics at its next poll), three scrapes each.
    wait_until(
        Duration::from_secs(40),
        "three scrapes of the Kubernetes series",
        async || {
            prom.child.assert_running();
            for q in [
                "count_over_time(dbwarden_kubernetes_pod_ready{pod=\"postgres-2\"}[1m]) >= 3",
                "count_over_time(dbwarden_kubernetes_volume_free_ratio{pvc=\"data-neo4j-0\"}[1m]) >= 3",
                "count_over_time(dbwarden_disk_free_ratio{target=\"primary\",volume=\"pvc/data-postgres-0\"}[1m]) >= 3",
                "count_over_time(dbwarden_remediation_actions_total{action=\"evict\"}[1m]) >= 3",
                "count_over_time(dbwarden_kubernetes_lease_holder[1m]) >= 3",
            ] {
                if prom.query(q).await?.is_empty() {
                    return Err(format!("not yet: {q}"));
                }
            }
            Ok(())
        },
    )
    .await;

    // Every rule loaded, evaluated, healthy.
    let alerts = alert_names(&read(RULES));
    // Two evaluations of every rule: the first, and one after it.
    let mut first: Option<Vec<(String, String)>> = None;
    let rules = wait_until(
        Duration::from_secs(15),
        "every rule evaluated twice",
        async || {
            let data = prom.api("rules", &[]).await?;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated: Vec<(String, String)> = rules
                .iter()
                .filter(|r| r["health"] != "unknown")
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or("?").to_string(),
                        r["lastEvaluation"].to_string(),
                    )
                })
                .collect();
            if rules.len() != alerts.len() || evaluated.len() != rules.len() {
                return Err(format!(
                    "{} of {} rules loaded, {} evaluated",
                    rules.len(),
                    alerts.len(),
                    evaluated.len()
                ));
            }
            match &first {
                None => {
                    first = Some(evaluated);
                    Err("evaluated once".into())
                }
                Some(f)
                    if f.iter()
                        .zip(&evaluated)
                        .all(|(a, b)| a.0 == b.0 && a.1 != b.1) =>
                {
                    Ok(rules)
                }
                Some(_) => Err("not every rule evaluated again yet".into()),
            }
        },
    )
    .await;
    let mut broken = Vec::new();
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        if r["health"] != "ok" || r["lastError"].as_str().is_some_and(|e| !e.is_empty()) {
            broken.push(format!(
                "{name}: health {} error {} (query {})",
                r["health"], r["lastError"], r["query"]
            ));
        }
        if r["state"] != "inactive" {
            println!("note: {name} is {} here", r["state"]);
        }
    }
    assert!(
        broken.is_empty(),
        "rules Prometheus cannot evaluate:\n{}",
        broken.join("\n")
    );
    let loaded: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for a in &alerts {
        assert!(
            loaded.contains(a.as_str()),
            "{a} was not loaded by Prometheus"
        );
    }

    // Every dashboard query runs; those expected to have data have some.
    let mut failures = Vec::new();
    let mut empty_as_expected = Vec::new();
    let mut count = 0;
    for (rel, dash) in dashboards() {
        let variables: Vec<String> = dash["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(String::from))
            .collect();
        for (where_, raw) in dashboard_queries(&dash) {
            count += 1;
            let expr = substitute(&raw, &variables);
            if let Some((selector, label)) = label_values(&expr) {
                match prom.query(&selector).await {
                    Err(e) => failures.push(format!("{rel} {where_}: {e}")),
                    Ok(r) if r.is_empty() => {
                        failures.push(format!("{rel} {where_}: {selector} has no series"))
                    }
                    Ok(r) => {
                        if let Some(s) = r.iter().find(|s| s["metric"][label.as_str()].is_null()) {
                            failures.push(format!(
                                "{rel} {where_}: a series of {selector} lacks label {label}: {s}"
                            ));
                        }
                    }
                }
                continue;
            }
            let expected_empty = EXPECTED_EMPTY.iter().find(|(frag, _)| raw.contains(frag));
            match prom.query(&expr).await {
                Err(e) => failures.push(format!("{rel} {where_}: {e}")),
                Ok(r) if r.is_empty() && expected_empty.is_none() => {
                    failures.push(format!("{rel} {where_}: no data for {expr}"))
                }
                Ok(r) if r.is_empty() => empty_as_expected.push(format!("{rel} {where_}")),
                Ok(_) => {}
            }
        }
    }
    println!("{count} dashboard queries run; empty as expected: {empty_as_expected:#?}");
    assert!(count > 40, "suspiciously few dashboard queries: {count}");
    assert!(
        failures.is_empty(),
        "dashboard queries that fail or find nothing:\n{}",
        failures.join("\n")
    );
    println!("done after {:.1?}", started.elapsed());
    // The Neo4j target was up and healthy throughout: its alerts are inactive.
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        if name.starts_with("DbWardenNeo4j") {
            assert_eq!(r["state"], "inactive", "{name} is not inactive: {r}");
        }
    }
    // The Kubernetes rules evaluated the fake cluster's states, the `kind`
    // join included: holding where the cluster is unhealthy, inactive where
    // it is not.
    for (alert, holds) in KUBERNETES_RULES {
        let r = rules
            .iter()
            .find(|r| r["name"] == *alert)
            .unwrap_or_else(|| panic!("{alert} was not loaded"));
        assert_eq!(
            r["state"] != "inactive",
            *holds,
            "{alert} should {}be pending or firing with the fake cluster: {r}",
            if *holds { "" } else { "not " }
        );
    }
    // Each backup rule holds for its location, and only for it.
    for (alert, backup) in BACKUP_RULES {
        let r = rules
            .iter()
            .find(|r| r["name"] == *alert)
            .unwrap_or_else(|| panic!("{alert} was not loaded"));
        let holding: Vec<&str> = r["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["labels"]["backup"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            holding,
            vec![*backup],
            "{alert} should hold for {backup} only: {r}"
        );
    }
    let volume = rules
        .iter()
        .find(|r| r["name"] == "DbWardenKubernetesVolumeFreeLow")
        .expect("DbWardenKubernetesVolumeFreeLow");
    let volume_alerts: Vec<(&str, &str)> = volume["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["target"].as_str().unwrap_or("?"),
                a["labels"]["kind"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        volume_alerts,
        vec![("graph", "neo4j")],
        "only the Neo4j target's claim is low on space: {volume}"
    );
    assert!(
        kube.unexpected().is_empty(),
        "requests the fake Kubernetes API server does not serve: {:?}",
        kube.unexpected()
    );
    let up = prom.query("dbwarden_up{target=\"graph\"} == 1").await;
    assert!(
        up.as_ref().is_ok_and(|r| r.len() == 1),
        "the Neo4j target is not up in Prometheus: {up:?}"
    );
    drop(prom);
    drop(daemon);
    drop(idle);
    drop((primary, standby));
    graph.shutdown().await;
    drop(kube);
}

/// The rule `alert` of the real rule file, verbatim but for `for: 0s`,
/// alone in a group of its own.
fn test_rule_file(alert: &str) -> String {
    let rules = read(RULES);
    let start = rules
        .find(&format!("      - alert: {alert}\n"))
        .unwrap_or_else(|| panic!("{RULES} has no alert {alert}"));
    let rest = &rules[start..];
    let end = rest[1..]
        .find("\n      - alert:")
        .or_else(|| rest[1..].find("\n  - name:"))
        .map_or(rest.len(), |i| i + 2);
    let block = &rest[..end];
    assert!(
        block.contains("\n        for: 1m\n"),
        "{alert}: expected `for: 1m` in\n{block}"
    );
    format!(
        "# Test-only: {alert} exactly as in {RULES} except `for: 0s` instead of\n\
         # `for: 1m`, so that it fires within seconds (the rule's hold only rides out\n\
         # an odd scrape; dbwarden's own `for` is set to 0s in the test's config).\n\
         groups:\n  - name: e2e\n    rules:\n{}",
        block.replace("\n        for: 1m\n", "\n        for: 0s\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alert_reaches_the_receiver_and_wakes_the_target() {
    let started = Instant::now();
    let cluster = primary();
    // An idle session, idle for more than the 1 s threshold by the daemon's first poll.
    let _idle = connect(&cluster, "e2e-idle-client").await;
    wait_until(
        Duration::from_secs(10),
        "the session idle for 1.2s",
        async || {
            let n = try_psql(
                &cluster,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'e2e-idle-client' \
             AND state = 'idle' AND now() - state_change > interval '1.2 s'",
            )?;
            if n.trim() == "1" { Ok(()) } else { Err(n) }
        },
    )
    .await;

    // Polled once an hour: a second poll can only come from a wake.
    let target = format!(
        "[postgres.main]\nurl = {:?}\nsslmode = \"disable\"\npoll_interval = \"1h\"\npoll_timeout = \"5s\"\n\
         statement_timeout = \"3s\"\nconnect_timeout = \"3s\"\n\n\
         [postgres.main.thresholds.idle_session]\nmax = \"1s\"\nfor = \"0s\"\n",
        cluster.url("postgres")
    );
    let daemon = Daemon::start(&target, Some(TOKEN)).await;
    let text = daemon.metrics().await.expect("/metrics");
    assert_eq!(
        metric_value(&text, "dbwarden_polls_total", &[("target", "main")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_check_failing",
            &[("target", "main"), ("check", "idle_session")]
        ),
        Some(1.0),
        "the idle session must fail the check at the first poll\n{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("dbwarden-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    let am_port = free_port();
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        format!(
            "route:\n  receiver: dbwarden\n  group_by: [alertname, target]\n  group_wait: 0s\n  \
             group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: dbwarden\n    webhook_configs:\n      - url: http://127.0.0.1:{}/api/v1/alertmanager\n        \
             send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            \
             credentials_file: {}\n",
            daemon.port,
            token_file.display()
        ),
    )
    .expect("write alertmanager.yml");
    let mut am = ChildGuard::spawn(
        "alertmanager",
        ALERTMANAGER,
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", dir.path().join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_string(),
        ],
        dir.path().join("alertmanager.log"),
    );
    wait_ready(&mut am, &format!("http://127.0.0.1:{am_port}/-/ready")).await;

    let rule_file = dir.path().join("e2e-rules.yaml");
    std::fs::write(&rule_file, test_rule_file("DbWardenIdleSessions"))
        .expect("write the rule file");
    let mut prom = Prometheus::start(dir.path(), daemon.port, &[rule_file], Some(am_port)).await;
    println!("stack up after {:.1?}", started.elapsed());

    let fired = Instant::now();
    let text = wait_until(
        Duration::from_secs(30),
        "the alert to reach dbwarden and wake the target",
        async || {
            prom.child.assert_running();
            am.assert_running();
            let text = daemon.metrics().await?;
            let received = require(
                &text,
                "dbwarden_alertmanager_alerts_received_total",
                &[("status", "firing")],
            )?;
            let polls = require(&text, "dbwarden_polls_total", &[("target", "main")])?;
            if received >= 1.0 && polls >= 2.0 {
                Ok(text)
            } else {
                let alerts = prom.api("alerts", &[]).await.unwrap_or_default();
                Err(format!(
                    "received {received}, polls {polls}; Prometheus alerts: {alerts}"
                ))
            }
        },
    )
    .await;
    println!(
        "alert fired, delivered and woke the target within {:.1?}",
        fired.elapsed()
    );
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_alertmanager_requests_total",
            &[("code", "401")]
        ),
        None,
        "Alertmanager's bearer token (credentials_file) was refused"
    );
    assert!(
        metric_value(
            &text,
            "dbwarden_alertmanager_requests_total",
            &[("code", "202")]
        ) >= Some(1.0)
    );

    // The real annotations rendered, `query` template functions included.
    let alerts = prom.api("alerts", &[]).await.expect("Prometheus alerts");
    let alert = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "DbWardenIdleSessions" && a["state"] == "firing")
        .unwrap_or_else(|| panic!("DbWardenIdleSessions is not firing in Prometheus: {alerts}"));
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    println!("description: {description}");
    assert!(
        description.starts_with("main: a session has been idle for ")
            && description.contains("longer than the threshold of 1s;"),
        "the description did not render as expected: {description}"
    );

    // The receiver remembers the alert as firing, as Alertmanager sent it.
    let resp = client()
        .get(format!("{}/api/v1/alertmanager", daemon.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /api/v1/alertmanager");
    let list: Value = resp.json().await.expect("JSON");
    println!("dbwarden's firing alerts: {list}");
    let firing = list["firing"].as_array().expect("firing");
    assert!(
        firing
            .iter()
            .any(|f| f["alertname"] == "DbWardenIdleSessions" && f["target"] == "main"),
        "{list}"
    );
    println!("done after {:.1?}", started.elapsed());
    drop(prom);
    drop(am);
    drop(daemon);
    drop(cluster);
}

/// The rules `alerts` of the real rule file, verbatim but for `for: 0s`,
/// in a group of their own.
fn test_rule_group(alerts: &[&str]) -> String {
    let rules = read(RULES);
    let mut blocks = String::new();
    for alert in alerts {
        let start = rules
            .find(&format!("      - alert: {alert}\n"))
            .unwrap_or_else(|| panic!("{RULES} has no alert {alert}"));
        let rest = &rules[start..];
        let end = rest[1..]
            .find("\n      - alert:")
            .or_else(|| rest[1..].find("\n  - name:"))
            .map_or(rest.len(), |i| i + 2);
        let block = &rest[..end];
        let held = block
            .lines()
            .find(|l| l.starts_with("        for: "))
            .unwrap_or_else(|| panic!("{alert}: no `for:` in\n{block}"));
        blocks.push_str(&block.replacen(held, "        for: 0s", 1));
    }
    format!(
        "# Test-only: these alerts exactly as in {RULES} except `for: 0s`.\n\
         groups:\n  - name: e2e-backups\n    rules:\n{blocks}"
    )
}

/// A stopped, shrunken or corrupt backup (and a location that cannot be
/// listed) fires its alert in the real Prometheus, for that location only:
/// the shipped rules with their `for` set to 0s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shrunk_or_corrupt_backup_fires_its_alert() {
    let cluster = primary();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = format!(
        "[postgres.primary]\nurl = {:?}\nsslmode = \"disable\"\npoll_interval = \"1s\"\npoll_timeout = \"1s\"\n\
         statement_timeout = \"800ms\"\nconnect_timeout = \"1s\"\n\n",
        cluster.url("postgres")
    );
    let daemon = Daemon::start(&format!("{target}{}", backup_locations(dir.path())), None).await;
    let alerts: Vec<&str> = BACKUP_RULES.iter().map(|(a, _)| *a).collect();
    let rule_file = dir.path().join("e2e-backup-rules.yaml");
    std::fs::write(&rule_file, test_rule_group(&alerts)).expect("write the rule file");
    let mut prom = Prometheus::start(dir.path(), daemon.port, &[rule_file], None).await;
    wait_until(
        Duration::from_secs(60),
        "every backup alert firing for its location only",
        async || {
            prom.child.assert_running();
            let data = prom.api("alerts", &[]).await?;
            let firing: BTreeSet<(String, String)> = data["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "firing")
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap_or("?").to_string(),
                        a["labels"]["backup"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect();
            let want: BTreeSet<(String, String)> = BACKUP_RULES
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            if firing == want {
                Ok(())
            } else {
                Err(format!("firing {firing:?}, want {want:?}"))
            }
        },
    )
    .await;
    drop(prom);
    drop(daemon);
}
