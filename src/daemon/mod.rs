//! Wiring: one poll loop per target (and, where a policy applies, its
//! remediation loop, fed by [`remediation`]), the HTTP server, and shutdown.
//!
//! Every task hangs off one [`CancellationToken`] and one [`TaskTracker`]:
//! on SIGTERM/SIGINT the token is cancelled, each loop finishes the step it
//! is in (a poll is itself bounded by `poll_timeout`), and the process waits
//! at most `server.shutdown_grace` for them.
//!
//! A reload (`SIGHUP`, `POST /api/v1/reload`, `--watch-config`) re-reads
//! the configuration; [`reload::plan`] says what changed, and the daemon
//! starts, stops, reconnects or updates targets in place, one reload at a
//! time, or changes nothing.

pub mod backups;
pub mod kubernetes;
pub mod poller;
pub mod reload;
pub mod remediation;
pub mod schedule;
pub mod shards;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch as watch_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, TargetConfig};
use crate::evaluate::{Neo4jThresholds, Thresholds};
use crate::http;
#[cfg(feature = "neo4j")]
use crate::observe::neo4j::Neo4jObserver;
use crate::observe::neo4j::Neo4jTarget;
use crate::observe::{PostgresObserver, PostgresTarget};
use crate::remediate::Remediation;
use crate::state::{SharedState, alerts};
use crate::telemetry::logging::LogLevel;
use crate::telemetry::metrics::Metrics;

/// Where the daemon reads its configuration again on a reload.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `None`: the process environment, read at each reload.
    pub env: Option<Vec<(String, String)>>,
}

impl ConfigSource {
    /// Reads and validates the file and the environment (off the runtime:
    /// it reads files).
    async fn load(&self) -> Result<Config, ConfigError> {
        let source = self.clone();
        let loaded = tokio::task::spawn_blocking(move || match source.env {
            None => Config::load(&source.path),
            Some(env) => {
                let text =
                    std::fs::read_to_string(&source.path).map_err(|e| ConfigError::Read {
                        path: source.path.clone(),
                        source: e,
                    })?;
                Config::from_toml_with_env(&text, env)
            }
        })
        .await;
        loaded.unwrap_or_else(|e| {
            Err(ConfigError::Invalid(vec![crate::config::ConfigIssue {
                path: String::new(),
                message: format!("the reload task failed: {e}"),
            }]))
        })
    }
}

/// How `dbwarden run` runs the daemon beyond its configuration.
#[derive(Debug, Default)]
pub struct Options {
    /// Where a reload reads the configuration; `None`: reloads are refused.
    pub source: Option<ConfigSource>,
    /// Reload when the file (or a ConfigMap volume holding it) changes.
    pub watch_config: bool,
    /// The installed log subscriber's level, which a reload may change.
    pub log: Option<LogLevel>,
}

/// Runs the daemon until `shutdown` resolves, then drains within the grace
/// period; without a configuration file to reload.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, Options::default(), shutdown).await
}

