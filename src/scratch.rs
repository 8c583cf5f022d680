//! Throwaway PostgreSQL 15 clusters for integration tests and a developer
//! quick start.
//!
//! Everything here is synchronous and built on [`std::process`]: each
//! [`ScratchCluster`] owns a private directory under [`std::env::temp_dir`]
//! (`dbwarden-scratch-<pid>-<counter>-<nanos>`) holding its data directory,
//! its server log and its Unix socket, and listens on a free TCP port on
//! `127.0.0.1`. Dropping the value stops the server (`pg_ctl stop -m
//! immediate`) and removes the directory, also while a test panics.
//!
//! The server binaries are taken from [`PG_BIN_DIR`] (Debian package
//! `postgresql-15`); a missing binary is an error ([`ScratchError::MissingBinary`]),
//! never a silent skip. When the current process is root, the server-side
//! programs (`initdb`, `pg_ctl`, `pg_basebackup`) run as the `postgres` OS
//! user, because `initdb` and `postgres` refuse to run as root. Client
//! programs (`psql`, `pg_isready`) run as the current user and connect over
//! TCP with `trust` authentication.
//!
//! A server whose owning process is killed (e.g. `SIGKILL` of a test binary)
//! cannot be stopped by `Drop`; the next process that starts a scratch
//! cluster reaps such leftovers: directories whose creating process no
//! longer exists are stopped (only if their `postmaster.pid` still names a
//! live `postgres` started on exactly that data directory) and removed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Directory holding the PostgreSQL 15 server binaries.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The `psql` used by [`ScratchCluster::psql`].
pub const PSQL: &str = "/usr/bin/psql";
/// Debian package providing the binaries above (it pulls in the client).
pub const PG_PACKAGE: &str = "postgresql-15";

const SERVER_BINARIES: [&str; 5] = [
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_isready",
];
const DIR_PREFIX: &str = "dbwarden-scratch-";
const LOG_FILE_NAME: &str = "server.log";
const DATA_DIR_NAME: &str = "data";
/// `pg_ctl -t` for start and stop.
const PG_CTL_WAIT_SECS: u32 = 60;
/// Hard limit for any single child command (kills the child when reached).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for a started server to accept connections / be in recovery.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Start attempts with a fresh port when the port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 50;

/// Errors of the scratch-cluster harness. Command failures carry the
/// command line, its stderr and (for server start-up) the server log tail.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A required PostgreSQL program is not installed.
    #[error(
        "required PostgreSQL program {} not found or not executable; install the Debian package `{package}` (apt-get install {package})",
        .path.display()
    )]
    MissingBinary {
        path: PathBuf,
        package: &'static str,
    },

    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A command ran but exited unsuccessfully.
    #[error(
        "command `{command}` failed ({status}){}{}{}",
        section("stderr", .stderr),
        section("stdout", .stdout),
        section("server log tail", .log_tail)
    )]
    CommandFailed {
        command: String,
        status: String,
        stdout: String,
        stderr: String,
        /// Last lines of the server log when relevant, else empty.
        log_tail: String,
    },

    /// A command did not finish in time and was killed.
    #[error(
        "command `{command}` did not finish within {timeout:?} and was killed{}{}",
        section("stderr", .stderr),
        section("server log tail", .log_tail)
    )]
    CommandTimedOut {
        command: String,
        timeout: Duration,
        stderr: String,
        log_tail: String,
    },

    /// A started server did not reach the expected state in time.
    #[error(
        "timed out after {waited:?} waiting for {what}; last check `{command}` said:{}{}",
        section("output", .stderr),
        section("server log tail", .log_tail)
    )]
    NotReady {
        what: String,
        waited: Duration,
        command: String,
        stderr: String,
        log_tail: String,
    },

    /// A command succeeded but printed something unexpected.
    #[error("command `{command}` printed unexpected output: {output:?}")]
    UnexpectedOutput { command: String, output: String },
}

fn section(title: &str, body: &str) -> String {
    let body = body.trim_end();
    if body.is_empty() {
        String::new()
    } else {
        format!("\n--- {title} ---\n{body}")
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ScratchError {
    let context = context.into();
    move |source| ScratchError::Io { context, source }
}

/// Settings for [`ScratchCluster::start_primary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// `max_connections` (default 100).
    pub max_connections: u32,
    /// Lines appended verbatim to `postgresql.conf` after the harness's own
    /// settings (so they win), e.g. `"log_min_duration_statement = 0"`.
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            max_connections: 100,
            extra_conf: Vec::new(),
        }
    }
}

