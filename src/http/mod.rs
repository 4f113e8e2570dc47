//! The HTTP API (axum): routes, request parsing, and the one place errors become status codes.
//!
//! Every error body is `{"code": "...", "message": "..."}`. Internal details are logged, not
//! returned. The router is built by [`router`] apart from the server so tests can drive it
//! in-process.

pub mod auth;
pub mod console;
pub mod guard;
pub mod listener;
pub mod server;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::core::fault::{Fault, FaultState, HistoryEntry, Report, Source};
use crate::http::auth::Identity;
use crate::sources::alertmanager::{self, AlertmanagerConfig, Notification, ReceiveError};
use crate::sources::intake::{Intake, IntakeError};
use crate::store::{FaultFilter, Store, StoreError};
use axum::Extension;

/// Shared state of the API handlers.
pub struct AppState {
    pub intake: Intake,
    pub store: Arc<Store>,
    pub readiness: Arc<std::sync::RwLock<Readiness>>,
    pub alertmanager: Arc<AlertmanagerConfig>,
    pub supervisor: crate::effects::supervisor::Supervisor,
    /// To wake the engine when a human decides.
    pub engine: crate::engine::EngineHandle,
    /// The push hub (`GET /v1/events`).
    pub events: crate::engine::events::Events,
    /// For checking uploaded patches and shadow runs.
    pub sandbox: Arc<crate::sandbox::Sandbox>,
}

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

/// An API error: a status, a stable code and a human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::IdempotencyMismatch(key) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                format!("Idempotency-Key `{key}` was already used with a different request body"),
            ),
            StoreError::NotFound(id) => ApiError::not_found(format!("no fault {id}")),
            StoreError::TooManyOpen { .. } => {
                tracing::warn!(message = "Report refused: too many open faults.", %error);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_open_faults",
                    error.to_string(),
                )
            }
            StoreError::DiskFull(detail) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                format!(
                    "phoenix's data dir is out of space ({detail}); nothing was recorded: free space and retry"
                ),
            ),
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "phoenix is shutting down",
            ),
            error => {
                tracing::error!(message = "Store error in API.", %error);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not make the request durable; retry later",
                )
            }
        }
    }
}

impl From<IntakeError> for ApiError {
    fn from(error: IntakeError) -> ApiError {
        match error {
            IntakeError::Invalid(error) => {
                ApiError::bad_request("invalid_report", error.to_string())
            }
            IntakeError::Store(error) => error.into(),
        }
    }
}

/// A fault as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultOut {
    pub id: String,
    pub app: String,
    pub kind: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub message: Option<String>,
    pub severity: crate::core::fault::Severity,
    pub source: Source,
    pub fingerprint: String,
    pub occurrences: u64,
    pub first_seen: crate::core::fault::Timestamp,
    pub last_seen: crate::core::fault::Timestamp,
    #[serde(flatten)]
    pub state: FaultState,
    pub attempts: u32,
    /// `rolled_back` or `rollback_failed` when changes had to be undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<crate::core::fault::Rollback>,
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
    pub plan: Vec<crate::core::plan::Action>,
    pub actions_started: u32,
    pub actions_done: u32,
}

impl FaultOut {
    fn new(fault: Fault, history: Option<Vec<HistoryEntry>>) -> FaultOut {
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

/// Builds the API router.
pub fn router(
    state: AppState,
    rules: crate::http::guard::RequestRules,
    tokens: Arc<crate::http::auth::Tokens>,
) -> Router {
    let max_body_bytes = rules.max_body_bytes();
    let rules = Arc::new(rules);
    Router::new()
        .route("/v1/faults", post(report_fault).get(list_faults))
        .route("/v1/faults/{id}", get(show_fault))
        .route("/v1/alertmanager", post(alertmanager_webhook))
        .route("/v1/programs", get(list_programs))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/whoami", get(whoami))
        .route("/v1/patches", post(upload_patch).get(list_patches))
        .route("/v1/patches/{name}", get(show_patch))
        .route("/v1/patches/{name}/rollback", post(rollback_patch))
        .route("/v1/patches/{name}/shadow", post(shadow_patch))
        .route("/v1/breakers", get(list_breakers))
        .route("/v1/audit", get(audit_log))
        .route("/v1/backup", get(backup))
        .route("/v1/events", get(event_stream))
        .route("/v1/breakers/{name}/reset", post(reset_breaker))
        .route("/v1/breakers/{name}/trip", post(trip_breaker))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .route("/readyz", get(readyz))
        // Inside authentication: only a known caller's body is read (within its deadline).
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&rules),
            crate::http::guard::read_body,
        ))
        // After routing, so the middleware sees which route matched.
        .route_layer(axum::middleware::from_fn_with_state(
            tokens,
            crate::http::auth::authenticate,
        ))
        // The console's static files: public (they hold no data), outside the auth layer.
        .merge(crate::http::console::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Before routing and authentication: a request not addressed to phoenix, a cross-site
        // write, or a body too large or too slow goes no further.
        .layer(axum::middleware::from_fn_with_state(
            rules,
            crate::http::guard::check,
        ))
        .layer(axum::middleware::from_fn(request_id))
        // Shared, not cloned: axum hands every request its own copy of the state.
        .with_state(Arc::new(state))
}

