//! The Neo4j index rebuild as a kind of remediation target: a FAILED index
//! chosen by [`neo4j_index_policy::select`] is re-read by name, dropped and
//! created again from the `createStatement` the server reported, then
//! followed, poll after poll, until it is ONLINE. It runs on the same loop
//! as every other action ([`super::runner`]), so mode, pause switch,
//! budgets, pacing and the write-ahead audit (the intent, with the exact
//! DROP and CREATE statements, `fsync`ed before the DROP) are the same.
//!
//! The loop keeps, from cycle to cycle, since when each index has been
//! seen FAILED (`failed_for` is counted from the first poll that saw it)
//! and the one rebuild in progress: while an index is being rebuilt (or any
//! index populates) no other is touched.
//!
//! The re-check: right before the DROP the actor reads the index again by
//! name (`SHOW INDEXES ... WHERE name = $name`, on the index's database)
//! and drops it only if it is still FAILED, with the same definition and
//! the same owning constraint (or none). Between the DROP and the CREATE the
//! index does not exist: if the CREATE fails, the outcome record says so and
//! carries the statement to run by hand, and the rebuild stays "in
//! progress" (its gauge, and so the alert) until the index is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::RemediationSettings;
use super::audit::{AuditRecord, Decision};
use super::executor::{Holder, Signal};
use super::neo4j::ActorClient;
use super::neo4j_index_policy::{
    self as policy, IndexCandidate, IndexKey, IndexRebuildSettings, POLICY, Progress, Statements,
};
use super::policy::Gates;
use super::runner::{Context, Event, Kind, Selection};
use super::shared::Remediation;
use crate::observe::PollError;
use crate::observe::neo4j::{
    Generation, Neo4jClient, Neo4jIndex, Neo4jSnapshot, Neo4jTarget, classify, index, statements,
};

/// What became of one rebuild.
#[derive(Debug, Clone, PartialEq)]
pub enum RebuildOutcome {
    /// Dropped and created again: now populating.
    Rebuilt,
    /// The re-check found it changed (or gone): nothing sent.
    Changed(String),
    /// The server refused the DROP (a missing privilege): nothing changed.
    Refused(String),
    /// The DROP failed: nothing changed.
    Failed(String),
    /// Dropped, but the CREATE failed or went unanswered: the index may be
    /// gone.
    NotCreated(String),
}

impl RebuildOutcome {
    pub fn sentence(&self, s: &Statements) -> String {
        match self {
            RebuildOutcome::Rebuilt => {
                "dropped and created again; followed until ONLINE".to_string()
            }
            RebuildOutcome::Changed(why) => format!("not rebuilt: {why}"),
            RebuildOutcome::Refused(why) => format!("refused by the server: {why}"),
            RebuildOutcome::Failed(why) => format!("failed, nothing changed: {why}"),
            RebuildOutcome::NotCreated(why) => format!(
                "dropped, but not created again: {why}; run by hand: {}",
                s.create
            ),
        }
    }

    fn decision(&self) -> Decision {
        match self {
            RebuildOutcome::Rebuilt => Decision::Acted,
            RebuildOutcome::Changed(_) => Decision::Skipped,
            RebuildOutcome::Refused(_) => Decision::Refused,
            RebuildOutcome::Failed(_) | RebuildOutcome::NotCreated(_) => Decision::Failed,
        }
    }

    /// Whether the DROP went through (the index must be followed).
    pub fn dropped(&self) -> bool {
        matches!(
            self,
            RebuildOutcome::Rebuilt | RebuildOutcome::NotCreated(_)
        )
    }
}

fn refused_or_failed(e: PollError) -> RebuildOutcome {
    if e.kind == crate::observe::PollErrorKind::Auth || e.message.contains("Forbidden") {
        RebuildOutcome::Refused(e.message)
    } else {
        RebuildOutcome::Failed(e.message)
    }
}

/// Reads the index again by name on its database (4.4+).
pub async fn reread(
    client: &Neo4jClient,
    generation: Generation,
    database: &str,
    name: &str,
) -> Result<Option<Neo4jIndex>, PollError> {
    let text = match generation {
        Generation::Show5 => statements::SHOW_INDEX_5,
        _ => statements::SHOW_INDEX,
    };
    let rows = client
        .rows(Some(database), client.query(text).param("name", name))
        .await
        .map_err(classify)?;
    rows.first().map(|r| index(database, r)).transpose()
}

