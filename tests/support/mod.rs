//! Shared helpers for the integration tests (`mod support;`).
//!
//! - [`wait_until`]: wait on a condition with a deadline, never a fixed sleep;
//!   on timeout it panics with what was awaited and the last observation.
//! - [`Daemon`]: `dbwarden::daemon::run` in-process on the test's runtime,
//!   listening on a free port, stopped through a oneshot-based shutdown
//!   future; scrapes `/metrics`, `/api/v1/status` and any other path.
//! - [`parse_metrics`] / [`metric_value`]: a small OpenMetrics text parser.
//! - [`fast_target`]: a `[postgres.NAME]` table with short intervals that
//!   pass validation (each ≥ 100ms, statement ≤ poll timeout ≤ interval).
//! - Scratch clusters and the `dbwarden` binary, called without blocking the
//!   runtime's other worker; sessions as any role ([`connect_as`]), their
//!   backend identity ([`backend_of`]) and whether it still exists
//!   ([`backend_alive`]).
//! - [`child::ChildGuard`]: a program a test starts (Prometheus,
//!   Alertmanager), killed and reaped on drop, its log shown on failure;
//!   [`child::wait_ready`] waits for its readiness endpoint.
//! - [`DaemonProcess`]: the `dbwarden` binary as a child process, killed
//!   (SIGKILL) and reaped on drop; [`tcp_ports_of`] maps a
//!   `pg_stat_activity.client_port` to the process holding that socket.
//!
//! Every test must run on a multi-thread runtime
//! (`#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`):
//! [`blocking`] uses `block_in_place`.

#![allow(dead_code)]

pub mod bolt;
pub mod child;
pub mod kube_fake;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use dbwarden::config::Config;
use dbwarden::scratch::{ClusterOptions, ScratchCluster};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often [`wait_until`] re-checks its condition.
pub const POLL_EVERY: Duration = Duration::from_millis(75);

/// Awaits `check` every [`POLL_EVERY`] until it returns `Ok(value)`, and
/// returns that value. `Err(observation)` means "not yet"; when `timeout`
/// has passed, panics with `desc` and the last observation.
pub async fn wait_until<T>(
    timeout: Duration,
    desc: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if started.elapsed() >= timeout {
                    panic!(
                        "timed out after {:.1?} ({attempts} observations) waiting for {desc}\n\
                         last observation: {last}",
                        started.elapsed()
                    );
                }
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Runs blocking work (a scratch cluster, a child process) on the current
/// worker without starving the runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Installs a test-friendly log subscriber when `RUST_LOG` is set, so a
/// failing run can be replayed with the daemon's logs.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// ------------------------------------------------------------- PostgreSQL

/// A scratch primary with default options.
pub fn primary() -> ScratchCluster {
    primary_with(ClusterOptions::default())
}

pub fn primary_with(opts: ClusterOptions) -> ScratchCluster {
    blocking(|| ScratchCluster::start_primary(opts))
        .unwrap_or_else(|e| panic!("start_primary: {e}"))
}

/// A streaming standby of `primary`.
pub fn standby(primary: &ScratchCluster) -> ScratchCluster {
    blocking(|| ScratchCluster::start_standby(primary))
        .unwrap_or_else(|e| panic!("start_standby: {e}\nprimary log:\n{}", primary.log_tail()))
}

/// `psql -c SQL` on database `postgres`; panics with psql's stderr on failure.
pub fn psql(cluster: &ScratchCluster, sql: &str) -> String {
    blocking(|| cluster.psql("postgres", sql))
        .unwrap_or_else(|e| panic!("psql {sql:?} on port {}: {e}", cluster.port()))
}

/// `psql -c SQL` for use inside [`wait_until`]: errors become observations.
pub fn try_psql(cluster: &ScratchCluster, sql: &str) -> Result<String, String> {
    blocking(|| cluster.psql("postgres", sql)).map_err(|e| format!("psql {sql:?}: {e}"))
}

/// A sqlx connection to database `postgres` with the given `application_name`.
pub async fn connect(cluster: &ScratchCluster, application_name: &str) -> sqlx::PgConnection {
    connect_url(&cluster.url("postgres"), application_name).await
}

/// A sqlx connection to `url` (no query string) with the given `application_name`.
pub async fn connect_url(url: &str, application_name: &str) -> sqlx::PgConnection {
    let url = format!("{url}?application_name={application_name}&sslmode=disable");
    sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect as {application_name}: {e}"))
}

/// A sqlx connection to database `postgres` as `user` (trust authentication)
/// with the given `application_name`.
pub async fn connect_as(
    cluster: &ScratchCluster,
    user: &str,
    application_name: &str,
) -> sqlx::PgConnection {
    connect_url(
        &format!("postgres://{user}@127.0.0.1:{}/postgres", cluster.port()),
        application_name,
    )
    .await
}

/// This connection's backend: its pid and `backend_start` in microseconds
/// since the epoch (as dbwarden reads it). Runs a statement, so the session
/// is idle, with a fresh `state_change`, when this returns.
pub async fn backend_of(conn: &mut sqlx::PgConnection) -> (i32, i64) {
    sqlx::query_as::<_, (i32, i64)>(
        "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
         FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
    .unwrap_or_else(|e| panic!("reading this session's backend: {e}"))
}

/// Whether the backend `(pid, backend_start_us)` still exists, asked on
/// `monitor` (a role that sees every session).
pub async fn backend_alive(
    monitor: &mut sqlx::PgConnection,
    (pid, backend_start_us): (i32, i64),
) -> Result<bool, String> {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2)",
    )
    .bind(pid)
    .bind(backend_start_us)
    .fetch_one(monitor)
    .await
    .map_err(|e| format!("monitor query: {e}"))
}

