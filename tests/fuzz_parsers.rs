//! Bounded fuzzing of every parser that reads outside input: fault reports, Alertmanager
//! notifications, policies, patch manifests, the config file, plans (the actions a patch sends)
//! and the plan check. Each must answer Ok or a clear error for any input, never panic.
//!
//! Inputs are arbitrary bytes, and structured ones: JSON/TOML built from the fields each parser
//! knows with values of the wrong types, sizes and characters (where the interesting bugs hide).
//! `PROPTEST_CASES` sets the cases per property (256 by default, as CI runs it).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};

use phoenix::core::fault::Report;
use phoenix::core::plan::{Action, check};
use phoenix::core::policy::{Capabilities, Policy};
use phoenix::daemon::config::Config;
use phoenix::patch::Manifest;
use phoenix::sources::alertmanager::{AlertmanagerConfig, Notification, to_report};

/// Strings a parser should be wary of: empty, huge, control characters, path and URL tricks.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z_]{1,12}",
        "\\PC{0,40}",
        "[\\x00-\\x1f\\\\/.%]{0,20}",
        Just("../../etc/passwd".to_owned()),
        Just("http://127.0.0.1:9/allowed/../x".to_owned()),
        (1usize..70_000).prop_map(|n| "a".repeat(n)),
    ]
}

/// A JSON value built from `keys` (so objects look like the real thing) and nasty leaves.
fn json_with(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(keys).prop_map(str::to_owned),
                        nasty_string()
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const REPORT_KEYS: &[&str] = &["app", "kind", "labels", "message", "severity", "instance"];
const ALERT_KEYS: &[&str] = &[
    "version",
    "alerts",
    "status",
    "labels",
    "annotations",
    "fingerprint",
    "endsAt",
    "startsAt",
    "app",
    "alertname",
    "firing",
    "resolved",
    "summary",
];
const ACTION_KEYS: &[&str] = &[
    "kind",
    "command",
    "program",
    "signal",
    "path",
    "content",
    "method",
    "url",
    "body",
    "headers",
    "exec",
    "restart",
    "write_file",
    "http",
];

/// TOML text from a JSON-ish value (what TOML can express), under `table` headers.
fn toml_text(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (
                prop::sample::select(keys),
                prop_oneof![
                    nasty_string().prop_map(|s| format!("{s:?}")),
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<bool>().prop_map(|b| b.to_string()),
                    prop::collection::vec(nasty_string(), 0..4).prop_map(|v| format!("{v:?}")),
                    Just("\"10s\"".to_owned()),
                    Just("\"-1s\"".to_owned()),
                    Just("1e400".to_owned()),
                ],
            ),
            0..10,
        ),
        prop::collection::vec(prop::sample::select(keys), 0..4),
    )
        .prop_map(|(pairs, tables)| {
            let mut text = String::new();
            for (i, (key, value)) in pairs.iter().enumerate() {
                if let Some(table) = tables.get(i % (tables.len().max(1))).filter(|_| i % 3 == 2) {
                    text.push_str(&format!("[{table}]\n"));
                }
                text.push_str(&format!("{key} = {value}\n"));
            }
            text
        })
}

