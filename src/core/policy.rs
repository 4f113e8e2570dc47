//! Policies: which faults phoenix heals, with which patch, allowed to do what, verified how.
//!
//! A policy is one `policies/*.toml` file. This module parses and validates them into a
//! [`PolicySet`] and matches faults against it. It reads no files itself (the daemon reads the
//! folder and hands over the texts) and watches nothing (hot reload belongs to the watcher).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::forms::duration;
use crate::core::source::Source;

/// A parsed, validated policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Unique among the loaded policies; defaults to the file's stem.
    #[serde(default)]
    pub name: String,
    /// Which faults this policy takes. All given fields must match.
    #[serde(rename = "match")]
    pub matcher: Matcher,
    pub patch: PatchRef,
    #[serde(default)]
    pub capabilities: Capabilities,
    pub verify: Verify,
    /// How many patch attempts a fault may get before it fails (default 1).
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// `"production"` makes every plan of this policy wait for human approval.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub approval: ApprovalRule,
    /// This policy's circuit breaker (`policy:NAME`).
    #[serde(default)]
    pub breaker: crate::core::breaker::BreakerConfig,
    /// A fleet-wide blast-radius budget (with a `[fleet]` in the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetBudget>,
}

/// `[fleet]` in a policy: at most `max_concurrent` hosts remediate with it at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetBudget {
    pub max_concurrent: u32,
    /// What one budget covers: every fault of this policy (`policy`, the default), or each app
    /// apart (`app`: at most N hosts per app).
    #[serde(default)]
    pub key: BudgetKey,
    /// How long a fault waits for a lease before it fails `budget_unavailable`. Default 10m.
    #[serde(default = "default_budget_wait", with = "duration")]
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKey {
    #[default]
    Policy,
    App,
}

fn default_budget_wait() -> Duration {
    Duration::from_secs(600)
}

impl FleetBudget {
    /// The budget a fault of `app` under policy `policy` counts against.
    pub fn name(&self, policy: &str, app: &str) -> String {
        match self.key {
            BudgetKey::Policy => format!("policy:{policy}"),
            BudgetKey::App => format!("app:{policy}:{app}"),
        }
    }
}

/// When a plan needs a human decision before it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalRule {
    /// `"auto"` (apply without asking) or `"required"`.
    pub rule: ApprovalMode,
    /// With `rule = "auto"`: ask anyway when the patch's confidence is below this.
    pub min_confidence: Option<f64>,
    /// Distinct approvers needed.
    pub quorum: u32,
    /// Whether the patch's author may be one of them.
    pub author_may_approve: bool,
    /// A request not decided within this long fails the fault (`approval_expired`).
    #[serde(with = "duration")]
    pub expires: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    Auto,
    Required,
}

impl Default for ApprovalRule {
    fn default() -> ApprovalRule {
        ApprovalRule {
            rule: ApprovalMode::Auto,
            min_confidence: None,
            quorum: 1,
            author_may_approve: true,
            expires: Duration::from_secs(3600),
        }
    }
}

