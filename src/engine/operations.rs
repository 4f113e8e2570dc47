//! What people do through the API besides reporting: deciding on an approval request, operating
//! a breaker, uploading a patch or rolling one back, and shadow runs. Each operation does all
//! that goes with its store write — the audit entry, the pushed event, waking the engine — so
//! the API only parses a request, calls one of these and shows the answer.
//!
//! Shadow runs go through the analysis pipeline's sandbox runner ([`super::analyze`]): nothing
//! is applied, and they are not counted as healing runs.

use std::sync::Arc;

use crate::core::approval::DecisionError;
use crate::core::breaker::Breaker;
use crate::core::fault::{Decision, Fault, Timestamp};
use crate::core::plan::Action;
use crate::core::record::PatchRecord;
use crate::engine::EngineHandle;
use crate::engine::events::Events;
use crate::patch::PatchSource;
use crate::patch::registry::{self, Registered, Uploader};
use crate::sandbox::Sandbox;
use crate::store::{FaultFilter, Store, StoreError};

/// Faults replayed by a shadow run of a version at most.
pub const SHADOW_FAULTS: usize = 20;

/// Why an operation was not done. Nothing was changed in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperationError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The decision does not fit the request (decided, expired, the author's own…).
    #[error(transparent)]
    Decision(#[from] DecisionError),
    /// No breaker of that name can exist.
    #[error("no breaker `{0}` (names: global, policy:NAME)")]
    NoSuchBreaker(String),
    /// The patch has no version of that hash.
    #[error("patch `{name}` has no version {hash}")]
    NoSuchVersion { name: String, hash: String },
    /// The version failed its checks or tests, so it may not be made active.
    #[error("version {version} failed its checks or tests: {problems}")]
    Unusable { version: String, problems: String },
    /// The version's module is not in the store.
    #[error("the module of patch `{name}` version {hash} is missing")]
    ModuleMissing { name: String, hash: String },
    /// A sandbox run's task was lost (it panicked).
    #[error("sandbox run failed: {0}")]
    Sandbox(String),
}

/// A shadow run's outcome: the plan the version would make, or why it made none.
pub type ShadowOutcome = Result<Vec<Action>, String>;

/// The version an approval request is compared with, and what it plans for the same fault.
#[derive(Debug, Clone)]
pub struct RequestShadow {
    pub version: String,
    pub hash: String,
    /// `active` (the patch's active version) or `previous` (the newest other usable one, when
    /// the request already uses the active version).
    pub role: &'static str,
    pub outcome: ShadowOutcome,
    /// Whether it plans exactly what the request does.
    pub same: bool,
}

/// One fault replayed through a candidate version.
#[derive(Debug, Clone)]
pub struct Replay {
    pub fault_id: String,
    pub used_version: String,
    pub used_hash: String,
    pub used_plan: Vec<Action>,
    pub candidate: ShadowOutcome,
    pub same: bool,
}

/// The operations, over the store, the sandbox, the push hub and the engine.
#[derive(Clone)]
pub struct Operations {
    store: Arc<Store>,
    sandbox: Arc<Sandbox>,
    events: Events,
    engine: EngineHandle,
}

impl Operations {
    pub fn new(
        store: Arc<Store>,
        sandbox: Arc<Sandbox>,
        events: Events,
        engine: EngineHandle,
    ) -> Operations {
        Operations {
            store,
            sandbox,
            events,
            engine,
        }
    }

    /// Records `decision` on fault `id`'s approval request (atomically, with a history line),
    /// audits it, tells other consoles, and wakes the engine, which moves the fault on.
    pub async fn decide(&self, id: &str, decision: Decision) -> Result<Fault, OperationError> {
        let approve = decision.approve;
        let fault = self
            .store
            .annotate(id, move |fault| {
                crate::core::approval::decide(fault, decision, Timestamp::now())
            })
            .await??;
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
        self.store.audit(&actor, verb, &fault.id, comment).await?;
        self.engine.enqueue(fault.id.clone());
        self.events.publish(
            "approval_decided",
            format!("{actor} {done} the plan for {} ({})", fault.app, fault.id),
            serde_json::json!({ "fault_id": fault.id, "by": actor, "approve": approve }),
        );
        Ok(fault)
    }

