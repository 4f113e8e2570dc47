//! Analysis: one pipeline from a fault to what its run will be. The policy and the registered
//! patch version are found (`prepare`), the patch runs in the sandbox (inline when it plans in
//! microseconds, else on a blocking thread), the plan is checked against phoenix's containment and
//! the policy's capabilities, and the outcome is proposed (approval, rate limit, breakers). The
//! engine's first look at a new report (`look_ahead`) and the analysis of a stored fault
//! (`analyze`) go through it alike. Analysis has no side effect: it may run again after a crash.

use std::sync::Arc;

use crate::core::breaker::WhenOpen;
use crate::core::fault::{
    ApprovalRequest, BudgetHold, FailReason, Fault, FaultState, Report, Run, Source, Timestamp,
};
use crate::core::machine::{self, Event, IllegalTransition};
use crate::core::plan;
use crate::core::plan::Action;
use crate::core::policy::Policy;
use crate::core::record::Provenance;
use crate::effects::Effects;
use crate::patch::view_of;
use crate::sandbox::Inline;
use crate::sandbox::{FaultView, RunError, Sandbox};
use crate::store::{CountedSteps, FaultChange, Opening, StoreError};

use super::announce::announce_steps;
use super::apply::plan_applied;
use super::{Engine, EngineError};

/// The event that closes a fault no policy matches, with its history detail.
pub(super) fn no_policy(app: &str, kind: &str) -> (Event, String) {
    let detail = format!("no policy matches app `{app}` kind `{kind}`");
    (Event::Fail(FailReason::NoPolicy), detail)
}

