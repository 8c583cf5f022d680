//! The loop's decisions on a fake kind of target: what it sends, audits,
//! counts, charges and settles in each mode; the pause switch, the actor
//! lock, the budgets, the audit failure, pacing, follow-ups; and
//! reconfiguration in place. The statements that act are tested against
//! real servers (tests/remediation.rs, tests/neo4j_remediation.rs); here
//! the fake answers what each test scripts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tokio::task::JoinHandle;

use super::*;
use crate::evaluate::CheckId;
use crate::remediate::executor::Holder;
use crate::remediate::policy::{Action, ActionKind, Conditions, Policy, Victims};
use crate::remediate::postgres::Postgres;
use crate::remediate::recorder::Recorder;
use crate::remediate::settings::Budget as Limits;

/// The log lines of the current thread (the tests' runtime runs the loop on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures every line logged on this thread while the guard lives.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

/// Deadline for anything the loop should do at once.
const DEADLINE: Duration = Duration::from_secs(10);
const TARGET: &str = "t";
/// The poll interval every cycle of the harness carries.
const POLL_INTERVAL: Duration = Duration::from_secs(60);

/// A snapshot of the fake kind: the items that exist, and the policy each meets.
type Items = Vec<(u32, &'static str)>;

#[derive(Debug, Clone)]
struct Item {
    id: u32,
    policy: String,
    action: Action,
}

/// One call of the fake's `act`.
#[derive(Debug, Clone)]
struct Acted {
    id: u32,
    signal: Signal,
    at: Instant,
    /// This item's newest audit record was its intent for this signal
    /// when it was called (its batch's intents are written together).
    intent_first: bool,
    /// Audit records on disk when it was called.
    records: usize,
}

/// Everything observable: the recorder's events and the fake's calls.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<String>,
    acted: Vec<Acted>,
    selects: usize,
    contended: usize,
    gates: Vec<(Vec<CheckName>, Vec<String>)>,
    closed: bool,
}

impl Seen {
    fn count(&self, event: &str) -> usize {
        self.events.iter().filter(|e| *e == event).count()
    }

    fn acted_ids(&self) -> Vec<(u32, Signal)> {
        self.acted.iter().map(|a| (a.id, a.signal)).collect()
    }
}

/// What the fake answers.
#[derive(Debug)]
struct Script {
    /// `act`'s decision per item (default: acted).
    answers: HashMap<u32, Decision>,
    holder: Holder,
    /// The selection's `limit`.
    limit: Option<usize>,
    /// Items the selection refuses outright instead of choosing them.
    refuse: Vec<u32>,
    /// The selection's `crossings`.
    crossings: Vec<Duration>,
}

struct Events(Arc<watch::Sender<Seen>>);

impl Events {
    fn push(&self, e: String) {
        self.0.send_modify(|s| s.events.push(e));
    }
}

impl Recorder for Events {
    fn action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str) {
        self.push(format!(
            "action {target} {policy} {action} {outcome} {mode}"
        ));
    }
    fn init_action(&self, target: &str, policy: &str, action: &str, outcome: &str, mode: &str) {
        self.push(format!("init {target} {policy} {action} {outcome} {mode}"));
    }
    fn set_candidates(&self, target: &str, policy: &str, n: usize) {
        self.push(format!("candidates {target} {policy} {n}"));
    }
    fn set_budget(&self, scope: &str, remaining: u32, exhausted: bool) {
        self.push(format!("budget {scope} {remaining} {exhausted}"));
    }
    fn set_paused(&self, paused: bool) {
        self.push(format!("paused {paused}"));
    }
    fn set_mode(&self, mode: &str) {
        self.push(format!("mode {mode}"));
    }
    fn set_actor(&self, target: &str, holder: &Holder, instance: &str) {
        self.push(format!("actor {target} {holder:?} {instance}"));
    }
    fn audit_error(&self) {
        self.push("audit_error".into());
    }
    fn polls_brought_forward(&self, target: &str, n: u64) {
        self.push(format!("brought_forward {target} {n}"));
    }
}

struct Fake {
    seen: Arc<watch::Sender<Seen>>,
    script: Arc<Mutex<Script>>,
}

impl Kind for Fake {
    type Snapshot = Items;
    type Policy = Policy;
    type Candidate = Item;
    type Key = u32;

    fn target(&self) -> &str {
        TARGET
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("remediation", target = TARGET)
    }

    fn policies(&self, settings: &RemediationSettings) -> Vec<Policy> {
        settings
            .policies
            .values()
            .filter(|p| p.applies_to(TARGET))
            .cloned()
            .collect()
    }

    fn series(p: &Policy) -> (&str, &'static [Signal]) {
        Postgres::series(p)
    }

