//! Hot reload: policies and patches change under a running daemon. A bad file is reported and
//! the last good set stays in force; a good change applies to new faults only.

mod common;

use common::{Daemon, Env, planner};
use serde_json::Value;

const LEDGER: &str = r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID $PHOENIX_KIND v1\" >> ledger"]
timeout = "10s""#;

/// Polls `/readyz` until `check` holds.
async fn wait_ready(daemon: &Daemon, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    daemon.get_until("/readyz", what, check).await
}

fn reloads(ready: &Value) -> u64 {
    ready["reloads"].as_u64().unwrap()
}

#[tokio::test]
async fn a_broken_policy_is_reported_and_the_last_good_one_stays_in_force() {
    let env = Env::new();
    env.patch(
        "record",
        &planner(&[r#"{"kind":"exec","command":"record"}"#]),
        "",
    );
    env.simple_policy("web", "record", LEDGER, r#"["true"]"#);
    let daemon = env.start();

    // An editor saves a broken file in two steps.
    std::fs::write(env.path("policies/web.toml"), "[match]\napp = \"web\"\n").unwrap();
    std::fs::write(
        env.path("policies/web.toml"),
        "[match]\napp = \"web\"\n[patch\nname = \"record\"\n",
    )
    .unwrap();
    let ready = wait_ready(&daemon, "the problem", |r| {
        !r["problems"].as_array().unwrap().is_empty()
    })
    .await;
    let problem = ready["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("web.toml") && problem.contains("line 3"),
        "{problem}"
    );
    assert!(daemon.log().contains("Reload rejected"), "{}", daemon.log());

    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(
        fault["state"], "healed",
        "the old policy still heals: {fault:#}"
    );

    // A fixed file applies: now the policy matches only kind "slow".
    env.policy(
        "web",
        &format!("[match]\napp = \"web\"\nkind = \"slow\"\n[patch]\nname = \"record\"\n{LEDGER}\n[verify]\ncommand = [\"true\"]\n"),
    );
    wait_ready(&daemon, "a clean reload", |r| {
        r["problems"].as_array().unwrap().is_empty() && reloads(r) >= 1
    })
    .await;
    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    assert_eq!(daemon.wait_terminal(&id).await["reason"], "no_policy");
    let id = daemon.report_id(r#"{"app":"web","kind":"slow"}"#).await;
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
}

#[tokio::test]
async fn a_new_patch_version_applies_only_once_it_passes_its_tests() {
    let env = Env::new();
    let plan_v1 = planner(&[r#"{"kind":"exec","command":"record"}"#]);
    let test = "[[test]]\nname = \"plans record\"\nfault = { app = \"web\", kind = \"down\" }\nexpect = [{ kind = \"exec\", command = \"record\" }]\n";
    env.patch("record", &plan_v1, test);
    env.simple_policy("web", "record", LEDGER, r#"["true"]"#);
    let daemon = env.start();

    // Version 2 plans nothing, so its contract test fails: it must not replace version 1.
    std::fs::write(
        env.path("patches/record/patch.toml"),
        format!("name = \"record\"\nversion = \"2.0.0\"\n{test}"),
    )
    .unwrap();
    std::fs::write(env.path("patches/record/patch.wat"), planner(&[])).unwrap();
    let ready = wait_ready(&daemon, "the rejected version", |r| {
        !r["problems"].as_array().unwrap().is_empty()
    })
    .await;
    let problem = ready["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("record@2.0.0") && problem.contains("previous version stays active"),
        "{problem}"
    );
    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(
        (&fault["state"], &fault["run"]["patch_version"]),
        (&"healed".into(), &"1.0.0".into()),
        "{fault:#}"
    );

    // Version 3 passes: new faults use it.
    std::fs::write(
        env.path("patches/record/patch.toml"),
        format!("name = \"record\"\nversion = \"3.0.0\"\n{test}"),
    )
    .unwrap();
    std::fs::write(env.path("patches/record/patch.wat"), &plan_v1).unwrap();
    wait_ready(&daemon, "a clean reload", |r| {
        r["problems"].as_array().unwrap().is_empty()
    })
    .await;
    let id = daemon.report_id(r#"{"app":"web","kind":"again"}"#).await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(
        (&fault["state"], &fault["run"]["patch_version"]),
        (&"healed".into(), &"3.0.0".into()),
        "{fault:#}"
    );
}

#[tokio::test]
async fn sighup_reloads() {
    let env = Env::new();
    let daemon = env.start();
    env.patch(
        "record",
        &planner(&[r#"{"kind":"exec","command":"record"}"#]),
        "",
    );
    env.simple_policy("web", "record", LEDGER, r#"["true"]"#);
    // The watcher reloads first; SIGHUP must then produce one more reload.
    let ready = wait_ready(&daemon, "the watcher's reload", |r| r["policies"] == 1).await;
    let before = reloads(&ready);
    daemon.signal("HUP");
    wait_ready(&daemon, "a reload after SIGHUP", |r| reloads(r) > before).await;
}
