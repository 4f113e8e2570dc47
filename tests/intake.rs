//! The fault intake API from outside: dedup, idempotency, listing, and every kind of bad input
//! answered with a JSON 4xx that stores nothing. Also: bad config and policies stop start-up.

mod common;

use common::{Env, planner};
use serde_json::Value;

/// A policy whose action blocks until the test creates `release`, so the fault stays open.
fn gated(env: &Env) {
    env.patch(
        "gate",
        &planner(&[r#"{"kind":"exec","command":"gate"}"#]),
        "",
    );
    env.simple_policy(
        "web",
        "gate",
        r#"[capabilities.commands.gate]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID\" >> ledger; while [ ! -f release ]; do sleep 0.05; done"]
timeout = "60s""#,
        r#"["true"]"#,
    );
}

#[tokio::test]
async fn a_repeated_report_counts_occurrences_of_the_open_fault_and_starts_no_second_run() {
    let env = Env::new();
    gated(&env);
    let daemon = env.start();

    let first = daemon
        .report(r#"{"app":"web","kind":"down","labels":{"host":"a"}}"#)
        .await;
    let id = first["id"].as_str().unwrap().to_owned();
    daemon
        .wait_for(&id, "patching", |f| f["state"] == "patching")
        .await;
    let second = daemon
        .report(r#"{"labels":{"host":"a"},"kind":"down","app":"web","message":"again"}"#)
        .await;
    let other = daemon
        .report(r#"{"app":"web","kind":"down","labels":{"host":"b"}}"#)
        .await;

    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["occurrences"], 2);
    assert_ne!(
        other["id"], first["id"],
        "other label values are another fault"
    );
    std::fs::write(env.path("release"), "").unwrap();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed");
    assert_eq!(fault["occurrences"], 2);
    daemon.wait_terminal(other["id"].as_str().unwrap()).await;
    let ledger = std::fs::read_to_string(env.path("ledger")).unwrap();
    assert_eq!(
        ledger.lines().filter(|l| *l == id).count(),
        1,
        "one run for two reports"
    );

    // Once healed, the same report opens a new fault.
    let again = daemon
        .report(r#"{"app":"web","kind":"down","labels":{"host":"a"}}"#)
        .await;
    assert_ne!(again["id"], first["id"]);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_or_refuses_a_different_body() {
    let env = Env::new();
    let daemon = env.start();
    let key = [("Idempotency-Key", "report-42")];

    let (status, first, _) = daemon
        .post("/v1/faults", r#"{"app":"a","kind":"k"}"#, &key)
        .await;
    assert_eq!(status, 202);
    // Same report, different formatting: still the same request.
    let (status, replay, headers) = daemon
        .post("/v1/faults", r#"{ "kind": "k", "app": "a" }"#, &key)
        .await;
    assert_eq!(status, 202);
    assert_eq!(replay, first, "the replay is the first response");
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, error, _) = daemon
        .post("/v1/faults", r#"{"app":"b","kind":"k"}"#, &key)
        .await;
    assert_eq!(status, 422);
    assert_eq!(error["code"], "idempotency_mismatch");

    let (_, page) = daemon.get("/v1/faults").await;
    assert_eq!(page["faults"].as_array().unwrap().len(), 1, "{page:#}");
    assert_eq!(
        page["faults"][0]["occurrences"], 1,
        "a replay is not an occurrence"
    );
}

/// A request body, its headers, and the expected status and error code.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);

#[tokio::test]
async fn bad_requests_get_a_json_4xx_and_store_nothing() {
    let env = Env::new();
    env.write_config("max_body_bytes = 2048");
    let daemon = env.start();
    let big = format!(
        r#"{{"app":"a","kind":"k","message":"{}"}}"#,
        "x".repeat(4000)
    );
    let long_label = format!(
        r#"{{"app":"a","kind":"k","labels":{{"v":"{}"}}}}"#,
        "x".repeat(1025)
    );
    let posts: [Case; 14] = [
        ("{not json", &[], 400, "invalid_json"),
        ("", &[], 400, "invalid_json"),
        (r#"{"app":"a"}"#, &[], 400, "invalid_report"),
        (
            r#"{"app":"a","kind":"k","color":"red"}"#,
            &[],
            400,
            "invalid_report",
        ),
        (r#"{"app":"","kind":"k"}"#, &[], 400, "invalid_report"),
        (r#"{"app":"a b","kind":"k"}"#, &[], 400, "invalid_report"),
        (
            r#"{"app":"a","kind":"k","severity":"apocalyptic"}"#,
            &[],
            400,
            "invalid_report",
        ),
        (&long_label, &[], 400, "invalid_report"),
        // Labels only phoenix's own sources set: a report may not pose as one of them.
        (
            r#"{"app":"a","kind":"exited","labels":{"supervisor":"phoenix"}}"#,
            &[],
            400,
            "invalid_report",
        ),
        (
            r#"{"app":"a","kind":"exited","labels":{"signal":"9"}}"#,
            &[],
            400,
            "invalid_report",
        ),
        (
            r#"{"app":"a","kind":"k","labels":{"probe":"db"}}"#,
            &[],
            400,
            "invalid_report",
        ),
        (
            r#"{"app":"a","kind":"k","labels":{"log":"errors"}}"#,
            &[],
            400,
            "invalid_report",
        ),
        (&big, &[], 413, "body_too_large"),
        (
            r#"{"app":"a","kind":"k"}"#,
            &[("Idempotency-Key", "")],
            400,
            "invalid_idempotency_key",
        ),
    ];
    for (body, headers, status, code) in posts {
        let (got, error, _) = daemon.post("/v1/faults", body, headers).await;
        assert_eq!(
            (got, error["code"].as_str().unwrap()),
            (status, code),
            "{body:.80}: {error}"
        );
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let gets = [
        ("/v1/faults/01NOSUCHFAULT", 404, "not_found"),
        ("/v1/faults?state=sleeping", 400, "invalid_query"),
        ("/v1/faults?limit=0", 400, "invalid_query"),
        ("/v1/faults?limit=many", 400, "invalid_query"),
        ("/v1/nothing", 404, "not_found"),
    ];
    for (path, status, code) in gets {
        let (got, error) = daemon.get(path).await;
        assert_eq!(
            (got, error["code"].as_str().unwrap()),
            (status, code),
            "{path}: {error}"
        );
    }
    let (_, page) = daemon.get("/v1/faults").await;
    assert_eq!(page["faults"], Value::Array(vec![]), "nothing was stored");
}

#[tokio::test]
async fn faults_list_by_state_and_app_one_page_at_a_time() {
    let env = Env::new();
    let daemon = env.start();
    let mut ids = Vec::new();
    for app in ["a", "b", "c", "a2"] {
        ids.push(
            daemon
                .report_id(&format!(r#"{{"app":"{app}","kind":"k"}}"#))
                .await,
        );
    }
    for id in &ids {
        assert_eq!(daemon.wait_terminal(id).await["reason"], "no_policy");
    }
    let (_, page) = daemon.get("/v1/faults?limit=3").await;
    let listed: Vec<&str> = page["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[..3]);
    let (_, rest) = daemon
        .get(&format!(
            "/v1/faults?limit=3&after={}",
            page["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest["faults"][0]["id"], ids[3].as_str());
    assert!(rest.get("next").is_none(), "last page: {rest}");
    let (_, by_app) = daemon.get("/v1/faults?app=b").await;
    assert_eq!(by_app["faults"].as_array().unwrap().len(), 1);
    let (_, failed) = daemon.get("/v1/faults?state=failed").await;
    assert_eq!(failed["faults"].as_array().unwrap().len(), 4);
    let (_, healed) = daemon.get("/v1/faults?state=healed").await;
    assert!(healed["faults"].as_array().unwrap().is_empty());
}

/// How many entries the repository ships in `dir` (policies/ or patches/).
fn shipped(dir: &str) -> u64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    std::fs::read_dir(path).unwrap().count() as u64
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let env = Env::shipped();
    let daemon = env.start();
    let (status, doc) = daemon.get("/v1/openapi.json").await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.0.3")));
    let (status, health) = daemon.get("/healthz").await;
    let client = phoenix::effects::http_client().unwrap();
    let own = client
        .get(daemon.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        own.headers()["x-request-id"],
        "trace-42",
        "a caller's request id is kept"
    );
    let fresh = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert!(
        !fresh.headers()["x-request-id"].is_empty(),
        "every answer has a request id"
    );
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = daemon.get("/readyz").await;
    assert_eq!(
        (
            status,
            ready["policies"].as_u64(),
            ready["patches"].as_u64()
        ),
        (200, Some(shipped("policies")), Some(shipped("patches")))
    );
}

#[tokio::test]
async fn sigterm_stops_the_daemon_cleanly() {
    let env = Env::new();
    let mut daemon = env.start();
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
}

#[test]
fn bad_config_or_policies_exit_64_naming_the_problem() {
    let env = Env::new();
    env.write_config("listen_on = \"127.0.0.1:1\"");
    let (code, _, stderr) = env.run(&["serve", "--config", "phoenix.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("phoenix.toml") && stderr.contains("unknown field `listen_on`"),
        "{stderr}"
    );

    env.write_config("workers = -1");
    let (code, _, stderr) = env.run(&["serve", "--config", "phoenix.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("workers"), "{stderr}");

    env.write_config("");
    env.policy(
        "broken",
        "[match]\napp = \"x\"\n[patch]\nname = \"p\"\n[verify]\nwithin = \"1s\"\n",
    );
    let (code, _, stderr) = env.run(&["serve", "--config", "phoenix.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("broken.toml") && stderr.contains("`verify` needs exactly one of"),
        "{stderr}"
    );
    assert!(
        !env.path("data/store").exists(),
        "nothing was created before the input was checked"
    );

    let (code, _, stderr) = env.run(&["serve", "--config", "missing.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[test]
fn check_reports_patch_and_policy_problems() {
    let env = Env::new();
    env.patch("bad-test", &planner(&[]), "[[test]]\nname = \"wants an action\"\nfault = { app = \"a\", kind = \"k\" }\nexpect = [{ kind = \"exec\", command = \"x\" }]\n");
    env.simple_policy("a", "not-there", "", r#"["true"]"#);
    let (code, stdout, _) = env.run(&["check", "--config", "phoenix.toml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAIL bad-test: wants an action: expected plan"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL policy a: patch `not-there`"),
        "{stdout}"
    );
}

/// Every folder under `dir` (and `dir`) with a mode other than 0700, and every file with a
/// mode other than 0600: "PATH MODE".
fn not_private(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    if mode != 0o700 {
        found.push(format!("{} {mode:o}", dir.display()));
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(not_private(&entry.path()));
        } else if kind.is_file() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            if mode != 0o600 {
                found.push(format!("{} {mode:o}", entry.path().display()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_data_dir_is_phoenixs_alone_whatever_the_umask() {
    let env = Env::new();
    gated(&env);
    std::fs::write(env.path("release"), "").unwrap();
    // A data dir made by someone else (systemd's StateDirectory is 0755 unless told).
    std::fs::create_dir_all(env.path("data")).unwrap();
    std::fs::set_permissions(
        env.path("data"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"k"}"#).await;
    daemon.wait_terminal(&id).await;
    // Through a restart too: the store replays, sled writes new files.
    assert_eq!(daemon.terminate(), Some(0));
    let daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"k2"}"#).await;
    daemon.wait_terminal(&id).await;
    let loose = not_private(&env.path("data"));
    assert!(loose.is_empty(), "not private: {loose:#?}");
}
