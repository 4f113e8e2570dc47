//! Authentication and roles from outside: every route but health needs a token; 401 without
//! one, 403 for a role that may not; a reporter sees only its apps (others' faults are 404).

mod common;

use common::{Daemon, Env};
use serde_json::json;

const REPORTER: &str = "reporter-secret-for-web";
const APPROVER: &str = "approver-secret";
const ADMIN: &str = "admin-secret";

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn setup() -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[[token]]\nname = \"ci\"\nblake3 = \"{}\"\nrole = \"reporter\"\napps = [\"web\"]\n\n[[token]]\nname = \"alice\"\nblake3 = \"{}\"\nrole = \"approver\"\n\n[[token]]\nname = \"root\"\nblake3 = \"{}\"\nrole = \"admin\"\n",
        hash(REPORTER),
        hash(APPROVER),
        hash(ADMIN)
    ));
    env.production_web();
    env
}

async fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let client = phoenix::effects::http_client().unwrap();
    let mut request = client
        .request(method.parse().unwrap(), daemon.url(path))
        .body(body.to_owned());
    if method != "GET" {
        request = request.header("content-type", "application/json");
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

#[tokio::test]
async fn each_role_reaches_exactly_its_routes() {
    let env = setup();
    // Debug logging: the most a log ever says, and still no secret in it.
    let mut daemon = env.start_with_env(&[("RUST_LOG", "debug")]);
    daemon.token = Some(ADMIN.into());
    let fault = r#"{"app":"web","kind":"drift"}"#;

    // Public.
    assert_eq!(call(&daemon, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(call(&daemon, "GET", "/readyz", None, "").await.0, 200);
    // No token, or a wrong one: 401 with the API's error format.
    let (status, body) = call(&daemon, "POST", "/v1/faults", None, fault).await;
    assert_eq!((status, &body["code"]), (401, &json!("unauthenticated")));
    assert_eq!(
        call(&daemon, "GET", "/v1/faults", Some("guess"), "")
            .await
            .0,
        401
    );

    // Reporter: its app only.
    let (status, web) = call(&daemon, "POST", "/v1/faults", Some(REPORTER), fault).await;
    assert_eq!(status, 202, "{web}");
    let web_id = web["id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        &daemon,
        "POST",
        "/v1/faults",
        Some(REPORTER),
        r#"{"app":"db","kind":"down"}"#,
    )
    .await;
    assert_eq!((status, &body["code"]), (403, &json!("forbidden")));
    let (_, db) = call(
        &daemon,
        "POST",
        "/v1/faults",
        Some(ADMIN),
        r#"{"app":"db","kind":"down"}"#,
    )
    .await;
    let db_id = db["id"].as_str().unwrap();
    assert_eq!(
        call(
            &daemon,
            "GET",
            &format!("/v1/faults/{web_id}"),
            Some(REPORTER),
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &daemon,
            "GET",
            &format!("/v1/faults/{db_id}"),
            Some(REPORTER),
            ""
        )
        .await
        .0,
        404,
        "another app's fault does not exist for it"
    );
    let (_, list) = call(&daemon, "GET", "/v1/faults", Some(REPORTER), "").await;
    assert!(
        list["faults"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["app"] == "web"),
        "{list}"
    );
    for (method, path) in [
        ("GET", "/v1/approvals"),
        ("GET", "/v1/patches"),
        ("GET", "/v1/breakers"),
        ("POST", "/v1/breakers/global/trip"),
    ] {
        assert_eq!(
            call(&daemon, method, path, Some(REPORTER), "{}").await.0,
            403,
            "{method} {path}"
        );
    }

    // Approver: reads everything, decides approvals (as itself), cannot administer.
    daemon
        .wait_for(&web_id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    assert_eq!(
        call(
            &daemon,
            "GET",
            &format!("/v1/faults/{db_id}"),
            Some(APPROVER),
            ""
        )
        .await
        .0,
        200
    );
    let (status, decided) = call(
        &daemon,
        "POST",
        &format!("/v1/approvals/{web_id}/approve"),
        Some(APPROVER),
        r#"{"by":"someone-else"}"#,
    )
    .await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(
        decided["approval"]["decisions"][0]["by"], "alice",
        "the token holder decides, not the body"
    );
    assert_eq!(
        call(
            &daemon,
            "POST",
            &format!("/v1/approvals/{web_id}/approve"),
            Some(REPORTER),
            r#"{"by":"x"}"#
        )
        .await
        .0,
        403
    );
    let trip = r#"{"by":"alice","reason":"x"}"#;
    assert_eq!(
        call(
            &daemon,
            "POST",
            "/v1/breakers/global/trip",
            Some(APPROVER),
            trip
        )
        .await
        .0,
        403
    );

    // Admin: everything.
    assert_eq!(
        call(
            &daemon,
            "POST",
            "/v1/breakers/global/trip",
            Some(ADMIN),
            trip
        )
        .await
        .0,
        200
    );
    assert!(
        !daemon.log().contains(REPORTER) && !daemon.log().contains(ADMIN),
        "secrets never reach the log"
    );
}

#[test]
fn without_tokens_phoenix_refuses_to_listen_beyond_loopback() {
    let env = Env::new();
    std::fs::write(
        env.path("phoenix.toml"),
        "listen = \"0.0.0.0:0\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let (code, _, stderr) = env.run(&["serve", "--config", "phoenix.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("no [[token]] is configured"), "{stderr}");
}

#[tokio::test]
async fn the_audit_log_records_who_did_what() {
    let env = setup();
    let mut daemon = env.start();
    daemon.token = Some(ADMIN.into());
    let (_, fault) = call(
        &daemon,
        "POST",
        "/v1/faults",
        Some(REPORTER),
        r#"{"app":"web","kind":"drift"}"#,
    )
    .await;
    let id = fault["id"].as_str().unwrap().to_owned();
    daemon
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    call(
        &daemon,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(APPROVER),
        r#"{"by":"x","comment":"go"}"#,
    )
    .await;
    daemon.wait_terminal(&id).await;
    call(
        &daemon,
        "POST",
        "/v1/breakers/policy:web/trip",
        Some(ADMIN),
        r#"{"by":"x","reason":"maintenance"}"#,
    )
    .await;

    let (status, audit) = call(&daemon, "GET", "/v1/audit", Some(ADMIN), "").await;
    assert_eq!(status, 200, "{audit}");
    let lines: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("alice".to_string(), "approve".to_string(), id.clone()),
        ("phoenix".into(), "action_applied".into(), id.clone()),
        ("root".into(), "breaker_trip".into(), "policy:web".into()),
    ];
    assert_eq!(lines, expected, "{audit:#}");
    assert_eq!(
        call(&daemon, "GET", "/v1/audit", Some(APPROVER), "")
            .await
            .0,
        403,
        "the audit log is for admins"
    );
}

#[tokio::test]
async fn a_burst_past_a_tokens_budget_gets_429_with_retry_after() {
    let env = setup();
    let config = std::fs::read_to_string(env.path("phoenix.toml")).unwrap();
    std::fs::write(
        env.path("phoenix.toml"),
        format!("{config}\n[limits]\nrequests_per_second = 1\nburst = 3\n"),
    )
    .unwrap();
    let daemon = env.start();
    let client = phoenix::effects::http_client().unwrap();
    let mut limited = None;
    for _ in 0..6 {
        let response = client
            .get(daemon.url("/v1/faults"))
            .bearer_auth(REPORTER)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("six requests in a burst of three were all served");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Another token has its own budget.
    assert_eq!(
        call(&daemon, "GET", "/v1/faults", Some(ADMIN), "").await.0,
        200
    );
}

/// `call`, from the client address `from` (any loopback address reaches 127.0.0.1), with extra
/// headers.
async fn call_from(
    daemon: &Daemon,
    from: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut request = client
        .request(method.parse().unwrap(), daemon.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!(text)),
        headers,
    )
}

#[tokio::test]
async fn an_address_that_guesses_tokens_is_refused_unread_and_counted() {
    let env = setup();
    let config = std::fs::read_to_string(env.path("phoenix.toml")).unwrap();
    std::fs::write(
        env.path("phoenix.toml"),
        format!("{config}\n[limits]\nfailed_auth_per_minute = 3\n"),
    )
    .unwrap();
    let daemon = env.start();
    let guesser = "127.0.0.1";
    for guess in ["a", "b", "c"] {
        let (status, body, _) =
            call_from(&daemon, guesser, "GET", "/v1/faults", Some(guess), &[], "").await;
        assert_eq!((status, &body["code"]), (401, &json!("unauthenticated")));
    }
    // Its fourth try is not looked at, even with a right token.
    for token in ["d", ADMIN] {
        let (status, body, headers) =
            call_from(&daemon, guesser, "GET", "/v1/faults", Some(token), &[], "").await;
        assert_eq!(
            (status, &body["code"]),
            (429, &json!("too_many_failed_attempts")),
            "{body}"
        );
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // Another address is unaffected; so are requests that send no token (nothing to guess).
    let (status, _, _) = call_from(
        &daemon,
        "127.0.0.2",
        "GET",
        "/v1/faults",
        Some(ADMIN),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        call_from(&daemon, guesser, "GET", "/healthz", None, &[], "")
            .await
            .0,
        200
    );
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains("phoenix_auth_failures_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("phoenix_auth_failures_total{outcome=\"throttled\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn who_decides_is_checked_alike_with_tokens_and_keys_are_each_tokens_own() {
    let env = setup();
    let daemon = env.start();
    let (_, fault) = call(
        &daemon,
        "POST",
        "/v1/faults",
        Some(REPORTER),
        r#"{"app":"web","kind":"drift"}"#,
    )
    .await;
    let id = fault["id"].as_str().unwrap().to_owned();
    let mut ready = daemon;
    ready.token = Some(ADMIN.into());
    ready
        .wait_for(&id, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    let daemon = ready;
    // The token decides, but a malformed `by` is refused as it is without tokens.
    let approve = format!("/v1/approvals/{id}/approve");
    for by in [r#""""#.to_string(), format!("\"{}\"", "x".repeat(129))] {
        let body = format!(r#"{{"by":{by}}}"#);
        let (status, refused) = call(&daemon, "POST", &approve, Some(APPROVER), &body).await;
        assert_eq!(
            (status, &refused["code"]),
            (400, &json!("invalid_decision")),
            "{by}: {refused}"
        );
    }

    // One Idempotency-Key, two tokens: two requests, neither refused nor replayed for the other.
    let key = [("idempotency-key", "deploy-7")];
    let web = r#"{"app":"web","kind":"k"}"#;
    let db = r#"{"app":"db","kind":"k"}"#;
    let (status, first, _) = call_from(
        &daemon,
        "127.0.0.1",
        "POST",
        "/v1/faults",
        Some(REPORTER),
        &key,
        web,
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let (status, other, headers) = call_from(
        &daemon,
        "127.0.0.1",
        "POST",
        "/v1/faults",
        Some(ADMIN),
        &key,
        db,
    )
    .await;
    assert_eq!(status, 202, "another token's key is its own: {other}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, again, headers) = call_from(
        &daemon,
        "127.0.0.1",
        "POST",
        "/v1/faults",
        Some(REPORTER),
        &key,
        web,
    )
    .await;
    assert_eq!((status, &again["id"]), (202, &first["id"]));
    assert_eq!(headers["idempotent-replayed"], "true");
}

#[test]
fn a_caller_without_a_token_never_gets_its_body_read() {
    use std::io::{Read, Write};
    let env = setup();
    let config = std::fs::read_to_string(env.path("phoenix.toml")).unwrap();
    std::fs::write(
        env.path("phoenix.toml"),
        format!("body_timeout = \"1s\"\n{config}"),
    )
    .unwrap();
    let daemon = env.start();
    // A body of 60,000 bytes promised, ten sent: refused on the missing token, not held
    // until the body's deadline (which would answer 408).
    let mut stream = std::net::TcpStream::connect(&daemon.addr).unwrap();
    stream
        .write_all(
            b"POST /v1/faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"app\":\"w",
        )
        .unwrap();
    stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut answer = [0; 256];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
