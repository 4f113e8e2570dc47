//! A patch on disk: `patches/NAME/patch.toml` (the manifest, with its contract tests) and a
//! WebAssembly module (`patch.wat` or `patch.wasm`).
//!
//! This module parses and validates a patch directory and computes its id: the blake3 hash of
//! its canonical bytes. It does not run anything (see `sandbox`) or store anything (see
//! `registry`).

pub mod build;
pub mod registry;
pub mod scaffold;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::fault::{Fault, Report, Severity, Source, Timestamp};
use crate::core::plan::Action;
pub use crate::core::record::{Language, SourceInfo};
use crate::sandbox::{FaultView, wat_to_wasm};

/// The manifest, `patch.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub author: String,
    /// The author's confidence that the patch is right, 0.0–1.0 (used by approval rules).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Contract tests: golden faults and the exact plan each must produce.
    #[serde(default, rename = "test")]
    pub tests: Vec<ContractTest>,
    /// The language and source the module is built from (`phoenix patch build`); absent for a
    /// module given as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
}

fn default_confidence() -> f64 {
    0.5
}

/// One golden case: this fault must yield exactly this plan (or this error code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractTest {
    pub name: String,
    pub fault: TestFault,
    /// The exact expected plan. Leave empty (and set `expect_error`) for a case that must fail.
    #[serde(default)]
    pub expect: Vec<Action>,
    /// The sandbox error code the run must end with instead (e.g. "declined").
    #[serde(default)]
    pub expect_error: Option<String>,
}

/// The fields of a golden fault, as a patch would see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFault {
    pub app: String,
    pub kind: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default = "one")]
    pub occurrences: u64,
    /// Where the fault came from (`api` unless the test says otherwise). Left out of the
    /// canonical form when it is the default, so that the ids of manifests written before
    /// the field existed stay what they were.
    #[serde(default = "api", skip_serializing_if = "is_api")]
    pub source: Source,
    /// The attempt being planned, 1 for the first (left out by default, as `source`).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first")]
    pub attempt: u32,
}

fn one() -> u64 {
    1
}

fn api() -> Source {
    Source::Api
}

fn first_attempt() -> u32 {
    1
}

fn is_api(source: &Source) -> bool {
    *source == Source::Api
}

fn is_first(attempt: &u32) -> bool {
    *attempt == 1
}

/// What a patch sees of `fault` while attempt `attempt` (1 for the first) is planned: the
/// fields of ABI version 1 (`docs/patch-abi.md`), each a string. Real runs, shadow runs and
/// contract tests all build it here, so that each sees exactly the same fields.
pub fn view_of(fault: &Fault, attempt: u32) -> FaultView {
    let mut view = FaultView::new();
    view.insert("app".into(), fault.app.clone());
    view.insert("kind".into(), fault.kind.clone());
    if let Some(message) = &fault.message {
        view.insert("message".into(), message.clone());
    }
    view.insert("severity".into(), fault.severity.as_str().into());
    view.insert("occurrences".into(), fault.occurrences.to_string());
    view.insert("fingerprint".into(), fault.fingerprint.clone());
    view.insert("source".into(), fault.source.as_str().into());
    view.insert("attempt".into(), attempt.to_string());
    // Label names are `[A-Za-z0-9._:/@-]` (see `Report::validate`), so a newline separates
    // them unambiguously; sorted, as the map keeps them.
    let mut names = String::new();
    for (key, value) in &fault.labels {
        if !names.is_empty() {
            names.push('\n');
        }
        names.push_str(key);
        view.insert(format!("labels.{key}"), value.clone());
    }
    view.insert("labels".into(), names);
    view
}

impl TestFault {
    pub fn view(&self) -> FaultView {
        let report = Report {
            app: self.app.clone(),
            kind: self.kind.clone(),
            labels: self.labels.clone(),
            message: self.message.clone(),
            severity: self.severity,
            dedup_key: None,
            reopen_within: None,
        };
        let mut fault = Fault::new(String::new(), report, self.source, Timestamp(0));
        fault.occurrences = self.occurrences;
        view_of(&fault, self.attempt)
    }
}

/// A loaded patch: manifest, wasm bytes, and content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchSource {
    pub manifest: Manifest,
    pub wasm: Vec<u8>,
    pub hash: String,
    pub dir: PathBuf,
}

