//! Integration test of the scratch PostgreSQL 15 harness (`dbwarden::scratch`).
//! Needs the Debian package `postgresql-15`; fails (never skips) without it.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use dbwarden::scratch::{ClusterOptions, ScratchCluster};

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok(true)` or the deadline passes; the
/// last observation is reported on timeout.
fn poll_until(what: &str, mut check: impl FnMut() -> Result<bool, String>) {
    let started = Instant::now();
    loop {
        let last = match check() {
            Ok(true) => return,
            Ok(false) => "condition not met yet".to_owned(),
            Err(e) => e,
        };
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}; last observation: {last}"
        );
        sleep(POLL);
    }
}

#[test]
fn primary_standby_stop_start_and_cleanup() {
    let primary = ScratchCluster::start_primary(ClusterOptions::default())
        .unwrap_or_else(|e| panic!("start_primary: {e}"));
    let primary_root: PathBuf = primary.root_dir().to_path_buf();
    assert!(primary.data_dir().join("PG_VERSION").is_file());
    assert!(primary.data_dir().starts_with(&primary_root));
    assert_ne!(
        primary.port(),
        5432,
        "must never use the system server's port"
    );
    assert_eq!(
        primary.url("postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port())
    );

    let psql = |c: &ScratchCluster, sql: &str| {
        c.psql("postgres", sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    };
    assert_eq!(psql(&primary, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        psql(&primary, "SHOW server_version_num").get(..2),
        Some("15")
    );
    assert_eq!(psql(&primary, "SHOW data_checksums"), "on");
    psql(
        &primary,
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    );
    assert_eq!(psql(&primary, "SELECT count(*) FROM items"), "100");

    // SQL errors surface as errors carrying psql's stderr.
    let err = primary
        .psql("postgres", "SELECT * FROM no_such_table")
        .expect_err("query on a missing table must fail");
    assert!(err.to_string().contains("no_such_table"), "{err}");

    let standby = ScratchCluster::start_standby(&primary)
        .unwrap_or_else(|e| panic!("start_standby: {e}\nprimary log:\n{}", primary.log_tail()));
    let standby_root: PathBuf = standby.root_dir().to_path_buf();
    assert_ne!(standby.port(), primary.port());
    assert_ne!(standby_root, primary_root);

    // Rows written after the base backup must arrive by streaming.
    psql(
        &primary,
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(101, 150) g",
    );
    poll_until("150 rows and recovery on the standby", || {
        let count = standby
            .psql("postgres", "SELECT count(*) FROM items")
            .map_err(|e| e.to_string())?;
        let recovery = standby
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .map_err(|e| e.to_string())?;
        Ok(count == "150" && recovery == "t")
    });
    poll_until("the primary to report a streaming standby", || {
        primary
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .map(|n| n == "1")
            .map_err(|e| e.to_string())
    });

    // Stop: no answers; start: same port, data intact.
    let port = primary.port();
    primary.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    assert!(
        primary.psql("postgres", "SELECT 1").is_err(),
        "a stopped primary must not answer"
    );
    primary.start().unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(primary.port(), port);
    assert_eq!(psql(&primary, "SELECT count(*) FROM items"), "150");

    drop(standby);
    drop(primary);
    assert!(
        !standby_root.exists(),
        "{} still exists",
        standby_root.display()
    );
    assert!(
        !primary_root.exists(),
        "{} still exists",
        primary_root.display()
    );
}

#[test]
fn drop_cleans_up_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let cluster = ScratchCluster::start_primary(ClusterOptions {
            max_connections: 20,
            extra_conf: vec!["work_mem = '7MB'".to_owned()],
        })
        .unwrap_or_else(|e| panic!("start_primary: {e}"));
        assert_eq!(
            cluster.psql("postgres", "SHOW max_connections").unwrap(),
            "20"
        );
        assert_eq!(cluster.psql("postgres", "SHOW work_mem").unwrap(), "7MB");
        tx.send(cluster.root_dir().to_path_buf()).unwrap();
        panic!("deliberate panic while a scratch cluster is alive");
    })
    .join();
    assert!(outcome.is_err(), "the thread was supposed to panic");
    let root = rx.recv().expect("the thread reported its root dir");
    assert!(!root.exists(), "{} survived the panic", root.display());
}

#[test]
fn startup_failure_reports_log_tail_and_cleans_up() {
    let err = ScratchCluster::start_primary(ClusterOptions {
        max_connections: 100,
        extra_conf: vec!["shared_buffers = 'lots'".to_owned()],
    })
    .expect_err("an invalid shared_buffers must fail start-up");
    let msg = err.to_string();
    assert!(msg.contains("pg_ctl start"), "{msg}");
    assert!(msg.contains("server log tail"), "{msg}");
    assert!(msg.contains("shared_buffers"), "{msg}");

    // The failed cluster's directory (named in the command line) is gone.
    let start = msg
        .find("/dbwarden-scratch-")
        .expect("the message names the directory");
    let dir_end = msg[start + 1..]
        .find('/')
        .map(|i| start + 1 + i)
        .expect("…/data");
    let root = std::env::temp_dir().join(&msg[start + 1..dir_end]);
    assert!(!root.exists(), "{} survived a failed start", root.display());
}