/// The history entries `events` add to a fault in state `from`. A fault still in `detected` is
/// being analyzed: its `analyzing` entry ("picked up") goes first, written with the analysis'
/// outcome, since analysis has no side effect to guard.
pub(super) fn steps(
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

/// Runs patch `name` at version `hash` (its module `wasm`) on `view` on a blocking thread: how
/// a run too slow for the engine's own thread is made, and how a shadow run is (nothing of a
/// plan is ever applied here).
pub(crate) async fn run_elsewhere(
    sandbox: &Arc<Sandbox>,
    name: &str,
    hash: &str,
    wasm: Vec<u8>,
    view: Arc<FaultView>,
) -> PlanOutcome {
    let (name, hash, sandbox) = (name.to_owned(), hash.to_owned(), Arc::clone(sandbox));
    tokio::task::spawn_blocking(move || sandbox.run(&name, &hash, &wasm, view))
        .await
        .map_err(|join| join.to_string())
}

/// A patch run's outcome: its plan or why the patch failed; Err(text) when the run itself broke
/// (it panicked, or its task was lost).
pub(super) type PlanOutcome = Result<Result<Vec<Action>, RunError>, String>;

/// Counts and times one patch run.
pub(super) fn count_sandbox_run(started: std::time::Instant, outcome: &PlanOutcome) {
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
pub(super) fn checked_plan(
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

/// The policy and registered patch version that analyze a fault.
pub(super) struct Prepared {
    policy: Arc<Policy>,
    policy_hash: String,
    record: crate::core::record::PatchRecord,
}

/// What analysis concluded, before anything is written.
pub(super) enum Verdict {
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

/// What `analyzing` decided, short of whether a person must approve it first.
pub(super) struct Proposal {
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
            None if run.plan.is_empty() => {
                // Nothing to apply, so nothing to count against a fleet budget.
                run.budget = None;
                vec![
                    (
                        Event::PlanReady {
                            needs_approval: false,
                        },
                        self.detail,
                    ),
                    // Nothing to apply: no side effect separates patching from testing.
                    (Event::Applied, plan_applied(0)),
                ]
            }
            None if run.budget.is_some() => {
                let detail = format!(
                    "{}; awaiting a lease of fleet budget {}",
                    self.detail,
                    run.budget
                        .as_ref()
                        .map(|b| b.name.as_str())
                        .unwrap_or_default()
                );
                vec![(Event::AwaitBudget, detail)]
            }
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
    /// Analyzing: find the policy and patch, run the patch in the sandbox, check the plan, ask
    /// the breakers; then write where that led.
    pub(super) async fn analyze(&self, fault: Fault) -> Result<Fault, EngineError> {
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
    pub(super) async fn look_ahead(&self, report: &Report, source: Source) -> Option<Opening> {
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
    pub(super) fn prepare(&self, fault: &Fault) -> Result<Result<Prepared, Verdict>, EngineError> {
        let policy = {
            let policies = self
                .parts
                .policies
                .read()
                .unwrap_or_else(|p| p.into_inner());
            policies
                .find_versioned(fault.subject())
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
    pub(super) fn plan_inline(
        &self,
        prepared: &Prepared,
        fault: &Fault,
    ) -> Result<PlanOutcome, Arc<FaultView>> {
        let record = &prepared.record;
        // The attempt this analysis plans (see `propose`).
        let attempt = fault.attempts + 1;
        let started = std::time::Instant::now();
        let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.parts.sandbox.run_inline(
                &record.name,
                &record.hash,
                Arc::new(view_of(fault, attempt)),
            )
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
    pub(super) async fn plan_elsewhere(
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
        let outcome =
            run_elsewhere(&self.parts.sandbox, &record.name, &record.hash, wasm, view).await;
        count_sandbox_run(started, &outcome);
        Ok(Ok(outcome))
    }

    /// The run `plan` proposes for `fault`: it waits for a person when the policy or the patch
    /// asks for one, or when a breaker refused it (`refusal`) and the policy says to wait.
    pub(super) async fn propose(
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
                budget: policy.fleet.as_ref().map(|budget| BudgetHold {
                    name: budget.name(&policy.name, &fault.app),
                    max_concurrent: budget.max_concurrent,
                    since: now,
                    lease: None,
                }),
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
    pub(super) fn counted_run(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fault::Timestamp;

    fn proposal(plan: Vec<Action>) -> Proposal {
        Proposal {
            attempt: 2,
            detail: "attempt 2: the plan".into(),
            request: ApprovalRequest {
                reason: String::new(),
                requested_at: Timestamp(0),
                expires_at: Timestamp(1),
                quorum: 1,
                patch_author: "ops".into(),
                author_may_approve: true,
                patch_confidence: 0.9,
                decisions: Vec::new(),
            },
            run: Run {
                attempt: 2,
                policy: "p".into(),
                patch_name: "x".into(),
                patch_version: "1".into(),
                patch_hash: "h".into(),
                plan,
                policy_hash: String::new(),
                policy_snapshot: None,
                actions_started: 0,
                actions_done: 0,
                approval: None,
                undo: Vec::new(),
                budget: None,
            },
        }
    }

    fn exec() -> Action {
        Action::Exec {
            arg: None,
            command: "c".into(),
        }
    }

    /// The states a fault in `from` reaches by `events`, as the engine writes them.
    fn states(from: FaultState, events: Vec<(Event, String)>) -> Vec<FaultState> {
        steps(from, events)
            .unwrap()
            .into_iter()
            .map(|(state, _)| state)
            .collect()
    }

    #[test]
    fn a_fault_still_detected_is_picked_up_in_the_write_of_its_analysis() {
        let ready = || {
            vec![(
                Event::PlanReady {
                    needs_approval: false,
                },
                "plan".to_string(),
            )]
        };
        assert_eq!(
            states(FaultState::Detected, ready()),
            [FaultState::Analyzing, FaultState::Patching]
        );
        assert_eq!(
            states(FaultState::Analyzing, ready()),
            [FaultState::Patching]
        );
        // A source calling the fault off: no analysis is recorded for it.
        let resolved = vec![(Event::ResolvedExternally, "resolved".to_string())];
        assert_eq!(
            states(FaultState::Detected, resolved),
            [FaultState::Resolved]
        );
        // What the table forbids is an error, never a write.
        assert!(steps(FaultState::Healed, vec![(Event::Applied, String::new())]).is_err());
    }

    #[test]
    fn a_proposal_goes_ahead_waits_for_a_person_or_skips_an_empty_plan() {
        let (events, record) = proposal(vec![exec()]).outcome(None);
        assert_eq!(
            events.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [Event::PlanReady {
                needs_approval: false
            }]
        );
        let mut fault = Fault::new(
            "F".into(),
            crate::core::fault::Report::sample("web", "k", &[]),
            crate::core::fault::Source::Api,
            Timestamp(0),
        );
        record(&mut fault);
        assert_eq!(fault.attempts, 2);
        assert!(fault.run.as_ref().is_some_and(|r| r.approval.is_none()));

        let (events, record) = proposal(vec![exec()]).outcome(Some("production".into()));
        assert_eq!(
            events[0],
            (
                Event::PlanReady {
                    needs_approval: true
                },
                "attempt 2: the plan; awaiting approval: production".to_string()
            )
        );
        record(&mut fault);
        let request = fault.run.unwrap().approval.unwrap();
        assert_eq!(request.reason, "production");

        let (events, _) = proposal(Vec::new()).outcome(None);
        assert_eq!(
            events,
            [
                (
                    Event::PlanReady {
                        needs_approval: false
                    },
                    "attempt 2: the plan".to_string()
                ),
                (Event::Applied, plan_applied(0)),
            ],
            "an empty plan goes straight to testing"
        );
    }

    #[test]
    fn a_report_no_policy_matches_fails_naming_what_it_was() {
        let (event, detail) = no_policy("web", "oom");
        assert_eq!(event, Event::Fail(FailReason::NoPolicy));
        assert_eq!(detail, "no policy matches app `web` kind `oom`");
    }

    /// How analysis ends for a patch run's `outcome` under a policy allowing only command `ok`,
    /// in a work dir whose `policies/` is phoenix's own: the failure's reason and detail, or
    /// the plan.
    fn checked(outcome: PlanOutcome) -> Result<Vec<Action>, (FailReason, String)> {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("policies")).unwrap();
        let (policies, patches, data) = (
            base.join("policies"),
            base.join("patches"),
            base.join("data"),
        );
        let containment = Arc::new(crate::effects::containment::Containment::new(
            &crate::effects::containment::OwnGround {
                config_file: None,
                policies_dir: &policies,
                patches_dir: &patches,
                data_dir: &data,
                listen: "127.0.0.1:7070".parse().unwrap(),
            },
        ));
        let effects = Effects::new(
            base.clone(),
            crate::effects::supervisor::Supervisor::default(),
            containment,
        )
        .unwrap();
        let policy: Policy = toml::from_str(
            "name = \"p\"\n[match]\napp = \"web\"\n[patch]\nname = \"x\"\n[capabilities]\nwritable_dirs = [\"policies\"]\n[capabilities.commands.ok]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let prepared = Prepared {
            policy: Arc::new(policy),
            policy_hash: "ph".into(),
            record: crate::core::record::PatchRecord {
                schema: 1,
                name: "x".into(),
                version: "1".into(),
                hash: "h".into(),
                description: String::new(),
                author: "ops".into(),
                claimed_author: None,
                confidence: 0.9,
                source: crate::core::record::Provenance::Dir,
                registered_at: Timestamp(0),
                check_problems: Vec::new(),
                tests: Vec::new(),
                first_use_approved: false,
                built_from: None,
            },
        };
        checked_plan(&prepared, outcome, &effects).map_err(|verdict| match verdict {
            Verdict::Write(events, _) => match events.into_iter().next() {
                Some((Event::Fail(reason), detail)) => (reason, detail),
                other => panic!("not a failure: {other:?}"),
            },
            Verdict::GoAhead(_) => panic!("not a failure"),
        })
    }

    #[test]
    fn a_plan_is_used_only_when_the_run_made_one_and_it_stays_within_bounds() {
        let ok = Action::Exec {
            arg: None,
            command: "ok".into(),
        };
        assert_eq!(checked(Ok(Ok(vec![ok.clone()]))), Ok(vec![ok]));
        let (reason, detail) = checked(Ok(Err(RunError::OutOfFuel))).unwrap_err();
        assert_eq!(reason, FailReason::SandboxError);
        assert!(detail.starts_with("patch x@1: out_of_fuel"), "{detail}");
        let (reason, detail) = checked(Err("panicked".into())).unwrap_err();
        assert_eq!(reason, FailReason::SandboxError);
        assert!(detail.contains("sandbox task failed: panicked"), "{detail}");
        let undeclared = Action::Exec {
            arg: None,
            command: "rm".into(),
        };
        let (reason, detail) = checked(Ok(Ok(vec![undeclared]))).unwrap_err();
        assert_eq!(reason, FailReason::CapabilityDenied);
        assert!(detail.contains("command `rm` is not declared"), "{detail}");
        // Allowed by the policy, but phoenix's own: refused before the policy is asked.
        let own = Action::WriteFile {
            path: "policies/evil.toml".into(),
            content: String::new(),
        };
        let (reason, detail) = checked(Ok(Ok(vec![own]))).unwrap_err();
        assert_eq!(reason, FailReason::CapabilityDenied);
        assert!(detail.contains("reaches phoenix itself"), "{detail}");
    }
}
