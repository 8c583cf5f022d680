//! The remediation loop of one target, for every kind of target: after each
//! poll, select (pure), then act within the bounds: mode, pause switch,
//! actor lock, budgets, pacing, and the write-ahead audit, in batches of
//! `batch_size` (one `fsync` for a batch's intents, one act for the batch).
//!
//! What differs between PostgreSQL and Neo4j sits behind [`Kind`] (as
//! `daemon::poller::Observer` does for polling): the selection, the
//! statement that acts, the key of a candidate, the audit record and the
//! log lines. Everything that bounds an action is written once, here.
//!
//! The loop reads no shared state: the daemon sends it a [`Cycle`] after
//! each poll of its target, and it reads the settings from [`Remediation`]
//! at the start of every cycle, so a reconfiguration applies from the next.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::RemediationSettings;
use super::audit::{AuditRecord, Decision, Mode};
use super::batch::Batches;
use super::executor::{Holder, Signal};
use super::policy::Gates;
use super::shared::{Remediation, now_ms};
use crate::evaluate::CheckName;

/// How long after a poll a candidate must wait at most; exported for docs and tests.
pub const MAX_REACTION_AFTER_POLL: Duration = Duration::from_millis(250);

/// What one cycle decides on: the latest successful poll of the target and
/// what its policies' gates read.
#[derive(Debug)]
pub struct Cycle<S> {
    pub snapshot: Arc<S>,
    /// The checks failing in that poll (the pressure gate).
    pub failing: Vec<CheckName>,
    /// The alerts Alertmanager reports firing for the target (the alert gate).
    pub firing: Vec<String>,
    /// The target's poll interval, which bounds the polls brought forward
    /// ([`Selection::crossings`]).
    pub poll_interval: Duration,
}

impl<S> Clone for Cycle<S> {
    fn clone(&self) -> Self {
        Cycle {
            snapshot: self.snapshot.clone(),
            failing: self.failing.clone(),
            firing: self.firing.clone(),
            poll_interval: self.poll_interval,
        }
    }
}

/// The cycles of one target, newest only. `None`: the latest poll failed,
/// so there is nothing to decide on (the pause switch is still read).
pub type Cycles<S> = watch::Receiver<Option<Cycle<S>>>;

/// What the policies chose in one snapshot.
#[derive(Debug)]
pub struct Selection<C> {
    /// Candidates per policy, for the candidates gauge.
    pub candidates: Vec<(String, usize)>,
    /// What to act on, in order, each at most once.
    pub chosen: Vec<C>,
    /// Act on at most this many of `chosen` in this cycle (those already
    /// settled left out first); `None`: as many as the budgets allow.
    pub limit: Option<usize>,
    /// Candidates refused outright, with the sentence why: never acted
    /// on, but recorded once (audit, log, the `refused` outcome) in
    /// dry-run and enforce mode, paused or not.
    pub refused: Vec<(C, String)>,
    /// How long after the snapshot each candidate-to-be crosses the last
    /// of its policy's durations, if it stays as it is, soonest first.
    /// When that falls before the next poll, the runner wakes the poller
    /// then ([`wake_after`]), so that a session is acted on when it
    /// crosses, not up to an interval later.
    pub crossings: Vec<Duration>,
}

impl<C> Selection<C> {
    /// What the policies chose, with no limit and nothing refused.
    pub fn of(candidates: Vec<(String, usize)>, chosen: Vec<C>) -> Self {
        Selection {
            candidates,
            chosen,
            limit: None,
            refused: Vec::new(),
            crossings: Vec::new(),
        }
    }
}

/// The settings and the state one cycle decides under, passed to each step.
pub struct Context<'a, K: Kind> {
    pub rem: &'a Remediation,
    /// Taken once at the start of the cycle.
    pub settings: &'a RemediationSettings,
    pub target: &'a str,
    pub snapshot: &'a K::Snapshot,
    /// The policies that apply to the target, in file order.
    pub policies: &'a [K::Policy],
}

/// A log line about one candidate; each kind words its own.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Already decided on (reported in dry-run, refused by the server): not again.
    Settled,
    /// Dry-run: this would have been sent.
    WouldAct,
    /// Sent.
    Acted,
    /// Not sent; the sentence says why.
    NotActed(&'a str),
}

