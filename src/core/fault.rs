//! The fault: what was reported, where it is in its healing, and what happened to it.
//!
//! These are plain data types shared by intake, store, engine and API. They carry no behaviour
//! beyond validation and fingerprinting, and do no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::plan::Action;

pub use crate::core::forms::Timestamp;
pub use crate::core::source::{RESERVED_LABELS, Source};

/// Limits on a report, so that one client cannot make phoenix store unbounded data.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
pub const MAX_MESSAGE_LEN: usize = 4096;

/// How bad a fault is, as the reporter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    #[default]
    Error,
    Critical,
}

impl Severity {
    /// Every severity, as the patch SDKs must know them (`tests/sdk.rs` keeps them equal).
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The severity's name, as in the API and a patch's view of its fault.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// A fault report as it arrives, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub app: String,
    pub kind: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    /// Set by detection sources that have their own identity for a fault (e.g. an Alertmanager
    /// alert fingerprint): when present, it replaces the labels in the fingerprint, so the
    /// fault's labels may change between reports without opening a new fault. Not accepted from
    /// `POST /v1/faults`.
    #[serde(skip)]
    pub dedup_key: Option<String>,
    /// Set by sources whose faults recur (a supervised program crashing again soon after its
    /// restart healed it): a matching report within this long after the last fault with the
    /// same fingerprint was healed reopens that fault instead of opening a new one.
    #[serde(skip)]
    pub reopen_within: Option<std::time::Duration>,
}

/// Why a report was refused. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A required name (`app` or `kind`) is empty.
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    /// A name or value is longer than allowed.
    #[error("`{field}` is longer than {max} bytes")]
    TooLong { field: String, max: usize },
    /// A name uses characters outside `[A-Za-z0-9._:/@-]`.
    #[error("`{field}` may only contain letters, digits and . _ : / -")]
    BadChars { field: String },
    /// Too many labels.
    #[error("at most {MAX_LABELS} labels are allowed")]
    TooManyLabels,
    /// A label only phoenix's own sources set, in a report from outside.
    #[error(
        "label `{0}` is set only by phoenix's own sources (supervised programs, probes, log watches, systemd units), so a report may not carry it; name it otherwise (a policy matches where a fault came from with `match.source`)"
    )]
    ReservedLabel(String),
}

