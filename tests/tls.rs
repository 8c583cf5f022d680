//! TLS and authentication with the real tools: the Debian binaries of
//! Prometheus and Alertmanager against daemons running in-process with an
//! exporter-toolkit web configuration, and certificate rotation under a
//! running daemon. Certificates are made here with rcgen: no key is
//! committed.
//!
//! Needs the Debian packages `prometheus`, `prometheus-alertmanager` and
//! `postgresql-15`; fails, never skips, without them. Every child process
//! is killed and reaped when the test ends, also on panic.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dbwarden::config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::Value;
use support::child::{ChildGuard, wait_ready};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const AM_TOKEN: &str = "tls-test-alertmanager-token-5be1";

// ------------------------------------------------------------------ certificates

/// A certificate authority made for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, cn: &str) -> Leaf {
        self.leaf(
            cn,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with one DNS SAN.
    fn client(&self, san: &str) -> Leaf {
        self.leaf(san, &[san], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Writes `content` to `dir/name` and returns the path as text.
fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.display().to_string()
}

// ------------------------------------------------------------------ daemon

/// The daemon in-process, serving HTTPS with the web configuration given.
struct TlsDaemon {
    port: u16,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A reqwest client that trusts `ca`, with a client certificate if given.
fn https_client(ca: &str, identity: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM"))
        .timeout(Duration::from_secs(10));
    if let Some(leaf) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes())
                .expect("identity PEM"),
        );
    }
    b.build().expect("https client")
}

impl TlsDaemon {
    /// Starts the daemon with `web_config` (a path) and `body`; `client`
    /// must be able to reach it (trusting its CA, with a certificate if
    /// one is required). Waits until `/livez` answers over HTTPS.
    async fn start(
        web_config: &str,
        body: &str,
        client: reqwest::Client,
        alertmanager_token: Option<&str>,
    ) -> TlsDaemon {
        init_logging();
        let port = free_port();
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\nweb_config_file = \"{web_config}\"\n\n{body}"
        );
        let mut config = Config::from_toml_with_env(&toml, std::iter::empty())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        config.server.alertmanager_token = alertmanager_token.map(dbwarden::secret::Secret::new);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dbwarden::daemon::run(config, async move {
            let _ = rx.await;
        }));
        let d = TlsDaemon {
            port,
            client,
            stop: Some(tx),
            handle: Some(handle),
        };
        wait_until(Duration::from_secs(10), "/livez over HTTPS", async || {
            let r = d.get("/livez", None).await?;
            if r.0 == 200 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
        d
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str, basic: Option<(&str, &str)>) -> Result<(u16, String), String> {
        let mut req = self.client.get(self.url(path));
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.map_err(|e| format!("GET {path}: {e:?}"))?;
        let code = r.status().as_u16();
        Ok((code, r.text().await.map_err(|e| e.to_string())?))
    }

    async fn metrics(&self, basic: Option<(&str, &str)>) -> String {
        let (code, body) = self.get("/metrics", basic).await.expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }
}

impl Drop for TlsDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

