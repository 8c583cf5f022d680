//! The status page for the person on call: `GET /` renders what
//! `/api/v1/status` answers (the same [`view::status`]) and the latest
//! decisions as plain HTML: no script, no external asset, readable on a
//! phone. `GET /ui/pause` and `/ui/resume` ask for confirmation and the
//! API token in a form (never in a URL); their `POST` switches remediation
//! like the API does.
//!
//! Every value is escaped by the template (maud): a query text or an
//! application name is shown as text, never interpreted.

use std::time::SystemTime;

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::view::{self, StatusView};
use super::{AppState, auth};
use crate::evaluate::{CheckResult, CheckStatus, fmt_pct, fmt_secs};
use crate::kubernetes::checks::KubeCheckStatus;
use crate::remediate::audit::AuditRecord;
use crate::state::TargetStatus;

/// How many recent decisions the page lists.
const DECISIONS: usize = 25;

/// The alert that fires for a failing check, whose runbook section the page
/// links: (target kind or `kubernetes`, check, alert). Held to the shipped
/// rules by a test.
pub const CHECK_ALERTS: &[(&str, &str, &str)] = &[
    ("postgres", "connection", "DbWardenTargetDown"),
    ("postgres", "disk_free", "DbWardenDiskFreeLow"),
    ("postgres", "connections_used", "DbWardenConnectionsHigh"),
    ("postgres", "replication_lag", "DbWardenReplicationLagHigh"),
    (
        "postgres",
        "replication_streaming",
        "DbWardenReplicationNotStreaming",
    ),
    (
        "postgres",
        "replication_slots",
        "DbWardenReplicationSlotRetainingWal",
    ),
    (
        "postgres",
        "replication_slot_at_risk",
        "DbWardenReplicationSlotAtRisk",
    ),
    ("postgres", "long_running_query", "DbWardenLongRunningQuery"),
    ("postgres", "idle_session", "DbWardenIdleSessions"),
    (
        "postgres",
        "idle_in_transaction",
        "DbWardenIdleInTransaction",
    ),
    ("postgres", "checksum_failures", "DbWardenChecksumFailures"),
    ("postgres", "wal_archiving", "DbWardenWalArchivingFailing"),
    ("postgres", "wraparound", "DbWardenTransactionIdWraparound"),
    ("postgres", "invalid_indexes", "DbWardenInvalidIndexes"),
    ("neo4j", "connection", "DbWardenNeo4jDown"),
    ("neo4j", "slow_queries", "DbWardenNeo4jSlowQueries"),
    ("neo4j", "indexes_online", "DbWardenNeo4jIndexNotOnline"),
    (
        "neo4j",
        "databases_online",
        "DbWardenNeo4jDatabaseNotAsRequested",
    ),
    ("neo4j", "cluster_healthy", "DbWardenNeo4jClusterUnhealthy"),
    ("neo4j", "node_count", "DbWardenNeo4jNodeCountOutOfRange"),
    (
        "neo4j",
        "relationship_count",
        "DbWardenNeo4jRelationshipCountOutOfRange",
    ),
    ("backups", "backup_store", "DbWardenBackupStoreFailing"),
    ("backups", "backup_fresh", "DbWardenBackupStale"),
    ("backups", "backup_size", "DbWardenBackupShrunk"),
    ("backups", "backup_integrity", "DbWardenBackupCorrupt"),
    (
        "kubernetes",
        "kubernetes_api_reachable",
        "DbWardenKubernetesApiUnreachable",
    ),
    (
        "kubernetes",
        "kubernetes_pods_ready",
        "DbWardenKubernetesPodNotReady",
    ),
    (
        "kubernetes",
        "kubernetes_no_crash_loop",
        "DbWardenKubernetesPodCrashLooping",
    ),
    (
        "kubernetes",
        "kubernetes_no_oom_killed",
        "DbWardenKubernetesPodOOMKilled",
    ),
    (
        "kubernetes",
        "kubernetes_restarts",
        "DbWardenKubernetesPodRestarting",
    ),
    (
        "kubernetes",
        "kubernetes_statefulset_ready",
        "DbWardenKubernetesStatefulSetNotReady",
    ),
    (
        "kubernetes",
        "kubernetes_volume_free",
        "DbWardenKubernetesVolumeFreeLow",
    ),
];

fn alert_for(kind: &str, check: &str) -> Option<&'static str> {
    CHECK_ALERTS
        .iter()
        .find(|(k, c, _)| *k == kind && *c == check)
        .map(|(_, _, a)| *a)
}

