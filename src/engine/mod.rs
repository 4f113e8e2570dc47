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

mod admission;
mod analyze;
mod announce;
mod apply;
mod budget;
pub mod events;
pub mod operations;
pub mod verify;
pub mod webhooks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use crate::core::breaker::BreakerConfig;
use crate::core::fault::{FailReason, Fault, FaultState, Report, Run, Source, Timestamp};
use crate::core::machine::{Event, IllegalTransition};
use crate::core::policy::Policy;
use crate::core::policy::PolicySet;
use crate::effects::Effects;
use crate::engine::events::Events;
use crate::engine::verify::HttpProbes;
use crate::sandbox::Sandbox;
use crate::store::{Opening, Store, StoreError};

use analyze::{no_policy, steps};
use announce::announce_steps;

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
    /// The fleet, for policies with a blast-radius budget (None: this host stands alone).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
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

    /// Where a healed fault goes when it recurs (the machine's `Recur`): decided here, written
    /// by the store in the write that records the recurrence.
    pub fn recurrence(&self) -> Option<FaultState> {
        crate::core::machine::next(FaultState::Healed, crate::core::machine::Event::Recur).ok()
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
    /// Fleet leases held, by fault id (see `budget`).
    leases: Mutex<HashMap<String, budget::Held>>,
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
        leases: Mutex::new(HashMap::new()),
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
            // An inline policy that no longer reads is missing (the run cannot go on).
            return Ok(serde_json::from_value::<Policy>(inline.clone())
                .ok()
                .map(Arc::new));
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
                self.release_budget(&fault).await;
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
            // The waiting states: act on what the fault waits for, or leave it until woken.
            let waited = match fault.state {
                FaultState::AwaitingApproval => Some((
                    self.decide_approval(&fault).await,
                    "Cannot act on an approval.",
                )),
                FaultState::AwaitingBudget => Some((
                    self.await_budget(&fault).await,
                    "Cannot ask for a fleet lease.",
                )),
                _ => None,
            };
            if let Some((outcome, failure)) = waited {
                match outcome {
                    Ok(true) | Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                    Ok(false) => return,
                    Err(error) => {
                        tracing::error!(message = failure, %error);
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
            let budget = fault.run.as_ref().and_then(|r| r.budget.as_ref());
            if let Some(budget) = budget {
                // The plan may go ahead, within the fleet's budget: its wait starts now.
                let detail = format!("{detail}; awaiting a lease of fleet budget {}", budget.name);
                self.transition(fault, Event::AwaitBudget, detail, |f| {
                    if let Some(budget) = f.run.as_mut().and_then(|r| r.budget.as_mut()) {
                        budget.since = Timestamp::now();
                    }
                })
                .await?;
            } else {
                self.transition(fault, Event::Approved, detail, |_| {})
                    .await?;
            }
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
            | FaultState::AwaitingBudget
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