    /// Every item whose policy applies, in snapshot order.
    fn select(&mut self, policies: &[Policy], items: &Items, gates: Gates<'_>) -> Selection<Item> {
        let chosen: Vec<Item> = items
            .iter()
            .filter_map(|&(id, name)| {
                let p = policies.iter().find(|p| p.name == name)?;
                Some(Item {
                    id,
                    policy: name.to_string(),
                    action: p.action(),
                })
            })
            .collect();
        let candidates = policies
            .iter()
            .map(|p| {
                let n = chosen.iter().filter(|c| c.policy == p.name).count();
                (p.name.clone(), n)
            })
            .collect();
        let gates = (gates.failing.to_vec(), gates.firing_alerts.to_vec());
        self.seen.send_modify(|s| {
            s.selects += 1;
            s.gates.push(gates);
        });
        let script = self.script.lock().unwrap();
        let (refused, chosen): (Vec<Item>, Vec<Item>) = chosen
            .into_iter()
            .partition(|c| script.refuse.contains(&c.id));
        Selection {
            candidates,
            chosen,
            limit: script.limit,
            refused: refused
                .into_iter()
                .map(|c| (c, "refused by the fake".to_string()))
                .collect(),
            crossings: script.crossings.clone(),
        }
    }

    fn key(c: &Item) -> u32 {
        c.id
    }

    fn exists(items: &Items, key: &u32) -> bool {
        items.iter().any(|(id, _)| id == key)
    }

    fn policy(c: &Item) -> &str {
        &c.policy
    }

    fn subject(c: &Item) -> String {
        format!("item{}", c.id)
    }

    fn first_signal(c: &Item) -> Signal {
        match c.action {
            Action::Terminate => Signal::Terminate,
            _ => Signal::Cancel,
        }
    }

    fn follow_up(c: &Item) -> Option<Duration> {
        match c.action {
            Action::CancelThenTerminate { grace } => Some(grace),
            _ => None,
        }
    }

    fn record(
        cx: &Context<'_, Self>,
        id: &str,
        c: &Item,
        signal: Signal,
        decision: Decision,
        outcome: String,
    ) -> AuditRecord {
        AuditRecord {
            time: String::new(),
            time_ms: now_ms(),
            action_id: id.to_string(),
            instance: cx.settings.instance().to_string(),
            target: cx.target.to_string(),
            policy: c.policy.clone(),
            mode: cx.settings.mode,
            action: signal.as_str().to_string(),
            decision,
            reason: c.id.to_string(),
            outcome,
            session: None,
            transaction: None,
            index: None,
            pod: None,
        }
    }

    fn log(c: &Item, signal: Signal, event: Event<'_>) {
        tracing::info!(id = c.id, ?signal, ?event, "fake");
    }

    async fn contend(&mut self, _: &Context<'_, Self>) -> Holder {
        self.seen.send_modify(|s| s.contended += 1);
        self.script.lock().unwrap().holder.clone()
    }

    async fn act(
        &mut self,
        cx: &Context<'_, Self>,
        c: &Item,
        signal: Signal,
    ) -> (Decision, String) {
        let recent = cx
            .rem
            .audit
            .as_ref()
            .map(|a| a.recent(1000))
            .unwrap_or_default();
        let mine = recent.iter().find(|r| r.reason == c.id.to_string());
        let intent_first =
            mine.is_some_and(|r| r.decision == Decision::Intent && r.action == signal.as_str());
        let acted = Acted {
            id: c.id,
            signal,
            at: Instant::now(),
            intent_first,
            records: recent.len(),
        };
        self.seen.send_modify(|s| s.acted.push(acted));
        let answers = &self.script.lock().unwrap().answers;
        let decision = answers.get(&c.id).copied().unwrap_or(Decision::Acted);
        (decision, format!("the fake answered {}", decision.as_str()))
    }

    async fn close(self) {
        self.seen.send_modify(|s| s.closed = true);
    }
}

fn policy(name: &str, kind: ActionKind, grace: Option<Duration>) -> Policy {
    Policy {
        name: name.into(),
        targets: None,
        kind: Some(kind),
        grace,
        victims: Victims::All,
        max_per_cycle: 10,
        only_while_failing: Vec::new(),
        only_while_alerts: Vec::new(),
        conditions: Conditions::default(),
    }
}

fn settings(dir: &Path, mode: Mode, policies: Vec<Policy>) -> RemediationSettings {
    RemediationSettings {
        mode,
        instance: Some("i".into()),
        audit_file: dir.join("audit.jsonl"),
        state_dir: dir.join("state"),
        pacing: Duration::ZERO,
        budget: Limits {
            per_target: 10,
            global: 30,
            window: Duration::from_secs(600),
        },
        policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
        ..RemediationSettings::default()
    }
}

fn terminate(name: &str) -> Policy {
    policy(name, ActionKind::Terminate, None)
}

