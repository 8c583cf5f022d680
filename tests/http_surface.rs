//! The HTTP surface over plain HTTP, against a real PostgreSQL: content
//! negotiation of `/metrics` (the text format checked by the real
//! `promtool`), gzip, the web configuration's headers, who may see what
//! (basic auth, open probes), query texts redacted in the API, and the
//! limits that bound hostile clients (431, the header read timeout).
//!
//! Needs the Debian packages `postgresql-15` and `prometheus` (promtool);
//! fails, never skips, without them.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `promtool check metrics` on `text`: its exit status and output.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    assert!(
        std::path::Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} is missing: install the Debian package `prometheus` (apt-get install prometheus)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A web configuration file in `dir` with one basic-auth user, and extra YAML.
fn web_config(dir: &std::path::Path, user: &str, password: &str, extra: &str) -> String {
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    let path = dir.join("web-config.yml");
    std::fs::write(
        &path,
        format!("basic_auth_users:\n  {user}: \"{hash}\"\n{extra}"),
    )
    .expect("write the web configuration");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_negotiated_gzipped_and_the_text_format_passes_promtool() {
    let pg = primary();
    let daemon = Daemon::start(&fast_target("main", &pg.url("postgres"), "")).await;
    wait_until(Duration::from_secs(20), "a first poll", async || {
        require(
            &daemon.metrics().await,
            "dbwarden_up",
            &[("target", "main")],
        )
    })
    .await;
    let c = client();
    let url = format!("{}/metrics", daemon.base_url);

    // No Accept header (curl, promtool users): the text format 0.0.4.
    let resp = c.get(&url).send().await.expect("GET /metrics");
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.expect("body");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE dbwarden_build_info gauge")
            && text.contains("# TYPE dbwarden_polls_total counter")
            && text.contains("# TYPE dbwarden_http_rejections_total counter"),
        "{text}"
    );
    let (ok, out) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics refused the text format:\n{out}");
    // OpenMetrics is what promtool cannot read (its `info` type): the reason
    // the text format exists.
    let resp = c
        .get(&url)
        .header("accept", "text/plain")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    // Prometheus's Accept header: OpenMetrics.
    let resp = c
        .get(&url)
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = resp.text().await.expect("body");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE dbwarden_build info"), "{om}");

    // gzip when accepted (reqwest is built without it: the bytes are raw).
    for (accept, marker) in [("", "# HELP"), (PROMETHEUS_ACCEPT, "# EOF")] {
        let mut req = c.get(&url).header("accept-encoding", "gzip");
        if !accept.is_empty() {
            req = req.header("accept", accept);
        }
        let resp = req.send().await.expect("GET");
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        let bytes = resp.bytes().await.expect("body");
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut plain)
            .expect("a gzip body");
        assert!(plain.contains(marker), "{plain}");
        assert!(
            bytes.len() * 3 < plain.len(),
            "gzip compresses the exposition"
        );
    }
    let resp = c
        .get(&url)
        .header("accept-encoding", "gzip;q=0, identity")
        .send()
        .await
        .expect("GET");
    assert!(resp.headers().get("content-encoding").is_none());
    daemon.stop().await;
}

