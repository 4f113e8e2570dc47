//! Undo: every applied `write_file` keeps the file's previous bytes and mode; a failed
//! verification or a failed action rolls the attempt back, newest first, and the fault records
//! `rolled_back`. Paths outside the policy's writable directories (including `..` and symlink
//! tricks) are refused before anything is written.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Env, planner};
use serde_json::json;

fn write(path: &str, content: &str) -> String {
    json!({"kind": "write_file", "path": path, "content": content}).to_string()
}

fn policy(env: &Env, app: &str, patch: &str, verify: &str) {
    env.policy(
        app,
        &format!(
            "[match]\napp = \"{app}\"\n[patch]\nname = \"{patch}\"\n[capabilities]\nwritable_dirs = [\"conf\"]\n[capabilities.commands.fail]\nargv = [\"sh\", \"-c\", \"exit 4\"]\n[verify]\ncommand = {verify}\nwithin = \"300ms\"\ninterval = \"100ms\"\n"
        ),
    );
}

fn setup() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("conf")).unwrap();
    std::fs::write(env.path("conf/app.conf"), "port = 80\n").unwrap();
    std::fs::set_permissions(
        env.path("conf/app.conf"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    env
}

fn mode(env: &Env, path: &str) -> u32 {
    std::fs::metadata(env.path(path))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn a_failed_verification_restores_files_byte_for_byte() {
    let env = setup();
    let (good, new) = (
        write("conf/app.conf", "port = 9999\n"),
        write("conf/extra.conf", "x\n"),
    );
    env.patch("rewrite", &planner(&[&good, &new]), "");
    policy(
        &env,
        "web",
        "rewrite",
        r#"["sh", "-c", "grep -q 'port = 80$' conf/app.conf && false"]"#,
    );
    let daemon = env.start();

    let id = daemon.report_id(r#"{"app":"web","kind":"drift"}"#).await;
    let fault = daemon.wait_terminal(&id).await;

    assert_eq!(
        (&fault["reason"], &fault["rollback"]),
        (&json!("verify_failed"), &json!("rolled_back")),
        "{fault:#}"
    );
    let applied = fault["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["detail"].as_str().unwrap().contains("wrote 12 bytes"));
    assert!(
        applied,
        "the change was really applied before the rollback: {fault:#}"
    );
    assert_eq!(
        std::fs::read(env.path("conf/app.conf")).unwrap(),
        b"port = 80\n"
    );
    assert_eq!(mode(&env, "conf/app.conf"), 0o640);
    assert!(
        !env.path("conf/extra.conf").exists(),
        "a file that did not exist is removed again"
    );
    let last = fault["history"].as_array().unwrap().last().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        last.contains("rolled_back: removed") && last.contains("restored"),
        "{last}"
    );
}

#[tokio::test]
async fn a_failed_action_rolls_back_the_ones_before_it() {
    let env = setup();
    env.patch(
        "half",
        &planner(&[
            &write("conf/app.conf", "broken"),
            r#"{"kind":"exec","command":"fail"}"#,
        ]),
        "",
    );
    policy(&env, "web", "half", r#"["true"]"#);
    let daemon = env.start();

    let id = daemon.report_id(r#"{"app":"web","kind":"drift"}"#).await;
    let fault = daemon.wait_terminal(&id).await;

    assert_eq!(
        (&fault["reason"], &fault["rollback"]),
        (&json!("apply_failed"), &json!("rolled_back")),
        "{fault:#}"
    );
    assert_eq!(
        std::fs::read(env.path("conf/app.conf")).unwrap(),
        b"port = 80\n"
    );
}

#[tokio::test]
async fn writes_outside_the_writable_dirs_are_refused_and_change_nothing() {
    let env = setup();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "precious").unwrap();
    std::os::unix::fs::symlink(&outside, env.path("conf/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), env.path("conf/link.conf")).unwrap();
    let cases = [
        (
            "climb",
            write("conf/../outside/victim", "pwned"),
            "capability_denied",
        ),
        (
            "absolute",
            write(&outside.join("victim").display().to_string(), "pwned"),
            "capability_denied",
        ),
        (
            "dirlink",
            write("conf/escape/victim", "pwned"),
            "apply_failed",
        ),
        ("filelink", write("conf/link.conf", "pwned"), "apply_failed"),
    ];
    for (name, action, _) in &cases {
        env.patch(name, &planner(&[action]), "");
        policy(&env, name, name, r#"["true"]"#);
    }
    let daemon = env.start();

    for (name, _, reason) in cases {
        let id = daemon
            .report_id(&format!(r#"{{"app":"{name}","kind":"k"}}"#))
            .await;
        let fault = daemon.wait_terminal(&id).await;
        assert_eq!(fault["reason"], reason, "{name}: {fault:#}");
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "precious",
            "{name}"
        );
    }
}