/// Runs the daemon, reloading its configuration on `SIGHUP`, on `POST
/// /api/v1/reload` and, with `watch_config`, when the file changes.
pub async fn run_with(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::observe::tls::ensure_provider();
    let token = CancellationToken::new();
    // The web configuration's TLS files are read again here: they may have
    // changed since validation.
    let security = Arc::new(http::Security::new(
        http::Access::new(&config.server)
            .map_err(|e| anyhow::anyhow!("server.web_config_file: {e}"))?,
    ));
    let (reloads, mut reload_requests) = mpsc::channel(16);
    let sighup = reload_on_sighup(reloads.clone(), token.clone());
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let local = listener.local_addr()?;

    // With shards, a target is known here only once this replica takes it.
    let sharded = config.kubernetes.as_ref().and_then(|k| k.shards.clone());
    let state = Arc::new(SharedState::new(
        config
            .postgres
            .iter()
            .map(|t| (t.target.name.as_str(), "postgres"))
            .chain(
                config
                    .neo4j
                    .iter()
                    .map(|t| (t.target.name.as_str(), "neo4j")),
            )
            .filter(|_| sharded.is_none()),
    ));
    let metrics = Arc::new(Metrics::new(state.clone()));
    let tracker = TaskTracker::new();

    let remediation = match config.remediation.clone() {
        Some(settings) => Some(
            Remediation::start(settings, metrics.clone()).context("cannot start remediation")?,
        ),
        None => None,
    };
    if let Some(rem) = &remediation {
        let settings = rem.settings();
        tracing::info!(
            mode = settings.mode.as_str(),
            policies = settings.policies.len(),
            neo4j_policies = settings.neo4j_policies.len(),
            paused = rem.pause.is_paused(),
            "remediation configured"
        );
    }
    // Without the `kubernetes` feature, validation refuses `[kubernetes]`.
    #[cfg(feature = "kubernetes")]
    if let Some(k) = config.kubernetes.clone()
        && !k.targets.is_empty()
    {
        start_kubernetes(
            k,
            state.clone(),
            metrics.clone(),
            remediation.clone(),
            &tracker,
            token.child_token(),
        )
        .await;
    }

    let mut daemon = Running {
        state: state.clone(),
        metrics: metrics.clone(),
        remediation: remediation.clone(),
        // Alerts Alertmanager reports: fed by the receiver; remediation's
        // second gate ("act only while the named alert fires") reads them.
        alerts: Arc::new(alerts::FiringAlerts::new()),
        server: Arc::new(RwLock::new(Arc::new(config.server.clone()))),
        security: security.clone(),
        tracker: tracker.clone(),
        token: token.clone(),
        targets: BTreeMap::new(),
        backups: BTreeMap::new(),
        log: options.log,
        owned: sharded.as_ref().map(|_| BTreeSet::new()),
        configured: None,
        config,
    };
    let (assignments, mut assigned) = mpsc::channel::<shards::Assignment>(1);
    #[cfg(feature = "kubernetes")]
    let shard_leases = match (&sharded, daemon.config.kubernetes.clone()) {
        (Some(s), Some(k)) => Some(
            daemon
                .start_shards(s.clone(), &k, assignments)
                .await
                .context("cannot join the shard group")?,
        ),
        _ => None,
    };
    #[cfg(not(feature = "kubernetes"))]
    drop(assignments);
    daemon.start_targets();
    let locations: Vec<String> = daemon
        .config
        .backups
        .iter()
        .map(|b| b.target.name.clone())
        .collect();
    for name in &locations {
        daemon.start_backup(name);
    }
    let app = http::AppState {
        state: state.clone(),
        metrics: metrics.clone(),
        remediation,
        server: daemon.server.clone(),
        reloads: options.source.is_some().then(|| reloads.clone()),
        alerts: daemon.alerts.clone(),
        security,
    };
    let http_token = token.clone();
    tracker.spawn(async move {
        if let Err(e) = http::serve(listener, app, http_token.clone().cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP server failed");
            http_token.cancel();
        }
    });
    tracker.spawn(sighup);
    let _watcher = match (&options.source, options.watch_config) {
        (Some(source), true) => Some(watch_config(&source.path, reloads, &tracker, &token)?),
        _ => None,
    };
    tracing::info!(
        listen = %local,
        postgres = daemon.config.postgres.len(),
        neo4j = daemon.config.neo4j.len(),
        "dbwarden started"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: draining");
                break;
            }
            _ = token.cancelled() => {
                tracing::error!("a component failed: shutting down");
                break;
            }
            Some(assignment) = assigned.recv() => {
                daemon.assign(assignment.targets).await;
                let _ = assignment.done.send(());
            }
            Some(request) = reload_requests.recv() => {
                let result = match &options.source {
                    Some(source) => daemon.reload(source, request.by).await,
                    None => Err(vec!["no configuration file to reload".to_string()]),
                };
                if let Some(reply) = request.reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
    token.cancel();
    tracker.close();
    let grace = daemon.config.server.shutdown_grace;
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !drained {
        tracing::warn!(grace = %humantime::format_duration(grace), "tasks did not stop within the grace period; exiting anyway");
    }
    // Every target has stopped: the others may take them at once. (If some
    // did not, the Lease is left to expire, after the process is gone.)
    #[cfg(feature = "kubernetes")]
    if let Some(leases) = shard_leases.filter(|_| drained) {
        match tokio::time::timeout(STOP_GRACE, leases.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot release the shard Lease; it expires on its own")
            }
            Err(_) => tracing::warn!("releasing the shard Lease timed out; it expires on its own"),
        }
    }
    tracing::info!("dbwarden stopped");
    Ok(())
}

