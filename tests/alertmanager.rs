//! The Alertmanager receiver (`POST /api/v1/alertmanager`) and the example
//! Alertmanager configuration in `deploy/alertmanager/`.
//!
//! The receiver tests run the daemon in-process against a scratch
//! PostgreSQL primary with a poll interval of an hour: after the first poll
//! only a wake can make another, so `dbwarden_polls_total` counts exactly
//! the wakes. Needs the Debian packages `postgresql-15` and
//! `prometheus-alertmanager` (amtool); fails, never skips, without them.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dbwarden::config::Config;
use dbwarden::secret::Secret;
use serde_json::{Value, json};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "am-receiver-test-token-3f9c";
const ENDPOINT: &str = "/api/v1/alertmanager";
const TARGET: &str = "main";
const AM_CONFIG: &str = "deploy/alertmanager/alertmanager.yml";
const AM_TEMPLATE: &str = "deploy/alertmanager/dbwarden.tmpl";
/// How long a woken target may take to finish its poll.
const WAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long to watch for a poll that must not happen. A woken poll of the
/// scratch server finishes in milliseconds.
const QUIET_WINDOW: Duration = Duration::from_millis(1500);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------ daemon

/// The daemon in-process, built from a validated `Config` so the test can
/// set the receiver token directly.
struct Receiver {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Receiver {
    async fn start(targets_toml: &str, token: Option<&str>) -> Receiver {
        init_logging();
        let addr = format!("127.0.0.1:{}", free_port());
        let toml =
            format!("[server]\nlisten = \"{addr}\"\nshutdown_grace = \"5s\"\n\n{targets_toml}");
        let mut config = Config::from_toml_with_env(&toml, std::iter::empty())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        config.server.alertmanager_token = token.map(Secret::new);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dbwarden::daemon::run(config, async move {
            let _ = rx.await;
        }));
        let r = Receiver {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
            stop: Some(tx),
            handle: Some(handle),
        };
        wait_until(Duration::from_secs(15), "/livez to answer", async || {
            if r.handle.as_ref().is_some_and(|h| h.is_finished()) {
                panic!("the daemon stopped during start-up");
            }
            match r.client.get(format!("{}/livez", r.base)).send().await {
                Ok(resp) if resp.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        r
    }

    /// POSTs `body` with `Authorization: Bearer <token>` when given.
    async fn post(
        &self,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .client
            .post(format!("{}{ENDPOINT}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {ENDPOINT}: {e}"));
        let code = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("response body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the answer ({code}) is not JSON: {e}\n{text}"));
        (code, json, headers)
    }

    async fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let code = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        (
            code,
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}")),
        )
    }

    async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        resp.text().await.expect("/metrics body")
    }

    async fn polls(&self) -> f64 {
        metric_value(
            &self.metrics().await,
            "dbwarden_polls_total",
            &[("target", TARGET)],
        )
        .expect("dbwarden_polls_total of the target")
    }

    /// Waits until the target has finished exactly `n` polls.
    async fn wait_polls(&self, n: f64, why: &str) -> Duration {
        let started = Instant::now();
        let seen = wait_until(WAKE_DEADLINE, why, async || match self.polls().await {
            p if p >= n => Ok(p),
            p => Err(format!("dbwarden_polls_total = {p}")),
        })
        .await;
        assert_eq!(seen, n, "{why}: one poll more than expected");
        started.elapsed()
    }

    /// Asserts that the target's poll count stays at `n` for [`QUIET_WINDOW`].
    async fn assert_no_poll(&self, n: f64, why: &str) {
        let started = Instant::now();
        while started.elapsed() < QUIET_WINDOW {
            let p = self.polls().await;
            assert_eq!(p, n, "{why}: the target was polled again");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A target polled once an hour: after the first poll only wakes poll it.
fn slow_target(name: &str, url: &str) -> String {
    format!(
        r#"
[postgres.{name}]
url = "{url}"
sslmode = "disable"
poll_interval = "1h"
poll_timeout = "5s"
statement_timeout = "3s"
lock_timeout = "1s"
connect_timeout = "3s"
backoff_max = "1h"
"#
    )
}

// ------------------------------------------------------------------ payloads

fn alert(status: &str, alertname: &str, target: &str, fingerprint: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": alertname, "target": target, "severity": "info", "job": "dbwarden"},
        "annotations": {"summary": "s", "description": format!("{target}: something")},
        "startsAt": "2026-08-23T10:02:00.123456789Z",
        "endsAt": if status == "firing" { "0001-01-01T00:00:00Z" } else { "2026-08-23T10:12:00Z" },
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": fingerprint,
        // A field a newer Alertmanager might add.
        "silencedBy": [],
    })
}