const STYLE: &str = r#"
:root{color-scheme:light dark;--fail:#c62828;--pass:#2e7d32;--pend:#b26a00;--mute:#777}
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:.75rem}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.2rem 0 .4rem}
nav a{margin-right:.8rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0}
th,td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #8884;vertical-align:top}
.wrap{overflow-x:auto}
.fail,.down{color:var(--fail);font-weight:600}.pass,.up{color:var(--pass)}
.pending{color:var(--pend)}.unknown{color:var(--mute)}
.banner{padding:.6rem .8rem;border-radius:.3rem;margin:.6rem 0;border:2px solid var(--fail)}
.ok{border-color:var(--pass)}
code{white-space:pre-wrap;word-break:break-all}
form{display:grid;gap:.5rem;max-width:28rem}
input,button{font:inherit;padding:.4rem}
small,.mute{color:var(--mute)}
@media (max-width:44rem){
table,tbody,tr,td{display:block;width:auto}
tr.head{display:none}
tr{border-bottom:1px solid #8884;padding:.35rem 0}
td{border:0;padding:.05rem 0}
td[data-label]::before{content:attr(data-label) ": ";color:var(--mute)}
}
"#;

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{} ago", fmt_secs(d.as_secs_f64())),
        None => "never".into(),
    }
}

