//! The engine: drives each fault through the state machine, performing the I/O between
//! transitions (sandbox run, effects, verification).
//!
//! **Invariants:**
//! - The engine decides every change of fault state (the intake writes the steps of the
//!   engine's first look, [`EngineHandle::first_look`], with the report), and every transition
//!   is durable (store `append`, a compare-and-swap on the fault's sequence) *before* the side
//!   effect it authorizes.
//! - An action is recorded as started before it runs and as done after; a restart never re-runs
//!   an action that may have started: it verifies instead.
//! - One fault is driven by at most one task at a time (the in-flight set); at most `workers`
//!   faults are driven at once (a semaphore).

pub mod events;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use crate::core::breaker::{Admission, Breaker, BreakerConfig, Change, Position, WhenOpen};
use crate::core::fault::{
    ApprovalRequest, FailReason, Fault, FaultState, Report, Rollback, Run, Source, Timestamp,
};
use crate::core::machine::{self, Event, IllegalTransition};
use crate::core::plan;
use crate::core::plan::Action;
use crate::core::policy::Policy;
use crate::core::policy::PolicySet;
use crate::core::record::Provenance;
use crate::effects::{Effects, FaultEnv};
use crate::engine::events::Events;
use crate::engine::verify::{HttpProbes, verify};
use crate::patch::view_of;
use crate::sandbox::{FaultView, RunError};
use crate::sandbox::{Inline, Sandbox};
use crate::store::{Audited, CountedSteps, FaultChange, Opening, Store, StoreError};

/// Why driving a fault stopped before a terminal state. The fault stays resumable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed (e.g. disk full); the fault is retried at the next start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug: the engine asked for a transition the table forbids.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// What the engine needs from the rest of the daemon.
pub struct EngineParts {
    pub store: Arc<Store>,
    pub sandbox: Arc<Sandbox>,
    pub policies: Arc<RwLock<Arc<PolicySet>>>,
    pub effects: Effects,
    pub http: reqwest::Client,
    pub work_dir: PathBuf,
    pub workers: usize,
    pub supervisor: crate::effects::supervisor::Supervisor,
    /// Where file backups for undo are kept (`data_dir/backups`).
    pub backup_dir: PathBuf,
    /// The global circuit breaker's settings.
    pub global_breaker: BreakerConfig,
    /// Where approval requests, breaker changes and closed faults are announced.
    pub events: Events,
    /// Healing runs allowed per app and window before faults wait for a person.
    pub rate_limit: crate::core::window::RateLimit,
}

/// What the dispatcher is asked to do.
enum Work {
    /// Drive this fault, starting from the record given (as its last write left it) if any,
    /// else from the store.
    Drive(String, Option<Box<Fault>>),
    /// Answer, to show the dispatcher is alive and not stuck (the systemd watchdog).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// A handle to the running engine: hand it fault ids to drive.
#[derive(Clone)]
pub struct EngineHandle {
    queue: mpsc::UnboundedSender<Work>,
    engine: Arc<Engine>,
}

impl EngineHandle {
    /// Asks the engine to drive `id` (a no-op if it is already being driven).
    pub fn enqueue(&self, id: String) {
        // Only fails when the engine is gone (shutdown); the fault is durable and resumes at
        // the next start.
        let _ = self.queue.send(Work::Drive(id, None));
    }

    /// Asks the engine to drive `fault`, just written as it is (saves reading it back). A
    /// record that is stale by the time the engine writes is harmless: writes are checked
    /// against the fault's sequence number, and a mismatch makes the engine read it again.
    pub fn enqueue_written(&self, fault: Fault) {
        let _ = self
            .queue
            .send(Work::Drive(fault.id.clone(), Some(Box::new(fault))));
    }

    /// What the intake writes with `report` if it opens a new fault: the steps the engine would
    /// write at its first look, worked out now (None: the engine analyzes the fault after the
    /// report is written). Analysis has no side effect to guard, so writing its outcome with
    /// the report is the same history for one write fewer: a report no policy matches is
    /// closed `no_policy` in the write that records it; one whose patch plans at once is
    /// written on its way to `patching` (or `testing`, for an empty plan).
    pub async fn first_look(&self, report: &Report, source: Source) -> Option<Opening> {
        let matched = self
            .engine
            .parts
            .policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches_any(&report.app, &report.kind, &report.labels, source);
        if !matched {
            let closing = steps(
                FaultState::Detected,
                vec![no_policy(&report.app, &report.kind)],
            )
            .ok()?;
            return Some(Opening::Steps(closing, Box::new(|_| {})));
        }
        self.engine.look_ahead(report, source).await
    }

    /// Logs, counts and announces `steps` that someone else wrote for `fault` (the intake,
    /// closing an unmatched report), as the engine does for its own.
    pub fn announce_written(&self, fault: &Fault, steps: &[(FaultState, String)]) {
        let _span = tracing::info_span!("fault", id = %fault.id).entered();
        announce_steps(&self.engine.parts.events, fault, steps);
    }

    /// True when the dispatcher answers within `within`: it is running and not blocked (for
    /// example on a worker pool where every worker is stuck).
    pub async fn alive(&self, within: Duration) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.queue.send(Work::Ping(reply)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, answer).await, Ok(Ok(())))
    }
}

struct Engine {
    parts: EngineParts,
    /// The engine's own queue, for wake-ups it schedules (approval expiry).
    queue: mpsc::UnboundedSender<Work>,
    in_flight: Mutex<InFlight>,
    workers: Arc<Semaphore>,
    /// Policy snapshots known to be in the store, by hash (see [`Engine::keep_policy`]).
    policies: Mutex<HashMap<String, Arc<Policy>>>,
    /// HTTP verification probes, shared by faults verifying the same URL at once.
    probes: HttpProbes,
}

/// The faults being driven. One is driven by one task at a time; a request to drive it that
/// comes meanwhile (an approval written while the task reads the fault) is not dropped but
/// remembered, and the fault is driven again, read afresh, once the task is done: else the
/// task could have read the fault just before the change, and nothing would act on it.
#[derive(Default)]
struct InFlight {
    /// Fault id -> whether it is to be driven again.
    driving: HashMap<String, bool>,
}

