//! Adversarial patches: every module in `tests/patches-adversarial/` is registered as a patch,
//! given a fault, and must be contained — the fault fails with the precise reason its file
//! names, nothing outside the allowed places is touched — while the same daemon keeps healing
//! ordinary faults.
//!
//! A case is `NAME.wat` whose header holds `;; expect: REASON DETAIL` (the fault's fail reason
//! and a phrase of its history), or `NAME.wasm` beside `NAME.wasm.expect` holding the same.
//! REASON `reload_rejected` is for a module that does not even load: it arrives by hot reload
//! and must be refused with DETAIL shown in `/readyz`.
//! Every case gets the same policy: command `ok` (`true`), writes under `allowed/`, HTTP under
//! `http://127.0.0.1:9/allowed/`, no programs. Drop a new file in the folder to add a case.
//! The `write-own-*` cases aim at phoenix itself (its config, policies, patches and data dir,
//! by name, by `..` and through a symlink): whatever the policy says, they end
//! `capability_denied` and none of phoenix's files changes.

mod common;

use std::path::{Path, PathBuf};

use common::{Env, planner};

struct Case {
    name: String,
    module: PathBuf,
    reason: String,
    detail: String,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/patches-adversarial");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the adversarial corpus") {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (name, expect) = if let Some(name) = file.strip_suffix(".wat") {
            let text = std::fs::read_to_string(&path).unwrap();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(";; expect: "))
                .unwrap_or_else(|| panic!("{file}: no `;; expect:` line"))
                .to_owned();
            (name.to_owned(), line)
        } else if let Some(name) = file.strip_suffix(".wasm") {
            let expect = std::fs::read_to_string(dir.join(format!("{file}.expect")))
                .unwrap_or_else(|_| panic!("{file}: no {file}.expect beside it"));
            (name.to_owned(), expect.trim().to_owned())
        } else {
            continue;
        };
        let (reason, detail) = expect.split_once(' ').unwrap_or((&expect, ""));
        cases.push(Case {
            name,
            module: path,
            reason: reason.to_owned(),
            detail: detail.to_owned(),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn adversarial_policy(app: &str) -> String {
    format!(
        r#"[match]
app = "{app}"

[patch]
name = "{app}"

[capabilities]
http_prefixes = ["http://127.0.0.1:9/allowed/"]
writable_dirs = ["allowed"]

[capabilities.commands.ok]
argv = ["true"]

[verify]
command = ["true"]
within = "5s"
interval = "100ms"
"#
    )
}

/// A module just over the registration size limit (1 MiB): a large data segment.
fn oversized_module() -> Vec<u8> {
    let payload = "\\00".repeat((1 << 20) + 1024);
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 17) (data (i32.const 0) "{payload}")
           (func (export "heal") (result i32) (i32.const 0)))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn every_adversarial_patch_is_contained_while_ordinary_faults_heal() {
    let mut cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus shrank: {} cases",
        cases.len()
    );
    let env = Env::new();
    // One run per case and a few healthy ones, all at once: lift the per-app rate limit.
    env.write_config("[rate_limit]\nruns_per_app = 1000");
    for dir in ["allowed", "outside"] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
    }
    std::fs::write(env.path("outside/secret"), "untouched").unwrap();
    std::os::unix::fs::symlink("../outside", env.path("allowed/escape")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", env.path("allowed/passwd-link")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", env.path("allowed/.fresh.phoenix-tmp"))
        .unwrap();
    std::fs::hard_link(env.path("outside/secret"), env.path("allowed/hardlink")).unwrap();
    // A way from a writable folder into phoenix's own data dir.
    std::os::unix::fs::symlink("../data", env.path("allowed/phoenix-data")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        env.path("allowed/pipe").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    let generated = env.path("oversized.wasm");
    std::fs::write(&generated, oversized_module()).unwrap();
    cases.push(Case {
        name: "oversized-module".into(),
        module: generated,
        reason: "patch_rejected".into(),
        detail: "the limit is".into(),
    });

    // A module that does not even load stops phoenix from starting (exit 64, like any invalid
    // input at start); at run time it arrives by hot reload, and only that patch is refused.
    let (late, early): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.reason == "reload_rejected");
    let install = |case: &Case| {
        let dir = env.path(&format!("patches/{}", case.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("patch.toml"),
            format!(
                "name = \"{}\"\nversion = \"1.0.0\"\nconfidence = 0.99\n",
                case.name
            ),
        )
        .unwrap();
        // The policy first: once the patch's problem is reported, the policy is loaded too.
        env.policy(&case.name, &adversarial_policy(&case.name));
        let extension = case.module.extension().unwrap().to_string_lossy();
        std::fs::copy(&case.module, dir.join(format!("patch.{extension}"))).unwrap();
    };
    early.iter().for_each(|case| install(case));
    env.patch("fine", &planner(&[r#"{"kind":"exec","command":"ok"}"#]), "");
    env.simple_policy(
        "healthy",
        "fine",
        "[capabilities.commands.ok]\nargv = [\"true\"]",
        r#"["true"]"#,
    );

    let daemon = env.start();
    // What phoenix's own files hold before the attacks: none of them may change.
    let own_files = [
        "phoenix.toml",
        "patches/fine/patch.wat",
        "data/phoenix.addr",
    ];
    let own_before: Vec<Vec<u8>> = own_files
        .iter()
        .map(|file| std::fs::read(env.path(file)).unwrap())
        .collect();
    late.iter().for_each(|case| install(case));
    let ready = daemon
        .get_until("/readyz", "the unloadable patches reported", |ready| {
            late.iter().all(|case| {
                ready
                    .to_string()
                    .contains(&format!("patches/{}", case.name))
            })
        })
        .await;
    let mut contained = 0;
    let mut failures = Vec::new();
    for case in &late {
        if ready.to_string().contains(&case.detail) {
            contained += 1;
        } else {
            failures.push(format!(
                "{}: /readyz lacks `{}`: {ready}",
                case.name, case.detail
            ));
        }
    }
    let mut ids = Vec::new();
    for case in &early {
        let id = daemon
            .report_id(&format!(r#"{{"app":"{}","kind":"attack"}}"#, case.name))
            .await;
        ids.push(id);
    }
    // Ordinary faults reported while the attacks run.
    let mut healthy = Vec::new();
    for n in 0..5 {
        let id = daemon
            .report_id(&format!(
                r#"{{"app":"healthy","kind":"down","labels":{{"n":"{n}"}}}}"#
            ))
            .await;
        healthy.push(id);
    }

    for (case, id) in early.iter().zip(&ids) {
        let fault = daemon.wait_terminal(id).await;
        let state = fault["state"].as_str().unwrap_or_default();
        let reason = fault["reason"].as_str().unwrap_or_default();
        let text = fault.to_string();
        if state == "failed" && reason == case.reason && text.contains(&case.detail) {
            contained += 1;
        } else {
            let history: Vec<&str> = fault["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["detail"].as_str())
                .collect();
            failures.push(format!(
                "{}: expected failed/{} with `{}`, got {state}/{reason}: {history:?}",
                case.name, case.reason, case.detail
            ));
        }
    }
    for id in &healthy {
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(fault["state"], "healed", "an ordinary fault: {fault:#}");
    }
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200, "phoenix must still serve");

    // Nothing escaped: the files outside are as they were, nothing appeared where it must not.
    assert_eq!(
        std::fs::read_to_string(env.path("outside/secret")).unwrap(),
        "untouched"
    );
    assert_eq!(
        std::fs::read_dir(env.path("outside")).unwrap().count(),
        1,
        "nothing may be created outside allowed/"
    );
    assert!(!Path::new("/tmp/phoenix-adversarial").exists());
    // Nothing of phoenix's own was written: not its config, a policy, a patch or its data.
    for (file, before) in own_files.iter().zip(&own_before) {
        assert_eq!(&std::fs::read(env.path(file)).unwrap(), before, "{file}");
    }
    assert!(!env.path("policies/evil.toml").exists());
    assert!(!env.path("allowed/before").exists(), "rolled back");

    let summary = format!(
        "adversarial patches: {} cases, {contained} contained, {} ordinary faults healed meanwhile",
        cases.len(),
        healthy.len()
    );
    eprintln!("{summary}");
    common::artifact("adversarial.txt", format!("{summary}\n"));
    assert!(
        failures.is_empty(),
        "{summary}\nnot contained as expected:\n{}\n{}",
        failures.join("\n"),
        daemon.log()
    );
}

/// A module built to exhaust the compiler: one function of 140,000 additions (980 KB of wasm,
/// under the module size cap; compiling it needs ~110 MB). With the compiler's memory capped
/// below that, it is refused with the reason, and an ordinary patch still registers.
#[tokio::test]
async fn a_module_built_to_exhaust_the_compiler_is_refused_at_its_memory_cap() {
    let env = Env::new();
    env.write_config("[sandbox]\ncompile_memory_bytes = 33554432");
    let body = "local.get 0 i32.const 1 i32.add local.set 0 ".repeat(140_000);
    let wat = format!(
        r#"(module (memory (export "memory") 1) (func (export "heal") (result i32) (local i32) {body} local.get 0))"#
    );
    let wasm = phoenix::sandbox::wat_to_wasm(wat.as_bytes()).unwrap();
    assert!(
        wasm.len() < 1 << 20,
        "under max_module_bytes: {}",
        wasm.len()
    );
    let dir = env.path("patches/bomb");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("patch.toml"),
        "name = \"bomb\"\nversion = \"1.0.0\"\nconfidence = 0.9\n",
    )
    .unwrap();
    std::fs::write(dir.join("patch.wasm"), wasm).unwrap();
    env.patch("small", &planner(&[]), "");
    let daemon = env.start();

    let (_, bomb) = daemon.get("/v1/patches/bomb").await;
    let version = &bomb["versions"][0];
    assert_eq!(version["usable"], false, "{bomb:#}");
    let problems = version["check_problems"].to_string();
    assert!(
        problems.contains("more memory than `sandbox.compile_memory_bytes` (33554432 bytes)"),
        "{problems}"
    );
    let (_, small) = daemon.get("/v1/patches/small").await;
    assert_eq!(small["versions"][0]["usable"], true, "{small:#}");
}
