//! End to end through the real binary: faults reported over HTTP reach `healed` or `failed` with
//! the right reason, and a misbehaving patch never takes the daemon (or other faults) down.

mod common;

use common::{Env, history_field, module, planner, recording_server, states};

const LEDGER_EXEC: &str = r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID\" >> ledger"]
timeout = "10s""#;

const RECORD: &str = r#"{"kind":"exec","command":"record"}"#;

fn ledger(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.path("ledger"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_shipped_demo_heals_a_disk_full_fault_through_every_state() {
    let env = Env::shipped();
    let scratch = env.path(".demo/scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("junk"), vec![0u8; 3 << 20]).unwrap();
    let daemon = env.start();

    let accepted = daemon
        .report(r#"{"app":"demo","kind":"disk_full","labels":{"mount":"/var"}}"#)
        .await;
    // The answer shows the fault as its first write left it: the report with its analysis.
    assert_eq!(accepted["state"], "patching", "{accepted:#}");
    assert_eq!(accepted["occurrences"], 1);
    assert_eq!(accepted["fingerprint"].as_str().unwrap().len(), 64);
    let fault = daemon.wait_terminal(accepted["id"].as_str().unwrap()).await;

    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(
        states(&fault),
        ["detected", "analyzing", "patching", "testing", "healed"]
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the cleanup emptied the scratch dir"
    );
    let seqs: Vec<u64> = fault["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "history is gapless"
    );
}

#[tokio::test]
async fn an_empty_plan_still_passes_through_every_state_and_is_verified() {
    let env = Env::new();
    env.patch("nothing", &planner(&[]), "");
    // Healthy only once the marker exists: verification must really run.
    env.simple_policy("web", "nothing", "", r#"["test", "-e", "healthy"]"#);
    std::fs::write(env.path("healthy"), "").unwrap();
    let daemon = env.start();

    let accepted = daemon.report(r#"{"app":"web","kind":"down"}"#).await;
    // Analysis has no side effect: the report's write already holds it, up to `testing` (no
    // action separates patching from testing), and the answer says so.
    assert_eq!(accepted["state"], "testing", "{accepted:#}");
    assert_eq!(accepted["attempts"], 1, "{accepted:#}");
    let id = accepted["id"].as_str().unwrap();
    let fault = daemon.wait_terminal(id).await;

    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(
        states(&fault),
        ["detected", "analyzing", "patching", "testing", "healed"]
    );
    let written_at = history_field(&fault, "at");
    assert!(
        written_at[..4].iter().all(|at| *at == written_at[0]),
        "the report and its analysis are one write: {written_at:?}"
    );
    let details = history_field(&fault, "detail");
    assert_eq!(details[3], "plan applied (0 of 0 actions)", "{details:?}");
    assert!(details[4].starts_with("verification passed"), "{details:?}");
}

#[tokio::test]
async fn a_failed_verification_fails_the_fault_after_the_effect_ran() {
    let env = Env::new();
    env.patch("record", &planner(&[RECORD]), "");
    env.simple_policy("web", "record", LEDGER_EXEC, r#"["false"]"#);
    let daemon = env.start();

    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon.wait_terminal(&id).await;

    assert_eq!(
        (&fault["state"], &fault["reason"]),
        (&"failed".into(), &"verify_failed".into()),
        "{fault:#}"
    );
    assert_eq!(
        states(&fault),
        ["detected", "analyzing", "patching", "testing", "failed"]
    );
    assert_eq!(ledger(&env), [id], "the action ran exactly once");
}

#[tokio::test]
async fn a_policy_may_allow_a_second_attempt() {
    let env = Env::new();
    env.patch("record", &planner(&[RECORD]), "");
    // Healthy only once the ledger has two lines: the first attempt fails verification.
    env.policy(
        "web",
        &format!(
            "max_attempts = 2\n[match]\napp = \"web\"\n[patch]\nname = \"record\"\n{LEDGER_EXEC}\n[verify]\ncommand = [\"sh\", \"-c\", \"test $(wc -l < ledger) -ge 2\"]\nwithin = \"1s\"\ninterval = \"100ms\"\n"
        ),
    );
    let daemon = env.start();

    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon.wait_terminal(&id).await;

    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(fault["attempts"], 2);
    assert_eq!(
        states(&fault),
        [
            "detected",
            "analyzing",
            "patching",
            "testing",
            "analyzing",
            "patching",
            "testing",
            "healed"
        ]
    );
    assert_eq!(ledger(&env).len(), 2);
}

#[tokio::test]
async fn faults_without_a_way_to_heal_fail_with_the_reason() {
    let env = Env::new();
    env.patch("record", &planner(&[RECORD]), "");
    // Plans a command its policy does not declare.
    env.patch(
        "greedy",
        &planner(&[RECORD, r#"{"kind":"exec","command":"reboot"}"#]),
        "",
    );
    // Its contract test expects a different plan than the module produces.
    env.patch(
        "untested",
        &planner(&[RECORD]),
        "[[test]]\nname = \"expects nothing\"\nfault = { app = \"x\", kind = \"y\" }\nexpect = []\n",
    );
    env.simple_policy("greedy", "greedy", LEDGER_EXEC, r#"["true"]"#);
    env.simple_policy("untested", "untested", LEDGER_EXEC, r#"["true"]"#);
    env.simple_policy("missing", "no-such-patch", LEDGER_EXEC, r#"["true"]"#);
    env.simple_policy(
        "broken",
        "record",
        "[capabilities.commands.record]\nargv = [\"sh\", \"-c\", \"echo disk on fire >&2; exit 7\"]",
        r#"["true"]"#,
    );
    let daemon = env.start();

    let cases = [
        ("nobody", "no_policy", "no policy matches app `nobody`"),
        (
            "greedy",
            "capability_denied",
            "command `reboot` is not declared",
        ),
        ("untested", "contract_failed", "`expects nothing`"),
        ("missing", "patch_unavailable", "no-such-patch"),
        ("broken", "apply_failed", "disk on fire"),
    ];
    for (app, reason, detail) in cases {
        let id = daemon
            .report_id(&format!(r#"{{"app":"{app}","kind":"k"}}"#))
            .await;
        let fault = daemon.wait_terminal(&id).await;
        assert_eq!(
            (&fault["state"], &fault["reason"]),
            (&"failed".into(), &reason.into()),
            "{app}: {fault:#}"
        );
        let last = fault["history"].as_array().unwrap().last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            last.contains(detail),
            "{app}: `{last}` should mention `{detail}`"
        );
    }
    assert!(
        ledger(&env).is_empty(),
        "no denied or untested plan executed anything"
    );
}

#[tokio::test]
async fn malicious_patches_fail_precisely_while_another_fault_heals() {
    let env = Env::new();
    env.patch("good", &planner(&[RECORD]), "");
    let looping = module("", "(loop $forever (br $forever))");
    let memory_bomb = module("", "(drop (memory.grow (i32.const 30000)))");
    let trap = module("", "(unreachable)");
    let action = RECORD.replace('"', "\\\"");
    let flood = module(
        &format!("(data (i32.const 0) \"{action}\")"),
        &format!(
            "(loop $more (drop (call $action (i32.const 0) (i32.const {}))) (br $more))",
            RECORD.len()
        ),
    );
    let wasi = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "heal") (result i32) (i32.const 0)))"#;
    let bad = [
        ("looping", looping.as_str(), "sandbox_error", "out_of_fuel"),
        (
            "bomb",
            memory_bomb.as_str(),
            "sandbox_error",
            "memory_limit",
        ),
        (
            "trap",
            trap.as_str(),
            "sandbox_error",
            "trap: wasm trap: wasm `unreachable` instruction executed",
        ),
        ("flood", flood.as_str(), "sandbox_error", "plan_too_large"),
        (
            "wasi",
            wasi,
            "patch_rejected",
            "WASI is not available to patches",
        ),
    ];
    for (name, wat, _, _) in bad {
        env.patch(name, wat, "");
        env.simple_policy(name, name, LEDGER_EXEC, r#"["true"]"#);
    }
    env.simple_policy("good", "good", LEDGER_EXEC, r#"["true"]"#);
    let daemon = env.start();

    let mut ids = Vec::new();
    for (app, _, _, _) in bad {
        ids.push(
            daemon
                .report_id(&format!(r#"{{"app":"{app}","kind":"k"}}"#))
                .await,
        );
    }
    let good = daemon.report_id(r#"{"app":"good","kind":"k"}"#).await;

    for ((app, _, reason, detail), id) in bad.iter().zip(&ids) {
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(
            (&fault["state"], &fault["reason"]),
            (&"failed".into(), &(*reason).into()),
            "{app}: {fault:#}"
        );
        let last = fault["history"].as_array().unwrap().last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            last.contains(detail),
            "{app}: `{last}` should mention `{detail}`"
        );
    }
    assert_eq!(daemon.wait_terminal(&good).await["state"], "healed");
    assert_eq!(ledger(&env), [good], "only the good patch's plan ran");
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200, "the daemon is still serving");
}

#[tokio::test]
async fn http_actions_reach_allowed_urls_only_and_http_probes_verify() {
    let (base, seen) = recording_server().await;
    let env = Env::new();
    let flush =
        format!(r#"{{"kind":"http","method":"POST","url":"{base}/admin/flush","body":"all"}}"#);
    let escape = format!(r#"{{"kind":"http","url":"{base}/admin/../secret"}}"#);
    env.patch("flush", &planner(&[&flush]), "");
    env.patch("escape", &planner(&[&escape]), "");
    for (app, patch) in [("cache", "flush"), ("sneaky", "escape")] {
        env.policy(
            app,
            &format!(
                "[match]\napp = \"{app}\"\n[patch]\nname = \"{patch}\"\n[capabilities]\nhttp_prefixes = [\"{base}/admin/\"]\n[verify]\nhttp = {{ url = \"{base}/health\", status = 200 }}\nwithin = \"5s\"\n"
            ),
        );
    }
    let daemon = env.start();

    let sneaky = daemon.report_id(r#"{"app":"sneaky","kind":"k"}"#).await;
    let fault = daemon.wait_terminal(&sneaky).await;
    assert_eq!(fault["reason"], "capability_denied", "{fault:#}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "a denied plan sends nothing"
    );

    let cache = daemon.report_id(r#"{"app":"cache","kind":"k"}"#).await;
    let fault = daemon.wait_terminal(&cache).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "POST /admin/flush HTTP/1.1 all");
    assert!(seen[1].starts_with("GET /health HTTP/1.1"), "{seen:?}");
}