impl InFlight {
    /// Whether to start driving `id` now (else it is driven again after the current task).
    fn start(&mut self, id: &str) -> bool {
        match self.driving.get_mut(id) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.driving.insert(id.to_owned(), false);
                true
            }
        }
    }

    /// The task driving `id` is done: whether to drive it again.
    fn finish(&mut self, id: &str) -> bool {
        self.driving.remove(id).unwrap_or(false)
    }
}

/// Starts the engine's dispatcher and enqueues every open fault (crash recovery).
pub fn start(parts: EngineParts) -> Result<EngineHandle, StoreError> {
    let open = parts.store.open_fault_ids()?;
    let (queue, mut receiver) = mpsc::unbounded_channel::<Work>();
    let engine = Arc::new(Engine {
        queue: queue.clone(),
        workers: Arc::new(Semaphore::new(parts.workers)),
        probes: HttpProbes::new(parts.http.clone()),
        parts,
        in_flight: Mutex::new(InFlight::default()),
        policies: Mutex::new(HashMap::new()),
    });
    if !open.is_empty() {
        tracing::info!(message = "Resuming open faults.", count = open.len());
    }
    for id in open {
        let _ = queue.send(Work::Drive(id, None));
    }
    let handle = Arc::clone(&engine);
    tokio::spawn(async move {
        while let Some(work) = receiver.recv().await {
            let (id, written) = match work {
                Work::Drive(id, written) => (id, written),
                Work::Ping(reply) => {
                    let _ = reply.send(());
                    continue;
                }
            };
            if !engine.lock_in_flight().start(&id) {
                continue;
            }
            let Ok(permit) = Arc::clone(&engine.workers).acquire_owned().await else {
                break;
            };
            let engine = Arc::clone(&engine);
            let span = tracing::info_span!("fault", id = %id);
            tokio::spawn(
                async move {
                    engine.drive(&id, written.map(|fault| *fault)).await;
                    drop(permit);
                    if engine.lock_in_flight().finish(&id) {
                        let _ = engine.queue.send(Work::Drive(id, None));
                    }
                }
                .instrument(span),
            );
        }
    });
    Ok(EngineHandle {
        queue,
        engine: handle,
    })
}

/// Logs and counts every step written, and announces where the fault ended up.
fn announce_steps(events: &Events, fault: &Fault, steps: &[(FaultState, String)]) {
    let Some(((_, detail), passed)) = steps.split_last() else {
        return;
    };
    for (state, detail) in steps {
        tracing::info!(message = "Fault transition.", to = state.name(), %detail);
    }
    for (state, _) in passed {
        crate::core::metrics::metrics().inc("phoenix_transitions_total", &[("to", state.name())]);
    }
    announce(events, fault, detail);
}

/// Pushes the transitions people wait for: an approval request, and a fault's end; and
/// counts every transition.
fn announce(events: &Events, fault: &Fault, detail: &str) {
    let metrics = crate::core::metrics::metrics();
    metrics.inc("phoenix_transitions_total", &[("to", fault.state.name())]);
    if fault.state.is_terminal() {
        match fault.state.reason() {
            Some(reason) => metrics.inc(
                "phoenix_faults_closed_total",
                &[("state", fault.state.name()), ("reason", reason.as_str())],
            ),
            None => metrics.inc(
                "phoenix_faults_closed_total",
                &[("state", fault.state.name())],
            ),
        }
    }
    if fault.state == FaultState::Healed {
        let approved = fault
            .run
            .as_ref()
            .and_then(|r| r.approval.as_ref())
            .is_some_and(|a| a.granted());
        metrics.inc(
            "phoenix_healed_total",
            &[("approved", if approved { "true" } else { "false" })],
        );
        let seconds = Timestamp::now().0.saturating_sub(fault.first_seen.0) as f64 / 1000.0;
        metrics.observe("phoenix_time_to_heal_seconds", seconds);
    }
    // Building an event (its line and data) was ~3% of phoenix's CPU under a report load.
    if !events.listened_to() {
        return;
    }
    if fault.state == FaultState::AwaitingApproval
        && let Some(run) = &fault.run
        && let Some(request) = &run.approval
    {
        let summary = format!(
            "phoenix: approval needed for fault {} ({} {}): patch {}@{} plans [{}]; {}; expires {}",
            fault.id,
            fault.app,
            fault.kind,
            run.patch_name,
            run.patch_version,
            run.plan
                .iter()
                .map(|a| a.describe())
                .collect::<Vec<_>>()
                .join(", "),
            request.reason,
            request.expires_at
        );
        let data = serde_json::json!({
            "fault_id": fault.id, "app": fault.app, "kind": fault.kind, "reason": request.reason,
            "expires_at": request.expires_at, "patch": run.patch_name, "version": run.patch_version,
            "plan": run.plan,
        });
        events.publish("approval_requested", summary, data);
    } else if fault.state.is_terminal() {
        let state = match fault.state.reason() {
            Some(reason) => format!("failed ({reason})"),
            None => fault.state.name().to_owned(),
        };
        let summary = format!(
            "phoenix: fault {} ({} {}) {state}: {detail}",
            fault.id, fault.app, fault.kind
        );
        let data = serde_json::json!({
            "fault_id": fault.id, "app": fault.app, "kind": fault.kind, "state": fault.state.name(),
            "reason": fault.state.reason(), "detail": detail,
        });
        events.publish("fault_closed", summary, data);
    }
}

/// The event that closes a fault no policy matches, with its history detail.
fn no_policy(app: &str, kind: &str) -> (Event, String) {
    let detail = format!("no policy matches app `{app}` kind `{kind}`");
    (Event::Fail(FailReason::NoPolicy), detail)
}

/// The history entries `events` add to a fault in state `from`. A fault still in `detected` is
/// being analyzed: its `analyzing` entry ("picked up") goes first, written with the analysis'
/// outcome, since analysis has no side effect to guard.
fn steps(
    mut from: FaultState,
    events: Vec<(Event, String)>,
) -> Result<Vec<(FaultState, String)>, IllegalTransition> {
    let mut steps = Vec::with_capacity(events.len() + 1);
    let resolving = events.first().map(|(e, _)| *e) == Some(Event::ResolvedExternally);
    if from == FaultState::Detected && !resolving {
        let analyzing = machine::next(from, Event::Begin)?;
        steps.push((analyzing, "picked up".to_string()));
        from = analyzing;
    }
    for (event, detail) in events {
        from = machine::next(from, event)?;
        steps.push((from, detail));
    }
    Ok(steps)
}