/// The OS identity server-side programs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAs {
    /// Not root: run everything as ourselves.
    CurrentUser,
    /// Root: switch to the `postgres` OS user.
    Postgres { uid: u32, gid: u32 },
}

/// A running (or stopped) throwaway PostgreSQL 15 cluster; see the module docs.
#[derive(Debug)]
pub struct ScratchCluster {
    port: u16,
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
}

impl ScratchCluster {
    /// Creates a new primary: `initdb`, configuration for fast throwaway use
    /// with streaming replication enabled, `trust` authentication for local
    /// and `127.0.0.1` connections (including replication), `pg_ctl start
    /// -w`, and waits until it accepts connections.
    pub fn start_primary(opts: ClusterOptions) -> Result<Self, ScratchError> {
        let mut cluster = Self::allocate()?;
        cluster.port = allocate_port()?;

        let mut initdb = cluster.server_command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data_dir)
            .args(["-A", "trust", "-U", "postgres", "--data-checksums"])
            .args(["--no-locale", "-E", "UTF8", "--no-sync"]);
        let out = cluster.run(&mut initdb, COMMAND_TIMEOUT)?;
        cluster.check(out, false)?;

        let conf = cluster.data_dir.join("postgresql.conf");
        cluster.append_file(&conf, &primary_conf(&cluster, &opts))?;
        cluster.write_file(&cluster.data_dir.join("pg_hba.conf"), HBA_CONF)?;