impl Policy {
    /// Why a plan of this policy, made by a patch with `confidence`, needs approval (None:
    /// it may be applied at once).
    pub fn approval_reason(&self, confidence: f64) -> Option<String> {
        if self.environment.as_deref() == Some("production") {
            return Some(format!("policy `{}` is for production", self.name));
        }
        if self.approval.rule == ApprovalMode::Required {
            return Some(format!("policy `{}` requires approval", self.name));
        }
        match self.approval.min_confidence {
            Some(min) if confidence < min => Some(format!(
                "patch confidence {confidence} is below the policy's {min}"
            )),
            _ => None,
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub app: Option<String>,
    pub kind: Option<String>,
    /// Where the fault came from (`api`, `alertmanager`, `probe`, `log`, `supervisor`): the one
    /// field a reporter cannot choose, so the way to match only phoenix's own detections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Label equality: every listed label must be present with this value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Matcher {
    /// Whether a fault (or a report: the same fields) of `app` and `kind` with `labels`, from
    /// `source`, matches.
    pub fn matches(
        &self,
        app: &str,
        kind: &str,
        labels: &BTreeMap<String, String>,
        source: Source,
    ) -> bool {
        self.app.as_ref().is_none_or(|a| a == app)
            && self.kind.as_ref().is_none_or(|k| k == kind)
            && self.source.is_none_or(|s| s == source)
            && self
                .labels
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }

    /// More specific matchers win when several policies match one fault.
    fn specificity(&self) -> usize {
        usize::from(self.app.is_some())
            + usize::from(self.kind.is_some())
            + usize::from(self.source.is_some())
            + self.labels.len()
    }
}

/// What a policy matches a fault (or a report) by.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub app: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub source: Source,
}

/// The patch a policy uses: its name, optionally pinned to one content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRef {
    pub name: String,
    #[serde(default)]
    pub hash: Option<String>,
}

/// What a patch's plan may do under this policy. Anything not listed is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Named commands with a fixed argv; a plan refers to them by name only.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandSpec>,
    /// URL prefixes that `http` actions may target. Each must be http(s) and end with `/`.
    #[serde(default)]
    pub http_prefixes: Vec<String>,
    /// Directories under which `write_file` actions may replace files (relative ones against
    /// the config file's folder).
    #[serde(default)]
    pub writable_dirs: Vec<PathBuf>,
    /// Supervised programs that `restart` and `signal` actions may target; `"*"` means every
    /// supervised program.
    #[serde(default)]
    pub programs: Vec<String>,
    /// How long an `http` action may take, connecting included. Default 10s.
    #[serde(default = "default_http_timeout", with = "duration")]
    pub http_timeout: Duration,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for Capabilities {
    fn default() -> Capabilities {
        Capabilities {
            commands: BTreeMap::new(),
            http_prefixes: Vec::new(),
            writable_dirs: Vec::new(),
            programs: Vec::new(),
            http_timeout: default_http_timeout(),
        }
    }
}

