//! The HTTP API (axum): the router, one module per resource (faults, approvals, patches,
//! breakers, operations), the request checks (`guard`), authentication (`auth`), the server and
//! its listener, and the console's page.
//!
//! A handler parses its request (with the extractors of [`error`], whose rejections are the
//! API's error format), calls the store's facade for a read or an engine operation for a write,
//! and shows the answer as a typed response. [`error::ApiError`] is the only place errors become
//! status codes. The router is built by [`router`] apart from the server, so tests drive it
//! in-process.
//!
//! **Layer rule:** the API reaches the store only through its facade, and changes nothing but
//! through the intake and the engine's operations.

mod approvals;
pub mod auth;
mod breakers;
pub mod console;
pub mod error;
mod faults;
pub mod guard;
pub mod listener;
mod ops;
mod patches;
#[cfg(test)]
mod router_tests;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::ApiError;
pub use ops::Readiness;

use crate::engine::operations::Operations;
use crate::sources::alertmanager::AlertmanagerConfig;
use crate::sources::intake::Intake;
use crate::store::Store;

/// Shared state of the API handlers.
pub struct AppState {
    pub intake: Intake,
    pub store: Arc<Store>,
    pub readiness: Arc<std::sync::RwLock<Readiness>>,
    pub alertmanager: Arc<AlertmanagerConfig>,
    pub supervisor: crate::effects::supervisor::Supervisor,
    /// What people change through the API: decisions, breakers, patches, shadow runs.
    pub operations: Operations,
    /// The push hub (`GET /v1/events`).
    pub events: crate::engine::events::Events,
    /// The fleet this host is in (`GET /v1/fleet`), if any.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// Builds the API router.
pub fn router(state: AppState, rules: guard::RequestRules, tokens: Arc<auth::Tokens>) -> Router {
    let max_body_bytes = rules.max_body_bytes();
    let rules = Arc::new(rules);
    Router::new()
        .route(
            "/v1/faults",
            post(faults::report_fault).get(faults::list_faults),
        )
        .route("/v1/faults/{id}", get(faults::show_fault))
        .route("/v1/alertmanager", post(faults::alertmanager_webhook))
        .route("/v1/programs", get(ops::list_programs))
        .route("/v1/fleet", get(ops::fleet_status))
        .route("/v1/approvals", get(approvals::list_approvals))
        .route("/v1/approvals/{id}", get(approvals::show_approval))
        .route("/v1/whoami", get(ops::whoami))
        .route(
            "/v1/patches",
            post(patches::upload_patch).get(patches::list_patches),
        )
        .route("/v1/patches/{name}", get(patches::show_patch))
        .route("/v1/patches/{name}/rollback", post(patches::rollback_patch))
        .route("/v1/patches/{name}/shadow", post(patches::shadow_patch))
        .route("/v1/breakers", get(breakers::list_breakers))
        .route("/v1/audit", get(ops::audit_log))
        .route("/v1/backup", get(ops::backup))
        .route("/v1/events", get(ops::event_stream))
        .route("/v1/breakers/{name}/reset", post(breakers::reset_breaker))
        .route("/v1/breakers/{name}/trip", post(breakers::trip_breaker))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics_text))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/readyz", get(ops::readyz))
        // Inside authentication: only a known caller's body is read (within its deadline).
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&rules),
            guard::read_body,
        ))
        // After routing, so the middleware sees which route matched.
        .route_layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ))
        // The console's static files: public (they hold no data), outside the auth layer.
        .merge(console::router())
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
        .layer(axum::middleware::from_fn_with_state(rules, guard::check))
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

/// Longest a request (other than the event stream) may take before it is answered 503.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest `reason` of an operator's action, in characters.
const MAX_REASON_CHARS: usize = 1024;

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (method, path) of every route the router declares, read from this file's source.
    fn router_routes() -> BTreeSet<(String, String)> {
        // One `.route(…)` call may span lines: read the source as one line.
        let source: String = include_str!("mod.rs")
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(");
        let mut routes = BTreeSet::new();
        for call in source.split(".route(\"").skip(1) {
            let (path, rest) = call.split_once('"').unwrap_or_default();
            // The handlers: up to the next call on the router.
            let handlers = rest.split(" .").next().unwrap_or_default();
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!("({method}("))
                    || handlers.contains(&format!(" {method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    routes.insert((method.to_string(), path.to_string()));
                }
            }
        }
        routes
    }

    fn documented_routes() -> Vec<(String, String, serde_json::Value)> {
        let doc: serde_json::Value = serde_json::from_str(super::ops::OPENAPI).unwrap();
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
