//! The approval console: served at `/` from the binary, and driven in headless Chromium
//! (tests/browser/console.mjs, playwright-core with Debian's /usr/bin/chromium): a request
//! arrives live, a click approves it and the fault heals, a second tab's click shows the 409,
//! a reporter sees no approve button. Screenshots land in target/test-artifacts/.
//!
//! Needs node, chromium and `npm ci --prefix tests/browser` (`.ci/run` installs them); without
//! them the browser part is skipped, except under CI, where it is required.

mod common;

use std::path::Path;
use std::process::Command;

use common::Env;

const REPORTER: &str = "reporter-token-for-web";
const APPROVER: &str = "approver-token-alice";

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn setup() -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[[token]]\nname = \"ci\"\nblake3 = \"{}\"\nrole = \"reporter\"\napps = [\"web\"]\n\n[[token]]\nname = \"alice\"\nblake3 = \"{}\"\nrole = \"approver\"\n",
        hash(REPORTER),
        hash(APPROVER),
    ));
    env.production_web();
    env
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let env = setup();
    let daemon = env.start();
    let client = phoenix::effects::http_client().unwrap();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        // No token needed: the files hold no data.
        let response = client.get(daemon.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {headers:?}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        let body = response.text().await.unwrap();
        // Nothing from elsewhere: hosts running phoenix often have no internet.
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} refers to another origin"
        );
    }
    // The data stays behind the token.
    let response = client
        .get(daemon.url("/v1/approvals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_approver_approves_in_the_browser_and_the_fault_heals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists()
        && Command::new("node").arg("--version").output().is_ok();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: install chromium, node and `npm ci --prefix tests/browser`"
        );
        eprintln!("skipped: needs /usr/bin/chromium, node and `npm ci --prefix tests/browser`");
        return;
    }
    let env = setup();
    let mut daemon = env.start();
    let artifacts = common::artifact("console.txt", "console browser test: started\n");
    let artifacts = artifacts.parent().unwrap();

    let url = daemon.url("");
    let browser = tokio::process::Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .env("PHOENIX_URL", url.trim_end_matches('/'))
        .env("APPROVER_TOKEN", APPROVER)
        .env("REPORTER_TOKEN", REPORTER)
        .env("ARTIFACTS", artifacts)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), browser)
        .await
        .expect("the browser test took longer than 3 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nscreenshots in {}\n{}",
        artifacts.display(),
        daemon.log()
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let id = result["fault_id"].as_str().unwrap();

    daemon.token = Some(APPROVER.into());
    let fault = daemon.wait_terminal(id).await;
    assert_eq!(fault["state"], "healed", "{fault:#}");
    assert!(
        fault.to_string().contains("approved from the browser test"),
        "the comment is recorded: {fault:#}"
    );
    common::artifact(
        "console.txt",
        format!(
            "console browser test: approved by clicking, fault {id} healed; second tab: {}; reporter: {}\n",
            result["refusal"], result["reporter_note"]
        ),
    );
    assert!(artifacts.join("console-queue.png").exists());
    let _ = daemon.terminate();
}