/// Asks for a reload on every `SIGHUP` (one waiting is enough: a storm of
/// signals is one or two reloads).
/// The handler is installed when this is called (before start-up goes on,
/// so an early SIGHUP does not end the process); the returned future asks.
fn reload_on_sighup(
    reloads: http::Reloads,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP: reload through the API");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                let _ = reloads.try_send(http::ReloadRequest {
                    by: "SIGHUP",
                    reply: None,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = (reloads, cancel);
    }
}

/// Starts watching the configuration file; each change asks for a reload.
fn watch_config(
    path: &std::path::Path,
    reloads: http::Reloads,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<impl Drop> {
    let (changed, mut changes) = mpsc::channel(1);
    let watcher = watch::watch(path, changed).map_err(|e| anyhow::anyhow!(e))?;
    let cancel = cancel.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = changes.recv() => if got.is_none() { return },
            }
            let _ = reloads.try_send(http::ReloadRequest {
                by: "the file watcher",
                reply: None,
            });
        }
    });
    tracing::info!(file = %path.display(), "watching the configuration file: a change reloads it");
    Ok(watcher)
}

/// The daemon's running parts: what a reload changes.
struct Running {
    config: Config,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    remediation: Option<Arc<Remediation>>,
    alerts: Arc<alerts::FiringAlerts>,
    server: Arc<RwLock<Arc<http::ServerSettings>>>,
    security: Arc<http::Security>,
    tracker: TaskTracker,
    token: CancellationToken,
    targets: BTreeMap<String, RunningTarget>,
    /// Each backup location's loop: its token and task.
    backups: BTreeMap<String, (CancellationToken, JoinHandle<()>)>,
    log: Option<LogLevel>,
    /// With shards: the targets this replica may act on (`None`: all).
    owned: Option<BTreeSet<String>>,
    /// With shards: tells the member loop the configured targets.
    configured: Option<watch_channel::Sender<Vec<String>>>,
}

/// One target's tasks: its poll loop and, where a policy applies, its
/// remediation; and the channel that gives its poll loop new settings.
struct RunningTarget {
    cancel: CancellationToken,
    updates: Updates,
    poller: JoinHandle<()>,
    /// The remediation task and its own token.
    remediation: Option<(CancellationToken, JoinHandle<()>)>,
}

/// What gives a poll loop of observer `O` new settings.
type ConfigSender<O> = watch_channel::Sender<
    TargetConfig<<O as poller::Observer>::Target, <O as poller::Observer>::Thresholds>,
>;

enum Updates {
    Postgres(watch_channel::Sender<TargetConfig<PostgresTarget, Thresholds>>),
    #[cfg_attr(not(feature = "neo4j"), allow(dead_code))]
    Neo4j(watch_channel::Sender<TargetConfig<Neo4jTarget, Neo4jThresholds>>),
}

impl Running {
    fn start_targets(&mut self) {
        let names: Vec<String> = self.target_names();
        for name in names {
            if self.owns(&name) {
                self.start_target(&name);
            }
        }
    }

    /// Whether this replica watches target `name` (always, without shards).
    fn owns(&self, name: &str) -> bool {
        self.owned.as_ref().is_none_or(|o| o.contains(name))
    }

    /// Joins the shard group: spawns the member loop, which assigns this
    /// replica its targets through `assignments`.
    #[cfg(feature = "kubernetes")]
    async fn start_shards(
        &mut self,
        settings: crate::kubernetes::ShardSettings,
        k: &crate::kubernetes::KubernetesSettings,
        assignments: mpsc::Sender<shards::Assignment>,
    ) -> anyhow::Result<Arc<crate::kubernetes::shards::ShardLeases>> {
        let client = crate::kubernetes::client::build_client(&k.credentials(), &k.namespace)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(
            group = %settings.group,
            identity = %settings.identity,
            lease = %settings.lease_name(),
            duration = %humantime::format_duration(settings.duration),
            "sharding the targets across replicas"
        );
        let leases = Arc::new(crate::kubernetes::shards::ShardLeases::new(
            client,
            &k.namespace,
            settings,
        ));
        let (configured, names) = watch_channel::channel(self.target_names());
        self.configured = Some(configured);
        self.tracker.spawn(shards::run(
            leases.clone(),
            names,
            assignments,
            self.metrics.clone(),
            self.token.child_token(),
        ));
        Ok(leases)
    }