/// A session whose query text carries a secret, left running.
async fn leaky_session(pg: &dbwarden::scratch::ScratchCluster) -> tokio::task::JoinHandle<()> {
    let mut conn = connect(pg, "leaky-app").await;
    tokio::spawn(async move {
        let _ = sqlx::query("SELECT pg_sleep(60), 'hunter2-secret-literal' AS password")
            .execute(&mut conn)
            .await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_authentication_and_never_shows_query_text_unless_configured() {
    let pg = primary();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = web_config(
        dir.path(),
        "ops",
        "right-password",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n",
    );
    let d = dir.path();
    let config = |query_text: bool| {
        format!(
            "[server]\nweb_config_file = \"{web}\"\napi_query_text = {query_text}\n{}\n\
             [remediation]\nmode = \"dry-run\"\ninstance = \"test\"\naudit_file = \"{}\"\nstate_dir = \"{}\"\n\
             sentinel_file = \"{}\"\nquery_max_chars = 256\nredact_queries = false\npacing = \"0s\"\n\n\
             [remediation.budget]\nper_target = 100\nglobal = 100\nwindow = \"10m\"\n\n\
             [remediation.policies.slow]\ntargets = [\"main\"]\naction = \"cancel\"\nvictims = \"all\"\n\n\
             [remediation.policies.slow.when]\nstate = [\"active\"]\nquery_running_for = \"1s\"\n\
             match_users = [\"postgres\"]\nmatch_applications = [\"leaky-app\"]\n",
            fast_target("main", &pg.url("postgres"), ""),
            d.join(format!("audit-{query_text}.jsonl")).display(),
            d.join(format!("state-{query_text}")).display(),
            d.join("pause").display(),
        )
    };
    let _session = leaky_session(&pg).await;
    let daemon = Daemon::start(&config(false)).await;
    let c = client();
    let get = async |path: &str, auth: Option<(&str, &str)>| {
        let mut req = c.get(format!("{}{path}", daemon.base_url));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| format!("GET {path}: {e}"))?;
        let code = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((code, headers, body))
    };
    let ops = Some(("ops", "right-password"));

    // Probes are open and tell up/down only.
    let (code, headers, _) = get("/livez", None).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        headers["x-frame-options"], "deny",
        "configured headers on every response"
    );
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    wait_until(Duration::from_secs(20), "/readyz", async || {
        let (code, _, body) = get("/readyz", None).await?;
        if code == 200 { Ok(body) } else { Err(body) }
    })
    .await;
    // Everything else needs the user.
    for path in [
        "/metrics",
        "/api/v1/status?snapshot=true",
        "/api/v1/actions",
        "/",
        "/ui/pause",
    ] {
        let (code, headers, body) = get(path, None).await.unwrap();
        assert_eq!(code, 401, "{path}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        assert!(!body.contains("hunter2"), "{path}: {body}");
        let (code, _, body) = get(path, Some(("ops", "wrong"))).await.unwrap();
        assert_eq!(code, 401, "{path}: {body}");
    }
    let (_, _, body) = get("/readyz", None).await.unwrap();
    assert!(
        !body.contains("hunter2") && !body.contains("pg_sleep"),
        "{body}"
    );
    // The health endpoints are open like the probes (HAProxy sends no
    // credentials), are never refused, and tell role and lag only.
    let rejected = async || {
        let (_, _, m) = get("/metrics", ops).await.unwrap();
        ["unauthenticated", "wrong_credentials"].map(|r| {
            metric_value(&m, "dbwarden_http_rejections_total", &[("reason", r)]).unwrap_or(0.0)
        })
    };
    let before = rejected().await;
    for (path, want) in [
        ("/health/main/primary", 200),
        ("/health/main/read-only", 200),
        ("/health/main/replica", 503),
    ] {
        let (code, headers, body) = get(path, None).await.unwrap();
        assert_eq!(code, want, "{path}: {body}");
        assert_eq!(headers["x-frame-options"], "deny", "{path}");
        assert!(
            !body.contains("hunter2") && !body.contains("pg_sleep"),
            "{path}: {body}"
        );
        // Wrong credentials are not even looked at.
        let (code, _, _) = get(path, Some(("ops", "wrong"))).await.unwrap();
        assert_eq!(code, want, "{path} with wrong credentials");
    }
    assert_eq!(rejected().await, before, "no health request was refused");

    // Authenticated: the session is there, its literals are not.
    let status = wait_until(
        Duration::from_secs(20),
        "the leaky session in the snapshot",
        async || {
            let (code, _, body) = get("/api/v1/status?snapshot=true", ops).await?;
            if code == 200 && body.contains("pg_sleep(?)") {
                Ok(body)
            } else {
                Err(format!("{code}: {}", &body[..body.len().min(500)]))
            }
        },
    )
    .await;
    assert!(!status.contains("hunter2"), "query text leaked: {status}");
    let actions = wait_until(
        Duration::from_secs(20),
        "a dry-run decision on the leaky session",
        async || {
            let (code, _, body) = get("/api/v1/actions", ops).await?;
            if code == 200 && body.contains("pg_sleep") {
                Ok(body)
            } else {
                Err(format!("{code}: {body}"))
            }
        },
    )
    .await;
    assert!(!actions.contains("hunter2"), "query text leaked: {actions}");
    // The status page shows the same decision under the same rule.
    let (code, _, page) = get("/", ops).await.unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("pg_sleep"),
        "the decision on the page: {page}"
    );
    assert!(
        !page.contains("hunter2"),
        "query text leaked on the page: {page}"
    );
    // The audit file itself keeps what remediation.redact_queries says (here: all).
    let audit = std::fs::read_to_string(d.join("audit-false.jsonl")).expect("audit file");
    assert!(audit.contains("hunter2"), "{audit}");

    let (code, _, metrics) = get("/metrics", ops).await.unwrap();
    assert_eq!(code, 200);
    for (reason, at_least) in [("unauthenticated", 3.0), ("wrong_credentials", 3.0)] {
        let n = metric_value(
            &metrics,
            "dbwarden_http_rejections_total",
            &[("reason", reason)],
        )
        .unwrap_or_default();
        assert!(n >= at_least, "{reason}: {n}\n{metrics}");
    }
    daemon.stop().await;

    // With api_query_text, an authenticated client sees the text as it is.
    let daemon = Daemon::start(&config(true)).await;
    let c2 = client();
    wait_until(
        Duration::from_secs(20),
        "the query text in the snapshot",
        async || {
            let body = c2
                .get(format!("{}/api/v1/status?snapshot=true", daemon.base_url))
                .basic_auth("ops", Some("right-password"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if body.contains("hunter2-secret-literal") {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let resp = c2
        .get(format!("{}/api/v1/status?snapshot=true", daemon.base_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 401);
    assert!(!resp.text().await.unwrap().contains("hunter2"));
    daemon.stop().await;
}

/// Sends `request` on a fresh connection and returns the first line of
/// the answer, or what ended the connection.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".to_string(),
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no answer within 15s".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_bounded_and_probes_still_answer() {
    let pg = primary();
    let daemon = Daemon::start(&fast_target("main", &pg.url("postgres"), "")).await;
    let addr = daemon.base_url.trim_start_matches("http://").to_string();

    // Headers over 16 KiB: 431.
    let big = format!(
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let line = raw(&addr, big.as_bytes()).await;
    assert!(line.contains("431"), "{line}");

    // Half-open and slow clients hold connections; the probes still answer.
    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        held.push(s);
    }
    let c = client();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = c
            .get(format!("{}/livez", daemon.base_url))
            .send()
            .await
            .expect("/livez while 50 connections are held");
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/livez took {:?}",
            started.elapsed()
        );
    }
    // The header read timeout (10 s) closes them and counts each.
    let mut closed = 0;
    for mut s in held {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 50, "every held connection is closed by the timeout");
    let text = daemon.metrics().await;
    let timeouts = metric_value(
        &text,
        "dbwarden_http_rejections_total",
        &[("reason", "header_timeout")],
    )
    .unwrap_or_default();
    assert!(timeouts >= 50.0, "{timeouts}\n{text}");
    let too_large = metric_value(
        &text,
        "dbwarden_http_rejections_total",
        &[("reason", "header_too_large")],
    )
    .unwrap_or_default();
    assert_eq!(too_large, 1.0, "{text}");
    daemon.stop().await;
}

/// Raises this process's open-file limit to what 1,200 sockets need (the
/// daemon runs in-process), within the hard limit.
fn enough_file_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let want = 4096;
    if limit.current.is_some_and(|c| c < want) {
        limit.current = Some(limit.maximum.map_or(want, |m| m.min(want)));
        setrlimit(Resource::Nofile, limit).expect("raise RLIMIT_NOFILE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_with_every_connection_slot_held() {
    enough_file_descriptors();
    let hole = Blackhole::new();
    let daemon = Daemon::start(&fast_target("main", &hole.url(), "")).await;
    let addr = daemon.base_url.trim_start_matches("http://").to_string();
    // More half-open connections than the 512 slots.
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let c = client();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = c
            .get(format!("{}/livez", daemon.base_url))
            .send()
            .await
            .expect("/livez with every slot held");
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/livez took {:?}",
            started.elapsed()
        );
    }
    let text = daemon.metrics().await;
    let evicted = metric_value(
        &text,
        "dbwarden_http_rejections_total",
        &[("reason", "connection_limit")],
    )
    .unwrap_or_default();
    assert!(
        evicted >= 88.0,
        "600 + 6 connections for 512 slots: {evicted}"
    );
    drop(held);
    daemon.stop().await;
}

/// The web configuration: refused at start-up with exit code 2 and the
/// field named; read again when it changes, applied in place; a bad one
/// is not applied and refuses a reload (SIGHUP): the running one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_configuration_is_checked_at_start_up_and_reloaded_in_place() {
    use rustix::process::{Pid, Signal, kill_process};
    let hole = Blackhole::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yml");
    let toml = format!(
        "[server]\nweb_config_file = \"{}\"\n{}",
        web.display(),
        fast_target("main", &hole.url(), "")
    );
    let config_file = dir.path().join("bad.toml");
    std::fs::write(&config_file, &toml).expect("write the config");

    // Start-up: an unknown field and a refused cipher suite, both named.
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\nbasic_auth_user: {}\n",
    )
    .expect("write the web configuration");
    let out = blocking(|| run_dbwarden(&["run", "--config", config_file.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.web_config_file") && stderr.contains("basic_auth_user"),
        "{stderr}"
    );
    // Missing certificate files are named too.
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    )
    .expect("write");
    let out = blocking(|| run_dbwarden(&["run", "--config", config_file.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    // Running without users; a change of the file adds one, applied at the
    // next connection without a reload (as exporter-toolkit does).
    std::fs::write(
        &web,
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    .unwrap();
    let d = DaemonProcess::spawn("web", dir.path(), &toml).await;
    let c = client();
    let status = async || -> Result<u16, String> {
        Ok(c.get(format!("{}/api/v1/status", d.base_url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .status()
            .as_u16())
    };
    assert_eq!(status().await.unwrap(), 200);
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  ops: \"{hash}\"\n")).unwrap();
    let hup = || kill_process(Pid::from_raw(d.pid() as i32).unwrap(), Signal::HUP).unwrap();
    wait_until(
        Duration::from_secs(20),
        "the changed file to require the user",
        async || match status().await? {
            401 => Ok(()),
            code => Err(format!("{code}")),
        },
    )
    .await;
    let authed = c
        .get(format!("{}/api/v1/status", d.base_url))
        .basic_auth("ops", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status(), 200);

    // A bad file refuses the reload: the user is still required.
    std::fs::write(&web, "basic_auth_users:\n  ops: not-a-hash\n").unwrap();
    hup();
    let metrics = wait_until(Duration::from_secs(20), "the refused reload", async || {
        let text = c
            .get(format!("{}/metrics", d.base_url))
            .basic_auth("ops", Some("pw"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        match metric_value(&text, "dbwarden_config_last_reload_successful", &[]) {
            Some(0.0) => Ok(text),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(metrics.contains("dbwarden_http_rejections_total"));
    assert_eq!(status().await.unwrap(), 401);
    assert!(
        d.log().contains("basic_auth_users.ops: not a bcrypt hash"),
        "{}",
        d.log_tail()
    );
}

/// Beyond the loopback interface without TLS or authentication, start-up
/// says so, naming what is missing; on 127.0.0.1 it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_without_tls_or_auth_is_warned_about() {
    let hole = Blackhole::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config_file = dir.path().join("open.toml");
    std::fs::write(
        &config_file,
        format!(
            "[server]\nlisten = \"0.0.0.0:{port}\"\n{}",
            fast_target("main", &hole.url(), "")
        ),
    )
    .expect("write the config");
    let open = DaemonProcess::start(
        "open",
        dir.path(),
        &config_file,
        &format!("127.0.0.1:{port}"),
        &[],
    )
    .await;
    let log = open.log();
    assert!(
        log.contains("serving plain HTTP beyond the loopback interface")
            && log.contains("answer anyone who can connect"),
        "{log}"
    );
    let local =
        DaemonProcess::spawn("local", dir.path(), &fast_target("main", &hole.url(), "")).await;
    let log = local.log();
    assert!(
        !log.contains("beyond the loopback") && !log.contains("answer anyone"),
        "{log}"
    );
}
