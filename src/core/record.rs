//! A registered patch version's record: what the registry knows of it (hash, provenance,
//! author, static check problems and contract test results). Plain data, stored by the store and
//! written by the registry (`crate::patch::registry`).

use serde::{Deserialize, Serialize};

use crate::core::fault::Timestamp;

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The patches directory.
    Dir,
    /// Uploaded with `POST /v1/patches` (by a person or a model, off the box): its first use
    /// needs approval whatever the policy says.
    Api,
}

/// The language a patch's module is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust with the `phoenix-patch` SDK (`sdk/rust`), built by `phoenix patch build`.
    Rust,
    /// AssemblyScript with the `phoenix-patch` SDK (`sdk/assemblyscript`), built likewise.
    AssemblyScript,
    /// WebAssembly text: `patch.wat` is the module itself.
    Wat,
}

impl Language {
    /// Its name, as in a manifest's `[source] language`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::AssemblyScript => "assemblyscript",
            Language::Wat => "wat",
        }
    }

    /// The source file a patch in this language has unless its manifest says otherwise,
    /// relative to the patch directory.
    pub fn default_path(self) -> &'static str {
        match self {
            Language::Rust => "src/lib.rs",
            Language::AssemblyScript => "assembly/index.ts",
            Language::Wat => "patch.wat",
        }
    }
}

/// Where a patch's module came from, as its manifest's `[source]` table says: shown by the
/// registry, `phoenix check` and the API beside the module's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    pub language: Language,
    /// The source's entry file, relative to the patch directory.
    #[serde(default)]
    pub path: String,
    /// The toolchain the committed module was built with (e.g. `rustc 1.63.0`): a rebuild
    /// with another is refused, since it would give other bytes and so another id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
}

/// One contract test's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    /// What went wrong, when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A registered patch version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchRecord {
    pub schema: u32,
    pub name: String,
    pub version: String,
    pub hash: String,
    pub description: String,
    /// Who is answerable for it, as author rules (`author_may_approve`) see it: for a version
    /// uploaded over the API, the token that uploaded it; for one from the patches directory,
    /// its manifest's `author` (the operator put it there).
    pub author: String,
    /// What an uploaded version's manifest says of its author: a claim, shown as such, that no
    /// rule relies on (None for the patches directory, whose manifest is the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_author: Option<String>,
    pub confidence: f64,
    pub source: Provenance,
    pub registered_at: Timestamp,
    /// Static check problems; empty when the module passed.
    pub check_problems: Vec<String>,
    pub tests: Vec<TestResult>,
    /// For an uploaded version: a person approved a run of it, so later runs follow the policy.
    #[serde(default)]
    pub first_use_approved: bool,
    /// The language and source its manifest names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<SourceInfo>,
}

impl PatchRecord {
    /// Passed its static checks and every contract test: may be run.
    pub fn usable(&self) -> bool {
        self.checks_passed() && self.tests_passed()
    }

    /// Why it may not be run, in one line (empty when usable).
    pub fn problems(&self) -> String {
        let mut problems: Vec<String> = self.check_problems.clone();
        problems.extend(
            self.tests
                .iter()
                .filter(|t| !t.passed)
                .map(|t| format!("test `{}`: {}", t.name, t.detail)),
        );
        problems.join("; ")
    }

    pub fn checks_passed(&self) -> bool {
        self.check_problems.is_empty()
    }

    pub fn tests_passed(&self) -> bool {
        self.tests.iter().all(|t| t.passed)
    }
}