    /// With shards: makes `targets` the ones this replica watches. Those
    /// it gives away stop (and their series go) before this returns, as a
    /// reload removing them does; those it takes start.
    async fn assign(&mut self, targets: BTreeSet<String>) {
        let leaving: Vec<String> = self
            .targets
            .keys()
            .filter(|n| !targets.contains(*n))
            .cloned()
            .collect();
        // All at once, then wait for each: a handover of many targets takes
        // as long as the slowest, not the sum.
        for name in &leaving {
            if let Some(t) = self.targets.get(name) {
                t.cancel.cancel();
            }
        }
        for name in &leaving {
            self.stop_target(name).await;
            self.state.remove_target(name);
            self.metrics.forget_target(name);
            tracing::info!(
                target = name.as_str(),
                "target handed over: stopped watching it"
            );
        }
        self.owned = Some(targets.clone());
        for name in &targets {
            if !self.targets.contains_key(name) && self.target_names().contains(name) {
                self.start_target(name);
                tracing::info!(target = name.as_str(), "target taken over: watching it");
            }
        }
    }

    fn target_names(&self) -> Vec<String> {
        let pg = self.config.postgres.iter().map(|t| t.target.name.clone());
        let neo4j = self.config.neo4j.iter().map(|t| t.target.name.clone());
        pg.chain(neo4j).collect()
    }

    /// Starts the poll loop of the configured target `name` (and its
    /// remediation, where a policy applies).
    fn start_target(&mut self, name: &str) {
        let cancel = self.token.child_token();
        let (updates, poller) =
            if let Some(t) = self.config.postgres.iter().find(|t| t.target.name == name) {
                let observer = PostgresObserver::new(t.target.clone());
                let (tx, poller) = self.spawn_poller(observer, t.clone(), &cancel);
                (Updates::Postgres(tx), poller)
            } else {
                #[cfg(feature = "neo4j")]
                {
                    let Some(t) = self.config.neo4j.iter().find(|t| t.target.name == name) else {
                        return;
                    };
                    let observer = Neo4jObserver::new(t.target.clone());
                    let (tx, poller) = self.spawn_poller(observer, t.clone(), &cancel);
                    (Updates::Neo4j(tx), poller)
                }
                // Without the `neo4j` feature, validation refuses Neo4j targets.
                #[cfg(not(feature = "neo4j"))]
                return;
            };
        self.metrics.add_target(name);
        self.targets.insert(
            name.to_string(),
            RunningTarget {
                cancel,
                updates,
                poller,
                remediation: None,
            },
        );
        self.follow_remediation(name);
    }

    /// Starts the loop of the configured backup location `name`.
    fn start_backup(&mut self, name: &str) {
        let Some(b) = self.config.backups.iter().find(|b| b.target.name == name) else {
            return;
        };
        let cancel = self.token.child_token();
        let task = self.tracker.spawn(backups::run(
            b.clone(),
            self.state.clone(),
            self.metrics.clone(),
            cancel.clone(),
        ));
        tracing::info!(backup = name, target = %b.target.target, url = %b.target.redacted_url(), interval = %humantime::format_duration(b.target.interval), "watching backups");
        self.backups.insert(name.to_string(), (cancel, task));
    }

    /// Stops a backup location's loop, waits for it, and removes its
    /// status and series. `config` is the configuration it ran with.
    async fn stop_backup(&mut self, name: &str, config: &Config) {
        let Some((cancel, task)) = self.backups.remove(name) else {
            return;
        };
        cancel.cancel();
        let Some(b) = config.backups.iter().find(|b| b.target.name == name) else {
            return;
        };
        if tokio::time::timeout(b.target.timeout + STOP_GRACE, task)
            .await
            .is_err()
        {
            tracing::warn!(
                backup = name,
                "the backup location's loop did not stop in time"
            );
        }
        self.state.remove_backup(name);
        self.metrics.forget_backup(name, &b.target.target);
    }

    /// Spawns a poll loop; returns the channel that gives it new settings.
    fn spawn_poller<O: poller::Observer>(
        &self,
        observer: O,
        config: TargetConfig<O::Target, O::Thresholds>,
        cancel: &CancellationToken,
    ) -> (ConfigSender<O>, JoinHandle<()>) {
        self.state.add_target(observer.name(), O::KIND);
        let (tx, rx) = watch_channel::channel(config);
        let run = poller::run(
            observer,
            rx,
            self.state.clone(),
            self.metrics.clone(),
            cancel.clone(),
        );
        (tx, self.tracker.spawn(run))
    }

