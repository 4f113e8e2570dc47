//! The fault transition table: one statig state machine, pure.
//!
//! **Invariant:** no I/O here, and no entry/exit actions (statig re-runs entry actions when a
//! machine is restored, so they would fire again after every restart). The engine asks
//! [`next`] where an event leads, writes that durably, and only then performs the side effect
//! the new state authorizes.

use statig::prelude::*;

use crate::core::fault::{FailReason, FaultState};

/// What happened to a fault, as far as its state is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The engine picked the fault up.
    Begin,
    /// A policy, a usable patch and an allowed plan were found.
    PlanReady {
        /// The policy (or the patch's provenance) demands a human decision first.
        needs_approval: bool,
    },
    /// A human approved the pending plan.
    Approved,
    /// The plan may go ahead (planned, or approved), but its policy has a fleet budget: a lease
    /// must be held first.
    AwaitBudget,
    /// A lease of the policy's fleet budget is held.
    BudgetGranted,
    /// The lease was lost before any action started (it expired while phoenix was down):
    /// wait for one again.
    LeaseLost,
    /// Every action of the plan was applied (or, after a restart, may have been).
    Applied,
    /// The verification probe reported healthy.
    Verified,
    /// Verification failed, and the policy allows another attempt.
    Retry,
    /// The fault cannot be healed; the reason says why.
    Fail(FailReason),
    /// A healed fault happened again soon after (a crash loop): it is the same fault, reopened.
    Recur,
    /// The source reported the fault over (e.g. its alert resolved). Only closes a fault that
    /// has not started acting: once patching began, the run finishes and is verified.
    ResolvedExternally,
}

/// Why an event was refused: it makes no sense in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} is not allowed in state `{}`", from.name())]
pub struct IllegalTransition {
    pub from: FaultState,
    pub event: Event,
}

/// The machine's shared storage. Empty: all data lives in the state.
#[derive(Debug, Default)]
struct FaultMachine;