/// The loop on the fake kind, with the channel the daemon would feed.
struct Harness {
    rem: Arc<Remediation>,
    seen: Arc<watch::Sender<Seen>>,
    script: Arc<Mutex<Script>>,
    cycles: watch::Sender<Option<Cycle<Items>>>,
    /// The poller's waker, as the daemon passes it.
    poll_now: Arc<Notify>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(settings: impl FnOnce(&Path) -> RemediationSettings) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = Arc::new(watch::Sender::new(Seen::default()));
        let rem = Remediation::start(settings(dir.path()), Arc::new(Events(seen.clone())))
            .expect("start remediation");
        let script = Arc::new(Mutex::new(Script {
            answers: HashMap::new(),
            holder: Holder::Us,
            limit: None,
            refuse: Vec::new(),
            crossings: Vec::new(),
        }));
        let fake = Fake {
            seen: seen.clone(),
            script: script.clone(),
        };
        let (cycles, receiver) = watch::channel(None);
        let cancel = CancellationToken::new();
        let poll_now = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            rem.clone(),
            fake,
            receiver,
            Some(poll_now.clone()),
            cancel.clone(),
        ));
        let h = Harness {
            rem,
            seen,
            script,
            cycles,
            poll_now,
            cancel,
            task,
            _dir: dir,
        };
        // The loop has started once it exported the budgets.
        h.wait("the loop to start", |s| {
            s.events.iter().any(|e| e.starts_with("budget t "))
        })
        .await;
        h
    }

    fn answer(&self, id: u32, decision: Decision) {
        self.script.lock().unwrap().answers.insert(id, decision);
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.borrow())
    }

    fn count(&self, event: &str) -> usize {
        self.seen(|s| s.count(event))
    }

    fn acted(&self) -> Vec<(u32, Signal)> {
        self.seen(|s| s.acted_ids())
    }

    async fn wait(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        let mut rx = self.seen.subscribe();
        if tokio::time::timeout(DEADLINE, rx.wait_for(|s| cond(s)))
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}: {:?}", *self.seen.borrow());
        }
    }

    /// Sends a poll's cycle and returns once the loop has finished it: its
    /// selection ran, and then a failed poll's cycle sent after it started
    /// too (the loop takes one cycle at a time, in order).
    async fn cycle(&self, items: &[(u32, &'static str)]) {
        self.cycle_with(items, Vec::new(), Vec::new()).await;
    }

    async fn cycle_with(
        &self,
        items: &[(u32, &'static str)],
        failing: Vec<CheckName>,
        firing: Vec<String>,
    ) {
        let selects = self.seen(|s| s.selects);
        self.cycles.send_replace(Some(Cycle {
            snapshot: Arc::new(items.to_vec()),
            failing,
            firing,
            poll_interval: POLL_INTERVAL,
        }));
        self.wait("the cycle's selection", |s| s.selects > selects)
            .await;
        self.failed_poll().await;
    }

    /// Sends a poll's cycle whose selection predicts a crossing `after`
    /// (and nothing else after it, unlike [`Harness::cycle`]): returns once
    /// its selection ran.
    async fn cycle_crossing(&self, after: Option<Duration>, interval: Duration) {
        self.script.lock().unwrap().crossings = after.into_iter().collect();
        let selects = self.seen(|s| s.selects);
        self.cycles.send_replace(Some(Cycle {
            snapshot: Arc::new(Vec::new()),
            failing: Vec::new(),
            firing: Vec::new(),
            poll_interval: interval,
        }));
        self.wait("the cycle's selection", |s| s.selects > selects)
            .await;
    }

    /// Whether the loop woke the poller within `window`.
    async fn woken_within(&self, window: Duration) -> bool {
        tokio::time::timeout(window, self.poll_now.notified())
            .await
            .is_ok()
    }

    /// A failed poll's cycle, once the loop has taken it.
    async fn failed_poll(&self) {
        let paused = self.count("paused false") + self.count("paused true");
        self.cycles.send_replace(None);
        self.wait("the loop to take the next cycle", |s| {
            s.count("paused false") + s.count("paused true") > paused
        })
        .await;
    }

    fn target_remaining(&self) -> u32 {
        self.rem.remaining(TARGET, now_ms()).0
    }

    fn audit(&self) -> Vec<(Decision, String)> {
        let mut records = self.rem.audit.as_ref().expect("an audit log").recent(1000);
        records.reverse();
        records
            .into_iter()
            .map(|r| (r.decision, r.reason))
            .collect()
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the loop stops when cancelled")
            .expect("the loop does not panic");
        assert!(self.seen.borrow().closed, "the kind was closed");
    }
}

#[tokio::test]
async fn a_limit_caps_the_actions_of_a_cycle_after_leaving_out_the_settled() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.script.lock().unwrap().limit = Some(1);
    let items = [(1, "p"), (2, "p"), (3, "p")];
    h.cycle(&items).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate)]);
    assert_eq!(h.target_remaining(), 9, "one charged");
    // 1 was terminated (settled while it exists): the next cycle takes 2.
    h.cycle(&items).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate), (2, Signal::Terminate)]);
    // A skipped one is not settled: it is tried again, and holds the place.
    h.answer(3, Decision::Skipped);
    h.cycle(&items).await;
    h.cycle(&items).await;
    assert_eq!(
        h.acted(),
        [1, 2, 3, 3].map(|id| (id, Signal::Terminate)),
        "one per cycle"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_refusal_is_recorded_once_in_every_mode_but_observe_and_nothing_is_sent() {
    for mode in [Mode::DryRun, Mode::Enforce, Mode::Observe] {
        let h = Harness::start(|d| settings(d, mode, vec![terminate("p")])).await;
        h.script.lock().unwrap().refuse = vec![7];
        h.cycle(&[(7, "p")]).await;
        h.cycle(&[(7, "p")]).await;
        assert!(h.acted().is_empty(), "{mode:?}: nothing sent");
        let m = mode.as_str();
        if mode == Mode::Observe {
            assert!(h.rem.audit.is_none() || h.audit().is_empty(), "{mode:?}");
            assert_eq!(h.count(&format!("action t p terminate refused {m}")), 0);
        } else {
            assert_eq!(
                h.audit(),
                [(Decision::Refused, "7".to_string())],
                "{mode:?}: once"
            );
            assert_eq!(h.count(&format!("action t p terminate refused {m}")), 1);
            assert_eq!(h.target_remaining(), 10, "{mode:?}: not charged");
        }
        // Gone, then back: a new decision.
        h.cycle(&[]).await;
        h.cycle(&[(7, "p")]).await;
        if mode != Mode::Observe {
            assert_eq!(h.audit().len(), 2, "{mode:?}");
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn dry_run_reports_each_candidate_once_while_it_exists_and_sends_nothing() {
    let h = Harness::start(|d| settings(d, Mode::DryRun, vec![terminate("p")])).await;
    assert_eq!(h.count("init t p terminate would_act dry-run"), 1);
    assert_eq!(h.count("init t p terminate acted dry-run"), 0);
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.count("action t p terminate would_act dry-run"), 2);
    assert_eq!(h.count("candidates t p 2"), 1);
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(
        h.count("action t p terminate would_act dry-run"),
        2,
        "reported once"
    );
    // 1 ended, and its id came back: a new decision.
    h.cycle(&[(2, "p")]).await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.count("action t p terminate would_act dry-run"), 3);
    assert!(h.acted().is_empty(), "dry-run sends nothing");
    assert_eq!(
        h.seen(|s| s.contended),
        4,
        "the lock is contended on every cycle"
    );
    let reported = vec![
        (Decision::WouldAct, "1".to_string()),
        (Decision::WouldAct, "2".to_string()),
        (Decision::WouldAct, "1".to_string()),
    ];
    assert_eq!(h.audit(), reported);
    assert_eq!(
        h.target_remaining(),
        7,
        "dry-run charges what enforce would spend"
    );
    h.stop().await;
}

#[tokio::test]
async fn enforce_acts_after_the_intent_and_charges_only_what_was_sent() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    assert_eq!(h.count("init t p terminate would_act enforce"), 0);
    for o in [
        "acted",
        "skipped",
        "refused",
        "failed",
        "audit_failed",
        "budget_exhausted",
    ] {
        assert_eq!(
            h.count(&format!("init t p terminate {o} enforce")),
            1,
            "{o}"
        );
    }
    h.answer(2, Decision::Skipped);
    h.answer(3, Decision::Refused);
    h.answer(4, Decision::Failed);
    let items = [(1, "p"), (2, "p"), (3, "p"), (4, "p")];
    h.cycle(&items).await;
    let all = [1, 2, 3, 4].map(|id| (id, Signal::Terminate));
    assert_eq!(h.acted(), all);
    assert!(
        h.seen(|s| s.acted.iter().all(|a| a.intent_first)),
        "intent before each act"
    );
    for (id, o) in [(1, "acted"), (2, "skipped"), (3, "refused"), (4, "failed")] {
        assert_eq!(
            h.count(&format!("action t p terminate {o} enforce")),
            1,
            "{o}"
        );
        let records: Vec<Decision> = h
            .audit()
            .into_iter()
            .filter(|(_, r)| *r == id.to_string())
            .map(|(d, _)| d)
            .collect();
        let decision = h.script.lock().unwrap().answers.get(&id).copied();
        assert_eq!(
            records,
            [Decision::Intent, decision.unwrap_or(Decision::Acted)]
        );
    }
    assert_eq!(h.target_remaining(), 9, "only what was sent is charged");
    assert!(h.count("budget t 9 false") >= 1);
    // Refused, and terminated: settled while they exist (a poll taken
    // before the signal still lists a terminated session). The skipped and
    // the failed are decided again.
    h.cycle(&items).await;
    let again = [2, 4].map(|id| (id, Signal::Terminate));
    assert_eq!(h.acted()[4..], again);
    assert_eq!(h.target_remaining(), 9);
    // Gone, and back (a new decision).
    h.cycle(&[(2, "p")]).await;
    h.cycle(&items).await;
    assert_eq!(h.acted().iter().filter(|(id, _)| *id == 1).count(), 2);
    h.stop().await;
}

#[tokio::test]
async fn an_exhausted_budget_stops_actions_and_counts_them() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.budget.per_target = 2;
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p"), (3, "p"), (4, "p")]).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate), (2, Signal::Terminate)]);
    assert_eq!(h.count("action t p terminate budget_exhausted enforce"), 2);
    assert_eq!(h.count("budget t 0 true"), 1, "published after acting");
    assert_eq!(h.target_remaining(), 0);
    h.stop().await;
}

