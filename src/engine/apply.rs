//! Applying a plan: each action recorded as started before it runs and as done after, its undo
//! recorded with it; a failed action rolls back every action of the attempt, newest first.

use crate::core::fault::{FailReason, Fault, FaultState, Rollback};
use crate::core::machine::Event;
use crate::effects::FaultEnv;
use crate::store::Audited;

use super::analyze::steps;
use super::announce::announce_steps;
use super::{Engine, EngineError};

/// The history detail of the move from `patching` to `testing` once all `total` actions ran.
pub(super) fn plan_applied(total: usize) -> String {
    format!("plan applied ({total} of {total} actions)")
}

impl Engine {
    /// Patching: apply the remaining actions. Before each one, its undo (e.g. a backup of the
    /// file it replaces) is prepared and recorded with the "started" entry; after it, "done".
    /// A failed action rolls back everything this attempt started.
    pub(super) async fn apply(&self, fault: Fault) -> Result<Fault, EngineError> {
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
        // Nothing runs without the fleet budget's lease, when the policy has one.
        let (fault, go_on) = self.hold_budget(fault).await?;
        if !go_on {
            return Ok(fault);
        }
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
            let outcome = if applied.is_ok() { "ok" } else { "error" };
            crate::core::metrics::metrics().inc(
                "phoenix_effects_total",
                &[("kind", action.kind()), ("outcome", outcome)],
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
    pub(super) async fn roll_back(&self, fault: &Fault) -> (Option<Rollback>, String) {
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
    pub(super) async fn fail_with_rollback(
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
}
