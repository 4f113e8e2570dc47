//! Building a patch's module from its source (`phoenix patch build`, and `patch test` when the
//! source is newer than the module).
//!
//! phoenix drives the language's compiler itself, with fixed flags and its own copy of the SDK
//! (the one this phoenix speaks the ABI of, embedded in the binary), so that one source and one
//! toolchain version give the same bytes on any machine: the id a person approves is the id
//! the source gives. The daemon never builds; it loads `patch.wasm`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use super::{Language, Manifest, SourceInfo};
use crate::sandbox::{ABI_SECTION, ABI_VERSION, abi_version, custom_sections};

/// The custom section in which a built module names the source it was built from: the blake3
/// digest of the SDK and of every file of the source's folder. `patch test` rebuilds when it
/// differs (file times say nothing after a `git clone`).
pub const SOURCE_SECTION: &str = "phoenix.source";

/// The Rust SDK's files, as `sdk/rust/src` holds them.
const RUST_SDK: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../sdk/rust/src/lib.rs")),
    ("buf.rs", include_str!("../../sdk/rust/src/buf.rs")),
    ("fault.rs", include_str!("../../sdk/rust/src/fault.rs")),
    ("host.rs", include_str!("../../sdk/rust/src/host.rs")),
    ("json.rs", include_str!("../../sdk/rust/src/json.rs")),
    ("plan.rs", include_str!("../../sdk/rust/src/plan.rs")),
    ("text.rs", include_str!("../../sdk/rust/src/text.rs")),
    ("testing.rs", include_str!("../../sdk/rust/src/testing.rs")),
];

/// The AssemblyScript SDK's files, as `sdk/assemblyscript` holds them.
const ASSEMBLYSCRIPT_SDK: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../../sdk/assemblyscript/package.json"),
    ),
    (
        "index.ts",
        include_str!("../../sdk/assemblyscript/index.ts"),
    ),
];

/// Stack of a Rust patch: room for an action being written (8 KiB) and the fields read, well
/// under a 64 KiB page. A stack overflow traps (the stack lies first, below the data).
const RUST_STACK_BYTES: u32 = 12 << 10;

/// A built module and the compiler that built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub wasm: Vec<u8>,
    /// The compiler's version line, e.g. `rustc 1.63.0`.
    pub toolchain: String,
}

/// Why a module could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The manifest names no source to build from.
    #[error(
        "{dir}: nothing to build: the manifest has no `[source]` (language = \"rust\" or \"assemblyscript\"); a WAT patch's patch.wat is its module"
    )]
    NoSource { dir: PathBuf },
    /// A WAT patch: its text is the module.
    #[error("{dir}: a WAT patch needs no build: patch.wat is its module")]
    Wat { dir: PathBuf },
    /// The compiler (or a part it needs) is not installed.
    #[error("{what} was not found. {how}")]
    MissingTool { what: String, how: String },
    /// The patch asks for another compiler version than any found.
    #[error(
        "{dir}: its manifest pins `{pinned}` (its module was built with it), but the compiler found is `{found}`: a build with it would give other bytes, and another id. {how}"
    )]
    WrongToolchain {
        dir: PathBuf,
        pinned: String,
        found: String,
        how: String,
    },
    /// The compiler ran and failed (its output says why).
    #[error("{tool} failed ({status}):\n{output}\n(the command was: {command})")]
    Failed {
        tool: String,
        command: String,
        status: String,
        output: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The compiler's output is not a module phoenix would take.
    #[error("the built module is not usable: {0}")]
    Unusable(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds the module of the patch in `dir` (manifest `manifest`), without writing it.
pub fn build(dir: &Path, manifest: &Manifest) -> Result<Built, BuildError> {
    let source = source_of(dir, manifest)?;
    let scratch = Scratch::new()?;
    let mut built = match source.language {
        Language::Rust => build_rust(dir, source, &scratch)?,
        Language::AssemblyScript => build_assemblyscript(dir, source, &scratch)?,
        Language::Wat => {
            return Err(BuildError::Wat {
                dir: dir.to_owned(),
            });
        }
    };
    let digest = source_digest(dir, source).map_err(io_error(dir))?;
    append_custom_section(&mut built.wasm, SOURCE_SECTION, digest.as_bytes());
    match abi_version(&built.wasm) {
        Ok(ABI_VERSION) => Ok(built),
        Ok(other) => Err(BuildError::Unusable(format!(
            "it states ABI version {other}"
        ))),
        Err(problem) => Err(BuildError::Unusable(problem)),
    }
}

/// Writes `wasm` as `dir/patch.wasm`, replacing the old one whole (a temporary file renamed
/// over it), so that a daemon reloading meanwhile sees the old module or the new one.
pub fn write_module(dir: &Path, wasm: &[u8]) -> Result<PathBuf, BuildError> {
    let target = dir.join("patch.wasm");
    let temp = dir.join(format!(".patch.wasm.{}.tmp", std::process::id()));
    std::fs::write(&temp, wasm).map_err(io_error(&temp))?;
    std::fs::rename(&temp, &target).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        BuildError::Io {
            path: target.clone(),
            source,
        }
    })?;
    Ok(target)
}

