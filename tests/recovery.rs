//! Crash recovery: phoenix is killed with SIGKILL mid-run and restarted on the same data dir.
//! No acknowledged report is lost, and no action runs twice (each run appends its fault id to a
//! ledger file that the tests count).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, planner, states};

/// The action appends the fault id to `ledger`, then holds until `release` exists. The probe is
/// healthy when the ledger holds the fault's id.
fn ledger_policy(env: &Env) {
    // Many faults of one app in a moment: lift the per-app rate limit.
    env.write_config("[rate_limit]\nruns_per_app = 1000");
    env.patch(
        "record",
        &planner(&[r#"{"kind":"exec","command":"record"}"#]),
        "",
    );
    env.simple_policy(
        "web",
        "record",
        r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID\" >> ledger; while [ ! -f release ]; do sleep 0.05; done"]
timeout = "60s""#,
        r#"["sh", "-c", "grep -qx \"$PHOENIX_FAULT_ID\" ledger"]"#,
    );
}

fn ledger_counts(env: &Env) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(env.path("ledger"))
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_kill_during_an_action_resumes_by_verifying_not_by_running_it_again() {
    let env = Env::new();
    ledger_policy(&env);
    let mut daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;

    // Wait until the action is running (its ledger line is written), then kill phoenix.
    let started = Instant::now();
    while !ledger_counts(&env).contains_key(&id) {
        assert!(
            started.elapsed() < DEADLINE,
            "the action never started:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill9();
    std::fs::write(env.path("release"), "").unwrap(); // lets the orphaned command end

    let daemon = env.start();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(ledger_counts(&env)[&id], 1, "the action ran once");
    assert_eq!(
        states(&fault),
        ["detected", "analyzing", "patching", "testing", "healed"]
    );
    let resumed = fault["history"].as_array().unwrap().iter().any(|h| {
        h["detail"]
            .as_str()
            .unwrap()
            .contains("resumed after a restart")
    });
    assert!(resumed, "history records the resume: {fault:#}");
}

#[tokio::test]
async fn every_acknowledged_report_survives_a_kill_and_no_action_runs_twice() {
    let env = Env::new();
    ledger_policy(&env);
    std::fs::write(env.path("release"), "").unwrap();
    let mut daemon = env.start();

    let mut ids = Vec::new();
    for i in 0..40 {
        let fault = daemon
            .report(&format!(
                r#"{{"app":"web","kind":"down","labels":{{"n":"{i}"}}}}"#
            ))
            .await;
        ids.push(fault["id"].as_str().unwrap().to_owned());
    }
    daemon.kill9(); // Some faults are mid-flight, in whatever state.

    let counts = ledger_counts(&env);
    let daemon = env.start();
    for id in &ids {
        let fault = daemon.wait_terminal(id).await;
        let ran = counts.get(id).copied().unwrap_or(0);
        let ran_after = ledger_counts(&env).get(id).copied().unwrap_or(0);
        assert!(
            ran_after <= 1,
            "{id} ran {ran_after} times (before restart: {ran})"
        );
        // Healed exactly when its action ran; an action that was recorded as started but never
        // got to run is not repeated, so verification fails instead.
        let expected = if ran_after == 1 { "healed" } else { "failed" };
        assert_eq!(fault["state"], expected, "{fault:#}");
    }
}
