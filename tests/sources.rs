//! Detection sources configured in phoenix.toml: log watches and probes raise faults through the
//! same intake as the API.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Daemon, Env, planner};
use serde_json::Value;

fn append(env: &Env, file: &str, text: &str) {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path(file))
        .unwrap();
    log.write_all(text.as_bytes()).unwrap();
}

/// Polls the fault list of `app` until `count` faults exist.
async fn faults_of(daemon: &Daemon, app: &str, count: usize) -> Vec<Value> {
    daemon.faults_of(app, count).await
}

#[tokio::test]
async fn matching_log_lines_raise_faults_through_rotation_and_truncation() {
    let env = Env::new();
    append(&env, "app.log", "ERROR E1 written before phoenix started\n");
    env.write_config(
        "[[log]]\nname = \"app\"\npath = \"app.log\"\npattern = 'ERROR (?P<code>E\\d+)'\napp = \"logapp\"\nkind = \"error_line\"\n",
    );
    let daemon = env.start();
    // The watch starts with the daemon; give it a line that must not match first.
    append(&env, "app.log", "INFO all good\nERROR E2 first\n");
    let faults = faults_of(&daemon, "logapp", 1).await;
    assert_eq!(
        faults[0]["labels"]["code"], "E2",
        "only lines after start count: {faults:?}"
    );
    assert_eq!(
        (&faults[0]["kind"], &faults[0]["source"]),
        (&"error_line".into(), &"log".into())
    );
    assert_eq!(faults[0]["message"], "ERROR E2 first");

    std::fs::rename(env.path("app.log"), env.path("app.log.1")).unwrap();
    append(&env, "app.log", "ERROR E3 after rotation\n");
    let faults = faults_of(&daemon, "logapp", 2).await;
    assert_eq!(faults[1]["labels"]["code"], "E3");

    std::fs::write(env.path("app.log"), "").unwrap();
    append(
        &env,
        "app.log",
        "ERROR E4 after truncation, a longer line than before\n",
    );
    let faults = faults_of(&daemon, "logapp", 3).await;
    assert_eq!(faults[2]["labels"]["code"], "E4");
    // Nothing else was reported (no duplicates from re-reading).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(faults_of(&daemon, "logapp", 3).await.len(), 3);
}

#[tokio::test]
async fn a_failing_probe_raises_one_fault_and_its_recovery_is_recorded() {
    let env = Env::new();
    // Reserve a port, then close it: the probe fails until the test listens there again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.write_config(&format!(
        "[[probe]]\nname = \"db\"\napp = \"db\"\ntcp = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nfailures = 3\n"
    ));
    env.patch(
        "gate",
        &planner(&[r#"{"kind":"exec","command":"gate"}"#]),
        "",
    );
    env.simple_policy(
        "db",
        "gate",
        "[capabilities.commands.gate]\nargv = [\"sh\", \"-c\", \"while [ ! -f release ]; do sleep 0.05; done\"]\ntimeout = \"60s\"",
        r#"["true"]"#,
    );
    let daemon = env.start();

    let fault = faults_of(&daemon, "db", 1).await.remove(0);
    let id = fault["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&fault["kind"], &fault["source"]),
        (&"probe_failed".into(), &"probe".into())
    );
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{fault}"
    );
    daemon
        .wait_for(&id, "patching", |f| f["state"] == "patching")
        .await;

    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let fault = daemon
        .wait_for(&id, "recovered", |f| {
            f["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["detail"].as_str().unwrap().contains("healthy again"))
        })
        .await;
    assert_eq!(
        fault["state"], "patching",
        "recovery after acting does not cut the run short"
    );
    std::fs::write(env.path("release"), "").unwrap();
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
    assert_eq!(
        faults_of(&daemon, "db", 1).await.len(),
        1,
        "consecutive failures are one fault"
    );
}
