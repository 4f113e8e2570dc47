//! Circuit breakers over HTTP: the list, and tripping or resetting one by hand (the engine's
//! operation: audited and announced).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::core::breaker::Breaker;
use crate::http::AppState;
use crate::http::auth::Identity;
use crate::http::error::{ApiError, Input, JsonBody};
use crate::http::operator_fields;

#[derive(Debug, Serialize)]
pub struct BreakerList {
    breakers: Vec<Breaker>,
}

pub async fn list_breakers(
    State(state): State<Arc<AppState>>,
) -> Result<Json<BreakerList>, ApiError> {
    let mut breakers = state.store.breakers()?;
    if !breakers.iter().any(|b| b.name == "global") {
        breakers.insert(0, Breaker::new("global"));
    }
    Ok(Json(BreakerList { breakers }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorIn {
    by: String,
    reason: String,
}

impl Input for OperatorIn {
    const INVALID: &'static str = "invalid_request";
}

#[derive(Debug, Serialize)]
pub struct BreakerOut {
    breaker: Breaker,
}

pub async fn reset_breaker(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    name: Path<String>,
    body: JsonBody<OperatorIn>,
) -> Result<Json<BreakerOut>, ApiError> {
    operate_breaker(state, identity, name, body, false).await
}

pub async fn trip_breaker(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    name: Path<String>,
    body: JsonBody<OperatorIn>,
) -> Result<Json<BreakerOut>, ApiError> {
    operate_breaker(state, identity, name, body, true).await
}

/// Trip or reset a breaker by hand; the operator and reason go into its audit list.
async fn operate_breaker(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<OperatorIn>,
    trip: bool,
) -> Result<Json<BreakerOut>, ApiError> {
    operator_fields(&input.by, &input.reason)?;
    let breaker = state
        .operations
        .operate_breaker(&name, identity.actor(&input.by), input.reason, trip)
        .await?;
    Ok(Json(BreakerOut { breaker }))
}
