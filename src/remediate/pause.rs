//! The kill switch. Remediation is paused while either holds:
//! - the API paused it (`POST /api/v1/pause`); this is written to a state
//!   file, so it survives restarts until `POST /api/v1/resume`;
//! - the sentinel file exists (pt-kill's convention: `touch` it to stop
//!   every action at once, on any host, without the API).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Why remediation is paused, as the API and metrics report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseInfo {
    pub paused: bool,
    /// `api` or `sentinel` (or both).
    pub sources: Vec<String>,
    pub since: Option<String>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ApiPause {
    since: String,
    by: String,
    reason: String,
}

#[derive(Debug)]
pub struct PauseSwitch {
    state_file: PathBuf,
    sentinel: Option<PathBuf>,
    api: Mutex<Option<ApiPause>>,
}

impl PauseSwitch {
    /// Loads the persisted API pause, if any. A state file that cannot be
    /// read counts as paused: when in doubt, do not act.
    pub fn load(state_file: &Path, sentinel: Option<&Path>) -> Self {
        let api = match std::fs::read(state_file) {
            Ok(bytes) => Some(
                serde_json::from_slice::<ApiPause>(&bytes).unwrap_or_else(|e| ApiPause {
                    since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    by: "dbwarden".into(),
                    reason: format!(
                        "pause state file {} is unreadable ({e}); paused until resumed",
                        state_file.display()
                    ),
                }),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(ApiPause {
                since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                by: "dbwarden".into(),
                reason: format!(
                    "cannot read pause state file {}: {e}; paused until resumed",
                    state_file.display()
                ),
            }),
        };
        PauseSwitch {
            state_file: state_file.to_path_buf(),
            sentinel: sentinel.map(Path::to_path_buf),
            api: Mutex::new(api),
        }
    }

    pub fn info(&self) -> PauseInfo {
        let api = self.api.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sentinel = self.sentinel.as_ref().is_some_and(|p| p.exists());
        let mut sources = Vec::new();
        if api.is_some() {
            sources.push("api".to_string());
        }
        if sentinel {
            sources.push("sentinel".to_string());
        }
        PauseInfo {
            paused: !sources.is_empty(),
            sources,
            since: api.as_ref().map(|a| a.since.clone()),
            by: api.as_ref().map(|a| a.by.clone()),
            reason: api.as_ref().map(|a| a.reason.clone()).or_else(|| {
                sentinel.then(|| {
                    format!(
                        "sentinel file {} exists",
                        self.sentinel.as_ref().unwrap().display()
                    )
                })
            }),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.info().paused
    }

    /// Pauses through the API and persists it (write to a temporary file, fsync, rename).
    pub fn pause(&self, by: &str, reason: &str) -> std::io::Result<()> {
        let p = ApiPause {
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            by: by.to_string(),
            reason: reason.to_string(),
        };
        write_atomic(
            &self.state_file,
            &serde_json::to_vec(&p).map_err(std::io::Error::other)?,
        )?;
        *self.api.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(())
    }

    /// Lifts the API pause (the sentinel file, if present, still pauses).
    pub fn resume(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.state_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self.api.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_pause_survives_a_restart_and_sentinel_pauses_too() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("paused.json");
        let sentinel = dir.path().join("STOP");
        let s = PauseSwitch::load(&state, Some(&sentinel));
        assert!(!s.is_paused());
        s.pause("alice", "maintenance").unwrap();
        let again = PauseSwitch::load(&state, Some(&sentinel));
        let info = again.info();
        assert!(info.paused);
        assert_eq!(info.sources, vec!["api"]);
        assert_eq!(info.by.as_deref(), Some("alice"));
        again.resume().unwrap();
        assert!(!again.is_paused());
        assert!(!PauseSwitch::load(&state, Some(&sentinel)).is_paused());
        std::fs::write(&sentinel, b"").unwrap();
        assert_eq!(again.info().sources, vec!["sentinel"]);
    }

    #[test]
    fn unreadable_state_file_means_paused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("paused.json");
        std::fs::write(&state, b"not json").unwrap();
        let s = PauseSwitch::load(&state, None);
        assert!(s.is_paused());
        assert!(s.info().reason.unwrap().contains("unreadable"));
    }
}