fn notification(alerts: Vec<Value>) -> Vec<u8> {
    let status = if alerts.iter().any(|a| a["status"] == "firing") {
        "firing"
    } else {
        "resolved"
    };
    serde_json::to_vec(&json!({
        "version": "4",
        "groupKey": "{}/{alertname=~\"DbWarden.*\"}:{alertname=\"DbWardenIdleSessions\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "dbwarden",
        "groupLabels": {"alertname": "DbWardenIdleSessions"},
        "commonLabels": {"alertname": "DbWardenIdleSessions"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        // Unknown fields at the top level are ignored too.
        "someFutureField": {"nested": [1, 2, 3]},
        "alerts": alerts,
    }))
    .expect("serialise the notification")
}

// ------------------------------------------------------------------ receiver

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_wakes_its_target_once_and_everything_else_is_refused() {
    let cluster = primary();
    let d = Receiver::start(&slow_target(TARGET, &cluster.url("postgres")), Some(TOKEN)).await;
    d.wait_polls(1.0, "the first poll").await;

    // A firing alert naming the target: 202, and the target is polled at once.
    let firing = notification(vec![
        alert("firing", "DbWardenIdleSessions", TARGET, "5f1c0c1e8a3b9d27"),
        alert(
            "firing",
            "DbWardenIdleSessions",
            "not-watched",
            "0a0a0a0a0a0a0a0a",
        ),
    ]);
    let (code, body, _) = d.post(Some(TOKEN), firing.clone()).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"received": 2, "duplicates": 0, "woken": [TARGET], "unknown_targets": ["not-watched"]})
    );
    let took = d
        .wait_polls(2.0, "the poll the firing alert asked for")
        .await;
    println!("woken poll finished {took:?} after the 202");

    // dbwarden remembers what fires.
    let (code, list) = d.get_json(ENDPOINT, Some(TOKEN)).await;
    assert_eq!(code, 200, "{list}");
    let firing_now = list["firing"].as_array().expect("firing list");
    assert_eq!(firing_now.len(), 1, "{list}");
    assert_eq!(firing_now[0]["alertname"], "DbWardenIdleSessions");
    assert_eq!(firing_now[0]["target"], TARGET);
    assert_eq!(firing_now[0]["starts_at"], "2026-08-23T10:02:00.123Z");
    assert_eq!(
        firing_now[0]["ends_at"],
        Value::Null,
        "Go's zero time means no endsAt"
    );

    // The same notification again (repeat interval, or the HA peer): duplicates, no poll.
    let (code, body, _) = d.post(Some(TOKEN), firing.clone()).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"received": 2, "duplicates": 2, "woken": [], "unknown_targets": ["not-watched"]})
    );
    d.assert_no_poll(2.0, "a duplicate notification").await;

    // Requests that are refused never wake anything.
    let (code, body, headers) = d.post(None, firing.clone()).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    assert!(
        body["error"].as_str().unwrap().contains("bearer token"),
        "{body}"
    );
    let (code, body, headers) = d.post(Some("wrong-token"), firing.clone()).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    let (code, _) = d.get_json(ENDPOINT, Some("wrong-token")).await;
    assert_eq!(code, 401, "GET with a wrong token");

    let (code, body, _) = d
        .post(Some(TOKEN), "{\"version\": \"4\", \"alerts\": [")
        .await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.starts_with("malformed JSON: EOF while parsing") && msg.contains("line 1 column"),
        "{msg}"
    );

    let mut v3: Value = serde_json::from_slice(&firing).unwrap();
    v3["version"] = json!("3");
    let (code, body, _) = d.post(Some(TOKEN), serde_json::to_vec(&v3).unwrap()).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("version \"3\""),
        "{body}"
    );

    let mut bad_label: Value = serde_json::from_slice(&firing).unwrap();
    bad_label["alerts"][1]["labels"]["target"] = json!(7);
    let (code, body, _) = d
        .post(Some(TOKEN), serde_json::to_vec(&bad_label).unwrap())
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["error"],
        "alerts[1].labels.target: expected a string, found number 7"
    );

    // Over the 256 KiB body limit: 413, as JSON.
    let many: Vec<Value> = (0..2000)
        .map(|i| {
            alert(
                "firing",
                "DbWardenIdleSessions",
                TARGET,
                &format!("{i:016x}"),
            )
        })
        .collect();
    let big = notification(many);
    assert!(
        big.len() > dbwarden::http::BODY_LIMIT,
        "the test body is {} bytes",
        big.len()
    );
    let (code, body, _) = d.post(Some(TOKEN), big).await;
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("262144 bytes"),
        "{body}"
    );

    // A resolved alert does not wake; it ends the firing.
    let resolved = notification(vec![alert(
        "resolved",
        "DbWardenIdleSessions",
        TARGET,
        "5f1c0c1e8a3b9d27",
    )]);
    let (code, body, _) = d.post(Some(TOKEN), resolved.clone()).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"received": 1, "duplicates": 0, "woken": [], "unknown_targets": []})
    );
    let (_, list) = d.get_json(ENDPOINT, Some(TOKEN)).await;
    assert_eq!(list["firing"], json!([]), "resolved alerts are not firing");
    // Its copy from the HA peer, and a late firing copy, are duplicates.
    let (_, body, _) = d.post(Some(TOKEN), resolved).await;
    assert_eq!(body["duplicates"], 1, "{body}");
    let (_, body, _) = d
        .post(
            Some(TOKEN),
            notification(vec![alert(
                "firing",
                "DbWardenIdleSessions",
                TARGET,
                "5f1c0c1e8a3b9d27",
            )]),
        )
        .await;
    assert_eq!(body["duplicates"], 1, "{body}");
    d.assert_no_poll(2.0, "refused requests, a resolved alert and late copies")
        .await;

    // The receiver's metrics.
    let text = d.metrics().await;
    for (name, labels, want) in [
        (
            "dbwarden_alertmanager_requests_total",
            vec![("code", "202")],
            5.0,
        ),
        (
            "dbwarden_alertmanager_requests_total",
            vec![("code", "401")],
            2.0,
        ),
        (
            "dbwarden_alertmanager_requests_total",
            vec![("code", "400")],
            3.0,
        ),
        (
            "dbwarden_alertmanager_requests_total",
            vec![("code", "413")],
            1.0,
        ),
        // 2 + 2 + 1 (the late firing copy); the refused requests count nothing.
        (
            "dbwarden_alertmanager_alerts_received_total",
            vec![("status", "firing")],
            5.0,
        ),
        (
            "dbwarden_alertmanager_alerts_received_total",
            vec![("status", "resolved")],
            2.0,
        ),
        ("dbwarden_alertmanager_duplicates_total", vec![], 4.0),
    ] {
        assert_eq!(
            metric_value(&text, name, &labels),
            Some(want),
            "{name}{labels:?}\n{text}"
        );
    }

    // A new firing (a new startsAt) wakes the target again.
    let mut again = alert("firing", "DbWardenIdleSessions", TARGET, "5f1c0c1e8a3b9d27");
    again["startsAt"] = json!("2026-08-23T11:00:00Z");
    let (code, body, _) = d.post(Some(TOKEN), notification(vec![again])).await;
    assert_eq!((code, &body["woken"]), (202, &json!([TARGET])), "{body}");
    d.wait_polls(3.0, "the poll a new firing asked for").await;
    drop(d);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_receiver_is_disabled() {
    // No PostgreSQL needed: the receiver answers whatever the target does.
    let hole = Blackhole::new();
    let d = Receiver::start(&slow_target(TARGET, &hole.url()), None).await;
    let body = notification(vec![alert("firing", "DbWardenIdleSessions", TARGET, "f")]);
    for token in [None, Some(TOKEN)] {
        let (code, answer, _) = d.post(token, body.clone()).await;
        assert_eq!(code, 403, "{answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(
            msg.contains("disabled") && msg.contains("server.alertmanager_token_file"),
            "the error must say how to enable the receiver: {msg}"
        );
    }
    let (code, _) = d.get_json(ENDPOINT, Some(TOKEN)).await;
    assert_eq!(code, 403);
    let text = d.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_alertmanager_requests_total",
            &[("code", "403")]
        ),
        Some(2.0),
        "{text}"
    );
}

