//! Patches written with the SDKs: the Rust SDK's own tests, the shipped patches rebuilt from
//! their sources byte for byte, a new patch of each language built and passing its first
//! contract tests, every string the SDKs write read back exactly by phoenix, an unknown ABI
//! version refused, and SDK-built patches healing through the real daemon.
//!
//! Building needs the toolchains (Debian's `rustc` with `libstd-rust-dev-wasm32` and `lld-14`;
//! `npm ci --prefix sdk/assemblyscript`): CI installs them and fails these tests without them;
//! elsewhere they are skipped with a message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, states};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's AssemblyScript compiler, installed by `npm ci --prefix sdk/assemblyscript`.
fn asc() -> PathBuf {
    root().join("sdk/assemblyscript/node_modules/.bin/asc")
}

fn has_wasm_rustc() -> bool {
    ["rustc", "/usr/bin/rustc"].iter().any(|rustc| {
        Command::new(rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .is_some_and(|out| {
                let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                Path::new(&sysroot)
                    .join("lib/rustlib/wasm32-unknown-unknown")
                    .is_dir()
            })
    })
}

/// Whether the toolchain for `language` is here; in CI it must be.
fn toolchain(language: &str) -> bool {
    let present = match language {
        "rust" => has_wasm_rustc(),
        "assemblyscript" => asc().is_file(),
        _ => true,
    };
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the {language} toolchain (see .ci/run)"
        );
        eprintln!(
            "SKIPPED: no {language} toolchain (apt install rustc libstd-rust-dev-wasm32 lld-14; npm ci --prefix sdk/assemblyscript)"
        );
    }
    present
}

/// Runs `phoenix ARGS` in `dir` with the repository's `asc`; (exit code, stdout + stderr).
fn phoenix(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(args)
        .current_dir(dir)
        .env("PHOENIX_ASC", asc())
        .output()
        .expect("run phoenix");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Copies the folder `from` to `to` (files only, no links), leaving out build outputs.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == "node_modules" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn the_rust_sdk_passes_its_own_tests_with_the_oldest_rust_it_supports() {
    // Debian 12's rustc 1.63 when it is here (the SDK's rust-version), else this toolchain's.
    let rustc = if Path::new("/usr/bin/rustc").is_file() {
        "/usr/bin/rustc"
    } else {
        "rustc"
    };
    let out = tempfile::tempdir().unwrap();
    let binary = out.path().join("sdk-tests");
    let compiled = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--test",
            "--crate-name",
            "phoenix_patch",
        ])
        .arg(root().join("sdk/rust/src/lib.rs"))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("run rustc");
    assert!(
        compiled.status.success(),
        "{rustc}: {}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let ran = Command::new(&binary).output().unwrap();
    let report = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{report}");
    assert!(report.contains("test result: ok"), "{report}");
}

#[test]
fn shipped_patches_are_exactly_what_their_sources_build() {
    let mut checked = Vec::new();
    let dirs = ["patches", "examples/twins"]
        .iter()
        .flat_map(|folder| std::fs::read_dir(root().join(folder)).unwrap());
    for entry in dirs {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("patch.toml")).unwrap();
        let language = ["rust", "assemblyscript"]
            .into_iter()
            .find(|l| manifest.contains(&format!("language = \"{l}\"")));
        let Some(language) = language else { continue };
        if !toolchain(language) {
            continue;
        }
        let (code, out) = phoenix(
            root(),
            &["patch", "build", "--check", dir.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{}: {out}", dir.display());
        assert!(out.starts_with("same: "), "{out}");
        checked.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    eprintln!("rebuilt and compared: {checked:?}");
}

#[test]
fn a_new_patch_of_each_language_builds_and_passes_its_first_contract_tests() {
    let dir = tempfile::tempdir().unwrap();
    for language in ["rust", "assemblyscript", "wat"] {
        if !toolchain(language) {
            continue;
        }
        let name = format!("first-{language}");
        let (code, out) = phoenix(
            dir.path(),
            &["patch", "new", &name, "--lang", language, "--dir", "mine"],
        );
        assert_eq!(code, 0, "{out}");
        let patch = format!("mine/{name}");
        let (code, out) = phoenix(dir.path(), &["patch", "test", &patch]);
        assert_eq!(code, 0, "{language}: {out}");
        assert!(out.contains("2 passed, 0 failed"), "{language}: {out}");
        if language != "wat" {
            assert!(out.contains("building"), "built from source first: {out}");
            // Built once: the next test has nothing to build.
            let (_, again) = phoenix(dir.path(), &["patch", "test", &patch]);
            assert!(!again.contains("building"), "{again}");
        }
    }
}

#[test]
fn every_string_the_sdks_write_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for language in ["rust", "assemblyscript"] {
        if !toolchain(language) {
            continue;
        }
        let patch = dir.path().join(language);
        copy_dir(
            &root().join(format!("tests/sdk-patches/escaping-{language}")),
            &patch,
        );
        let (code, out) = phoenix(dir.path(), &["patch", "test", patch.to_str().unwrap()]);
        assert_eq!(code, 0, "{language}: {out}");
        assert!(out.contains(" 0 failed"), "{out}");
    }
}

#[test]
fn a_module_of_an_abi_version_phoenix_does_not_speak_is_refused() {
    let env = Env::new();
    let module = |version: &str| {
        format!(
            r#"(module (@custom "phoenix.abi" "{version}")
                 (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "heal") (result i32) (i32.const 0)))"#
        )
    };
    env.patch("future", &module("2"), "");
    let (code, out, _) = env.run(&["patch", "test", "patches/future"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("speaks ABI version 2; this phoenix speaks version 1 only"),
        "{out}"
    );
    env.patch("current", &module("1"), "");
    let (code, out, _) = env.run(&["patch", "test", "patches/current"]);
    assert_eq!(code, 0, "{out}");
}

