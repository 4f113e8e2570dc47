//! Approval requests over HTTP: the queue, one request in full (with a shadow run of another
//! version), and a person's decision. The decision itself is the engine's operation
//! ([`crate::engine::operations::Operations::decide`]): recorded, audited, announced, and the
//! engine woken.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::core::fault::{Decision, Fault, FaultState, Timestamp};
use crate::core::plan::Action;
use crate::core::record::TestResult;
use crate::engine::operations::RequestShadow;
use crate::http::AppState;
use crate::http::auth::Identity;
use crate::http::error::{ApiError, Input, JsonBody};
use crate::http::faults::FaultOut;
use crate::store::{Store, StoreError};

/// An approval request as the API shows it: the fault, the patch, the dry-run plan, the why.
#[derive(Debug, Serialize)]
pub struct ApprovalOut {
    fault_id: String,
    app: String,
    kind: String,
    message: Option<String>,
    reason: String,
    requested_at: Timestamp,
    expires_at: Timestamp,
    quorum: u32,
    decisions: Vec<Decision>,
    patch: PatchOut,
    /// What the patch planned (not executed yet).
    plan: Vec<Action>,
    policy: String,
}

#[derive(Debug, Serialize)]
struct PatchOut {
    name: String,
    version: String,
    hash: String,
    confidence: f64,
    /// Who is answerable for it: for an uploaded version, the token that uploaded it.
    author: String,
    /// What an uploaded version's manifest says of its author (a claim only).
    #[serde(skip_serializing_if = "Option::is_none")]
    claimed_author: Option<String>,
    tests: Vec<TestResult>,
}

/// `fault`'s approval request as the API shows it (None when it has none).
fn approval_out(store: &Store, fault: Fault) -> Result<Option<ApprovalOut>, StoreError> {
    let Some(run) = fault.run else {
        return Ok(None);
    };
    let Some(request) = run.approval else {
        return Ok(None);
    };
    let record = store.patch(&run.patch_name, &run.patch_hash)?;
    Ok(Some(ApprovalOut {
        fault_id: fault.id,
        app: fault.app,
        kind: fault.kind,
        message: fault.message,
        reason: request.reason,
        requested_at: request.requested_at,
        expires_at: request.expires_at,
        quorum: request.quorum,
        decisions: request.decisions,
        patch: PatchOut {
            name: run.patch_name,
            version: run.patch_version,
            hash: run.patch_hash,
            confidence: request.patch_confidence,
            author: request.patch_author,
            claimed_author: record.as_ref().and_then(|r| r.claimed_author.clone()),
            tests: record.map(|r| r.tests).unwrap_or_default(),
        },
        plan: run.plan,
        policy: run.policy,
    }))
}

#[derive(Debug, Serialize)]
pub struct ApprovalList {
    approvals: Vec<ApprovalOut>,
}

pub async fn list_approvals(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ApprovalList>, ApiError> {
    let mut approvals = Vec::new();
    for id in state.store.open_fault_ids()?.into_iter().rev() {
        if let Some(fault) = state.store.fault(&id)?
            && fault.state == FaultState::AwaitingApproval
            && let Some(out) = approval_out(&state.store, fault)?
        {
            approvals.push(out);
        }
    }
    Ok(Json(ApprovalList { approvals }))
}

/// A request in full: with its fault's history and a shadow run.
#[derive(Debug, Serialize)]
pub struct ApprovalDetail {
    approval: ApprovalOut,
    fault: FaultOut,
    /// The same fault through another version (null when there is none).
    shadow: Option<ShadowOut>,
}

/// A shadow run as the API shows it.
#[derive(Debug, Serialize)]
struct ShadowOut {
    against: Against,
    same: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Vec<Action>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Against {
    version: String,
    hash: String,
    role: &'static str,
}

impl From<RequestShadow> for ShadowOut {
    fn from(shadow: RequestShadow) -> ShadowOut {
        let (plan, error) = match shadow.outcome {
            Ok(plan) => (Some(plan), None),
            Err(error) => (None, Some(error)),
        };
        ShadowOut {
            against: Against {
                version: shadow.version,
                hash: shadow.hash,
                role: shadow.role,
            },
            same: shadow.same,
            plan,
            error,
        }
    }
}

/// One approval request with its fault's history and a shadow run: the same fault through the
/// patch's active version (or, when the request already uses it, the newest other usable
/// version), so a person sees what changes with this version.
pub async fn show_approval(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ApprovalDetail>, ApiError> {
    let fault = state
        .store
        .fault(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no fault {id}")))?;
    if fault.state != FaultState::AwaitingApproval {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_open_request",
            format!(
                "fault {id} is not awaiting approval (it is {}); its request was decided or has expired",
                fault.state.name()
            ),
        ));
    }
    let history = state.store.history(&id)?;
    let shadow = state.operations.shadow_request(&fault).await?;
    let approval = approval_out(&state.store, fault.clone())?
        .ok_or_else(|| ApiError::not_found(format!("fault {id} has no approval request")))?;
    Ok(Json(ApprovalDetail {
        approval,
        fault: FaultOut::new(fault, Some(history)),
        shadow: shadow.map(ShadowOut::from),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionIn {
    by: String,
    #[serde(default)]
    comment: String,
}

impl Input for DecisionIn {
    const INVALID: &'static str = "invalid_decision";
}

/// A decided request, as it stands now.
#[derive(Debug, Serialize)]
pub struct Decided {
    approval: Option<ApprovalOut>,
}

pub async fn approve(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    id: Path<String>,
    body: JsonBody<DecisionIn>,
) -> Result<Json<Decided>, ApiError> {
    decide(state, identity, id, body, true).await
}

pub async fn reject(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    id: Path<String>,
    body: JsonBody<DecisionIn>,
) -> Result<Json<Decided>, ApiError> {
    decide(state, identity, id, body, false).await
}

async fn decide(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<DecisionIn>,
    approve: bool,
) -> Result<Json<Decided>, ApiError> {
    // The body's `by` must name someone either way (a malformed request is refused the same with
    // and without tokens); with authentication on, the decision is the token holder's.
    if !crate::core::approval::is_actor_name(&input.by) {
        return Err(ApiError::bad_request(
            "invalid_decision",
            "`by` must name who decides (1-128 characters)",
        ));
    }
    let decision = Decision {
        by: identity.actor(&input.by),
        approve,
        comment: input.comment,
        at: Timestamp::now(),
    };
    let shared = decision.clone();
    let fault = state.operations.decide(&id, decision).await?;
    // One decision for the fleet: the same plan waiting on other hosts gets it too.
    if let Some(fleet) = &state.fleet
        && fleet.shares_approvals()
        && let Some(run) = &fault.run
    {
        let shared = crate::fleet::SharedDecision {
            policy: run.policy.clone(),
            patch_hash: run.patch_hash.clone(),
            by: shared.by,
            approve: shared.approve,
            comment: shared.comment,
            host: fleet.host().to_owned(),
            at: shared.at,
        };
        if let Err(error) = fleet.share_decision(&shared).await {
            tracing::warn!(message = "Decision not shared with the fleet (applied here).", fault = %fault.id, %error);
        }
    }
    Ok(Json(Decided {
        approval: approval_out(&state.store, fault)?,
    }))
}
