//! The command line: parsing ([`Cli`]) and the subcommands. `main` calls
//! [`main`] and exits with the code it returns.

mod check;
mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// Exit codes, shared by every subcommand.
pub mod exit {
    pub const OK: u8 = 0;
    /// `check`: at least one check failed. Other commands: a runtime failure.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration; nothing was connected to.
    pub const USAGE: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(
    name = "dbwarden",
    version,
    about = "Watches PostgreSQL, evaluates the runbook's checks, exports Prometheus metrics."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll every target, serve /metrics and the API.
    /// SIGHUP (and POST /api/v1/reload) reloads the configuration in place.
    Run {
        #[arg(long, short, value_name = "FILE", env = "DBWARDEN_CONFIG")]
        config: PathBuf,
        /// Also reload when the file changes (a Kubernetes ConfigMap volume
        /// included: its directory is watched).
        #[arg(long)]
        watch_config: bool,
    },
    /// Observe every target once and print the runbook's checks. Exit 0 when
    /// all pass, 1 when any fails, 2 on usage or config errors. Changes nothing.
    Check {
        #[arg(long, short, value_name = "FILE", env = "DBWARDEN_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Evaluate the remediation policies against a recorded snapshot (from
    /// `check --format json` or `GET /api/v1/status?snapshot=true`) and print
    /// what would be done and why. Connects to nothing, changes nothing.
    Replay {
        #[arg(long, short, value_name = "FILE", env = "DBWARDEN_CONFIG")]
        config: PathBuf,
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat this alert as firing on every target (for policies with
        /// `only_while_alerts`); repeat for several.
        #[arg(long = "assume-firing", value_name = "ALERTNAME")]
        assume_firing: Vec<String>,
    },
    /// Validate the configuration without connecting anywhere and print the
    /// effective configuration, secrets redacted.
    Config {
        #[arg(long, short, value_name = "FILE", env = "DBWARDEN_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Parses the arguments, runs the subcommand, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(match cli.command {
        Command::Config { config } => match load(&config) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                exit::OK
            }
            Err(code) => code,
        },
        Command::Check { config, format } => match load(&config) {
            Ok(c) => runtime(check::run(c, format)),
            Err(code) => code,
        },
        Command::Replay {
            config,
            snapshot,
            format,
            assume_firing,
        } => match load(&config) {
            Ok(c) => replay::run(&c, &snapshot, format, &assume_firing),
            Err(code) => code,
        },
        Command::Run {
            config,
            watch_config,
        } => match load(&config) {
            Ok(c) => {
                let options = crate::daemon::Options {
                    source: Some(crate::daemon::ConfigSource {
                        path: config,
                        env: None,
                    }),
                    watch_config,
                    log: Some(crate::telemetry::logging::init(&c.log)),
                };
                runtime(async move {
                    match crate::daemon::run_with(c, options, crate::daemon::shutdown_signal())
                        .await
                    {
                        Ok(()) => exit::OK,
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), "dbwarden failed");
                            eprintln!("dbwarden: {e:#}");
                            exit::FAILED
                        }
                    }
                })
            }
            Err(code) => code,
        },
    })
}

fn load(path: &std::path::Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("dbwarden: {e}");
        exit::USAGE
    })
}

fn runtime<F: std::future::Future<Output = u8>>(f: F) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("dbwarden: cannot start the async runtime: {e}");
            exit::FAILED
        }
    }
}
