//! The API's error format, and the extractors whose rejections use it.
//!
//! [`ApiError`] is the only place an error becomes a status code: every refusal is
//! `{"code": "…", "message": "…"}`, internal details logged, not returned. [`JsonBody`] and
//! [`QueryParams`] parse a request the one way: malformed JSON is `invalid_json`, JSON of the
//! wrong shape is the input's own code (`invalid_report`, `invalid_decision`…), a body too large
//! is 413 `body_too_large`, a bad query `invalid_query`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::approval::DecisionError;
use crate::engine::operations::OperationError;
use crate::sources::intake::IntakeError;
use crate::store::StoreError;

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

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// What it says to the caller.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
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

impl From<OperationError> for ApiError {
    fn from(error: OperationError) -> ApiError {
        let message = error.to_string();
        match error {
            OperationError::Store(error) => error.into(),
            OperationError::Decision(decision) => {
                let (status, code) = match decision {
                    DecisionError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_decision"),
                    DecisionError::AuthorMayNotApprove(_) => {
                        (StatusCode::FORBIDDEN, "author_may_not_approve")
                    }
                    DecisionError::Expired(_) => (StatusCode::CONFLICT, "expired"),
                    DecisionError::NotWaiting { .. } => {
                        (StatusCode::CONFLICT, "not_awaiting_approval")
                    }
                    _ => (StatusCode::CONFLICT, "already_decided"),
                };
                ApiError::new(status, code, message)
            }
            OperationError::NoSuchBreaker(_)
            | OperationError::NoSuchVersion { .. }
            | OperationError::ModuleMissing { .. } => ApiError::not_found(message),
            OperationError::Unusable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "patch_unusable", message)
            }
            OperationError::Sandbox(_) => ApiError::internal(message),
        }
    }
}

/// A request body: JSON of an [`Input`] type.
pub trait Input: DeserializeOwned {
    /// The code of a body that is JSON but not this input (`invalid_report`…).
    const INVALID: &'static str;
}

/// A JSON request body of type `T`, parsed the API's one way (see the module doc).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: Input> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(body_error)?;
        parse_json(&body, T::INVALID).map(JsonBody)
    }
}

/// A request's query string as `T`; a bad one is `invalid_query`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| QueryParams(query))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
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

/// Parses JSON: malformed JSON is `invalid_json`; well-formed JSON of the wrong shape is
/// `invalid_shape`.
fn parse_json<T: DeserializeOwned>(
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