/// The history detail of the move from `patching` to `testing` once all `total` actions ran.
fn plan_applied(total: usize) -> String {
    format!("plan applied ({total} of {total} actions)")
}

/// A patch run's outcome: its plan or why the patch failed; Err(text) when the run itself broke
/// (it panicked, or its task was lost).
type PlanOutcome = Result<Result<Vec<Action>, RunError>, String>;

/// Counts and times one patch run.
fn count_sandbox_run(started: std::time::Instant, outcome: &PlanOutcome) {
    let metrics = crate::core::metrics::metrics();
    metrics.observe(
        "phoenix_sandbox_run_seconds",
        started.elapsed().as_secs_f64(),
    );
    let code = match outcome {
        Ok(Ok(_)) => "ok",
        Ok(Err(error)) => error.code(),
        Err(_) => "panic",
    };
    metrics.inc("phoenix_sandbox_runs_total", &[("outcome", code)]);
}

/// The plan of a run, if it ran and the policy's capabilities allow it; else the verdict.
fn checked_plan(
    prepared: &Prepared,
    outcome: PlanOutcome,
    effects: &Effects,
) -> Result<Vec<Action>, Verdict> {
    let record = &prepared.record;
    let (name, version) = (&record.name, &record.version);
    let plan = match outcome {
        Ok(Ok(plan)) => plan,
        Ok(Err(error)) => {
            let detail = format!("patch {name}@{version}: {error}");
            return Err(Verdict::fail(FailReason::SandboxError, detail));
        }
        Err(broke) => {
            let detail = format!("patch {name}@{version}: sandbox task failed: {broke}");
            return Err(Verdict::fail(FailReason::SandboxError, detail));
        }
    };
    // phoenix's own files and API first: no policy allows them, and nobody is asked to
    // approve a plan that reaches them (each action is checked again when it runs).
    if let Some((index, error)) = effects.reaching_phoenix(&plan) {
        let detail =
            format!("the plan of {name}@{version} reaches phoenix itself: action {index}: {error}");
        return Err(Verdict::fail(FailReason::CapabilityDenied, detail));
    }
    let policy = &prepared.policy;
    if let Err(denied) = plan::check(&plan, &policy.capabilities, effects.work_dir()) {
        let detail = format!(
            "policy `{}` denies the plan of {name}@{version}: {denied}",
            policy.name
        );
        return Err(Verdict::fail(FailReason::CapabilityDenied, detail));
    }
    Ok(plan)
}

/// The breakers a run of `policy` answers to: the global one and the policy's own.
fn breaker_names(policy: &Policy) -> [String; 2] {
    ["global".to_string(), format!("policy:{}", policy.name)]
}

/// The policy and registered patch version that analyze a fault.
struct Prepared {
    policy: Arc<Policy>,
    policy_hash: String,
    record: crate::core::record::PatchRecord,
}

/// What analysis concluded, before anything is written.
enum Verdict {
    /// Transitions to write as they are (a failure, or a run that waits for a person), after
    /// the change that records the run.
    Write(Vec<(Event, String)>, FaultChange),
    /// A run that goes ahead unless the app's rate limit holds it (decided in the write that
    /// counts it, see [`Engine::counted_run`]).
    GoAhead(Box<Proposal>),
}

impl Verdict {
    fn fail(reason: FailReason, detail: String) -> Verdict {
        Verdict::Write(vec![(Event::Fail(reason), detail)], Box::new(|_| {}))
    }
}

/// A breaker that changed position when fed an outcome: its name and the change.
type BreakerChange = Option<(String, Change)>;

/// What `analyzing` decided, short of whether a person must approve it first.
struct Proposal {
    attempt: u32,
    /// The history detail of the plan (policy, patch, plan).
    detail: String,
    /// The approval request to make if the run must wait, but for its reason.
    request: ApprovalRequest,
    /// The run, without an approval request.
    run: Run,
}

impl Proposal {
    /// The transitions, and the change that records the run, when it must wait for a person
    /// because of `reason` (None: it goes ahead).
    fn outcome(self, reason: Option<String>) -> (Vec<(Event, String)>, impl FnOnce(&mut Fault)) {
        let mut run = self.run;
        let events = match reason {
            Some(reason) => {
                let detail = format!("{}; awaiting approval: {reason}", self.detail);
                run.approval = Some(ApprovalRequest {
                    reason,
                    ..self.request
                });
                vec![(
                    Event::PlanReady {
                        needs_approval: true,
                    },
                    detail,
                )]
            }
            None if run.plan.is_empty() => vec![
                (
                    Event::PlanReady {
                        needs_approval: false,
                    },
                    self.detail,
                ),
                // Nothing to apply: no side effect separates patching from testing.
                (Event::Applied, plan_applied(0)),
            ],
            None => vec![(
                Event::PlanReady {
                    needs_approval: false,
                },
                self.detail,
            )],
        };
        let attempt = self.attempt;
        (events, move |f: &mut Fault| {
            f.attempts = attempt;
            f.run = Some(run);
        })
    }
}

impl Engine {
    /// Stores `policy` under `hash` (its `content_hash`), once per policy version, for the run
    /// about to start with it; returns the hash.
    async fn keep_policy(&self, policy: &Arc<Policy>, hash: &str) -> Result<String, EngineError> {
        if self.lock_policies().contains_key(hash) {
            return Ok(hash.to_owned());
        }
        let (_, json) = crate::core::policy::content_hash(policy);
        self.parts.store.put_policy_snapshot(hash, json).await?;
        self.lock_policies()
            .insert(hash.to_owned(), Arc::clone(policy));
        Ok(hash.to_owned())
    }

