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

/// What a crash between creating a `write_file`'s temporary file and renaming it leaves: the
/// action recorded as started (not done) with the temporary name in its undo, and the file at
/// that name. A kill cannot be aimed at those microseconds, so the test builds that state: a
/// fault waiting for approval, backed up, its record set to where the crash would have left it,
/// restored. The resume verifies instead of writing again, and removes the temporary file.
#[tokio::test]
async fn a_write_cut_short_by_a_crash_leaves_no_temporary_file_after_the_resume() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("conf")).unwrap();
    std::fs::write(env.path("conf/app.conf"), "old\n").unwrap();
    let write = r#"{"kind":"write_file","path":"conf/app.conf","content":"new\n"}"#;
    env.patch("rewrite", &planner(&[write]), "");
    env.policy(
        "conf",
        "[approval]\nrule = \"required\"\n[match]\napp = \"conf\"\n[patch]\nname = \"rewrite\"\n\
         [capabilities]\nwritable_dirs = [\"conf\"]\n[verify]\ncommand = [\"true\"]\n",
    );
    let mut daemon = env.start();
    let id = daemon.report_id(r#"{"app":"conf","kind":"drift"}"#).await;
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let addr = format!("http://{}", daemon.addr);
    let (code, _, err) = env.run(&["--addr", &addr, "backup", "--out", "snapshot.jsonl"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.terminate(), Some(0));

    // The crash: action 1 started, its undo recorded, its temporary file half-written.
    let temp = ".phoenix-tmp-00000000000000ab";
    std::fs::write(env.path("conf").join(temp), "ne").unwrap();
    let target = std::fs::canonicalize(env.path("conf/app.conf")).unwrap();
    let snapshot = std::fs::read_to_string(env.path("snapshot.jsonl")).unwrap();
    let mut entries = phoenix::store::backup::decode(&snapshot).unwrap();
    let fault_key = format!("f/{id}").into_bytes();
    let (_, record) = entries
        .iter_mut()
        .find(|(key, _)| *key == fault_key)
        .expect("the fault's record is in the backup");
    let mut fault: serde_json::Value = serde_json::from_slice(record).unwrap();
    fault["state"] = "patching".into();
    fault["run"]["actions_started"] = 1.into();
    fault["run"]["undo"] = serde_json::json!([{
        "kind": "restore_file", "path": target, "backup": null, "mode": null, "temp": temp
    }]);
    *record = serde_json::to_vec(&fault).unwrap();
    std::fs::write(
        env.path("crashed.jsonl"),
        phoenix::store::backup::encode(&entries),
    )
    .unwrap();
    std::fs::remove_dir_all(env.path("data/store")).unwrap();
    let restore = [
        "restore",
        "--config",
        "phoenix.toml",
        "--from",
        "crashed.jsonl",
    ];
    let (code, _, err) = env.run(&restore);
    assert_eq!(code, 0, "{err}");

    let daemon = env.start();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    let resumed = common::history_field(&fault, "detail")
        .into_iter()
        .find(|detail| detail.contains("resumed after a restart"))
        .unwrap_or_else(|| panic!("no resume in the history: {fault:#}"));
    assert!(resumed.contains("removed the temporary file"), "{resumed}");
    let mut names: Vec<String> = std::fs::read_dir(env.path("conf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["app.conf"], "no temporary file left");
    assert_eq!(
        std::fs::read_to_string(env.path("conf/app.conf")).unwrap(),
        "old\n",
        "the write is not run again"
    );
}
