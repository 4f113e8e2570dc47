//! Fleet budgets: a run whose policy has `[fleet] max_concurrent` waits in `awaiting_budget`
//! until it holds a lease (`crate::fleet`), keeps it renewed while it patches and tests, and
//! gives it back when the fault ends. Without a lease nothing is applied: a fault that cannot
//! get one (the budget is full, or NATS is out of reach) waits, then fails `budget_unavailable`
//! at its policy's `fleet.wait`. Faults of policies without a budget never come here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::fault::{BudgetHold, FailReason, Fault, Lease, Timestamp};
use crate::core::machine::Event;
use crate::fleet::{Fleet, Renewed};

use super::{Engine, EngineError, Work};

/// How often a waiting fault asks for a lease again (plus up to the same again at random, so a
/// fleet that waits for one budget does not ask in step).
const RETRY: Duration = Duration::from_millis(500);

/// A lease this process holds, renewed in the background until released.
pub(super) struct Held {
    budget: String,
    lease: Arc<Mutex<Lease>>,
    renewer: tokio::task::JoinHandle<()>,
}

/// What asking for a lease came to.
enum Asked {
    Granted(Lease),
    /// All slots held, or NATS out of reach (why, for the history).
    Refused(String),
}

impl Engine {
    /// Awaiting a budget: take a lease and move on to patching, or wait (the engine drives the
    /// fault again shortly) until the policy's deadline. Returns whether the fault moved on.
    pub(super) async fn await_budget(&self, fault: &Fault) -> Result<bool, EngineError> {
        // A lease still held from an earlier attempt of this fault is given back first.
        self.release_budget(fault).await;
        let Some(hold) = fault.run.as_ref().and_then(|r| r.budget.clone()) else {
            let detail = "awaiting a budget without one recorded".into();
            self.fail(fault, FailReason::Interrupted, detail).await?;
            return Ok(true);
        };
        let deadline = self.budget_deadline(fault, &hold)?;
        match self.ask(&hold, &fault.id).await {
            Asked::Granted(lease) => {
                let detail = format!(
                    "holds lease {} of fleet budget {} (at most {} at once), revision {}",
                    lease.key, hold.name, hold.max_concurrent, lease.revision
                );
                let recorded = lease.clone();
                let written = self
                    .transition(fault, Event::BudgetGranted, detail, move |f| {
                        if let Some(budget) = f.run.as_mut().and_then(|r| r.budget.as_mut()) {
                            budget.lease = Some(recorded);
                        }
                    })
                    .await;
                match written {
                    Ok(_) => self.keep(&fault.id, &hold.name, lease),
                    // Not ours to hold after all (the fault moved meanwhile): give it back.
                    Err(error) => {
                        self.give_back(&lease, &hold.name, &fault.id).await;
                        return Err(error);
                    }
                }
                Ok(true)
            }
            Asked::Refused(why) if Timestamp::now().0 >= deadline.0 => {
                let detail = format!(
                    "no lease of fleet budget {} (at most {} at once) before its deadline {deadline}: {why}",
                    hold.name, hold.max_concurrent
                );
                self.fail(fault, FailReason::BudgetUnavailable, detail)
                    .await?;
                Ok(true)
            }
            Asked::Refused(_) => {
                let jitter = Duration::from_millis(u64::from(rand_below(500)));
                let wait = (RETRY + jitter).min(Duration::from_millis(
                    deadline.0.saturating_sub(Timestamp::now().0),
                ));
                let (queue, id) = (self.queue.clone(), fault.id.clone());
                let fleet = self.parts.fleet.clone();
                tokio::spawn(async move {
                    // Ask again when a lease is given back anywhere, or on the timer (a lease
                    // that expires tells nobody).
                    match fleet {
                        Some(fleet) => {
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = fleet.released() => {}
                            }
                        }
                        None => tokio::time::sleep(wait).await,
                    }
                    let _ = queue.send(Work::Drive(id, None));
                });
                Ok(false)
            }
        }
    }

    /// Patching, before its first action runs: the lease must be held. After a restart the
    /// recorded one is renewed if it is still ours; else another is taken, or (with nothing
    /// applied yet) the fault goes back to waiting. Returns the fault, and whether to go on
    /// applying (false: it was moved, as written).
    pub(super) async fn hold_budget(&self, fault: Fault) -> Result<(Fault, bool), EngineError> {
        let Some(hold) = fault.run.as_ref().and_then(|r| r.budget.clone()) else {
            return Ok((fault, true));
        };
        if self.lock_leases().contains_key(&fault.id) {
            return Ok((fault, true));
        }
        let fleet = self.parts.fleet.clone();
        let renewed = match (&fleet, &hold.lease) {
            (Some(fleet), Some(lease)) => fleet.renew(&hold.name, lease, &fault.id).await.ok(),
            _ => None,
        };
        if let Some(Renewed::Held(lease)) = renewed {
            self.keep(&fault.id, &hold.name, lease);
            return Ok((fault, true));
        }
        let done = fault.run.as_ref().map_or(0, |r| r.actions_done);
        match self.ask(&hold, &fault.id).await {
            Asked::Granted(lease) => {
                self.keep(&fault.id, &hold.name, lease);
                Ok((fault, true))
            }
            Asked::Refused(why) if done == 0 => {
                let detail = format!(
                    "the lease of fleet budget {} was lost while phoenix was down and none is free ({why}); nothing applied yet, waiting again",
                    hold.name
                );
                let written = self
                    .transition(&fault, Event::LeaseLost, detail, |_| {})
                    .await?;
                Ok((written, false))
            }
            Asked::Refused(why) => {
                let detail = format!(
                    "the lease of fleet budget {} was lost while phoenix was down, with {done} action(s) applied, and none is free ({why})",
                    hold.name
                );
                let written = self
                    .fail_with_rollback(&fault, FailReason::BudgetUnavailable, detail)
                    .await?;
                Ok((written, false))
            }
        }
    }

    /// Gives back the lease `fault` holds, if any (its run ended).
    pub(super) async fn release_budget(&self, fault: &Fault) {
        let held = self.lock_leases().remove(&fault.id);
        if let Some(held) = held {
            held.renewer.abort();
            let lease = held.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
            tracing::info!(message = "Fleet lease released.", budget = %held.budget, key = %lease.key);
            self.give_back(&lease, &held.budget, &fault.id).await;
        }
    }

    /// When the fault stops waiting: `fleet.wait` after it started.
    fn budget_deadline(&self, fault: &Fault, hold: &BudgetHold) -> Result<Timestamp, EngineError> {
        let wait = fault
            .run
            .as_ref()
            .and_then(|run| self.policy_of(run).ok().flatten())
            .and_then(|policy| policy.fleet.as_ref().map(|b| b.wait))
            .unwrap_or(Duration::from_secs(600));
        Ok(Timestamp(hold.since.0 + wait.as_millis() as u64))
    }

    async fn ask(&self, hold: &BudgetHold, fault: &str) -> Asked {
        let Some(fleet) = &self.parts.fleet else {
            return Asked::Refused("this phoenix has no [fleet] configured".into());
        };
        let started = std::time::Instant::now();
        let asked = fleet.acquire(&hold.name, hold.max_concurrent, fault).await;
        let metrics = crate::core::metrics::metrics();
        metrics.observe(
            "phoenix_fleet_lease_seconds",
            started.elapsed().as_secs_f64(),
        );
        let outcome = match &asked {
            Ok(Some(_)) => "granted",
            Ok(None) => "full",
            Err(_) => "error",
        };
        metrics.inc("phoenix_fleet_leases_total", &[("outcome", outcome)]);
        match asked {
            Ok(Some(lease)) => Asked::Granted(lease),
            Ok(None) => Asked::Refused(format!("all {} held", hold.max_concurrent)),
            Err(error) => {
                tracing::warn!(message = "Cannot ask the fleet for a lease.", budget = %hold.name, %error);
                Asked::Refused(error.to_string())
            }
        }
    }

    async fn give_back(&self, lease: &Lease, budget: &str, fault: &str) {
        if let Some(fleet) = &self.parts.fleet
            && let Err(error) = fleet.release(lease, budget, fault).await
        {
            // It expires by itself within the lease time to live.
            tracing::warn!(message = "Cannot release a fleet lease; it will expire.", key = %lease.key, %error);
        }
    }

    /// Holds `lease` for `fault`: renewed every third of its time to live until released.
    fn keep(&self, fault: &str, budget: &str, lease: Lease) {
        let Some(fleet) = self.parts.fleet.clone() else {
            return;
        };
        let shared = Arc::new(Mutex::new(lease));
        let renewer = tokio::spawn(renew(
            fleet,
            budget.to_owned(),
            fault.to_owned(),
            Arc::clone(&shared),
        ));
        let previous = self.lock_leases().insert(
            fault.to_owned(),
            Held {
                budget: budget.to_owned(),
                lease: shared,
                renewer,
            },
        );
        if let Some(previous) = previous {
            previous.renewer.abort();
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Held>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Renews `lease` until aborted. A lost lease is logged loudly: the run in flight goes on (an
/// action cannot be taken back half-way), which is why the lease time to live must be longer
/// than a NATS outage phoenix should ride out.
async fn renew(fleet: Arc<Fleet>, budget: String, fault: String, lease: Arc<Mutex<Lease>>) {
    loop {
        tokio::time::sleep(fleet.renew_every()).await;
        let current = lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match fleet.renew(&budget, &current, &fault).await {
            Ok(Renewed::Held(renewed)) => {
                *lease.lock().unwrap_or_else(|p| p.into_inner()) = renewed;
            }
            Ok(Renewed::Lost) => {
                tracing::error!(message = "Fleet lease lost while in use: another host may now remediate with the same budget.", %budget, key = %current.key, %fault);
                return;
            }
            Err(error) => {
                tracing::warn!(message = "Cannot renew a fleet lease; retrying.", %budget, %error);
            }
        }
    }
}

/// A number below `n`, from the clock (jitter only: nothing depends on its quality).
fn rand_below(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % n.max(1)
}