#[tokio::test]
async fn the_global_budget_bounds_every_target() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.budget.global = 1;
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate)]);
    assert_eq!(h.count("action t p terminate budget_exhausted enforce"), 1);
    assert_eq!(h.count("budget global 0 true"), 1);
    h.stop().await;
}

#[tokio::test]
async fn no_action_without_its_intent_on_disk() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.audit_file = "/dev/full".into();
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert!(h.acted().is_empty());
    // One batch: its intents are written together, and none got to disk.
    assert_eq!(h.count("action t p terminate audit_failed enforce"), 2);
    assert_eq!(h.count("audit_error"), 1);
    assert_eq!(h.target_remaining(), 10, "refunded");
    // Each cycle tries again.
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.count("action t p terminate audit_failed enforce"), 4);
    h.stop().await;
}

#[tokio::test]
async fn a_dry_run_report_that_cannot_be_written_is_counted_and_not_retried() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::DryRun, vec![terminate("p")]);
        s.audit_file = "/dev/full".into();
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.count("action t p terminate audit_failed dry-run"), 2);
    assert_eq!(h.count("action t p terminate would_act dry-run"), 0);
    h.stop().await;
}

#[tokio::test]
async fn paused_it_neither_contends_nor_acts_until_resumed() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.rem.pause.pause("test", "testing").expect("pause");
    h.cycle(&[(1, "p")]).await;
    assert!(h.count("paused true") >= 1);
    assert_eq!(h.seen(|s| s.contended), 0);
    assert!(h.acted().is_empty());
    assert_eq!(h.count("candidates t p 1"), 1, "still selects and exports");
    h.rem.pause.resume().expect("resume");
    h.cycle(&[(1, "p")]).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate)]);
    h.stop().await;
}