/// An uploaded patch's module.
pub enum Uploaded<'a> {
    /// WebAssembly text, as a `patch.wat`.
    Wat(&'a str),
    /// The binary, as a `patch.wasm` (an SDK-built patch).
    Wasm(Vec<u8>),
}

/// Why a patch directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifest does not parse (the message has line and column) or says something invalid.
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// Neither `patch.wat` nor `patch.wasm` exists, or both do.
    #[error("{dir}: {message}")]
    Module { dir: PathBuf, message: String },
}

/// The longest patch name and version.
pub const MAX_NAME_LEN: usize = 64;

/// A patch's name: 1-64 letters, digits, `-` and `_` (it names a folder, and is shown).
pub fn is_patch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Most contract tests one patch may have. Each runs in the sandbox at registration, up to the
/// run deadline: without a cap one upload could keep the sandbox busy for hours.
pub const MAX_TESTS: usize = 64;

impl Manifest {
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, PatchError> {
        let invalid = |message: String| PatchError::Manifest {
            path: path.to_owned(),
            message,
        };
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| invalid(crate::core::forms::toml_error(&e)))?;
        if !is_patch_name(&manifest.name) {
            return Err(invalid(format!(
                "`name` must be 1-{MAX_NAME_LEN} characters of letters, digits, - and _ (got {:?})",
                manifest.name
            )));
        }
        if manifest.version.is_empty() || manifest.version.len() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "`version` must be 1-{MAX_NAME_LEN} characters (got {})",
                manifest.version.len()
            )));
        }
        if manifest.tests.len() > MAX_TESTS {
            return Err(invalid(format!(
                "{} contract tests; a patch may have at most {MAX_TESTS}",
                manifest.tests.len()
            )));
        }
        if !(0.0..=1.0).contains(&manifest.confidence) {
            return Err(invalid(format!(
                "`confidence` must be between 0 and 1 (got {})",
                manifest.confidence
            )));
        }
        let mut manifest = manifest;
        if let Some(source) = &mut manifest.source {
            if source.path.is_empty() {
                source.path = source.language.default_path().to_owned();
            }
            check_source_path(&source.path).map_err(invalid)?;
            if let Some(toolchain) = &source.toolchain {
                let printable = toolchain.bytes().all(|b| (b' '..=b'~').contains(&b));
                if toolchain.is_empty() || toolchain.len() > MAX_NAME_LEN || !printable {
                    return Err(invalid(format!(
                        "`source.toolchain` must be 1-{MAX_NAME_LEN} printable ASCII characters, e.g. \"rustc 1.63.0\" (got {toolchain:?})"
                    )));
                }
            }
            if source.language == Language::Wat && source.path != "patch.wat" {
                return Err(invalid(format!(
                    "a WAT patch's module is its `patch.wat` (the manifest names {:?})",
                    source.path
                )));
            }
        }
        for test in &manifest.tests {
            if test.fault.attempt == 0 {
                return Err(invalid(format!(
                    "test `{}`: `attempt` counts from 1 (got 0)",
                    test.name
                )));
            }
            if test.expect_error.is_some() && !test.expect.is_empty() {
                return Err(invalid(format!(
                    "test `{}`: give `expect` or `expect_error`, not both",
                    test.name
                )));
            }
        }
        Ok(manifest)
    }
}

/// A source path must stay inside the patch directory: relative, without `..`, of ordinary
/// characters.
fn check_source_path(path: &str) -> Result<(), String> {
    let ordinary = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    let inside = !path.starts_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if path.len() > 256 || !ordinary || !inside {
        return Err(format!(
            "`source.path` must be a relative path inside the patch directory, of letters, digits, . _ - and / (got {path:?})"
        ));
    }
    Ok(())
}

/// The id of a patch: blake3 over a domain tag, the manifest in canonical JSON form (so that
/// TOML formatting does not change it) and the wasm binary, each length-prefixed.
pub fn content_hash(manifest: &Manifest, wasm: &[u8]) -> String {
    let canonical = serde_json::to_vec(manifest).unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"phoenix-patch-v1\0");
    hasher.update(&(canonical.len() as u64).to_le_bytes());
    hasher.update(&canonical);
    hasher.update(&(wasm.len() as u64).to_le_bytes());
    hasher.update(wasm);
    hasher.finalize().to_hex().to_string()
}

