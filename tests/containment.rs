//! No policy can give a plan reach into phoenix itself: a policy whose writable directory is,
//! holds or lies inside phoenix's config file, policies, patches or data dir, or whose HTTP
//! prefix resolves to phoenix's own listener, is refused at start (exit 64, naming both paths)
//! and at a reload (the last good set stays, `/readyz` says why). What a plan does at run time
//! is tried by the `write-own-*` cases of the adversarial corpus and the effects' unit tests.

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, Env, free_port, planner};

/// Runs `phoenix ARGS` in `env` for at most [`DEADLINE`] (a `serve` that starts instead of
/// refusing would run for good); returns (exit code, stderr), the code -1 when it was killed.
fn run_bounded(env: &Env, args: &[&str]) -> (i32, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(args)
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

/// A policy for app `app` whose capabilities are `capabilities` (TOML lines).
fn policy_with(app: &str, capabilities: &str) -> String {
    format!(
        "[match]\napp = \"{app}\"\n[patch]\nname = \"fine\"\n[capabilities]\n{capabilities}\n[capabilities.commands.ok]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n"
    )
}

fn fine_patch(env: &Env) {
    env.patch("fine", &planner(&[r#"{"kind":"exec","command":"ok"}"#]), "");
}

#[test]
fn a_policy_reaching_phoenixs_own_files_or_api_stops_the_start() {
    let env = Env::new();
    fine_patch(&env);
    let port = free_port();
    let config = format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n");
    std::fs::write(env.path("phoenix.toml"), config).unwrap();
    std::fs::create_dir_all(env.path("data/backups")).unwrap();
    std::fs::create_dir_all(env.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink("data", env.path("data-alias")).unwrap();
    let root = env.dir.path().canonicalize().unwrap();
    let cases = [
        (
            r#"writable_dirs = ["policies"]"#,
            "is phoenix's policies_dir",
        ),
        (
            r#"writable_dirs = ["patches/fine"]"#,
            "lies inside phoenix's patches_dir",
        ),
        (r#"writable_dirs = ["data"]"#, "is phoenix's data_dir"),
        (
            r#"writable_dirs = ["data/backups"]"#,
            "lies inside phoenix's data_dir",
        ),
        (
            r#"writable_dirs = ["data/not-yet"]"#,
            "lies inside phoenix's data_dir",
        ),
        (
            r#"writable_dirs = ["data-alias/store"]"#,
            "lies inside phoenix's data_dir",
        ),
        (r#"writable_dirs = ["."]"#, "contains phoenix's config file"),
        (r#"writable_dirs = ["/"]"#, "contains phoenix's config file"),
        (
            &format!(r#"http_prefixes = ["http://127.0.0.1:{port}/"]"#),
            "reaches phoenix's own API",
        ),
        (
            &format!(r#"http_prefixes = ["http://localhost:{port}/v1/"]"#),
            "reaches phoenix's own API",
        ),
        (
            &format!(r#"http_prefixes = ["http://[::ffff:127.0.0.1]:{port}/v1/"]"#),
            "reaches phoenix's own API",
        ),
        (
            &format!(r#"http_prefixes = ["http://0.0.0.0:{port}/"]"#),
            "reaches phoenix's own API",
        ),
    ];
    for (capabilities, says) in cases {
        std::fs::write(
            env.path("policies/evil.toml"),
            policy_with("evil", capabilities),
        )
        .unwrap();
        for command in ["serve", "check"] {
            let (code, stderr) = run_bounded(&env, &[command, "--config", "phoenix.toml"]);
            assert_eq!(code, 64, "{command} with {capabilities}: {stderr}");
            assert!(
                stderr.contains("evil.toml") && stderr.contains(says),
                "{command} with {capabilities}: {stderr}"
            );
        }
        let (_, _, stderr) = env.run(&["check", "--config", "phoenix.toml"]);
        if capabilities.contains("writable_dirs") {
            // Both paths, as they really are.
            assert!(stderr.contains(&root.display().to_string()), "{stderr}");
        }
    }
    // Beside phoenix's own folders, a policy may write.
    std::fs::write(
        env.path("policies/evil.toml"),
        policy_with("evil", r#"writable_dirs = ["elsewhere", "data-elsewhere"]"#),
    )
    .unwrap();
    let (code, stdout, stderr) = env.run(&["check", "--config", "phoenix.toml"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn a_reload_that_would_reach_phoenix_is_rejected_and_the_last_good_set_stays() {
    let env = Env::new();
    fine_patch(&env);
    env.policy("web", &policy_with("web", ""));
    let daemon = env.start();
    let port = daemon.addr.rsplit(':').next().unwrap().to_owned();

    for (capabilities, says) in [
        (
            r#"writable_dirs = ["policies"]"#.to_string(),
            "is phoenix's policies_dir",
        ),
        (
            format!(r#"http_prefixes = ["http://127.0.0.1:{port}/v1/"]"#),
            "reaches phoenix's own API",
        ),
    ] {
        env.policy("web", &policy_with("evil", &capabilities));
        let ready = daemon
            .get_until("/readyz", "the refusal", |ready| {
                ready["problems"].to_string().contains(says)
            })
            .await;
        assert!(
            ready["problems"].to_string().contains("web.toml"),
            "{ready}"
        );
        // The last good set is in force: `web` is still healed, `evil` matches nothing.
        let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
        assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
        let id = daemon.report_id(r#"{"app":"evil","kind":"down"}"#).await;
        assert_eq!(daemon.wait_terminal(&id).await["reason"], "no_policy");
        // Put the good one back before the next try.
        env.policy("web", &policy_with("web", ""));
        daemon
            .get_until("/readyz", "a clean reload", |ready| {
                ready["problems"].as_array().is_some_and(Vec::is_empty)
            })
            .await;
    }
}