/// True when the patch is built from source and `patch.wasm` is missing or was not built
/// from the source (and SDK) there now: its `phoenix.source` section names another digest.
pub fn needs_build(dir: &Path, manifest: &Manifest) -> bool {
    let Some(source) = &manifest.source else {
        return false;
    };
    if source.language == Language::Wat {
        return false;
    }
    let Ok(wasm) = std::fs::read(dir.join("patch.wasm")) else {
        return true;
    };
    let Ok(digest) = source_digest(dir, source) else {
        return true;
    };
    let stated = custom_sections(&wasm, SOURCE_SECTION).unwrap_or_default();
    stated != [digest.as_bytes()]
}

/// blake3 of the SDK the build compiles against and of every file under the folder of the
/// source's entry file (its relative name and its bytes, in name order), in hex.
fn source_digest(dir: &Path, source: &SourceInfo) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"phoenix-source-v1");
    let sdk = match source.language {
        Language::Rust => RUST_SDK,
        Language::AssemblyScript => ASSEMBLYSCRIPT_SDK,
        Language::Wat => &[],
    };
    for (name, text) in sdk {
        field(name.as_bytes());
        field(text.as_bytes());
    }
    let entry = dir.join(&source.path);
    let folder = entry.parent().unwrap_or(dir);
    for path in files_under(folder)? {
        let name = path.strip_prefix(folder).unwrap_or(&path);
        field(name.to_string_lossy().as_bytes());
        field(&std::fs::read(&path)?);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The regular files under `folder`, at any depth, sorted (links not followed; `target` and
/// `node_modules`, a build's own outputs, left out).
fn files_under(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            if kind.is_dir() && name != "target" && name != "node_modules" {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn source_of<'m>(dir: &Path, manifest: &'m Manifest) -> Result<&'m SourceInfo, BuildError> {
    let source = manifest
        .source
        .as_ref()
        .ok_or_else(|| BuildError::NoSource {
            dir: dir.to_owned(),
        })?;
    let entry = dir.join(&source.path);
    if !entry.is_file() {
        return Err(BuildError::Io {
            path: entry,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the manifest's source file is missing",
            ),
        });
    }
    Ok(source)
}

/// A folder of the build's own under the system's temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// Made new (never one that exists: another user of a shared temporary folder could have
    /// put a folder or a link there to catch what the build writes), 0700.
    fn new() -> Result<Scratch, BuildError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut attempt = 0u32;
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir().join(format!(
                "phoenix-build-{}-{nanos:09}-{attempt}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Scratch(path)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(source) => return Err(BuildError::Io { path, source }),
            }
        }
    }

    /// Writes `files` (relative names) under `folder` of the scratch folder.
    fn write(&self, folder: &str, files: &[(&str, &str)]) -> Result<PathBuf, BuildError> {
        let root = self.0.join(folder);
        for (name, text) in files {
            let path = root.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            std::fs::write(&path, text).map_err(io_error(&path))?;
        }
        Ok(root)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `command`; its output when it fails.
fn run(mut command: Command) -> Result<Vec<u8>, BuildError> {
    let shown = format!("{command:?}");
    let tool = Path::new(command.get_program())
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let output = command.output().map_err(|source| BuildError::Failed {
        tool: tool.clone(),
        command: shown.clone(),
        status: "could not start".into(),
        output: source.to_string(),
    })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(BuildError::Failed {
        tool,
        command: shown,
        status: output.status.to_string(),
        output: text.trim_end().to_owned(),
    })
}

/// The first line a program prints for `args`, if it runs and succeeds.
fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_owned())
}

/// The version pinned in `source` must open the compiler's version line.
fn check_pin(dir: &Path, source: &SourceInfo, found: &str, how: &str) -> Result<(), BuildError> {
    match &source.toolchain {
        Some(pinned) if !found.starts_with(pinned.as_str()) => Err(BuildError::WrongToolchain {
            dir: dir.to_owned(),
            pinned: pinned.clone(),
            found: found.to_owned(),
            how: how.to_owned(),
        }),
        _ => Ok(()),
    }
}

