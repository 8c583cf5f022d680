//! Backups in object storage, against real software: moto's S3 server
//! (PyPI package `moto[s3,server]`, installed by scripts/test.sh, found
//! through `DBWARDEN_MOTO_SERVER`) started per test on a free loopback
//! port, and a local directory. The backups are real `pg_dump -Fc` dumps
//! of a scratch database, and cut, emptied or replaced copies of them.

#![cfg(feature = "backups")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dbwarden::config::{BackupLocation, TargetConfig};
use dbwarden::daemon::backups::observe_once;
use dbwarden::evaluate::{BackupThresholds, CheckId, CheckStatus, HoldState, evaluate_backups};
use dbwarden::observe::backups::{BackupErrorKind, Content};
use support::{Daemon, blocking, free_port, metric_value, wait_until};

/// moto's server, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    client: reqwest::Client,
}

fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("DBWARDEN_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    assert!(
        venv.is_file(),
        "moto's S3 server is missing: install the PyPI package \"moto[s3,server]\" (scripts/test.sh does, in target/moto-venv) or set DBWARDEN_MOTO_SERVER to its moto_server"
    );
    venv
}

impl Moto {
    /// Starts moto; with `auth`, every request must be signed by a key moto
    /// knows (none: any key is refused).
    async fn start(auth: bool) -> Moto {
        let port = free_port();
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server (PyPI moto[s3,server]): {e}"));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let url = format!("{}/moto-api/", moto.endpoint);
        wait_until(
            Duration::from_secs(30),
            "moto_server to answer",
            async || match moto.client.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
        moto
    }

    /// moto without authentication accepts unsigned requests.
    async fn put(&self, path: &str, body: Vec<u8>) {
        let r = self
            .client
            .put(format!("{}/{path}", self.endpoint))
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert!(r.status().is_success(), "PUT {path}: {}", r.status());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `pg_dump -Fc` of a scratch database holding some rows, and the
/// size of its table of contents as `pg_restore --list` reports it.
fn dump() -> (Vec<u8>, usize) {
    let pg = support::primary();
    pg.psql(
        "postgres",
        "CREATE TABLE orders (id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, repeat('x', 50) || g FROM generate_series(1, 20000) g; \
         CREATE INDEX ON orders (note);",
    )
    .expect("fill the scratch database");
    let bin = Path::new(dbwarden::scratch::PG_BIN_DIR);
    let out = Command::new(bin.join("pg_dump"))
        .args(["-Fc", "-d", &pg.url("postgres")])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.dump");
    std::fs::write(&file, &out.stdout).unwrap();
    let list = Command::new(bin.join("pg_restore"))
        .arg("--list")
        .arg(&file)
        .output()
        .expect("run pg_restore");
    assert!(
        list.status.success(),
        "pg_restore --list: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let text = String::from_utf8_lossy(&list.stdout);
    // Its header says ";     TOC Entries: N".
    let entries = text
        .lines()
        .find_map(|l| l.split("TOC Entries:").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no TOC Entries line in pg_restore --list:\n{text}"));
    (out.stdout, entries)
}

fn location(
    name: &str,
    url: &str,
    endpoint: Option<&str>,
) -> TargetConfig<BackupLocation, BackupThresholds> {
    TargetConfig {
        target: BackupLocation {
            name: name.into(),
            target: "main".into(),
            url: url.into(),
            pattern: "postgres_backup_*.dump".into(),
            endpoint: endpoint.map(str::to_string),
            timeout: Duration::from_secs(10),
            env: [
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), dbwarden::secret::Secret::new(*v)))
            .collect(),
            ..Default::default()
        },
        thresholds: BackupThresholds::default(),
    }
}

/// The locations of `every_backup_check_and_error_kind_through_the_daemon`.
const LOCATIONS: [&str; 9] = [
    "good",
    "shrunk",
    "empty",
    "corrupt",
    "truncated",
    "none",
    "missing",
    "unreachable",
    "local",
];

const MOTO_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// Every check and metric through the real daemon: a sound backup, a
/// shrunk one, an empty one, one that is not a dump, a prefix without
/// backups, a missing bucket, an unreachable endpoint, and an old backup in
/// a local directory; the database target stays up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backup_check_and_error_kind_through_the_daemon() {
    let (dump, _) = blocking(dump);
    let pg = blocking(support::primary);
    let moto = Moto::start(false).await;
    moto.put("backups", Vec::new()).await;
    let cut = dump[..dump.len() / 10].to_vec();
    for (key, body) in [
        ("good/postgres_backup_1.dump", dump.clone()),
        ("good/postgres_backup_2.dump", dump.clone()),
        ("shrunk/postgres_backup_1.dump", dump.clone()),
        ("shrunk/postgres_backup_2.dump", cut),
        ("empty/postgres_backup_1.dump", Vec::new()),
        ("truncated/postgres_backup_1.dump", dump[..200].to_vec()),
        (
            "corrupt/postgres_backup_1.dump",
            b"<html>503 Service Unavailable</html>".to_vec(),
        ),
        ("none/notes.txt", b"no backups here".to_vec()),
    ] {
        moto.put(&format!("backups/{key}"), body).await;
    }
    // A local directory whose only backup was written two days ago.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("postgres_backup_1.dump");
    std::fs::write(&old, &dump).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(48 * 3600))
        .unwrap();
    let closed = free_port();
    let endpoint = &moto.endpoint;
    let s3 = |name: &str, url: &str, endpoint: &str| {
        format!(
            "[backups.{name}]\ntarget = \"main\"\nurl = \"{url}\"\npattern = \"postgres_backup_*.dump\"\nendpoint = \"{endpoint}\"\ninterval = \"2s\"\ntimeout = \"2s\"\n"
        )
    };
    let mut toml = support::fast_target("main", &pg.url("postgres"), "");
    for (name, prefix) in [
        ("good", "good"),
        ("shrunk", "shrunk"),
        ("empty", "empty"),
        ("corrupt", "corrupt"),
        ("truncated", "truncated"),
        ("none", "none"),
    ] {
        toml.push_str(&s3(name, &format!("s3://backups/{prefix}/"), endpoint));
    }
    toml.push_str(&s3("missing", "s3://no-such-bucket/x/", endpoint));
    toml.push_str(&s3(
        "unreachable",
        "s3://backups/good/",
        &format!("http://127.0.0.1:{closed}"),
    ));
    toml.push_str(&format!(
        "[backups.local]\ntarget = \"main\"\nurl = \"file://{}/\"\npattern = \"postgres_backup_*.dump\"\ninterval = \"2s\"\ntimeout = \"2s\"\n",
        dir.path().display()
    ));
    let daemon = Daemon::start_with_env(&toml, &MOTO_ENV).await;
    let text = wait_until(
        Duration::from_secs(30),
        "every location observed",
        async || {
            // Judged on the metrics text itself (a status read after it
            // could already show an observation the text does not have):
            // every location's store check has a verdict.
            let text = daemon.metrics().await;
            let observed = LOCATIONS
                .iter()
                .filter(|b| {
                    metric_value(
                        &text,
                        "dbwarden_check_failing",
                        &[("backup", b), ("check", "backup_store"), ("target", "main")],
                    )
                    .is_some()
                })
                .count();
            if observed == LOCATIONS.len()
                && metric_value(&text, "dbwarden_up", &[("target", "main")]) == Some(1.0)
            {
                Ok(text)
            } else {
                Err(format!("{observed} locations observed\n{text}"))
            }
        },
    )
    .await;
    let failing = |backup: &str, check: &str| {
        metric_value(
            &text,
            "dbwarden_check_failing",
            &[("backup", backup), ("check", check), ("target", "main")],
        )
    };
    let expected: [(&str, [Option<f64>; 4]); 9] = [
        // backup_store, backup_fresh, backup_size, backup_integrity (None: unknown)
        ("good", [Some(0.0), Some(0.0), Some(0.0), Some(0.0)]),
        ("shrunk", [Some(0.0), Some(0.0), Some(1.0), Some(0.0)]),
        ("empty", [Some(0.0), Some(0.0), Some(1.0), Some(1.0)]),
        ("corrupt", [Some(0.0), Some(0.0), Some(0.0), Some(1.0)]),
        // Its header reads; its table of contents does not (pg_restore).
        ("truncated", [Some(0.0), Some(0.0), Some(0.0), Some(1.0)]),
        ("none", [Some(0.0), Some(1.0), None, None]),
        ("missing", [Some(1.0), None, None, None]),
        ("unreachable", [Some(1.0), None, None, None]),
        ("local", [Some(0.0), Some(1.0), Some(0.0), Some(0.0)]),
    ];
    let checks = [
        "backup_store",
        "backup_fresh",
        "backup_size",
        "backup_integrity",
    ];
    for (backup, want) in expected {
        let got: Vec<Option<f64>> = checks.iter().map(|c| failing(backup, c)).collect();
        assert_eq!(got, want, "{backup}: {checks:?}\n{text}");
    }
    for (backup, kind) in [("missing", "not_found"), ("unreachable", "unreachable")] {
        assert_eq!(
            metric_value(
                &text,
                "dbwarden_backup_error",
                &[("backup", backup), ("kind", kind)]
            ),
            Some(1.0),
            "{backup} fails as {kind}\n{text}"
        );
        assert_eq!(
            metric_value(&text, "dbwarden_backup_up", &[("backup", backup)]),
            Some(0.0)
        );
    }
    // Every observation is counted by its result.
    let counted = |backup: &str, result: &str| {
        metric_value(
            &text,
            "dbwarden_backup_observations_total",
            &[("backup", backup), ("result", result)],
        )
    };
    assert!(counted("good", "ok").is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(counted("good", "not_found"), Some(0.0));
    assert!(
        counted("missing", "not_found").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        counted("unreachable", "unreachable").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let good = |name: &str| metric_value(&text, name, &[("backup", "good")]);
    assert_eq!(good("dbwarden_backup_up"), Some(1.0));
    assert_eq!(good("dbwarden_backup_interval_seconds"), Some(2.0));
    assert!(good("dbwarden_backup_observation_duration_seconds").is_some_and(|d| d < 2.0));
    assert!(good("dbwarden_backup_last_success_timestamp_seconds").is_some());
    assert_eq!(
        metric_value(
            &text,
            "dbwarden_backup_last_success_timestamp_seconds",
            &[("backup", "missing")]
        ),
        None,
        "never listed"
    );
    assert_eq!(good("dbwarden_backup_count"), Some(2.0));
    assert_eq!(good("dbwarden_backup_objects"), Some(2.0));
    assert_eq!(
        good("dbwarden_backup_newest_size_bytes"),
        Some(dump.len() as f64)
    );
    assert_eq!(
        good("dbwarden_backup_previous_size_bytes"),
        Some(dump.len() as f64)
    );
    let newest_at = good("dbwarden_backup_newest_timestamp_seconds").unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - newest_at).abs() < 120.0,
        "moto's clock: {newest_at} vs {now}"
    );
    assert_eq!(
        metric_value(&text, "dbwarden_backup_count", &[("backup", "none")]),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, "dbwarden_backup_objects", &[("backup", "none")]),
        Some(1.0)
    );
    // The details say what was found.
    let status = daemon.status().await;
    let detail = |backup: &str, check: &str| -> String {
        let b = status["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == backup)
            .unwrap();
        let c = b["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .unwrap();
        c["detail"].as_str().unwrap().to_string()
    };
    assert!(
        detail("corrupt", "backup_integrity").contains("bytes starting \"<html>"),
        "{status:#}"
    );
    assert!(
        detail("empty", "backup_integrity").contains("an empty object"),
        "{status:#}"
    );
    assert!(
        detail("shrunk", "backup_size").contains("shrunk by 90%"),
        "{status:#}"
    );
    assert!(
        detail("good", "backup_integrity").contains("custom-format"),
        "{status:#}"
    );
    assert!(detail("local", "backup_fresh").contains("2d"), "{status:#}");
    assert!(
        detail("missing", "backup_store").contains("not_found"),
        "{status:#}"
    );
    daemon.stop().await;
}

/// The integrity read agrees with pg_restore: the table of contents it
/// counts in a real dump's header is the one `pg_restore --list` prints,
/// read from the store by one range request; and a backup is stale by a
/// clock the test controls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_dump_reads_like_pg_restore_reads_it_and_ages() {
    let (dump, entries) = blocking(dump);
    let moto = Moto::start(false).await;
    moto.put("bk1", Vec::new()).await;
    moto.put("bk1/db/postgres_backup_1.dump", dump.clone())
        .await;
    let mut l = location("b", "s3://bk1/db/", Some(&moto.endpoint));
    // Only the header is read, however big the dump.
    l.target.integrity_bytes = 4096;
    let snapshot = observe_once(&l.target).await.expect("observe");
    match &snapshot.content {
        Some(Content::PostgresCustom { toc_entries, .. }) => {
            assert_eq!(
                *toc_entries as usize, entries,
                "pg_restore --list counts {entries}"
            )
        }
        other => panic!("not read as a custom dump: {other:?}"),
    }
    let (results, _) = evaluate_backups(&snapshot, &l.thresholds, &HoldState::default(), 0);
    assert!(
        results.iter().all(|r| r.status == CheckStatus::Pass),
        "{results:#?}"
    );
    let mut later = snapshot.clone();
    later.observed_unix_ms += 27 * 3600 * 1000;
    let (results, _) = evaluate_backups(&later, &l.thresholds, &HoldState::default(), 0);
    let fresh = results
        .iter()
        .find(|r| r.check == CheckId::BackupFresh)
        .unwrap();
    assert_eq!(fresh.status, CheckStatus::Fail, "{fresh:?}");
}

/// Credentials the store refuses are their own kind of error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_reported_as_such() {
    let moto = Moto::start(true).await;
    let l = location("b", "s3://bk1/db/", Some(&moto.endpoint));
    let e = observe_once(&l.target)
        .await
        .expect_err("moto refuses unknown keys");
    assert_eq!(e.kind, BackupErrorKind::Credentials, "{e}");
    assert!(!e.message.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
}

/// More objects than one page of a listing (S3 returns at most 1000 keys a
/// page): every page is read, the newest backup found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_more_than_one_page() {
    const N: usize = 1500;
    let moto = Moto::start(false).await;
    moto.put("many", Vec::new()).await;
    let started = Instant::now();
    let puts: Vec<_> = (0..N)
        .map(|i| {
            let (client, endpoint) = (moto.client.clone(), moto.endpoint.clone());
            let key = if i % 3 == 0 {
                format!("postgres_backup_{i:05}.dump")
            } else {
                format!("wal_{i:05}.gz")
            };
            tokio::spawn(async move {
                let r = client
                    .put(format!("{endpoint}/many/p/{key}"))
                    .body(b"--\n-- PostgreSQL database dump\n--\n".to_vec())
                    .send()
                    .await;
                r.map(|r| r.status().is_success()).unwrap_or(false)
            })
        })
        .collect();
    for p in puts {
        assert!(p.await.unwrap(), "a PUT failed");
    }
    eprintln!("{N} objects uploaded in {:.1?}", started.elapsed());
    let l = location("b", "s3://many/p/", Some(&moto.endpoint));
    let snapshot = observe_once(&l.target).await.expect("observe");
    assert_eq!(snapshot.objects, N as u64);
    assert_eq!(snapshot.backups, N.div_ceil(3) as u64);
    // Uploaded within the same second or two: the newest by time, then key.
    let newest = snapshot.newest.unwrap();
    assert!(newest.key.ends_with(".dump"), "{newest:?}");
    assert!(matches!(
        snapshot.content,
        Some(Content::PostgresPlain { .. })
    ));
}