#[tokio::test]
async fn only_the_lock_holder_acts() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.script.lock().unwrap().holder = Holder::Other("other".into());
    h.cycle(&[(1, "p")]).await;
    h.script.lock().unwrap().holder = Holder::Nobody;
    h.cycle(&[(1, "p")]).await;
    assert_eq!(h.seen(|s| s.contended), 2);
    assert!(h.acted().is_empty());
    assert_eq!(h.target_remaining(), 10);
    h.script.lock().unwrap().holder = Holder::Us;
    h.cycle(&[(1, "p")]).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate)]);
    h.stop().await;
}

#[tokio::test]
async fn observe_selects_and_exports_but_neither_contends_nor_audits() {
    let h = Harness::start(|d| settings(d, Mode::Observe, vec![terminate("p")])).await;
    assert!(h.seen(|s| s.events.iter().all(|e| !e.starts_with("init"))));
    let firing = vec!["DbwardenConnectionsExhausted".to_string()];
    h.cycle_with(
        &[(1, "p")],
        vec![CheckId::ConnectionsUsed.into()],
        firing.clone(),
    )
    .await;
    assert_eq!(h.count("candidates t p 1"), 1);
    assert_eq!(
        h.seen(|s| s.gates.clone()),
        [(vec![CheckName::Builtin(CheckId::ConnectionsUsed)], firing)]
    );
    assert_eq!(h.seen(|s| s.contended), 0);
    assert!(h.acted().is_empty());
    assert!(h.rem.audit.is_none());
    h.stop().await;
}

#[tokio::test]
async fn cancel_then_terminate_terminates_after_the_grace_when_the_cancel_was_sent() {
    let grace = Duration::from_millis(150);
    let h = Harness::start(|d| {
        let p = policy("c", ActionKind::CancelThenTerminate, Some(grace));
        settings(d, Mode::Enforce, vec![p])
    })
    .await;
    assert_eq!(h.count("init t c cancel acted enforce"), 1);
    assert_eq!(h.count("init t c terminate acted enforce"), 1);
    h.answer(2, Decision::Skipped);
    h.cycle(&[(1, "c"), (2, "c")]).await;
    let acted = h.seen(|s| s.acted.clone());
    let calls: Vec<(u32, Signal)> = acted.iter().map(|a| (a.id, a.signal)).collect();
    assert_eq!(
        calls,
        [
            (1, Signal::Cancel),
            (2, Signal::Cancel),
            (1, Signal::Terminate)
        ],
        "no terminate after a cancel that was not sent"
    );
    assert!(acted[2].at - acted[0].at >= grace);
    assert!(acted[2].intent_first);
    assert_eq!(h.target_remaining(), 9, "one action, charged once");
    let ids: Vec<String> = h
        .rem
        .audit
        .as_ref()
        .unwrap()
        .recent(10)
        .into_iter()
        .map(|r| r.action_id)
        .collect();
    assert!(
        ids[0].ends_with("/t") && ids[0].starts_with("i-item1-"),
        "{ids:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn enforce_paces_its_actions() {
    let pacing = Duration::from_millis(150);
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.pacing = pacing;
        s.batch_size = 1;
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    let acted = h.seen(|s| s.acted.clone());
    assert_eq!(acted.len(), 2);
    assert!(acted[1].at - acted[0].at >= pacing);
    h.stop().await;
}

#[tokio::test]
async fn pacing_is_waited_between_batches_not_within() {
    let pacing = Duration::from_millis(500);
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.pacing = pacing;
        s.batch_size = 2;
        s
    })
    .await;
    let started = Instant::now();
    h.cycle(&[(1, "p"), (2, "p"), (3, "p")]).await;
    let acted = h.seen(|s| s.acted.clone());
    assert_eq!(acted.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        acted[1].at - acted[0].at < pacing,
        "one batch: no pacing between 1 and 2"
    );
    assert!(
        acted[2].at - acted[1].at >= pacing,
        "paced before the next batch"
    );
    assert!(
        started.elapsed() < pacing * 19 / 10,
        "no pacing after the last batch"
    );
    h.stop().await;
}