/// The disk-triage patch (Rust) under a policy whose commands only record their names: the
/// first attempt's check fails, the second attempt (which the patch sees as attempt 2) also
/// vacuums the journal, and its check passes.
#[tokio::test]
async fn a_rust_patch_heals_through_the_daemon_and_sees_its_attempt() {
    let env = Env::new();
    copy_dir(
        &root().join("patches/disk-triage"),
        &env.path("patches/disk-triage"),
    );
    let record = |name: &str| {
        format!("[capabilities.commands.{name}]\nargv = [\"sh\", \"-c\", \"echo {name} >> ran\"]\n")
    };
    let commands: String = ["rotate-logs", "clean-tmp", "clean-cache", "vacuum-journal"]
        .iter()
        .map(|name| record(name))
        .collect();
    env.policy(
        "triage",
        &format!(
            "max_attempts = 2\n[match]\nkind = \"disk_full\"\n[patch]\nname = \"disk-triage\"\n{commands}\n[verify]\ncommand = [\"grep\", \"-q\", \"vacuum-journal\", \"ran\"]\nwithin = \"300ms\"\ninterval = \"50ms\"\n"
        ),
    );
    let daemon = env.start();
    let id = daemon
        .report_id(r#"{"app":"web-1","kind":"disk_full","labels":{"mount":"/var/log/"}}"#)
        .await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(fault["attempts"], 2, "{fault:#}");
    let ran = std::fs::read_to_string(env.path("ran")).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["rotate-logs", "rotate-logs", "vacuum-journal"]
    );
    let (_, versions) = daemon.get("/v1/patches/disk-triage").await;
    let built_from = &versions["versions"][0]["built_from"];
    assert_eq!(built_from["language"], "rust", "{versions:#}");
    assert_eq!(built_from["path"], "src/lib.rs");
}