        cluster.first_start(&conf)?;
        cluster.wait_accepting()?;
        Ok(cluster)
    }

    /// Creates a streaming standby of `primary` with `pg_basebackup -R -X
    /// stream -c fast`, gives it its own port and socket directory (appended
    /// to its `postgresql.auto.conf`), starts it, and waits until it accepts
    /// connections and `pg_is_in_recovery()` is true.
    pub fn start_standby(primary: &ScratchCluster) -> Result<Self, ScratchError> {
        let mut cluster = Self::allocate()?;
        cluster.port = allocate_port()?;

        let mut backup = cluster.server_command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&cluster.data_dir)
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-w", "-R", "-X", "stream", "-c", "fast"]);
        let out = cluster.run(&mut backup, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            return Err(out.into_error(primary.log_tail()));
        }
        fs::set_permissions(&cluster.data_dir, fs::Permissions::from_mode(0o700)).map_err(
            io_error(format!("chmod 0700 {}", cluster.data_dir.display())),
        )?;

        let auto_conf = cluster.data_dir.join("postgresql.auto.conf");
        let mut settings = String::from("\n# dbwarden scratch standby\n");
        let _ = writeln!(settings, "port = {}", cluster.port);
        let _ = writeln!(
            settings,
            "unix_socket_directories = {}",
            conf_quote(&cluster.root.to_string_lossy())
        );
        let _ = writeln!(settings, "cluster_name = {}", conf_quote(&cluster.name()));
        cluster.append_file(&auto_conf, &settings)?;

        cluster.first_start(&auto_conf)?;
        cluster.wait_accepting()?;
        cluster.wait_in_recovery()?;
        Ok(cluster)
    }

    /// TCP port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE` (trust auth, no password).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(database)
        )
    }

    /// The cluster's data directory (`<root>/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The private directory holding data dir, log and socket; removed on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The server log file (`<root>/server.log`).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// `pg_ctl stop -m fast -w`.
    pub fn stop(&self) -> Result<(), ScratchError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            "fast",
            "-w",
            "-t",
            &PG_CTL_WAIT_SECS.to_string(),
        ]);
        let out = self.run(&mut cmd, COMMAND_TIMEOUT)?;
        self.check(out, true)
    }

    /// Starts the cluster again after [`stop`](Self::stop), on the same port,
    /// and waits until it accepts connections.
    pub fn start(&self) -> Result<(), ScratchError> {
        self.pg_ctl_start()?;
        self.wait_accepting()
    }

    /// Runs `psql -X -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p PORT -U
    /// postgres -d DATABASE -c SQL` and returns its trimmed stdout.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ScratchError> {
        let out = self.run_psql(database, sql)?;
        if !out.status.success() {
            return Err(out.into_error(String::new()));
        }
        Ok(out.stdout.trim().to_owned())
    }

    /// The last ~50 lines of the server log (for error messages).
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_file, LOG_TAIL_LINES)
    }

    // ----------------------------------------------------------------- setup

    /// Checks the binaries, reaps leftovers once per process, creates the
    /// private root directory. The returned value cleans up on drop, so
    /// every later failure in the constructors removes the directory again.
    fn allocate() -> Result<Self, ScratchError> {
        let bin_dir = PathBuf::from(PG_BIN_DIR);
        check_binaries(&bin_dir)?;
        let run_as = run_as()?;
        static REAP: Once = Once::new();
        REAP.call_once(|| reap_stale_clusters(&bin_dir, run_as));

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let root = loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = base.join(format!("{DIR_PREFIX}{}-{n}-{nanos}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io_error(format!(
                        "could not create scratch directory {}",
                        candidate.display()
                    ))(e));
                }
            }
        };
        let cluster = Self {
            port: 0,
            data_dir: root.join(DATA_DIR_NAME),
            log_file: root.join(LOG_FILE_NAME),
            root,
            bin_dir,
            run_as,
        };
        cluster.chown(&cluster.root)?;
        Ok(cluster)
    }

    /// Starts for the first time; when the port turned out to be taken,
    /// appends a fresh `port = N` to `port_conf` and retries.
    fn first_start(&mut self, port_conf: &Path) -> Result<(), ScratchError> {
        let mut attempt = 1;
        loop {
            let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(err) => {
                    let new_log = read_from(&self.log_file, log_offset);
                    if attempt >= PORT_ATTEMPTS || !new_log.contains("Address already in use") {
                        return Err(err);
                    }
                    tracing::debug!(port = self.port, "scratch cluster port taken, retrying");
                    self.port = allocate_port()?;
                    self.append_file(port_conf, &format!("port = {}\n", self.port))?;
                    attempt += 1;
                }
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), ScratchError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()]);
        let out = self.run(&mut cmd, COMMAND_TIMEOUT)?;
        self.check(out, true)
    }

    fn wait_accepting(&self) -> Result<(), ScratchError> {
        let port = self.port.to_string();
        self.wait_for("the server to accept connections", || {
            let mut cmd = self.client_command(&self.bin_dir.join("pg_isready"));
            cmd.args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-t", "2"]);
            let out = self.run(&mut cmd, Duration::from_secs(10))?;
            Ok(out.status.success().then_some(()).ok_or_else(|| {
                (
                    describe(&cmd, cmd.as_postgres),
                    format!("{}{}", out.stdout, out.stderr),
                )
            }))
        })
    }

    fn wait_in_recovery(&self) -> Result<(), ScratchError> {
        self.wait_for("the standby to be in recovery", || {
            let out = self.run_psql("postgres", "SELECT pg_is_in_recovery()")?;
            if out.status.success() && out.stdout.trim() == "t" {
                Ok(Ok(()))
            } else {
                Ok(Err((out.command, format!("{}{}", out.stdout, out.stderr))))
            }
        })
    }

    /// Polls `check` every 50 ms for up to [`READY_TIMEOUT`]. `check`
    /// returns `Ok(Err((command, output)))` for "not yet".
    fn wait_for(
        &self,
        what: &str,
        mut check: impl FnMut() -> Result<Result<(), (String, String)>, ScratchError>,
    ) -> Result<(), ScratchError> {
        let started = Instant::now();
        loop {
            let (command, stderr) = match check()? {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if started.elapsed() >= READY_TIMEOUT {
                return Err(ScratchError::NotReady {
                    what: format!("{what} (port {}, {})", self.port, self.data_dir.display()),
                    waited: started.elapsed(),
                    command,
                    stderr,
                    log_tail: self.log_tail(),
                });
            }
            sleep(POLL_INTERVAL);
        }
    }

    // ------------------------------------------------------------ commands

    fn name(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn server_command(&self, program: &str) -> Cmd {
        server_command(&self.bin_dir.join(program), &self.root, self.run_as)
    }

    fn client_command(&self, program: &Path) -> Cmd {
        let mut command = Command::new(program);
        scrub_env(&mut command);
        command.current_dir(&self.root).stdin(Stdio::null());
        Cmd {
            command,
            as_postgres: false,
        }
    }

    fn run_psql(&self, database: &str, sql: &str) -> Result<Captured, ScratchError> {
        let mut cmd = self.client_command(Path::new(PSQL));
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .arg("-c")
            .arg(sql)
            .env("PGCLIENTENCODING", "UTF8");
        self.run(&mut cmd, COMMAND_TIMEOUT)
    }

    fn run(&self, cmd: &mut Cmd, timeout: Duration) -> Result<Captured, ScratchError> {
        run_captured(cmd, &self.root, timeout)
    }

    /// Turns a failed command into an error, optionally with the log tail.
    fn check(&self, out: Captured, with_log: bool) -> Result<(), ScratchError> {
        if out.status.success() {
            Ok(())
        } else {
            let tail = if with_log {
                self.log_tail()
            } else {
                String::new()
            };
            Err(out.into_error(tail))
        }
    }

    fn chown(&self, path: &Path) -> Result<(), ScratchError> {
        if let RunAs::Postgres { uid, gid } = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_error(format!("chown postgres {}", path.display())))?;
        }
        Ok(())
    }

    fn append_file(&self, path: &Path, text: &str) -> Result<(), ScratchError> {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(format!("could not open {}", path.display())))?;
        file.write_all(text.as_bytes())
            .map_err(io_error(format!("could not write {}", path.display())))?;
        self.chown(path)
    }

    fn write_file(&self, path: &Path, text: &str) -> Result<(), ScratchError> {
        fs::write(path, text).map_err(io_error(format!("could not write {}", path.display())))?;
        self.chown(path)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        teardown(&self.root, &self.bin_dir, self.run_as);
    }
}