/// A TCP listener that never accepts: connections complete the handshake
/// and then hear nothing, like a hung server. Closed on drop.
pub struct Blackhole {
    listener: TcpListener,
}

impl Blackhole {
    pub fn new() -> Self {
        Blackhole {
            listener: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"),
        }
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.listener.local_addr().expect("local_addr").port()
        )
    }
}

/// A `[postgres.NAME]` table with short, valid intervals (poll every 300ms,
/// statements stopped at 250ms, lock waits at 100ms, at most 2 connections)
/// followed by `[postgres.NAME.thresholds]` holding `thresholds` verbatim.
pub fn fast_target(name: &str, url: &str, thresholds: &str) -> String {
    format!(
        r#"
[postgres.{name}]
url = "{url}"
sslmode = "disable"
poll_interval = "300ms"
poll_timeout = "300ms"
statement_timeout = "250ms"
lock_timeout = "100ms"
connect_timeout = "1s"
backoff_max = "1s"
max_connections = 2

[postgres.{name}.thresholds]
{thresholds}
"#
    )
}

/// [`fast_target`] on `pg`'s `postgres` database with a `replication_lag`
/// of 1 s and no hold, and `pods` selecting the one pod named `pod` (of
/// [`kube_fake::FakeCluster::primary_and_standby`]).
pub fn pod_target(name: &str, pg: &dbwarden::scratch::ScratchCluster, pod: &str) -> String {
    let lag = r#"replication_lag = { max = "1s", for = "0s" }"#;
    fast_target(name, &pg.url("postgres"), lag).replacen(
        "sslmode = \"disable\"\n",
        &format!("sslmode = \"disable\"\npods = \"statefulset.kubernetes.io/pod-name={pod}\"\n"),
        1,
    )
}

// ---------------------------------------------------------------- daemon

/// The daemon running in-process on the test's runtime.
pub struct Daemon {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    client: reqwest::Client,
}

impl Daemon {
    /// Validates `toml` (no environment), makes it listen on a free port
    /// (adding `listen` to its `[server]` table, or adding that table), starts
    /// `dbwarden::daemon::run` as a task and waits until `/livez` answers.
    pub async fn start(toml: &str) -> Daemon {
        Self::start_with_env(toml, &[]).await
    }

