//! Structured logs: human text or JSON lines on stderr, filtered by the
//! configured level unless `RUST_LOG` is set.

use std::io::IsTerminal;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::settings::{Context, Issues};

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// "text" for people, "json" for log pipelines.
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogSettings {
    pub fn validate(&self, _: &Context, issues: &mut Issues) {
        if let Err(e) = EnvFilter::try_new(&self.level) {
            issues.push(
                "log.level",
                format!(
                    "invalid filter {:?}: {e}; write e.g. \"info\" or \"info,dbwarden=debug\"",
                    self.level
                ),
            );
        }
    }
}

/// Changes the level of the installed subscriber (a reload's `log.level`).
#[derive(Clone)]
pub struct LogLevel(Option<Arc<SetFilter>>);

type SetFilter = dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync;

impl LogLevel {
    /// Applies `level` (a validated filter directive); while `RUST_LOG` is
    /// set, it wins and nothing changes.
    pub fn set(&self, level: &str) {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let (Some(set), Ok(filter)) = (&self.0, EnvFilter::try_new(level)) else {
            return;
        };
        if let Err(e) = set(filter) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevel")
    }
}

/// Installs the global subscriber, whose level a reload may change. Safe to
/// call more than once (later calls install nothing and change nothing).
pub fn init(cfg: &LogSettings) -> LogLevel {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let set: Arc<SetFilter> =
                Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
            LogLevel(builder.try_init().is_ok().then_some(set))
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let set: Arc<SetFilter> =
                Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
            LogLevel(builder.try_init().is_ok().then_some(set))
        }
    }
}
