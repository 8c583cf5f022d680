//! Reload in place, against a real PostgreSQL and the `dbwarden` binary:
//! `SIGHUP`, `POST /api/v1/reload` and `--watch-config` re-read the file;
//! targets come and go, thresholds change without a reconnect, a policy
//! switched to enforce acts within the budget spent before, an invalid file
//! changes nothing, a storm of signals leaks nothing, and a ConfigMap-style
//! symlink swap is picked up.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "reload-token-7Qx";

fn hup(d: &DaemonProcess) {
    let pid = Pid::from_raw(d.pid() as i32).expect("a pid");
    kill_process(pid, Signal::HUP).expect("send SIGHUP");
}

/// Writes a new configuration where the daemon reads it (its listen address kept).
fn rewrite(d: &DaemonProcess, toml: &str) {
    std::fs::write(&d.config_file, with_listen(toml, d.addr())).expect("rewrite the config");
}

async fn metric(d: &DaemonProcess, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let text = d.try_metrics().await?;
    metric_value(&text, name, labels).ok_or_else(|| format!("no {name}{labels:?}"))
}

async fn reloads(d: &DaemonProcess, result: &str) -> f64 {
    metric(d, "dbwarden_config_reloads_total", &[("result", result)])
        .await
        .unwrap_or(-1.0)
}

/// dbwarden's backends on the cluster, by database: (pid, backend_start).
fn dbwarden_backends(
    cluster: &dbwarden::scratch::ScratchCluster,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let rows = try_psql(
        cluster,
        "SELECT datname || ' ' || pid || ' ' || backend_start FROM pg_stat_activity \
         WHERE application_name = 'dbwarden' ORDER BY 1",
    )?;
    let mut by_db: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in rows.lines().filter(|l| !l.trim().is_empty()) {
        let (db, rest) = line.trim().split_once(' ').unwrap_or((line, ""));
        by_db
            .entry(db.to_string())
            .or_default()
            .push(rest.to_string());
    }
    Ok(by_db)
}

fn token_file(dir: &Path) -> String {
    let f = dir.join("api-token");
    std::fs::write(&f, TOKEN).unwrap();
    f.display().to_string()
}