/// A batch: its intents written together (all on disk before the first
/// act), then the acts, then its outcomes together; the next batch after.
#[tokio::test]
async fn a_batch_writes_its_intents_then_acts_then_writes_its_outcomes() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.batch_size = 3;
        s
    })
    .await;
    h.answer(2, Decision::Skipped);
    h.answer(4, Decision::Failed);
    h.cycle(&[(1, "p"), (2, "p"), (3, "p"), (4, "p"), (5, "p")])
        .await;
    let acted = h.seen(|s| s.acted.clone());
    assert_eq!(
        acted.iter().map(|a| a.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(acted.iter().all(|a| a.intent_first));
    let records: Vec<usize> = acted.iter().map(|a| a.records).collect();
    assert_eq!(
        records,
        [3, 3, 3, 8, 8],
        "each batch's intents are all written before its first act"
    );
    let audit: Vec<(Decision, String)> = h.audit();
    let d = |d: Decision, id: u32| (d, id.to_string());
    use Decision::*;
    assert_eq!(
        audit,
        [
            d(Intent, 1),
            d(Intent, 2),
            d(Intent, 3),
            d(Acted, 1),
            d(Skipped, 2),
            d(Acted, 3),
            d(Intent, 4),
            d(Intent, 5),
            d(Failed, 4),
            d(Acted, 5),
        ]
    );
    assert_eq!(
        h.target_remaining(),
        7,
        "three sent, the skipped and the failed refunded"
    );
    assert_eq!(h.count("action t p terminate acted enforce"), 3);
    h.stop().await;
}

#[tokio::test]
async fn budgets_cut_a_batch_and_settled_candidates_leave_room_in_it() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.batch_size = 2;
        s.budget.per_target = 3;
        s
    })
    .await;
    h.answer(1, Decision::Refused);
    h.cycle(&[(1, "p")]).await;
    assert_eq!(h.target_remaining(), 3, "refused: refunded, and settled");
    // 1 is settled: 2 and 3 form the first batch, 4 the second, 5 and 6
    // find the budget exhausted.
    h.cycle(&[(1, "p"), (2, "p"), (3, "p"), (4, "p"), (5, "p"), (6, "p")])
        .await;
    let acted = h.seen(|s| s.acted.clone());
    let ids: Vec<u32> = acted.iter().map(|a| a.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(h.count("action t p terminate budget_exhausted enforce"), 2);
    assert_eq!(h.target_remaining(), 0);
    h.stop().await;
}

#[tokio::test]
async fn an_unwritable_audit_stops_the_cycle_before_the_batch_acts() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.audit_file = "/dev/full".into();
        s.batch_size = 2;
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p"), (3, "p")]).await;
    assert!(h.acted().is_empty());
    // The whole first batch is unaudited; the second is never formed.
    assert_eq!(h.count("action t p terminate audit_failed enforce"), 2);
    assert_eq!(h.count("audit_error"), 1, "one write for the batch");
    assert_eq!(h.target_remaining(), 10, "refunded");
    h.stop().await;
}

#[tokio::test]
async fn the_loop_ends_when_its_cycles_stop() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    let Harness {
        cycles, task, seen, ..
    } = h;
    drop(cycles);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the loop stops without a feed")
        .expect("no panic");
    assert!(seen.borrow().closed);
}

#[tokio::test]
async fn reconfigure_from_dry_run_to_enforce_acts_from_the_next_cycle() {
    let h = Harness::start(|d| settings(d, Mode::DryRun, vec![terminate("p")])).await;
    h.cycle(&[(1, "p")]).await;
    assert_eq!(h.count("action t p terminate would_act dry-run"), 1);
    let mut enforce = (*h.rem.settings()).clone();
    enforce.mode = Mode::Enforce;
    h.rem.reconfigure(enforce).expect("in place");
    assert_eq!(h.count("mode enforce"), 1);
    assert!(h.acted().is_empty(), "nothing before the next cycle");
    h.cycle(&[(1, "p")]).await;
    // Reported in dry-run, acted on once enforced.
    assert_eq!(h.acted(), [(1, Signal::Terminate)]);
    assert_eq!(h.count("init t p terminate acted enforce"), 1);
    assert_eq!(h.count("action t p terminate acted enforce"), 1);
    assert_eq!(h.target_remaining(), 8, "the dry-run's spend survives");
    h.stop().await;
}

