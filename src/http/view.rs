//! What `GET /api/v1/status` answers and the status page shows, assembled
//! once from the published state: the two cannot tell different stories.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::AppState;
use crate::remediate::audit::{AuditRecord, Mode, redact_literals};
use crate::remediate::pause::PauseInfo;
use crate::remediate::shared::BudgetsRemaining;
use crate::state::alerts::FiringAlert;
use crate::state::{BackupStatus, KubernetesStatus, ReloadOutcome, TargetStatus};

#[derive(Debug, Serialize)]
pub(super) struct StatusView {
    pub version: &'static str,
    pub targets: Vec<Arc<TargetStatus>>,
    pub remediation: Option<RemediationView>,
    /// The Kubernetes loop's latest status (pods, StatefulSets, volumes,
    /// checks, the Lease, the latest eviction round): memory only.
    pub kubernetes: Option<Arc<KubernetesStatus>>,
    /// Every backup location's latest observation and checks.
    pub backups: Vec<Arc<BackupStatus>>,
    /// The alerts Alertmanager reports firing.
    pub alerts: Vec<FiringAlert>,
    /// The latest configuration reload, when one was tried since start.
    pub reload: Option<Arc<ReloadOutcome>>,
    /// The process itself: its live tasks (a leak shows here first).
    pub runtime: RuntimeView,
}

#[derive(Debug, Serialize)]
pub(super) struct RemediationView {
    pub mode: Mode,
    pub paused: PauseInfo,
    pub policies: Vec<String>,
    pub neo4j_policies: Vec<String>,
    /// The actions each budget still allows in its window.
    pub budgets: BudgetsRemaining,
    /// Who holds each PostgreSQL target's actor lock (`null`: nobody).
    pub actors: BTreeMap<String, Option<String>>,
    /// Whether pause, resume and reload can be asked for over HTTP (a
    /// token is configured).
    pub pause_api: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct RuntimeView {
    pub tasks: usize,
}

pub(super) fn status(app: &AppState) -> StatusView {
    let remediation = app.remediation.as_ref().map(|r| {
        let settings = r.settings();
        RemediationView {
            mode: settings.mode,
            paused: r.pause.info(),
            policies: settings.policies.keys().cloned().collect(),
            neo4j_policies: settings.neo4j_policies.keys().cloned().collect(),
            budgets: r.budgets_remaining(),
            actors: r.actors(),
            pause_api: settings.api_token.is_some(),
        }
    });
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        targets: app.state.all(),
        remediation,
        kubernetes: app.state.kubernetes(),
        backups: app.state.backups(),
        alerts: app.alerts.firing(SystemTime::now()),
        reload: app.state.last_reload(),
        runtime: RuntimeView {
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        },
    }
}

/// The latest remediation decisions, newest first, as the API and the page
/// show them: query texts with their literals redacted unless
/// `server.api_query_text` is set.
pub(super) fn recent_actions(app: &AppState, limit: usize) -> Vec<AuditRecord> {
    let mut records = app
        .remediation
        .as_ref()
        .and_then(|r| r.audit.as_ref())
        .map(|a| a.recent(limit))
        .unwrap_or_default();
    if !app.security.current().api_query_text {
        for r in &mut records {
            if let Some(s) = &mut r.session {
                s.query = redact_literals(&s.query);
            }
            if let Some(t) = &mut r.transaction {
                t.query = redact_literals(&t.query);
            }
        }
    }
    records
}
