//! Patch lifecycle over the API: upload (checked and tested at once), versions, the first use of
//! an uploaded version waiting for approval, rollback to an earlier version, and a shadow run
//! comparing a candidate's plans with the plans that were used.

mod common;

use common::{Daemon, Env, planner};
use serde_json::{Value, json};

const ONE: &str = r#"{"kind":"exec","command":"one"}"#;
const TWO: &str = r#"{"kind":"exec","command":"two"}"#;
const TEST_ONE: &str = "[[test]]\nname = \"plans one\"\nfault = { app = \"web\", kind = \"k\" }\nexpect = [{ kind = \"exec\", command = \"one\" }]\n";

fn setup() -> Env {
    let env = Env::new();
    env.patch("fix", &planner(&[ONE]), TEST_ONE);
    env.policy(
        "web",
        "[match]\napp = \"web\"\n[patch]\nname = \"fix\"\n[capabilities.commands.one]\nargv = [\"sh\", \"-c\", \"echo one >> ledger\"]\n[capabilities.commands.two]\nargv = [\"sh\", \"-c\", \"echo two >> ledger\"]\n[verify]\ncommand = [\"true\"]\n",
    );
    env
}

async fn upload(daemon: &Daemon, version: &str, plan: &str, test_expects: &str) -> (u16, Value) {
    let manifest = format!(
        "name = \"fix\"\nversion = \"{version}\"\nauthor = \"model-7\"\n[[test]]\nname = \"plans\"\nfault = {{ app = \"web\", kind = \"k\" }}\nexpect = [{{ kind = \"exec\", command = \"{test_expects}\" }}]\n"
    );
    let body = json!({"manifest": manifest, "wat": planner(&[plan])}).to_string();
    let (status, body, _) = daemon.post("/v1/patches", &body, &[]).await;
    (status, body)
}

async fn heal(daemon: &Daemon, n: u32) -> Value {
    let id = daemon
        .report_id(&format!(
            r#"{{"app":"web","kind":"k","labels":{{"n":"{n}"}}}}"#
        ))
        .await;
    daemon
        .wait_for(&id, "settled", |f| {
            ["healed", "failed", "awaiting_approval"].contains(&f["state"].as_str().unwrap())
        })
        .await
}

#[tokio::test]
async fn an_uploaded_version_needs_approval_once_then_can_be_rolled_back() {
    let env = setup();
    let daemon = env.start();
    let v1 = heal(&daemon, 1).await;
    assert_eq!(
        (&v1["state"], &v1["run"]["patch_version"]),
        (&json!("healed"), &json!("1.0.0"))
    );

    let (status, uploaded) = upload(&daemon, "2.0.0", TWO, "two").await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(
        (
            &uploaded["usable"],
            &uploaded["active"],
            &uploaded["patch"]["source"]
        ),
        (&json!(true), &json!(true), &json!("api"))
    );
    let v2_hash = uploaded["patch"]["hash"].as_str().unwrap().to_owned();

    // First use of the uploaded version: waits for a person, whatever the policy says.
    let waiting = heal(&daemon, 2).await;
    assert_eq!(waiting["state"], "awaiting_approval", "{waiting:#}");
    let (_, queue) = daemon.get("/v1/approvals").await;
    assert!(
        queue["approvals"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("uploaded over the API"),
        "{queue}"
    );
    let id = waiting["id"].as_str().unwrap();
    let (status, _, _) = daemon
        .post(
            &format!("/v1/approvals/{id}/approve"),
            r#"{"by":"alice"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        daemon.wait_terminal(id).await["run"]["patch_version"],
        "2.0.0"
    );
    // Later uses follow the policy (auto).
    assert_eq!(heal(&daemon, 3).await["state"], "healed");

    let (_, versions) = daemon.get("/v1/patches/fix").await;
    let listed: Vec<(&str, bool)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("1.0.0", false), ("2.0.0", true)]);
    let v1_hash = versions["versions"][0]["hash"].as_str().unwrap().to_owned();

    // Shadow: v1's plans next to the plans v2 made.
    let (status, shadow, _) = daemon
        .post(
            "/v1/patches/fix/shadow",
            &json!({"hash": v1_hash}).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{shadow}");
    let replays = shadow["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 3);
    let newest = &replays[0];
    assert_eq!(
        (&newest["used"]["hash"], &newest["same"]),
        (&json!(v2_hash), &json!(false)),
        "{newest:#}"
    );
    assert_eq!(
        newest["candidate"]["plan"],
        json!([{"kind": "exec", "command": "one"}])
    );

    // Roll back to v1.
    let rollback =
        json!({"to": v1_hash, "by": "bob", "reason": "v2 restarts too much"}).to_string();
    let (status, body, _) = daemon
        .post("/v1/patches/fix/rollback", &rollback, &[])
        .await;
    assert_eq!(
        (status, &body["patch"]["version"]),
        (200, &json!("1.0.0")),
        "{body}"
    );
    assert_eq!(heal(&daemon, 4).await["run"]["patch_version"], "1.0.0");
}

#[tokio::test]
async fn uploads_are_checked_and_a_failing_one_changes_nothing() {
    let env = setup();
    let daemon = env.start();

    let (status, failing) = upload(&daemon, "3.0.0", TWO, "one").await;
    assert_eq!(
        (status, &failing["usable"], &failing["active"]),
        (201, &json!(false), &json!(false)),
        "{failing}"
    );
    assert_eq!(failing["patch"]["tests"][0]["passed"], false);
    assert_eq!(
        heal(&daemon, 1).await["run"]["patch_version"],
        "1.0.0",
        "the active version is unchanged"
    );

    let failing_hash = failing["patch"]["hash"].as_str().unwrap();
    let rollback = json!({"to": failing_hash, "by": "bob"}).to_string();
    let (status, body, _) = daemon
        .post("/v1/patches/fix/rollback", &rollback, &[])
        .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("patch_unusable")),
        "{body}"
    );
    let (status, _, _) = daemon
        .post(
            "/v1/patches/fix/rollback",
            &json!({"to": "beef", "by": "bob"}).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, 404);
    // Who rolls back and why go to the audit log: named, and bounded, before anything else.
    let v1 = heal(&daemon, 2).await["run"]["patch_hash"].clone();
    assert!(v1.is_string(), "{v1}");
    for (by, reason) in [(" ", "x".to_owned()), ("bob", "x".repeat(1025))] {
        let body = json!({"to": v1, "by": by, "reason": reason}).to_string();
        let (status, answer, _) = daemon.post("/v1/patches/fix/rollback", &body, &[]).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("invalid_request")),
            "{answer}"
        );
    }

    let bad = json!({"manifest": "name = \"fix\"", "wat": "(module)"}).to_string();
    let (status, body, _) = daemon.post("/v1/patches", &bad, &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_patch")),
        "{body}"
    );
    let bad_wat =
        json!({"manifest": "name = \"fix\"\nversion = \"9\"", "wat": "(module"}).to_string();
    let (status, _, _) = daemon.post("/v1/patches", &bad_wat, &[]).await;
    assert_eq!(status, 400);
    let (_, list) = daemon.get("/v1/patches").await;
    assert_eq!(list["patches"][0]["active"]["version"], "1.0.0", "{list}");
}