/// The re-check, the DROP and the CREATE. `dropped` is set as soon as the
/// DROP has been answered, so that a caller whose bound cut this short
/// knows whether the index was already dropped.
pub async fn rebuild(
    client: &Neo4jClient,
    generation: Generation,
    c: &IndexCandidate,
    s: &Statements,
    settings: &IndexRebuildSettings,
    dropped: &mut bool,
) -> RebuildOutcome {
    if generation == Generation::Procedures {
        return RebuildOutcome::Refused(
            "Neo4j before 4.4 does not report how to create the index again".into(),
        );
    }
    let db = c.index.database.as_str();
    let now = match reread(client, generation, db, &c.index.name).await {
        Ok(now) => now,
        Err(e) => return refused_or_failed(e),
    };
    if let Some(why) = policy::recheck(&c.index, now.as_ref(), settings) {
        return RebuildOutcome::Changed(why);
    }
    if let Err(e) = client.rows(Some(db), client.query(&s.drop)).await {
        return refused_or_failed(classify(e));
    }
    *dropped = true;
    match client.rows(Some(db), client.query(&s.create)).await {
        Ok(_) => RebuildOutcome::Rebuilt,
        Err(e) => RebuildOutcome::NotCreated(classify(e).message),
    }
}

/// The rebuild in progress on a target.
#[derive(Debug, Clone)]
struct Rebuilding {
    key: IndexKey,
    /// Seconds since the epoch, the snapshots' clock.
    started_at: f64,
    /// The latest progress logged, so that each change is logged once.
    last: Option<Progress>,
}

/// One Neo4j target's index rebuild: the target, the actor's client (opened
/// at the first action, rebuilt after a failure) and what the loop carries
/// from cycle to cycle.
pub struct Neo4jIndexRebuild {
    target: Neo4jTarget,
    rem: Arc<Remediation>,
    /// Shared with the target's transaction loop: one actor connection.
    client: ActorClient,
    /// Bound on the re-check, DROP and CREATE together, on our side.
    limit: Duration,
    failed_since: BTreeMap<IndexKey, f64>,
    rebuilding: Option<Rebuilding>,
}

impl Neo4jIndexRebuild {
    pub fn new(target: Neo4jTarget, rem: Arc<Remediation>, client: ActorClient) -> Self {
        let limit = target.settings.poll_timeout();
        Neo4jIndexRebuild {
            target,
            rem,
            client,
            limit,
            failed_since: BTreeMap::new(),
            rebuilding: None,
        }
    }

    fn client(&mut self) -> Result<Neo4jClient, PollError> {
        self.client.get(&self.target)
    }

    /// Follows the rebuild in progress in a new snapshot; forgets it once
    /// the index is ONLINE or FAILED again.
    fn follow(&mut self, snapshot: &Neo4jSnapshot) {
        let Some(r) = &mut self.rebuilding else {
            return;
        };
        let p = policy::progress(&r.key, r.started_at, snapshot);
        let (db, name) = (&r.key.0, &r.key.1);
        let took = (snapshot.observed_at - r.started_at).max(0.0);
        let changed =
            r.last.as_ref().map(std::mem::discriminant) != Some(std::mem::discriminant(&p));
        match p {
            Progress::Stale => return,
            Progress::Populating(pct) => {
                tracing::debug!(database = %db, index = %name, percent = pct, "rebuilt index populating");
            }
            Progress::Missing if changed => {
                tracing::warn!(database = %db, index = %name, "rebuilt index is not listed: it was dropped and not created again");
            }
            Progress::Missing => {}
            Progress::Online => {
                tracing::info!(database = %db, index = %name, seconds = took, "rebuilt index is ONLINE");
            }
            Progress::Failed => {
                tracing::warn!(database = %db, index = %name, seconds = took, "rebuilt index FAILED again: it will be rebuilt again after failed_for, within the budgets");
            }
        }
        r.last = Some(p);
        if matches!(p, Progress::Online | Progress::Failed) {
            self.rebuilding = None;
        }
    }
}

impl Kind for Neo4jIndexRebuild {
    type Snapshot = Neo4jSnapshot;
    type Policy = IndexRebuildSettings;
    type Candidate = IndexCandidate;
    /// An index's database and name.
    type Key = IndexKey;

    fn target(&self) -> &str {
        &self.target.name
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("remediation", target = %self.target.name, kind = "neo4j_index")
    }

    fn policies(&self, settings: &RemediationSettings) -> Vec<IndexRebuildSettings> {
        settings
            .neo4j_index_rebuild
            .iter()
            .filter(|r| r.applies_to(&self.target.name))
            .cloned()
            .collect()
    }

    fn series(_: &IndexRebuildSettings) -> (&str, &'static [Signal]) {
        (POLICY, &[Signal::Rebuild])
    }

