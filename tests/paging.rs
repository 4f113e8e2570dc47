//! Paging: PagerDuty Events API v2 and Opsgenie's Alert API get the JSON each vendor documents —
//! a page when a fault fails or waits for a person, a resolve or close when a paged fault heals —
//! with the secret read from a file or a systemd credential, at a local receiver.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, recording_server_whole};
use serde_json::Value;

/// The recording policies (`web` heals by itself, `prod` asks a person), and `broken`, whose
/// verification never passes.
fn setup(webhooks: &str) -> Env {
    let env = common::recording_env(webhooks);
    env.policy(
        "broken",
        "[match]\napp = \"broken\"\n[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"true\"]\n[verify]\ncommand = [\"false\"]\nwithin = \"1s\"\n",
    );
    env
}

/// Waits until `seen` holds `count` requests; returns them split into (request line, headers
/// in lower case, JSON body).
async fn requests(
    seen: &Arc<Mutex<Vec<String>>>,
    count: usize,
    log: impl Fn() -> String,
) -> Vec<(String, String, Value)> {
    let started = Instant::now();
    while seen.lock().unwrap().len() < count {
        assert!(
            started.elapsed() < DEADLINE,
            "{} of {count} requests:\n{:?}\n{}",
            seen.lock().unwrap().len(),
            seen.lock().unwrap(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Deliveries run concurrently: wait a moment for any that should not have come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.lock()
        .unwrap()
        .iter()
        .map(|whole| {
            let (head, body) = whole.split_once("\r\n\r\n").unwrap();
            let (line, headers) = head.split_once("\r\n").unwrap();
            (
                line.to_owned(),
                headers.to_ascii_lowercase(),
                serde_json::from_str(body).unwrap(),
            )
        })
        .collect()
}

fn secret_file(env: &Env, name: &str, secret: &str) -> String {
    let path = env.path(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn pagerduty_gets_a_trigger_for_a_failure_and_an_approval_and_a_resolve_when_it_heals() {
    let (receiver, seen) = recording_server_whole().await;
    let env = setup("");
    let key = secret_file(&env, "pd.key", "R0UTINGKEY0123456789abcdef012345");
    env.write_config(&format!(
        "[[webhook]]\nurl = \"{receiver}/v2/enqueue\"\nformat = \"pagerduty\"\nkey_file = \"{key}\"\n"
    ));
    let daemon = env.start();

    // Healed by itself: nobody was paged, so nobody is told.
    let quiet = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    assert_eq!(daemon.wait_terminal(&quiet).await["state"], "healed");
    // Failed: a trigger.
    let failed = daemon
        .report_id(r#"{"app":"broken","kind":"down","severity":"critical"}"#)
        .await;
    assert_eq!(daemon.wait_terminal(&failed).await["state"], "failed");
    let sent = requests(&seen, 1, || daemon.log()).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (line, headers, body) = &sent[0];
    assert_eq!(line, "POST /v2/enqueue HTTP/1.1");
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    assert!(!headers.contains("authorization"), "{headers}");
    assert_eq!(body["routing_key"], "R0UTINGKEY0123456789abcdef012345");
    assert_eq!(body["event_action"], "trigger");
    assert_eq!(body["dedup_key"], failed.as_str());
    let payload = &body["payload"];
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["component"], "broken");
    assert_eq!(payload["class"], "down");
    assert!(payload["source"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        payload["summary"].as_str().unwrap().contains(&failed),
        "{payload}"
    );
    assert!(
        payload["timestamp"].as_str().unwrap().ends_with('Z'),
        "{payload}"
    );
    assert_eq!(payload["custom_details"]["fault_id"], failed.as_str());

    // Waits for a person: a trigger; approved and healed: a resolve of the same dedup key.
    seen.lock().unwrap().clear();
    let asked = daemon
        .report_id(r#"{"app":"prod","kind":"down","severity":"warning"}"#)
        .await;
    let sent = requests(&seen, 1, || daemon.log()).await;
    assert_eq!(sent[0].2["event_action"], "trigger");
    assert_eq!(sent[0].2["payload"]["severity"], "warning");
    assert_eq!(sent[0].2["dedup_key"], asked.as_str());
    seen.lock().unwrap().clear();
    daemon.approve(&asked, "alice").await;
    assert_eq!(daemon.wait_terminal(&asked).await["state"], "healed");
    let sent = requests(&seen, 1, || daemon.log()).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let expected: Value = serde_json::json!({
        "routing_key": "R0UTINGKEY0123456789abcdef012345",
        "event_action": "resolve",
        "dedup_key": asked,
    });
    assert_eq!(sent[0].2, expected);
}

#[tokio::test]
async fn opsgenie_gets_an_alert_by_alias_and_its_close_with_the_key_from_a_credential() {
    let (receiver, seen) = recording_server_whole().await;
    let env = setup(&format!(
        "[[webhook]]\nurl = \"{receiver}/\"\nformat = \"opsgenie\"\nkey_credential = \"opsgenie\"\n"
    ));
    let credentials = env.path("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(
        credentials.join("opsgenie"),
        "eb243592-faa2-4ba2-a551q-1afdf565c889\n",
    )
    .unwrap();
    std::fs::set_permissions(
        credentials.join("opsgenie"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let daemon =
        env.start_with_env(&[("CREDENTIALS_DIRECTORY", &credentials.display().to_string())]);

    let asked = daemon
        .report_id(r#"{"app":"prod","kind":"disk_full","severity":"critical"}"#)
        .await;
    let sent = requests(&seen, 1, || daemon.log()).await;
    let (line, headers, body) = &sent[0];
    assert_eq!(line, "POST /v2/alerts HTTP/1.1");
    assert!(
        headers.contains("authorization: geniekey eb243592-faa2-4ba2-a551q-1afdf565c889"),
        "{headers}"
    );
    assert_eq!(body["alias"], asked.as_str());
    assert_eq!(body["priority"], "P1");
    assert_eq!(body["entity"], "prod");
    assert!(body["message"].as_str().unwrap().len() <= 130, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("phoenix: approval needed"),
        "{body}"
    );
    assert_eq!(
        body["tags"],
        serde_json::json!(["phoenix", "approval_requested"])
    );
    assert_eq!(body["details"]["fault_id"], asked.as_str());
    assert!(
        body["details"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string),
        "{body}"
    );

    seen.lock().unwrap().clear();
    daemon.approve(&asked, "alice").await;
    assert_eq!(daemon.wait_terminal(&asked).await["state"], "healed");
    let sent = requests(&seen, 1, || daemon.log()).await;
    let (line, headers, body) = &sent[0];
    assert_eq!(
        line,
        &format!("POST /v2/alerts/{asked}/close?identifierType=alias HTTP/1.1")
    );
    assert!(headers.contains("authorization: geniekey "), "{headers}");
    assert!(
        body["source"].as_str().unwrap().starts_with("phoenix@"),
        "{body}"
    );
    assert!(body["note"].as_str().unwrap().contains("healed"), "{body}");
}

#[test]
fn a_paging_secret_others_can_read_or_written_in_the_config_stops_the_start() {
    let env = Env::new();
    let key = env.path("pd.key");
    std::fs::write(&key, "k\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (webhook, why) in [
        (
            format!(
                "url = \"http://127.0.0.1:9/\"\nformat = \"pagerduty\"\nkey_file = \"{}\"",
                key.display()
            ),
            "readable by every user",
        ),
        (
            "url = \"http://127.0.0.1:9/\"\nformat = \"pagerduty\"\nrouting_key = \"k\"".to_owned(),
            "unknown field `routing_key`",
        ),
        (
            "url = \"http://127.0.0.1:9/\"\nformat = \"opsgenie\"".to_owned(),
            "needs its secret",
        ),
    ] {
        env.write_config(&format!("[[webhook]]\n{webhook}\n"));
        let (code, _, stderr) = env.run(&["check", "--config", "phoenix.toml"]);
        assert_eq!(code, 64, "{webhook}: {stderr}");
        assert!(stderr.contains(why), "{webhook}: {stderr}");
    }
}
