//! The `phoenix` client commands against a live daemon: tables by default, JSON on request, and
//! exit codes scripts can use (0 ok, 1 refused by the daemon, 69 unreachable).

mod common;

use std::process::Command;

use common::{Env, free_port};

/// Runs `phoenix ARGS` against `addr`; returns (exit code, stdout, stderr).
fn phoenix(addr: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(args)
        .env("PHOENIX_ADDR", format!("http://{addr}"))
        .env_remove("PHOENIX_TOKEN")
        .output()
        .expect("run phoenix");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_fault_is_reported_approved_and_followed_from_the_terminal() {
    let env = Env::new();
    env.production_web();
    let daemon = env.start();
    let addr = daemon.addr.clone();

    let (code, out, err) = phoenix(
        &addr,
        &[
            "report",
            "--app",
            "web",
            "--kind",
            "drift",
            "--label",
            "host=a",
            "--message",
            "config changed",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.split_whitespace().next().unwrap().to_owned();
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;

    let (code, out, _) = phoenix(&addr, &["approvals", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("FAULT") && out.contains(&id) && out.contains("record"),
        "{out}"
    );
    let (code, out, err) = phoenix(
        &addr,
        &[
            "approvals",
            "approve",
            &id,
            "--comment",
            "ok",
            "--by",
            "alice",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, format!("approved {id}").as_str()),
        "{err}"
    );
    daemon.wait_terminal(&id).await;

    let (code, out, _) = phoenix(&addr, &["faults", "show", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("state healed") && out.contains("approved by alice"),
        "{out}"
    );
    let (code, out, _) = phoenix(&addr, &["--json", "faults", "list", "--app", "web"]);
    assert_eq!(code, 0);
    let page: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(page["faults"][0]["labels"]["host"], "a");

    let (code, _, _) = phoenix(
        &addr,
        &["breakers", "trip", "global", "--reason", "maintenance"],
    );
    assert_eq!(code, 0);
    let (_, out, _) = phoenix(&addr, &["breakers", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("global") && l.contains("open")),
        "{out}"
    );
    let (code, out, _) = phoenix(&addr, &["status"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ready: 1 policies, 1 patches"), "{out}");

    // Refused by the daemon: exit 1 with its code and message.
    let (code, _, err) = phoenix(&addr, &["approvals", "approve", &id]);
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("not_awaiting_approval"),
        "{err}"
    );
}

#[test]
fn an_unreachable_daemon_exits_69() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = phoenix(&addr, &["status"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("cannot reach the daemon"), "{err}");
}

/// Whether `text` holds a character that acts on a terminal (what phoenix escapes).
fn acts_on_terminal(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[tokio::test]
async fn text_from_outside_reaches_the_terminal_escaped_and_json_exactly() {
    let env = Env::new();
    env.production_web();
    let daemon = env.start();
    let addr = daemon.addr.clone();
    // A reporter's label and message that would clear the screen and forge a line.
    let forged = "\u{1b}[2J\u{1b}[Hstate healed\nok\u{202e}";
    let report = serde_json::json!({
        "app": "web",
        "kind": "drift",
        "labels": {"fingerprint": forged},
        "message": forged,
    });
    let id = daemon.report_id(&report.to_string()).await;
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    // An approver's comment and an operator's reason, in the audit log.
    let (code, _, err) = phoenix(
        &addr,
        &[
            "approvals",
            "approve",
            &id,
            "--by",
            "alice",
            "--comment",
            forged,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = phoenix(
        &addr,
        &[
            "breakers", "trip", "global", "--by", "bob", "--reason", forged,
        ],
    );
    assert_eq!(code, 0, "{err}");

    for args in [
        vec!["faults", "show", id.as_str()],
        vec!["faults", "list"],
        vec!["audit"],
        vec!["approvals", "list"],
        vec!["breakers", "list"],
    ] {
        let (code, out, err) = phoenix(&addr, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!acts_on_terminal(&out), "{args:?} printed raw: {out:?}");
    }
    let (_, audit, _) = phoenix(&addr, &["audit"]);
    assert!(
        audit.contains(r"\u{1b}[2J\u{1b}[Hstate healed\nok\u{202e}"),
        "{audit}"
    );
    // `--json` is exact JSON: the text comes back as it was sent.
    let (code, out, _) = phoenix(&addr, &["--json", "faults", "show", &id]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["message"], forged);
}

/// A token file is read whole and trimmed; one that cannot be used stops the command before
/// anything is sent; a token both ways is bad usage.
#[tokio::test]
async fn a_token_file_is_read_and_a_bad_one_refused_before_sending() {
    let env = Env::new();
    let hash = blake3::hash(b"s3cret").to_hex().to_string();
    env.write_config(&format!(
        "[[token]]\nname = \"ops\"\nblake3 = \"{hash}\"\nrole = \"admin\"\n"
    ));
    let daemon = env.start();
    let file = env.path("token");
    std::fs::write(&file, "  s3cret\n").unwrap();
    let token_file = file.display().to_string();
    let (code, out, err) = phoenix(&daemon.addr, &["status", "--token-file", &token_file]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(&file, "\n").unwrap();
    let (code, _, err) = phoenix(&daemon.addr, &["status", "--token-file", &token_file]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("must hold one token"), "{err}");
    let missing = env.path("missing").display().to_string();
    let (code, _, err) = phoenix(&daemon.addr, &["status", "--token-file", &missing]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("cannot read the token file"), "{err}");
    let (code, _, err) = phoenix(
        &daemon.addr,
        &["status", "--token", "s3cret", "--token-file", &token_file],
    );
    assert_eq!(code, 2, "{err}");
}

/// Output to a reader that has gone away ends the command quietly (no panic, status 0).
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// The man pages and completions the package ships come from the command-line definitions.
#[test]
fn man_pages_and_completions_are_generated_from_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let status = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(["manpages", "--dir"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let page = std::fs::read_to_string(out.join("phoenix.1")).unwrap();
    assert!(page.contains("\n.TH phoenix 1 "), "{page}");
    assert!(page.contains("phoenix\\-report(1)"), "{page}");
    let report = std::fs::read_to_string(out.join("phoenix-report.1")).unwrap();
    assert!(report.contains("\\-\\-token\\-file"), "{report}");
    for shell in ["bash", "zsh", "fish"] {
        let script = Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(script.status.success());
        let text = String::from_utf8_lossy(&script.stdout);
        assert!(text.contains("token-file"), "{shell}: {text}");
    }
}