    /// Starts or stops the target's remediation to match the policies: a
    /// reload may make a policy apply to it, or no longer.
    fn follow_remediation(&mut self, name: &str) {
        let Some(running) = self.targets.get_mut(name) else {
            return;
        };
        let wanted = self.remediation.as_ref().filter(|r| match running.updates {
            Updates::Postgres(_) => r.applies_to(name),
            Updates::Neo4j(_) => r.applies_to_neo4j(name),
        });
        match (wanted, &running.remediation) {
            (Some(rem), None) => {
                let cancel = running.cancel.child_token();
                let task = match &running.updates {
                    Updates::Postgres(tx) => remediation::postgres(
                        rem,
                        &tx.borrow().target,
                        self.state.clone(),
                        self.alerts.clone(),
                        cancel.clone(),
                    ),
                    #[cfg(feature = "neo4j")]
                    Updates::Neo4j(tx) => remediation::neo4j(
                        rem,
                        &tx.borrow().target,
                        self.state.clone(),
                        self.alerts.clone(),
                        cancel.clone(),
                    ),
                    #[cfg(not(feature = "neo4j"))]
                    Updates::Neo4j(_) => None,
                };
                if let Some(task) = task {
                    running.remediation = Some((cancel, self.tracker.spawn(task)));
                }
            }
            (None, Some((cancel, _))) => {
                cancel.cancel();
                running.remediation = None;
            }
            _ => {}
        }
    }

    /// Stops a target's tasks and waits until they are done (its
    /// connections closed), at most a little longer than a poll may take.
    async fn stop_target(&mut self, name: &str) {
        let Some(running) = self.targets.remove(name) else {
            return;
        };
        running.cancel.cancel();
        let limit = self.poll_timeout_of(name) + STOP_GRACE;
        let mut handles = vec![running.poller];
        handles.extend(running.remediation.map(|(_, h)| h));
        for h in handles {
            if tokio::time::timeout(limit, h).await.is_err() {
                tracing::warn!(target = name, "a task of the target did not stop in time");
            }
        }
    }

    fn poll_timeout_of(&self, name: &str) -> Duration {
        let pg = self.config.postgres.iter().find(|t| t.target.name == name);
        let neo4j = self.config.neo4j.iter().find(|t| t.target.name == name);
        pg.map(|t| t.target.settings.poll_timeout())
            .or(neo4j.map(|t| t.target.settings.poll_timeout()))
            .unwrap_or(Duration::ZERO)
    }

