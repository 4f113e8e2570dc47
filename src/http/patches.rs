//! Patches over HTTP: upload (checked and tested at once; the uploader is the author), the
//! versions of each, rollback to an earlier one, and shadow runs of a candidate. The writes are
//! the engine's operations (audited there).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::core::plan::Action;
use crate::core::record::{PatchRecord, Provenance};
use crate::engine::operations::{Replay, ShadowOutcome};
use crate::http::AppState;
use crate::http::auth::Identity;
use crate::http::error::{ApiError, Input, JsonBody};
use crate::http::operator_fields;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadIn {
    /// patch.toml, as text.
    manifest: String,
    /// The module, as WebAssembly text (or `wasm_base64`).
    #[serde(default)]
    wat: Option<String>,
    /// The module, as a binary in standard base64 (an SDK-built `patch.wasm`).
    #[serde(default)]
    wasm_base64: Option<String>,
}

impl Input for UploadIn {
    const INVALID: &'static str = "invalid_request";
}

#[derive(Debug, Serialize)]
pub struct Uploaded {
    patch: PatchRecord,
    usable: bool,
    active: bool,
}

/// Registers an uploaded patch: static checks and contract tests run now, results returned.
/// A usable version becomes active; its first use still needs a person's approval.
pub async fn upload_patch(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    JsonBody(input): JsonBody<UploadIn>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    use base64::Engine as _;
    let module = match (&input.wat, &input.wasm_base64) {
        (Some(wat), None) => crate::patch::Uploaded::Wat(wat),
        (None, Some(encoded)) => crate::patch::Uploaded::Wasm(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|error| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("`wasm_base64` is not standard base64: {error}"),
                    )
                })?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give the module once: `wat` (WebAssembly text) or `wasm_base64` (the binary)",
            ));
        }
    };
    let patch = crate::patch::PatchSource::from_upload(&input.manifest, module)
        .map_err(|error| ApiError::bad_request("invalid_patch", error.to_string()))?;
    // The uploader is the author: author rules must not rest on what the manifest claims.
    let registered = state.operations.upload_patch(patch, &identity.name).await?;
    let usable = registered.record.usable();
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            patch: registered.record,
            usable,
            active: registered.active,
        }),
    ))
}

#[derive(Debug, Serialize)]
pub struct PatchList {
    patches: Vec<PatchSummary>,
}

#[derive(Debug, Serialize)]
struct PatchSummary {
    name: String,
    active: Option<ActiveVersion>,
}

#[derive(Debug, Serialize)]
struct ActiveVersion {
    version: String,
    hash: String,
    source: Provenance,
    usable: bool,
    confidence: f64,
}

pub async fn list_patches(State(state): State<Arc<AppState>>) -> Result<Json<PatchList>, ApiError> {
    let mut patches = Vec::new();
    for name in state.store.patch_names()? {
        let record = match state.store.active_patch_hash(&name)? {
            Some(hash) => state.store.patch(&name, &hash)?,
            None => None,
        };
        patches.push(PatchSummary {
            name,
            active: record.map(|r| ActiveVersion {
                usable: r.usable(),
                version: r.version,
                hash: r.hash,
                source: r.source,
                confidence: r.confidence,
            }),
        });
    }
    Ok(Json(PatchList { patches }))
}

#[derive(Debug, Serialize)]
pub struct PatchVersions {
    name: String,
    active: Option<String>,
    versions: Vec<VersionOut>,
}

#[derive(Debug, Serialize)]
struct VersionOut {
    #[serde(flatten)]
    record: PatchRecord,
    active: bool,
    usable: bool,
}

pub async fn show_patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<PatchVersions>, ApiError> {
    let mut versions = state.store.patch_versions(&name)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no patch `{name}`")));
    }
    versions.sort_by_key(|v| v.registered_at);
    let active = state.store.active_patch_hash(&name)?;
    let versions = versions
        .into_iter()
        .map(|record| VersionOut {
            active: active.as_deref() == Some(record.hash.as_str()),
            usable: record.usable(),
            record,
        })
        .collect();
    Ok(Json(PatchVersions {
        name,
        active,
        versions,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackIn {
    to: String,
    /// Who rolls back (recorded in the log); "api" when not given.
    #[serde(default = "api_actor")]
    by: String,
    #[serde(default)]
    reason: String,
}

impl Input for RollbackIn {
    const INVALID: &'static str = "invalid_request";
}

fn api_actor() -> String {
    "api".into()
}

#[derive(Debug, Serialize)]
pub struct RolledBack {
    patch: PatchRecord,
    previous: Option<String>,
}

/// Makes an earlier (usable) version the active one.
pub async fn rollback_patch(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<RollbackIn>,
) -> Result<Json<RolledBack>, ApiError> {
    operator_fields(&input.by, &input.reason)?;
    let (patch, previous) = state
        .operations
        .rollback_patch(&name, &input.to, &identity.actor(&input.by), &input.reason)
        .await?;
    Ok(Json(RolledBack { patch, previous }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowIn {
    hash: String,
}

impl Input for ShadowIn {
    const INVALID: &'static str = "invalid_request";
}

#[derive(Debug, Serialize)]
pub struct Shadowed {
    patch: String,
    version: String,
    hash: String,
    replays: Vec<ReplayOut>,
}

#[derive(Debug, Serialize)]
struct ReplayOut {
    fault_id: String,
    used: Used,
    candidate: Candidate,
    same: bool,
}

#[derive(Debug, Serialize)]
struct Used {
    version: String,
    hash: String,
    plan: Vec<Action>,
}

#[derive(Debug, Serialize)]
struct Candidate {
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Vec<Action>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<ShadowOutcome> for Candidate {
    fn from(outcome: ShadowOutcome) -> Candidate {
        match outcome {
            Ok(plan) => Candidate {
                plan: Some(plan),
                error: None,
            },
            Err(error) => Candidate {
                plan: None,
                error: Some(error),
            },
        }
    }
}

impl From<Replay> for ReplayOut {
    fn from(replay: Replay) -> ReplayOut {
        ReplayOut {
            fault_id: replay.fault_id,
            used: Used {
                version: replay.used_version,
                hash: replay.used_hash,
                plan: replay.used_plan,
            },
            candidate: replay.candidate.into(),
            same: replay.same,
        }
    }
}

/// Replays the most recent faults that ran this patch through version `hash` in the sandbox
/// (nothing is applied) and shows its plan beside the plan that was used.
pub async fn shadow_patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<ShadowIn>,
) -> Result<Json<Shadowed>, ApiError> {
    let (record, replays) = state.operations.shadow_patch(&name, &input.hash).await?;
    Ok(Json(Shadowed {
        patch: name,
        version: record.version,
        hash: record.hash,
        replays: replays.into_iter().map(ReplayOut::from).collect(),
    }))
}