const RUSTC_HOW: &str = "Install it: \
     `rustup target add wasm32-unknown-unknown` (rustup), or on Debian 12 \
     `apt install rustc libstd-rust-dev-wasm32 lld-14` (rustc 1.63.0, what the shipped patches \
     are built with); or point PHOENIX_RUSTC at a rustc that has the target.";

/// A rustc with the wasm32 target (and the pinned version, if any): `PHOENIX_RUSTC`, else
/// `rustc` on the PATH, else Debian's `/usr/bin/rustc`.
fn find_rustc(dir: &Path, source: &SourceInfo) -> Result<(PathBuf, String), BuildError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PHOENIX_RUSTC") {
        Some(chosen) => vec![PathBuf::from(chosen)],
        None => vec![PathBuf::from("rustc"), PathBuf::from("/usr/bin/rustc")],
    };
    let mut with_target = Vec::new();
    for rustc in candidates {
        let Some(version) = first_line(&rustc, &["--version"]) else {
            continue;
        };
        let Some(sysroot) = first_line(&rustc, &["--print", "sysroot"]) else {
            continue;
        };
        if Path::new(&sysroot)
            .join("lib/rustlib/wasm32-unknown-unknown/lib")
            .is_dir()
        {
            with_target.push((rustc, version));
        }
    }
    let matching = with_target.iter().position(|(_, version)| {
        source
            .toolchain
            .as_ref()
            .is_none_or(|pin| version.starts_with(pin.as_str()))
    });
    if let Some(index) = matching {
        return Ok(with_target.swap_remove(index));
    }
    match with_target.first() {
        Some((_, version)) => {
            check_pin(dir, source, version, RUSTC_HOW)?;
            Ok(with_target.swap_remove(0))
        }
        None => Err(BuildError::MissingTool {
            what: "rustc with the wasm32-unknown-unknown target".into(),
            how: RUSTC_HOW.into(),
        }),
    }
}

/// Compiles the SDK, then the patch against it, with fixed flags: size-optimised, link-time
/// optimised, symbols stripped, panics abort (a trap).
fn build_rust(dir: &Path, source: &SourceInfo, scratch: &Scratch) -> Result<Built, BuildError> {
    let (rustc, version) = find_rustc(dir, source)?;
    let sdk = scratch.write("phoenix-patch", RUST_SDK)?;
    let rlib = scratch.0.join("libphoenix_patch.rlib");
    let common = [
        "--edition",
        "2021",
        "--target",
        "wasm32-unknown-unknown",
        "-C",
        "opt-level=z",
        "-C",
        "panic=abort",
        "-C",
        "codegen-units=1",
        // Copies and fills as one instruction (memory.copy, memory.fill) instead of a loop
        // of loads and stores: values move by copy, and patches move a few.
        "-C",
        "target-feature=+bulk-memory",
    ];
    let mut sdk_build = Command::new(&rustc);
    sdk_build
        .current_dir(&sdk)
        .args(["--crate-name", "phoenix_patch", "--crate-type", "rlib"])
        .args(common)
        .arg("-o")
        .arg(&rlib)
        .arg("lib.rs");
    run(sdk_build)?;
    let out = scratch.0.join("patch.wasm");
    let mut patch_build = Command::new(&rustc);
    patch_build
        .current_dir(dir)
        .args(["--crate-name", "patch", "--crate-type", "cdylib"])
        .args(common)
        .args(["-C", "lto", "-C", "strip=symbols", "-C"])
        .arg(format!("link-arg=-zstack-size={RUST_STACK_BYTES}"))
        .arg("--extern")
        .arg(format!("phoenix_patch={}", rlib.display()))
        .arg("-o")
        .arg(&out)
        .arg(&source.path);
    run(patch_build).map_err(|error| match error {
        BuildError::Failed { output, .. } if output.contains("linker `rust-lld` not found") => {
            BuildError::MissingTool {
                what: "The WebAssembly linker rust-lld".into(),
                how: "On Debian 12: `apt install lld-14`.".into(),
            }
        }
        other => other,
    })?;
    let wasm = std::fs::read(&out).map_err(io_error(&out))?;
    Ok(Built {
        wasm,
        toolchain: version,
    })
}