/// Gives every request an id: the caller's `X-Request-Id` if it is sane, else a new one. The id
/// is on the request's log span and returned in the `X-Request-Id` response header.
async fn request_id(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| {
        let started = crate::core::fault::Timestamp::now().0;
        format!("{started:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
    });
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let started = std::time::Instant::now();
    // The event stream is meant to stay open; everything else must finish in time.
    let streaming = request.uri().path() == "/v1/events";
    let run = next.run(request).instrument(span.clone());
    let mut response = if streaming {
        run.await
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, run).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request took longer than {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
            .into_response(),
        }
    };
    span.in_scope(|| {
        tracing::debug!(
            message = "Request served.",
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Longest a request (other than the event stream) may take before it is answered 503.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

async fn report_fault(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let key = idempotency_key(&headers)?;
    let report: Report = parse_json(&body, "invalid_report")?;
    if !identity.may_see_app(&report.app) {
        let message = format!(
            "token `{}` may not report faults of app `{}`",
            identity.name, report.app
        );
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message));
    }
    // "Same body" means the same report, whatever the JSON formatting or key order. A key is
    // the caller's own: another token's use of the same key is another request.
    let idempotency = key.map(|key| {
        let canonical = serde_json::to_vec(&report).unwrap_or_default();
        crate::store::Idempotency {
            scope: identity.authenticated.then(|| identity.name.clone()),
            key,
            request_hash: blake3::hash(&canonical).to_hex().to_string(),
        }
    });
    let reported = state
        .intake
        .submit(report, Source::Api, idempotency)
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

/// Maps a body rejection (too large, unreadable) to the API's error format.
fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            rejection.body_text(),
        )
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

async fn alertmanager_webhook(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<alertmanager::Receipt>, ApiError> {
    let body = body.map_err(body_error)?;
    let notification: Notification = parse_json(&body, "invalid_notification")?;
    let mut notification = notification;
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
                reason: format!(
                    "token `{}` may not report faults of app `{app}`",
                    identity.name
                ),
            });
        }
        visible
    });
    let receipt = alertmanager::receive(&state.intake, &state.alertmanager, notification)
        .await
        .map_err(|error| match error {
            ReceiveError::Version(_) => {
                ApiError::bad_request("unsupported_version", error.to_string())
            }
            ReceiveError::Intake(error) => error.into(),
        })?;
    let mut receipt = receipt;
    receipt.skipped.extend(out_of_scope);
    Ok(Json(receipt))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    app: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// `oldest` (default) or `newest` first.
    order: Option<String>,
}

