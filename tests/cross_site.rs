//! Requests phoenix refuses whatever the token: one addressed to another name (a page whose
//! DNS name was re-pointed at phoenix, DNS rebinding) gets 421; a write that a browser could
//! send cross-site (not JSON) gets 415, and one from another origin 403. Without tokens, any
//! page the operator visits could otherwise approve a plan. The console itself keeps working
//! (tests/console.rs drives it in Chromium).

mod common;

use common::{Daemon, Env};
use serde_json::Value;

/// A raw request to the daemon: `method path` with `headers`, as a browser would send it.
async fn send(
    daemon: &Daemon,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let client = phoenix::effects::http_client().unwrap();
    let mut request = client
        .request(method.parse().unwrap(), daemon.url(path))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn another_sites_page_can_neither_read_nor_decide() {
    let env = Env::new();
    env.production_web();
    let daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"drift"}"#).await;
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let approve = format!("/v1/approvals/{id}/approve");
    let decision = r#"{"by":"mallory","comment":"from a web page"}"#;
    let own = format!("http://{}", daemon.addr);

    // DNS rebinding: the page's own name now points at 127.0.0.1.
    let rebound = [("host", "attacker.example:80")];
    for (method, path) in [("GET", "/v1/approvals"), ("GET", "/"), ("GET", "/metrics")] {
        let (status, body) = send(&daemon, method, path, &rebound, "").await;
        assert_eq!(status, 421, "{method} {path}: {body}");
    }
    let json = ("content-type", "application/json");
    let (status, _) = send(
        &daemon,
        "POST",
        &approve,
        &[rebound[0], json, ("origin", "http://attacker.example")],
        decision,
    )
    .await;
    assert_eq!(status, 421);

    // Simple cross-site requests (no preflight): a form, or a text/plain fetch.
    for kind in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
    ] {
        let headers = [
            ("content-type", kind),
            ("origin", "http://attacker.example"),
        ];
        let (status, body) = send(&daemon, "POST", &approve, &headers, decision).await;
        assert_eq!(
            (status, &body["code"]),
            (415, &"unsupported_media_type".into()),
            "{kind}"
        );
    }
    // JSON from another origin (a preflight would have been refused; a non-browser may try).
    for origin in ["http://attacker.example", "null", "http://localhost:1"] {
        let (status, body) = send(
            &daemon,
            "POST",
            &approve,
            &[json, ("origin", origin)],
            decision,
        )
        .await;
        assert_eq!(
            (status, &body["code"]),
            (403, &"cross_origin".into()),
            "{origin}"
        );
    }
    let fault = daemon.fault(&id).await;
    assert_eq!(fault["state"], "awaiting_approval", "nothing was decided");

    // phoenix's own page, and a client that sends no Origin (the CLI, curl), may.
    let (status, body) = send(
        &daemon,
        "POST",
        &approve,
        &[json, ("origin", &own)],
        decision,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
}
