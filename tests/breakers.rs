//! Circuit breakers from outside: a patch that keeps failing verification is stopped after the
//! configured number of attempts; after the cooldown one trial decides; operators trip and
//! reset breakers by hand (recorded with who and why).

mod common;

use common::{Daemon, Env, planner};
use serde_json::{Value, json};

const RECORD: &str = r#"{"kind":"exec","command":"record"}"#;

/// Healthy only while the file `healthy` exists; each run appends to `ledger`.
fn setup(when_open: &str) -> Env {
    let env = Env::new();
    env.patch("record", &planner(&[RECORD]), "");
    env.policy(
        "web",
        &format!(
            "[match]\napp = \"web\"\n[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"sh\", \"-c\", \"echo \\\"$PHOENIX_FAULT_ID\\\" >> ledger\"]\n[verify]\ncommand = [\"test\", \"-f\", \"healthy\"]\nwithin = \"200ms\"\ninterval = \"50ms\"\n[breaker]\nmin_attempts = 2\nfailure_rate = 0.5\ncooldown = \"2s\"\nwhen_open = \"{when_open}\"\n"
        ),
    );
    env
}

fn runs(env: &Env) -> usize {
    std::fs::read_to_string(env.path("ledger"))
        .unwrap_or_default()
        .lines()
        .count()
}

async fn heal(daemon: &Daemon, n: u32) -> Value {
    let id = daemon
        .report_id(&format!(
            r#"{{"app":"web","kind":"down","labels":{{"n":"{n}"}}}}"#
        ))
        .await;
    daemon.wait_terminal(&id).await
}

async fn breaker(daemon: &Daemon, name: &str) -> Value {
    let (_, body) = daemon.get("/v1/breakers").await;
    body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_failing_patch_opens_its_breaker_and_a_trial_after_the_cooldown_closes_it() {
    let env = setup("fail");
    let daemon = env.start();

    assert_eq!(heal(&daemon, 1).await["reason"], "verify_failed");
    assert_eq!(heal(&daemon, 2).await["reason"], "verify_failed");
    assert_eq!(breaker(&daemon, "policy:web").await["position"], "open");
    let refused = heal(&daemon, 3).await;
    assert_eq!(refused["reason"], "breaker_open", "{refused:#}");
    assert_eq!(
        runs(&env),
        2,
        "the open breaker kept the patch from running again"
    );

    // After the cooldown, one trial; it heals, so the breaker closes.
    std::fs::write(env.path("healthy"), "").unwrap();
    // Report until the cooldown is over: until then every fault is refused without running.
    let started = std::time::Instant::now();
    let mut n = 4;
    let trial = loop {
        let fault = heal(&daemon, n).await;
        if fault["reason"] != "breaker_open" {
            break fault;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "the breaker never half-opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        n += 1;
    };
    assert_eq!(trial["state"], "healed", "{trial:#}");
    assert_eq!(runs(&env), 3, "one trial run after the two failures");
    let web = breaker(&daemon, "policy:web").await;
    assert_eq!(web["position"], "closed", "{web:#}");
    let audit: Vec<&str> = web["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap())
        .collect();
    assert_eq!(audit, ["open", "half_open", "closed"]);
    assert_eq!(heal(&daemon, 1000).await["state"], "healed");
}

#[tokio::test]
async fn an_open_breaker_can_send_faults_to_approval_and_operators_trip_and_reset_it() {
    let env = setup("approval");
    std::fs::write(env.path("healthy"), "").unwrap();
    let daemon = env.start();

    let trip = json!({"by": "alice", "reason": "bad deploy in progress"}).to_string();
    let (status, body, _) = daemon.post("/v1/breakers/global/trip", &trip, &[]).await;
    assert_eq!(
        (status, &body["breaker"]["position"]),
        (200, &json!("open")),
        "{body}"
    );
    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let (_, queue) = daemon.get("/v1/approvals").await;
    assert!(
        queue["approvals"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("breaker `global` is open"),
        "{queue}"
    );
    assert_eq!(runs(&env), 0, "{fault:#}");

    let reset = json!({"by": "bob", "reason": "deploy finished"}).to_string();
    let (status, body, _) = daemon.post("/v1/breakers/global/reset", &reset, &[]).await;
    assert_eq!(
        (status, &body["breaker"]["position"]),
        (200, &json!("closed"))
    );
    let changes = &body["breaker"]["changes"];
    assert_eq!(
        (&changes[0]["by"], &changes[1]["by"]),
        (&json!("alice"), &json!("bob"))
    );
    assert_eq!(heal(&daemon, 9).await["state"], "healed");

    let (status, _, _) = daemon.post("/v1/breakers/nonsense/trip", &trip, &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = daemon
        .post(
            "/v1/breakers/global/trip",
            "{\"by\":\"\",\"reason\":\"x\"}",
            &[],
        )
        .await;
    assert_eq!(status, 400);
}