#[derive(Serialize)]
struct FaultPage {
    faults: Vec<FaultOut>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

const MAX_PAGE: usize = 1000;

async fn list_faults(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<FaultPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
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
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
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

async fn show_fault(
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

/// An approval request as the API shows it: the fault, the patch, the dry-run plan, the why.
#[derive(Debug, Serialize)]
struct ApprovalOut {
    fault_id: String,
    app: String,
    kind: String,
    message: Option<String>,
    reason: String,
    requested_at: crate::core::fault::Timestamp,
    expires_at: crate::core::fault::Timestamp,
    quorum: u32,
    decisions: Vec<crate::core::fault::Decision>,
    patch: PatchOut,
    /// What the patch planned (not executed yet).
    plan: Vec<crate::core::plan::Action>,
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
    tests: Vec<crate::core::record::TestResult>,
}

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

async fn list_approvals(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut approvals = Vec::new();
    for id in state.store.open_fault_ids()?.into_iter().rev() {
        if let Some(fault) = state.store.fault(&id)?
            && fault.state == FaultState::AwaitingApproval
            && let Some(out) = approval_out(&state.store, fault)?
        {
            approvals.push(out);
        }
    }
    Ok(Json(serde_json::json!({ "approvals": approvals })))
}

/// One approval request with its fault's history and a shadow run: the same fault through the
/// patch's active version (or, when the request already uses it, the newest other usable
/// version), so a person sees what changes with this version.
async fn show_approval(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    let shadow = shadow_run(&state, &fault).await?;
    let approval = approval_out(&state.store, fault.clone())?
        .ok_or_else(|| ApiError::not_found(format!("fault {id} has no approval request")))?;
    Ok(Json(serde_json::json!({
        "approval": approval,
        "fault": FaultOut::new(fault, Some(history)),
        "shadow": shadow,
    })))
}

/// Runs `fault` through the version its request is compared with (see [`show_approval`]).
async fn shadow_run(state: &AppState, fault: &Fault) -> Result<serde_json::Value, ApiError> {
    let Some(run) = &fault.run else {
        return Ok(serde_json::Value::Null);
    };
    let active = state.store.active_patch_hash(&run.patch_name)?;
    let other = match active.filter(|hash| *hash != run.patch_hash) {
        Some(hash) => state
            .store
            .patch(&run.patch_name, &hash)?
            .map(|record| (record, "active")),
        None => state
            .store
            .patch_versions(&run.patch_name)?
            .into_iter()
            .filter(|r| r.hash != run.patch_hash && r.usable())
            .max_by_key(|r| r.registered_at.0)
            .map(|record| (record, "previous")),
    };
    let Some((record, role)) = other else {
        return Ok(serde_json::Value::Null);
    };
    let Some(wasm) = state.store.patch_module(&record.hash)? else {
        return Ok(serde_json::Value::Null);
    };
    let view = Arc::new(crate::patch::view_of(fault));
    let sandbox = Arc::clone(&state.sandbox);
    let (name, hash) = (record.name.clone(), record.hash.clone());
    let outcome = tokio::task::spawn_blocking(move || sandbox.run(&name, &hash, &wasm, view))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("shadow run: {e}"),
            )
        })?;
    let mut out = serde_json::json!({
        "against": { "version": record.version, "hash": record.hash, "role": role },
    });
    match outcome {
        Ok(plan) => {
            out["same"] = serde_json::json!(plan == run.plan);
            out["plan"] = serde_json::json!(plan);
        }
        Err(error) => {
            out["same"] = serde_json::json!(false);
            out["error"] = serde_json::json!(error.to_string());
        }
    }
    Ok(out)
}

/// Who the caller is, as far as phoenix can tell (the console asks, to show what it may do).
async fn whoami(Extension(identity): Extension<Identity>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": identity.name,
        "role": identity.role,
        "apps": identity.apps,
        "authenticated": identity.authenticated,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionIn {
    by: String,
    #[serde(default)]
    comment: String,
}

async fn approve(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(state, identity, id, body, true).await
}

async fn reject(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(state, identity, id, body, false).await
}

async fn decide(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::core::approval::DecisionError;
    let body = body.map_err(body_error)?;
    let input: DecisionIn = parse_json(&body, "invalid_decision")?;
    // The body's `by` must name someone either way (a malformed request is refused the same with
    // and without tokens); with authentication on, the decision is the token holder's.
    if !crate::core::approval::is_actor_name(&input.by) {
        return Err(ApiError::bad_request(
            "invalid_decision",
            "`by` must name who decides (1-128 characters)",
        ));
    }
    let by = if identity.authenticated {
        identity.name.clone()
    } else {
        input.by
    };
    let decision = crate::core::fault::Decision {
        by,
        approve,
        comment: input.comment,
        at: crate::core::fault::Timestamp::now(),
    };
    let outcome = state
        .store
        .annotate(&id, move |fault| {
            crate::core::approval::decide(fault, decision, crate::core::fault::Timestamp::now())
        })
        .await?;
    let fault = outcome.map_err(|error| {
        let (status, code) = match &error {
            DecisionError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_decision"),
            DecisionError::AuthorMayNotApprove(_) => {
                (StatusCode::FORBIDDEN, "author_may_not_approve")
            }
            DecisionError::Expired(_) => (StatusCode::CONFLICT, "expired"),
            DecisionError::NotWaiting { .. } => (StatusCode::CONFLICT, "not_awaiting_approval"),
            _ => (StatusCode::CONFLICT, "already_decided"),
        };
        ApiError::new(status, code, error.to_string())
    })?;
    let (verb, done) = if approve {
        ("approve", "approved")
    } else {
        ("reject", "rejected")
    };
    let last = fault
        .run
        .as_ref()
        .and_then(|r| r.approval.as_ref())
        .and_then(|a| a.decisions.last());
    let (actor, comment) = last
        .map(|d| (d.by.clone(), d.comment.clone()))
        .unwrap_or_default();
    state.store.audit(&actor, verb, &fault.id, comment).await?;
    state.engine.enqueue(fault.id.clone());
    // Other consoles showing this request learn at once that it was decided.
    state.events.publish(
        "approval_decided",
        format!("{actor} {done} the plan for {} ({})", fault.app, fault.id),
        serde_json::json!({ "fault_id": fault.id, "by": actor, "approve": approve }),
    );
    let out = approval_out(&state.store, fault)?;
    Ok(Json(serde_json::json!({ "approval": out })))
}

/// An operator's `by` (who acts: 1-128 characters, not all blank) and `reason` (at most 1024
/// characters), as recorded in the audit log.
fn operator_fields(by: &str, reason: &str) -> Result<(), ApiError> {
    if !crate::core::approval::is_actor_name(by) || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`by` must name who acts (1-128 characters); `reason` at most 1024",
        ));
    }
    Ok(())
}