    fn select(
        &mut self,
        policies: &[IndexRebuildSettings],
        snapshot: &Neo4jSnapshot,
        _: Gates<'_>,
    ) -> Selection<IndexCandidate> {
        self.follow(snapshot);
        let Some(settings) = policies.first() else {
            return Selection::of(Vec::new(), Vec::new());
        };
        self.rem.recorder().set_index_rebuild(
            &self.target.name,
            self.rebuilding.as_ref().map(|r| r.started_at),
        );
        let rebuilding = self.rebuilding.as_ref().map(|r| r.key.clone());
        self.failed_since = policy::track(&self.failed_since, snapshot, rebuilding.as_ref());
        let s = policy::select(settings, snapshot, &self.failed_since, rebuilding.as_ref());
        for (held, n) in s.held_counts() {
            self.rem
                .recorder()
                .set_index_rebuild_held(&self.target.name, held.as_str(), n);
        }
        Selection {
            candidates: vec![(POLICY.to_string(), s.eligible.len())],
            chosen: s.eligible,
            // One index per target at a time.
            limit: Some(1),
            refused: s.refused,
            crossings: Vec::new(),
        }
    }

    fn key(c: &IndexCandidate) -> IndexKey {
        policy::key_of(&c.index)
    }

    /// Still FAILED under that name: once seen in any other state, a
    /// later failure is a new decision.
    fn exists(snapshot: &Neo4jSnapshot, key: &IndexKey) -> bool {
        snapshot
            .indexes
            .iter()
            .any(|i| &policy::key_of(i) == key && policy::is_failed(i))
    }

    fn policy(_: &IndexCandidate) -> &str {
        POLICY
    }

    fn subject(c: &IndexCandidate) -> String {
        format!("index:{}.{}", c.index.database, c.index.name)
    }

    fn first_signal(_: &IndexCandidate) -> Signal {
        Signal::Rebuild
    }

    fn record(
        cx: &Context<'_, Self>,
        id: &str,
        c: &IndexCandidate,
        _: Signal,
        decision: Decision,
        outcome: String,
    ) -> AuditRecord {
        let s = cx.settings;
        AuditRecord::for_index(
            SystemTime::now(),
            id,
            s.instance(),
            cx.target,
            s.mode,
            decision,
            c,
            outcome,
        )
    }

    fn log(c: &IndexCandidate, _: Signal, event: Event<'_>) {
        let (db, name, reason) = (&c.index.database, &c.index.name, &c.reason);
        let (drop, create) = c
            .statements
            .as_ref()
            .map_or(("", ""), |s| (s.drop.as_str(), s.create.as_str()));
        match event {
            Event::Settled => {}
            Event::WouldAct => {
                tracing::info!(database = %db, index = %name, reason = %reason, drop, create, "dry-run: would rebuild a FAILED index")
            }
            Event::Acted => {
                tracing::warn!(database = %db, index = %name, reason = %reason, drop, create, "rebuilt a FAILED index")
            }
            Event::NotActed(outcome) => {
                tracing::warn!(database = %db, index = %name, outcome = %outcome, "did not rebuild a FAILED index")
            }
        }
    }

    /// Neo4j has no actor lock (see `remediate::neo4j`): run the rebuild in
    /// one replica. A second replica's re-check finds the index POPULATING
    /// and skips it.
    async fn contend(&mut self, _: &Context<'_, Self>) -> Holder {
        Holder::Us
    }

    async fn act(
        &mut self,
        cx: &Context<'_, Self>,
        c: &IndexCandidate,
        _: Signal,
    ) -> (Decision, String) {
        let Some(s) = c.statements.clone() else {
            return (
                Decision::Refused,
                "refused: no statements to rebuild it with".into(),
            );
        };
        let settings = cx.policies.first().cloned().unwrap_or_default();
        let started_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut dropped = false;
        let outcome = match self.client() {
            Ok(client) => {
                let run = rebuild(
                    &client,
                    cx.snapshot.generation,
                    c,
                    &s,
                    &settings,
                    &mut dropped,
                );
                match tokio::time::timeout(self.limit, run).await {
                    Ok(o) => o,
                    Err(_) if dropped => RebuildOutcome::NotCreated(format!(
                        "no answer to the CREATE within {}: it may or may not have run",
                        humantime::format_duration(self.limit)
                    )),
                    Err(_) => RebuildOutcome::Failed(format!(
                        "no answer within {}: the DROP may or may not have run",
                        humantime::format_duration(self.limit)
                    )),
                }
            }
            Err(e) => RebuildOutcome::Failed(e.message),
        };
        if matches!(
            outcome,
            RebuildOutcome::Failed(_) | RebuildOutcome::NotCreated(_)
        ) {
            self.client.reset();
        }
        if outcome.dropped() {
            let key = policy::key_of(&c.index);
            self.rem
                .recorder()
                .set_index_rebuild(cx.target, Some(started_at));
            self.failed_since.remove(&key);
            self.rebuilding = Some(Rebuilding {
                key,
                started_at,
                last: None,
            });
        }
        (outcome.decision(), outcome.sentence(&s))
    }

    async fn close(self) {}
}