const HBA_CONF: &str = "\
# dbwarden scratch cluster: trust everything local, nothing else
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
";

fn primary_conf(cluster: &ScratchCluster, opts: &ClusterOptions) -> String {
    let mut conf = String::from("\n# dbwarden scratch cluster settings\n");
    let lines = [
        "listen_addresses = '127.0.0.1'".to_owned(),
        format!("port = {}", cluster.port),
        format!(
            "unix_socket_directories = {}",
            conf_quote(&cluster.root.to_string_lossy())
        ),
        format!("cluster_name = {}", conf_quote(&cluster.name())),
        format!("max_connections = {}", opts.max_connections),
        "wal_level = replica".to_owned(),
        "max_wal_senders = 10".to_owned(),
        "max_replication_slots = 10".to_owned(),
        "hot_standby = on".to_owned(),
        "archive_mode = off".to_owned(),
        "fsync = off".to_owned(),
        "synchronous_commit = off".to_owned(),
        "full_page_writes = off".to_owned(),
        "shared_buffers = '16MB'".to_owned(),
        "logging_collector = off".to_owned(),
        "log_destination = 'stderr'".to_owned(),
        "lc_messages = 'C'".to_owned(),
    ];
    for line in lines.iter().chain(opts.extra_conf.iter()) {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Quotes a value for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------- helpers

fn check_binaries(bin_dir: &Path) -> Result<(), ScratchError> {
    let paths = SERVER_BINARIES
        .iter()
        .map(|b| bin_dir.join(b))
        .chain(std::iter::once(PathBuf::from(PSQL)));
    for path in paths {
        let executable = fs::metadata(&path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(ScratchError::MissingBinary {
                path,
                package: PG_PACKAGE,
            });
        }
    }
    Ok(())
}

/// Root runs server programs as `postgres`; anyone else as themselves.
fn run_as() -> Result<RunAs, ScratchError> {
    static RUN_AS: OnceLock<RunAs> = OnceLock::new();
    if let Some(r) = RUN_AS.get() {
        return Ok(*r);
    }
    let resolved = if id(&["-u"])? == 0 {
        RunAs::Postgres {
            uid: id(&["-u", "postgres"])?,
            gid: id(&["-g", "postgres"])?,
        }
    } else {
        RunAs::CurrentUser
    };
    Ok(*RUN_AS.get_or_init(|| resolved))
}

fn id(args: &[&str]) -> Result<u32, ScratchError> {
    let mut cmd = Command::new("id");
    cmd.args(args).stdin(Stdio::null());
    let command = describe(&cmd, false);
    let out = cmd
        .output()
        .map_err(io_error(format!("could not run `{command}`")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(ScratchError::CommandFailed {
            command,
            status: out.status.to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log_tail: String::new(),
        });
    }
    stdout.parse().map_err(|_| ScratchError::UnexpectedOutput {
        command,
        output: stdout,
    })
}

/// A free port on 127.0.0.1 not handed out before by this process (a
/// stopped cluster keeps its port for [`ScratchCluster::start`]).
fn allocate_port() -> Result<u16, ScratchError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_error("could not bind 127.0.0.1:0 to find a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io_error("could not read the bound address"))?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(ScratchError::Io {
        context: "could not find a free port".to_owned(),
        source: io::Error::from(io::ErrorKind::AddrInUse),
    })
}

/// Removes inherited libpq/pg_wrapper variables (PGHOST, PGPORT, PGDATA,
/// PGCLUSTER, PGOPTIONS, ...) and fixes the locale so messages are English.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env("PGCONNECT_TIMEOUT", "10");
}

