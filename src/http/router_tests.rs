//! The router in-process (`tower::ServiceExt::oneshot`): every route answers its success and a
//! refusal in the API's format, with the real store, sandbox, engine and operations behind it
//! (no listener, no daemon). The real binary is tested from outside in `tests/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::core::policy::{Policy, PolicySet};
use crate::effects::Effects;
use crate::effects::containment::{Containment, OwnGround};
use crate::effects::supervisor::Supervisor;
use crate::engine::operations::Operations;
use crate::engine::{self, EngineParts};
use crate::http::auth::{RequestLimits, Role, TokenConfig, Tokens};
use crate::http::guard::RequestRules;
use crate::http::{AppState, Readiness, router};
use crate::patch::PatchSource;
use crate::sandbox::{Limits, Sandbox};
use crate::sources::intake::Intake;
use crate::store::Store;

const ADMIN: &str = "admin-secret";
const APPROVER: &str = "approver-secret";
const REPORTER: &str = "reporter-secret";

/// A patch that plans `exec record`, and a production policy for app `web` using it: every
/// fault of `web` waits for a person.
const RECORD: &str = r#"(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"record\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 34))) (i32.const 0)))"#;
const POLICY: &str = "environment = \"production\"\n[match]\napp = \"web\"\n[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n";

fn manifest(version: &str) -> String {
    format!("name = \"record\"\nversion = \"{version}\"\nauthor = \"a model\"\nconfidence = 0.9\n")
}