    /// The policy `run` started with: inline in runs recorded before policies were stored by
    /// hash, else the stored snapshot (kept in memory after the first read). None if missing.
    fn policy_of(&self, run: &Run) -> Result<Option<Arc<Policy>>, EngineError> {
        if let Some(inline) = &run.policy_snapshot {
            return Ok(Some(Arc::new(inline.clone())));
        }
        if let Some(known) = self.lock_policies().get(&run.policy_hash) {
            return Ok(Some(Arc::clone(known)));
        }
        let Some(stored) = self.parts.store.policy_snapshot(&run.policy_hash)? else {
            return Ok(None);
        };
        let stored = Arc::new(stored);
        self.lock_policies()
            .insert(run.policy_hash.clone(), Arc::clone(&stored));
        Ok(Some(stored))
    }

    async fn policy_missing(&self, fault: &Fault, run: &Run) -> Result<Fault, EngineError> {
        let detail = format!(
            "the snapshot of policy `{}` this run started with ({}) is missing from the store",
            run.policy, run.policy_hash
        );
        self.fail(fault, FailReason::Interrupted, detail).await
    }

    fn lock_policies(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Policy>>> {
        self.policies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // The set stays consistent even if a holder panicked: recover it.
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drives one fault until it is terminal or waits on a human. Store failures are retried
    /// with backoff for a while; after that the fault is left for the next start.
    async fn drive(&self, id: &str, written: Option<Fault>) {
        let mut failures = 0u32;
        // The fault as the last write stored it; read again after anything else.
        let mut known = written;
        loop {
            let fault = match known.take() {
                Some(fault) => fault,
                None => match self.parts.store.fault(id) {
                    Ok(Some(fault)) => fault,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::error!(message = "Cannot read fault.", %error);
                        return;
                    }
                },
            };
            if fault.state.is_terminal() {
                return;
            }
            // The source says the fault is over and nothing has been applied yet: close it
            // instead of remediating a system that already recovered.
            if fault.resolved_at.is_some()
                && matches!(
                    fault.state,
                    FaultState::Detected | FaultState::Analyzing | FaultState::AwaitingApproval
                )
            {
                let detail = "the source reported the fault resolved before any action; closed without acting";
                match self
                    .transition(&fault, Event::ResolvedExternally, detail.into(), |_| {})
                    .await
                {
                    Ok(_) | Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                    Err(error) => {
                        tracing::error!(message = "Cannot close resolved fault.", %error);
                        return;
                    }
                }
            }
            if fault.state == FaultState::AwaitingApproval {
                match self.decide_approval(&fault).await {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                    Err(error) => {
                        tracing::error!(message = "Cannot act on an approval.", %error);
                        return;
                    }
                }
            }
            match self.step(fault).await {
                Ok(next) => {
                    failures = 0;
                    known = Some(next);
                }
                Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                Err(error) => {
                    failures += 1;
                    tracing::error!(message = "Fault step failed; will retry.", %error, failures);
                    if failures >= 5 {
                        tracing::error!(message = "Giving up on fault until the next start.", %error);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(failures)).await;
                }
            }
        }
    }

    /// Asks the global breaker, then the policy's, whether `fault` may be healed now. Returns
    /// why not, or None.
    async fn admit(&self, fault: &str, policy: &Policy) -> Result<Option<String>, EngineError> {
        let now = Timestamp::now();
        let [global, own] = breaker_names(policy);
        let checks = [
            (global, self.parts.global_breaker.clone()),
            (own, policy.breaker.clone()),
        ];
        for (name, config) in checks {
            // A closed breaker (the usual case) admits without changing: no write, no flush.
            if self.breaker_closed(&name)? {
                continue;
            }
            let id = fault.to_owned();
            let admission = self
                .parts
                .store
                .update_breaker(&name, move |b| b.admit(&id, now, &config))
                .await?;
            if let Admission::Refused(why) = admission {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// Feeds one attempt's outcome to the global and the policy's breaker (one write); logs and
    /// announces a change.
    async fn record_outcome(&self, fault: &Fault, policy: &Policy, succeeded: bool) {
        let (names, feed) = self.outcome_feed(fault, policy, succeeded);
        match self.parts.store.update_breakers(names, feed).await {
            Ok(changes) => self.announce_breaker_changes(changes),
            Err(error) => {
                tracing::error!(message = "Cannot record a breaker outcome.", fault = %fault.id, %error)
            }
        }
    }

    /// The breakers an attempt of `fault` under `policy` feeds (the global one and the
    /// policy's), and the update that records its outcome in each; the update returns a change
    /// of position, if any.
    fn outcome_feed(
        &self,
        fault: &Fault,
        policy: &Policy,
        succeeded: bool,
    ) -> (
        Vec<String>,
        impl FnMut(&str, &mut Breaker) -> BreakerChange + use<>,
    ) {
        let now = Timestamp::now();
        let global = self.parts.global_breaker.clone();
        let own = policy.breaker.clone();
        let names = breaker_names(policy).to_vec();
        let id = fault.id.clone();
        let feed = move |name: &str, b: &mut Breaker| {
            let config = if name == "global" { &global } else { &own };
            let before = b.position;
            b.record(&id, succeeded, now, config);
            (before != b.position)
                .then(|| b.changes.last().cloned().map(|c| (name.to_owned(), c)))
                .flatten()
        };
        (names, feed)
    }

    /// Logs and announces the breakers that changed position.
    fn announce_breaker_changes(&self, changes: Vec<BreakerChange>) {
        for (name, change) in changes.into_iter().flatten() {
            tracing::warn!(message = "Circuit breaker changed.", breaker = %name, to = ?change.to, reason = %change.reason);
            let summary = format!(
                "phoenix: breaker `{name}` is now {:?}: {}",
                change.to, change.reason
            );
            let data = serde_json::json!({ "breaker": name, "change": change });
            self.parts.events.publish("breaker_changed", summary, data);
        }
    }

    /// Awaiting approval: act on a decision or an expiry; otherwise sleep until the expiry (the
    /// engine itself enforces it) and let a decision wake the fault sooner. Returns whether the
    /// fault moved on.
    async fn decide_approval(&self, fault: &Fault) -> Result<bool, EngineError> {
        let Some(request) = fault.run.as_ref().and_then(|run| run.approval.clone()) else {
            let detail = "awaiting approval without a request".into();
            self.fail(fault, FailReason::Interrupted, detail).await?;
            return Ok(true);
        };
        if let Some(rejection) = request.rejected_by() {
            let detail = format!("rejected by {}", rejection.by);
            self.fail(fault, FailReason::Rejected, detail).await?;
        } else if request.granted() {
            let by: Vec<&str> = request
                .decisions
                .iter()
                .filter(|d| d.approve)
                .map(|d| d.by.as_str())
                .collect();
            let detail = format!("approved by {}", by.join(", "));
            self.transition(fault, Event::Approved, detail, |_| {})
                .await?;
            if let Some(run) = &fault.run {
                self.parts
                    .store
                    .mark_first_use_approved(&run.patch_name, &run.patch_hash)
                    .await?;
            }
        } else if request.expired(Timestamp::now()) {
            let detail = format!(
                "nobody decided before the request expired at {}",
                request.expires_at
            );
            self.fail(fault, FailReason::ApprovalExpired, detail)
                .await?;
        } else {
            let wait =
                Duration::from_millis(request.expires_at.0.saturating_sub(Timestamp::now().0));
            let (queue, id) = (self.queue.clone(), fault.id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = queue.send(Work::Drive(id, None));
            });
            return Ok(false);
        }
        Ok(true)
    }

    /// One step: the I/O the current state calls for, then the transition it leads to.
    async fn step(&self, fault: Fault) -> Result<Fault, EngineError> {
        match fault.state {
            FaultState::Detected | FaultState::Analyzing => self.analyze(fault).await,
            FaultState::Patching => self.apply(fault).await,
            FaultState::Testing => self.test(fault).await,
            FaultState::AwaitingApproval
            | FaultState::Healed
            | FaultState::Failed(_)
            | FaultState::Resolved => Ok(fault),
        }
    }

    /// Writes the transition `event` of `fault` (compare-and-swap on its sequence) and returns
    /// the fault as stored.
    async fn transition<F>(
        &self,
        fault: &Fault,
        event: Event,
        detail: String,
        change: F,
    ) -> Result<Fault, EngineError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
    {
        self.transitions(fault, vec![(event, detail)], change).await
    }

    /// Writes consecutive transitions that no side effect separates in one write (each still
    /// gets its history entry; see [`steps`]).
    async fn transitions<F>(
        &self,
        fault: &Fault,
        events: Vec<(Event, String)>,
        change: F,
    ) -> Result<Fault, EngineError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
    {
        let steps = steps(fault.state, events)?;
        let fault = self
            .parts
            .store
            .append_steps(&fault.id, fault.seq, steps.clone(), change)
            .await?;
        announce_steps(&self.parts.events, &fault, &steps);
        Ok(fault)
    }

    async fn fail(
        &self,
        fault: &Fault,
        reason: FailReason,
        detail: String,
    ) -> Result<Fault, EngineError> {
        self.transition(fault, Event::Fail(reason), detail, |_| {})
            .await
    }

    /// Analyzing: find the policy and patch, run the patch in the sandbox, check the plan, ask
    /// the breakers; then write where that led.
    async fn analyze(&self, fault: Fault) -> Result<Fault, EngineError> {
        let verdict = match self.prepare(&fault)? {
            Err(verdict) => verdict,
            Ok(prepared) => {
                let outcome = match self.plan_inline(&prepared, &fault) {
                    Ok(outcome) => Ok(outcome),
                    Err(view) => self.plan_elsewhere(&prepared, view).await?,
                };
                match outcome
                    .and_then(|outcome| checked_plan(&prepared, outcome, &self.parts.effects))
                {
                    Err(verdict) => verdict,
                    Ok(plan) => {
                        let refusal = self.admit(&fault.id, &prepared.policy).await?;
                        self.propose(&fault, prepared, plan, refusal).await?
                    }
                }
            }
        };
        match verdict {
            Verdict::Write(events, change) => self.transitions(&fault, events, change).await,
            Verdict::GoAhead(proposal) => {
                let counted = self.counted_run(proposal, fault.state, &fault.app, fault.id.clone());
                let (stored, steps) = self
                    .parts
                    .store
                    .append_counting_run(&fault.id, fault.seq, &fault.app, counted)
                    .await?;
                announce_steps(&self.parts.events, &stored, &steps);
                Ok(stored)
            }
        }
    }

    /// What analysis of a new fault for `report` would write, worked out before the report is
    /// written, so that the report's write carries it (None: leave the analysis to the engine,
    /// after the write). Only what needs no fault id is done here: a patch that must run on a
    /// blocking thread, or a breaker that is not closed (its admission is a write naming the
    /// fault), leaves it to the engine; so does a fault that must wait for a worker. A report
    /// that turns out to repeat an open fault does not use it (checking first would cost every
    /// new report a store read to save repeats an analysis of a few microseconds).
    async fn look_ahead(&self, report: &Report, source: Source) -> Option<Opening> {
        if self.workers.available_permits() == 0 {
            // It will wait for a worker: analyze it when one takes it, with the policies (and
            // breakers) of then; until then a source may still call it off (resolved).
            return None;
        }
        let fault = Fault::new(String::new(), report.clone(), source, Timestamp::now());
        let verdict = match self.prepare(&fault).ok()? {
            Err(verdict) => verdict,
            Ok(prepared) => {
                let Ok(outcome) = self.plan_inline(&prepared, &fault) else {
                    return None; // the engine runs it elsewhere, after the write
                };
                match checked_plan(&prepared, outcome, &self.parts.effects) {
                    Err(verdict) => verdict,
                    Ok(plan) => {
                        if !self.breakers_closed(&prepared.policy).ok()? {
                            return None;
                        }
                        self.propose(&fault, prepared, plan, None).await.ok()?
                    }
                }
            }
        };
        Some(match verdict {
            Verdict::Write(events, change) => {
                Opening::Steps(steps(FaultState::Detected, events).ok()?, change)
            }
            Verdict::GoAhead(proposal) => Opening::CountingRun(self.counted_run(
                proposal,
                FaultState::Detected,
                &report.app,
                format!("a new fault of app `{}`", report.app),
            )),
        })
    }

    /// The policy and the patch version that analyze `fault`, or the verdict when there is
    /// none to run.
    fn prepare(&self, fault: &Fault) -> Result<Result<Prepared, Verdict>, EngineError> {
        let policy = {
            let policies = self
                .parts
                .policies
                .read()
                .unwrap_or_else(|p| p.into_inner());
            policies
                .find_versioned(fault)
                .map(|(policy, hash)| (Arc::clone(policy), hash.to_owned()))
        };
        let Some((policy, policy_hash)) = policy else {
            let (event, detail) = no_policy(&fault.app, &fault.kind);
            return Ok(Err(Verdict::Write(vec![(event, detail)], Box::new(|_| {}))));
        };
        let store = &self.parts.store;
        let name = &policy.patch.name;
        let hash = match &policy.patch.hash {
            Some(pinned) => Some(pinned.clone()),
            None => store.active_patch_hash(name)?,
        };
        let record = match &hash {
            Some(hash) => store.patch(name, hash)?,
            None => None,
        };
        let Some(record) = record else {
            let detail = format!(
                "policy `{}` names patch `{name}`{}, which is not registered",
                policy.name,
                hash.map(|h| format!(" at {h}")).unwrap_or_default()
            );
            return Ok(Err(Verdict::fail(FailReason::PatchUnavailable, detail)));
        };
        if !record.checks_passed() {
            let detail = format!(
                "patch {name}@{} failed its static checks: {}",
                record.version,
                record.check_problems.join("; ")
            );
            return Ok(Err(Verdict::fail(FailReason::PatchRejected, detail)));
        }
        if !record.tests_passed() {
            let failing: Vec<String> = record
                .tests
                .iter()
                .filter(|t| !t.passed)
                .map(|t| format!("`{}`: {}", t.name, t.detail))
                .collect();
            let detail = format!(
                "patch {name}@{} failed contract tests: {}",
                record.version,
                failing.join("; ")
            );
            return Ok(Err(Verdict::fail(FailReason::ContractFailed, detail)));
        }
        Ok(Ok(Prepared {
            policy,
            policy_hash,
            record,
        }))
    }

    /// Runs the patch on this thread when the sandbox can bound the run tightly (most patches
    /// plan in microseconds); else, and for a run over that bound, gives the fault's view back
    /// to run it elsewhere.
    fn plan_inline(
        &self,
        prepared: &Prepared,
        fault: &Fault,
    ) -> Result<PlanOutcome, Arc<FaultView>> {
        let record = &prepared.record;
        let started = std::time::Instant::now();
        let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.parts
                .sandbox
                .run_inline(&record.name, &record.hash, Arc::new(view_of(fault)))
        }));
        let outcome = match inline {
            Ok(Inline::Done(outcome)) => Ok(outcome),
            Ok(Inline::Elsewhere(view)) => return Err(view),
            Err(_) => Err("the run panicked".to_string()),
        };
        count_sandbox_run(started, &outcome);
        Ok(outcome)
    }

