//! Announcing what the engine wrote: every transition logged and counted, and the ones people
//! wait for (an approval request, a fault's end) pushed as events.

use crate::core::fault::{Fault, FaultState, Timestamp};
use crate::engine::events::Events;

/// Logs and counts every step written, and announces where the fault ended up.
pub(super) fn announce_steps(events: &Events, fault: &Fault, steps: &[(FaultState, String)]) {
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
pub(super) fn announce(events: &Events, fault: &Fault, detail: &str) {
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
            "fault_id": fault.id, "app": fault.app, "kind": fault.kind,
            "severity": fault.severity, "reason": request.reason,
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
            "severity": fault.severity, "reason": fault.state.reason(), "detail": detail,
            // Whether a person was asked (so a pager paged, and is told when it heals).
            "approval": fault.run.as_ref().is_some_and(|r| r.approval.is_some()),
        });
        events.publish("fault_closed", summary, data);
    }
}
