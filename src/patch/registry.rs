//! The patch registry: every patch version phoenix has seen, with its checks and contract test
//! results, and which version of each name is active.
//!
//! Registration runs the static checks and the contract tests once and records the outcome; a
//! version whose checks or tests failed is kept (for the record) but never used. Records live in
//! the store; compiled modules in the sandbox's cache.

use std::sync::Arc;

use crate::core::fault::Timestamp;
pub use crate::core::record::{PatchRecord, Provenance, TestResult};
use crate::patch::PatchSource;
use crate::sandbox::Sandbox;
use crate::store::{Activation, Store, StoreError};

/// Runs the static checks and, if they pass, every contract test of `patch`.
pub fn evaluate(sandbox: &Sandbox, patch: &PatchSource) -> (Vec<String>, Vec<TestResult>) {
    let problems = sandbox.static_check(&patch.hash, &patch.wasm);
    if !problems.is_empty() {
        return (problems, Vec::new());
    }
    let results = patch
        .manifest
        .tests
        .iter()
        .map(|test| {
            let got = sandbox.run(
                &patch.manifest.name,
                &patch.hash,
                &patch.wasm,
                std::sync::Arc::new(test.fault.view()),
            );
            let detail = match (&got, &test.expect_error) {
                (Ok(plan), None) if *plan == test.expect => String::new(),
                (Err(error), Some(code)) if error.code() == code => String::new(),
                (Ok(plan), _) => format!(
                    "expected {}, got plan {}",
                    expectation(&test.expect, test.expect_error.as_deref()),
                    shortened(serde_json::to_string(plan).unwrap_or_default())
                ),
                (Err(error), _) => format!(
                    "expected {}, got error {}",
                    expectation(&test.expect, test.expect_error.as_deref()),
                    shortened(error.to_string())
                ),
            };
            TestResult {
                name: test.name.clone(),
                passed: detail.is_empty(),
                detail,
            }
        })
        .collect();
    (Vec::new(), results)
}

fn expectation(plan: &[crate::core::plan::Action], error: Option<&str>) -> String {
    match error {
        Some(code) => format!("error `{code}`"),
        None => format!(
            "plan {}",
            shortened(serde_json::to_string(plan).unwrap_or_default())
        ),
    }
}

/// Plans and errors in a test's outcome, at most this many characters each: a failing test of
/// a plan of 8 KiB actions is recorded with every version, and read by people.
const SHOWN_CHARS: usize = 400;

/// `text`, cut after [`SHOWN_CHARS`] characters with what was left out said.
fn shortened(text: String) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes in all)", &text[..at], text.len()),
        None => text,
    }
}

/// What registering a patch directory did.
#[derive(Debug, Clone)]
pub struct Registered {
    pub record: PatchRecord,
    /// True when this version is the active one of its name after registration.
    pub active: bool,
}

/// Registers `patch` (checks and tests run only for a hash never seen before). A usable version
/// becomes the active one of its name; an unusable one never replaces an active version, so the
/// last good version stays in force.
pub async fn register_dir_patch(
    store: &Store,
    sandbox: &Arc<Sandbox>,
    patch: PatchSource,
) -> Result<Registered, StoreError> {
    register(store, sandbox, patch, Uploader::Dir).await
}

/// Where a version being registered comes from, and so who its author is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploader {
    /// The patches directory: its manifest names the author.
    Dir,
    /// `POST /v1/patches`, by this caller (a token's name, or `anonymous` without tokens): the
    /// author, whatever the manifest claims.
    Api(String),
}

/// Registers `patch` from `uploader` (see [`register_dir_patch`] for the activation rule). A
/// version registered before keeps its first record: its first uploader stays its author.
pub async fn register(
    store: &Store,
    sandbox: &Arc<Sandbox>,
    patch: PatchSource,
    uploader: Uploader,
) -> Result<Registered, StoreError> {
    if let Some(existing) = store.patch(&patch.manifest.name, &patch.hash)? {
        if existing.usable() {
            // Warm the compiled-module cache so that the first real run is fast.
            let _ = sandbox.prepare(&existing.hash, &patch.wasm);
        }
        return put(store, existing, patch.wasm).await;
    }
    let sandbox_for_checks = Arc::clone(sandbox);
    let patch_for_checks = patch.clone();
    let (check_problems, tests) =
        tokio::task::spawn_blocking(move || evaluate(&sandbox_for_checks, &patch_for_checks))
            .await
            .map_err(|e| StoreError::Io(format!("patch checks panicked: {e}")))?;
    let claimed = patch.manifest.author.clone();
    let (source, author, claimed_author) = match uploader {
        Uploader::Dir => (Provenance::Dir, claimed, None),
        Uploader::Api(caller) => (Provenance::Api, caller, Some(claimed)),
    };
    let record = PatchRecord {
        schema: 1,
        name: patch.manifest.name.clone(),
        version: patch.manifest.version.clone(),
        hash: patch.hash.clone(),
        description: patch.manifest.description.clone(),
        author,
        claimed_author,
        confidence: patch.manifest.confidence,
        source,
        registered_at: Timestamp::now(),
        check_problems,
        tests,
        first_use_approved: false,
        built_from: patch.manifest.source.clone(),
    };
    let registered = put(store, record, patch.wasm.clone()).await?;
    if registered.record.usable() {
        // Load the module the checks compiled, so that the first fault's run is inline too.
        let (sandbox, hash) = (Arc::clone(sandbox), patch.hash);
        let _ = tokio::task::spawn_blocking(move || sandbox.prepare(&hash, &patch.wasm)).await;
    }
    Ok(registered)
}

async fn put(store: &Store, record: PatchRecord, wasm: Vec<u8>) -> Result<Registered, StoreError> {
    let activation = if record.usable() {
        Activation::Always
    } else {
        Activation::IfNoneActive
    };
    let (record, active) = store.put_patch(record, wasm, activation).await?;
    Ok(Registered { record, active })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_plans_and_errors_are_shown_shortened_at_a_character() {
        assert_eq!(shortened("short".into()), "short");
        let exact = "é".repeat(SHOWN_CHARS);
        assert_eq!(shortened(exact.clone()), exact);
        assert_eq!(
            shortened("é".repeat(SHOWN_CHARS + 1)),
            format!("{exact}… ({} bytes in all)", 2 * (SHOWN_CHARS + 1))
        );
    }
}
