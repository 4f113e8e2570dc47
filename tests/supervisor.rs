//! Supervised programs through the real binary: a killed program comes back through the FSM,
//! a crash loop stays one fault with a growing backoff, stopping phoenix stops its programs, and
//! a program orphaned by `kill -9` of phoenix is stopped at the next start.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon, Env, free_port, states};
use serde_json::Value;

/// The shipped policies and patches (restart-supervised + restart-program), plus `programs`.
fn env_with(programs: &str) -> Env {
    let env = Env::shipped();
    let config = std::fs::read_to_string(env.path("phoenix.toml")).unwrap();
    std::fs::write(env.path("phoenix.toml"), format!("{config}\n{programs}\n")).unwrap();
    env
}

async fn program(daemon: &Daemon, name: &str) -> Value {
    let (_, body) = daemon.get("/v1/programs").await;
    body["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .expect("program listed")
}

/// Polls the program's status until `check` holds.
async fn wait_program(
    daemon: &Daemon,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let find = |body: &Value| {
        body["programs"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .cloned()
    };
    let body = daemon
        .get_until("/v1/programs", what, |body| {
            find(body).is_some_and(|p| check(&p))
        })
        .await;
    find(&body).unwrap_or_default()
}

async fn only_fault_of(daemon: &Daemon, app: &str) -> Value {
    let started = Instant::now();
    loop {
        let (_, page) = daemon.get(&format!("/v1/faults?app={app}")).await;
        let faults = page["faults"].as_array().unwrap();
        assert!(
            faults.len() <= 1,
            "{app} has {} faults: {page:#}",
            faults.len()
        );
        if let Some(fault) = faults.first() {
            return daemon.fault(fault["id"].as_str().unwrap()).await;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no fault for {app}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u64) -> bool {
    // A zombie still has /proc/PID; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

fn kill9(pid: u64) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_killed_program_is_restarted_through_the_fsm_and_verified_by_its_health_url() {
    let port = free_port();
    let env = env_with(&format!(
        "[[program]]\nname = \"web\"\nargv = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]\nhealth_url = \"http://127.0.0.1:{port}/\"\n"
    ));
    let daemon = env.start();
    let before = wait_program(&daemon, "web", "running", |p| p["running"] == true).await;
    let old_pid = before["pid"].as_u64().unwrap();

    kill9(old_pid);
    let fault = only_fault_of(&daemon, "web").await;
    let fault = daemon.wait_terminal(fault["id"].as_str().unwrap()).await;

    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert_eq!(
        states(&fault),
        ["detected", "analyzing", "patching", "testing", "healed"]
    );
    assert_eq!(
        (&fault["kind"], &fault["source"]),
        (&"exited".into(), &"supervisor".into())
    );
    assert_eq!(fault["labels"]["signal"], "9");
    let after = program(&daemon, "web").await;
    assert_eq!(after["running"], true);
    assert_ne!(after["pid"], before["pid"]);
    let health = phoenix::effects::http_client()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await;
    assert_eq!(health.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn a_report_cannot_pose_as_a_program_exit_to_get_a_healthy_program_restarted() {
    let port = free_port();
    let env = env_with(&format!(
        "[[program]]\nname = \"web\"\nargv = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]\nhealth_url = \"http://127.0.0.1:{port}/\"\n"
    ));
    let daemon = env.start();
    let before = wait_program(&daemon, "web", "running", |p| p["running"] == true).await;
    // The labels of a real exit are phoenix's own: refused from a reporter.
    let forged = r#"{"app":"web","kind":"exited","labels":{"supervisor":"phoenix","signal":"9"}}"#;
    let (status, refused, _) = daemon.post("/v1/faults", forged, &[]).await;
    assert_eq!((status, &refused["code"]), (400, &"invalid_report".into()));
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("label `supervisor`"),
        "{refused}"
    );
    // Without them, the shipped policy (`source = "supervisor"`) does not take it.
    let id = daemon.report_id(r#"{"app":"web","kind":"exited"}"#).await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["reason"], "no_policy", "{fault:#}");
    let after = program(&daemon, "web").await;
    assert_eq!(
        (&after["pid"], &after["starts"]),
        (&before["pid"], &before["starts"]),
        "the healthy program was left alone"
    );
}

#[tokio::test]
async fn a_crash_loop_is_one_reopened_fault_with_a_growing_backoff() {
    // Runs 2 s (well past its 1 s start grace, so each restart verifies) then exits 3, well inside
    // `stable_after`: every exit is a recurrence of the same fault.
    let env = env_with(
        "[[program]]\nname = \"flappy\"\nargv = [\"sh\", \"-c\", \"sleep 2; exit 3\"]\nbackoff_initial = \"200ms\"\nstable_after = \"60s\"\n",
    );
    let daemon = env.start();
    let fault = only_fault_of(&daemon, "flappy").await;
    let id = fault["id"].as_str().unwrap().to_owned();
    daemon
        .wait_for(&id, "three occurrences", |f| {
            f["occurrences"].as_u64() >= Some(3)
        })
        .await;
    daemon
        .wait_for(&id, "restarted again", |f| {
            f["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["detail"].as_str().unwrap().contains("restarted, pid"))
                .count()
                >= 3
        })
        .await;
    let fault = daemon.fault(&id).await;
    let backoffs: Vec<u64> = fault["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| {
            let detail = h["detail"].as_str().unwrap();
            let ms = detail.split("(backoff ").nth(1)?.split(" ms").next()?;
            ms.parse().ok()
        })
        .collect();
    assert!(backoffs.len() >= 3, "{fault:#}");
    assert_eq!(backoffs[..3], [0, 200, 400], "{fault:#}");
    let reopened = fault["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["detail"].as_str().unwrap().starts_with("reopened"))
        .count();
    assert!(reopened >= 2, "{fault:#}");
    assert_eq!(fault["labels"]["exit_code"], "3");
    only_fault_of(&daemon, "flappy").await; // still exactly one fault
}

#[tokio::test]
async fn stopping_phoenix_stops_its_programs_with_sigterm_then_sigkill() {
    let env = env_with(
        "[[program]]\nname = \"polite\"\nargv = [\"sh\", \"-c\", \"trap 'echo bye > polite.txt; exit 0' TERM; while :; do sleep 0.05; done\"]\n\n[[program]]\nname = \"stubborn\"\nargv = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\nstop_grace = \"300ms\"\n",
    );
    let mut daemon = env.start();
    let polite = wait_program(&daemon, "polite", "running", |p| p["running"] == true).await["pid"]
        .as_u64()
        .unwrap();
    let stubborn =
        wait_program(&daemon, "stubborn", "running", |p| p["running"] == true).await["pid"]
            .as_u64()
            .unwrap();

    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
    assert_eq!(
        std::fs::read_to_string(env.path("polite.txt"))
            .unwrap()
            .trim(),
        "bye"
    );
    assert!(!alive(polite), "polite program still running");
    assert!(!alive(stubborn), "stubborn program survived SIGKILL");
    assert!(daemon.log().contains("ignored SIGTERM"), "{}", daemon.log());
}

#[tokio::test]
async fn a_program_orphaned_by_kill_9_of_phoenix_is_stopped_at_the_next_start() {
    let env = env_with(
        "[[program]]\nname = \"sleeper\"\nargv = [\"sleep\", \"300\"]\nstop_grace = \"1s\"\n",
    );
    let mut daemon = env.start();
    let orphan = wait_program(&daemon, "sleeper", "running", |p| p["running"] == true).await["pid"]
        .as_u64()
        .unwrap();
    daemon.kill9();
    assert!(
        alive(orphan),
        "the child outlives a SIGKILLed parent (nothing can run in it)"
    );
    assert!(Path::new(&env.path("data/programs/sleeper.json")).exists());

    let daemon = env.start();
    let fresh = wait_program(&daemon, "sleeper", "running", |p| p["running"] == true).await["pid"]
        .as_u64()
        .unwrap();
    assert_ne!(fresh, orphan);
    let started = Instant::now();
    while alive(orphan) {
        assert!(
            started.elapsed() < DEADLINE,
            "orphan {orphan} was not stopped:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