/// A check's measured value or threshold in its unit.
fn shown(check: &str, v: f64, other: f64) -> String {
    match check {
        "disk_free" | "connections_used" | "wraparound" => fmt_pct(v, other).0,
        "replication_lag"
        | "long_running_query"
        | "idle_session"
        | "idle_in_transaction"
        | "slow_queries" => fmt_secs(v),
        "replication_slots" => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        _ if v.fract() == 0.0 => format!("{v:.0}"),
        _ => format!("{v}"),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn status_class(s: CheckStatus) -> &'static str {
    s.as_str()
}

pub(super) async fn index(State(app): State<AppState>) -> Response {
    let view = view::status(&app);
    let decisions = view::recent_actions(&app, DECISIONS);
    let runbook = app.server().runbook_url.clone();
    page("dbwarden", render(&view, &decisions, &runbook))
}

fn render(view: &StatusView, decisions: &[AuditRecord], runbook: &str) -> Markup {
    let failing: usize = view
        .targets
        .iter()
        .map(|t| {
            t.checks
                .iter()
                .filter(|c| c.status == CheckStatus::Fail)
                .count()
        })
        .sum();
    let down = view.targets.iter().filter(|t| !t.up).count();
    html! {
        header {
            h1 { "dbwarden" }
            nav {
                a href="/metrics" { "/metrics" }
                a href="/api/v1/status" { "status JSON" }
                a href="/api/v1/actions" { "actions JSON" }
                a href=(runbook) { "runbook" }
            }
            small { "version " (view.version) " · rendered " (humantime::format_rfc3339_seconds(SystemTime::now())) " · reload the page to refresh" }
        }
        @if let Some(r) = &view.remediation {
            @if r.paused.paused {
                section #paused .banner {
                    strong { "Remediation is PAUSED" }
                    " (by " (r.paused.sources.join(" and ")) ")"
                    @if let Some(by) = &r.paused.by { " · by " (by) }
                    @if let Some(since) = &r.paused.since { " · since " (since) }
                    @if let Some(reason) = &r.paused.reason { " · " (reason) }
                    ". Nothing is cancelled, terminated or evicted until it is resumed."
                    @if r.pause_api { " " a href="/ui/resume" { "Resume…" } }
                }
            }
        }
        section #summary .banner .ok[failing == 0 && down == 0] {
            (plural(view.targets.len(), "target")) ": " (view.targets.len() - down) " up, " (down) " down; "
            (plural(failing, "failing check")) "; "
            (plural(view.alerts.len(), "firing alert")) "."
        }
        section #targets {
            @for t in &view.targets { (target(t, runbook)) }
        }
        @if !view.backups.is_empty() {
            section #backups {
                h2 { "Backups" }
                @for b in &view.backups {
                    article .backup id={ "backup-" (b.name) } {
                        h3 {
                            (b.name) " "
                            small { "(" (b.store) ", for " (b.target) ")" } " "
                            @if b.observations_completed == 0 { span .unknown { "NOT LISTED YET" } }
                            @else if b.up { span .up { "LISTED" } } @else { span .down { "CANNOT LIST" } }
                        }
                        p .mute {
                            (b.url) "; last looked " (ago(b.last_observation_at)) "; every " (fmt_secs(b.interval_seconds)) "."
                        }
                        (checks_section("backups", &b.checks, runbook))
                    }
                }
            }
        }
        @if let Some(k) = &view.kubernetes {
            section #kubernetes {
                h2 { "Kubernetes" }
                div .wrap { table {
                    tr .head { th { "Check" } th { "Target" } th { "Detail" } }
                    @for c in &k.checks {
                        @let st = match c.status { KubeCheckStatus::Pass => "pass", KubeCheckStatus::Fail => "fail", KubeCheckStatus::Unknown => "unknown" };
                        tr {
                            td class=(st) { strong { (st.to_uppercase()) } " " (c.check.as_str()) }
                            td data-label="Target" { (c.target) }
                            td data-label="Detail" {
                                (c.message)
                                @if st == "fail" { @if let Some(a) = alert_for("kubernetes", c.check.as_str()) {
                                    " " a href={ (runbook) "#" (a.to_lowercase()) } { "runbook" }
                                } }
                            }
                        }
                    }
                } }
            }
        }
        section #remediation {
            h2 { "Remediation" }
            @match &view.remediation {
                None => p { "Not configured: dbwarden only observes." },
                Some(r) => {
                    p {
                        "Mode " strong { (r.mode.as_str()) } "; "
                        @if r.paused.paused { strong .fail { "paused" } } @else { "running" }
                        "; budget left: " (r.budgets.global) " global"
                        @for (t, n) in &r.budgets.targets { ", " (n) " for " (t) }
                        "."
                    }
                    @if !r.actors.is_empty() {
                        p { "Actor lock: "
                            @for (i, (t, h)) in r.actors.iter().enumerate() {
                                @if i > 0 { ", " }
                                (t) " held by " (h.as_deref().unwrap_or("nobody"))
                            }
                        }
                    }
                    p { "Policies: " (r.policies.iter().chain(&r.neo4j_policies).cloned().collect::<Vec<_>>().join(", ")) }
                    @if r.pause_api && !r.paused.paused {
                        p { a href="/ui/pause" { "Pause remediation…" } }
                    } @else if !r.pause_api {
                        p .mute { "Read-only: no API token is configured, so the page cannot pause (the sentinel file still can)." }
                    }
                }
            }
        }
        section #decisions {
            h2 { "Recent decisions" }
            @if decisions.is_empty() {
                p .mute { "None recorded." }
            } @else {
                div .wrap { table {
                    tr .head { th { "Time" } th { "Target" } th { "Policy" } th { "Action" } th { "Decision" } th { "Outcome" } th { "Reason" } th { "Session" } }
                    @for d in decisions {
                        tr .decision {
                            td data-label="Time" { (d.time) }
                            td data-label="Target" { (d.target) }
                            td data-label="Policy" { (d.policy) }
                            td data-label="Action" { (d.action) }
                            td data-label="Decision" { (d.decision.as_str()) " (" (d.mode.as_str()) ")" }
                            td data-label="Outcome" { (d.outcome) }
                            td data-label="Reason" { (d.reason) }
                            td data-label="Session" {
                                @if let Some(s) = &d.session {
                                    "pid " (s.pid) " " (s.user.as_deref().unwrap_or("?")) "@" (s.database.as_deref().unwrap_or("?"))
                                    " app " code { (s.application_name) }
                                    @if !s.query.is_empty() { br; code .query { (s.query) } }
                                }
                                @if let Some(x) = &d.transaction {
                                    (x.id) " " (x.username) "@" (x.database)
                                    @if !x.query.is_empty() { br; code .query { (x.query) } }
                                }
                                @if let Some(p) = &d.pod { "pod " (p.namespace) "/" (p.name) }
                                @if let Some(i) = &d.index {
                                    "index " (i.database) "." (i.name) " " (i.state)
                                    @if let Some(drop) = &i.drop_statement { br; code .query { (drop) } }
                                    @if let Some(create) = &i.create_statement { br; code .query { (create) } }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section #alerts {
            h2 { "Firing alerts (from Alertmanager)" }
            @if view.alerts.is_empty() {
                p .mute { "None reported." }
            } @else {
                ul { @for a in &view.alerts {
                    li { strong { (a.alertname) } " on " (a.target)
                        @if let Some(s) = a.starts_at { " since " (humantime::format_rfc3339_seconds(s)) }
                        " " a href={ (runbook) "#" (a.alertname.to_lowercase()) } { "runbook" }
                    }
                } }
            }
        }
        section #reload {
            h2 { "Configuration" }
            @match &view.reload {
                None => p .mute { "Not reloaded since start." },
                Some(r) => p {
                    "Last reload " (r.at) " by " (r.by) ": "
                    @if r.successful { span .pass { "applied" } } @else { span .fail { "refused, the running configuration is kept" } }
                    ul { @for m in &r.messages { li { (m) } } }
                },
            }
        }
    }
}

fn target(t: &TargetStatus, runbook: &str) -> Markup {
    html! {
        article .target id={ "target-" (t.target) } {
            h2 {
                (t.target) " "
                small { "(" (t.kind) ")" } " "
                @if t.polls_completed == 0 { span .unknown { "NOT POLLED YET" } }
                @else if t.up { span .up { "UP" } } @else { span .down { "DOWN" } }
            }
            p .mute {
                "Last poll " (ago(t.last_poll_at))
                @if let Some(d) = t.last_poll_duration_seconds { " (took " (fmt_secs(d)) ")" }
                "; every " (fmt_secs(t.poll_interval_seconds)) "."
                @if let Some(e) = &t.last_error { " Error (" (e.kind.as_str()) "): " (e.message) }
            }
            @if let Some(s) = &t.summary {
                p { "Connections: " (s.connections_used) " used of " (s.connections_usable) " usable; "
                    (s.lock_waiters) " waiting on locks." }
            }
            (checks_section(t.kind, &t.checks, runbook))
            (probe_table(&t.probes, runbook))
        }
    }
}

/// The alerts that fire for a probe's checks: its run (`probe:<probe>`),
/// and the checks of its `checks` table (`probe:<probe>:<column>`).
pub const PROBE_ALERTS: [(&str, &str); 2] = [
    ("probe:<probe>", "DbWardenProbeFailing"),
    ("probe:<probe>:<column>", "DbWardenProbeCheckFailing"),
];

fn probe_alert(check: &str) -> &'static str {
    if check.matches(':').count() == 1 {
        PROBE_ALERTS[0].1
    } else {
        PROBE_ALERTS[1].1
    }
}

/// The user's probes' checks, failing first, a failing one linked to its
/// alert's runbook section.
fn probe_table(probes: &[crate::evaluate::probes::ProbeStatus], runbook: &str) -> Markup {
    let rank = |s: CheckStatus| match s {
        CheckStatus::Fail => 0,
        CheckStatus::Pending => 1,
        CheckStatus::Unknown => 2,
        CheckStatus::Pass => 3,
    };
    let mut checks: Vec<_> = probes.iter().flat_map(|p| &p.checks).collect();
    checks.sort_by_key(|c| rank(c.status));
    html! {
        @if !checks.is_empty() {
            div .wrap { table {
                tr .head { th { "Probe check" } th { "Measured" } th { "Threshold" } th { "Held" } th { "Detail" } }
                @for c in &checks {
                    tr .check data-check=(c.check) {
                        td class=(status_class(c.status)) { strong { (c.status.as_str().to_uppercase()) } " " (c.check) }
                        td data-label="Measured" { @match c.value { Some(v) => (v), None => "—" } }
                        td data-label="Threshold" { (c.threshold) }
                        td data-label="Held" {
                            @if c.held_seconds > 0.0 { (fmt_secs(c.held_seconds)) } @else { "—" }
                            @if c.for_seconds > 0.0 { " / " (fmt_secs(c.for_seconds)) }
                        }
                        td data-label="Detail" {
                            (c.detail)
                            @if c.status == CheckStatus::Fail {
                                @let a = probe_alert(&c.check);
                                " " a href={ (runbook) "#" (a.to_lowercase()) } { "runbook: " (a) }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// The checks that need attention, worst first, then the passing ones
/// folded (open when nothing needs attention).
fn checks_section(kind: &str, checks: &[CheckResult], runbook: &str) -> Markup {
    let (passing, attention): (Vec<&CheckResult>, Vec<&CheckResult>) = worst_first(checks)
        .into_iter()
        .partition(|c| c.status == CheckStatus::Pass);
    html! {
        @if !attention.is_empty() { (check_table(kind, &attention, runbook)) }
        @if !passing.is_empty() {
            details open[attention.is_empty()] {
                summary { (plural(passing.len(), "check")) " pass" }
                (check_table(kind, &passing, runbook))
            }
        }
    }
}

fn check_table(kind: &str, checks: &[&CheckResult], runbook: &str) -> Markup {
    html! {
        div .wrap { table {
            tr .head { th { "Check" } th { "Measured" } th { "Threshold" } th { "Held" } th { "Detail" } }
            @for c in checks { (check_row(kind, c, runbook)) }
        } }
    }
}

/// Failing checks first, then pending, unknown, passing; in their own
/// order within each.
fn worst_first(checks: &[CheckResult]) -> Vec<&CheckResult> {
    let rank = |s: CheckStatus| match s {
        CheckStatus::Fail => 0,
        CheckStatus::Pending => 1,
        CheckStatus::Unknown => 2,
        CheckStatus::Pass => 3,
    };
    let mut v: Vec<&CheckResult> = checks.iter().collect();
    v.sort_by_key(|c| rank(c.status));
    v
}

fn check_row(kind: &str, c: &CheckResult, runbook: &str) -> Markup {
    let name = c.check.as_str();
    html! {
        tr .check data-check=(name) {
            td class=(status_class(c.status)) { strong { (c.status.as_str().to_uppercase()) } " " (name) }
            td data-label="Measured" { @match c.value { Some(v) => (shown(name, v, c.threshold)), None => "—" } }
            td data-label="Threshold" { (shown(name, c.threshold, c.value.unwrap_or(c.threshold))) }
            td data-label="Held" {
                @if c.held_seconds > 0.0 { (fmt_secs(c.held_seconds)) } @else { "—" }
                @if c.for_seconds > 0.0 { " / " (fmt_secs(c.for_seconds)) }
            }
            td data-label="Detail" {
                (c.detail)
                @if c.status == CheckStatus::Fail { @if let Some(a) = alert_for(kind, name) {
                    " " a href={ (runbook) "#" (a.to_lowercase()) } { "runbook: " (a) }
                } }
            }
        }
    }
}

/// The pause and resume forms' fields.
#[derive(Debug, Deserialize)]
pub(super) struct SwitchForm {
    token: String,
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn pause_form(State(app): State<AppState>) -> Response {
    switch_page(&app, true, None, StatusCode::OK)
}

pub(super) async fn resume_form(State(app): State<AppState>) -> Response {
    switch_page(&app, false, None, StatusCode::OK)
}

/// The confirmation: what the switch does, and the form that asks for the token.
fn switch_page(app: &AppState, pause: bool, problem: Option<&str>, code: StatusCode) -> Response {
    let Some(rem) = &app.remediation else {
        let mut r = page(
            "dbwarden: remediation",
            html! { p { "Remediation is not configured: there is nothing to pause." } a href="/" { "Back" } },
        );
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let enabled = rem.settings().api_token.is_some();
    let (title, action) = if pause {
        ("Pause remediation", "/ui/pause")
    } else {
        ("Resume remediation", "/ui/resume")
    };
    let mut r = page(
        &format!("dbwarden: {title}"),
        html! {
            h1 { (title) }
            @if pause {
                p { "Pausing stops every action dbwarden would take on every target: no session is cancelled or terminated, no Neo4j transaction killed, no pod evicted, until someone resumes. Observation, checks, metrics and alerts go on. The pause is kept on disk and survives a restart; the decisions skipped while paused are not made up later." }
            } @else {
                p { "Resuming lets every policy act again from its next cycle, within its budgets, in the configured mode." }
            }
            @if let Some(p) = problem { p #problem .banner { (p) } }
            @if enabled {
                form method="post" action=(action) {
                    label { "API token (remediation.api_token_file or api_token_env)" br;
                        input type="password" name="token" autocomplete="current-password" required; }
                    label { "Your name" br; input type="text" name="by" maxlength="200"; }
                    @if pause { label { "Reason" br; input type="text" name="reason" maxlength="500"; } }
                    button type="submit" { (title) }
                }
            } @else {
                p { "Read-only: no API token is configured (remediation.api_token_file or api_token_env). The sentinel file pauses too." }
            }
            p { a href="/" { "Back to the status page" } }
        },
    );
    *r.status_mut() = code;
    r
}

pub(super) async fn pause(State(app): State<AppState>, form: Form<SwitchForm>) -> Response {
    switch(app, form.0, true)
}

pub(super) async fn resume(State(app): State<AppState>, form: Form<SwitchForm>) -> Response {
    switch(app, form.0, false)
}

fn switch(app: AppState, form: SwitchForm, pause: bool) -> Response {
    let Some(rem) = app.remediation.clone() else {
        return switch_page(&app, pause, None, StatusCode::NOT_FOUND);
    };
    let Some(token) = rem.settings().api_token.clone() else {
        return switch_page(&app, pause, None, StatusCode::FORBIDDEN);
    };
    if !auth::token_ok(form.token.trim(), &token) {
        return switch_page(
            &app,
            pause,
            Some("Wrong token: nothing was changed."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let nonempty = |s: String| {
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    let by = nonempty(form.by).or_else(|| Some("status page".into()));
    match super::api::set_paused(
        &app,
        &rem,
        pause,
        by,
        nonempty(form.reason),
        "the status page",
    ) {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => switch_page(
            &app,
            pause,
            Some(&format!("Cannot persist the pause state: {e}")),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    }
}