fn rejections(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        "dbwarden_http_rejections_total",
        &[("reason", reason)],
    )
    .unwrap_or_default()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_over_tls_with_basic_auth_and_client_certificates_and_alertmanager_delivers()
 {
    let pg = primary();
    let target = fast_target("main", &pg.url("postgres"), "");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("dbwarden test CA");
    let rogue = Ca::new("somebody else's CA");
    let server = ca.server("dbwarden");
    let ca_file = write(d, "ca.crt", &ca.pem());
    let cert = write(d, "server.crt", &server.cert);
    let key = write(d, "server.key", &server.key);
    let tls = format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n");

    // A: TLS only (and the Alertmanager receiver). B: TLS and basic auth.
    // C: TLS and client certificates verified by the CA, with an allowed SAN.
    let web_a = write(d, "web-a.yml", &tls);
    let hash = bcrypt::hash("right-password", 4).expect("bcrypt");
    let web_b = write(
        d,
        "web-b.yml",
        &format!("{tls}basic_auth_users:\n  prometheus: \"{hash}\"\n"),
    );
    let web_c = write(
        d,
        "web-c.yml",
        &format!(
            "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca_file}\n  \
             client_allowed_sans: [prometheus.test]\n"
        ),
    );
    let prom_leaf = ca.client("prometheus.test");
    let wrong_san = ca.client("intruder.test");
    let rogue_leaf = rogue.client("prometheus.test");
    let client_cert = write(d, "client.crt", &prom_leaf.cert);
    let client_key = write(d, "client.key", &prom_leaf.key);
    let wrong_san_cert = write(d, "wrong-san.crt", &wrong_san.cert);
    let wrong_san_key = write(d, "wrong-san.key", &wrong_san.key);
    let rogue_cert = write(d, "rogue.crt", &rogue_leaf.cert);
    let rogue_key = write(d, "rogue.key", &rogue_leaf.key);

    let a = TlsDaemon::start(
        &web_a,
        &target,
        https_client(&ca.pem(), None),
        Some(AM_TOKEN),
    )
    .await;
    let b = TlsDaemon::start(&web_b, &target, https_client(&ca.pem(), None), None).await;
    let c = TlsDaemon::start(
        &web_c,
        &target,
        https_client(&ca.pem(), Some(&prom_leaf)),
        None,
    )
    .await;

    // Plain HTTP on the TLS port and an untrusting client get nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/livez", a.port))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let untrusting = https_client(&rogue.pem(), None)
        .get(a.url("/livez"))
        .send()
        .await;
    assert!(
        untrusting.is_err(),
        "a client that does not trust the CA connected"
    );

    let job = |name: &str, port: u16, extra: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca_file}\n{extra}    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
    };
    let identity =
        |cert: &str, key: &str| format!("      cert_file: {cert}\n      key_file: {key}\n");
    let basic = |password: &str| {
        format!("    basic_auth:\n      username: prometheus\n      password: {password}\n")
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}{}{}{}{}",
        job("tls", a.port, ""),
        job("basic", b.port, &basic("right-password")),
        job("basic_wrong", b.port, &basic("wrong-password")),
        job("basic_missing", b.port, ""),
        job("mtls", c.port, &identity(&client_cert, &client_key)),
        job("mtls_missing", c.port, ""),
        job("mtls_untrusted", c.port, &identity(&rogue_cert, &rogue_key))
            + &job(
                "mtls_wrong_san",
                c.port,
                &identity(&wrong_san_cert, &wrong_san_key)
            ),
    );
    let prom_port = free_port();
    let prom_file = write(d, "prometheus.yml", &config);
    let mut prom = ChildGuard::spawn(
        "prometheus",
        PROMETHEUS,
        "prometheus",
        &[
            format!("--config.file={prom_file}"),
            format!("--storage.tsdb.path={}", d.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        d.join("prometheus.log"),
    );
    let prom_base = format!("http://127.0.0.1:{prom_port}");
    wait_ready(&mut prom, &format!("{prom_base}/-/ready")).await;

    let want: BTreeMap<&str, &str> = [
        ("tls", "1"),
        ("basic", "1"),
        ("basic_wrong", "0"),
        ("basic_missing", "0"),
        ("mtls", "1"),
        ("mtls_missing", "0"),
        ("mtls_untrusted", "0"),
        ("mtls_wrong_san", "0"),
    ]
    .into();
    let plain_client = reqwest::Client::new();
    let up = wait_until(
        Duration::from_secs(30),
        "Prometheus to see up == 1 where it authenticates and up == 0 where it cannot",
        async || {
            prom.assert_running();
            let body: Value = plain_client
                .get(format!("{prom_base}/api/v1/query"))
                .query(&[("query", "up")])
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let got: BTreeMap<String, String> = body["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        r["metric"]["job"].as_str().unwrap_or_default().to_string(),
                        r["value"][1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let matches = want
                .iter()
                .all(|(j, v)| got.get(*j).map(String::as_str) == Some(*v));
            if matches {
                Ok(got)
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    println!("up per job: {up:?}");

    // Each refusal was counted by reason.
    let b_metrics = b.metrics(Some(("prometheus", "right-password"))).await;
    assert!(
        rejections(&b_metrics, "wrong_credentials") >= 1.0,
        "{b_metrics}"
    );
    assert!(
        rejections(&b_metrics, "unauthenticated") >= 1.0,
        "{b_metrics}"
    );
    let c_metrics = c.metrics(None).await;
    // Missing, untrusted and wrong-SAN certificates: three jobs, each scrape counted.
    assert!(
        rejections(&c_metrics, "client_certificate") >= 3.0,
        "{c_metrics}"
    );
    let a_metrics = a.metrics(None).await;
    assert!(
        rejections(&a_metrics, "tls_handshake") >= 2.0,
        "{a_metrics}"
    );
    // Prometheus's targets page says why.
    let targets: Value = plain_client
        .get(format!("{prom_base}/api/v1/targets"))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("targets JSON");
    let errors: BTreeMap<String, String> = targets["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                t["lastError"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(errors["basic_wrong"].contains("401"), "{errors:?}");
    assert!(
        errors["tls"].is_empty() && errors["mtls"].is_empty(),
        "{errors:?}"
    );
    drop(prom);

    // Alertmanager delivers to the receiver over TLS with its bearer token.
    let token_file = write(d, "am-token", &format!("{AM_TOKEN}\n"));
    let am_port = free_port();
    let am_config = write(
        d,
        "alertmanager.yml",
        &format!(
            "route:\n  receiver: dbwarden\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: dbwarden\n    webhook_configs:\n      - url: {}\n        \
             http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {token_file}\n          \
             tls_config:\n            ca_file: {ca_file}\n",
            a.url("/api/v1/alertmanager")
        ),
    );
    let mut am = ChildGuard::spawn(
        "alertmanager",
        ALERTMANAGER,
        "prometheus-alertmanager",
        &[
            format!("--config.file={am_config}"),
            format!("--storage.path={}", d.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_string(),
        ],
        d.join("alertmanager.log"),
    );
    let am_base = format!("http://127.0.0.1:{am_port}");
    wait_ready(&mut am, &format!("{am_base}/-/ready")).await;
    let posted = plain_client
        .post(format!("{am_base}/api/v2/alerts"))
        .json(&serde_json::json!([{"labels": {"alertname": "DbWardenTlsTest", "target": "main"}}]))
        .send()
        .await
        .expect("post an alert to Alertmanager");
    assert!(posted.status().is_success(), "{posted:?}");
    let text = wait_until(
        Duration::from_secs(30),
        "Alertmanager to deliver over TLS",
        async || {
            am.assert_running();
            let text = a.metrics(None).await;
            let ok = require(
                &text,
                "dbwarden_alertmanager_requests_total",
                &[("code", "202")],
            )?;
            if ok >= 1.0 {
                Ok(text)
            } else {
                Err(format!("202s: {ok}"))
            }
        },
    )
    .await;
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_alertmanager_requests_total",
            &[("code", "401")]
        ),
        None,
        "the bearer token was refused"
    );
    assert_eq!(rejections(&text, "bearer_token"), 0.0);
}

/// A TLS handshake with `addr` trusting `ca`: the certificate presented.
async fn presented(addr: &str, ca: &[u8]) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.to_vec()))
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(certs[0].to_vec())
}

/// Replaces `path` with `content` the way a Secret volume or `mv` does:
/// a new file renamed over the old one.
fn replace(path: &str, content: &str) {
    let tmp = format!("{path}.new");
    std::fs::write(&tmp, content).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename over the old file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_running_daemon() {
    let hole = Blackhole::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("rotation CA");
    let first = ca.server("first");
    let second = ca.server("second");
    let cert = write(d, "tls.crt", &first.cert);
    let key = write(d, "tls.key", &first.key);
    let web = write(
        d,
        "web.yml",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n",
    );
    let daemon = TlsDaemon::start(
        &web,
        &fast_target("main", &hole.url(), ""),
        https_client(&ca.pem(), None),
        None,
    )
    .await;
    let addr = format!("127.0.0.1:{}", daemon.port);
    assert_eq!(presented(&addr, &ca.der()).await.unwrap(), first.der);

    // The key first, then the certificate: in between, the pair does not
    // match and the first certificate stays in use.
    replace(&key, &second.key);
    assert_eq!(
        presented(&addr, &ca.der()).await.unwrap(),
        first.der,
        "a mismatched pair keeps the previous certificate"
    );
    replace(&cert, &second.cert);
    wait_until(
        Duration::from_secs(5),
        "the next handshake to present the new certificate",
        async || {
            let got = presented(&addr, &ca.der()).await?;
            if got == second.der {
                Ok(())
            } else {
                Err("still the first certificate".into())
            }
        },
    )
    .await;
    // A broken file is not used: the last good certificate stays.
    replace(&cert, "not a certificate\n");
    assert_eq!(presented(&addr, &ca.der()).await.unwrap(), second.der);
    let (code, _) = daemon.get("/livez", None).await.expect("livez");
    assert_eq!(code, 200);
}

/// VerifyClientCertIfGiven without users: /metrics is open (the web
/// configuration asks nothing more), the read API needs a verified client
/// certificate, the probes never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_verified_client_certificate_when_that_is_the_authentication() {
    let hole = Blackhole::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("optional client CA");
    let server = ca.server("dbwarden");
    write(d, "tls.crt", &server.cert);
    write(d, "tls.key", &server.key);
    write(d, "ca.crt", &ca.pem());
    let web = write(
        d,
        "web.yml",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
    );
    let anonymous = https_client(&ca.pem(), None);
    let daemon = TlsDaemon::start(
        &web,
        &fast_target("main", &hole.url(), ""),
        anonymous.clone(),
        None,
    )
    .await;
    let get = async |c: &reqwest::Client, path: &str| {
        let r = c.get(daemon.url(path)).send().await.expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    assert_eq!(get(&anonymous, "/livez").await.0, 200);
    assert_eq!(
        get(&anonymous, "/readyz").await.0 / 100,
        5,
        "no poll succeeds: 503"
    );
    assert_eq!(get(&anonymous, "/metrics").await.0, 200);
    let (code, body) = get(&anonymous, "/api/v1/status").await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(get(&anonymous, "/api/v1/actions").await.0, 401);
    let with_cert = https_client(&ca.pem(), Some(&ca.client("ops.test")));
    assert_eq!(get(&with_cert, "/api/v1/status").await.0, 200);
    let (_, metrics) = get(&with_cert, "/metrics").await;
    assert!(
        rejections(&metrics, "client_certificate") >= 2.0,
        "{metrics}"
    );
}
