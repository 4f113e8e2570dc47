//! Test harness: a temp dir with a config, policies and patches; the real `phoenix` binary
//! spawned on 127.0.0.1 with an ephemeral port; an HTTP client; bounded polling helpers.
#![allow(dead_code)] // Each test file uses a different subset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: CI machines are slow and noisy. Nothing waits this long when things work.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// An empty setup: no policies, no patches.
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(env.path("policies")).unwrap();
        std::fs::create_dir_all(env.path("patches")).unwrap();
        env.write_config("");
        env
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `phoenix.toml`: an ephemeral port, data under `data/`, plus `extra` lines.
    pub fn write_config(&self, extra: &str) {
        let text = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n");
        std::fs::write(self.path("phoenix.toml"), text).unwrap();
    }

    /// Uses the repository's shipped policies/ and patches/ (the demo).
    pub fn shipped() -> Env {
        let env = Env::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        env.write_config(&format!(
            "policies_dir = {:?}\npatches_dir = {:?}",
            root.join("policies"),
            root.join("patches")
        ));
        env
    }

    pub fn policy(&self, name: &str, text: &str) {
        std::fs::write(self.path(&format!("policies/{name}.toml")), text).unwrap();
    }

    /// A patch directory with `wat` as its module and `tests` as extra manifest text.
    pub fn patch(&self, name: &str, wat: &str, tests: &str) {
        let dir = self.path(&format!("patches/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest =
            format!("name = \"{name}\"\nversion = \"1.0.0\"\nconfidence = 0.9\n{tests}\n");
        std::fs::write(dir.join("patch.toml"), manifest).unwrap();
        std::fs::write(dir.join("patch.wat"), wat).unwrap();
    }

    /// A policy for app `app` using patch `patch`, with `commands` (TOML tables) and a verify
    /// command.
    pub fn simple_policy(&self, app: &str, patch: &str, commands: &str, verify: &str) {
        self.policy(
            app,
            &format!(
                "[match]\napp = \"{app}\"\n\n[patch]\nname = \"{patch}\"\n\n{commands}\n\n[verify]\ncommand = {verify}\nwithin = \"5s\"\ninterval = \"100ms\"\n"
            ),
        );
    }

    /// A `record` patch (plans `exec record`, a no-op `true`) and a production policy for app
    /// `web` using it: every fault of `web` waits for approval.
    pub fn production_web(&self) {
        self.patch(
            "record",
            &planner(&[r#"{"kind":"exec","command":"record"}"#]),
            "",
        );
        self.policy(
            "web",
            "environment = \"production\"\n[match]\napp = \"web\"\n[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n",
        );
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(self.dir.path(), &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(&self, vars: &[(&str, &str)]) -> Daemon {
        Daemon::start(self.dir.path(), vars)
    }

    /// Runs `phoenix ARGS` to completion; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run phoenix");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// A daemon whose one patch plans the command `record` (`true`), with two policies: `web`
/// heals by itself, `prod` is production (its plans wait for a person). `extra_config` goes
/// into the config.
pub fn recording_env(extra_config: &str) -> Env {
    let env = Env::new();
    env.write_config(extra_config);
    env.patch(
        "record",
        &planner(&[r#"{"kind":"exec","command":"record"}"#]),
        "",
    );
    let common = "[patch]\nname = \"record\"\n[capabilities.commands.record]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n";
    env.policy(
        "prod",
        &format!("environment = \"production\"\n[match]\napp = \"prod\"\n{common}"),
    );
    env.policy("web", &format!("[match]\napp = \"web\"\n{common}"));
    env
}

/// WAT for a patch that plans exactly `actions` (JSON texts) and returns `status`.
pub fn planner(actions: &[&str]) -> String {
    let mut data = String::new();
    let mut calls = String::new();
    let mut offset = 0;
    for action in actions {
        let escaped = action.replace('\\', "\\\\").replace('"', "\\\"");
        data.push_str(&format!("(data (i32.const {offset}) \"{escaped}\")\n"));
        calls.push_str(&format!(
            "(drop (call $action (i32.const {offset}) (i32.const {})))\n",
            action.len()
        ));
        offset += action.len() + 8;
    }
    module(&data, &calls)
}

/// A module with the usual imports, `data` segments and `body` as heal's body before `i32.const 0`.
pub fn module(data: &str, body: &str) -> String {
    format!(
        r#"(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  (func (export "heal") (result i32)
    {body}
    (i32.const 0)))"#
    )
}

pub struct Daemon {
    child: Child,
    /// Sent as a bearer token by the helpers, when the daemon has authentication on.
    pub token: Option<String>,
    pub addr: String,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Daemon {
    pub fn start(dir: &Path, vars: &[(&str, &str)]) -> Daemon {
        let addr_file = dir.join("data/phoenix.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("phoenix.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(["serve", "--config"])
            .arg(dir.join("phoenix.toml"))
            .current_dir(dir)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn phoenix");
        let mut daemon = Daemon {
            child,
            token: None,
            addr: String::new(),
            dir: dir.to_owned(),
            client: phoenix::effects::http_client().unwrap(),
        };
        let started = Instant::now();
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                daemon.addr = addr;
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "phoenix exited with {status} before serving:\n{}\nprocesses holding its store: {:?}",
                    daemon.log(),
                    holders_of(&dir.join("data/store/db"))
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "phoenix did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("phoenix.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON (unless `headers` name another `content-type`) with optional
    /// headers; returns status, parsed JSON body, and headers.
    pub async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.client.post(self.url(path)).body(body.to_owned());
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON body for {status}: {text}"));
        (status, json, headers)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body for {status}: {text}")),
        )
    }

    /// Reports `fault` (JSON) and returns the accepted fault.
    pub async fn report(&self, fault: &str) -> Value {
        let (status, body, _) = self.post("/v1/faults", fault, &[]).await;
        assert_eq!(status, 202, "{body}");
        body
    }

    /// Reports `fault` and returns its id.
    pub async fn report_id(&self, fault: &str) -> String {
        let accepted = self.report(fault).await;
        accepted["id"].as_str().expect("an id").to_owned()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let client = phoenix::effects::http_client().unwrap();
        let response = client.get(self.url("/metrics")).send().await.expect("GET");
        response.text().await.unwrap()
    }

    pub async fn fault(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/faults/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// GETs `path` until `check(body)` holds; at the deadline, panics with `what`, the last
    /// body and the daemon's log.
    pub async fn get_until(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (_, body) = self.get(path).await;
            if check(&body) {
                return body;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{path} never showed {what}: {body:#}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls fault `id` until `check(fault)` holds.
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.get_until(&format!("/v1/faults/{id}"), what, check)
            .await
    }

    /// Waits for a terminal state: `healed`, `failed` or `resolved`.
    pub async fn wait_terminal(&self, id: &str) -> Value {
        let terminal = ["healed", "failed", "resolved"];
        self.wait_for(id, "terminal", |f| {
            terminal.contains(&f["state"].as_str().unwrap_or_default())
        })
        .await
    }

    /// Approves the plan fault `id` waits for, as `by`; fails unless the daemon says 200.
    pub async fn approve(&self, id: &str, by: &str) {
        let body = serde_json::json!({ "by": by }).to_string();
        let (status, answer, _) = self
            .post(&format!("/v1/approvals/{id}/approve"), &body, &[])
            .await;
        assert_eq!(status, 200, "approving {id}: {answer}");
    }

    /// Polls the faults of `app` until there are at least `count`; returns them, oldest first.
    pub async fn faults_of(&self, app: &str, count: usize) -> Vec<Value> {
        let what = format!("{count} faults");
        let page = self
            .get_until(&format!("/v1/faults?app={app}"), &what, |page| {
                page["faults"].as_array().is_some_and(|f| f.len() >= count)
            })
            .await;
        page["faults"].as_array().cloned().unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (e.g. "HUP").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Waits (bounded) for phoenix to exit on its own; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "phoenix did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > DEADLINE {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Supervised programs run in their own process groups and outlive a SIGKILLed phoenix
        // (its next start would stop them): stop them here, or each test run leaks them.
        stop_recorded_programs(&self.dir.join("data/programs"));
    }
}

/// Kills the process group of each program phoenix recorded in `dir` (`NAME.json`: its pid and
/// kernel start time), if that same process still runs.
fn stop_recorded_programs(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(recorded) = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        else {
            continue;
        };
        let (Some(pid), Some(started)) =
            (recorded["pid"].as_u64(), recorded["start_time"].as_u64())
        else {
            continue;
        };
        if phoenix::effects::supervisor::process_start_time(pid as u32) == Some(started) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// Processes that have `path` open (to explain a store lock that was not released).
pub fn holders_of(path: &Path) -> Vec<String> {
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let fds = entry.path().join("fd");
        let holds = std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path));
        if holds {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            holders.push(format!(
                "{}: {} [{}]",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
                stat.split(") ")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    holders
}

/// A loopback HTTP server that answers 200 to everything and records each request line and body.
pub async fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    record_requests(false).await
}

/// Like [`recording_server`], but records each request whole: line, headers, blank line, body.
pub async fn recording_server_whole() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    record_requests(true).await
}

async fn record_requests(whole: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buffer = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    data.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0usize);
                        if data.len() >= head_end + 4 + length || n == 0 {
                            let line = text.lines().next().unwrap_or_default().to_owned();
                            let entry = if whole {
                                text.clone()
                            } else {
                                format!("{line} {}", &text[head_end + 4..])
                            };
                            record.lock().unwrap().push(entry);
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (base, seen)
}

/// Whether `program` runs here (`program --version`). In CI (`CI` set) it must: its absence
/// fails the test; elsewhere the test is skipped with a message saying how to install it.
pub fn installed(program: &str, install: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {program} ({install})"
        );
        eprintln!("SKIPPED: no {program} ({install})");
    }
    found
}

/// A port that was free a moment ago (for programs that need a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One text field (`"at"`, `"detail"`, …) of every history entry of `fault`, in order.
pub fn history_field<'a>(fault: &'a Value, field: &str) -> Vec<&'a str> {
    fault["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|entry| entry[field].as_str().unwrap_or_default())
        .collect()
}

/// The states a fault's history went through, in order, without repeats.
pub fn states(fault: &Value) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for entry in fault["history"].as_array().expect("history") {
        let state = entry["state"].as_str().unwrap().to_owned();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
    }
    seen
}

/// Keeps `contents` as a test artifact in `target/test-artifacts/NAME` (CI prints or keeps them);
/// returns its path.
pub fn artifact(name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