/// A command plus whether it drops to the `postgres` user (for messages).
struct Cmd {
    command: Command,
    as_postgres: bool,
}

impl std::ops::Deref for Cmd {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.command
    }
}

impl std::ops::DerefMut for Cmd {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

fn server_command(program: &Path, root: &Path, run_as: RunAs) -> Cmd {
    let mut command = Command::new(program);
    scrub_env(&mut command);
    command.current_dir(root).stdin(Stdio::null());
    if let RunAs::Postgres { uid, gid } = run_as {
        // std drops supplementary groups (setgroups(0)) when root sets a uid.
        command
            .uid(uid)
            .gid(gid)
            .env("HOME", root)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    Cmd {
        command,
        as_postgres: run_as != RunAs::CurrentUser,
    }
}

/// Finished command with its captured output.
struct Captured {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Captured {
    fn into_error(self, log_tail: String) -> ScratchError {
        ScratchError::CommandFailed {
            command: self.command,
            status: self.status.to_string(),
            stdout: self.stdout,
            stderr: self.stderr,
            log_tail,
        }
    }
}

/// Runs `cmd` with stdout/stderr captured in unlinked files inside
/// `capture_dir` (not pipes: `pg_ctl start` leaves a daemon behind, and
/// files never block on it), killing it after `timeout`.
fn run_captured(
    cmd: &mut Cmd,
    capture_dir: &Path,
    timeout: Duration,
) -> Result<Captured, ScratchError> {
    let command = describe(cmd, cmd.as_postgres);
    let (mut out, out_child) = capture_file(capture_dir).map_err(io_error(format!(
        "could not create capture file in {}",
        capture_dir.display()
    )))?;
    let (mut err, err_child) = capture_file(capture_dir).map_err(io_error(format!(
        "could not create capture file in {}",
        capture_dir.display()
    )))?;
    cmd.stdout(out_child).stderr(err_child);
    let spawned = cmd.spawn();
    // Release the Command's copies of the capture descriptors.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned.map_err(io_error(format!("could not run `{command}`")))?;

    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(io_error(format!("could not wait for `{command}`"))(e)),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ScratchError::CommandTimedOut {
                command,
                timeout,
                stderr: read_capture(&mut err),
                log_tail: String::new(),
            });
        }
        sleep(nap);
        nap = (nap * 2).min(POLL_INTERVAL);
    };
    Ok(Captured {
        command,
        status,
        stdout: read_capture(&mut out),
        stderr: read_capture(&mut err),
    })
}

fn capture_file(dir: &Path) -> io::Result<(File, File)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".capture-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let _ = fs::remove_file(&path);
    let child_end = file.try_clone()?;
    Ok((file, child_end))
}

fn read_capture(file: &mut File) -> String {
    let mut buf = Vec::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut buf));
    String::from_utf8_lossy(&buf).into_owned()
}

/// Shell-like rendering of a command for error messages.
fn describe(cmd: &Command, as_postgres: bool) -> String {
    let mut s = String::new();
    if as_postgres {
        s.push_str("[as postgres] ");
    }
    let words = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    for (i, word) in words.enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&shell_quote(word));
    }
    s
}

fn shell_quote(word: &OsStr) -> String {
    let w = word.to_string_lossy();
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        w.into_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// The last `lines` lines of `path` (reads at most the final 256 KiB).
fn read_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return format!("(no server log at {}: {e})", path.display()),
    };
    let text = read_from(path, len.saturating_sub(MAX));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_to_end(&mut buf));
    }
    String::from_utf8_lossy(&buf).into_owned()
}

