//! A program the tests start (Prometheus, Alertmanager): [`ChildGuard`]
//! kills and reaps it on drop and shows its log when a test fails;
//! [`wait_ready`] waits for its readiness endpoint.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::POLL_EVERY;

/// A child process killed and reaped on drop (also while a test panics),
/// its output in a log file shown when something goes wrong.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    pub fn spawn(
        name: &'static str,
        program: &str,
        package: &str,
        args: &[String],
        log: PathBuf,
    ) -> ChildGuard {
        assert!(
            Path::new(program).is_file(),
            "{program} is missing: install the Debian package `{package}` (apt-get install {package})"
        );
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}): is the Debian package `{package}` installed?")
            });
        ChildGuard { name, child, log }
    }

    /// The last 40 lines of its output.
    pub fn log_tail(&self) -> String {
        super::log_tail(self.name, &self.log, 40)
    }

    /// Panics with the log when the process already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status})\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Waits until `GET url` answers 200, checking that the child still runs.
pub async fn wait_ready(child: &mut ChildGuard, url: &str) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let started = Instant::now();
    loop {
        child.assert_running();
        match c.get(url).send().await {
            Ok(r) if r.status() == 200 => return,
            other => assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} not ready at {url} within 20s: {other:?}\n{}",
                child.name,
                child.log_tail()
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