    /// Re-reads the configuration and applies what changed, or nothing.
    async fn reload(&mut self, source: &ConfigSource, by: &str) -> http::ReloadResult {
        let result = match source.load().await {
            Err(ConfigError::Invalid(issues)) => {
                Err(issues.iter().map(|i| i.to_string()).collect())
            }
            Err(e) => Err(vec![e.to_string()]),
            Ok(new) => self.apply(new).await,
        };
        match &result {
            Ok(summary) => tracing::info!(by, changes = %summary, "configuration reloaded"),
            Err(errors) => tracing::error!(
                by,
                "reload refused, the running configuration is kept:\n{}",
                errors
                    .iter()
                    .map(|e| format!("  - {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
        self.metrics.record_reload(result.is_ok());
        self.state.record_reload(crate::state::ReloadOutcome {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            by: by.to_string(),
            successful: result.is_ok(),
            messages: match &result {
                Ok(summary) => vec![summary.clone()],
                Err(errors) => errors.clone(),
            },
        });
        result
    }

    /// Applies a valid configuration in place; refuses all of it when a
    /// setting needs a restart.
    async fn apply(&mut self, new: Config) -> http::ReloadResult {
        let plan = reload::plan(&self.config, &new);
        if !plan.needs_restart.is_empty() {
            return Err(plan
                .needs_restart
                .iter()
                .map(|k| format!("{k}: cannot change while dbwarden runs: needs a restart"))
                .collect());
        }
        // The web configuration's TLS files are read again: they may have
        // changed since validation (a refusal changes nothing).
        let access = if plan.server {
            Some(
                http::Access::new(&new.server)
                    .map_err(|e| vec![format!("server.web_config_file: {e}")])?,
            )
        } else {
            None
        };
        // Remediation next: the last part that may still refuse.
        if let (Some(rem), Some(settings)) = (&self.remediation, &new.remediation)
            && plan.remediation
        {
            rem.reconfigure(settings.clone()).map_err(|e| {
                e.0.iter()
                    .map(|m| format!("remediation: {m}: needs a restart"))
                    .collect::<Vec<_>>()
            })?;
        }
        let old = std::mem::replace(&mut self.config, new);
        for name in plan.removed.iter().chain(&plan.reconnected) {
            self.stop_target(name).await;
        }
        for name in &plan.removed {
            self.state.remove_target(name);
            self.metrics.forget_target(name);
        }
        for name in plan.added.iter().chain(&plan.reconnected) {
            if self.owns(name) {
                self.start_target(name);
            }
        }
        if let Some(c) = &self.configured {
            c.send_replace(self.target_names());
        }
        for name in &plan.updated {
            self.update_target(name);
        }
        for name in plan.backups_removed.iter().chain(&plan.backups_changed) {
            self.stop_backup(name, &old).await;
        }
        for name in plan.backups_added.iter().chain(&plan.backups_changed) {
            self.start_backup(name);
        }
        if plan.remediation {
            self.follow_policies(&old);
        }
        if plan.server {
            *self.server.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(self.config.server.clone());
        }
        if let Some(access) = access {
            self.security.replace(access);
        }
        if plan.log_level
            && let Some(log) = &self.log
        {
            log.set(&self.config.log.level);
        }
        Ok(plan.summary())
    }

    /// Gives a running target's poll loop its new settings and thresholds.
    fn update_target(&mut self, name: &str) {
        let Some(running) = self.targets.get(name) else {
            return;
        };
        match &running.updates {
            Updates::Postgres(tx) => {
                if let Some(t) = self.config.postgres.iter().find(|t| t.target.name == name) {
                    tx.send_replace(t.clone());
                }
            }
            Updates::Neo4j(tx) => {
                if let Some(t) = self.config.neo4j.iter().find(|t| t.target.name == name) {
                    tx.send_replace(t.clone());
                }
            }
        }
    }

    /// After new policies: each target's remediation starts or stops, and
    /// the series of policies that no longer apply to it leave the metrics.
    fn follow_policies(&mut self, old: &Config) {
        let applying = |c: &Config, target: &str| -> Vec<String> {
            let Some(r) = &c.remediation else {
                return Vec::new();
            };
            let pg = r
                .policies
                .values()
                .filter(|p| p.applies_to(target))
                .map(|p| p.name.clone());
            let neo4j = r
                .neo4j_policies
                .values()
                .filter(|p| p.applies_to(target))
                .map(|p| p.name.clone());
            let rebuild = r
                .neo4j_index_rebuild
                .as_ref()
                .filter(|x| x.applies_to(target))
                .map(|_| crate::remediate::neo4j_index_policy::POLICY.to_string());
            pg.chain(neo4j).chain(rebuild).collect()
        };
        for name in self.target_names() {
            let now = applying(&self.config, &name);
            for gone in applying(old, &name).iter().filter(|p| !now.contains(p)) {
                self.metrics.forget_policy(&name, gone);
            }
            self.follow_remediation(&name);
        }
    }
}

/// How much longer than a poll a stopping target's tasks may take.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Builds the Kubernetes client and spawns the Kubernetes loop. Credentials
/// that cannot be loaded are reported as an unreachable API server in the
/// published status (and the log); the database targets run regardless.
#[cfg(feature = "kubernetes")]
pub async fn start_kubernetes(
    settings: crate::kubernetes::KubernetesSettings,
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    remediation: Option<Arc<Remediation>>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    match crate::kubernetes::client::build_client(&settings.credentials(), &settings.namespace)
        .await
    {
        Ok(client) => {
            tracing::info!(
                namespace = %settings.namespace,
                targets = settings.targets.len(),
                eviction = settings.eviction.is_some(),
                lease = settings.lease.is_some(),
                "watching Kubernetes"
            );
            tracker.spawn(kubernetes::run(
                settings,
                client,
                state,
                metrics,
                remediation,
                tracker.clone(),
                cancel,
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch Kubernetes: the Kubernetes checks fail; database polling is unaffected");
            state.publish_kubernetes(kubernetes::unreachable_status(&settings, &e.to_string()));
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop dbwarden");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
