//! systemd integration: `Type=notify` readiness (READY=1 only once the API accepts
//! connections), the watchdog (WATCHDOG=1 while the engine answers), and STOPPING=1.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{DEADLINE, Env};

/// Receives datagrams until one contains `needle`; returns it.
fn receive_until(socket: &UnixDatagram, needle: &str) -> String {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        assert!(started.elapsed() < DEADLINE, "no `{needle}` from phoenix");
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if message.contains(needle) {
                return message;
            }
        }
    }
}

#[test]
fn readiness_watchdog_and_stopping_reach_the_notify_socket() {
    let env = Env::new();
    let socket_path = env.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify_socket = socket_path.display().to_string();
    let mut daemon = env.start_with_env(&[
        ("NOTIFY_SOCKET", &notify_socket),
        ("WATCHDOG_USEC", "200000"),
    ]);

    let ready = receive_until(&socket, "READY=1");
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    // READY=1 is sent after the listener is bound: the port accepts connections now.
    let addr = std::fs::read_to_string(env.path("data/phoenix.addr")).unwrap();
    assert!(
        std::net::TcpStream::connect(addr.trim()).is_ok(),
        "READY=1 before the port accepted connections"
    );

    receive_until(&socket, "WATCHDOG=1");
    assert_eq!(daemon.terminate(), Some(0));
    receive_until(&socket, "STOPPING=1");
}

/// The words of a unit's `ExecStart=` as systemd runs them: double quotes grouped and removed,
/// the specifiers `%i` and `%d` and `${VAR}` expanded (each `${VAR}` stays within its word).
fn exec_start(unit: &str, instance: &str, credentials: &str, env: &[(&str, &str)]) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut words = Vec::new();
    let (mut word, mut quoted, mut started) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            _ => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| {
            let mut w = w.replace("%i", instance).replace("%d", credentials);
            for (name, value) in env {
                w = w.replace(&format!("${{{name}}}"), value);
            }
            assert!(!w.contains("${") && !w.contains('%'), "unexpanded: {w}");
            w
        })
        .collect()
}

/// `OnFailure=phoenix-report@%n.service`, end to end but for systemd itself: the template
/// unit's own command line, expanded as systemd would for a failed `nginx.service` (with its
/// `$MONITOR_*`), reports a `systemd` fault with the reporter token from its credential; the
/// shipped policy restarts the unit through its declared `systemctl restart` and verifies it.
/// The same report made with an ordinary reporter token, or of a unit the policy does not
/// list, restarts nothing.
#[tokio::test]
async fn a_failed_unit_reported_by_the_template_unit_is_restarted_by_the_shipped_policy() {
    let env = Env::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let hash = |secret: &str| blake3::hash(secret.as_bytes()).to_hex().to_string();
    env.write_config(&format!(
        "policies_dir = {:?}\npatches_dir = {:?}\n\
         [[token]]\nname = \"systemd\"\nblake3 = \"{}\"\nrole = \"reporter\"\napps = [\"*\"]\nsource = \"systemd\"\n\
         [[token]]\nname = \"app\"\nblake3 = \"{}\"\nrole = \"reporter\"\napps = [\"*\"]\n\
         [[token]]\nname = \"root\"\nblake3 = \"{}\"\nrole = \"admin\"\n",
        root.join("policies"),
        root.join("patches"),
        hash("systemd-secret"),
        hash("app-secret"),
        hash("root-secret"),
    ));
    // A stand-in `systemctl` that records what it is asked.
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let ledger = env.path("systemctl.log");
    std::fs::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >> {}\n", ledger.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut daemon = env.start_with_env(&[("PATH", &path)]);
    daemon.token = Some("root-secret".into());

    let unit = std::fs::read_to_string(root.join("systemd/phoenix-report@.service")).unwrap();
    let credentials = env.path("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let report = |failed: &str, token: &str| {
        std::fs::write(credentials.join("phoenix-token"), format!("{token}\n")).unwrap();
        let monitor = [
            ("MONITOR_SERVICE_RESULT", "exit-code"),
            ("MONITOR_EXIT_CODE", "exited"),
            ("MONITOR_EXIT_STATUS", "1"),
            ("MONITOR_UNIT", failed),
        ];
        // As systemd runs the instance `OnFailure=phoenix-report@%n.service` starts.
        let argv = exec_start(&unit, failed, &credentials.display().to_string(), &monitor);
        assert_eq!(argv[0], "/usr/bin/phoenix");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(&argv[1..])
            .env("PHOENIX_ADDR", daemon.url(""))
            .env_remove("PHOENIX_TOKEN")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, out, err) = report("nginx.service", "systemd-secret");
    assert_eq!(code, Some(0), "{out}{err}");
    let id = out.split_whitespace().next().unwrap().to_owned();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "healed", "{fault}\n{}", daemon.log());
    assert_eq!(fault["source"], "systemd");
    assert_eq!(fault["app"], "nginx.service");
    assert_eq!(fault["kind"], "unit_failed");
    assert_eq!(
        (
            &fault["labels"]["unit_result"],
            &fault["labels"]["unit_exit_code"],
            &fault["labels"]["unit_exit_status"]
        ),
        (&"exit-code".into(), &"exited".into(), &"1".into())
    );
    let asked = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(
        asked,
        "restart --no-ask-password -- nginx.service\nis-active --quiet -- nginx.service\n"
    );

    // An application's token cannot make a unit failure: its report is from `api`, so the
    // policy does not match, and the systemd labels are refused outright.
    let (code, _, err) = report("nginx.service", "app-secret");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("label `unit_result` is set only by"), "{err}");
    let response = reqwest::Client::new()
        .post(daemon.url("/v1/faults"))
        .bearer_auth("app-secret")
        .json(&serde_json::json!({"app": "nginx.service", "kind": "unit_failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let api_fault: serde_json::Value = response.json().await.unwrap();
    assert_eq!(api_fault["source"], "api");
    let closed = daemon
        .wait_terminal(api_fault["id"].as_str().unwrap())
        .await;
    assert_eq!(
        (&closed["state"], &closed["reason"]),
        (&"failed".into(), &"no_policy".into()),
        "{closed}"
    );

    // A unit the policy does not list (a template instance: its name has an `@`): the plan is
    // refused, nothing runs.
    let (code, out, err) = report("getty@tty1.service", "systemd-secret");
    assert_eq!(code, Some(0), "{out}{err}");
    let id = out.split_whitespace().next().unwrap().to_owned();
    let fault = daemon.wait_terminal(&id).await;
    assert_eq!(fault["state"], "failed", "{fault}");
    assert_eq!(
        std::fs::read_to_string(&ledger).unwrap(),
        asked,
        "ran for a unit not listed"
    );
}