const MAX_REASON_CHARS: usize = 1024;

async fn list_breakers(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut breakers = state.store.breakers()?;
    if !breakers.iter().any(|b| b.name == "global") {
        breakers.insert(0, crate::core::breaker::Breaker::new("global"));
    }
    Ok(Json(serde_json::json!({ "breakers": breakers })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorIn {
    by: String,
    reason: String,
}

async fn reset_breaker(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    name: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operate_breaker(state, identity, name, body, false).await
}

async fn trip_breaker(
    state: State<Arc<AppState>>,
    identity: Extension<Identity>,
    name: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operate_breaker(state, identity, name, body, true).await
}

/// Trip or reset a breaker by hand; the operator and reason go into its audit list.
async fn operate_breaker(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
    trip: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    if name != "global" && name.strip_prefix("policy:").is_none_or(str::is_empty) {
        return Err(ApiError::not_found(format!(
            "no breaker `{name}` (names: global, policy:NAME)"
        )));
    }
    let body = body.map_err(body_error)?;
    let input: OperatorIn = parse_json(&body, "invalid_request")?;
    operator_fields(&input.by, &input.reason)?;
    let by = if identity.authenticated {
        identity.name.clone()
    } else {
        input.by.trim().to_owned()
    };
    let now = crate::core::fault::Timestamp::now();
    let breaker = state
        .store
        .update_breaker(&name, move |b| {
            if trip {
                b.trip(&by, &input.reason, now);
            } else {
                b.reset(&by, &input.reason, now);
            }
            b.clone()
        })
        .await?;
    tracing::warn!(message = "Breaker changed by hand.", breaker = %name, to = ?breaker.position);
    if let Some(change) = breaker.changes.last() {
        let action = if trip {
            "breaker_trip"
        } else {
            "breaker_reset"
        };
        state
            .store
            .audit(&change.by, action, &name, change.reason.clone())
            .await?;
    }
    if let Some(change) = breaker.changes.last() {
        let summary = format!(
            "phoenix: breaker `{name}` is now {:?}: {} (by {})",
            change.to, change.reason, change.by
        );
        let data = serde_json::json!({ "breaker": name, "change": change });
        state.events.publish("breaker_changed", summary, data);
    }
    Ok(Json(serde_json::json!({ "breaker": breaker })))
}

/// Server-sent events: every push event as it happens (`event:` is its kind, `data:` its JSON).
/// A client that falls too far behind gets a `lagged` event saying how many it missed.
async fn event_stream(
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

/// Parses a JSON body into `T`, with the API's error format.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    parse_json(&body.map_err(body_error)?, "invalid_request")
}

/// Parses JSON: malformed JSON is `invalid_json`; well-formed JSON of the wrong shape is
/// `invalid_shape` (each route names its own, e.g. `invalid_report`).
fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    invalid_shape: &'static str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        let code = if error.is_data() {
            invalid_shape
        } else {
            "invalid_json"
        };
        ApiError::bad_request(code, error.to_string())
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadIn {
    /// patch.toml, as text.
    manifest: String,
    /// The module, as WebAssembly text.
    wat: String,
}

/// Registers an uploaded patch: static checks and contract tests run now, results returned.
/// A usable version becomes active; its first use still needs a person's approval.
async fn upload_patch(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let input: UploadIn = json_body(body)?;
    let patch = crate::patch::PatchSource::from_upload(&input.manifest, &input.wat)
        .map_err(|error| ApiError::bad_request("invalid_patch", error.to_string()))?;
    // The uploader is the author: author rules must not rest on what the manifest claims.
    let registered = crate::patch::registry::register(
        &state.store,
        &state.sandbox,
        patch,
        crate::patch::registry::Uploader::Api(identity.name.clone()),
    )
    .await?;
    let record = &registered.record;
    tracing::info!(message = "Patch uploaded.", patch = %record.name, version = %record.version, hash = %record.hash, usable = record.usable(), active = registered.active);
    let detail = format!(
        "{} usable={} active={}",
        record.hash,
        record.usable(),
        registered.active
    );
    let target = format!("{}@{}", record.name, record.version);
    state
        .store
        .audit(&identity.name, "patch_upload", &target, detail)
        .await?;
    let body = serde_json::json!({ "patch": record, "usable": record.usable(), "active": registered.active });
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_patches(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut patches = Vec::new();
    for name in state.store.patch_names()? {
        let active = state.store.active_patch_hash(&name)?;
        let record = match &active {
            Some(hash) => state.store.patch(&name, hash)?,
            None => None,
        };
        patches.push(serde_json::json!({
            "name": name,
            "active": record.map(|r| serde_json::json!({
                "version": r.version, "hash": r.hash, "source": r.source, "usable": r.usable(), "confidence": r.confidence,
            })),
        }));
    }
    Ok(Json(serde_json::json!({ "patches": patches })))
}

async fn show_patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut versions = state.store.patch_versions(&name)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no patch `{name}`")));
    }
    versions.sort_by_key(|v| v.registered_at);
    let active = state.store.active_patch_hash(&name)?;
    let versions: Vec<serde_json::Value> = versions
        .into_iter()
        .map(|v| {
            let is_active = active.as_deref() == Some(v.hash.as_str());
            let usable = v.usable();
            let mut value = serde_json::to_value(v).unwrap_or_default();
            value["active"] = is_active.into();
            value["usable"] = usable.into();
            value
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "name": name, "active": active, "versions": versions }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackIn {
    to: String,
    /// Who rolls back (recorded in the log); "api" when not given.
    #[serde(default = "api_actor")]
    by: String,
    #[serde(default)]
    reason: String,
}

fn api_actor() -> String {
    "api".into()
}

/// Makes an earlier (usable) version the active one.
async fn rollback_patch(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let input: RollbackIn = json_body(body)?;
    operator_fields(&input.by, &input.reason)?;
    let record = state.store.patch(&name, &input.to)?.ok_or_else(|| {
        ApiError::not_found(format!("patch `{name}` has no version {}", input.to))
    })?;
    if !record.usable() {
        let message = format!(
            "version {} failed its checks or tests: {}",
            record.version,
            record.problems()
        );
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "patch_unusable",
            message,
        ));
    }
    let previous = state.store.active_patch_hash(&name)?;
    let record = state.store.set_active_patch(&name, &input.to).await?;
    let actor = if identity.authenticated {
        identity.name.clone()
    } else {
        input.by.trim().to_owned()
    };
    tracing::warn!(message = "Patch rolled back.", patch = %name, to = %record.version, hash = %record.hash, from = ?previous, by = %actor, reason = %input.reason);
    let detail = format!(
        "to {} ({}) from {}: {}",
        record.version,
        record.hash,
        previous.clone().unwrap_or_default(),
        input.reason
    );
    state
        .store
        .audit(&actor, "patch_rollback", &name, detail)
        .await?;
    Ok(Json(
        serde_json::json!({ "patch": record, "previous": previous }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowIn {
    hash: String,
}

/// Faults replayed by a shadow run at most.
const SHADOW_FAULTS: usize = 20;

/// Replays the most recent faults that ran this patch through version `hash` in the sandbox
/// (nothing is applied) and shows its plan beside the plan that was used.
async fn shadow_patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let input: ShadowIn = json_body(body)?;
    let record = state.store.patch(&name, &input.hash)?.ok_or_else(|| {
        ApiError::not_found(format!("patch `{name}` has no version {}", input.hash))
    })?;
    let wasm = state
        .store
        .patch_module(&record.hash)?
        .ok_or_else(|| ApiError::not_found("module missing"))?;
    let mut recent: Vec<Fault> = Vec::new();
    let mut after = None;
    // Scan all faults (oldest first, a page at a time) and keep the newest that used this patch.
    loop {
        let page = state.store.list_faults(&FaultFilter {
            after: after.clone(),
            limit: 500,
            ..Default::default()
        })?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        recent.extend(
            page.into_iter()
                .filter(|f| f.run.as_ref().is_some_and(|r| r.patch_name == name)),
        );
        if recent.len() > SHADOW_FAULTS {
            recent.drain(..recent.len() - SHADOW_FAULTS);
        }
    }
    let sandbox = Arc::clone(&state.sandbox);
    let (patch_name, hash) = (record.name.clone(), record.hash.clone());
    let replays = tokio::task::spawn_blocking(move || {
        recent
            .into_iter()
            .rev()
            .filter_map(|fault| {
                let view = Arc::new(crate::patch::view_of(&fault));
                let run = fault.run?;
                let candidate = sandbox.run(&patch_name, &hash, &wasm, view);
                let same = candidate.as_ref().is_ok_and(|plan| *plan == run.plan);
                Some(serde_json::json!({
                    "fault_id": fault.id,
                    "used": { "version": run.patch_version, "hash": run.patch_hash, "plan": run.plan },
                    "candidate": match candidate {
                        Ok(plan) => serde_json::json!({ "plan": plan }),
                        Err(error) => serde_json::json!({ "error": error.to_string() }),
                    },
                    "same": same,
                }))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("shadow run failed: {e}")))?;
    Ok(Json(
        serde_json::json!({ "patch": name, "version": record.version, "hash": record.hash, "replays": replays }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// A consistent snapshot of the whole store, in the backup format (`phoenix backup`).
async fn backup(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let entries = state.store.snapshot().await?;
    let text = crate::store::backup::encode(&entries);
    tracing::info!(
        message = "Backup taken.",
        entries = entries.len(),
        bytes = text.len()
    );
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response())
}

/// The audit log, oldest first, a page at a time (`after` = the last `seq` seen).
async fn audit_log(
    State(state): State<Arc<AppState>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let entries = state.store.audit_log(query.after, limit)?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(
        serde_json::json!({ "entries": entries, "next": next }),
    ))
}

async fn list_programs(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "programs": state.supervisor.statuses().await }))
}

/// `/metrics`: counters and histograms kept as things happen, gauges read now.
async fn metrics_text(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let open = state.store.open_fault_ids()?;
    let mut pending = 0usize;
    for id in &open {
        if state
            .store
            .fault(id)?
            .is_some_and(|f| f.state == FaultState::AwaitingApproval)
        {
            pending += 1;
        }
    }
    let mut gauges = vec![
        ("phoenix_open_faults", vec![], open.len() as f64),
        ("phoenix_approvals_pending", vec![], pending as f64),
    ];
    for breaker in state.store.breakers()? {
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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let readiness = state
        .readiness
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let problem = state.store.problem();
    if problem.is_none() {
        Json(serde_json::json!({
            "status": "ready",
            "policies": readiness.policies,
            "patches": readiness.patches,
            "problems": readiness.problems,
            "reloads": readiness.reloads,
        }))
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!(
                "the store cannot take writes: {}",
                problem.unwrap_or_default()
            ),
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (method, path) of every route the router declares, read from this file's source.
    fn router_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = BTreeSet::new();
        for line in source
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".route(\""))
        {
            let rest = &line[".route(\"".len()..];
            let (path, handlers) = rest.split_once('"').unwrap_or_default();
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!(" {method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    routes.insert((method.to_string(), path.to_string()));
                }
            }
        }
        routes
    }

    fn documented_routes() -> Vec<(String, String, serde_json::Value)> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut routes = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                routes.push((method.clone(), path.clone(), operation.clone()));
            }
        }
        routes
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_router() {
        let router = router_routes();
        assert!(router.len() > 20, "parsed too few routes: {router:?}");
        let documented: BTreeSet<(String, String)> = documented_routes()
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        assert_eq!(
            documented, router,
            "docs/openapi.json and the router differ"
        );
    }

    #[test]
    fn the_documented_roles_are_the_enforced_ones() {
        for (method, path, operation) in documented_routes() {
            let method: axum::http::Method = method.to_uppercase().parse().unwrap();
            let enforced = match crate::http::auth::required_role(&method, &path) {
                None => "public".to_string(),
                Some(role) => serde_json::to_value(role)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            };
            assert_eq!(operation["x-role"], enforced.as_str(), "{method} {path}");
        }
    }
}