/// What the loop needs of a kind of target: only what differs between
/// PostgreSQL and Neo4j. None of it decides whether to act.
pub trait Kind: Sized + Send + 'static {
    type Snapshot: Send + Sync + 'static;
    type Policy: Send + Sync + 'static;
    type Candidate: Clone + Send + Sync + 'static;
    /// A candidate's identity for the settled set: when it changes (a new
    /// query, a new transaction), it is a new decision.
    type Key: Eq + Hash + Send + Sync + 'static;

    fn target(&self) -> &str;
    /// The span every line of the loop is logged in.
    fn span(&self) -> tracing::Span;
    /// The policies in `settings` that apply to this target, in file order.
    fn policies(&self, settings: &RemediationSettings) -> Vec<Self::Policy>;
    /// A policy's name and the signals it may send (one decision series each).
    fn series(policy: &Self::Policy) -> (&str, &'static [Signal]);
    /// `&mut`: a kind may carry what it saw from cycle to cycle (the Neo4j
    /// index rebuild remembers since when an index is FAILED).
    fn select(
        &mut self,
        policies: &[Self::Policy],
        snapshot: &Self::Snapshot,
        gates: Gates<'_>,
    ) -> Selection<Self::Candidate>;
    fn key(c: &Self::Candidate) -> Self::Key;
    /// Whether what `key` names is still in the snapshot.
    fn exists(snapshot: &Self::Snapshot, key: &Self::Key) -> bool;
    fn policy(c: &Self::Candidate) -> &str;
    /// What the candidate is called in action ids (a pid, a transaction id).
    fn subject(c: &Self::Candidate) -> String;
    /// The signal an action starts with.
    fn first_signal(c: &Self::Candidate) -> Signal;
    /// After a first signal that was sent, a terminate due after this long
    /// (`cancel_then_terminate`).
    fn follow_up(_c: &Self::Candidate) -> Option<Duration> {
        None
    }
    /// The audit record of a decision about `c`.
    fn record(
        cx: &Context<'_, Self>,
        id: &str,
        c: &Self::Candidate,
        signal: Signal,
        decision: Decision,
        outcome: String,
    ) -> AuditRecord;
    fn log(c: &Self::Candidate, signal: Signal, event: Event<'_>);
    /// Who may act on the target: asked on every cycle that is not paused,
    /// candidates or not, so every replica knows the holder beforehand.
    fn contend(&mut self, cx: &Context<'_, Self>) -> impl Future<Output = Holder> + Send;
    /// Sends `signal` if the candidate still qualifies, and says what
    /// became of it: `Acted`, `Skipped`, `Refused` or `Failed` (also the
    /// metric outcome), with the sentence the audit and the log record.
    /// Called only once the intent is on disk.
    fn act(
        &mut self,
        cx: &Context<'_, Self>,
        c: &Self::Candidate,
        signal: Signal,
    ) -> impl Future<Output = (Decision, String)> + Send;
    /// [`Kind::act`] for every candidate of a batch, whose intents are all
    /// on disk: one answer per candidate, in the batch's order. By default
    /// one after another; a kind that can re-check and signal many in one
    /// statement (PostgreSQL) does so.
    fn act_batch(
        &mut self,
        cx: &Context<'_, Self>,
        batch: &[(&Self::Candidate, Signal)],
    ) -> impl Future<Output = Vec<(Decision, String)>> + Send {
        async move {
            let mut answers = Vec::with_capacity(batch.len());
            for &(c, signal) in batch {
                answers.push(self.act(cx, c, signal).await);
            }
            answers
        }
    }
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Waits until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The metric outcomes a decision can have in `mode`, so every series
/// exists from the start at 0 and `increase()` sees the first one.
fn outcomes(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Observe => &[],
        Mode::DryRun => &["would_act", "audit_failed", "budget_exhausted"],
        Mode::Enforce => &[
            "acted",
            "skipped",
            "refused",
            "failed",
            "audit_failed",
            "budget_exhausted",
        ],
    }
}

/// Runs one target's loop until `cancel` or until the cycles stop coming.
/// `poll_now` wakes the target's poller ([`Selection::crossings`]).
pub async fn run<K: Kind>(
    rem: Arc<Remediation>,
    kind: K,
    cycles: Cycles<K::Snapshot>,
    poll_now: Option<Arc<Notify>>,
    cancel: CancellationToken,
) {
    let span = kind.span();
    Runner::new(rem, kind, poll_now, cancel)
        .run(cycles)
        .instrument(span)
        .await
}

/// How long after a predicted crossing the poll brought forward starts, so
/// that the session has crossed by the server's clock too.
const CROSSING_MARGIN: Duration = Duration::from_millis(10);

/// When to poll for `crossings` (soonest first, after the cycle): at the
/// last of those within a tenth of `interval` of the first, so that
/// sessions crossing together (a burst) are taken by one poll.
fn wake_after(crossings: &[Duration], interval: Duration) -> Option<Duration> {
    let first = *crossings.first()?;
    crossings
        .iter()
        .take_while(|&&c| c <= first + interval / 10)
        .last()
        .copied()
}

/// One target's loop and what it carries from cycle to cycle.
struct Runner<K: Kind> {
    rem: Arc<Remediation>,
    kind: K,
    target: String,
    cancel: CancellationToken,
    settings: Arc<RemediationSettings>,
    policies: Arc<[K::Policy]>,
    /// Decision series created so far: (policy, signal, mode).
    series: HashSet<(String, Signal, Mode)>,
    /// Candidates not to decide on again while they exist: in dry-run,
    /// those already reported (enforce would have acted once); in enforce,
    /// those the server refused (retrying would only burn the budget), and
    /// those terminated (a poll taken before the signal, or while the
    /// backend exits, still lists them; a second terminate does nothing).
    settled: HashSet<K::Key>,
    was_paused: bool,
    /// A budget was exhausted at the last spend (logged once per exhaustion).
    exhausted: bool,
    /// Wakes the target's poller.
    poll_now: Option<Arc<Notify>>,
    /// When to wake it: a candidate-to-be crosses its durations then.
    wake_at: Option<Instant>,
    /// When it was last woken: at most once per quarter of the poll interval.
    woken_at: Option<Instant>,
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decided {
    /// Dry-run: reported (or its report failed); nothing sent.
    Reported,
    /// Enforce: the intent could not be written, so nothing was sent.
    Unaudited,
    /// Enforce: the kind acted or decided not to (acted, skipped, refused, failed).
    Done(Decision),
}

impl<K: Kind> Runner<K> {
    fn new(
        rem: Arc<Remediation>,
        kind: K,
        poll_now: Option<Arc<Notify>>,
        cancel: CancellationToken,
    ) -> Self {
        let settings = rem.settings();
        let mut runner = Runner {
            target: kind.target().to_string(),
            policies: kind.policies(&settings).into(),
            settings,
            rem,
            kind,
            cancel,
            series: HashSet::new(),
            settled: HashSet::new(),
            was_paused: false,
            exhausted: false,
            poll_now,
            wake_at: None,
            woken_at: None,
        };
        runner.init_series();
        runner
    }

    async fn run(mut self, mut cycles: Cycles<K::Snapshot>) {
        self.rem.publish_budgets(&self.target);
        if self.poll_now.is_some() {
            self.rem.recorder().polls_brought_forward(&self.target, 0);
        }
        loop {
            let wake_at = self.wake_at;
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = cycles.changed() => if changed.is_err() { break },
                _ = sleep_until_some(wake_at) => {
                    self.wake();
                    continue;
                }
            }
            // Cloned out: the channel's lock must not be held across awaits.
            let cycle = cycles.borrow_and_update().clone();
            self.cycle(cycle).await;
        }
        self.kind.close().await;
    }

    /// Takes the settings in force; when they changed, the policies that
    /// apply now and their decision series.
    fn refresh(&mut self) {
        let settings = self.rem.settings();
        if Arc::ptr_eq(&settings, &self.settings) {
            return;
        }
        if settings.mode != self.settings.mode {
            // What was settled in one mode means nothing in another: a
            // session reported in dry-run is acted on once enforced.
            self.settled.clear();
        }
        self.policies = self.kind.policies(&settings).into();
        self.settings = settings;
        self.init_series();
    }

    /// Creates at 0 the decision series of policies and modes not seen yet.
    fn init_series(&mut self) {
        let mode = self.settings.mode;
        for p in self.policies.iter() {
            let (policy, signals) = K::series(p);
            for &s in signals {
                if !self.series.insert((policy.to_string(), s, mode)) {
                    continue;
                }
                for o in outcomes(mode) {
                    let (t, a, m) = (&self.target, s.as_str(), mode.as_str());
                    self.rem.recorder().init_action(t, policy, a, o, m);
                }
            }
        }
    }

    async fn cycle(&mut self, cycle: Option<Cycle<K::Snapshot>>) {
        let received = Instant::now();
        // A wake armed by an earlier cycle is this cycle's to arm again.
        self.wake_at = None;
        self.refresh();
        let paused = self.rem.pause.is_paused();
        self.rem.recorder().set_paused(paused);
        let Some(cycle) = cycle else {
            return;
        };
        let selection = self.select(&cycle);
        if self.settings.mode == Mode::Observe {
            return;
        }
        // Owned by this call, so the steps below may borrow the runner mutably.
        let (rem, settings, policies, target) = (
            self.rem.clone(),
            self.settings.clone(),
            self.policies.clone(),
            self.target.clone(),
        );
        let cx = Context {
            rem: &rem,
            settings: &settings,
            target: &target,
            snapshot: &*cycle.snapshot,
            policies: &policies,
        };
        // Refusals are reports, not actions: recorded paused or not.
        self.refuse(&cx, &selection.refused).await;
        // Contend on every cycle, candidates or not: every replica then
        // knows and exports the holder before anything needs doing, and
        // another replica takes over on its first cycle after the holder's
        // connection is gone, not only once it sees a candidate.
        let holder = if paused {
            None
        } else {
            Some(self.kind.contend(&cx).await)
        };
        if holder == Some(Holder::Us) && settings.poll_at_crossing {
            self.arm_wake(received, &selection.crossings, cycle.poll_interval);
        }
        let chosen = &selection.chosen;
        if chosen.is_empty() || self.held_back(paused, holder, chosen.len()) {
            return;
        }
        self.act_on(&cx, chosen, selection.limit).await;
        self.rem.publish_budgets(&self.target);
    }

    /// Brings the next poll forward to predicted crossings (after the cycle
    /// was `received`; [`wake_after`]) when that comes before the next
    /// poll: no sooner than a quarter of `interval` after the last poll
    /// brought forward, and only while this instance may act (the caller's).
    fn arm_wake(&mut self, received: Instant, crossings: &[Duration], interval: Duration) {
        let Some(after) = wake_after(crossings, interval) else {
            return;
        };
        let mut at = received + after + CROSSING_MARGIN;
        if let Some(last) = self.woken_at {
            at = at.max(last + interval / 4);
        }
        if self.poll_now.is_some() && at < received + interval {
            self.wake_at = Some(at);
        }
    }

    /// The armed wake is due: poll now.
    fn wake(&mut self) {
        self.wake_at = None;
        self.woken_at = Some(Instant::now());
        if let Some(poll_now) = &self.poll_now {
            tracing::debug!("a session crosses its policy's durations: polling now");
            poll_now.notify_one();
            self.rem.recorder().polls_brought_forward(&self.target, 1);
        }
    }

    /// The candidates chosen in this cycle's snapshot; exports each
    /// policy's candidates and the budgets, and forgets the settled
    /// candidates that are gone.
    fn select(&mut self, cycle: &Cycle<K::Snapshot>) -> Selection<K::Candidate> {
        self.settled.retain(|k| K::exists(&cycle.snapshot, k));
        let gates = Gates {
            failing: &cycle.failing,
            firing_alerts: &cycle.firing,
        };
        let selection = self.kind.select(&self.policies, &cycle.snapshot, gates);
        for (policy, n) in &selection.candidates {
            self.rem.recorder().set_candidates(&self.target, policy, *n);
        }
        self.rem.publish_budgets(&self.target);
        selection
    }

    /// Records each refused candidate once while it exists: an audit
    /// record (decision `refused`, the sentence why), a log line and the
    /// `refused` outcome. Nothing is sent, nothing charged.
    async fn refuse(&mut self, cx: &Context<'_, K>, refused: &[(K::Candidate, String)]) {
        let fresh: Vec<&(K::Candidate, String)> = refused
            .iter()
            .filter(|(c, _)| !self.settled.contains(&K::key(c)))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let records = fresh
            .iter()
            .map(|(c, why)| {
                let id = format!("{}-{}-{}", cx.settings.instance(), K::subject(c), now_ms());
                K::record(
                    cx,
                    &id,
                    c,
                    K::first_signal(c),
                    Decision::Refused,
                    why.clone(),
                )
            })
            .collect();
        cx.rem.audit_all(records, false).await;
        for (c, why) in fresh {
            let signal = K::first_signal(c);
            K::log(c, signal, Event::NotActed(why));
            count(cx, c, signal, "refused");
            self.settled.insert(K::key(c));
        }
    }

    /// Whether the pause switch or another replica's lock keeps this
    /// instance from acting on the candidates it has.
    fn held_back(&mut self, paused: bool, holder: Option<Holder>, candidates: usize) -> bool {
        if paused {
            if !self.was_paused {
                tracing::warn!(candidates, "remediation is paused: not acting");
            }
            self.was_paused = true;
            return true;
        }
        self.was_paused = false;
        if holder != Some(Holder::Us) {
            tracing::debug!(?holder, "not the actor for this target: observing only");
            return true;
        }
        false
    }

    /// The chosen candidates, in order, in batches of `batch_size`: each
    /// candidate charged to the budgets as its batch is formed, each batch
    /// decided on at once ([`decide`]), pacing waited between batches;
    /// then the follow-up terminates that came due.
    async fn act_on(&mut self, cx: &Context<'_, K>, chosen: &[K::Candidate], limit: Option<usize>) {
        let enforce = cx.settings.mode == Mode::Enforce;
        let mut left = limit.unwrap_or(usize::MAX);
        let mut follow_ups: Vec<(K::Candidate, Instant)> = Vec::new();
        let mut batches = Batches::new(chosen, cx.settings.batch_size(), K::key);
        let mut first = true;
        while !batches.is_done() && !self.cancel.is_cancelled() {
            if !first && enforce && !cx.settings.pacing.is_zero() {
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    _ = tokio::time::sleep(cx.settings.pacing) => {}
                }
            }
            first = false;
            let batch = batches.next(|c| {
                let signal = K::first_signal(c);
                if self.settled.contains(&K::key(c)) {
                    K::log(c, signal, Event::Settled);
                    return None;
                }
                if left == 0 {
                    return None;
                }
                let spent = self.spend(cx, c, signal);
                if spent.is_some() {
                    left -= 1;
                }
                spent
            });
            if batch.is_empty() {
                break;
            }
            let items: Vec<Item<'_, K>> = batch
                .iter()
                .map(|&(c, _)| Item {
                    c,
                    signal: K::first_signal(c),
                    id: format!("{}-{}-{}", cx.settings.instance(), K::subject(c), now_ms()),
                })
                .collect();
            let decided = decide(&mut self.kind, cx, &items).await;
            for (&(c, spent_at), &d) in batch.iter().zip(&decided) {
                self.settle(cx, c, d, spent_at);
                if let (Decided::Done(Decision::Acted), Some(grace)) = (d, K::follow_up(c)) {
                    follow_ups.push((c.clone(), Instant::now() + grace));
                }
            }
            if decided.contains(&Decided::Unaudited) {
                // The audit failed: act on nothing more this cycle.
                break;
            }
        }
        self.follow_up(cx, follow_ups).await;
    }

    /// Spends one action of the target's and the global budget: the time it
    /// was spent at (to refund it if nothing is sent), or `None` when a
    /// budget is exhausted, which is logged once per exhaustion and counted
    /// as a `budget_exhausted` decision.
    fn spend(&mut self, cx: &Context<'_, K>, c: &K::Candidate, signal: Signal) -> Option<u64> {
        let spent_at = now_ms();
        if cx.rem.try_spend(cx.target, spent_at) {
            self.exhausted = false;
            return Some(spent_at);
        }
        if !self.exhausted {
            let (t, g) = cx.rem.remaining(cx.target, now_ms());
            tracing::error!(
                target_remaining = t,
                global_remaining = g,
                "remediation budget exhausted: no more actions until the window allows"
            );
        }
        self.exhausted = true;
        count(cx, c, signal, "budget_exhausted");
        None
    }

    /// What a decision leaves behind: a refund when nothing was sent, and
    /// the candidate settled when deciding on it again would be pointless.
    fn settle(&mut self, cx: &Context<'_, K>, c: &K::Candidate, decided: Decided, spent_at: u64) {
        match decided {
            Decided::Done(Decision::Acted) => {
                if K::first_signal(c) == Signal::Terminate {
                    self.settled.insert(K::key(c));
                }
            }
            Decided::Reported => {
                self.settled.insert(K::key(c));
            }
            Decided::Done(Decision::Refused) => {
                // Nothing was sent, and retrying would be refused again.
                cx.rem.refund(cx.target, spent_at);
                self.settled.insert(K::key(c));
            }
            // Nothing was sent: the action is not charged.
            Decided::Unaudited | Decided::Done(_) => cx.rem.refund(cx.target, spent_at),
        }
    }

    /// `cancel_then_terminate`'s terminates, each after its grace, those
    /// due together in one batch. Part of the action already charged: no
    /// budget, and nothing settled.
    async fn follow_up(&mut self, cx: &Context<'_, K>, mut due: Vec<(K::Candidate, Instant)>) {
        due.sort_by_key(|(_, at)| *at);
        let size = cx.settings.batch_size().get();
        let mut due = due.into_iter().peekable();
        while let Some((_, at)) = due.peek() {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(*at) => {}
            }
            let now = Instant::now();
            let mut batch = Vec::new();
            while let Some((c, _)) = due.next_if(|(_, at)| *at <= now && batch.len() < size) {
                batch.push(c);
            }
            let items: Vec<Item<'_, K>> = batch
                .iter()
                .map(|c| Item {
                    c,
                    signal: Signal::Terminate,
                    id: format!(
                        "{}-{}-{}/t",
                        cx.settings.instance(),
                        K::subject(c),
                        now_ms()
                    ),
                })
                .collect();
            decide(&mut self.kind, cx, &items).await;
        }
    }
}