/// The config-restore patch (AssemblyScript) through the shipped approval demo.
#[tokio::test]
async fn an_assemblyscript_patch_heals_once_approved() {
    let env = Env::shipped();
    std::fs::create_dir_all(env.path(".demo/config")).unwrap();
    std::fs::write(env.path(".demo/config/app.conf"), "port = 9999\n").unwrap();
    let daemon = env.start();
    let id = daemon
        .report_id(r#"{"app":"demo","kind":"config_drift"}"#)
        .await;
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let (status, _, _) = daemon
        .post(
            &format!("/v1/approvals/{id}/approve"),
            r#"{"by":"alice","comment":"known-good config"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(
        states(&fault),
        [
            "detected",
            "analyzing",
            "awaiting_approval",
            "patching",
            "testing",
            "healed"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(env.path(".demo/config/app.conf")).unwrap(),
        "port = 8080\nworkers = 4\n"
    );
}

/// The walk-through of docs/writing-patches.md from outside: a patch built with the Rust SDK
/// is uploaded with the CLI, and its first use waits for a person, who approves it.
#[tokio::test]
async fn an_uploaded_sdk_patch_runs_first_once_a_person_approves() {
    let env = Env::new();
    env.simple_policy(
        "demo",
        "disk-cleanup",
        "[capabilities.commands.cleanup]\nargv = [\"sh\", \"-c\", \"echo cleaned >> ran\"]",
        r#"["test", "-e", "ran"]"#,
    );
    let daemon = env.start();
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(args)
            .env("PHOENIX_ADDR", format!("http://{}", daemon.addr))
            .env_remove("PHOENIX_TOKEN")
            .output()
            .expect("run phoenix");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    };
    let patch = root().join("patches/disk-cleanup");
    let (code, out) = cli(&["patches", "add", patch.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("uploaded disk-cleanup@") && out.contains("usable, active"),
        "{out}"
    );
    assert!(out.contains("ok   disk_full plans the cleanup"), "{out}");
    let (code, out) = cli(&["patches", "add", env.path("nowhere").to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cannot read") && out.contains("nowhere/patch.toml"),
        "{out}"
    );

    let id = daemon
        .report_id(r#"{"app":"demo","kind":"disk_full","labels":{"mount":"/var"}}"#)
        .await;
    let waiting = daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    assert!(
        waiting.to_string().contains("its first use needs approval"),
        "{waiting:#}"
    );
    assert!(!env.path("ran").exists(), "nothing ran before the approval");
    let (code, out) = cli(&["approvals", "approve", &id, "--by", "alice"]);
    assert_eq!(code, 0, "{out}");
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(
        std::fs::read_to_string(env.path("ran")).unwrap(),
        "cleaned\n"
    );
}

/// Whether a module is built from its source is read from the module (its `phoenix.source`
/// section), not from file times: a copy or a fresh clone, whose files all have new times, is
/// not rebuilt; a changed source is, and without a compiler the module there is tested as is.
#[test]
fn a_copied_patch_is_not_rebuilt_and_without_a_compiler_its_module_is_tested() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("disk-cleanup");
    copy_dir(&root().join("patches/disk-cleanup"), &patch);
    // The source written after the module, as `git clone` writes them.
    let source = patch.join("src/lib.rs");
    std::fs::write(&source, std::fs::read(&source).unwrap()).unwrap();
    let run = |rustc: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(["patch", "test", patch.to_str().unwrap()])
            .env("PHOENIX_RUSTC", rustc)
            .output()
            .expect("run phoenix");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code().unwrap_or(-1), text)
    };
    let (code, out) = run("/nonexistent/rustc");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("building"), "{out}");
    let committed = std::fs::read(patch.join("patch.wasm")).unwrap();

    let mut text = std::fs::read_to_string(&source).unwrap();
    text.push_str("\n// changed\n");
    std::fs::write(&source, text).unwrap();
    let (code, out) = run("/nonexistent/rustc");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("not built from the source there: building")
            && out.contains("testing the patch.wasm there")
            && out.contains("2 passed, 0 failed"),
        "{out}"
    );
    assert_eq!(std::fs::read(patch.join("patch.wasm")).unwrap(), committed);
}

/// The SDKs are separate crates, on other toolchains, so they spell out what phoenix names
/// (sources, severities, signals, methods) and its limits on fields: here they are kept equal.
#[test]
fn the_sdks_know_every_name_and_limit_phoenix_has() {
    use phoenix::core::fault::{MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_MESSAGE_LEN, MAX_NAME_LEN};
    use phoenix::core::fault::{Severity, Source};
    use phoenix::core::plan::{METHODS, SignalName};
    let read = |path: &str| std::fs::read_to_string(root().join(path)).unwrap();
    let rust = read("sdk/rust/src/fault.rs") + &read("sdk/rust/src/plan.rs");
    let assemblyscript = read("sdk/assemblyscript/index.ts");
    let names = Source::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(Severity::ALL.iter().map(|s| s.as_str()))
        .chain(SignalName::NAMES)
        .chain(METHODS);
    for name in names {
        let quoted = format!("\"{name}\"");
        assert!(
            rust.contains(&quoted),
            "the Rust SDK does not know {quoted}"
        );
        // AssemblyScript takes these as strings: its SDK names them in code or in its docs.
        let in_assemblyscript =
            assemblyscript.contains(&quoted) || assemblyscript.contains(&format!("`{name}`"));
        assert!(
            in_assemblyscript,
            "the AssemblyScript SDK does not know {quoted}"
        );
    }
    for (constant, value) in [
        ("MAX_NAME_BYTES", MAX_NAME_LEN),
        ("MAX_LABEL_VALUE_BYTES", MAX_LABEL_VALUE_LEN),
        ("MAX_MESSAGE_BYTES", MAX_MESSAGE_LEN),
        ("MAX_LABELS", MAX_LABELS),
    ] {
        let line = format!("pub const {constant}: usize = {value};");
        assert!(rust.contains(&line), "the Rust SDK does not say `{line}`");
    }
    // The longest field phoenix sends fits the AssemblyScript SDK's read buffer.
    let scratch: usize = assemblyscript
        .split("const SCRATCH_BYTES: i32 = ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("SCRATCH_BYTES in the AssemblyScript SDK");
    // (the list of label names, 32 x 129 bytes, is the longest; a message is 4096)
    assert!(scratch >= MAX_LABELS * (MAX_NAME_LEN + 1));
}