/// `dbwarden check` lists each location once, beside the targets: its
/// newest and previous backup and its checks; a failing backup check
/// fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbwarden_check_includes_the_backups() {
    let pg = blocking(support::primary);
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("b");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(
        backups.join("db-1.sql"),
        "--\n-- PostgreSQL database dump\n--\nSELECT 1;\n",
    )
    .unwrap();
    std::fs::write(backups.join("db-2.sql"), "oops").unwrap();
    let config = dir.path().join("dbwarden.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[backups.local]\ntarget = \"main\"\nurl = \"file://{}/\"\npattern = \"db-*.sql\"\n",
            support::fast_target("main", &pg.url("postgres"), ""),
            backups.display()
        ),
    )
    .unwrap();
    let out = blocking(|| support::dbwarden_check(&config, "text"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        support::describe_output(&out)
    );
    assert!(
        text.contains("backups local of target main (file)"),
        "{text}"
    );
    assert!(text.contains("2 objects, 2 backups"), "{text}");
    assert!(text.contains("newest: db-2.sql (4 B"), "{text}");
    assert!(text.contains("FAIL    backup_integrity"), "{text}");
    assert!(text.contains("found 4 bytes starting \"oops\""), "{text}");
    let out = blocking(|| support::dbwarden_check(&config, "json"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let b = &json["backups"][0];
    assert_eq!(b["name"], "local");
    assert_eq!(b["snapshot"]["previous"]["key"], "db-1.sql");
    assert_eq!(b["snapshot"]["content"]["format"], "unrecognised");
    assert_eq!(json["ok"], false);
}