// ------------------------------------------------------------------ amtool

fn amtool(args: &[&str]) -> Output {
    Command::new("amtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run amtool ({e}): install the Debian package `prometheus-alertmanager` \
                 (apt-get install prometheus-alertmanager), which provides /usr/bin/amtool"
            )
        })
}

fn assert_success(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn amtool_accepts_the_example_configuration() {
    let out = assert_success(
        &format!("amtool check-config {AM_CONFIG}"),
        &amtool(&["check-config", AM_CONFIG]),
    );
    assert!(
        out.contains("1 templates"),
        "the template must be loaded:\n{out}"
    );

    let text = std::fs::read_to_string(root().join(AM_CONFIG)).expect("read the example");
    for must in [
        "url: http://dbwarden:9641/api/v1/alertmanager",
        "send_resolved: true",
        "type: Bearer",
        "credentials_file: /etc/alertmanager/secrets/dbwarden-token",
        "alertname =~ \"DbWarden.*\"",
        "{{ template \"dbwarden.incident.text\" . }}",
    ] {
        assert!(text.contains(must), "{AM_CONFIG} lacks {must:?}");
    }

    // The commented notification examples are valid once uncommented.
    let dir = tempfile::tempdir().expect("tempdir");
    let at = text.find("  - name: oncall").expect("the oncall receiver");
    let uncommented = format!("{}{}", &text[..at], text[at..].replace("    # ", "    "));
    assert!(uncommented.contains("slack_configs:") && uncommented.contains("email_configs:"));
    std::fs::write(dir.path().join("alertmanager.yml"), &uncommented).unwrap();
    std::fs::copy(root().join(AM_TEMPLATE), dir.path().join("dbwarden.tmpl")).unwrap();
    let path = dir.path().join("alertmanager.yml");
    assert_success(
        "amtool check-config on the example with its notification examples uncommented",
        &amtool(&["check-config", path.to_str().unwrap()]),
    );
}

fn render(data: &Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data.json");
    std::fs::write(&file, serde_json::to_vec(data).unwrap()).unwrap();
    let glob = format!("--template.glob={}", root().join(AM_TEMPLATE).display());
    let data = format!("--template.data={}", file.display());
    assert_success(
        "amtool template render",
        &amtool(&[
            "template",
            "render",
            &glob,
            &data,
            "--template.text={{ template \"dbwarden.incident.title\" . }}\n---\n{{ template \"dbwarden.incident.text\" . }}",
        ]),
    )
}

fn template_alert(
    status: &str,
    alertname: &str,
    severity: &str,
    starts: &str,
    description: &str,
) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": alertname, "target": "main", "severity": severity},
        "annotations": {"summary": "s", "description": description,
                        "runbook_url": format!("https://example/runbook.md#{}", alertname.to_lowercase())},
        "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": alertname,
    })
}