impl Capabilities {
    pub fn covers_program(&self, program: &str) -> bool {
        self.programs.iter().any(|p| p == "*" || p == program)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    #[serde(default = "default_command_timeout", with = "duration")]
    pub timeout: Duration,
    /// The values a plan may put in the argv's one `{arg}` element (exactly, as whole strings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// The argv element a plan's `arg` fills.
pub const ARG_PLACEHOLDER: &str = "{arg}";

/// The longest value of a command's `args`.
const MAX_ARG_LEN: usize = 256;

impl CommandSpec {
    /// Whether a plan may run this command with `arg`: one of its `args` when its argv has
    /// `{arg}`, none otherwise.
    pub fn takes(&self, arg: Option<&str>) -> bool {
        match arg {
            Some(arg) => self.args.iter().any(|a| a == arg),
            None => self.args.is_empty(),
        }
    }

    /// The argv to run, `{arg}` filled. Only for an `arg` that [`CommandSpec::takes`].
    pub fn argv_with(&self, arg: Option<&str>) -> Vec<String> {
        self.argv
            .iter()
            .map(|element| match arg {
                Some(arg) if element == ARG_PLACEHOLDER => arg.to_owned(),
                _ => element.clone(),
            })
            .collect()
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() || self.argv[0] == ARG_PLACEHOLDER {
            return Err(format!(
                "`capabilities.commands.{name}.argv` must name a program"
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!(
                "`capabilities.commands.{name}.timeout` must be positive"
            ));
        }
        let placeholders = self.argv.iter().filter(|a| *a == ARG_PLACEHOLDER).count();
        if self
            .argv
            .iter()
            .any(|a| a != ARG_PLACEHOLDER && a.contains(ARG_PLACEHOLDER))
        {
            return Err(format!(
                "`capabilities.commands.{name}.argv`: `{ARG_PLACEHOLDER}` must be a whole element"
            ));
        }
        match (placeholders, self.args.is_empty()) {
            (0, true) => {}
            (1, false) => {}
            (0, false) => {
                return Err(format!(
                    "`capabilities.commands.{name}.args` is given but its argv has no `{ARG_PLACEHOLDER}` element"
                ));
            }
            (1, true) => {
                return Err(format!(
                    "`capabilities.commands.{name}.argv` has `{ARG_PLACEHOLDER}`: list the values it may take in `args`"
                ));
            }
            _ => {
                return Err(format!(
                    "`capabilities.commands.{name}.argv` may have one `{ARG_PLACEHOLDER}` element, not {placeholders}"
                ));
            }
        }
        for arg in &self.args {
            if arg.is_empty() || arg.len() > MAX_ARG_LEN || arg.chars().any(char::is_control) {
                return Err(format!(
                    "`capabilities.commands.{name}.args`: each must be 1-{MAX_ARG_LEN} bytes without control characters"
                ));
            }
            // A plan never reaches phoenix itself: not its files, not its API, not its units.
            if arg == "phoenix" || arg == "phoenix.service" || arg.starts_with("phoenix-report@") {
                return Err(format!(
                    "`capabilities.commands.{name}.args`: `{arg}` is phoenix's own unit; a plan may not act on phoenix"
                ));
            }
            // An option would change what the command does, not which thing it acts on.
            if arg.starts_with('-') {
                return Err(format!(
                    "`capabilities.commands.{name}.args`: `{arg}` starts with `-` (an option, not a name)"
                ));
            }
        }
        Ok(())
    }
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The probe that decides whether a patch healed the fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// A command whose exit status 0 means healthy.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An HTTP GET whose status must equal `status`.
    #[serde(default)]
    pub http: Option<HttpProbe>,
    /// The fault's app is a supervised program: healthy when its `health_url` answers 200, or,
    /// without one, when it is still running `start_grace` after its (re)start.
    #[serde(default)]
    pub supervised: bool,
    /// Give up (verify_failed) when not healthy within this long. Default 30s.
    #[serde(default = "default_within", with = "duration")]
    pub within: Duration,
    /// Pause between probe attempts. Default 500ms.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
}

fn default_within() -> Duration {
    Duration::from_secs(30)
}

fn default_interval() -> Duration {
    Duration::from_millis(500)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    200
}

/// Why a policy file was rejected. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the policy schema (the message carries line and
    /// column).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The policy parses but says something impossible.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Two files declare the same policy name.
    #[error("{path}: policy name `{name}` is already used by {other}")]
    Duplicate {
        path: PathBuf,
        name: String,
        other: PathBuf,
    },
}

impl Policy {
    /// Parses one policy file's text. `path` is used for the name default and error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: crate::core::forms::toml_error(&e),
        })?;
        if policy.name.is_empty() {
            policy.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        policy.validate().map_err(|message| PolicyError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        if self.patch.name.is_empty() {
            return Err("`patch.name` must not be empty".into());
        }
        self.breaker.validate("breaker")?;
        if self.approval.quorum == 0 || self.approval.quorum > 10 {
            return Err("`approval.quorum` must be between 1 and 10".into());
        }
        if self
            .approval
            .min_confidence
            .is_some_and(|c| !(0.0..=1.0).contains(&c))
        {
            return Err("`approval.min_confidence` must be between 0 and 1".into());
        }
        if self.approval.expires.is_zero() {
            return Err("`approval.expires` must be positive".into());
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return Err("`max_attempts` must be between 1 and 10".into());
        }
        if let Some(budget) = &self.fleet {
            if budget.max_concurrent == 0 || budget.max_concurrent > 1000 {
                return Err("`fleet.max_concurrent` must be between 1 and 1000".into());
            }
            if budget.wait.is_zero() {
                return Err("`fleet.wait` must be positive".into());
            }
        }
        for (name, command) in &self.capabilities.commands {
            command.validate(name)?;
        }
        for dir in &self.capabilities.writable_dirs {
            let climbs = dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
            if dir.as_os_str().is_empty() || climbs {
                return Err(format!(
                    "`capabilities.writable_dirs`: `{}` must name a directory without `..`",
                    dir.display()
                ));
            }
        }
        for prefix in &self.capabilities.http_prefixes {
            let scheme_ok = prefix.starts_with("http://") || prefix.starts_with("https://");
            let host_and_path = prefix
                .split_once("://")
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            if !scheme_ok || !host_and_path.contains('/') || !prefix.ends_with('/') {
                return Err(format!(
                    "`capabilities.http_prefixes`: `{prefix}` must be an http(s) URL with a path ending in `/` (e.g. \"http://127.0.0.1:8080/admin/\")"
                ));
            }
        }
        let probes = usize::from(self.verify.command.is_some())
            + usize::from(self.verify.http.is_some())
            + usize::from(self.verify.supervised);
        if probes != 1 {
            return Err(
                "`verify` needs exactly one of `command`, `http` or `supervised = true`".into(),
            );
        }
        if self
            .verify
            .command
            .as_ref()
            .is_some_and(|argv| argv.is_empty() || argv[0].is_empty())
        {
            return Err("`verify.command` must name a program".into());
        }
        if self.verify.within.is_zero() || self.verify.interval.is_zero() {
            return Err("`verify.within` and `verify.interval` must be positive".into());
        }
        Ok(())
    }
}

/// All loaded policies, in a deterministic order (by name).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Each policy with its `content_hash`, computed once per load (a run records the version
    /// of its policy by this hash).
    policies: Vec<(Arc<Policy>, String)>,
}

