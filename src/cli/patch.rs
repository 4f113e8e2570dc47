//! `phoenix patch new | build | test`: the offline tools for one patch directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use phoenix::daemon::DaemonError;
use phoenix::daemon::config::Config;
use phoenix::patch::build::{BuildError, Built, build, needs_build, write_module};
use phoenix::patch::registry::evaluate;
use phoenix::patch::{Language, Manifest, PatchSource, content_hash};

#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Make a new patch directory: manifest with its first contract tests, source, README.
    New {
        /// The patch's name (letters, digits, - and _).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The folder to make it in.
        #[arg(long, default_value = "patches")]
        dir: PathBuf,
    },
    /// Build patch.wasm from the source the manifest names (`[source]`).
    Build {
        /// The patch directory (holding patch.toml).
        dir: PathBuf,
        /// Build, compare with the patch.wasm there and change nothing: exit 1 if they differ
        /// (a reproducible build gives the same bytes, and so the same patch id).
        #[arg(long)]
        check: bool,
    },
    /// Run a patch directory's static checks and contract tests (building it first when its
    /// source is newer than its patch.wasm).
    Test {
        /// The patch directory (holding patch.toml).
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Assemblyscript,
    Wat,
}

impl From<Lang> for Language {
    fn from(lang: Lang) -> Language {
        match lang {
            Lang::Rust => Language::Rust,
            Lang::Assemblyscript => Language::AssemblyScript,
            Lang::Wat => Language::Wat,
        }
    }
}

pub fn run(command: PatchCommand) -> anyhow::Result<bool> {
    match command {
        PatchCommand::New { name, lang, dir } => new(&dir, &name, lang.into()),
        PatchCommand::Build { dir, check } => build_command(&dir, check),
        PatchCommand::Test { dir } => test(&dir),
    }
}

fn new(parent: &Path, name: &str, language: Language) -> anyhow::Result<bool> {
    let files = phoenix::patch::scaffold::scaffold(parent, name, language)?;
    let dir = parent.join(name);
    say!("created {}:", dir.display());
    for file in &files {
        say!("  {}", file.strip_prefix(&dir).unwrap_or(file).display());
    }
    say!("next: phoenix patch test {}", dir.display());
    Ok(true)
}

fn manifest_of(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join("patch.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Manifest::parse(&path, &text)?)
}

/// Writes the built module; prints what was built.
fn write_built(dir: &Path, manifest: &Manifest, built: &Built) -> anyhow::Result<()> {
    let path = write_module(dir, &built.wasm)?;
    say!(
        "built {} ({} bytes, {}); patch id {}",
        path.display(),
        built.wasm.len(),
        built.toolchain,
        content_hash(manifest, &built.wasm)
    );
    Ok(())
}

fn build_command(dir: &Path, check: bool) -> anyhow::Result<bool> {
    let manifest = manifest_of(dir)?;
    let built = match build(dir, &manifest) {
        Err(BuildError::Wat { .. }) => {
            say!(
                "{}: patch.wat is the module: nothing to build",
                dir.display()
            );
            return Ok(true);
        }
        other => other?,
    };
    if !check {
        write_built(dir, &manifest, &built)?;
        return Ok(true);
    }
    let path = dir.join("patch.wasm");
    let committed = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let id = |wasm: &[u8]| content_hash(&manifest, wasm);
    if committed == built.wasm {
        say!(
            "same: {} is what its source gives ({}); patch id {}",
            path.display(),
            built.toolchain,
            id(&built.wasm)
        );
        return Ok(true);
    }
    say!(
        "DIFFERENT: {} ({} bytes, patch id {}) is not what its source gives with {} ({} bytes, patch id {})",
        path.display(),
        committed.len(),
        id(&committed),
        built.toolchain,
        built.wasm.len(),
        id(&built.wasm)
    );
    Ok(false)
}

fn test(dir: &Path) -> anyhow::Result<bool> {
    let manifest = manifest_of(dir)?;
    if needs_build(dir, &manifest) {
        say!(
            "{}: patch.wasm is not built from the source there: building",
            dir.display()
        );
        match build(dir, &manifest) {
            Ok(built) => write_built(dir, &manifest, &built)?,
            // No compiler here: the module there can still be tested, as it is.
            Err(error @ (BuildError::MissingTool { .. } | BuildError::WrongToolchain { .. }))
                if dir.join("patch.wasm").is_file() =>
            {
                say!(
                    "{}: cannot build it here ({error}); testing the patch.wasm there",
                    dir.display()
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    let patch = PatchSource::load(dir).map_err(|e| DaemonError::Patches(vec![e]))?;
    let config = Config::embedded_default()?;
    let (sandbox, scratch) = super::scratch_sandbox(&config)?;
    let (problems, tests) = evaluate(&sandbox, &patch);
    let ok = super::print_evaluation(&patch.manifest.name, &problems, &tests);
    let _ = std::fs::remove_dir_all(scratch);
    say!(
        "{} passed, {} failed",
        tests.iter().filter(|t| t.passed).count(),
        tests.iter().filter(|t| !t.passed).count() + usize::from(!problems.is_empty())
    );
    Ok(ok)
}