impl PatchSource {
    /// Loads `dir/patch.toml` and `dir/patch.wat` or `dir/patch.wasm`.
    pub fn load(dir: &Path) -> Result<PatchSource, PatchError> {
        let manifest_path = dir.join("patch.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| PatchError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let wat = dir.join("patch.wat");
        let wasm = dir.join("patch.wasm");
        let module_error = |message: &str| PatchError::Module {
            dir: dir.to_owned(),
            message: message.into(),
        };
        let bytes = match (wat.is_file(), wasm.is_file()) {
            (true, false) => {
                let text = std::fs::read(&wat).map_err(|source| PatchError::Io {
                    path: wat.clone(),
                    source,
                })?;
                wat_to_wasm(&text).map_err(|message| PatchError::Manifest {
                    path: wat.clone(),
                    message,
                })?
            }
            (false, true) => std::fs::read(&wasm).map_err(|source| PatchError::Io {
                path: wasm.clone(),
                source,
            })?,
            (false, false) => {
                return Err(module_error(&match &manifest.source {
                    Some(source) if source.language != Language::Wat => format!(
                        "no patch.wasm: build it from {} with `phoenix patch build {}`",
                        source.path,
                        dir.display()
                    ),
                    _ => "no patch.wat or patch.wasm".to_owned(),
                }));
            }
            (true, true) => {
                return Err(module_error(
                    "both patch.wat and patch.wasm exist; keep one",
                ));
            }
        };
        let hash = content_hash(&manifest, &bytes);
        Ok(PatchSource {
            manifest,
            wasm: bytes,
            hash,
            dir: dir.to_owned(),
        })
    }

    /// A patch uploaded: its manifest (patch.toml) and module.
    pub fn from_upload(manifest: &str, module: Uploaded) -> Result<PatchSource, PatchError> {
        let manifest = Manifest::parse(Path::new("manifest"), manifest)?;
        let wasm = match module {
            Uploaded::Wat(wat) => {
                wat_to_wasm(wat.as_bytes()).map_err(|message| PatchError::Manifest {
                    path: PathBuf::from("module"),
                    message,
                })?
            }
            Uploaded::Wasm(wasm) => wasm,
        };
        let hash = content_hash(&manifest, &wasm);
        Ok(PatchSource {
            manifest,
            wasm,
            hash,
            dir: PathBuf::from("<uploaded>"),
        })
    }

    /// Loads every subdirectory of `dir` that has a `patch.toml`, in name order.
    pub fn load_all(dir: &Path) -> Result<Vec<PatchSource>, Vec<PatchError>> {
        let entries = std::fs::read_dir(dir).map_err(|source| {
            vec![PatchError::Io {
                path: dir.to_owned(),
                source,
            }]
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join("patch.toml").is_file())
            .collect();
        dirs.sort();
        let mut patches = Vec::new();
        let mut errors = Vec::new();
        for dir in dirs {
            match PatchSource::load(&dir) {
                Ok(patch) => {
                    if patches
                        .iter()
                        .any(|p: &PatchSource| p.manifest.name == patch.manifest.name)
                    {
                        errors.push(PatchError::Manifest {
                            path: dir.join("patch.toml"),
                            message: format!(
                                "patch name `{}` is used by another directory",
                                patch.manifest.name
                            ),
                        });
                    } else {
                        patches.push(patch);
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(patches)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
        name = "disk-cleanup"
        version = "1.0.0"
        confidence = 0.9

        [[test]]
        name = "plans the cleanup"
        fault = { app = "demo", kind = "disk_full" }
        expect = [{ kind = "exec", command = "cleanup" }]
    "#;

    #[test]
    fn manifests_parse_with_their_tests() {
        let manifest = Manifest::parse(Path::new("patch.toml"), MANIFEST).unwrap();
        assert_eq!(manifest.tests.len(), 1);
        assert_eq!(
            manifest.tests[0].expect,
            vec![Action::Exec {
                arg: None,
                command: "cleanup".into()
            }]
        );
        assert_eq!(manifest.tests[0].fault.occurrences, 1);
    }

    #[test]
    fn bad_manifests_say_why() {
        let err = |text: &str| {
            Manifest::parse(Path::new("p/patch.toml"), text)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&MANIFEST.replace("0.9", "1.5")).contains("`confidence` must be between 0 and 1")
        );
        assert!(err(&MANIFEST.replace("disk-cleanup", "../x")).contains("`name` must be"));
        assert!(err(&MANIFEST.replace("1.0.0", "")).contains("`version` must be 1-64"));
        let test = MANIFEST.split_once("[[test]]").unwrap().1;
        let many = format!("{MANIFEST}{}", format!("[[test]]{test}").repeat(MAX_TESTS));
        assert!(
            err(&many).contains("65 contract tests; a patch may have at most 64"),
            "{}",
            err(&many)
        );
        let unknown = err(&format!("owner = \"x\"\n{MANIFEST}"));
        assert!(
            unknown.contains("unknown field `owner`") && unknown.contains("line 1"),
            "{unknown}"
        );
    }

    #[test]
    fn a_patch_sees_the_fields_of_abi_version_1() {
        let manifest = Manifest::parse(
            Path::new("patch.toml"),
            r#"
            name = "p"
            version = "1"
            [[test]]
            name = "all fields"
            fault = { app = "web", kind = "oom", message = "m", severity = "critical", occurrences = 3, source = "alertmanager", attempt = 2, labels = { zone = "b", host = "h1" } }
            [[test]]
            name = "defaults"
            fault = { app = "web", kind = "oom" }
            "#,
        )
        .unwrap();
        let view = manifest.tests[0].fault.view();
        let field = |key: &str| view.get(key).map(String::as_str);
        assert_eq!(field("app"), Some("web"));
        assert_eq!(field("kind"), Some("oom"));
        assert_eq!(field("message"), Some("m"));
        assert_eq!(field("severity"), Some("critical"));
        assert_eq!(field("occurrences"), Some("3"));
        assert_eq!(field("source"), Some("alertmanager"));
        assert_eq!(field("attempt"), Some("2"));
        assert_eq!(field("labels"), Some("host\nzone"), "sorted, one per line");
        assert_eq!(field("labels.zone"), Some("b"));
        assert_eq!(field("fingerprint").map(str::len), Some(64));
        assert_eq!(view.len(), 11);
        let view = manifest.tests[1].fault.view();
        let field = |key: &str| view.get(key).map(String::as_str);
        assert_eq!(
            (
                field("source"),
                field("attempt"),
                field("labels"),
                field("message")
            ),
            (Some("api"), Some("1"), Some(""), None)
        );
    }

    #[test]
    fn a_test_fault_counts_attempts_from_1() {
        let text = MANIFEST.replace(
            r#"kind = "disk_full" }"#,
            r#"kind = "disk_full", attempt = 0 }"#,
        );
        let error = Manifest::parse(Path::new("patch.toml"), &text).unwrap_err();
        assert!(
            error.to_string().contains("`attempt` counts from 1"),
            "{error}"
        );
    }

    #[test]
    fn the_hash_follows_content_not_formatting() {
        let a = Manifest::parse(Path::new("a"), MANIFEST).unwrap();
        let b = Manifest::parse(Path::new("b"), &MANIFEST.replace("        ", "  ")).unwrap();
        assert_eq!(content_hash(&a, b"wasm"), content_hash(&b, b"wasm"));
        assert_ne!(content_hash(&a, b"wasm"), content_hash(&a, b"wasm2"));
        let mut c = a.clone();
        c.version = "1.0.1".into();
        assert_ne!(content_hash(&a, b"wasm"), content_hash(&c, b"wasm"));
        // Fields added since keep the ids of manifests that do not use them (this id is the
        // one phoenix gave this manifest before `source` and `attempt` existed).
        assert_eq!(
            content_hash(&a, b"wasm"),
            "ae3709069dbff866c5161e6f237f88a448dfe042d04c58dd14ef3051388ac3a2"
        );
        let mut d = a.clone();
        d.tests[0].fault.attempt = 2;
        assert_ne!(content_hash(&a, b"wasm"), content_hash(&d, b"wasm"));
    }
}
