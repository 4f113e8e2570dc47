//! A new patch directory (`phoenix patch new`): a manifest with its first contract tests, a
//! source that passes them, and a README saying how to build and test it; for Rust, a
//! Cargo.toml for editors and native unit tests.

use std::path::{Path, PathBuf};

use super::{Language, MAX_NAME_LEN};

const MANIFEST: &str = include_str!("templates/patch.toml");
const README: &str = include_str!("templates/README.md");
const RUST: &str = include_str!("templates/rust.rs");
const CARGO: &str = include_str!("templates/Cargo.toml");
const ASSEMBLYSCRIPT: &str = include_str!("templates/assemblyscript.ts");
const WAT: &str = include_str!("templates/wat.wat");

/// Why a patch directory could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// The name is not one a manifest takes.
    #[error("`{0}` is not a patch name: 1-{MAX_NAME_LEN} characters of letters, digits, - and _")]
    BadName(String),
    /// Something is in the way.
    #[error("{0} exists already: choose another name or remove it")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes `parent/name` with a first patch in `language`; returns the files written.
pub fn scaffold(
    parent: &Path,
    name: &str,
    language: Language,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !super::is_patch_name(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.symlink_metadata().is_ok() {
        return Err(ScaffoldError::Exists(dir));
    }
    let shown = dir.display().to_string();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{dir}}", &shown)
            .replace("{{language}}", language.as_str())
    };
    let source = language.default_path();
    let mut files: Vec<(String, String)> = Vec::new();
    let manifest = fill(MANIFEST);
    files.push(("patch.toml".into(), manifest));
    let (language_name, built, builds) = match language {
        Language::Rust => (
            "Rust",
            "; `patch.wasm`, built from them, the module phoenix runs",
            " patch.wasm when the source is newer",
        ),
        Language::AssemblyScript => (
            "AssemblyScript",
            "; `patch.wasm`, built from them, the module phoenix runs",
            " patch.wasm when the source is newer",
        ),
        Language::Wat => ("WebAssembly text", "", " nothing (patch.wat is the module)"),
    };
    files.push((
        "README.md".into(),
        fill(README)
            .replace("{{language_name}}", language_name)
            .replace("{{source}}", source)
            .replace("{{built}}", built)
            .replace("{{builds}}", builds),
    ));
    match language {
        Language::Rust => {
            files.push((source.into(), fill(RUST)));
            files.push((
                "Cargo.toml".into(),
                fill(CARGO).replace("{{sdk_dependency}}", &sdk_dependency(parent, name)),
            ));
            files.push((".gitignore".into(), "/target\n/Cargo.lock\n".into()));
        }
        Language::AssemblyScript => files.push((source.into(), fill(ASSEMBLYSCRIPT))),
        Language::Wat => files.push((source.into(), fill(WAT))),
    }
    let mut written = Vec::with_capacity(files.len());
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|source| ScaffoldError::Io {
                path: folder.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The Cargo dependency on the Rust SDK: by path when a phoenix checkout's `sdk/rust` is found
/// above the new patch, else a line to complete (the build itself does not need it).
fn sdk_dependency(parent: &Path, name: &str) -> String {
    let patch = std::path::absolute(parent.join(name)).unwrap_or_else(|_| parent.join(name));
    let found = patch
        .ancestors()
        .skip(1)
        .enumerate()
        .find(|(_, folder)| folder.join("sdk/rust/Cargo.toml").is_file());
    match found {
        Some((ups, _)) => format!(
            "phoenix-patch = {{ path = \"{}sdk/rust\" }}",
            "../".repeat(ups + 1)
        ),
        None => "# phoenix-patch = { path = \"PATH/TO/phoenix/sdk/rust\" }  (for editors and `cargo test`)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::Manifest;

    #[test]
    fn each_language_gets_a_manifest_a_source_and_a_readme() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sdk/rust")).unwrap();
        std::fs::write(root.path().join("sdk/rust/Cargo.toml"), "").unwrap();
        let patches = root.path().join("patches");
        for (language, source) in [
            (Language::Rust, "src/lib.rs"),
            (Language::AssemblyScript, "assembly/index.ts"),
            (Language::Wat, "patch.wat"),
        ] {
            let name = format!("p-{}", language.as_str());
            let files = scaffold(&patches, &name, language).unwrap();
            let dir = patches.join(&name);
            assert!(files.contains(&dir.join(source)), "{files:?}");
            let text = std::fs::read_to_string(dir.join("patch.toml")).unwrap();
            let manifest = Manifest::parse(&dir.join("patch.toml"), &text).unwrap();
            assert_eq!(manifest.name, name);
            assert_eq!(manifest.source.unwrap().language, language);
            assert_eq!(manifest.tests.len(), 2);
            let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
            assert!(!readme.contains("{{"), "{readme}");
            let code = std::fs::read_to_string(dir.join(source)).unwrap();
            assert!(code.contains(&name) && !code.contains("{{"), "{code}");
        }
        let cargo = std::fs::read_to_string(patches.join("p-rust/Cargo.toml")).unwrap();
        assert!(
            cargo.contains(r#"phoenix-patch = { path = "../../sdk/rust" }"#),
            "{cargo}"
        );
        // The WAT scaffold is a module as it stands.
        let wat = std::fs::read(patches.join("p-wat/patch.wat")).unwrap();
        assert!(crate::sandbox::wat_to_wasm(&wat).is_ok());
    }

    #[test]
    fn a_bad_name_or_a_taken_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a b", &"x".repeat(65)] {
            let error = scaffold(root.path(), bad, Language::Rust).unwrap_err();
            assert!(error.to_string().contains("is not a patch name"), "{error}");
        }
        scaffold(root.path(), "taken", Language::Wat).unwrap();
        let error = scaffold(root.path(), "taken", Language::Rust).unwrap_err();
        assert!(error.to_string().contains("exists already"), "{error}");
    }
}
