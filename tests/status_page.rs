//! The status page in a real browser: Debian's Chromium (headless, driven
//! through chromedriver over WebDriver) loads `GET /` from a daemon watching
//! a real PostgreSQL with a failing check and a recent dry-run decision,
//! and the test asserts on the rendered DOM: the failing check, the
//! decision, hostile text shown as text, and the paused banner after pausing
//! through the page's form. A screenshot is kept in
//! `target/test-artifacts/status-page.png`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{
    DaemonProcess, backend_of, connect_as, fast_target, free_port, primary, psql, wait_until,
};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cret-page-token";
/// An application name and a query that would run script if interpreted.
const HOSTILE_APP: &str = r#"<script>document.title="app"</script>'"#;
const HOSTILE_QUERY: &str =
    r#"SELECT '<script>document.title="pwned"</script>' AS "q""uote", 1 AS "<b>bold</b>""#;

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: install the Debian package {package} (scripts/test.sh does)"
    );
}

async fn chromedriver() -> Driver {
    require("/usr/bin/chromium", "chromium");
    require("/usr/bin/chromedriver", "chromium-driver");
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    wait_until(T, "chromedriver to be ready", async || {
        let v: Value = client
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match v["value"]["ready"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(format!("{v}")),
        }
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // Root in a container: no sandbox; a phone-sized window.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=412,2400"],
        }),
    );
    // chromedriver listens on loopback: plain HTTP, no TLS stack.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("text of {css}: {e}"))
}

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_failed_and_what_was_done_and_pauses_through_its_form() {
    let pg = primary();
    psql(&pg, "CREATE ROLE app LOGIN");
    // An idle session whose application name and last query are hostile text.
    let mut victim = connect_as(&pg, "app", HOSTILE_APP).await;
    sqlx::query(HOSTILE_QUERY)
        .execute(&mut victim)
        .await
        .expect("the hostile query runs");
    let (pid, _) = backend_of(&mut victim).await;
    // backend_of ran a statement: run the hostile one again so it is the last.
    sqlx::query(HOSTILE_QUERY)
        .execute(&mut victim)
        .await
        .expect("the hostile query runs");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("write the token");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    // Query texts as they are (server.api_query_text): the page must show
    // hostile text as text, not redacted away.
    let toml = "[server]\napi_query_text = true\n".to_string()
        + &fast_target(
            "main",
            &url,
            "idle_session = { max = \"1s\", for = \"0s\" }",
        )
        + &format!(
            r#"
[remediation]
mode = "dry-run"
instance = "page-test"
audit_file = "{d}/audit.jsonl"
state_dir = "{d}/state"
api_token_file = "{d}/token"
redact_queries = false

[remediation.policies.idle]
targets = ["main"]
action = "terminate"
victims = "all"

[remediation.policies.idle.when]
state = ["idle"]
idle_for = "1s"
match_users = ["app"]
"#,
            d = dir.path().display()
        );
    let daemon = DaemonProcess::spawn("page", dir.path(), &toml).await;
    // The failing check and the dry-run decision are in the published state.
    wait_until(
        T,
        "idle_session failing and a would_act decision",
        async || {
            let (_, status) = daemon.get("/api/v1/status").await?;
            let (_, actions) = daemon.get("/api/v1/actions").await?;
            let status: Value = serde_json::from_str(&status).map_err(|e| e.to_string())?;
            let failing = status["targets"][0]["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["check"] == "idle_session" && c["status"] == "fail");
            let decided = actions.contains("would_act") && actions.contains(&pid.to_string());
            if failing && decided {
                Ok(())
            } else {
                Err(format!("failing {failing}, decided {decided}: {actions}"))
            }
        },
    )
    .await;

    let driver = chromedriver().await;
    let c = browser(&driver).await;
    c.goto(&daemon.base_url).await.expect("load the page");

    // The failing check, in the runbook's words, with its runbook link.
    let row = text(&c, "#target-main tr[data-check=idle_session]").await;
    assert!(row.contains("FAIL"), "{row}");
    assert!(row.contains("idle"), "{row}");
    let link = c
        .find(Locator::Css(
            "#target-main tr[data-check=idle_session] a[href$='#dbwardenidlesessions']",
        ))
        .await
        .expect("the failing check links its runbook section");
    assert!(
        link.attr("href")
            .await
            .expect("href")
            .is_some_and(|h| h.starts_with("https://")),
        "runbook link"
    );
    let summary = text(&c, "#summary").await;
    assert!(summary.contains("1 failing check;"), "{summary}");

    // The decision, and the hostile texts shown as text, never run.
    let decisions = text(&c, "#decisions").await;
    assert!(decisions.contains("would_act (dry-run)"), "{decisions}");
    assert!(decisions.contains(&format!("pid {pid}")), "{decisions}");
    let shown_query = text(&c, "#decisions code.query").await;
    assert_eq!(shown_query, HOSTILE_QUERY, "the query as text");
    assert!(decisions.contains(HOSTILE_APP), "{decisions}");
    let title: Value = c
        .execute("return document.title", vec![])
        .await
        .expect("title");
    assert_eq!(title, "dbwarden", "a hostile text ran as script");
    let scripts = c.find_all(Locator::Css("script")).await.expect("scripts");
    assert!(
        scripts.is_empty(),
        "the page has {} script elements",
        scripts.len()
    );
    assert!(
        c.find_all(Locator::Css("#decisions b"))
            .await
            .expect("find")
            .is_empty(),
        "markup in a query was interpreted"
    );
    let screenshot = c.screenshot().await.expect("screenshot");
    std::fs::write(artifact("status-page.png"), &screenshot).expect("keep the screenshot");

    // Pausing through the page: a wrong token changes nothing.
    c.find(Locator::LinkText("Pause remediation…"))
        .await
        .expect("the pause link")
        .click()
        .await
        .expect("click");
    let confirm = text(&c, "body").await;
    assert!(
        confirm.contains("no session is cancelled or terminated"),
        "the confirmation says what pausing stops: {confirm}"
    );
    let form = c.form(Locator::Css("form")).await.expect("the pause form");
    form.set_by_name("token", "wrong").await.expect("token");
    form.submit().await.expect("submit");
    wait_until(T, "the wrong-token answer", async || {
        match c.find(Locator::Css("#problem")).await {
            Ok(e) => e.text().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|t| {
            if t.contains("Wrong token") {
                Ok(())
            } else {
                Err(t)
            }
        })
    })
    .await;
    assert!(!daemon_paused(&daemon).await, "still paused");

    let form = c.form(Locator::Css("form")).await.expect("the pause form");
    form.set_by_name("token", TOKEN).await.expect("token");
    form.set_by_name("by", "on-call").await.expect("by");
    form.set_by_name("reason", "checking the page")
        .await
        .expect("reason");
    form.submit().await.expect("submit");
    let url = landed_on(&c, "/").await;
    assert!(!url.contains(TOKEN), "the token must never be in a URL");
    let banner = text(&c, "#paused").await;
    assert!(banner.contains("PAUSED"), "{banner}");
    assert!(banner.contains("on-call"), "{banner}");
    assert!(banner.contains("checking the page"), "{banner}");
    assert!(daemon_paused(&daemon).await, "not paused");
    std::fs::write(
        artifact("status-page-paused.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("keep the screenshot");

    // And resuming through the banner's link.
    c.find(Locator::LinkText("Resume…"))
        .await
        .expect("the resume link")
        .click()
        .await
        .expect("click");
    let form = c.form(Locator::Css("form")).await.expect("the resume form");
    form.set_by_name("token", TOKEN).await.expect("token");
    form.submit().await.expect("submit");
    landed_on(&c, "/").await;
    assert!(
        c.find_all(Locator::Css("#paused"))
            .await
            .expect("find")
            .is_empty()
    );
    assert!(!daemon_paused(&daemon).await, "still paused");
    c.close().await.expect("close the browser");
    drop(victim);
}

/// Waits until the browser has navigated to `path` (a form's answer) and
/// returns the whole URL.
async fn landed_on(c: &Client, path: &str) -> String {
    wait_until(T, &format!("the browser to land on {path}"), async || {
        let url = c.current_url().await.map_err(|e| e.to_string())?;
        let ready: Value = c
            .execute("return document.readyState", vec![])
            .await
            .map_err(|e| e.to_string())?;
        if url.path() == path && ready == "complete" {
            Ok(url.to_string())
        } else {
            Err(format!("at {url} ({ready})"))
        }
    })
    .await
}

async fn daemon_paused(daemon: &DaemonProcess) -> bool {
    let (_, body) = daemon.get("/api/v1/status").await.expect("status");
    let v: Value = serde_json::from_str(&body).expect("status JSON");
    v["remediation"]["paused"]["paused"]
        .as_bool()
        .expect("paused flag")
}

/// The page and `/api/v1/status` tell the same story: every target's every
/// check has the same status on both, read close enough in time to agree
/// (retried while a poll lands in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_status_api_agree() {
    let pg = primary();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let mut toml = fast_target(
        "main",
        &url,
        "connections_used = { max_ratio = 0.0001, for = \"0s\" }",
    );
    toml += &fast_target("gone", "postgres://postgres@127.0.0.1:1/postgres", "");
    let daemon = DaemonProcess::spawn("agree", dir.path(), &toml).await;
    let started = Instant::now();
    wait_until(T, "the page to show what the API says", async || {
        let (_, status) = daemon.get("/api/v1/status").await?;
        let (code, page) = daemon.get("/").await?;
        if code != 200 {
            return Err(format!("GET / answered {code}"));
        }
        let status: Value = serde_json::from_str(&status).map_err(|e| e.to_string())?;
        let targets = status["targets"].as_array().ok_or("no targets")?;
        if targets.iter().any(|t| t["polls_completed"] == 0) {
            return Err("not polled yet".into());
        }
        let doc = scraper::Html::parse_document(&page);
        for t in targets {
            let name = t["target"].as_str().ok_or("target name")?;
            let up = if t["up"] == true { "UP" } else { "DOWN" };
            let heading = select_text(&doc, &format!("#target-{name} h2"));
            if !heading.contains(up) {
                return Err(format!("{name}: API says {up}, page says {heading:?}"));
            }
            for check in t["checks"].as_array().ok_or("checks")? {
                let id = check["check"].as_str().ok_or("check id")?;
                let want = check["status"]
                    .as_str()
                    .ok_or("check status")?
                    .to_uppercase();
                let row = select_text(&doc, &format!("#target-{name} tr[data-check={id}]"));
                let detail = check["detail"].as_str().ok_or("detail")?;
                if !row.starts_with(&want) || !row.contains(detail) {
                    return Err(format!(
                        "{name}/{id}: API says {want} {detail:?}, page row {row:?}"
                    ));
                }
            }
        }
        Ok(())
    })
    .await;
    assert!(started.elapsed() < T);
}

fn select_text(doc: &scraper::Html, css: &str) -> String {
    let sel = scraper::Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e}"));
    doc.select(&sel)
        .next()
        .map(|e| e.text().collect::<Vec<_>>().join(""))
        .unwrap_or_default()
}

/// Without an API token the page is read-only: no pause link, a form post
/// is refused and changes nothing. Without `[remediation]` there is nothing
/// to pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_page_is_read_only() {
    let pg = primary();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let toml = fast_target("main", &url, "")
        + &format!(
            r#"
[remediation]
mode = "dry-run"
audit_file = "{d}/audit.jsonl"
state_dir = "{d}/state"

[remediation.policies.idle]
targets = ["main"]
action = "terminate"

[remediation.policies.idle.when]
state = ["idle"]
idle_for = "1h"
"#,
            d = dir.path().display()
        );
    let daemon = DaemonProcess::spawn("readonly", dir.path(), &toml).await;
    let (code, page) = daemon.get("/").await.expect("GET /");
    assert_eq!(code, 200);
    assert!(page.contains("Read-only"), "{page}");
    assert!(!page.contains("href=\"/ui/pause\""), "{page}");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/ui/pause", daemon.base_url))
        .form(&[("token", "anything"), ("by", "someone")])
        .send()
        .await
        .expect("POST /ui/pause");
    assert_eq!(resp.status().as_u16(), 403);
    let body = resp.text().await.expect("body");
    assert!(body.contains("no API token is configured"), "{body}");
    assert!(!daemon_paused(&daemon).await);
    drop(daemon);

    let daemon = DaemonProcess::spawn("observer", dir.path(), &fast_target("main", &url, "")).await;
    let (_, page) = daemon.get("/").await.expect("GET /");
    assert!(
        page.contains("Not configured: dbwarden only observes."),
        "{page}"
    );
    let resp = client
        .post(format!("{}/ui/pause", daemon.base_url))
        .form(&[("token", "anything")])
        .send()
        .await
        .expect("POST /ui/pause");
    assert_eq!(resp.status().as_u16(), 404);
}