const ASC_HOW: &str = "Install AssemblyScript 0.28 (the version the SDK's package-lock.json \
     pins): `npm ci --prefix sdk/assemblyscript` in a phoenix checkout, or \
     `npm install --save-dev assemblyscript@0.28.20` in the patch directory; or point \
     PHOENIX_ASC at an `asc`.";

/// AssemblyScript's compiler: `PHOENIX_ASC`, else `node_modules/.bin/asc` in the patch
/// directory or a folder above it, else the SDK's own install in a phoenix checkout above it,
/// else `asc` on the PATH.
fn find_asc(dir: &Path, source: &SourceInfo) -> Result<(PathBuf, String), BuildError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    match std::env::var_os("PHOENIX_ASC") {
        Some(chosen) => candidates.push(PathBuf::from(chosen)),
        None => {
            let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
            for folder in absolute.ancestors() {
                candidates.push(folder.join("node_modules/.bin/asc"));
                candidates.push(folder.join("sdk/assemblyscript/node_modules/.bin/asc"));
            }
            candidates.push(PathBuf::from("asc"));
        }
    }
    let found = candidates.into_iter().find_map(|asc| {
        let version = first_line(&asc, &["--version"])?;
        Some((asc, version.replace("Version ", "asc ")))
    });
    let (asc, version) = found.ok_or_else(|| BuildError::MissingTool {
        what: "AssemblyScript's compiler `asc` (with node)".into(),
        how: ASC_HOW.into(),
    })?;
    check_pin(dir, source, &version, ASC_HOW)?;
    Ok((asc, version))
}

/// Compiles with the stub runtime (no collector: a run is short and its memory thrown away)
/// and no `env.abort` import (an abort traps), then states the ABI version.
fn build_assemblyscript(
    dir: &Path,
    source: &SourceInfo,
    scratch: &Scratch,
) -> Result<Built, BuildError> {
    let (asc, version) = find_asc(dir, source)?;
    scratch.write("packages/phoenix-patch", ASSEMBLYSCRIPT_SDK)?;
    let out = scratch.0.join("patch.wasm");
    let mut command = Command::new(&asc);
    command
        .current_dir(dir)
        .arg(&source.path)
        .arg("--outFile")
        .arg(&out)
        .args(["--runtime", "stub", "--use", "abort=", "-Oz", "--noColors"])
        .arg("--path")
        .arg(scratch.0.join("packages"));
    run(command)?;
    let wasm = std::fs::read(&out).map_err(io_error(&out))?;
    Ok(Built {
        wasm: with_abi_section(wasm),
        toolchain: version,
    })
}

/// `wasm` with a custom section stating [`ABI_VERSION`] at its end, unless it states one.
fn with_abi_section(mut wasm: Vec<u8>) -> Vec<u8> {
    if custom_sections(&wasm, ABI_SECTION).is_ok_and(|found| found.is_empty()) {
        append_custom_section(&mut wasm, ABI_SECTION, ABI_VERSION.to_string().as_bytes());
    }
    wasm
}

