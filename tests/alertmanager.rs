//! The Alertmanager receiver: webhook payloads become faults; a resolution closes a fault that
//! has not acted yet; and a real Alertmanager (Debian's `prometheus-alertmanager`) delivers to
//! phoenix end to end.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, free_port, planner};
use serde_json::{Value, json};

fn notification(status: &str, alerts: Value) -> String {
    json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
        "receiver": "phoenix", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example", "alerts": alerts,
    })
    .to_string()
}

fn alert(status: &str, app: &str, name: &str, fingerprint: &str) -> Value {
    json!({
        "status": status, "labels": {"app": app, "alertname": name, "severity": "critical"},
        "annotations": {"summary": format!("{name} on {app}")},
        "startsAt": "2026-11-23T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph", "fingerprint": fingerprint,
    })
}

/// One worker, and a `gate` policy whose action holds that worker until `release` exists: faults
/// reported meanwhile wait in `detected`.
fn gated_env() -> Env {
    let env = Env::new();
    env.write_config("workers = 1");
    env.patch(
        "record",
        &planner(&[r#"{"kind":"exec","command":"record"}"#]),
        "",
    );
    env.simple_policy(
        "gate",
        "record",
        r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID\" >> ledger; while [ ! -f release ]; do sleep 0.05; done"]
timeout = "60s""#,
        r#"["true"]"#,
    );
    env.simple_policy(
        "web",
        "record",
        r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID\" >> ledger"]"#,
        r#"["true"]"#,
    );
    env
}

#[tokio::test]
async fn an_alert_resolved_before_any_action_closes_its_fault_without_acting() {
    let env = gated_env();
    let daemon = env.start();
    let gate = daemon.report_id(r#"{"app":"gate","kind":"hold"}"#).await;
    // Its report is written on its way to `patching` already; the one worker is taken once
    // the engine has started its action (which then waits for `release`).
    daemon
        .wait_for(&gate, "its action started", |f| {
            f["history"].as_array().is_some_and(|history| {
                history.iter().any(|entry| {
                    entry["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("action 1/1 started"))
                })
            })
        })
        .await;

    let firing = notification("firing", json!([alert("firing", "web", "DiskFull", "f1")]));
    let (status, receipt, _) = daemon.post("/v1/alertmanager", &firing, &[]).await;
    assert_eq!(status, 200, "{receipt}");
    let id = receipt["firing"][0].as_str().unwrap().to_owned();
    let (_, again, _) = daemon.post("/v1/alertmanager", &firing, &[]).await;
    assert_eq!(
        again["firing"][0],
        id.as_str(),
        "a repeated notification is the same fault"
    );

    let resolved = notification(
        "resolved",
        json!([alert("resolved", "web", "DiskFull", "f1")]),
    );
    let (status, receipt, _) = daemon.post("/v1/alertmanager", &resolved, &[]).await;
    assert_eq!(
        (status, &receipt["resolved"][0]),
        (200, &json!(id)),
        "{receipt}"
    );

    std::fs::write(env.path("release"), "").unwrap();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "resolved", "{fault:#}");
    assert_eq!(
        (&fault["source"], &fault["occurrences"]),
        (&json!("alertmanager"), &json!(2))
    );
    assert_eq!(
        (&fault["app"], &fault["kind"], &fault["severity"]),
        (&json!("web"), &json!("DiskFull"), &json!("critical"))
    );
    let ledger = std::fs::read_to_string(env.path("ledger")).unwrap();
    assert!(
        !ledger.contains(&id),
        "nothing was applied for the resolved alert: {ledger}"
    );
    assert_eq!(daemon.wait_terminal(&gate).await["state"], "healed");
}

#[tokio::test]
async fn alerts_heal_and_bad_alerts_are_skipped_with_a_reason() {
    let env = gated_env();
    let daemon = env.start();
    let body = notification(
        "firing",
        json!([
            alert("firing", "web", "Down", "a1"),
            {"status": "firing", "labels": {"alertname": "NoApp"}, "annotations": {}, "fingerprint": "a2"},
        ]),
    );
    let (status, receipt, _) = daemon.post("/v1/alertmanager", &body, &[]).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["skipped"][0]["reason"], "alert has no `app` label");
    let id = receipt["firing"][0].as_str().unwrap();
    assert_eq!(daemon.wait_terminal(id).await["state"], "healed");

    // Resolved after healing: nothing open to close.
    let resolved = notification("resolved", json!([alert("resolved", "web", "Down", "a1")]));
    let (_, receipt, _) = daemon.post("/v1/alertmanager", &resolved, &[]).await;
    assert_eq!(receipt["resolved_unmatched"], 1, "{receipt}");

    for (body, code) in [
        (
            notification("firing", json!([])).replace("\"4\"", "\"3\""),
            "unsupported_version",
        ),
        ("{\"alerts\": 5}".to_string(), "invalid_notification"),
        ("nope".to_string(), "invalid_json"),
    ] {
        let (status, error, _) = daemon.post("/v1/alertmanager", &body, &[]).await;
        assert_eq!(
            (status, error["code"].as_str().unwrap()),
            (400, code),
            "{error}"
        );
    }
}

/// The Alertmanager binary, if installed. In CI (`CI` set) it must be: `.ci/run` installs it.
fn alertmanager_binary() -> Option<String> {
    let candidates = ["prometheus-alertmanager", "alertmanager"];
    let found = std::env::var("PHOENIX_ALERTMANAGER").ok().or_else(|| {
        candidates.iter().find_map(|name| {
            let ok = Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            ok.is_ok_and(|s| s.success()).then(|| name.to_string())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Debian's prometheus-alertmanager for this test"
        );
        eprintln!("SKIPPED: no Alertmanager binary (apt-get install prometheus-alertmanager)");
    }
    found
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_alertmanager_delivers_a_firing_alert_as_a_fault() {
    let Some(binary) = alertmanager_binary() else {
        return;
    };
    let env = Env::new();
    let daemon = env.start();
    let config = format!(
        "route:\n  receiver: phoenix\n  group_by: ['alertname', 'app']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: phoenix\n    webhook_configs:\n      - url: http://{}/v1/alertmanager\n        send_resolved: true\n",
        daemon.addr
    );
    std::fs::write(env.path("alertmanager.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(env.path("alertmanager.log")).unwrap();
    let _alertmanager = KillOnDrop(
        Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                env.path("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", env.path("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start alertmanager"),
    );
    let client = phoenix::effects::http_client().unwrap();
    let am = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while !client
        .get(format!("{am}/-/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        let log = std::fs::read_to_string(env.path("alertmanager.log")).unwrap_or_default();
        assert!(
            started.elapsed() < DEADLINE,
            "Alertmanager never became ready:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let alert = json!([{"labels": {"alertname": "DiskFull", "app": "am-demo"}, "annotations": {"summary": "92% used"}}]);
    let posted = client
        .post(format!("{am}/api/v2/alerts"))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert!(
        posted.status().is_success(),
        "{}",
        posted.text().await.unwrap()
    );

    let started = Instant::now();
    let fault = loop {
        let (_, page) = daemon.get("/v1/faults?app=am-demo").await;
        if let Some(fault) = page["faults"].as_array().unwrap().first() {
            break fault.clone();
        }
        let log = std::fs::read_to_string(env.path("alertmanager.log")).unwrap_or_default();
        assert!(
            started.elapsed() < DEADLINE,
            "no fault from Alertmanager:\n{log}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&fault["kind"], &fault["source"]),
        (&json!("DiskFull"), &json!("alertmanager"))
    );
    assert_eq!(fault["message"], "92% used");
}