#[state_machine(
    initial = "State::detected()",
    state(derive(Debug, Clone, Copy, PartialEq, Eq))
)]
impl FaultMachine {
    #[state]
    fn detected(event: &Event) -> Outcome<State> {
        match event {
            Event::Begin => Transition(State::analyzing()),
            Event::ResolvedExternally => Transition(State::resolved()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn analyzing(event: &Event) -> Outcome<State> {
        match event {
            Event::PlanReady {
                needs_approval: true,
            } => Transition(State::awaiting_approval()),
            Event::PlanReady {
                needs_approval: false,
            } => Transition(State::patching()),
            Event::AwaitBudget => Transition(State::awaiting_budget()),
            Event::ResolvedExternally => Transition(State::resolved()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn awaiting_approval(event: &Event) -> Outcome<State> {
        match event {
            Event::Approved => Transition(State::patching()),
            Event::AwaitBudget => Transition(State::awaiting_budget()),
            Event::ResolvedExternally => Transition(State::resolved()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn awaiting_budget(event: &Event) -> Outcome<State> {
        match event {
            Event::BudgetGranted => Transition(State::patching()),
            Event::ResolvedExternally => Transition(State::resolved()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn patching(event: &Event) -> Outcome<State> {
        match event {
            Event::Applied => Transition(State::testing()),
            Event::LeaseLost => Transition(State::awaiting_budget()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn testing(event: &Event) -> Outcome<State> {
        match event {
            Event::Verified => Transition(State::healed()),
            Event::Retry => Transition(State::analyzing()),
            Event::Fail(reason) => Transition(State::failed(*reason)),
            _ => Handled,
        }
    }

    #[state]
    fn healed(event: &Event) -> Outcome<State> {
        match event {
            Event::Recur => Transition(State::detected()),
            _ => Handled,
        }
    }

    #[state]
    fn resolved(event: &Event) -> Outcome<State> {
        let _ = event;
        Handled
    }

    #[state]
    fn failed(reason: &mut FailReason, event: &Event) -> Outcome<State> {
        let _ = (reason, event);
        Handled
    }
}

fn to_machine(state: FaultState) -> State {
    match state {
        FaultState::Detected => State::detected(),
        FaultState::Analyzing => State::analyzing(),
        FaultState::AwaitingApproval => State::awaiting_approval(),
        FaultState::AwaitingBudget => State::awaiting_budget(),
        FaultState::Patching => State::patching(),
        FaultState::Testing => State::testing(),
        FaultState::Healed => State::healed(),
        FaultState::Failed(reason) => State::failed(reason),
        FaultState::Resolved => State::resolved(),
    }
}

fn from_machine(state: &State) -> FaultState {
    match state {
        State::Detected {} => FaultState::Detected,
        State::Analyzing {} => FaultState::Analyzing,
        State::AwaitingApproval {} => FaultState::AwaitingApproval,
        State::AwaitingBudget {} => FaultState::AwaitingBudget,
        State::Patching {} => FaultState::Patching,
        State::Testing {} => FaultState::Testing,
        State::Healed {} => FaultState::Healed,
        State::Failed { reason } => FaultState::Failed(*reason),
        State::Resolved {} => FaultState::Resolved,
    }
}

/// Where `event` takes a fault in state `from`. Every state change is a transition to a different
/// state, so an event that leaves the state unchanged is illegal.
pub fn next(from: FaultState, event: Event) -> Result<FaultState, IllegalTransition> {
    let mut machine = FaultMachine.uninitialized_state_machine();
    *machine.state_mut() = to_machine(from);
    let mut machine = machine.init();
    machine.handle(&event);
    let to = from_machine(machine.state());
    if to == from {
        Err(IllegalTransition { from, event })
    } else {
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaultState::*;

    const ALL_STATES: [FaultState; 9] = [
        Detected,
        Analyzing,
        AwaitingApproval,
        AwaitingBudget,
        Patching,
        Testing,
        Healed,
        Failed(FailReason::NoPolicy),
        Resolved,
    ];

    fn all_events() -> Vec<Event> {
        vec![
            Event::Begin,
            Event::PlanReady {
                needs_approval: false,
            },
            Event::PlanReady {
                needs_approval: true,
            },
            Event::Approved,
            Event::AwaitBudget,
            Event::BudgetGranted,
            Event::LeaseLost,
            Event::Applied,
            Event::Verified,
            Event::Retry,
            Event::Fail(FailReason::SandboxError),
            Event::ResolvedExternally,
            Event::Recur,
        ]
    }

    /// The whole table: every (state, event) pair that is legal, and where it leads.
    fn legal(from: FaultState, event: Event) -> Option<FaultState> {
        let fail = |e: Event| match e {
            Event::Fail(reason) => Some(Failed(reason)),
            _ => None,
        };
        match (from, event) {
            (Detected, Event::Begin) => Some(Analyzing),
            (
                Analyzing,
                Event::PlanReady {
                    needs_approval: false,
                },
            ) => Some(Patching),
            (
                Analyzing,
                Event::PlanReady {
                    needs_approval: true,
                },
            ) => Some(AwaitingApproval),
            (AwaitingApproval, Event::Approved) => Some(Patching),
            (Analyzing | AwaitingApproval, Event::AwaitBudget) => Some(AwaitingBudget),
            (AwaitingBudget, Event::BudgetGranted) => Some(Patching),
            (Patching, Event::LeaseLost) => Some(AwaitingBudget),
            (Patching, Event::Applied) => Some(Testing),
            (Testing, Event::Verified) => Some(Healed),
            (Testing, Event::Retry) => Some(Analyzing),
            (
                Detected | Analyzing | AwaitingApproval | AwaitingBudget,
                Event::ResolvedExternally,
            ) => Some(Resolved),
            (_, Event::ResolvedExternally) => None,
            (Healed, Event::Recur) => Some(Detected),
            (_, Event::Recur) => None,
            (Healed | Failed(_) | Resolved, _) => None,
            (_, e) => fail(e),
        }
    }

    #[test]
    fn every_state_event_pair_follows_the_table() {
        for from in ALL_STATES {
            for event in all_events() {
                let got = next(from, event);
                match legal(from, event) {
                    Some(to) => assert_eq!(got, Ok(to), "{from:?} + {event:?}"),
                    None => assert_eq!(
                        got,
                        Err(IllegalTransition { from, event }),
                        "{from:?} + {event:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn the_happy_path_visits_every_healing_state() {
        let mut state = Detected;
        let mut seen = vec![state];
        for event in [
            Event::Begin,
            Event::PlanReady {
                needs_approval: false,
            },
            Event::Applied,
            Event::Verified,
        ] {
            state = next(state, event).unwrap();
            seen.push(state);
        }
        assert_eq!(seen, vec![Detected, Analyzing, Patching, Testing, Healed]);
    }

    #[test]
    fn a_budgeted_plan_waits_for_a_lease_before_patching_and_after_an_approval() {
        let planned = next(Analyzing, Event::AwaitBudget).unwrap();
        assert_eq!(planned, AwaitingBudget);
        assert_eq!(
            next(AwaitingApproval, Event::AwaitBudget),
            Ok(AwaitingBudget)
        );
        assert_eq!(next(AwaitingBudget, Event::BudgetGranted), Ok(Patching));
        // Nothing but a lease moves it on to patching; a lost lease moves it back.
        assert!(next(AwaitingBudget, Event::Applied).is_err());
        assert_eq!(next(Patching, Event::LeaseLost), Ok(AwaitingBudget));
        assert_eq!(
            next(AwaitingBudget, Event::Fail(FailReason::BudgetUnavailable)),
            Ok(Failed(FailReason::BudgetUnavailable))
        );
    }

    #[test]
    fn terminal_states_accept_nothing_but_a_recurrence_of_healed() {
        for event in all_events() {
            assert!(next(Resolved, event).is_err());
            if event != Event::Recur {
                assert!(next(Healed, event).is_err());
            }
            assert!(next(Failed(FailReason::VerifyFailed), event).is_err());
        }
    }

    #[test]
    fn failure_keeps_its_reason() {
        assert_eq!(
            next(Patching, Event::Fail(FailReason::ApplyFailed)),
            Ok(Failed(FailReason::ApplyFailed))
        );
    }

    #[test]
    fn illegal_transitions_explain_themselves() {
        let err = next(Detected, Event::Verified).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event Verified is not allowed in state `detected`"
        );
    }
}