    /// Runs the patch on a blocking thread (see [`Engine::plan_inline`]).
    async fn plan_elsewhere(
        &self,
        prepared: &Prepared,
        view: Arc<FaultView>,
    ) -> Result<Result<PlanOutcome, Verdict>, EngineError> {
        let record = &prepared.record;
        let Some(wasm) = self.parts.store.patch_module(&record.hash)? else {
            let detail = format!(
                "module of patch {}@{} is missing from the store",
                record.name, record.version
            );
            return Ok(Err(Verdict::fail(FailReason::PatchUnavailable, detail)));
        };
        let started = std::time::Instant::now();
        let (patch_name, patch_hash) = (record.name.clone(), record.hash.clone());
        let sandbox = Arc::clone(&self.parts.sandbox);
        let outcome =
            tokio::task::spawn_blocking(move || sandbox.run(&patch_name, &patch_hash, &wasm, view))
                .await
                .map_err(|join| join.to_string());
        count_sandbox_run(started, &outcome);
        Ok(Ok(outcome))
    }

    /// Whether the global and the policy's breaker are both closed (read, not written).
    fn breakers_closed(&self, policy: &Policy) -> Result<bool, EngineError> {
        for name in breaker_names(policy) {
            if !self.breaker_closed(&name)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn breaker_closed(&self, name: &str) -> Result<bool, EngineError> {
        Ok(self
            .parts
            .store
            .breaker_position(name)?
            .is_none_or(|position| position == Position::Closed))
    }

    /// The run `plan` proposes for `fault`: it waits for a person when the policy or the patch
    /// asks for one, or when a breaker refused it (`refusal`) and the policy says to wait.
    async fn propose(
        &self,
        fault: &Fault,
        prepared: Prepared,
        plan: Vec<Action>,
        refusal: Option<String>,
    ) -> Result<Verdict, EngineError> {
        let Prepared {
            policy,
            policy_hash,
            record,
        } = prepared;
        let name = &record.name;
        let attempt = fault.attempts + 1;
        let summary: Vec<String> = plan.iter().map(|a| a.describe()).collect();
        let now = Timestamp::now();
        let mut reason = policy.approval_reason(record.confidence);
        if record.source == Provenance::Api && !record.first_use_approved {
            reason = Some(format!(
                "patch {name}@{} was uploaded over the API; its first use needs approval",
                record.version
            ));
        }
        if let Some(refusal) = refusal {
            match policy.breaker.when_open {
                WhenOpen::Fail => return Ok(Verdict::fail(FailReason::BreakerOpen, refusal)),
                WhenOpen::Approval => reason = Some(refusal),
            }
        }
        let proposal = Proposal {
            attempt,
            detail: format!(
                "attempt {attempt}: policy `{}`, patch {name}@{} ({}), plan: [{}]",
                policy.name,
                record.version,
                &record.hash[..12],
                summary.join(", ")
            ),
            request: ApprovalRequest {
                reason: String::new(),
                requested_at: now,
                expires_at: Timestamp(now.0 + policy.approval.expires.as_millis() as u64),
                quorum: policy.approval.quorum,
                patch_author: record.author.clone(),
                author_may_approve: policy.approval.author_may_approve,
                patch_confidence: record.confidence,
                decisions: Vec::new(),
            },
            run: Run {
                attempt,
                policy: policy.name.clone(),
                patch_name: record.name.clone(),
                patch_version: record.version.clone(),
                patch_hash: record.hash.clone(),
                plan,
                policy_hash: self.keep_policy(&policy, &policy_hash).await?,
                policy_snapshot: None,
                approval: None,
                actions_started: 0,
                actions_done: 0,
                undo: Vec::new(),
            },
        };
        Ok(match reason {
            Some(reason) => {
                let (events, change) = proposal.outcome(Some(reason));
                Verdict::Write(events, Box::new(change))
            }
            None => Verdict::GoAhead(Box::new(proposal)),
        })
    }

    /// The write's decision for a run that goes ahead unless its app's rate limit holds it
    /// (only runs that go ahead without a person count): the count and the transition from
    /// `from` are one write. `subject` names the fault in an error.
    fn counted_run(
        &self,
        proposal: Box<Proposal>,
        from: FaultState,
        app: &str,
        subject: String,
    ) -> CountedSteps {
        let (limit, app) = (self.parts.rate_limit.clone(), app.to_owned());
        Box::new(move |runs: &mut crate::core::window::WindowCounts| {
            let now = Timestamp::now();
            runs.prune(now, limit.window);
            let wait = if runs.attempts() >= u64::from(limit.runs_per_app) {
                Some(format!(
                    "app `{app}` already had {} healing runs in the last {}",
                    runs.attempts(),
                    humantime::format_duration(limit.window)
                ))
            } else {
                runs.add(now, limit.window, true);
                None
            };
            let (events, change) = proposal.outcome(wait);
            let steps = steps(from, events).map_err(|illegal| StoreError::Corrupt {
                key: subject,
                message: illegal.to_string(),
            })?;
            let change: FaultChange = Box::new(change);
            Ok((steps, change))
        })
    }

    /// Patching: apply the remaining actions. Before each one, its undo (e.g. a backup of the
    /// file it replaces) is prepared and recorded with the "started" entry; after it, "done".
    /// A failed action rolls back everything this attempt started.
    async fn apply(&self, fault: Fault) -> Result<Fault, EngineError> {
        let Some(run) = fault.run.clone() else {
            return self
                .fail(
                    &fault,
                    FailReason::Interrupted,
                    "no recorded run to apply".into(),
                )
                .await;
        };
        let total = run.plan.len();
        if run.actions_started > run.actions_done {
            let mut detail = format!(
                "resumed after a restart: action {} of {total} may have run, so it is not repeated; verifying instead",
                run.actions_started
            );
            // The action stopped part-way may have left a temporary file (a write's).
            let interrupted = run.undo.get(run.actions_started as usize - 1);
            if let Some(Some(undo)) = interrupted {
                match self.parts.effects.clear_leftover(undo).await {
                    Ok(None) => {}
                    Ok(Some(removed)) => detail.push_str(&format!(" ({removed})")),
                    Err(error) => {
                        tracing::warn!(message = "Could not remove an interrupted write's temporary file.", fault = %fault.id, %error);
                        detail.push_str(&format!(" ({error})"));
                    }
                }
            }
            return self
                .transition(&fault, Event::Applied, detail, |_| {})
                .await;
        }
        let Some(policy) = self.policy_of(&run)? else {
            return self.policy_missing(&fault, &run).await;
        };
        let env = FaultEnv::of(&fault);
        let caps = &policy.capabilities;
        let mut fault = fault;
        for index in run.actions_done as usize..total {
            let action = &run.plan[index];
            let number = index as u32 + 1;
            let backup = self
                .parts
                .backup_dir
                .join(&fault.id)
                .join(format!("{}-{number}", run.attempt));
            let undo = match self.parts.effects.prepare_undo(action, caps, &backup).await {
                Ok(undo) => undo,
                Err(error) => {
                    let detail = format!(
                        "action {number}/{total} ({}) cannot start: {error}",
                        action.describe()
                    );
                    return self
                        .fail_with_rollback(&fault, error.fail_reason(), detail)
                        .await;
                }
            };
            let started = format!("action {number}/{total} started: {}", action.describe());
            let recorded = undo.clone();
            fault = self
                .parts
                .store
                .append(
                    &fault.id,
                    fault.seq,
                    FaultState::Patching,
                    started,
                    move |f| {
                        if let Some(run) = f.run.as_mut() {
                            run.actions_started = number;
                            run.undo.truncate(index);
                            run.undo.push(recorded);
                        }
                    },
                )
                .await?;
            let applied = (self.parts.effects)
                .apply(action, caps, &env, undo.as_ref())
                .await;
            let kind = serde_json::to_value(action)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let outcome = if applied.is_ok() { "ok" } else { "error" };
            crate::core::metrics::metrics().inc(
                "phoenix_effects_total",
                &[("kind", &kind), ("outcome", outcome)],
            );
            match applied {
                Ok(outcome) => {
                    let done = format!("action {number}/{total} done: {outcome}");
                    // The audit entry is written with the `done` step: one write per action.
                    let audited = Audited {
                        actor: "phoenix".into(),
                        action: "action_applied".into(),
                        target: fault.id.clone(),
                        detail: format!("{} ({}): {outcome}", action.describe(), run.policy),
                    };
                    let record_done = move |f: &mut Fault| {
                        if let Some(run) = f.run.as_mut() {
                            run.actions_done = number;
                        }
                    };
                    // After the last action nothing happens before testing: the move to
                    // testing is the same write.
                    let last = index + 1 == total;
                    let to_testing = if last {
                        steps(
                            FaultState::Patching,
                            vec![(Event::Applied, plan_applied(total))],
                        )?
                    } else {
                        Vec::new()
                    };
                    let mut written = vec![(FaultState::Patching, done)];
                    written.extend(to_testing.iter().cloned());
                    fault = self
                        .parts
                        .store
                        .append_steps_audited(&fault.id, fault.seq, written, record_done, audited)
                        .await?;
                    if last {
                        announce_steps(&self.parts.events, &fault, &to_testing);
                        return Ok(fault);
                    }
                }
                Err(error) => {
                    self.record_outcome(&fault, &policy, false).await;
                    let detail = format!(
                        "action {number}/{total} ({}) failed: {error}",
                        action.describe()
                    );
                    return self
                        .fail_with_rollback(&fault, error.fail_reason(), detail)
                        .await;
                }
            }
        }
        self.transition(&fault, Event::Applied, plan_applied(total), |_| {})
            .await
    }

    /// Undoes, newest first, every action of the current attempt that may have run. Returns the
    /// outcome (None when there was nothing to undo) and a one-line account.
    async fn roll_back(&self, fault: &Fault) -> (Option<Rollback>, String) {
        let Some(run) = &fault.run else {
            return (None, "nothing to roll back".into());
        };
        let started = (run.actions_started as usize).min(run.plan.len());
        if started == 0 {
            return (None, "nothing was applied".into());
        }
        let mut lines = Vec::new();
        let mut failed = false;
        for index in (0..started).rev() {
            let action = run.plan[index].describe();
            match run.undo.get(index).cloned().flatten() {
                None => lines.push(format!("{action}: cannot be undone")),
                Some(undo) => match self.parts.effects.undo(&undo).await {
                    Ok(done) => lines.push(done),
                    Err(error) => {
                        failed = true;
                        lines.push(format!("{action}: UNDO FAILED: {error}"));
                    }
                },
            }
        }
        let outcome = if failed {
            Rollback::RollbackFailed
        } else {
            Rollback::RolledBack
        };
        let label = if failed {
            "rollback_failed"
        } else {
            "rolled_back"
        };
        crate::core::metrics::metrics().inc("phoenix_rollbacks_total", &[("outcome", label)]);
        let account = lines.join("; ");
        if let Err(error) = self
            .parts
            .store
            .audit("phoenix", "rollback", &fault.id, account.clone())
            .await
        {
            tracing::error!(message = "Cannot write the audit log.", %error);
        }
        if failed {
            tracing::error!(message = "Rollback failed; the system may be left changed.", account = %account);
        } else {
            tracing::info!(message = "Rolled back.", account = %account);
        }
        (Some(outcome), account)
    }

    /// Rolls back the current attempt, then fails the fault with `reason`, recording both.
    async fn fail_with_rollback(
        &self,
        fault: &Fault,
        reason: FailReason,
        detail: String,
    ) -> Result<Fault, EngineError> {
        let (outcome, account) = self.roll_back(fault).await;
        let label = match outcome {
            Some(Rollback::RolledBack) => "rolled_back",
            Some(Rollback::RollbackFailed) => "rollback_failed",
            None => "nothing to roll back",
        };
        let detail = format!("{detail}; {label}: {account}");
        self.transition(fault, Event::Fail(reason), detail, move |f| {
            f.rollback = outcome
        })
        .await
    }

    /// Testing: probe until healthy or the deadline. On failure the attempt's changes are rolled
    /// back, then the patch is retried if the policy allows, else the fault fails.
    async fn test(&self, fault: Fault) -> Result<Fault, EngineError> {
        let Some(run) = fault.run.clone() else {
            return self
                .fail(
                    &fault,
                    FailReason::Interrupted,
                    "no recorded run to verify".into(),
                )
                .await;
        };
        let Some(policy) = self.policy_of(&run)? else {
            return self.policy_missing(&fault, &run).await;
        };
        let policy = &*policy;
        let env = FaultEnv::of(&fault);
        let outcome = if policy.verify.supervised {
            let (within, interval) = (policy.verify.within, policy.verify.interval);
            let supervisor = &self.parts.supervisor;
            supervisor
                .verify(&fault.app, within, interval, &self.parts.http)
                .await
                .map(|()| 1)
                .map_err(|last| crate::engine::verify::Unhealthy {
                    within,
                    attempts: 1,
                    last,
                })
        } else {
            verify(
                &policy.verify,
                &self.probes,
                &self.parts.work_dir,
                Some(&env),
            )
            .await
        };
        match outcome {
            Ok(probes) => {
                let detail = format!("verification passed after {probes} probe(s)");
                // The transition and the success it feeds to the breakers: one atomic write.
                let verified = steps(fault.state, vec![(Event::Verified, detail)])?;
                let (names, feed) = self.outcome_feed(&fault, policy, true);
                let (healed, changes) = self
                    .parts
                    .store
                    .append_steps_feeding_breakers(
                        &fault.id,
                        fault.seq,
                        verified.clone(),
                        |_| {},
                        names,
                        feed,
                    )
                    .await?;
                announce_steps(&self.parts.events, &healed, &verified);
                self.announce_breaker_changes(changes);
                Ok(healed)
            }
            Err(unhealthy) if fault.attempts < policy.max_attempts => {
                self.record_outcome(&fault, policy, false).await;
                let (outcome, account) = self.roll_back(&fault).await;
                let detail = format!(
                    "attempt {} of {}: {unhealthy}; {}; retrying",
                    fault.attempts,
                    policy.max_attempts,
                    match outcome {
                        Some(Rollback::RollbackFailed) => format!("rollback_failed: {account}"),
                        Some(Rollback::RolledBack) => format!("rolled_back: {account}"),
                        None => account,
                    }
                );
                self.transition(&fault, Event::Retry, detail, move |f| {
                    f.run = None;
                    f.rollback = outcome;
                })
                .await
            }
            Err(unhealthy) => {
                self.record_outcome(&fault, policy, false).await;
                self.fail_with_rollback(&fault, FailReason::VerifyFailed, unhealthy.to_string())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn a_request_to_drive_a_fault_being_driven_drives_it_again_afterwards() {
        let mut in_flight = InFlight::default();
        assert!(in_flight.start("a"));
        assert!(in_flight.start("b"));
        // An approval of `a` is written while its task runs: not now, but after.
        assert!(!in_flight.start("a"));
        assert!(!in_flight.start("a"));
        assert!(in_flight.finish("a"), "the request made meanwhile is kept");
        assert!(!in_flight.finish("b"), "nothing asked for `b` meanwhile");
        // The second drive of `a` starts afresh, and nothing more follows it.
        assert!(in_flight.start("a"));
        assert!(!in_flight.finish("a"));
    }
}