    /// [`Daemon::start`] with the environment the configuration is read
    /// with (e.g. a store's credentials), instead of none.
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Daemon {
        init_logging();
        let addr = format!("127.0.0.1:{}", free_port());
        let listen = format!("[server]\nlisten = \"{addr}\"\n");
        let full = if toml.contains("[server]\n") {
            toml.replacen("[server]\n", &listen, 1)
        } else {
            format!("{listen}\n{toml}")
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::from_toml_with_env(&full, env)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{full}"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dbwarden::daemon::run(config.clone(), async move {
            let _ = rx.await;
        }));
        let mut daemon = Daemon {
            base_url: format!("http://{addr}"),
            config,
            shutdown: Some(tx),
            handle: Some(handle),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("reqwest client"),
        };
        let started = Instant::now();
        loop {
            if daemon.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let result = daemon.handle.take().expect("handle").await;
                panic!("the daemon stopped during start-up: {result:?}");
            }
            match daemon.get("/livez").await {
                Ok((200, _)) => break,
                other => assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the daemon did not answer /livez within 10s: {other:?}"
                ),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        daemon
    }

    /// GET `path`: status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let code = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("GET {path}: reading body: {e}"))?;
        Ok((code, body))
    }

    /// POST `path` with an optional bearer token and a body (sent as JSON
    /// when not empty): status code and body.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut req = self.client.post(format!("{}{path}", self.base_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| format!("POST {path}: {e}"))?;
        let code = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("POST {path}: reading body: {e}"))?;
        Ok((code, body))
    }

    /// GET `path`, with the response headers.
    pub async fn get_full(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The `/metrics` text, or why it could not be scraped.
    pub async fn try_metrics(&self) -> Result<String, String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics answered {code}: {body}")),
        }
    }

    pub async fn metrics(&self) -> String {
        self.try_metrics().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// One sample of the current `/metrics` (see [`metric_value`]).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// `/api/v1/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        match self.get("/api/v1/status").await {
            Ok((200, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("/api/v1/status is not JSON: {e}\n{body}")),
            other => panic!("/api/v1/status: {other:?}"),
        }
    }

    /// Resolves the shutdown future and waits for `run` to return, at most
    /// the configured grace period plus 5 s. Returns how long that took;
    /// panics if `run` failed, panicked or hung.
    pub async fn stop(mut self) -> Duration {
        let grace = self.config.server.shutdown_grace;
        let handle = self.handle.take().expect("the daemon runs");
        let started = Instant::now();
        let _ = self.shutdown.take().expect("not stopped yet").send(());
        match tokio::time::timeout(grace + Duration::from_secs(5), handle).await {
            Ok(Ok(Ok(()))) => started.elapsed(),
            Ok(Ok(Err(e))) => panic!("the daemon returned an error: {e:#}"),
            Ok(Err(e)) => panic!("the daemon task failed: {e}"),
            Err(_) => panic!(
                "the daemon did not return within {:?} after shutdown",
                grace + Duration::from_secs(5)
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also on panic: stop the daemon before the clusters it watches go away.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

// ------------------------------------------------------------ OpenMetrics

/// What a sample must be, for [`expect_metrics`].
#[derive(Debug, Clone, Copy)]
pub enum Want {
    Eq(f64),
    Ge(f64),
    Gt(f64),
    Le(f64),
    Lt(f64),
    /// The sample must not be exported.
    Absent,
}

impl Want {
    fn holds(self, v: Option<f64>) -> bool {
        match (self, v) {
            (Want::Absent, v) => v.is_none(),
            (_, None) => false,
            (Want::Eq(w), Some(v)) => v == w,
            (Want::Ge(w), Some(v)) => v >= w,
            (Want::Gt(w), Some(v)) => v > w,
            (Want::Le(w), Some(v)) => v <= w,
            (Want::Lt(w), Some(v)) => v < w,
        }
    }
}

/// A metric selector and what its sample must be: `(name, labels, want)`.
pub type Expectation<'a> = (&'a str, &'a [(&'a str, &'a str)], Want);

/// Checks every `(name, labels, want)` against one scrape. `Err` lists
/// each expectation that does not hold with the value seen (for
/// [`wait_until`]'s last observation).
pub fn expect_metrics(text: &str, wants: &[Expectation<'_>]) -> Result<(), String> {
    let failed: Vec<String> = wants
        .iter()
        .filter_map(|(name, labels, want)| {
            let v = metric_value(text, name, labels);
            (!want.holds(v)).then(|| format!("{name}{labels:?}: want {want:?}, got {v:?}"))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// `dbwarden_poll_errors_total{target}` by kind (kinds with a sample only).
pub fn poll_errors(text: &str, target: &str) -> std::collections::BTreeMap<String, f64> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == "dbwarden_poll_errors_total"
                && s.labels.iter().any(|(k, v)| k == "target" && v == target)
        })
        .filter_map(|s| {
            let kind = s.labels.into_iter().find(|(k, _)| k == "kind")?.1;
            Some((kind, s.value))
        })
        .collect()
}

/// One sample line of an OpenMetrics/Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses every sample line (comments and blank lines skipped; label
/// values unescaped; a trailing timestamp ignored). Panics on a line it
/// cannot read: the exposition itself would be broken.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("bad exposition line {l:?}: {e}")))
        .collect()
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("no value after the metric name")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = match chars.peek() {
                Some((_, '}')) => {
                    end = chars.next().expect("peeked").0;
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated label set".into()),
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("label without '='")?;
            let key = after[start..eq].to_string();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((key, value));
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        }
        rest = &after[end + 1..];
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the one sample named `name` whose labels include all of
/// `labels`; `None` when there is none. Panics when several match: the
/// selector is ambiguous, a bug in the test.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect();
    match matching.as_slice() {
        [] => None,
        [one] => Some(one.value),
        many => panic!("ambiguous metric selector {name}{labels:?}: {many:?}"),
    }
}

/// Like [`metric_value`], but a missing sample is an observation for
/// [`wait_until`].
pub fn require(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    metric_value(text, name, labels).ok_or_else(|| format!("no sample {name}{labels:?}"))
}

// ------------------------------------------------------------ the binary

/// Runs the `dbwarden` binary with `args` (no `DBWARDEN_*` variables from
/// the test's environment) and returns its output.
pub fn run_dbwarden(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DBWARDEN_") {
            cmd.env_remove(k);
        }
    }
    blocking(|| cmd.output()).unwrap_or_else(|e| panic!("running dbwarden {args:?}: {e}"))
}

/// `dbwarden check --config FILE --format FORMAT`.
pub fn dbwarden_check(config: &Path, format: &str) -> Output {
    run_dbwarden(&[
        "check",
        "--config",
        config.to_str().expect("UTF-8 temp path"),
        "--format",
        format,
    ])
}

/// Describes an [`Output`] for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------- child processes

/// The `dbwarden` binary running as a child process (`run --config FILE`),
/// with its stdout and stderr in a log file. Killed (SIGKILL) and reaped on
/// drop, also while a test panics; then its log tail is printed.
pub struct DaemonProcess {
    pub name: String,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub config_file: std::path::PathBuf,
    child: Option<std::process::Child>,
    pid: u32,
    log: std::path::PathBuf,
    client: reqwest::Client,
}

impl DaemonProcess {
    /// Writes `toml` to `<dir>/<name>.toml` with a `[server] listen` on a
    /// free port (added like [`Daemon::start`] does), starts the binary
    /// without the test's `DBWARDEN_*` variables, and waits (10 s) until
    /// `/livez` answers, panicking with the log if the process exits.
    pub async fn spawn(name: &str, dir: &Path, toml: &str) -> DaemonProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let config_file = dir.join(format!("{name}.toml"));
        std::fs::write(&config_file, with_listen(toml, &addr))
            .unwrap_or_else(|e| panic!("write {}: {e}", config_file.display()));
        Self::start(name, dir, &config_file, &addr, &[]).await
    }

    /// Starts `dbwarden run --config <config_file> <args>` on a config the
    /// caller wrote, listening on `addr` (see [`with_listen`]).
    pub async fn start(
        name: &str,
        dir: &Path,
        config_file: &Path,
        addr: &str,
        args: &[&str],
    ) -> DaemonProcess {
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
        cmd.arg("run")
            .arg("--config")
            .arg(config_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DBWARDEN_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbwarden {name}: {e}"));
        let mut d = DaemonProcess {
            name: name.to_string(),
            base_url: format!("http://{addr}"),
            config_file: config_file.to_path_buf(),
            pid: child.id(),
            child: Some(child),
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
        };
        let started = Instant::now();
        loop {
            d.assert_running();
            if let Ok((200, _)) = d.get("/livez").await {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "dbwarden {name} did not answer /livez within 10s\n{}",
                d.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        d
    }

    /// The address it listens on, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    /// Its whole output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POST `path` with `body` and, if given, a bearer token: status code and body.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base_url))
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("POST {path} on {}: {e}", self.name))?;
        let code = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((code, body))
    }

    /// The child's process id (also after it was killed).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True until the process has exited (or was killed and reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics with the log tail when the process already exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "dbwarden {} exited early ({status})\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// `kill -9` and reap. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last 60 lines of the process's output.
    pub fn log_tail(&self) -> String {
        log_tail(&format!("dbwarden {}", self.name), &self.log, 60)
    }

    /// GET `path`: status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .map_err(|e| format!("GET {path} on {}: {e}", self.name))?;
        let code = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("GET {path} on {}: reading body: {e}", self.name))?;
        Ok((code, body))
    }

    /// The `/metrics` text, or why it could not be scraped.
    pub async fn try_metrics(&self) -> Result<String, String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics of {} answered {code}: {body}", self.name)),
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill9();
        if was_running && std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// `toml` with a `[server] listen = "<addr>"` (added to its `[server]`
/// table, or as one).
pub fn with_listen(toml: &str, addr: &str) -> String {
    let listen = format!("[server]\nlisten = \"{addr}\"\n");
    if toml.contains("[server]\n") {
        toml.replacen("[server]\n", &listen, 1)
    } else {
        format!("{listen}\n{toml}")
    }
}

/// The local ports of the TCP sockets (IPv4 and IPv6) that process `pid`
/// holds open right now, read from `/proc`; empty when the process is gone.
/// Maps a `pg_stat_activity.client_port` to the process that owns it.
pub fn tcp_ports_of(pid: u32) -> std::collections::BTreeSet<u16> {
    let mut inodes = std::collections::BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_string_lossy()
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                && let Ok(n) = inode.parse::<u64>()
            {
                inodes.insert(n);
            }
        }
    }
    let mut ports = std::collections::BTreeSet::new();
    if inodes.is_empty() {
        return ports;
    }
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ..."
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, inode.parse::<u64>())
                && inodes.contains(&inode)
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// The last `lines` lines of the log file `log` of the process `name`,
/// under a heading naming both (what a failing test shows of a child).
pub fn log_tail(name: &str, log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- {name} log ({}) ---\n{}",
        log.display(),
        all[from..].join("\n")
    )
}

#[cfg(test)]
mod parser_tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_specials() {
        let text = "# HELP x y\n\
                    a_total{target=\"m\",kind=\"connect\"} 3\n\
                    b{q=\"say \\\"hi\\\"\\\\\\n\"} +Inf\n\
                    c 1.5 1700000000\n\
                    d{} NaN\n\
                    # EOF\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 4);
        assert_eq!(
            metric_value(text, "a_total", &[("kind", "connect")]),
            Some(3.0)
        );
        assert_eq!(
            s[1].labels,
            vec![("q".to_string(), "say \"hi\"\\\n".to_string())]
        );
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(metric_value(text, "c", &[]), Some(1.5));
        assert!(s[3].value.is_nan());
        assert_eq!(metric_value(text, "a_total", &[("kind", "io")]), None);
    }
}