/// One decision about one candidate of a batch.
struct Item<'c, K: Kind> {
    c: &'c K::Candidate,
    signal: Signal,
    /// The action id that ties its intent to its outcome.
    id: String,
}

/// The decisions about a batch, one per item, in order: audit, then (in
/// enforce mode) the kind's statement(s) and the outcomes, each recorded
/// in the audit, the log and the metrics. One audit write (in enforce mode
/// with one `fsync`) for the batch's intents, one for its outcomes; in
/// enforce mode nothing is sent unless every intent of the batch is on
/// disk first.
async fn decide<K: Kind>(kind: &mut K, cx: &Context<'_, K>, items: &[Item<'_, K>]) -> Vec<Decided> {
    let records = |decision: Decision, sentence: &dyn Fn(&Item<'_, K>) -> String| {
        items
            .iter()
            .map(|i| K::record(cx, &i.id, i.c, i.signal, decision, sentence(i)))
            .collect::<Vec<_>>()
    };
    if cx.settings.mode == Mode::DryRun {
        let reports = records(Decision::WouldAct, &|i| {
            format!("would {}", i.signal.as_str())
        });
        let written = cx.rem.audit_all(reports, false).await;
        for i in items {
            K::log(i.c, i.signal, Event::WouldAct);
            let outcome = if written { "would_act" } else { "audit_failed" };
            count(cx, i.c, i.signal, outcome);
        }
        return vec![Decided::Reported; items.len()];
    }
    // Write-ahead: every intent of the batch is on disk before anything is sent.
    let intents = records(Decision::Intent, &|i| {
        format!("about to {}", i.signal.as_str())
    });
    if !cx.rem.audit_all(intents, true).await {
        for i in items {
            count(cx, i.c, i.signal, "audit_failed");
        }
        return vec![Decided::Unaudited; items.len()];
    }
    let batch: Vec<(&K::Candidate, Signal)> = items.iter().map(|i| (i.c, i.signal)).collect();
    let mut answers = kind.act_batch(cx, &batch).await;
    // A kind answers for each; one that did not has failed for the rest.
    answers.resize_with(items.len(), || {
        (
            Decision::Failed,
            "failed: no answer for this candidate".to_string(),
        )
    });
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, (decision, sentence)) in items.iter().zip(answers.iter()) {
        match decision {
            Decision::Acted => K::log(i.c, i.signal, Event::Acted),
            _ => K::log(i.c, i.signal, Event::NotActed(sentence)),
        }
        outcomes.push(K::record(
            cx,
            &i.id,
            i.c,
            i.signal,
            *decision,
            sentence.clone(),
        ));
    }
    cx.rem.audit_all(outcomes, false).await;
    answers
        .into_iter()
        .zip(items)
        .map(|((decision, _), i)| {
            count(cx, i.c, i.signal, decision.as_str());
            Decided::Done(decision)
        })
        .collect()
}

/// Counts one decision about `c` in the cycle's mode.
fn count<K: Kind>(cx: &Context<'_, K>, c: &K::Candidate, signal: Signal, outcome: &str) {
    let mode = cx.settings.mode.as_str();
    cx.rem
        .recorder()
        .action(cx.target, K::policy(c), signal.as_str(), outcome, mode);
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