#[tokio::test]
async fn the_uploader_is_the_author_whatever_the_manifest_claims() {
    let env = Env::new();
    let hash = |secret: &str| blake3::hash(secret.as_bytes()).to_hex().to_string();
    env.write_config(&format!(
        "[[token]]\nname = \"ops\"\nblake3 = \"{}\"\nrole = \"admin\"\n\n[[token]]\nname = \"alice\"\nblake3 = \"{}\"\nrole = \"approver\"\n",
        hash("ops-secret"),
        hash("alice-secret")
    ));
    env.patch("fix", &planner(&[ONE]), TEST_ONE);
    env.policy(
        "web",
        "[match]\napp = \"web\"\n[patch]\nname = \"fix\"\n[approval]\nauthor_may_approve = false\n[capabilities.commands.one]\nargv = [\"true\"]\n[capabilities.commands.two]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n",
    );
    let mut daemon = env.start();
    daemon.token = Some("ops-secret".into());
    // The manifest names someone else; the token that uploads it is `ops`.
    let manifest = "name = \"fix\"\nversion = \"2.0.0\"\nauthor = \"someone-else\"\n[[test]]\nname = \"plans\"\nfault = { app = \"web\", kind = \"k\" }\nexpect = [{ kind = \"exec\", command = \"two\" }]\n";
    let body = json!({"manifest": manifest, "wat": planner(&[TWO])}).to_string();
    let (status, uploaded, _) = daemon.post("/v1/patches", &body, &[]).await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(
        (
            &uploaded["patch"]["author"],
            &uploaded["patch"]["claimed_author"]
        ),
        (&json!("ops"), &json!("someone-else"))
    );

    let waiting = heal(&daemon, 1).await;
    assert_eq!(waiting["state"], "awaiting_approval", "{waiting:#}");
    let id = waiting["id"].as_str().unwrap();
    let (_, request) = daemon.get(&format!("/v1/approvals/{id}")).await;
    let patch = &request["approval"]["patch"];
    assert_eq!(
        (&patch["author"], &patch["claimed_author"]),
        (&json!("ops"), &json!("someone-else")),
        "the request shows who uploaded it and what the manifest claims: {request:#}"
    );
    // The uploader may not approve its own upload, whatever name its manifest gave.
    let approve = format!("/v1/approvals/{id}/approve");
    let (status, refused, _) = daemon.post(&approve, r#"{"by":"ops"}"#, &[]).await;
    assert_eq!(
        (status, &refused["code"]),
        (403, &json!("author_may_not_approve")),
        "{refused}"
    );
    daemon.token = Some("alice-secret".into());
    let (status, approved, _) = daemon.post(&approve, r#"{"by":"alice"}"#, &[]).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(daemon.wait_terminal(id).await["state"], "healed");
}
