//! The daemon's side of the fleet's shared decisions: a decision made on another host is
//! applied here to the faults waiting on the same plan (policy and patch hash), as that person,
//! through the same checks as a local decision (author rule, quorum of distinct people).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::core::fault::{Decision, FaultState};
use crate::engine::operations::Operations;
use crate::fleet::{Fleet, SharedDecision};
use crate::store::Store;

/// Applies the fleet's shared decisions for as long as phoenix runs (the watch is made again
/// after NATS comes back).
pub(super) fn spawn_shared_decisions(fleet: Arc<Fleet>, store: Arc<Store>, operations: Operations) {
    tokio::spawn(async move {
        loop {
            match fleet.decisions_stream().await {
                Ok(decisions) => {
                    let mut decisions = std::pin::pin!(decisions);
                    while let Some(decision) = decisions.next().await {
                        if decision.host != fleet.host() {
                            apply(&store, &operations, &decision).await;
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(message = "Cannot watch the fleet's decisions.", %error);
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Applies `shared` to every fault here that waits on its plan and that its author has not
/// decided on yet.
async fn apply(store: &Store, operations: &Operations, shared: &SharedDecision) {
    let Ok(open) = store.open_fault_ids() else {
        return;
    };
    for id in open {
        let Ok(Some(fault)) = store.fault(&id) else {
            continue;
        };
        let waiting_on_it = fault.state == FaultState::AwaitingApproval
            && fault.run.as_ref().is_some_and(|run| {
                run.policy == shared.policy
                    && run.patch_hash == shared.patch_hash
                    && run
                        .approval
                        .as_ref()
                        .is_some_and(|a| a.decisions.iter().all(|d| d.by != shared.by))
            });
        if !waiting_on_it {
            continue;
        }
        let comment = if shared.comment.is_empty() {
            format!("decided on {} for the fleet", shared.host)
        } else {
            format!(
                "decided on {} for the fleet: {}",
                shared.host, shared.comment
            )
        };
        let decision = Decision {
            by: shared.by.clone(),
            approve: shared.approve,
            comment,
            at: shared.at,
        };
        match operations.decide(&id, decision).await {
            Ok(_) => {
                tracing::info!(message = "Fleet decision applied.", fault = %id, by = %shared.by, approve = shared.approve, from = %shared.host)
            }
            // The same checks as a local decision: an author approving their own patch where
            // the policy forbids it is refused here too.
            Err(error) => {
                tracing::warn!(message = "Fleet decision not applied.", fault = %id, by = %shared.by, %error)
            }
        }
    }
}