const POLICY_KEYS: &[&str] = &[
    "match",
    "app",
    "kind",
    "labels",
    "patch",
    "name",
    "hash",
    "capabilities",
    "commands",
    "argv",
    "timeout",
    "http_prefixes",
    "writable_dirs",
    "programs",
    "verify",
    "command",
    "url",
    "within",
    "interval",
    "approval",
    "production",
    "min_confidence",
    "quorum",
    "max_attempts",
    "breaker",
    "window",
    "min_attempts",
    "failure_rate",
    "cooldown",
];
const MANIFEST_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "author",
    "confidence",
    "test",
    "fault",
    "expect",
    "expect_error",
    "app",
    "kind",
    "labels",
];
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "policies_dir",
    "patches_dir",
    "workers",
    "sandbox",
    "fuel",
    "deadline",
    "memory_bytes",
    "rate_limit",
    "runs_per_app",
    "window",
    "max_open_faults_per_app",
    "token",
    "role",
    "apps",
    "hash",
    "program",
    "probe",
    "watch",
    "retention",
    "alertmanager",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        // No persistence files in the source tree; failures print their minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fault_reports_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), value in json_with(REPORT_KEYS)) {
        for input in [bytes, serde_json::to_vec(&value).unwrap()] {
            if let Ok(report) = serde_json::from_slice::<Report>(&input)
                && report.validate().is_ok()
            {
                // A valid report has a stable fingerprint.
                prop_assert_eq!(report.fingerprint(), report.fingerprint());
            }
        }
    }

    #[test]
    fn alertmanager_notifications_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), value in json_with(ALERT_KEYS)) {
        let config = AlertmanagerConfig::default();
        for input in [bytes, serde_json::to_vec(&value).unwrap()] {
            if let Ok(notification) = serde_json::from_slice::<Notification>(&input) {
                for alert in &notification.alerts {
                    if let Ok(report) = to_report(alert, &config) {
                        let _ = report.validate();
                    }
                }
            }
        }
    }

    #[test]
    fn plans_and_the_plan_check_never_panic(value in json_with(ACTION_KEYS), dirs in prop::collection::vec(nasty_string(), 0..3), prefixes in prop::collection::vec(nasty_string(), 0..3)) {
        let caps = Capabilities {
            writable_dirs: dirs.into_iter().map(Into::into).collect(),
            http_prefixes: prefixes,
            ..Capabilities::default()
        };
        if let Ok(action) = serde_json::from_value::<Action>(value) {
            let _ = action.describe();
            let _ = check(&[action], &caps, Path::new("/srv/app"));
        }
    }

    #[test]
    fn policies_never_panic(text in toml_text(POLICY_KEYS), raw in "\\PC{0,300}") {
        for input in [text, raw] {
            let _ = Policy::parse(Path::new("policies/fuzz.toml"), &input);
        }
    }

    #[test]
    fn patch_manifests_never_panic(text in toml_text(MANIFEST_KEYS), raw in "\\PC{0,300}") {
        for input in [text, raw] {
            let _ = Manifest::parse(Path::new("patches/fuzz/patch.toml"), &input);
        }
    }

    #[test]
    fn config_files_never_panic(text in toml_text(CONFIG_KEYS), raw in "\\PC{0,300}") {
        for input in [text, raw] {
            let _ = Config::parse(&input, Path::new("/etc/phoenix"));
        }
    }
}

/// Mutations of real documents (the shipped policies, manifests and config): every single-byte
/// deletion and a sample of byte flips still parse to Ok or an error, never a panic.
#[test]
fn mutated_shipped_documents_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = Vec::new();
    for dir in [
        "policies",
        "patches/disk-cleanup",
        "patches/config-restore",
        "systemd",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                documents.push(path);
            }
        }
    }
    let mut parsed = 0;
    for path in &documents {
        let text = std::fs::read_to_string(path).unwrap();
        let bytes = text.as_bytes();
        let mut variants = Vec::new();
        for i in (0..bytes.len()).step_by(3) {
            let mut deleted = bytes.to_vec();
            deleted.remove(i);
            variants.push(deleted);
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x20;
            variants.push(flipped);
        }
        for variant in variants {
            let Ok(text) = String::from_utf8(variant) else {
                continue;
            };
            let name = path.file_name().unwrap().to_string_lossy();
            let _ = if name == "patch.toml" {
                Manifest::parse(path, &text)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else if name == "phoenix.toml" {
                Config::parse(&text, Path::new("/etc/phoenix")).map(|_| ())
            } else {
                Policy::parse(path, &text)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            parsed += 1;
        }
    }
    assert!(parsed > 1000, "only {parsed} variants parsed");
}