#[test]
fn the_template_renders_the_runbook_communication_template() {
    let data = |status: &str, alerts: Vec<Value>| {
        json!({"receiver": "oncall", "status": status, "alerts": alerts,
               "groupLabels": {"target": "main"}, "commonLabels": {"target": "main"},
               "commonAnnotations": {}, "externalURL": "http://alertmanager:9093"})
    };
    let down = render(&data(
        "firing",
        vec![
            template_alert(
                "firing",
                "DbWardenPollErrors",
                "warning",
                "2026-08-23T10:05:00Z",
                "main: 12 polls failed",
            ),
            template_alert(
                "firing",
                "DbWardenTargetDown",
                "critical",
                "2026-08-23T10:02:00Z",
                "main: dbwarden's polls fail",
            ),
        ],
    ));
    println!("{down}");
    for line in [
        "🚨 DATABASE INCIDENT: PostgreSQL Failure\n---\n🚨 DATABASE INCIDENT: PostgreSQL Failure\n",
        "\nSeverity: P0\n",
        "\nStatus: Investigating\n",
        "\n- [firing] DbWardenTargetDown: main: dbwarden's polls fail (runbook: https://example/runbook.md#dbwardentargetdown)\n",
        "\n- [firing] DbWardenPollErrors: main: 12 polls failed",
        "\nStarted: 2026-08-23 10:02:00 UTC\n",
        "\nCurrent Status:\n- Database: DOWN\n- Data Loss: TBD\n- ETA: TBD\n",
        "\nWe are working to restore service. Updates every 10 minutes.",
    ] {
        assert!(down.contains(line), "missing {line:?} in:\n{down}");
    }

    let degraded = render(&data(
        "firing",
        vec![template_alert(
            "firing",
            "DbWardenReplicationLagHigh",
            "warning",
            "2026-08-23T10:02:00Z",
            "main: lag 9s",
        )],
    ));
    assert!(degraded.contains("\nSeverity: P1\n"), "{degraded}");
    assert!(degraded.contains("- Database: DEGRADED\n"), "{degraded}");

    let resolved = render(&data(
        "resolved",
        vec![template_alert(
            "resolved",
            "DbWardenTargetDown",
            "critical",
            "2026-08-23T10:02:00Z",
            "main: down",
        )],
    ));
    assert!(
        resolved.starts_with("✅ RESOLVED: DATABASE INCIDENT: PostgreSQL Failure\n"),
        "{resolved}"
    );
    assert!(resolved.contains("\nStatus: Resolved\n"), "{resolved}");
    assert!(resolved.contains("- Database: UP\n"), "{resolved}");

    let neo4j = render(&data(
        "firing",
        vec![template_alert(
            "firing",
            "DbWardenNeo4jDown",
            "critical",
            "2026-08-23T10:02:00Z",
            "graph: down",
        )],
    ));
    assert!(
        neo4j.contains("DATABASE INCIDENT: Neo4j Failure"),
        "{neo4j}"
    );
    assert!(neo4j.contains("- Database: DOWN\n"), "{neo4j}");
}