/// Appends a custom section `name` holding `payload` (a custom section may stand anywhere).
fn append_custom_section(wasm: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut body = leb128(name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    wasm.push(0); // a custom section
    wasm.extend(leb128(body.len()));
    wasm.extend(body);
}

/// `value` in unsigned LEB128.
fn leb128(mut value: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(low);
            return bytes;
        }
        bytes.push(low | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(source: &str) -> Manifest {
        let text = format!("name = \"p\"\nversion = \"1\"\n{source}");
        Manifest::parse(Path::new("patch.toml"), &text).unwrap()
    }

    #[test]
    fn a_stated_abi_version_is_added_once() {
        let bare = crate::sandbox::wat_to_wasm(b"(module)").unwrap();
        assert_eq!(abi_version(&bare), Ok(1));
        let stated = with_abi_section(bare.clone());
        assert_ne!(stated, bare);
        assert_eq!(abi_version(&stated), Ok(1));
        assert_eq!(with_abi_section(stated.clone()), stated);
    }

    #[test]
    fn a_module_not_built_from_the_source_there_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let rust = manifest("[source]\nlanguage = \"rust\"");
        let source = rust.source.as_ref().unwrap();
        assert_eq!(source.path, "src/lib.rs");
        std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "// one").unwrap();
        assert!(needs_build(dir.path(), &rust), "no module yet");
        let built = |dir: &Path| {
            let mut wasm = crate::sandbox::wat_to_wasm(b"(module)").unwrap();
            let digest = source_digest(dir, source).unwrap();
            append_custom_section(&mut wasm, SOURCE_SECTION, digest.as_bytes());
            std::fs::write(dir.join("patch.wasm"), wasm).unwrap();
        };
        built(dir.path());
        assert!(!needs_build(dir.path(), &rust));
        // Whatever the files' times: a copy (or a fresh clone) is as built as the original.
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("src")).unwrap();
        std::fs::write(copy.path().join("src/lib.rs"), "// one").unwrap();
        std::fs::copy(
            dir.path().join("patch.wasm"),
            copy.path().join("patch.wasm"),
        )
        .unwrap();
        assert!(!needs_build(copy.path(), &rust));
        std::fs::write(dir.path().join("src/deep/mod.rs"), "").unwrap();
        assert!(
            needs_build(dir.path(), &rust),
            "a file under src/ was added"
        );
        built(dir.path());
        std::fs::write(dir.path().join("src/lib.rs"), "// two").unwrap();
        assert!(needs_build(dir.path(), &rust), "a file changed");
        // A module without the section (built by other means) counts as not built here.
        std::fs::write(
            dir.path().join("patch.wasm"),
            crate::sandbox::wat_to_wasm(b"(module)").unwrap(),
        )
        .unwrap();
        assert!(needs_build(dir.path(), &rust));
        assert!(
            !needs_build(dir.path(), &manifest("")),
            "nothing to build from"
        );
        let wat = manifest("[source]\nlanguage = \"wat\"");
        assert!(!needs_build(dir.path(), &wat));
    }

    #[test]
    fn custom_sections_of_any_size_are_appended_readably() {
        let mut wasm = crate::sandbox::wat_to_wasm(
            br#"(module (memory (export "memory") 1) (func (export "heal") (result i32) (i32.const 0)))"#,
        )
        .unwrap();
        let long = vec![b'x'; 300]; // a size of two LEB128 bytes
        append_custom_section(&mut wasm, "a", b"1");
        append_custom_section(&mut wasm, "b", &long);
        assert_eq!(custom_sections(&wasm, "a").unwrap(), [b"1".as_slice()]);
        assert_eq!(custom_sections(&wasm, "b").unwrap(), [long.as_slice()]);
        // Still a module phoenix takes.
        let cache = tempfile::tempdir().unwrap();
        let sandbox =
            crate::sandbox::Sandbox::new(crate::sandbox::Limits::default(), cache.path().into())
                .unwrap();
        assert_eq!(
            sandbox.static_check("appended", &wasm),
            Vec::<String>::new()
        );
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
    }

    #[test]
    fn what_cannot_be_built_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let error = build(dir.path(), &manifest("")).unwrap_err();
        assert!(error.to_string().contains("has no `[source]`"), "{error}");
        let error = build(dir.path(), &manifest("[source]\nlanguage = \"rust\"")).unwrap_err();
        assert!(
            error.to_string().contains("source file is missing"),
            "{error}"
        );
        std::fs::write(dir.path().join("patch.wat"), "(module)").unwrap();
        let error = build(dir.path(), &manifest("[source]\nlanguage = \"wat\"")).unwrap_err();
        assert!(error.to_string().contains("needs no build"), "{error}");
    }

    #[test]
    fn a_source_path_stays_inside_the_patch() {
        for path in [
            "/etc/passwd",
            "../x.rs",
            "src/../../x.rs",
            "./src/lib.rs",
            "a b.rs",
        ] {
            let text = format!(
                "name = \"p\"\nversion = \"1\"\n[source]\nlanguage = \"rust\"\npath = {path:?}"
            );
            let error = Manifest::parse(Path::new("patch.toml"), &text).unwrap_err();
            assert!(
                error.to_string().contains("`source.path` must be"),
                "{path}: {error}"
            );
        }
        let text = "name = \"p\"\nversion = \"1\"\n[source]\nlanguage = \"wat\"\npath = \"x.wat\"";
        let error = Manifest::parse(Path::new("patch.toml"), text).unwrap_err();
        assert!(error.to_string().contains("is its `patch.wat`"), "{error}");
        // As TOML values: empty, a terminal escape, too long.
        let long = format!("\"{}\"", "x".repeat(65));
        for toolchain in ["\"\"", r#""rustc\u001b[2J""#, &long] {
            let text = format!(
                "name = \"p\"\nversion = \"1\"\n[source]\nlanguage = \"rust\"\ntoolchain = {toolchain}"
            );
            let error = Manifest::parse(Path::new("patch.toml"), &text).unwrap_err();
            assert!(
                error.to_string().contains("`source.toolchain` must be"),
                "{error}"
            );
        }
    }
}
