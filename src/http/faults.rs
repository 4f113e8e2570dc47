//! Faults over HTTP: reporting one (`POST /v1/faults`), an Alertmanager webhook
//! (`POST /v1/alertmanager`), listing and showing them. A reporter sees only its apps.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::core::fault::{
    Fault, FaultState, HistoryEntry, Report, Rollback, Severity, Source, Timestamp,
};
use crate::core::plan::Action;
use crate::http::AppState;
use crate::http::auth::Identity;
use crate::http::error::{ApiError, Input, JsonBody, QueryParams};
use crate::sources::alertmanager::{self, Notification, ReceiveError};
use crate::store::{FaultFilter, Idempotency};

impl Input for Report {
    const INVALID: &'static str = "invalid_report";
}

impl Input for Notification {
    const INVALID: &'static str = "invalid_notification";
}

/// A fault as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultOut {
    pub id: String,
    pub app: String,
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    pub message: Option<String>,
    pub severity: Severity,
    pub source: Source,
    pub fingerprint: String,
    pub occurrences: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    #[serde(flatten)]
    pub state: FaultState,
    pub attempts: u32,
    /// `rolled_back` or `rollback_failed` when changes had to be undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

/// The current healing run, without the policy snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunOut {
    pub attempt: u32,
    pub policy: String,
    pub patch: String,
    pub patch_version: String,
    pub patch_hash: String,
    pub plan: Vec<Action>,
    pub actions_started: u32,
    pub actions_done: u32,
}

impl FaultOut {
    pub fn new(fault: Fault, history: Option<Vec<HistoryEntry>>) -> FaultOut {
        FaultOut {
            run: fault.run.map(|run| RunOut {
                attempt: run.attempt,
                policy: run.policy,
                patch: run.patch_name,
                patch_version: run.patch_version,
                patch_hash: run.patch_hash,
                plan: run.plan,
                actions_started: run.actions_started,
                actions_done: run.actions_done,
            }),
            id: fault.id,
            app: fault.app,
            kind: fault.kind,
            labels: fault.labels,
            message: fault.message,
            severity: fault.severity,
            source: fault.source,
            fingerprint: fault.fingerprint,
            occurrences: fault.occurrences,
            first_seen: fault.first_seen,
            last_seen: fault.last_seen,
            state: fault.state,
            attempts: fault.attempts,
            rollback: fault.rollback,
            history,
        }
    }
}

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Faults in one page of a listing at most.
pub const MAX_PAGE: usize = 1000;

/// `Idempotency-Key`, if present: 1-255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// The refusal of a report of `app` by a caller that may not report it.
fn not_its_app(identity: &Identity, app: &str) -> ApiError {
    let message = format!(
        "token `{}` may not report faults of app `{app}`",
        identity.name
    );
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

pub async fn report_fault(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<Report>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if !identity.may_see_app(&report.app) {
        return Err(not_its_app(&identity, &report.app));
    }
    // "Same body" means the same report, whatever the JSON formatting or key order. A key is
    // the caller's own: another token's use of the same key is another request.
    let idempotency = key.map(|key| {
        let canonical = serde_json::to_vec(&report).unwrap_or_default();
        Idempotency {
            scope: identity.authenticated.then(|| identity.name.clone()),
            key,
            request_hash: blake3::hash(&canonical).to_hex().to_string(),
        }
    });
    let reported = state
        .intake
        .submit(report, identity.source, idempotency)
        .await?;
    let location = format!("/v1/faults/{}", reported.fault.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(FaultOut::new(reported.fault, None)),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if reported.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn alertmanager_webhook(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    JsonBody(mut notification): JsonBody<Notification>,
) -> Result<Json<alertmanager::Receipt>, ApiError> {
    let mut out_of_scope = Vec::new();
    notification.alerts.retain(|alert| {
        let app = alert
            .labels
            .get(&state.alertmanager.app_label)
            .cloned()
            .unwrap_or_default();
        let visible = identity.may_see_app(&app);
        if !visible {
            out_of_scope.push(alertmanager::Skipped {
                fingerprint: alert.fingerprint.clone(),
                reason: not_its_app(&identity, &app).message().to_owned(),
            });
        }
        visible
    });
    let mut receipt = alertmanager::receive(&state.intake, &state.alertmanager, notification)
        .await
        .map_err(|error| match error {
            ReceiveError::Version(_) => {
                ApiError::bad_request("unsupported_version", error.to_string())
            }
            ReceiveError::Intake(error) => error.into(),
        })?;
    receipt.skipped.extend(out_of_scope);
    Ok(Json(receipt))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    app: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// `oldest` (default) or `newest` first.
    order: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FaultPage {
    faults: Vec<FaultOut>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `limit` of a listing: 1 to [`MAX_PAGE`], 100 when not given.
pub fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

pub async fn list_faults(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<FaultPage>, ApiError> {
    if let Some(name) = &query.state
        && !FaultState::NAMES.contains(&name.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "unknown state `{name}`; one of {}",
                FaultState::NAMES.join(", ")
            ),
        ));
    }
    let limit = page_size(query.limit)?;
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown order `{other}`; one of oldest, newest"),
            ));
        }
    };
    let filter = FaultFilter {
        state: query.state,
        app: query.app,
        apps: identity.apps.clone(),
        after: query.after,
        limit,
        newest_first,
    };
    let faults = state.store.list_faults(&filter)?;
    let next = (faults.len() == limit)
        .then(|| faults.last().map(|f| f.id.clone()))
        .flatten();
    Ok(Json(FaultPage {
        faults: faults.into_iter().map(|f| FaultOut::new(f, None)).collect(),
        next,
    }))
}

pub async fn show_fault(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<FaultOut>, ApiError> {
    // A fault of an app the caller may not see does not exist, as far as it can tell.
    let fault = state
        .store
        .fault(&id)?
        .filter(|f| identity.may_see_app(&f.app))
        .ok_or_else(|| ApiError::not_found(format!("no fault {id}")))?;
    let history = state.store.history(&id)?;
    Ok(Json(FaultOut::new(fault, Some(history))))
}