    /// Trips (or resets) breaker `name` by hand for `by`, with `reason`: audited and announced.
    pub async fn operate_breaker(
        &self,
        name: &str,
        by: String,
        reason: String,
        trip: bool,
    ) -> Result<Breaker, OperationError> {
        if name != "global" && name.strip_prefix("policy:").is_none_or(str::is_empty) {
            return Err(OperationError::NoSuchBreaker(name.to_owned()));
        }
        let now = Timestamp::now();
        let breaker = self
            .store
            .update_breaker(name, move |b| {
                if trip {
                    b.trip(&by, &reason, now);
                } else {
                    b.reset(&by, &reason, now);
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
            self.store
                .audit(&change.by, action, name, change.reason.clone())
                .await?;
            let summary = format!(
                "phoenix: breaker `{name}` is now {:?}: {} (by {})",
                change.to, change.reason, change.by
            );
            let data = serde_json::json!({ "breaker": name, "change": change });
            self.events.publish("breaker_changed", summary, data);
        }
        Ok(breaker)
    }

    /// Registers a patch uploaded by `uploader` (its author, whatever the manifest claims):
    /// checks and tests run now; audited.
    pub async fn upload_patch(
        &self,
        patch: PatchSource,
        uploader: &str,
    ) -> Result<Registered, OperationError> {
        let registered = registry::register(
            &self.store,
            &self.sandbox,
            patch,
            Uploader::Api(uploader.to_owned()),
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
        self.store
            .audit(uploader, "patch_upload", &target, detail)
            .await?;
        Ok(registered)
    }

    /// Makes version `to` of patch `name` the active one, for `by`, with `reason`: audited.
    /// Returns the record now active and the hash that was.
    pub async fn rollback_patch(
        &self,
        name: &str,
        to: &str,
        by: &str,
        reason: &str,
    ) -> Result<(PatchRecord, Option<String>), OperationError> {
        let record = self
            .store
            .patch(name, to)?
            .ok_or_else(|| OperationError::NoSuchVersion {
                name: name.to_owned(),
                hash: to.to_owned(),
            })?;
        if !record.usable() {
            return Err(OperationError::Unusable {
                version: record.version.clone(),
                problems: record.problems(),
            });
        }
        let previous = self.store.active_patch_hash(name)?;
        let record = self.store.set_active_patch(name, to).await?;
        tracing::warn!(message = "Patch rolled back.", patch = %name, to = %record.version, hash = %record.hash, from = ?previous, by = %by, reason = %reason);
        let detail = format!(
            "to {} ({}) from {}: {reason}",
            record.version,
            record.hash,
            previous.clone().unwrap_or_default()
        );
        self.store.audit(by, "patch_rollback", name, detail).await?;
        Ok((record, previous))
    }

    /// Runs `fault` (awaiting approval) through the version its request is compared with: the
    /// patch's active version, or, when the request already uses it, the newest other usable
    /// version. None when there is no other version (or no run).
    pub async fn shadow_request(
        &self,
        fault: &Fault,
    ) -> Result<Option<RequestShadow>, OperationError> {
        let Some(run) = &fault.run else {
            return Ok(None);
        };
        let active = self.store.active_patch_hash(&run.patch_name)?;
        let other = match active.filter(|hash| *hash != run.patch_hash) {
            Some(hash) => self
                .store
                .patch(&run.patch_name, &hash)?
                .map(|record| (record, "active")),
            None => self
                .store
                .patch_versions(&run.patch_name)?
                .into_iter()
                .filter(|r| r.hash != run.patch_hash && r.usable())
                .max_by_key(|r| r.registered_at.0)
                .map(|record| (record, "previous")),
        };
        let Some((record, role)) = other else {
            return Ok(None);
        };
        let Some(wasm) = self.store.patch_module(&record.hash)? else {
            return Ok(None);
        };
        let outcome = self.shadow(&record, wasm, fault).await?;
        Ok(Some(RequestShadow {
            same: outcome.as_ref().is_ok_and(|plan| *plan == run.plan),
            version: record.version,
            hash: record.hash,
            role,
            outcome,
        }))
    }

    /// Replays the newest faults (at most [`SHADOW_FAULTS`]) that ran patch `name` through its
    /// version `hash`, newest first. Returns that version's record and the replays.
    pub async fn shadow_patch(
        &self,
        name: &str,
        hash: &str,
    ) -> Result<(PatchRecord, Vec<Replay>), OperationError> {
        let record =
            self.store
                .patch(name, hash)?
                .ok_or_else(|| OperationError::NoSuchVersion {
                    name: name.to_owned(),
                    hash: hash.to_owned(),
                })?;
        let wasm = self.store.patch_module(&record.hash)?.ok_or_else(|| {
            OperationError::ModuleMissing {
                name: name.to_owned(),
                hash: hash.to_owned(),
            }
        })?;
        let mut recent: Vec<Fault> = Vec::new();
        let mut after = None;
        // Every fault, oldest first, a page at a time: keep the newest that used this patch.
        loop {
            let page = self.store.list_faults(&FaultFilter {
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
        let mut replays = Vec::with_capacity(recent.len());
        for fault in recent.into_iter().rev() {
            let candidate = self.shadow(&record, wasm.clone(), &fault).await?;
            let Some(run) = fault.run else { continue };
            replays.push(Replay {
                same: candidate.as_ref().is_ok_and(|plan| *plan == run.plan),
                fault_id: fault.id,
                used_version: run.patch_version,
                used_hash: run.patch_hash,
                used_plan: run.plan,
                candidate,
            });
        }
        Ok((record, replays))
    }

    /// What version `record` (module `wasm`) plans for `fault`, on a blocking thread.
    async fn shadow(
        &self,
        record: &PatchRecord,
        wasm: Vec<u8>,
        fault: &Fault,
    ) -> Result<ShadowOutcome, OperationError> {
        // The attempt whose plan it is compared with (the next one for a fault with no run).
        let attempt = fault
            .run
            .as_ref()
            .map_or(fault.attempts + 1, |run| run.attempt);
        let view = Arc::new(crate::patch::view_of(fault, attempt));
        let outcome =
            super::analyze::run_elsewhere(&self.sandbox, &record.name, &record.hash, wasm, view)
                .await
                .map_err(OperationError::Sandbox)?;
        Ok(outcome.map_err(|error| error.to_string()))
    }
}