// --------------------------------------------------------------- teardown

/// Stops whatever server runs on `<root>/data` and removes `root`. Never
/// panics; problems are logged.
fn teardown(root: &Path, bin_dir: &Path, run_as: RunAs) {
    let data_dir = root.join(DATA_DIR_NAME);
    if let Some(pid) = live_postmaster(&data_dir) {
        let mut cmd = server_command(&bin_dir.join("pg_ctl"), root, run_as);
        cmd.arg("stop")
            .arg("-D")
            .arg(&data_dir)
            .args(["-m", "immediate", "-w", "-t", "30"]);
        match run_captured(&mut cmd, root, Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                tracing::warn!(error = %out.into_error(String::new()), "scratch cluster: immediate stop failed")
            }
            Err(e) => tracing::warn!(error = %e, "scratch cluster: immediate stop failed"),
        }
        if live_postmaster(&data_dir) == Some(pid) {
            tracing::warn!(
                pid,
                "scratch cluster: postmaster survived pg_ctl stop, sending SIGKILL"
            );
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc_alive(pid) && Instant::now() < deadline {
                sleep(POLL_INTERVAL);
            }
        }
    }
    // Retry: backends of a killed postmaster may still be writing files.
    let mut last_err = None;
    for _ in 0..40 {
        match fs::remove_dir_all(root) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => last_err = Some(e),
        }
        sleep(POLL_INTERVAL);
    }
    if let Some(e) = last_err {
        tracing::warn!(root = %root.display(), error = %e, "scratch cluster: could not remove directory");
    }
}

/// PID of the postmaster named in `<data>/postmaster.pid`, if that process
/// is alive and was started on exactly this data directory (guards against
/// a stale pid file naming an unrelated, reused PID — e.g. the system
/// server). Without /proc, trusts the pid file.
fn live_postmaster(data_dir: &Path) -> Option<u32> {
    let pid_file = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    if !Path::new("/proc/self").exists() {
        return Some(pid);
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let data = data_dir.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == data)
        .then_some(pid)
}

fn proc_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; treat "Z" state as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Tears down `dbwarden-scratch-<pid>-*` directories in the temp dir whose
/// creating process is gone (e.g. a test binary killed with SIGKILL).
fn reap_stale_clusters(bin_dir: &Path, run_as: RunAs) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == me || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        tracing::info!(dir = %path.display(), "reaping scratch cluster left behind by dead process {owner}");
        teardown(&path, bin_dir, run_as);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("/tmp/a'b"), "'/tmp/a''b'");
        assert_eq!(percent_encode("my db/x"), "my%20db%2Fx");
        let mut cmd = Command::new("/bin/psql");
        cmd.args(["-c", "SELECT 'x'", "-p", "5"]);
        assert_eq!(
            describe(&cmd, true),
            r"[as postgres] /bin/psql -c 'SELECT '\''x'\''' -p 5"
        );
    }

    #[test]
    fn options_default() {
        let o = ClusterOptions::default();
        assert_eq!(o.max_connections, 100);
        assert!(o.extra_conf.is_empty());
    }

    #[test]
    fn missing_binaries_name_the_package() {
        let err = check_binaries(Path::new("/nonexistent/pg/bin")).unwrap_err();
        assert!(matches!(err, ScratchError::MissingBinary { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/pg/bin/initdb"), "{msg}");
        assert!(msg.contains("`postgresql-15`"), "{msg}");
    }

    #[test]
    fn error_messages_show_command_stderr_and_log() {
        let err = ScratchError::CommandFailed {
            command: "pg_ctl start".into(),
            status: "exit status: 1".into(),
            stdout: String::new(),
            stderr: "pg_ctl: could not start server\n".into(),
            log_tail: "FATAL:  boom".into(),
        };
        assert_eq!(
            err.to_string(),
            "command `pg_ctl start` failed (exit status: 1)\n--- stderr ---\n\
             pg_ctl: could not start server\n--- server log tail ---\nFATAL:  boom"
        );
    }

    #[test]
    fn tail_of_missing_log() {
        assert!(read_tail(Path::new("/nonexistent/x.log"), 5).starts_with("(no server log"));
    }
}
