//! `[server]`: where the HTTP surface listens, how long it drains, the
//! Alertmanager receiver's token, the web configuration file (TLS, basic
//! auth, headers) and whether the API shows query texts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::web_config::{self, WebConfig};
use crate::secret::Secret;
use crate::settings::{Context, Issues, Trim, absolute, duration, q, read_secret};

/// Where dbwarden listens unless told otherwise. 9641 collides with none of
/// postgres_exporter (9187), Neo4j metrics (2004) or the kubelet (10250).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9641";
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// IP:PORT; host names are not resolved.
    #[serde(with = "listen")]
    pub listen: SocketAddr,
    /// On SIGTERM/SIGINT, how long running polls and requests may take to finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// The bearer token Alertmanager must present on `POST
    /// /api/v1/alertmanager`, from a file or a variable (one of the two);
    /// without one the receiver is disabled.
    pub alertmanager_token_file: Option<PathBuf>,
    pub alertmanager_token_env: Option<String>,
    #[serde(skip)]
    pub alertmanager_token: Option<Secret>,
    /// Where the status page links each failing check's runbook section
    /// (`<runbook_url>#<alert name in lower case>`): the alert rules' own
    /// `runbook_url`. Point it at an internal copy on an air-gapped cluster.
    pub runbook_url: String,
    /// The exporter-toolkit web configuration file (as postgres_exporter's
    /// `--web.config.file`): TLS, basic auth, response headers.
    pub web_config_file: Option<PathBuf>,
    /// The web configuration file, read and checked by `validate`.
    #[serde(skip)]
    pub web: Option<WebConfig>,
    /// Whether `/api/v1/status?snapshot=true` and `/api/v1/actions` show
    /// query texts as they are; otherwise with their literals redacted.
    pub api_query_text: bool,
}

/// The runbook the shipped alert rules link to.
pub const DEFAULT_RUNBOOK_URL: &str =
    "https://github.com/dbwarden/dbwarden/blob/main/docs/runbook.md";

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            shutdown_grace: Duration::from_secs(10),
            alertmanager_token_file: None,
            alertmanager_token_env: None,
            alertmanager_token: None,
            runbook_url: DEFAULT_RUNBOOK_URL.to_string(),
            web_config_file: None,
            web: None,
            api_query_text: false,
        }
    }
}

impl ServerSettings {
    /// Checks what serde could not, and reads the receiver's token.
    pub fn validate(&mut self, ctx: &Context, issues: &mut Issues) {
        if self.shutdown_grace > MAX_SHUTDOWN_GRACE {
            issues.push(
                "server.shutdown_grace",
                format!("{} is too long: at most \"1h\"", q(self.shutdown_grace)),
            );
        }
        let scheme_ok = ["https://", "http://"]
            .iter()
            .any(|p| self.runbook_url.starts_with(p) && self.runbook_url.len() > p.len());
        if !scheme_ok || self.runbook_url.contains(['#', '"', '<', '>', ' ']) {
            issues.push(
                "server.runbook_url",
                format!(
                    "{:?} is not a usable address: an http:// or https:// URL without a fragment, e.g. {DEFAULT_RUNBOOK_URL:?}",
                    self.runbook_url
                ),
            );
        }
        self.alertmanager_token = read_secret(
            "token",
            "server",
            (
                "alertmanager_token_env",
                self.alertmanager_token_env.as_deref(),
            ),
            (
                "alertmanager_token_file",
                self.alertmanager_token_file.as_deref(),
            ),
            Trim::Whitespace,
            ctx,
            issues,
        );
        self.web = None;
        if let Some(path) = &self.web_config_file {
            if !path.is_absolute() {
                absolute(path, "server.web_config_file", issues);
                return;
            }
            match web_config::load(path) {
                Ok(web) => self.web = Some(web),
                Err(errors) => {
                    for e in errors {
                        issues.push("server.web_config_file", format!("{}: {e}", path.display()));
                    }
                }
            }
        }
    }
}

/// `listen`: an IP:PORT, with a message that says so.
mod listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            de::Error::custom(format!(
                "invalid address {text:?}: expected IP:PORT, e.g. \"127.0.0.1:9641\" or \"0.0.0.0:9641\" (host names are not resolved)"
            ))
        })
    }
}