/// The API over a fresh store, with the `record` patch registered and the `web` policy loaded.
struct Api {
    router: axum::Router,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let store = Arc::new(Store::open(&base.join("data/store"), 8 << 20).unwrap());
        let sandbox = Arc::new(Sandbox::new(Limits::default(), base.join("data/modules")).unwrap());
        let patch =
            PatchSource::from_upload(&manifest("1.0.0"), crate::patch::Uploaded::Wat(RECORD))
                .unwrap();
        crate::patch::registry::register_dir_patch(&store, &sandbox, patch)
            .await
            .unwrap();
        let policy = Policy::parse(&base.join("policies/web.toml"), POLICY).unwrap();
        let policies = Arc::new(std::sync::RwLock::new(Arc::new(PolicySet::from_policies(
            vec![policy],
        ))));
        let (supervisor, _exits) =
            Supervisor::start(&[], &base.join("data/programs"), &base).unwrap();
        let (policies_dir, patches_dir, data_dir) = (
            base.join("policies"),
            base.join("patches"),
            base.join("data"),
        );
        let containment = Arc::new(Containment::new(&OwnGround {
            config_file: None,
            policies_dir: &policies_dir,
            patches_dir: &patches_dir,
            data_dir: &data_dir,
            listen: "127.0.0.1:7070".parse().unwrap(),
        }));
        let events = crate::engine::events::Events::default();
        let engine = engine::start(EngineParts {
            store: Arc::clone(&store),
            sandbox: Arc::clone(&sandbox),
            policies,
            effects: Effects::new(base.clone(), supervisor.clone(), containment).unwrap(),
            http: crate::effects::http_client().unwrap(),
            work_dir: base.clone(),
            workers: 4,
            supervisor: supervisor.clone(),
            backup_dir: base.join("data/backups"),
            global_breaker: Default::default(),
            rate_limit: Default::default(),
            events: events.clone(),
            fleet: None,
        })
        .unwrap();
        let token = |name: &str, secret: &str, role, apps: &[&str]| TokenConfig {
            name: name.into(),
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            role,
            apps: apps.iter().map(|a| a.to_string()).collect(),
            source: None,
        };
        let tokens = Tokens::with_limits(
            &[
                token("root", ADMIN, Role::Admin, &[]),
                token("alice", APPROVER, Role::Approver, &[]),
                token("ci", REPORTER, Role::Reporter, &["web"]),
            ],
            RequestLimits::default(),
        )
        .unwrap();
        let state = AppState {
            operations: Operations::new(
                Arc::clone(&store),
                sandbox,
                events.clone(),
                engine.clone(),
            ),
            intake: Intake::new(Arc::clone(&store), engine),
            store: Arc::clone(&store),
            readiness: Arc::new(std::sync::RwLock::new(Readiness::default())),
            alertmanager: Arc::new(Default::default()),
            supervisor,
            events,
            fleet: None,
        };
        let rules = RequestRules::new(&[], false, 64 << 10, Duration::from_secs(10));
        Api {
            router: router(state, rules, Arc::new(tokens)),
            store,
            _dir: dir,
        }
    }

    /// Sends `method path` as `token` (None: no token) with a JSON `body`; returns the status
    /// and the answer (JSON, else text).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:7070");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None if method == "POST" => {
                request = request.header("content-type", "application/json");
                Body::empty()
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), Some(body)).await
    }

    /// Reports a fault of `web` (labels `n`) and waits until the engine asks for approval.
    async fn waiting_fault(&self, n: u32) -> String {
        let report = json!({"app": "web", "kind": "drift", "labels": {"n": n.to_string()}});
        let (status, fault) = self.post("/v1/faults", REPORTER, report).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{fault}");
        let id = fault["id"].as_str().unwrap().to_owned();
        let started = Instant::now();
        loop {
            let state = self.store.fault(&id).unwrap().unwrap().state;
            if state.name() == "awaiting_approval" {
                return id;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{state:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Api {
    /// Waits until the engine has moved fault `id` on from `awaiting_approval`.
    async fn wait_past_approval(&self, id: &str) {
        let started = Instant::now();
        while self.store.fault(id).unwrap().unwrap().state.name() == "awaiting_approval" {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never moved on"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// `answer` is a refusal with `status` and `code` in the API's format.
fn refused(answer: (StatusCode, Value), status: u16, code: &str) {
    assert_eq!(
        (answer.0.as_u16(), answer.1["code"].as_str()),
        (status, Some(code)),
        "{}",
        answer.1
    );
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn faults_are_reported_listed_and_shown_and_bad_ones_refused() {
    let api = Api::new().await;
    let (status, fault) = api
        .post(
            "/v1/faults",
            REPORTER,
            json!({"app": "web", "kind": "down"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{fault}");
    let id = fault["id"].as_str().unwrap();
    refused(
        api.post("/v1/faults", REPORTER, json!({"app": "db", "kind": "down"}))
            .await,
        403,
        "forbidden",
    );
    refused(
        api.post(
            "/v1/faults",
            ADMIN,
            json!({"app": "db", "kind": "exited", "labels": {"supervisor": "phoenix"}}),
        )
        .await,
        400,
        "invalid_report",
    );
    refused(
        api.call("POST", "/v1/faults", Some(ADMIN), None).await,
        400,
        "invalid_json",
    );

    let (status, page) = api.get("/v1/faults?app=web", REPORTER).await;
    assert_eq!(
        (status, page["faults"][0]["id"].as_str()),
        (StatusCode::OK, Some(id))
    );
    refused(
        api.get("/v1/faults?limit=0", ADMIN).await,
        400,
        "invalid_query",
    );
    refused(
        api.get("/v1/faults?colour=red", ADMIN).await,
        400,
        "invalid_query",
    );

    let (status, shown) = api.get(&format!("/v1/faults/{id}"), REPORTER).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown["history"].as_array().is_some_and(|h| !h.is_empty()));
    refused(
        api.get("/v1/faults/01NOSUCH", ADMIN).await,
        404,
        "not_found",
    );

    let alert = json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
        "labels": {"app": "web", "alertname": "Down"}, "annotations": {}, "fingerprint": "f1"}]});
    let (status, receipt) = api.post("/v1/alertmanager", REPORTER, alert.clone()).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["firing"].as_array().map(Vec::len), Some(1));
    let mut old = alert;
    old["version"] = json!("3");
    refused(
        api.post("/v1/alertmanager", REPORTER, old).await,
        400,
        "unsupported_version",
    );
}

#[tokio::test]
async fn an_approval_request_is_shown_and_decided_once_by_someone_allowed() {
    let api = Api::new().await;
    let id = api.waiting_fault(1).await;
    let (status, queue) = api.get("/v1/approvals", APPROVER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        queue["approvals"][0]["fault_id"].as_str(),
        Some(id.as_str())
    );
    refused(api.get("/v1/approvals", REPORTER).await, 403, "forbidden");

    let (status, request) = api.get(&format!("/v1/approvals/{id}"), APPROVER).await;
    assert_eq!(status, StatusCode::OK, "{request}");
    assert_eq!(request["approval"]["plan"][0]["command"], "record");
    assert_eq!(
        request["shadow"],
        Value::Null,
        "no other version to compare"
    );

    let approve = format!("/v1/approvals/{id}/approve");
    refused(
        api.post(&approve, APPROVER, json!({"by": ""})).await,
        400,
        "invalid_decision",
    );
    refused(
        api.post(&approve, REPORTER, json!({"by": "ci"})).await,
        403,
        "forbidden",
    );
    let (status, decided) = api.post(&approve, APPROVER, json!({"by": "someone"})).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["approval"]["decisions"][0]["by"], "alice");
    refused(
        api.post(&approve, ADMIN, json!({"by": "root"})).await,
        409,
        "already_decided",
    );
    api.wait_past_approval(&id).await;
    refused(
        api.get(&format!("/v1/approvals/{id}"), APPROVER).await,
        404,
        "no_open_request",
    );

    let other = api.waiting_fault(2).await;
    let reject = format!("/v1/approvals/{other}/reject");
    let (status, _) = api
        .post(&reject, APPROVER, json!({"by": "x", "comment": "no"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    refused(
        api.post(&reject, ADMIN, json!({"by": "y"})).await,
        409,
        "already_decided",
    );
    refused(
        api.post("/v1/approvals/01NOSUCH/reject", ADMIN, json!({"by": "y"}))
            .await,
        404,
        "not_found",
    );
}

/// The hash of the registered version `version` of patch `record`.
async fn uploaded_hash(api: &Api, version: &str) -> String {
    let (_, versions) = api.get("/v1/patches/record", APPROVER).await;
    let found = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("no version {version}: {versions}"));
    found["hash"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn patches_are_uploaded_listed_shown_rolled_back_and_shadowed() {
    let api = Api::new().await;
    let upload = json!({"manifest": manifest("2.0.0"), "wat": RECORD.replace("34)))", "34))) (drop (i32.const 0))")});
    let (status, uploaded) = api.post("/v1/patches", ADMIN, upload).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(
        (
            &uploaded["patch"]["author"],
            &uploaded["patch"]["claimed_author"]
        ),
        (&json!("root"), &json!("a model"))
    );
    refused(
        api.post(
            "/v1/patches",
            ADMIN,
            json!({"manifest": "name = \"x\"", "wat": "(module)"}),
        )
        .await,
        400,
        "invalid_patch",
    );
    refused(
        api.post("/v1/patches", APPROVER, json!({"manifest": "", "wat": ""}))
            .await,
        403,
        "forbidden",
    );
    // An SDK-built module arrives as its binary, in base64; the module is given exactly once.
    let binary = {
        use base64::Engine as _;
        let wasm = crate::sandbox::wat_to_wasm(RECORD.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(wasm)
    };
    let upload = json!({"manifest": manifest("3.0.0"), "wasm_base64": binary});
    let (status, uploaded) = api.post("/v1/patches", ADMIN, upload).await;
    assert_eq!(
        (status, &uploaded["usable"]),
        (StatusCode::CREATED, &json!(true)),
        "{uploaded}"
    );
    for body in [
        json!({"manifest": manifest("4.0.0")}),
        json!({"manifest": manifest("4.0.0"), "wat": RECORD, "wasm_base64": binary}),
        json!({"manifest": manifest("4.0.0"), "wasm_base64": "not base64!"}),
    ] {
        refused(
            api.post("/v1/patches", ADMIN, body).await,
            400,
            "invalid_request",
        );
    }
    let garbage = json!({"manifest": manifest("4.0.0"), "wasm_base64": "AGFzbQ=="});
    let (status, uploaded) = api.post("/v1/patches", ADMIN, garbage).await;
    assert_eq!(
        (status, &uploaded["usable"]),
        (StatusCode::CREATED, &json!(false)),
        "a module that does not compile is recorded, never used: {uploaded}"
    );
    // The latest usable upload (3.0.0) stays the active version.
    let (_, list) = api.get("/v1/patches", APPROVER).await;
    assert_eq!(list["patches"][0]["active"]["version"], "3.0.0", "{list}");
    let rollback = json!({"to": uploaded_hash(&api, "2.0.0").await, "by": "bob"});
    let (status, _) = api
        .post("/v1/patches/record/rollback", ADMIN, rollback)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, list) = api.get("/v1/patches", APPROVER).await;
    assert_eq!(
        (status, &list["patches"][0]["active"]["version"]),
        (StatusCode::OK, &json!("2.0.0"))
    );
    let (status, versions) = api.get("/v1/patches/record", APPROVER).await;
    assert_eq!(status, StatusCode::OK);
    let v1 = versions["versions"][0]["hash"].as_str().unwrap().to_owned();
    refused(
        api.get("/v1/patches/nothing", APPROVER).await,
        404,
        "not_found",
    );

    let rollback = json!({"to": v1, "by": "bob", "reason": "v2 is new"});
    let (status, rolled) = api
        .post("/v1/patches/record/rollback", ADMIN, rollback)
        .await;
    assert_eq!(
        (status, &rolled["patch"]["version"]),
        (StatusCode::OK, &json!("1.0.0"))
    );
    refused(
        api.post("/v1/patches/record/rollback", ADMIN, json!({"to": "beef"}))
            .await,
        404,
        "not_found",
    );
    refused(
        api.post(
            "/v1/patches/record/rollback",
            ADMIN,
            json!({"to": v1, "by": " "}),
        )
        .await,
        400,
        "invalid_request",
    );

    let (status, shadow) = api
        .post("/v1/patches/record/shadow", ADMIN, json!({"hash": v1}))
        .await;
    assert_eq!(
        (status, &shadow["version"]),
        (StatusCode::OK, &json!("1.0.0")),
        "{shadow}"
    );
    refused(
        api.post("/v1/patches/record/shadow", ADMIN, json!({"hash": "beef"}))
            .await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn breakers_are_listed_and_operated_by_hand() {
    let api = Api::new().await;
    let (status, list) = api.get("/v1/breakers", APPROVER).await;
    assert_eq!(
        (status, &list["breakers"][0]["name"]),
        (StatusCode::OK, &json!("global"))
    );
    refused(api.get("/v1/breakers", REPORTER).await, 403, "forbidden");
    let operator = json!({"by": "bob", "reason": "maintenance"});
    let (status, tripped) = api
        .post("/v1/breakers/global/trip", ADMIN, operator.clone())
        .await;
    assert_eq!(
        (status, &tripped["breaker"]["position"]),
        (StatusCode::OK, &json!("open"))
    );
    let (status, reset) = api
        .post("/v1/breakers/policy:web/reset", ADMIN, operator.clone())
        .await;
    assert_eq!(
        (status, &reset["breaker"]["position"]),
        (StatusCode::OK, &json!("closed"))
    );
    refused(
        api.post("/v1/breakers/nonsense/reset", ADMIN, operator)
            .await,
        404,
        "not_found",
    );
    refused(
        api.post(
            "/v1/breakers/global/trip",
            ADMIN,
            json!({"by": "", "reason": "x"}),
        )
        .await,
        400,
        "invalid_request",
    );
    refused(
        api.post(
            "/v1/breakers/global/trip",
            APPROVER,
            json!({"by": "a", "reason": "x"}),
        )
        .await,
        403,
        "forbidden",
    );
}

#[tokio::test]
async fn the_operators_routes_answer_whom_they_should() {
    let api = Api::new().await;
    let (status, me) = api.get("/v1/whoami", REPORTER).await;
    assert_eq!(
        (status, &me["name"], &me["role"]),
        (StatusCode::OK, &json!("ci"), &json!("reporter"))
    );
    refused(
        api.call("GET", "/v1/whoami", None, None).await,
        401,
        "unauthenticated",
    );
    refused(api.get("/v1/whoami", "guess").await, 401, "unauthenticated");

    let (status, programs) = api.get("/v1/programs", APPROVER).await;
    assert_eq!(
        (status, &programs["programs"]),
        (StatusCode::OK, &json!([]))
    );
    refused(api.get("/v1/programs", REPORTER).await, 403, "forbidden");

    let (status, audit) = api.get("/v1/audit", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(audit["entries"].is_array());
    refused(api.get("/v1/audit", APPROVER).await, 403, "forbidden");
    refused(
        api.get("/v1/audit?limit=5000", ADMIN).await,
        400,
        "invalid_query",
    );

    let (status, backup) = api.get("/v1/backup", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        backup.as_str().is_some_and(|b| b.lines().count() > 1),
        "{backup}"
    );
    refused(api.get("/v1/backup", APPROVER).await, 403, "forbidden");

    refused(
        api.call("GET", "/v1/events", None, None).await,
        401,
        "unauthenticated",
    );

    for public in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let (status, _) = api.call("GET", public, None, None).await;
        assert_eq!(status, StatusCode::OK, "{public}");
    }
    refused(
        api.call("POST", "/v1/openapi.json", None, Some(json!({})))
            .await,
        405,
        "method_not_allowed",
    );
    refused(
        api.call("GET", "/v1/nothing", None, None).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn the_event_stream_opens_for_a_token() {
    let api = Api::new().await;
    let request = Request::get("/v1/events")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {APPROVER}"))
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
}