#[tokio::test]
async fn reconfigure_keeps_the_budget_spent_and_applies_new_limits() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.budget.per_target = 3;
        s
    })
    .await;
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.target_remaining(), 1);
    let mut smaller = (*h.rem.settings()).clone();
    smaller.budget.per_target = 2;
    h.rem.reconfigure(smaller.clone()).expect("in place");
    assert_eq!(h.target_remaining(), 0, "two spent of two");
    h.cycle(&[(3, "p")]).await;
    assert_eq!(h.count("action t p terminate budget_exhausted enforce"), 1);
    smaller.budget.per_target = 5;
    smaller.pacing = Duration::from_millis(1);
    h.rem.reconfigure(smaller).expect("in place");
    h.cycle(&[(3, "p")]).await;
    assert_eq!(h.acted().last(), Some(&(3, Signal::Terminate)));
    assert_eq!(h.target_remaining(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_policy_added_in_place_gets_its_series_and_acts_from_the_next_cycle() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.cycle(&[(1, "q")]).await;
    assert!(h.acted().is_empty(), "no policy q yet");
    let mut more = (*h.rem.settings()).clone();
    more.policies
        .insert("q".into(), policy("q", ActionKind::Cancel, None));
    h.rem.reconfigure(more).expect("in place");
    h.failed_poll().await;
    assert_eq!(h.count("init t q cancel acted enforce"), 1);
    assert_eq!(h.count("init t p terminate acted enforce"), 1, "once");
    h.cycle(&[(1, "q")]).await;
    assert_eq!(h.acted(), [(1, Signal::Cancel)]);
    h.stop().await;
}

#[tokio::test]
async fn reconfigure_refuses_what_cannot_change_in_place() {
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    let before = h.rem.settings();
    let mut moved = (*before).clone();
    moved.audit_file = "/elsewhere/audit.jsonl".into();
    moved.mode = Mode::DryRun;
    let e = h
        .rem
        .reconfigure(moved)
        .expect_err("the audit file is open");
    assert!(e.to_string().contains("audit_file"), "{e}");
    assert_eq!(*h.rem.settings(), *before, "nothing applied");
    let mut renamed = (*before).clone();
    renamed.instance = Some("j".into());
    assert!(h.rem.reconfigure(renamed).is_err());
    h.stop().await;

    let observe = Harness::start(|d| settings(d, Mode::Observe, vec![terminate("p")])).await;
    let mut enforce = (*observe.rem.settings()).clone();
    enforce.mode = Mode::Enforce;
    let e = observe
        .rem
        .reconfigure(enforce)
        .expect_err("no audit file open");
    assert!(e.to_string().contains("audit file"), "{e}");
    assert_eq!(observe.rem.settings().mode, Mode::Observe);
    observe.stop().await;
}

#[tokio::test]
async fn dry_run_reports_without_pacing() {
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::DryRun, vec![terminate("p")]);
        s.pacing = Duration::from_secs(3600);
        s
    })
    .await;
    // The cycle helper waits for the next cycle, which an hour's pacing would hold up.
    h.cycle(&[(1, "p"), (2, "p")]).await;
    assert_eq!(h.count("action t p terminate would_act dry-run"), 2);
    h.stop().await;
}

