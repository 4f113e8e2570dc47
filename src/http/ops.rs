//! Operating phoenix over HTTP: who the caller is, the event stream, supervised programs, the
//! audit log, backups, metrics, the OpenAPI document, health and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::core::fault::FaultState;
use crate::effects::supervisor::ProgramStatus;
use crate::http::AppState;
use crate::http::auth::{Identity, Role};
use crate::http::error::{ApiError, QueryParams};
use crate::http::faults::page_size;
use crate::store::AuditEntry;

/// What `/readyz` reports besides the store's health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    /// Policies in force.
    pub policies: usize,
    /// Patch directories loaded.
    pub patches: usize,
    /// Why the last reload (or part of it) was not applied; empty when all is well.
    pub problems: Vec<String>,
    /// Successful reloads since start.
    pub reloads: u64,
}

/// Who the caller is, as far as phoenix can tell.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    name: String,
    role: Role,
    apps: Option<Vec<String>>,
    authenticated: bool,
}

/// Who the caller is (the console asks, to show what it may do).
pub async fn whoami(Extension(identity): Extension<Identity>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: identity.name,
        role: identity.role,
        apps: identity.apps,
        authenticated: identity.authenticated,
    })
}

/// Server-sent events: every push event as it happens (`event:` is its kind, `data:` its JSON).
/// A client that falls too far behind gets a `lagged` event saying how many it missed.
pub async fn event_stream(
    State(state): State<Arc<AppState>>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let receiver = state.events.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => {
                let data = serde_json::to_string(&event).unwrap_or_default();
                Event::default().event(event.kind).data(data)
            }
            Err(RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(missed.to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Serialize)]
pub struct Programs {
    programs: Vec<ProgramStatus>,
}

pub async fn list_programs(State(state): State<Arc<AppState>>) -> Json<Programs> {
    Json(Programs {
        programs: state.supervisor.statuses().await,
    })
}

/// `GET /v1/fleet`: this host in the fleet, the hosts seen lately and every lease held.
pub async fn fleet_status(
    State(state): State<Arc<AppState>>,
) -> Result<Json<crate::fleet::FleetStatus>, ApiError> {
    let Some(fleet) = &state.fleet else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_fleet",
            "this phoenix is in no fleet: its config has no [fleet]",
        ));
    };
    Ok(Json(fleet.status().await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<u64>,
}

/// The audit log, oldest first, a page at a time (`after` = the last `seq` seen).
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_size(query.limit)?;
    let entries = state.store.audit_log(query.after, limit)?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage { entries, next }))
}

/// A consistent snapshot of the whole store, in the backup format (`phoenix backup`).
pub async fn backup(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let entries = state.store.snapshot().await?;
    let text = crate::store::backup::encode(&entries);
    tracing::info!(
        message = "Backup taken.",
        entries = entries.len(),
        bytes = text.len()
    );
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response())
}

/// `/metrics`: counters and histograms kept as things happen, gauges read now.
pub async fn metrics_text(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    // Every open state is exported, zeros included, so a dashboard's series never vanish.
    let mut by_state = [0usize; FaultState::OPEN.len()];
    for id in state.store.open_fault_ids()? {
        if let Some(fault) = state.store.fault(&id)?
            && let Some(i) = FaultState::OPEN.iter().position(|s| *s == fault.state)
        {
            by_state[i] += 1;
        }
    }
    let pending = FaultState::OPEN
        .iter()
        .position(|s| *s == FaultState::AwaitingApproval)
        .map_or(0, |i| by_state[i]);
    let mut gauges: Vec<crate::core::metrics::Gauge<'_>> = FaultState::OPEN
        .iter()
        .zip(by_state)
        .map(|(s, n)| {
            (
                "phoenix_open_faults",
                vec![("state", s.name().to_owned())],
                n as f64,
            )
        })
        .collect();
    gauges.push(("phoenix_approvals_pending", vec![], pending as f64));
    let breakers = state.store.breakers()?;
    // The global breaker exists before its first outcome is stored: closed.
    if !breakers.iter().any(|b| b.name == "global") {
        gauges.push((
            "phoenix_breaker_open",
            vec![("breaker", "global".to_owned())],
            0.0,
        ));
    }
    for breaker in breakers {
        let open = breaker.position != crate::core::breaker::Position::Closed;
        gauges.push((
            "phoenix_breaker_open",
            vec![("breaker", breaker.name)],
            f64::from(u8::from(open)),
        ));
    }
    let text = crate::core::metrics::metrics().render(&gauges, state.events.webhook_failures());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The API description (docs/openapi.json, compiled in; a test keeps it in step with the router).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
}

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize)]
pub struct Ready {
    status: &'static str,
    #[serde(flatten)]
    readiness: Readiness,
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    if let Some(problem) = state.store.problem() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store cannot take writes: {problem}"),
        ));
    }
    let readiness = state
        .readiness
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Json(Ready {
        status: "ready",
        readiness,
    }))
}
