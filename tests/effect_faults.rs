//! Faults in what phoenix depends on: a command that hangs, an HTTP target that never answers, a
//! webhook receiver that is down or hangs, a data dir whose disk is full. phoenix times out,
//! records why, keeps serving, and loses nothing it acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, Env, planner};

/// A listener that accepts connections and never answers (holds them open).
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

fn history(fault: &serde_json::Value) -> String {
    fault["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["detail"].as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A `web` policy whose command records its environment, so the test can see what leaked.
fn healthy_web(env: &Env) {
    env.patch("ok", &planner(&[r#"{"kind":"exec","command":"ok"}"#]), "");
    env.simple_policy(
        "web",
        "ok",
        "[capabilities.commands.ok]\nargv = [\"sh\", \"-c\", \"env > env-$PHOENIX_FAULT_ID.txt\"]",
        r#"["true"]"#,
    );
}

#[tokio::test]
async fn a_hanging_command_is_killed_with_its_children_while_healing_goes_on() {
    let env = Env::new();
    healthy_web(&env);
    env.patch(
        "hang",
        &planner(&[r#"{"kind":"exec","command":"hang"}"#]),
        "",
    );
    env.simple_policy(
        "stuck",
        "hang",
        "[capabilities.commands.hang]\nargv = [\"sh\", \"-c\", \"sleep 300 & echo $! > grandchild.pid; wait\"]\ntimeout = \"500ms\"",
        r#"["true"]"#,
    );
    let daemon = env.start_with_env(&[("PHOENIX_TEST_SECRET", "must-not-leak")]);
    let stuck = daemon.report_id(r#"{"app":"stuck","kind":"down"}"#).await;
    let web = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;

    let fault = daemon.wait_terminal(&stuck).await;
    assert_eq!(fault["reason"], "apply_failed", "{fault:#}");
    assert!(history(&fault).contains("timed out"), "{}", history(&fault));
    let fault = daemon.wait_terminal(&web).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");

    // The shell's child went with it: the whole process group was killed.
    let pid = std::fs::read_to_string(env.path("grandchild.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let started = Instant::now();
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            started.elapsed() < DEADLINE,
            "the command's child still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Commands get the fault, not phoenix's environment.
    let seen = std::fs::read_to_string(env.path(&format!("env-{web}.txt"))).unwrap();
    assert!(seen.contains(&format!("PHOENIX_FAULT_ID={web}")), "{seen}");
    assert!(seen.contains("PHOENIX_ATTEMPT=1"), "{seen}");
    assert!(
        !seen.contains("must-not-leak"),
        "phoenix's environment leaked: {seen}"
    );
}

#[tokio::test]
async fn an_http_target_or_webhook_that_never_answers_times_out_and_blocks_nothing() {
    let silent = black_hole().await;
    let env = Env::new();
    env.write_config(&format!(
        "[[webhook]]\nurl = \"http://{silent}/hook\"\n[[webhook]]\nurl = \"http://127.0.0.1:{}/down\"",
        common::free_port()
    ));
    healthy_web(&env);
    env.patch(
        "call",
        &planner(&[&format!(
            r#"{{"kind":"http","method":"POST","url":"http://{silent}/admin/restart"}}"#
        )]),
        "",
    );
    env.policy(
        "api",
        &format!(
            "[match]\napp = \"api\"\n\n[patch]\nname = \"call\"\n\n[capabilities]\nhttp_prefixes = [\"http://{silent}/admin/\"]\nhttp_timeout = \"500ms\"\n\n[verify]\ncommand = [\"true\"]\nwithin = \"5s\"\n"
        ),
    );
    let daemon = env.start();
    let api = daemon.report_id(r#"{"app":"api","kind":"down"}"#).await;
    let web = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;

    let fault = daemon.wait_terminal(&api).await;
    assert_eq!(fault["reason"], "apply_failed", "{fault:#}");
    assert!(
        history(&fault).to_lowercase().contains("timed out"),
        "{}",
        history(&fault)
    );
    // Both webhooks are unusable (one hangs, one refuses): healing is not held up.
    let fault = daemon.wait_terminal(&web).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200);
}

/// A server under the allowed prefix that answers every request with a redirect to `location`.
async fn redirector(status: &'static str, location: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let answer = format!(
                "HTTP/1.1 {status}\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test]
async fn an_http_target_cannot_redirect_an_action_outside_its_prefix() {
    // The allowed target answers 307 (method and body kept) or 302 pointing elsewhere: the
    // request must not follow it there, whatever the target says.
    let (outside, seen) = common::recording_server().await;
    let keep = redirector("307 Temporary Redirect", format!("{outside}/admin/delete")).await;
    let change = redirector("302 Found", format!("{outside}/admin/delete")).await;
    let env = Env::new();
    for (app, target) in [("keep", &keep), ("change", &change)] {
        env.patch(
            app,
            &planner(&[&format!(
                r#"{{"kind":"http","method":"POST","url":"http://{target}/allowed/x","body":"secret"}}"#
            )]),
            "",
        );
        env.policy(
            app,
            &format!(
                "[match]\napp = \"{app}\"\n\n[patch]\nname = \"{app}\"\n\n[capabilities]\nhttp_prefixes = [\"http://{target}/allowed/\"]\n\n[verify]\ncommand = [\"true\"]\nwithin = \"5s\"\n"
            ),
        );
    }
    let daemon = env.start();
    for app in ["keep", "change"] {
        let id = daemon
            .report_id(&format!(r#"{{"app":"{app}","kind":"down"}}"#))
            .await;
        let fault = daemon.wait_terminal(&id).await;
        assert_eq!(fault["reason"], "apply_failed", "{fault:#}");
        assert!(history(&fault).contains("redirect"), "{}", history(&fault));
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a redirect took an action outside its prefix: {:?}",
        seen.lock().unwrap()
    );
}

/// A small tmpfs mounted on the data dir (needs root; CI runs as root). Unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).unwrap();
        let options = format!("size={size},mode=0777");
        let mounted = as_root(&["mount", "-t", "tmpfs", "-o", &options, "tmpfs"], &path);
        mounted.then_some(SmallDisk(path))
    }
}

/// Runs `argv path` as root: directly, or through password-less sudo.
fn as_root(argv: &[&str], path: &std::path::Path) -> bool {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    run(argv[0], &argv[1..]) || run("sudo", &[&["-n"], argv].concat())
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        as_root(&["umount", "-l"], &self.0);
    }
}

/// Fills the file system holding `path` with a file of zeroes, leaving `leave` bytes free.
fn fill(path: &std::path::Path, leave: u64) {
    use std::io::Write;
    let free = |p: &std::path::Path| {
        let fs = rustix::fs::statvfs(p.parent().unwrap()).unwrap();
        fs.f_bavail * fs.f_frsize
    };
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while free(path) > leave + chunk.len() as u64 && file.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 4096];
    while free(path) > leave && file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

fn db_report(n: usize) -> String {
    format!(r#"{{"app":"db","kind":"down","labels":{{"n":"{n}"}}}}"#)
}

/// Reports until one is refused; returns the ids acknowledged and the refusal.
async fn report_until_refused(
    daemon: &common::Daemon,
    from: usize,
    acked: &mut Vec<String>,
) -> (u16, serde_json::Value) {
    for n in from..from + 5000 {
        let (status, answer, _) = daemon.post("/v1/faults", &db_report(n), &[]).await;
        if status >= 400 {
            return (status, answer);
        }
        acked.push(answer["id"].as_str().unwrap().to_owned());
    }
    panic!("a full disk never refused a report");
}

#[tokio::test]
async fn a_nearly_full_disk_refuses_reports_in_words_keeps_serving_and_recovers() {
    let env = Env::new();
    env.write_config(&format!("min_free_bytes = {}", 4 << 20));
    let Some(_disk) = SmallDisk::mount(env.path("data"), "32m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (run as root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let daemon = env.start();
    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(daemon.report_id(&db_report(n)).await);
    }

    fill(&env.path("data/filler"), 1 << 20);
    let (status, answer) = report_until_refused(&daemon, 20, &mut acked).await;
    assert_eq!(status, 507, "{answer}");
    assert_eq!(answer["code"], "insufficient_storage", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("below min_free_bytes"),
        "{answer}"
    );
    // Still serving, and everything acknowledged is there.
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = daemon.get("/readyz").await;
    assert_eq!(
        status, 503,
        "a full data dir is a readiness problem: {ready}"
    );
    assert!(ready.to_string().contains("min_free_bytes"), "{ready}");
    for id in &acked {
        let (status, _) = daemon.get(&format!("/v1/faults/{id}")).await;
        assert_eq!(status, 200, "acknowledged fault {id} is missing");
    }

    // Space again: reports are taken again, without a restart.
    std::fs::remove_file(env.path("data/filler")).unwrap();
    let (status, answer, _) = daemon.post("/v1/faults", &db_report(9999), &[]).await;
    assert_eq!(status, 202, "{answer}");
    let (status, ready) = daemon.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
}

#[tokio::test]
async fn a_completely_full_disk_loses_nothing_acknowledged_and_phoenix_restarts() {
    let env = Env::new();
    // No reserve: the store itself runs into the full disk.
    env.write_config("min_free_bytes = 0");
    let Some(_disk) = SmallDisk::mount(env.path("data"), "16m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (run as root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let mut daemon = env.start();
    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(daemon.report_id(&db_report(n)).await);
    }
    fill(&env.path("data/filler"), 0);
    let (status, answer) = report_until_refused(&daemon, 20, &mut acked).await;
    assert_eq!(status, 507, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{answer}"
    );
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200, "still answering");

    // Space again: sled takes no writes in this process any more, so phoenix stops itself
    // with status 75 (systemd's Restart=on-failure starts it again); the store reopens with
    // everything acknowledged, and takes reports again.
    std::fs::remove_file(env.path("data/filler")).unwrap();
    assert_eq!(daemon.wait_exit(), Some(75), "{}", daemon.log());
    let daemon = env.start();
    for id in &acked {
        let (status, _) = daemon.get(&format!("/v1/faults/{id}")).await;
        assert_eq!(
            status, 200,
            "acknowledged fault {id} is missing after the restart"
        );
    }
    let (status, answer, _) = daemon.post("/v1/faults", &db_report(9999), &[]).await;
    assert_eq!(status, 202, "{answer}");
    let (status, ready) = daemon.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
}