#[tokio::test]
async fn each_decision_is_logged_by_its_kind() {
    let (logs, _guard) = Logs::capture();
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.answer(2, Decision::Refused);
    h.cycle(&[(1, "p"), (2, "p")]).await;
    h.cycle(&[(2, "p")]).await;
    assert_eq!(logs.count("id=1 signal=Terminate event=Acted"), 1);
    assert_eq!(
        logs.count("id=2 signal=Terminate event=NotActed(\"the fake answered refused\")"),
        1
    );
    assert_eq!(logs.count("id=2 signal=Terminate event=Settled"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_pause_is_logged_once_while_it_holds() {
    let (logs, _guard) = Logs::capture();
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    let paused = "remediation is paused: not acting";
    h.rem.pause.pause("test", "testing").expect("pause");
    h.cycle(&[(1, "p")]).await;
    h.cycle(&[(1, "p")]).await;
    assert_eq!(logs.count(paused), 1);
    h.rem.pause.resume().expect("resume");
    h.cycle(&[]).await;
    h.cycle(&[(1, "p")]).await;
    assert_eq!(
        logs.count(paused),
        1,
        "resumed, and there were candidates to act on"
    );
    h.rem.pause.pause("test", "again").expect("pause");
    h.cycle(&[(2, "p")]).await;
    assert_eq!(logs.count(paused), 2, "a new pause");
    h.stop().await;
}

#[tokio::test]
async fn an_exhausted_budget_is_logged_once_until_an_action_is_allowed() {
    let (logs, _guard) = Logs::capture();
    let h = Harness::start(|d| {
        let mut s = settings(d, Mode::Enforce, vec![terminate("p")]);
        s.budget.per_target = 1;
        s
    })
    .await;
    let exhausted = "remediation budget exhausted";
    h.cycle(&[(1, "p"), (2, "p"), (3, "p")]).await;
    h.cycle(&[(4, "p")]).await;
    assert_eq!(logs.count(exhausted), 1);
    assert_eq!(h.count("action t p terminate budget_exhausted enforce"), 3);
    let mut more = (*h.rem.settings()).clone();
    more.budget.per_target = 2;
    h.rem.reconfigure(more).expect("in place");
    h.cycle(&[(4, "p"), (5, "p")]).await;
    assert_eq!(h.acted(), [(1, Signal::Terminate), (4, Signal::Terminate)]);
    assert_eq!(
        logs.count(exhausted),
        2,
        "exhausted again after an allowed action"
    );
    h.stop().await;
}

/// The window in which a wake that would be armed 20 ms ahead must not
/// come: thirty times that.
const NO_WAKE_WINDOW: Duration = Duration::from_millis(600);

#[test]
fn a_burst_crossing_together_is_taken_by_one_poll() {
    let ms = Duration::from_millis;
    let interval = Duration::from_secs(1);
    assert_eq!(wake_after(&[], interval), None);
    assert_eq!(wake_after(&[ms(50)], interval), Some(ms(50)));
    // The last within a tenth of the interval of the first.
    assert_eq!(
        wake_after(&[ms(50), ms(60), ms(150), ms(151), ms(400)], interval),
        Some(ms(150))
    );
    assert_eq!(
        wake_after(&[ms(50), ms(60)], Duration::from_secs(60)),
        Some(ms(60))
    );
}

#[tokio::test]
async fn a_predicted_crossing_brings_the_next_poll_forward() {
    for mode in [Mode::Enforce, Mode::DryRun] {
        let h = Harness::start(|d| settings(d, mode, vec![terminate("p")])).await;
        let sent = Instant::now();
        h.cycle_crossing(Some(Duration::from_millis(50)), POLL_INTERVAL)
            .await;
        assert!(
            h.woken_within(DEADLINE).await,
            "{mode:?}: woken at the crossing"
        );
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(50) + CROSSING_MARGIN,
            "{mode:?}: woken {took:?} after the cycle, before the crossing"
        );
        // Counted: the series exists from the start, then one.
        assert_eq!(h.count("brought_forward t 0"), 1);
        h.wait("the poll brought forward counted", |s| {
            s.count("brought_forward t 1") == 1
        })
        .await;
        h.stop().await;
    }
    // The next cycle (the poll brought forward) predicts another crossing at
    // once: polled no sooner than a quarter of the interval after the last.
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    let interval = Duration::from_secs(1);
    let crossing = Some(Duration::from_millis(10));
    h.cycle_crossing(crossing, interval).await;
    assert!(h.woken_within(DEADLINE).await);
    let woken = Instant::now();
    h.cycle_crossing(crossing, interval).await;
    assert!(h.woken_within(DEADLINE).await, "woken again");
    let gap = woken.elapsed();
    assert!(gap >= interval / 4, "woken again after {gap:?}");
    h.wait("both counted", |s| s.count("brought_forward t 1") == 2)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn no_poll_is_brought_forward_where_nothing_could_act() {
    let crossing = Some(Duration::from_millis(20));
    // Observe mode acts on nothing.
    let h = Harness::start(|d| settings(d, Mode::Observe, vec![terminate("p")])).await;
    h.cycle_crossing(crossing, POLL_INTERVAL).await;
    assert!(!h.woken_within(NO_WAKE_WINDOW).await, "observe");
    h.stop().await;
    // Paused, or another replica holds the actor lock.
    let h = Harness::start(|d| settings(d, Mode::Enforce, vec![terminate("p")])).await;
    h.rem.pause.pause("test", "testing").expect("pause");
    h.cycle_crossing(crossing, POLL_INTERVAL).await;
    assert!(!h.woken_within(NO_WAKE_WINDOW).await, "paused");
    h.rem.pause.resume().expect("resume");
    h.script.lock().unwrap().holder = Holder::Other("j".into());
    h.cycle_crossing(crossing, POLL_INTERVAL).await;
    assert!(
        !h.woken_within(NO_WAKE_WINDOW).await,
        "another replica acts"
    );
    h.script.lock().unwrap().holder = Holder::Us;
    // Switched off (a reload applies at the next cycle).
    let mut off = (*h.rem.settings()).clone();
    off.poll_at_crossing = false;
    h.rem.reconfigure(off).expect("in place");
    h.cycle_crossing(crossing, POLL_INTERVAL).await;
    assert!(!h.woken_within(NO_WAKE_WINDOW).await, "switched off");
    let mut on = (*h.rem.settings()).clone();
    on.poll_at_crossing = true;
    h.rem.reconfigure(on).expect("in place");
    // The crossing comes after the next poll anyway.
    h.cycle_crossing(Some(Duration::from_millis(200)), Duration::from_millis(200))
        .await;
    assert!(!h.woken_within(NO_WAKE_WINDOW).await, "after the next poll");
    // A later cycle without a crossing disarms an armed wake.
    h.cycle_crossing(Some(Duration::from_millis(300)), POLL_INTERVAL)
        .await;
    h.cycle_crossing(None, POLL_INTERVAL).await;
    assert!(!h.woken_within(NO_WAKE_WINDOW).await, "disarmed");
    assert_eq!(h.count("brought_forward t 1"), 0, "none counted");
    // And then one does arm it.
    h.cycle_crossing(crossing, POLL_INTERVAL).await;
    assert!(h.woken_within(DEADLINE).await, "armed");
    h.wait("counted", |s| s.count("brought_forward t 1") == 1)
        .await;
    h.stop().await;
}