fn check_name(field: &str, value: &str) -> Result<(), ReportError> {
    if value.len() > MAX_NAME_LEN {
        return Err(ReportError::TooLong {
            field: field.to_owned(),
            max: MAX_NAME_LEN,
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
    {
        return Err(ReportError::BadChars {
            field: field.to_owned(),
        });
    }
    Ok(())
}

impl Report {
    /// Checks every field against the limits; a report that passes can be stored as is.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.app.is_empty() {
            return Err(ReportError::Empty("app"));
        }
        if self.kind.is_empty() {
            return Err(ReportError::Empty("kind"));
        }
        check_name("app", &self.app)?;
        check_name("kind", &self.kind)?;
        if self.labels.len() > MAX_LABELS {
            return Err(ReportError::TooManyLabels);
        }
        for (key, value) in &self.labels {
            if key.is_empty() {
                return Err(ReportError::Empty("labels key"));
            }
            check_name(&format!("labels.{key}"), key)?;
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(ReportError::TooLong {
                    field: format!("labels.{key}"),
                    max: MAX_LABEL_VALUE_LEN,
                });
            }
        }
        if let Some(message) = &self.message
            && message.len() > MAX_MESSAGE_LEN
        {
            return Err(ReportError::TooLong {
                field: "message".into(),
                max: MAX_MESSAGE_LEN,
            });
        }
        Ok(())
    }

    /// Checks that a report from `source` carries no label of [`RESERVED_LABELS`] unless
    /// `source` is phoenix's own.
    pub fn check_labels_for(&self, source: Source) -> Result<(), ReportError> {
        match RESERVED_LABELS
            .iter()
            .find(|label| self.labels.contains_key(**label) && !source.may_set(label))
        {
            Some(label) => Err(ReportError::ReservedLabel((*label).to_owned())),
            None => Ok(()),
        }
    }

    /// A minimal report, for unit tests across the crate.
    #[cfg(test)]
    pub fn sample(app: &str, kind: &str, labels: &[(&str, &str)]) -> Report {
        Report {
            app: app.into(),
            kind: kind.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message: None,
            severity: Severity::Error,
            dedup_key: None,
            reopen_within: None,
        }
    }

    /// blake3 of app, kind and the (sorted) labels, length-prefixed so that no two different
    /// reports can encode to the same bytes. Two reports with one fingerprint are one fault.
    pub fn fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(self.app.as_bytes());
        field(self.kind.as_bytes());
        if let Some(key) = &self.dedup_key {
            // A NUL-led tag cannot be a label name, so this never equals a labels encoding.
            field(b"\0dedup_key");
            field(key.as_bytes());
        } else {
            for (key, value) in &self.labels {
                field(key.as_bytes());
                field(value.as_bytes());
            }
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// Why a fault ended in `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailReason {
    /// No policy matches the fault.
    NoPolicy,
    /// The policy names a patch that is not registered (or not at the pinned hash).
    PatchUnavailable,
    /// The patch failed its static checks (forbidden import, missing export, too large…).
    PatchRejected,
    /// The patch's contract tests failed; it is never applied.
    ContractFailed,
    /// The patch trapped, ran out of fuel or time, exceeded a limit, or returned an error.
    SandboxError,
    /// The plan asked for something the policy does not allow; nothing was executed.
    CapabilityDenied,
    /// An action of the plan failed while being applied.
    ApplyFailed,
    /// The verification probe did not report healthy in time.
    VerifyFailed,
    /// A circuit breaker covering the fault is open (its policy says to fail rather than ask).
    BreakerOpen,
    /// A human rejected the plan.
    Rejected,
    /// Nobody decided on the plan before its approval request expired.
    ApprovalExpired,
    /// phoenix could not continue the fault (e.g. its recorded run is unreadable).
    Interrupted,
    /// The policy's fleet budget had no free lease before its deadline (`fleet.wait`).
    BudgetUnavailable,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoPolicy => "no_policy",
            FailReason::PatchUnavailable => "patch_unavailable",
            FailReason::PatchRejected => "patch_rejected",
            FailReason::ContractFailed => "contract_failed",
            FailReason::SandboxError => "sandbox_error",
            FailReason::CapabilityDenied => "capability_denied",
            FailReason::ApplyFailed => "apply_failed",
            FailReason::VerifyFailed => "verify_failed",
            FailReason::Interrupted => "interrupted",
            FailReason::Rejected => "rejected",
            FailReason::BreakerOpen => "breaker_open",
            FailReason::ApprovalExpired => "approval_expired",
            FailReason::BudgetUnavailable => "budget_unavailable",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a fault is in its healing. Serialized as `{"state": "failed", "reason": "no_policy"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum FaultState {
    Detected,
    Analyzing,
    AwaitingApproval,
    /// The plan may go ahead, but its policy's fleet budget is full: waiting for a lease.
    AwaitingBudget,
    Patching,
    Testing,
    Healed,
    Failed(FailReason),
    /// The fault went away on its own (its alert resolved) before phoenix acted.
    Resolved,
}

impl FaultState {
    /// The states a fault is open in, in the order it moves through them.
    pub const OPEN: [FaultState; 6] = [
        FaultState::Detected,
        FaultState::Analyzing,
        FaultState::AwaitingApproval,
        FaultState::AwaitingBudget,
        FaultState::Patching,
        FaultState::Testing,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            FaultState::Healed | FaultState::Failed(_) | FaultState::Resolved
        )
    }

    /// The state's name as used in the API and in filters.
    pub fn name(self) -> &'static str {
        match self {
            FaultState::Detected => "detected",
            FaultState::Analyzing => "analyzing",
            FaultState::AwaitingApproval => "awaiting_approval",
            FaultState::AwaitingBudget => "awaiting_budget",
            FaultState::Patching => "patching",
            FaultState::Testing => "testing",
            FaultState::Healed => "healed",
            FaultState::Failed(_) => "failed",
            FaultState::Resolved => "resolved",
        }
    }

    pub fn reason(self) -> Option<FailReason> {
        match self {
            FaultState::Failed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Every state name a filter may use.
    pub const NAMES: [&'static str; 9] = [
        "detected",
        "analyzing",
        "awaiting_approval",
        "awaiting_budget",
        "patching",
        "testing",
        "healed",
        "failed",
        "resolved",
    ];
}

/// The healing run a fault is on: what was chosen in `analyzing` and how far applying got.
/// Stored with the fault so that a restart resumes with the same policy, patch and plan, even if
/// the files on disk changed meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub policy: String,
    pub patch_name: String,
    pub patch_version: String,
    pub patch_hash: String,
    pub plan: Vec<Action>,
    /// The policy as it was when the run started (a reload does not change a run in flight):
    /// blake3 of its JSON, stored once under that hash and shared by every run that uses it.
    #[serde(default)]
    pub policy_hash: String,
    /// Runs recorded before policies were stored by hash carry the policy itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_snapshot: Option<serde_json::Value>,
    /// Actions whose execution has begun (durably recorded before starting each one).
    pub actions_started: u32,
    /// Actions that finished successfully.
    pub actions_done: u32,
    /// The human decision this run waits for, when its policy asks for one.
    #[serde(default)]
    pub approval: Option<ApprovalRequest>,
    /// How to undo each started action (`None`: it cannot be undone, e.g. `exec`), recorded
    /// durably before the action runs.
    #[serde(default)]
    pub undo: Vec<Option<Undo>>,
    /// The fleet budget the run counts against, when its policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetHold>,
}

/// A run's fleet budget: which one, since when the fault waits for it, and the lease once held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetHold {
    /// `policy:NAME` or `app:POLICY:APP`.
    pub name: String,
    pub max_concurrent: u32,
    /// When the fault started waiting (its deadline counts from here).
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A lease of a fleet budget: its slot, and the revision that proves it was ours when written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: String,
    pub revision: u64,
}

/// A plan waiting for people: why, until when, and who decided what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub reason: String,
    pub requested_at: Timestamp,
    pub expires_at: Timestamp,
    /// Distinct approvers needed.
    pub quorum: u32,
    pub patch_author: String,
    pub author_may_approve: bool,
    pub patch_confidence: f64,
    pub decisions: Vec<Decision>,
}

/// One person's decision on an approval request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub approve: bool,
    #[serde(default)]
    pub comment: String,
    pub at: Timestamp,
}

impl ApprovalRequest {
    pub fn approvers(&self) -> usize {
        self.decisions.iter().filter(|d| d.approve).count()
    }

    pub fn granted(&self) -> bool {
        self.approvers() >= self.quorum as usize
    }

    pub fn rejected_by(&self) -> Option<&Decision> {
        self.decisions.iter().find(|d| !d.approve)
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

/// A file's owner and group, kept when phoenix replaces it (and restored by its undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub uid: u32,
    pub gid: u32,
}

/// How to undo one applied action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// Put a file back: its previous bytes are in `backup` (with its `mode` and `owner`), or,
    /// when `backup` is `None`, the file did not exist and is removed.
    RestoreFile {
        path: std::path::PathBuf,
        backup: Option<std::path::PathBuf>,
        mode: Option<u32>,
        /// Absent in records written before phoenix kept owners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<FileOwner>,
        /// The temporary name (in the file's directory) the write and its undo use, recorded
        /// before either runs so that what a crash leaves there is removed. Absent in records
        /// written before phoenix recorded it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temp: Option<String>,
    },
}

impl Undo {
    /// The recorded temporary name of the write this undoes, if any.
    pub fn temp(&self) -> Option<&str> {
        let Undo::RestoreFile { temp, .. } = self;
        temp.as_deref()
    }
}

/// What rolling back an attempt's changes achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollback {
    /// Every reversible change was undone.
    RolledBack,
    /// At least one undo failed: the system may be left changed. Logged as an error.
    RollbackFailed,
}

/// A stored fault: the report, its counters and its current state. Its history is stored beside
/// it, one [`HistoryEntry`] per sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Store record version, so that later releases can migrate old records.
    pub schema: u32,
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
    /// Sequence number of the last history entry; the compare-and-swap guard for transitions.
    pub seq: u64,
    /// Attempts made so far (a policy may allow more than one).
    pub attempts: u32,
    pub run: Option<Run>,
    /// When the source said the fault is over (an Alertmanager "resolved" notification).
    #[serde(default)]
    pub resolved_at: Option<Timestamp>,
    /// When the fault reached its terminal state (cleared if it is reopened).
    #[serde(default)]
    pub closed_at: Option<Timestamp>,
    /// The outcome of the last rollback, if changes had to be undone.
    #[serde(default)]
    pub rollback: Option<Rollback>,
}

pub const FAULT_SCHEMA: u32 = 1;

impl Fault {
    /// What a policy matches this fault by.
    pub fn subject(&self) -> crate::core::policy::Subject<'_> {
        crate::core::policy::Subject {
            app: &self.app,
            kind: &self.kind,
            labels: &self.labels,
            source: self.source,
        }
    }

    /// A fresh fault in `detected`, history seq 1.
    pub fn new(id: String, report: Report, source: Source, now: Timestamp) -> Fault {
        let fingerprint = report.fingerprint();
        Fault {
            schema: FAULT_SCHEMA,
            id,
            app: report.app,
            kind: report.kind,
            labels: report.labels,
            message: report.message,
            severity: report.severity,
            source,
            fingerprint,
            occurrences: 1,
            first_seen: now,
            last_seen: now,
            state: FaultState::Detected,
            seq: 1,
            attempts: 0,
            run: None,
            resolved_at: None,
            closed_at: None,
            rollback: None,
        }
    }
}

/// One line of a fault's history: a transition, or progress within a state (an action started or
/// finished). Appended, never rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub state: FaultState,
    pub at: Timestamp,
    pub detail: String,
}

/// Crockford base32, the ULID alphabet: ids sort by creation time as plain strings.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A 26-character, lexicographically sortable id: 48 bits of milliseconds, then 80 bits of a
/// counter that the store keeps monotonic across restarts.
pub fn sortable_id(at: Timestamp, counter: u64) -> String {
    let value: u128 = (u128::from(at.0 & 0xFFFF_FFFF_FFFF) << 80) | u128::from(counter);
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 0x1F) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_recorded_before_policies_were_stored_by_hash_keeps_its_inline_policy() {
        let policy = r#"{"name":"p","match":{"app":"web"},"patch":{"name":"x"},"verify":{"command":["true"]}}"#;
        let old = format!(
            r#"{{"attempt":1,"policy":"p","patch_name":"x","patch_version":"1","patch_hash":"h","plan":[],"policy_snapshot":{policy},"actions_started":0,"actions_done":0}}"#
        );
        let run: Run = serde_json::from_str(&old).unwrap();
        assert_eq!(run.policy_hash, "");
        assert_eq!(
            run.policy_snapshot.as_ref().map(|p| p["name"].clone()),
            Some("p".into())
        );

        let new = Run {
            policy_hash: "abc".into(),
            policy_snapshot: None,
            ..run
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["policy_hash"], "abc");
        assert!(json.get("policy_snapshot").is_none(), "{json}");
    }

    use super::*;

    fn report(app: &str, kind: &str, labels: &[(&str, &str)]) -> Report {
        Report::sample(app, kind, labels)
    }

    #[test]
    fn fingerprint_ignores_message_and_label_order_but_not_label_values() {
        let a = report("web", "oom", &[("host", "a"), ("zone", "1")]);
        let mut b = report("web", "oom", &[("zone", "1"), ("host", "a")]);
        b.message = Some("different".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(
            a.fingerprint(),
            report("web", "oom", &[("host", "b"), ("zone", "1")]).fingerprint()
        );
        // Length prefixes keep field boundaries: "ab"+"c" differs from "a"+"bc".
        assert_ne!(
            report("ab", "c", &[]).fingerprint(),
            report("a", "bc", &[]).fingerprint()
        );
    }

    #[test]
    fn validation_names_the_offending_field() {
        let check = |r: Report, expect: &str| {
            assert_eq!(
                r.validate().map_err(|e| e.to_string()),
                Err(expect.to_string())
            )
        };
        check(report("", "k", &[]), "`app` must not be empty");
        check(report("a", "", &[]), "`kind` must not be empty");
        check(
            report("a b", "k", &[]),
            "`app` may only contain letters, digits and . _ : / -",
        );
        check(
            report(&"x".repeat(129), "k", &[]),
            "`app` is longer than 128 bytes",
        );
        let long = "v".repeat(1025);
        check(
            report("a", "k", &[("big", long.as_str())]),
            "`labels.big` is longer than 1024 bytes",
        );
        assert_eq!(
            report("demo", "disk_full", &[("mount", "/var")]).validate(),
            Ok(())
        );
    }

    #[test]
    fn sortable_ids_sort_by_time_then_counter() {
        let a = sortable_id(Timestamp(1_700_000_000_000), 5);
        let b = sortable_id(Timestamp(1_700_000_000_000), 6);
        let c = sortable_id(Timestamp(1_700_000_000_001), 0);
        assert_eq!(a.len(), 26);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn states_serialize_with_their_api_names() {
        let json = serde_json::to_value(FaultState::Failed(FailReason::NoPolicy)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "failed", "reason": "no_policy"})
        );
        let json = serde_json::to_value(FaultState::AwaitingApproval).unwrap();
        assert_eq!(json, serde_json::json!({"state": "awaiting_approval"}));
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp(1_700_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn enums_name_themselves_as_their_json_does() {
        use super::*;
        for severity in [
            Severity::Info,
            Severity::Warning,
            Severity::Error,
            Severity::Critical,
        ] {
            assert_eq!(serde_json::to_value(severity).unwrap(), severity.as_str());
        }
        for source in [
            Source::Api,
            Source::Alertmanager,
            Source::Probe,
            Source::Log,
            Source::Supervisor,
        ] {
            assert_eq!(serde_json::to_value(source).unwrap(), source.as_str());
        }
        for reason in [
            FailReason::NoPolicy,
            FailReason::CapabilityDenied,
            FailReason::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