/// Adds a target, removes one (its backend leaves the server, its series
/// leave /metrics) and changes a threshold: the check flips and the kept
/// target's connection is the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_changes_targets_in_place() {
    let cluster = primary();
    psql(&cluster, "CREATE DATABASE b");
    psql(&cluster, "CREATE DATABASE c");
    let dir = tempfile::tempdir().unwrap();
    let before = format!(
        "{}{}",
        fast_target(
            "a",
            &cluster.url("postgres"),
            "idle_session = { max = \"1h\" }"
        ),
        fast_target("b", &cluster.url("b"), "")
    );
    let d = DaemonProcess::spawn("reload-targets", dir.path(), &before).await;
    let _victim = connect(&cluster, "victim").await;
    wait_until(
        WAIT,
        "a and b up, a's idle sessions within 1h",
        async || {
            let a = metric(&d, "dbwarden_up", &[("target", "a")]).await?;
            let b = metric(&d, "dbwarden_up", &[("target", "b")]).await?;
            let idle = metric(
                &d,
                "dbwarden_check_failing",
                &[("target", "a"), ("check", "idle_session")],
            )
            .await?;
            match (a, b, idle) {
                (1.0, 1.0, 0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let a_backend = wait_until(WAIT, "a's backend", async || {
        dbwarden_backends(&cluster)?
            .get("postgres")
            .and_then(|b| b.first().cloned())
            .ok_or("none yet".to_string())
    })
    .await;

    let after = format!(
        "{}{}",
        fast_target(
            "a",
            &cluster.url("postgres"),
            "idle_session = { max = \"1s\" }"
        ),
        fast_target("c", &cluster.url("c"), "")
    );
    rewrite(&d, &after);
    hup(&d);
    wait_until(
        WAIT,
        "the reload applied: c up, b gone, a's check failing",
        async || {
            let text = d.try_metrics().await?;
            let c_up = metric_value(&text, "dbwarden_up", &[("target", "c")]);
            let b_series = text.lines().filter(|l| l.contains("target=\"b\"")).count();
            let idle = metric_value(
                &text,
                "dbwarden_check_failing",
                &[("target", "a"), ("check", "idle_session")],
            );
            let ok = metric_value(&text, "dbwarden_config_last_reload_successful", &[]);
            match (c_up, b_series, idle, ok) {
                (Some(1.0), 0, Some(1.0), Some(1.0)) => Ok(()),
                other => Err(format!(
                    "c up, b series, a idle failing, reload ok: {other:?}"
                )),
            }
        },
    )
    .await;
    wait_until(WAIT, "b's backend gone from the server", async || {
        let backends = dbwarden_backends(&cluster)?;
        match backends.get("b") {
            None => Ok(()),
            Some(b) => Err(format!("still {b:?}")),
        }
    })
    .await;
    let backends = dbwarden_backends(&cluster).unwrap();
    assert_eq!(
        backends.get("postgres").map(|b| b.as_slice()),
        Some(std::slice::from_ref(&a_backend)),
        "a kept its connection: {backends:?}"
    );
    assert_eq!(reloads(&d, "success").await, 1.0);
    assert_eq!(reloads(&d, "failure").await, 0.0);
    assert!(d.log().contains("reloaded"), "{}", d.log_tail());
}

/// Switching the policy from dry-run to enforce: the next qualifying
/// session is terminated, and the budget spent in dry-run before the reload
/// still counts (3 per target: two reported in dry-run leave one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_enforce_acts_within_the_budget_spent_before() {
    let cluster = primary();
    let dir = tempfile::tempdir().unwrap();
    let config = |mode: &str| {
        format!(
            "{}\n[remediation]\nmode = \"{mode}\"\naudit_file = \"{}/audit.jsonl\"\nstate_dir = \"{}\"\n\
             pacing = \"0s\"\n[remediation.budget]\nper_target = 3\nglobal = 10\nwindow = \"1h\"\n\
             [remediation.policies.idle]\naction = \"terminate\"\n\
             [remediation.policies.idle.when]\nstate = [\"idle\"]\nidle_for = \"1s\"\nmatch_applications = [\"victim-.*\"]\n",
            fast_target("a", &cluster.url("postgres"), ""),
            dir.path().display(),
            dir.path().display()
        )
    };
    // Superusers are never selected: the victims log in as an ordinary role.
    psql(&cluster, "CREATE ROLE app LOGIN");
    let d = DaemonProcess::spawn("reload-enforce", dir.path(), &config("dry-run")).await;
    // The victims' sessions stay open, idle, until the test ends.
    let (mut victims, mut sessions) = (Vec::new(), Vec::new());
    for i in 1..=2 {
        let mut conn = connect_as(&cluster, "app", &format!("victim-{i}")).await;
        victims.push(backend_of(&mut conn).await);
        sessions.push(conn);
    }
    let decisions = |outcome: &'static str| {
        let d = &d;
        async move {
            metric(
                d,
                "dbwarden_remediation_actions_total",
                &[("target", "a"), ("policy", "idle"), ("outcome", outcome)],
            )
            .await
            .unwrap_or(0.0)
        }
    };
    wait_until(WAIT, "two dry-run decisions", async || {
        match decisions("would_act").await {
            2.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    rewrite(&d, &config("enforce"));
    hup(&d);
    wait_until(WAIT, "the reload", async || {
        match reloads(&d, "success").await {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    for i in 3..=4 {
        let mut conn = connect_as(&cluster, "app", &format!("victim-{i}")).await;
        victims.push(backend_of(&mut conn).await);
        sessions.push(conn);
    }
    wait_until(
        WAIT,
        "one termination, then the budget exhausted",
        async || {
            let acted = decisions("acted").await;
            let exhausted = metric(
                &d,
                "dbwarden_remediation_budget_exhausted",
                &[("scope", "a")],
            )
            .await?;
            match (acted, exhausted) {
                (1.0, 1.0) => Ok(()),
                other => Err(format!("acted, exhausted: {other:?}")),
            }
        },
    )
    .await;
    let mut monitor = connect(&cluster, "monitor").await;
    let mut alive = 0;
    for v in &victims {
        if backend_alive(&mut monitor, *v).await.unwrap() {
            alive += 1;
        }
    }
    assert_eq!(alive, 3, "exactly one of the four victims was terminated");
    assert_eq!(decisions("acted").await, 1.0);
}

/// An invalid file changes nothing: every mistake is logged and answered,
/// the metrics say the reload failed, and the daemon keeps polling with the
/// old configuration. A change that needs a restart is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_running_configuration() {
    let cluster = primary();
    let dir = tempfile::tempdir().unwrap();
    let valid = format!(
        "{}\n[remediation]\nmode = \"observe\"\naudit_file = \"{}/audit.jsonl\"\nstate_dir = \"{}\"\napi_token_file = \"{}\"\n",
        fast_target("a", &cluster.url("postgres"), ""),
        dir.path().display(),
        dir.path().display(),
        token_file(dir.path())
    );
    let d = DaemonProcess::spawn("reload-invalid", dir.path(), &valid).await;
    let polls = async || {
        metric(&d, "dbwarden_polls_total", &[("target", "a")])
            .await
            .unwrap_or(0.0)
    };
    rewrite(
        &d,
        &valid
            .replace("poll_interval = \"300ms\"", "poll_interval = \"300x\"")
            .replace(
                "max_connections = 2",
                "max_connections = 20\npol_timeout = \"1s\"",
            ),
    );
    hup(&d);
    wait_until(WAIT, "the refused reload", async || {
        match (
            reloads(&d, "failure").await,
            metric(&d, "dbwarden_config_last_reload_successful", &[]).await?,
        ) {
            (1.0, 0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let log = d.log();
    for path in [
        "postgres.a.poll_interval",
        "postgres.a.max_connections",
        "postgres.a.pol_timeout",
    ] {
        assert!(log.contains(path), "{path} not logged:\n{}", d.log_tail());
    }
    let seen = polls().await;
    wait_until(WAIT, "polls going on", async || {
        let now = polls().await;
        if now > seen + 2.0 {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
    // Through the API: the same answer, every mistake in the body.
    let (code, body) = d.post("/api/v1/reload", Some(TOKEN), "").await.unwrap();
    assert_eq!(code, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reloaded"], false, "{body}");
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(3), "{body}");
    let (code, _) = d.post("/api/v1/reload", None, "").await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = d.post("/api/v1/reload", Some("wrong"), "").await.unwrap();
    assert_eq!(code, 401);
    // A setting that cannot change in place.
    rewrite(
        &d,
        &valid.replace(
            "mode = \"observe\"",
            "mode = \"observe\"\ninstance = \"other\"",
        ),
    );
    let (code, body) = d.post("/api/v1/reload", Some(TOKEN), "").await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("remediation.instance") && body.contains("needs a restart"),
        "{body}"
    );
    // Fixed: applies, and the metrics say so.
    rewrite(
        &d,
        &valid.replace("poll_interval = \"300ms\"", "poll_interval = \"400ms\""),
    );
    let (code, body) = d.post("/api/v1/reload", Some(TOKEN), "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("updated a"), "{body}");
    assert_eq!(
        metric(&d, "dbwarden_config_last_reload_successful", &[]).await,
        Ok(1.0)
    );
    assert_eq!(reloads(&d, "failure").await, 3.0);
    assert_eq!(reloads(&d, "success").await, 1.0);
    // The poll loop takes its new interval at its next poll.
    wait_until(WAIT, "a polled at the new interval", async || match metric(
        &d,
        "dbwarden_poll_interval_seconds",
        &[("target", "a")],
    )
    .await?
    {
        0.4 => Ok(()),
        n => Err(format!("{n}")),
    })
    .await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

async fn tasks(d: &DaemonProcess) -> u64 {
    let (_, body) = d.get("/api/v1/status").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["runtime"]["tasks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no runtime.tasks in {v}"))
}

/// 200 SIGHUPs in a tight loop: the daemon lives, never holds more than
/// its budget of connections to a target, and leaks neither tasks nor
/// file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sighups_leak_nothing() {
    let cluster = primary();
    psql(&cluster, "CREATE DATABASE b");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}\n[remediation]\nmode = \"observe\"\naudit_file = \"{}/audit.jsonl\"\nstate_dir = \"{}\"\napi_token_file = \"{}\"\n",
        fast_target("a", &cluster.url("postgres"), ""),
        fast_target("b", &cluster.url("b"), ""),
        dir.path().display(),
        dir.path().display(),
        token_file(dir.path())
    );
    let mut d = DaemonProcess::spawn("reload-storm", dir.path(), &toml).await;
    wait_until(WAIT, "both targets up", async || {
        match (
            metric(&d, "dbwarden_up", &[("target", "a")]).await?,
            metric(&d, "dbwarden_up", &[("target", "b")]).await?,
        ) {
            (1.0, 1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A first reload through the API settles everything a reload creates once.
    assert_eq!(
        d.post("/api/v1/reload", Some(TOKEN), "").await.unwrap().0,
        200
    );
    let (fds, tasks_before) = (open_fds(d.pid()), tasks(&d).await);
    let mut most = 0;
    for i in 0..200 {
        hup(&d);
        if i % 10 == 0 {
            for (db, backends) in dbwarden_backends(&cluster).unwrap() {
                most = most.max(backends.len());
                assert!(backends.len() <= 2, "{db}: {backends:?} during the storm");
            }
        }
    }
    // Reloads run one at a time, in order: once this one is answered, the
    // signals' are done.
    let (code, body) = d.post("/api/v1/reload", Some(TOKEN), "").await.unwrap();
    assert_eq!(code, 200, "{body}");
    d.assert_running();
    assert!(most >= 1, "dbwarden's backends were seen");
    assert!(reloads(&d, "success").await >= 3.0);
    assert_eq!(reloads(&d, "failure").await, 0.0);
    let (fds_after, tasks_after) = (open_fds(d.pid()), tasks(&d).await);
    assert!(
        fds_after <= fds + 1,
        "file descriptors: {fds} before, {fds_after} after"
    );
    assert!(
        tasks_after <= tasks_before + 1,
        "tasks: {tasks_before} before, {tasks_after} after"
    );
    for (db, backends) in dbwarden_backends(&cluster).unwrap() {
        assert_eq!(backends.len(), 1, "{db}: {backends:?} after the storm");
    }
}

/// `--watch-config` follows a Kubernetes ConfigMap volume's update: a new
/// `..<timestamp>` directory, the `..data` symlink swapped to it
/// atomically, the old directory deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_follows_a_configmap_symlink_swap() {
    let cluster = primary();
    psql(&cluster, "CREATE DATABASE b");
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let version = |n: u32, toml: &str| {
        let v = volume.join(format!("..2026_12_06_00_00_0{n}.000000001"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("dbwarden.toml"), with_listen(toml, &addr)).unwrap();
        v
    };
    let first = version(1, &fast_target("a", &cluster.url("postgres"), ""));
    std::os::unix::fs::symlink(first.file_name().unwrap(), volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/dbwarden.toml", volume.join("dbwarden.toml")).unwrap();
    let d = DaemonProcess::start(
        "reload-watch",
        dir.path(),
        &volume.join("dbwarden.toml"),
        &addr,
        &["--watch-config"],
    )
    .await;
    wait_until(WAIT, "a up", async || {
        match metric(&d, "dbwarden_up", &[("target", "a")]).await? {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    // The kubelet's update: write the new version, point ..data_tmp at it,
    // rename over ..data, remove the old version.
    let second = version(
        2,
        &format!(
            "{}{}",
            fast_target("a", &cluster.url("postgres"), ""),
            fast_target("b", &cluster.url("b"), "")
        ),
    );
    std::os::unix::fs::symlink(second.file_name().unwrap(), volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    wait_until(WAIT, "b added by the watcher's reload", async || {
        match (
            reloads(&d, "success").await,
            metric(&d, "dbwarden_up", &[("target", "b")]).await,
        ) {
            (n, Ok(1.0)) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reloads(&d, "failure").await, 0.0);
}

/// A session check's scope is a threshold like any other: a reload that
/// ignores `psql` in `idle_session` applies in place (the same backend
/// polls), the idle psql stops failing the check and is counted as excluded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_scopes_a_session_check_in_place() {
    let cluster = primary();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url("postgres");
    let unscoped = fast_target("a", &url, "idle_session = { max = \"1s\" }");
    let d = DaemonProcess::spawn("reload-scope", dir.path(), &unscoped).await;
    let _dba = connect(&cluster, "psql").await;
    wait_until(
        WAIT,
        "the idle psql fails idle_session",
        async || match metric(
            &d,
            "dbwarden_check_failing",
            &[("target", "a"), ("check", "idle_session")],
        )
        .await?
        {
            1.0 => Ok(()),
            v => Err(format!("failing {v}")),
        },
    )
    .await;
    let backend = dbwarden_backends(&cluster).unwrap()["postgres"].clone();

    let scoped = fast_target(
        "a",
        &url,
        "idle_session = { max = \"1s\", ignore_applications = [\"psql\"] }",
    );
    rewrite(&d, &scoped);
    hup(&d);
    wait_until(
        WAIT,
        "the reload applied: psql excluded and the check passing",
        async || {
            let text = d.try_metrics().await?;
            let at = |name: &str, extra: &[(&str, &str)]| {
                let mut labels = vec![("target", "a"), ("check", "idle_session")];
                labels.extend_from_slice(extra);
                metric_value(&text, name, &labels)
            };
            match (
                at("dbwarden_check_failing", &[]),
                at(
                    "dbwarden_check_excluded_sessions",
                    &[("reason", "ignore_applications")],
                ),
            ) {
                (Some(0.0), Some(1.0)) => Ok(()),
                other => Err(format!("failing, excluded: {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        dbwarden_backends(&cluster).unwrap()["postgres"],
        backend,
        "the same connection polls"
    );
    assert_eq!(reloads(&d, "success").await, 1.0);
}

/// Backup locations follow a reload: one added, one removed (its series
/// leave /metrics), one changed (its new thresholds apply); the database
/// target is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_changes_backup_locations() {
    let cluster = primary();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("db-1.sql"),
        "--\n-- PostgreSQL database dump\n--\n",
    )
    .unwrap();
    let loc = |name: &str, thresholds: &str| {
        format!(
            "[backups.{name}]\ntarget = \"a\"\nurl = \"file://{}/\"\npattern = \"db-*.sql\"\ninterval = \"1s\"\ntimeout = \"1s\"\n[backups.{name}.thresholds]\n{thresholds}\n",
            store.display()
        )
    };
    let target = fast_target("a", &cluster.url("postgres"), "");
    let before = format!("{target}{}{}", loc("x", ""), loc("y", ""));
    let d = DaemonProcess::spawn("reload-backups", dir.path(), &before).await;
    let size = async |backup: &str| {
        metric(
            &d,
            "dbwarden_check_failing",
            &[("backup", backup), ("check", "backup_size")],
        )
        .await
    };
    wait_until(WAIT, "x and y observed, sizes fine", async || {
        match (size("x").await?, size("y").await?) {
            (0.0, 0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let after = format!(
        "{target}{}{}",
        loc("x", "min_bytes = 1000000"),
        loc("z", "")
    );
    rewrite(&d, &after);
    hup(&d);
    wait_until(
        WAIT,
        "x failing on its new min_bytes, y gone, z observed",
        async || {
            let text = d.try_metrics().await?;
            let y_left = !text.contains("backup=\"y\"");
            match (size("x").await?, size("z").await?, y_left) {
                (1.0, 0.0, true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(reloads(&d, "success").await, 1.0);
    assert_eq!(metric(&d, "dbwarden_up", &[("target", "a")]).await, Ok(1.0));
}