/// A policy's version: the blake3 hash of its canonical JSON, and that JSON (what a run's
/// snapshot stores under the hash).
pub fn content_hash(policy: &Policy) -> (String, Vec<u8>) {
    // Serializing plain data (strings, numbers, maps with string keys) cannot fail.
    let json = serde_json::to_vec(policy).unwrap_or_default();
    (blake3::hash(&json).to_hex().to_string(), json)
}

impl PolicySet {
    /// The set of the policy files `files` (each path with its text as read, in order), each
    /// also checked by `check` (phoenix's containment: a policy may not reach phoenix's own
    /// files or API). Any bad file fails the whole set, naming every bad file, so that a reload
    /// never half-applies.
    pub fn from_files(
        files: Vec<(PathBuf, std::io::Result<String>)>,
        check: impl Fn(&Policy) -> Result<(), String>,
    ) -> Result<PolicySet, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut loaded: Vec<(PathBuf, Policy)> = Vec::new();
        for (path, text) in files {
            let parsed = text
                .map_err(|source| PolicyError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|text| Policy::parse(&path, &text))
                .and_then(|policy| {
                    check(&policy).map_err(|message| PolicyError::Invalid {
                        path: path.clone(),
                        message,
                    })?;
                    Ok(policy)
                });
            match parsed {
                Ok(policy) => {
                    if let Some((other, _)) = loaded.iter().find(|(_, p)| p.name == policy.name) {
                        errors.push(PolicyError::Duplicate {
                            path: path.clone(),
                            name: policy.name.clone(),
                            other: other.clone(),
                        });
                    } else {
                        loaded.push((path, policy));
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PolicySet::from_policies(
            loaded.into_iter().map(|(_, p)| p).collect(),
        ))
    }

    pub fn from_policies(mut policies: Vec<Policy>) -> PolicySet {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        PolicySet {
            policies: policies
                .into_iter()
                .map(|policy| {
                    let hash = content_hash(&policy).0;
                    (Arc::new(policy), hash)
                })
                .collect(),
        }
    }

    /// The most specific policy matching `subject`; ties go to the first by name.
    pub fn find(&self, subject: Subject<'_>) -> Option<&Policy> {
        self.find_versioned(subject).map(|(policy, _)| &**policy)
    }

    /// Whether any policy matches a report of `app` and `kind` with `labels` from `source`.
    pub fn matches_any(
        &self,
        app: &str,
        kind: &str,
        labels: &BTreeMap<String, String>,
        source: Source,
    ) -> bool {
        self.policies
            .iter()
            .any(|(policy, _)| policy.matcher.matches(app, kind, labels, source))
    }

    /// [`PolicySet::find`], with the policy shared and its `content_hash`.
    pub fn find_versioned(&self, subject: Subject<'_>) -> Option<(&Arc<Policy>, &str)> {
        let mut best: Option<(&Arc<Policy>, &str)> = None;
        for (policy, hash) in &self.policies {
            let Subject {
                app,
                kind,
                labels,
                source,
            } = subject;
            if !policy.matcher.matches(app, kind, labels, source) {
                continue;
            }
            if best.is_none_or(|(b, _)| policy.matcher.specificity() > b.matcher.specificity()) {
                best = Some((policy, hash));
            }
        }
        best
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|(policy, _)| &**policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fault::{Fault, Report, Source, Timestamp};

    const GOOD: &str = r#"
        [match]
        app = "demo"
        kind = "disk_full"

        [patch]
        name = "disk-cleanup"

        [capabilities.commands.cleanup]
        argv = ["sh", "-c", "true"]
        timeout = "5s"

        [verify]
        command = ["true"]
        within = "10s"
    "#;

    fn fault(app: &str, kind: &str, labels: &[(&str, &str)]) -> Fault {
        let report = Report::sample(app, kind, labels);
        Fault::new("id".into(), report, Source::Api, Timestamp(0))
    }

    fn parse_err(text: &str) -> String {
        Policy::parse(Path::new("p/x.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_parse_error_quotes_a_short_line_but_not_a_huge_one() {
        let short = parse_err("[match]\napp = \"web\" junk\n");
        assert!(short.contains("app = \"web\" junk"), "{short}");
        assert!(short.contains("line 2"), "{short}");
        let huge = format!("[match]\napp = \"{}\" junk\n", "a".repeat(200_000));
        let err = parse_err(&huge);
        assert!(err.len() < 1_000, "{} bytes", err.len());
        assert!(
            err.contains("line 2, column 200010: unexpected key or value"),
            "{err}"
        );
    }

    #[test]
    fn a_good_policy_parses_with_defaults() {
        let policy = Policy::parse(Path::new("policies/demo.toml"), GOOD).unwrap();
        assert_eq!(policy.name, "demo");
        assert_eq!(policy.max_attempts, 1);
        assert_eq!(
            policy.capabilities.commands["cleanup"].timeout,
            Duration::from_secs(5)
        );
        assert_eq!(policy.verify.interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let unknown = parse_err(&format!("retries = 3\n{GOOD}"));
        assert!(
            unknown.contains("p/x.toml") && unknown.contains("unknown field `retries`"),
            "{unknown}"
        );
        let bad_duration = parse_err(&GOOD.replace("\"10s\"", "\"soon\""));
        assert!(
            bad_duration.contains("`soon` is not a duration"),
            "{bad_duration}"
        );
        assert!(bad_duration.contains("line"), "{bad_duration}");
        let no_probe = parse_err(&GOOD.replace("command = [\"true\"]", ""));
        assert!(
            no_probe.contains("`verify` needs exactly one of"),
            "{no_probe}"
        );
        let typo = parse_err(&GOOD.replace("timeout = \"5s\"", "timeout = \"5s\"\nargz = []"));
        assert!(typo.contains("unknown field `argz`"), "{typo}");
        let empty_argv = parse_err(&GOOD.replace("argv = [\"sh\", \"-c\", \"true\"]", "argv = []"));
        assert!(
            empty_argv.contains("`capabilities.commands.cleanup.argv` must name a program"),
            "{empty_argv}"
        );
        let attempts = parse_err(&format!("max_attempts = 0\n{GOOD}"));
        assert!(
            attempts.contains("`max_attempts` must be between 1 and 10"),
            "{attempts}"
        );
    }

    #[test]
    fn a_commands_one_argument_is_a_whole_element_with_its_values_listed() {
        let with = |argv: &str, args: &str| {
            GOOD.replace(
                "argv = [\"sh\", \"-c\", \"true\"]",
                &format!("argv = {argv}\nargs = {args}"),
            )
        };
        for (argv, args, why) in [
            (
                r#"["systemctl", "restart", "{arg}"]"#,
                "[]",
                "list the values it may take in `args`",
            ),
            (
                r#"["systemctl", "restart"]"#,
                r#"["a.service"]"#,
                "has no `{arg}` element",
            ),
            (
                r#"["systemctl", "{arg}", "{arg}"]"#,
                r#"["a"]"#,
                "one `{arg}` element, not 2",
            ),
            (
                r#"["systemctl", "--unit={arg}"]"#,
                r#"["a"]"#,
                "must be a whole element",
            ),
            (r#"["{arg}"]"#, r#"["a"]"#, "must name a program"),
            (
                r#"["systemctl", "{arg}"]"#,
                r#"["--force"]"#,
                "starts with `-`",
            ),
            (
                r#"["systemctl", "{arg}"]"#,
                r#"[""]"#,
                "without control characters",
            ),
            (
                r#"["systemctl", "{arg}"]"#,
                r#"["a\nb"]"#,
                "without control characters",
            ),
        ] {
            let error = parse_err(&with(argv, args));
            assert!(error.contains(why), "{argv} {args}: {error}");
        }
        let policy = Policy::parse(
            Path::new("p.toml"),
            &with(
                r#"["systemctl", "restart", "--", "{arg}"]"#,
                r#"["a.service", "b.service"]"#,
            ),
        )
        .unwrap();
        let spec = &policy.capabilities.commands["cleanup"];
        assert!(spec.takes(Some("b.service")));
        assert!(!spec.takes(Some("c.service")));
        assert!(!spec.takes(Some("b.servic")));
        assert!(!spec.takes(None));
        assert_eq!(
            spec.argv_with(Some("a.service")),
            ["systemctl", "restart", "--", "a.service"]
        );
    }

    #[test]
    fn http_prefixes_must_be_urls_ending_in_a_slash() {
        let with_prefix = |prefix: &str| {
            GOOD.replace(
                "[verify]",
                &format!("[capabilities]\nhttp_prefixes = [\"{prefix}\"]\n[verify]"),
            )
        };
        assert!(parse_err(&with_prefix("http://127.0.0.1:80")).contains("ending in `/`"));
        assert!(parse_err(&with_prefix("ftp://x/")).contains("must be an http(s) URL"));
        let policy = Policy::parse(
            Path::new("p.toml"),
            &with_prefix("http://127.0.0.1:80/admin/"),
        )
        .unwrap();
        assert_eq!(
            policy.capabilities.http_prefixes,
            vec!["http://127.0.0.1:80/admin/".to_string()]
        );
    }

    #[test]
    fn the_most_specific_policy_wins() {
        let base = Policy::parse(Path::new("a.toml"), GOOD).unwrap();
        let mut any_app = base.clone();
        any_app.name = "any".into();
        any_app.matcher.app = None;
        let mut labelled = base.clone();
        labelled.name = "labelled".into();
        labelled
            .matcher
            .labels
            .insert("mount".into(), "/var".into());
        let set = PolicySet::from_policies(vec![any_app, base, labelled]);
        assert_eq!(
            set.find(fault("demo", "disk_full", &[]).subject())
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            set.find(fault("demo", "disk_full", &[("mount", "/var")]).subject())
                .unwrap()
                .name,
            "labelled"
        );
        assert_eq!(
            set.find(fault("other", "disk_full", &[]).subject())
                .unwrap()
                .name,
            "any"
        );
        assert!(set.find(fault("demo", "oom", &[]).subject()).is_none());
    }

    #[test]
    fn a_report_matches_any_exactly_when_its_fault_would_find_a_policy() {
        let base = Policy::parse(Path::new("a.toml"), GOOD).unwrap();
        let mut labelled = base.clone();
        labelled.name = "labelled".into();
        labelled.matcher.app = Some("other".into());
        labelled
            .matcher
            .labels
            .insert("mount".into(), "/var".into());
        let set = PolicySet::from_policies(vec![base, labelled]);
        for (app, kind, labels) in [
            ("demo", "disk_full", &[][..]),
            ("demo", "oom", &[]),
            ("other", "disk_full", &[]),
            ("other", "disk_full", &[("mount", "/var")]),
            ("other", "disk_full", &[("mount", "/tmp")]),
        ] {
            let fault = fault(app, kind, labels);
            assert_eq!(
                set.matches_any(&fault.app, &fault.kind, &fault.labels, fault.source),
                set.find(fault.subject()).is_some(),
                "{app} {kind} {labels:?}"
            );
        }
        assert!(!PolicySet::from_policies(vec![]).matches_any(
            "demo",
            "disk_full",
            &BTreeMap::new(),
            Source::Api
        ));
    }

    #[test]
    fn a_policy_may_match_on_where_the_fault_came_from() {
        let exits = Policy::parse(
            Path::new("restart.toml"),
            &GOOD.replace("app = \"demo\"\n", "").replace(
                "kind = \"disk_full\"",
                "kind = \"exited\"\nsource = \"supervisor\"",
            ),
        )
        .unwrap();
        assert_eq!(exits.matcher.source, Some(Source::Supervisor));
        let set = PolicySet::from_policies(vec![exits]);
        let mut exit = fault("web", "exited", &[("supervisor", "phoenix")]);
        assert!(
            set.find(exit.subject()).is_none(),
            "an API report that says it is an exit"
        );
        exit.source = Source::Supervisor;
        assert_eq!(set.find(exit.subject()).unwrap().name, "restart");
        let unknown = parse_err(&GOOD.replace("kind = \"disk_full\"", "source = \"me\""));
        assert!(unknown.contains("unknown variant `me`"), "{unknown}");
    }

    #[test]
    fn a_writable_dir_may_not_climb() {
        for dir in ["../etc", "a/../../b", ""] {
            let text = GOOD.replace(
                "[verify]",
                &format!("[capabilities]\nwritable_dirs = [\"{dir}\"]\n[verify]"),
            );
            assert!(
                parse_err(&text).contains("must name a directory without `..`"),
                "{dir}: {}",
                parse_err(&text)
            );
        }
    }

    #[test]
    fn a_policy_refused_by_the_load_check_fails_the_load_naming_its_file() {
        let files = || {
            vec![
                (PathBuf::from("p/a.toml"), Ok(GOOD.to_string())),
                (PathBuf::from("p/b.toml"), Ok(GOOD.replace("demo", "other"))),
            ]
        };
        let errors = PolicySet::from_files(files(), |policy| {
            if policy.matcher.app.as_deref() == Some("other") {
                Err("reaches phoenix".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["p/b.toml: reaches phoenix"]);
        assert_eq!(PolicySet::from_files(files(), |_| Ok(())).unwrap().len(), 2);
        let unreadable = vec![(
            PathBuf::from("p/c.toml"),
            Err(std::io::Error::other("permission denied")),
        )];
        let errors = PolicySet::from_files(unreadable, |_| Ok(())).unwrap_err();
        assert_eq!(errors[0].to_string(), "p/c.toml: permission denied");
    }
}
