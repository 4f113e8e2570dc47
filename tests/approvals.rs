//! The approval queue from outside: plans that need a human wait in `awaiting_approval`;
//! approve → healed, reject → failed `rejected`, nobody → failed `approval_expired`; a second
//! decision is a 409; quorum and author rules hold; the queue survives `kill -9`.

mod common;

use common::{Daemon, Env, planner};
use serde_json::{Value, json};

const RECORD: &str = r#"{"kind":"exec","command":"record"}"#;

/// `web` is a production policy (always asks); `strict` needs two approvers, not the author.
fn setup() -> Env {
    let env = Env::new();
    env.patch("record", &planner(&[RECORD]), "author = \"mallory\"\n");
    let common = "[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"sh\", \"-c\", \"echo \\\"$PHOENIX_FAULT_ID\\\" >> ledger\"]\n[verify]\ncommand = [\"true\"]\n";
    env.policy(
        "web",
        &format!("environment = \"production\"\n[match]\napp = \"web\"\n{common}"),
    );
    env.policy(
        "brief",
        &format!(
            "[approval]\nrule = \"required\"\nexpires = \"1s\"\n[match]\napp = \"brief\"\n{common}"
        ),
    );
    env.policy(
        "strict",
        &format!("[approval]\nrule = \"required\"\nquorum = 2\nauthor_may_approve = false\n[match]\napp = \"strict\"\n{common}"),
    );
    env
}

fn ledger(env: &Env) -> String {
    std::fs::read_to_string(env.path("ledger")).unwrap_or_default()
}

async fn waiting(daemon: &Daemon, app: &str) -> String {
    let id = daemon
        .report_id(&format!(r#"{{"app":"{app}","kind":"drift"}}"#))
        .await;
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    id
}

async fn decide(daemon: &Daemon, id: &str, verb: &str, by: &str) -> (u16, Value) {
    let body = json!({"by": by, "comment": "checked the plan"}).to_string();
    let (status, body, _) = daemon
        .post(&format!("/v1/approvals/{id}/{verb}"), &body, &[])
        .await;
    (status, body)
}

#[tokio::test]
async fn an_approved_plan_runs_and_heals_and_a_second_decision_is_a_conflict() {
    let env = setup();
    let daemon = env.start();
    let id = waiting(&daemon, "web").await;
    assert!(ledger(&env).is_empty(), "nothing runs before approval");

    let (_, queue) = daemon.get("/v1/approvals").await;
    let request = &queue["approvals"][0];
    assert_eq!(request["fault_id"], id.as_str());
    assert!(
        request["reason"].as_str().unwrap().contains("production"),
        "{request}"
    );
    assert_eq!(
        request["plan"],
        json!([{"kind": "exec", "command": "record"}])
    );
    assert_eq!(
        (&request["patch"]["name"], &request["patch"]["author"]),
        (&json!("record"), &json!("mallory"))
    );

    let (status, body) = decide(&daemon, &id, "approve", "alice").await;
    assert_eq!(status, 200, "{body}");
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    let states = common::states(&fault);
    assert_eq!(
        states,
        [
            "detected",
            "analyzing",
            "awaiting_approval",
            "patching",
            "testing",
            "healed"
        ]
    );
    let approved = fault["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["detail"] == "approved by alice (1 of 1 approvals): checked the plan");
    assert!(approved, "{fault:#}");
    assert_eq!(ledger(&env).trim(), id);

    let (status, body) = decide(&daemon, &id, "approve", "bob").await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("not_awaiting_approval")),
        "{body}"
    );
    let (status, _) = decide(&daemon, "01NOSUCHFAULT", "approve", "bob").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_rejected_plan_never_runs() {
    let env = setup();
    let daemon = env.start();
    let id = waiting(&daemon, "web").await;
    let (status, _) = decide(&daemon, &id, "reject", "alice").await;
    assert_eq!(status, 200);
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["reason"], "rejected", "{fault:#}");
    assert!(ledger(&env).is_empty());
    let (status, body, _) = daemon
        .post(
            &format!("/v1/approvals/{id}/approve"),
            "{\"who\":\"x\"}",
            &[],
        )
        .await;
    assert_eq!((status, &body["code"]), (400, &json!("invalid_decision")));
}

#[tokio::test]
async fn an_undecided_request_expires_by_itself() {
    let env = setup();
    let daemon = env.start();
    let id = waiting(&daemon, "brief").await;
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["reason"], "approval_expired", "{fault:#}");
    assert!(ledger(&env).is_empty());
    let (status, body) = decide(&daemon, &id, "approve", "alice").await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn a_quorum_needs_distinct_approvers_and_may_exclude_the_author() {
    let env = setup();
    let daemon = env.start();
    let id = waiting(&daemon, "strict").await;

    let (status, body) = decide(&daemon, &id, "approve", "mallory").await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("author_may_not_approve")),
        "{body}"
    );
    assert_eq!(decide(&daemon, &id, "approve", "alice").await.0, 200);
    let (status, body) = decide(&daemon, &id, "approve", "alice").await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("already_decided")),
        "{body}"
    );
    assert_eq!(
        daemon.fault(&id).await["state"],
        "awaiting_approval",
        "one of two approvals"
    );
    assert_eq!(decide(&daemon, &id, "approve", "bob").await.0, 200);
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
}

#[tokio::test]
async fn the_queue_survives_a_kill() {
    let env = setup();
    let mut daemon = env.start();
    let id = waiting(&daemon, "web").await;
    daemon.kill9();

    let daemon = env.start();
    let (_, queue) = daemon.get("/v1/approvals").await;
    assert_eq!(queue["approvals"][0]["fault_id"], id.as_str(), "{queue}");
    assert_eq!(decide(&daemon, &id, "approve", "alice").await.0, 200);
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
}

#[tokio::test]
async fn past_the_per_app_rate_limit_faults_wait_for_a_person() {
    let env = setup();
    env.write_config("[rate_limit]\nruns_per_app = 2\nwindow = \"1h\"");
    env.policy(
        "auto",
        "[match]\napp = \"busy\"\n[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n",
    );
    let daemon = env.start();
    for n in 0..2 {
        let id = daemon
            .report_id(&format!(
                r#"{{"app":"busy","kind":"k","labels":{{"n":"{n}"}}}}"#
            ))
            .await;
        assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
    }
    let accepted = daemon
        .report(r#"{"app":"busy","kind":"k","labels":{"n":"third"}}"#)
        .await;
    // The count is taken in the report's own write: the answer already waits.
    assert_eq!(accepted["state"], "awaiting_approval", "{accepted:#}");
    let id = accepted["id"].as_str().unwrap();
    daemon
        .wait_for(id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let (_, queue) = daemon.get("/v1/approvals").await;
    let reason = queue["approvals"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("already had 2 healing runs in the last 1h"),
        "{reason}"
    );
}
