//! The configuration as the command line sees it: `dbwarden config` prints the
//! effective configuration redacted, mistakes exit 2 naming every key path,
//! and a bad configuration never connects anywhere. Runs the built binary;
//! needs no database.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dbwarden");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dbwarden.example.toml");
const DEADLINE: Duration = Duration::from_secs(60);

/// The variables the example's `password_env` keys name.
const EXAMPLE_ENV: [(&str, &str); 2] = [
    ("PG_PRIMARY_PASSWORD", "primary-pw-Zq81"),
    ("PG_STANDBY_PASSWORD", "standby-pw-Kx27"),
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with only the given environment (so no DBWARDEN_*,
/// PG* or RUST_LOG of the caller leaks in), killing it after [`DEADLINE`].
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        // sqlx would read ~/.pgpass; point HOME somewhere empty.
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().expect("spawn dbwarden");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("dbwarden {args:?} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A listener that records whether anything connected, without serving.
fn trap() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn connected(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn config_prints_the_example_redacted_and_exits_0() {
    let r = run(&["config", "--config", EXAMPLE], &EXAMPLE_ENV);
    assert_eq!(r.code, Some(0), "{}", r.all());
    for needle in [
        "[server]",
        "[postgres.primary]",
        "[postgres.standby]",
        "password_env = \"PG_PRIMARY_PASSWORD\"",
        "[postgres.primary.thresholds.disk_free]",
        "min_ratio = 0.15",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?} not in\n{}", r.stdout);
    }
    for (_, pw) in EXAMPLE_ENV {
        assert!(!r.all().contains(pw), "{pw} printed:\n{}", r.all());
    }

    // What it prints is itself a valid configuration, printed the same way.
    let dir = tempfile::tempdir().unwrap();
    let again = write(dir.path(), "effective.toml", &r.stdout);
    let r2 = run(
        &["config", "--config", again.to_str().unwrap()],
        &EXAMPLE_ENV,
    );
    assert_eq!(r2.code, Some(0), "{}", r2.all());
    assert_eq!(r2.stdout, r.stdout);
}

#[test]
fn config_reads_the_file_from_dbwarden_config_and_applies_overrides() {
    let mut env = EXAMPLE_ENV.to_vec();
    env.push(("DBWARDEN_CONFIG", EXAMPLE));
    env.push(("DBWARDEN_POSTGRES__STANDBY__POLL_INTERVAL", "20s"));
    let r = run(&["config"], &env);
    assert_eq!(r.code, Some(0), "{}", r.all());
    let standby = r.stdout.split("[postgres.standby]").nth(1).unwrap();
    assert!(standby.contains("poll_interval = \"20s\""), "{}", r.stdout);
}

#[test]
fn config_with_mistakes_exits_2_naming_every_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "[server]\n\
         listen = \"localhost:80\"\n\
         [postgres.main]\n\
         url = \"postgres://app:url-pw-Hq55@db/app\"\n\
         pol_interval = \"5s\"\n\
         poll_timeout = \"5x\"\n\
         [postgres.main.thresholds.disk_free]\n\
         min_ratio = 1.5\n\
         [postgres.other]\n\
         url = \"postgres://app@db/app\"\n\
         password_env = \"OTHER_PW\"\n",
    );
    let r = run(&["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    for (path, value) in [
        ("server.listen", "\"localhost:80\""),
        ("postgres.main.pol_interval", "poll_interval"),
        ("postgres.main.poll_timeout", "\"5x\""),
        ("postgres.main.thresholds.disk_free.min_ratio", "1.5"),
        ("postgres.other.password_env", "\"OTHER_PW\""),
    ] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{path}:")))
            .unwrap_or_else(|| panic!("{path} not named in\n{}", r.stderr));
        assert!(line.contains(value), "{value} not in {line:?}");
    }
    assert!(!r.all().contains("url-pw-Hq55"), "{}", r.all());
}

#[test]
fn check_with_a_bad_config_exits_2_and_connects_nowhere() {
    let (listener, port) = trap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        &format!(
            "[postgres.main]\n\
             url = \"postgres://app:url-pw-Mm31@127.0.0.1:{port}/app\"\n\
             sslmode = \"disable\"\n\
             [postgres.second]\n\
             url = \"postgres://app@127.0.0.1:{port}/app\"\n\
             sslmode = \"disable\"\n\
             poll_interval = \"5x\"\n"
        ),
    );
    let r = run(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(
        r.stderr.contains("postgres.second.poll_interval"),
        "{}",
        r.stderr
    );
    assert!(!r.all().contains("url-pw-Mm31"), "{}", r.all());
    assert!(
        !connected(&listener),
        "dbwarden connected with a bad config"
    );
}

#[test]
fn the_trap_sees_a_connection_from_a_valid_config() {
    // The control for the test above: with a valid config, `check` does
    // connect (and gives up, nothing answers), and the trap notices.
    let (listener, port) = trap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "good.toml",
        &format!(
            "[postgres.main]\n\
             url = \"postgres://app:url-pw-Pc90@127.0.0.1:{port}/app\"\n\
             sslmode = \"disable\"\n\
             poll_interval = \"1s\"\n\
             poll_timeout = \"1s\"\n\
             statement_timeout = \"500ms\"\n\
             connect_timeout = \"1s\"\n"
        ),
    );
    let r = run(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(!r.all().contains("url-pw-Pc90"), "{}", r.all());
    assert!(connected(&listener), "the trap missed a connection");
}

#[test]
fn version_and_help_exit_0() {
    let r = run(&["--version"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", r.stdout);
    for args in [&["--help"][..], &["config", "--help"]] {
        let r = run(args, &[]);
        assert_eq!(r.code, Some(0), "{}", r.all());
        assert!(
            r.stdout.contains("--config") || r.stdout.contains("config"),
            "{}",
            r.stdout
        );
    }
}
