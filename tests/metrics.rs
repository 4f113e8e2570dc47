//! `/metrics`: public, Prometheus text format, and it counts what happened. Where Debian's
//! `prometheus` is installed (CI installs it), `promtool check metrics` must accept the output
//! and `promtool check rules` the shipped alert rules.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Env;

/// promtool, if installed. In CI (`CI` set) it must be.
fn promtool() -> Option<&'static str> {
    common::installed("promtool", "apt-get install prometheus").then_some("promtool")
}

#[tokio::test]
async fn metrics_count_what_happened_and_promtool_accepts_them() {
    let env = Env::shipped();
    let daemon = env.start();
    let id = daemon
        .report_id(r#"{"app":"demo","kind":"disk_full"}"#)
        .await;
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
    let nobody = daemon.report_id(r#"{"app":"nobody","kind":"k"}"#).await;
    daemon.wait_terminal(&nobody).await;

    let client = phoenix::effects::http_client().unwrap();
    let response = client.get(daemon.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for line in [
        "phoenix_faults_reported_total{source=\"api\"} 2",
        "phoenix_faults_closed_total{state=\"healed\"} 1",
        "phoenix_faults_closed_total{state=\"failed\",reason=\"no_policy\"} 1",
        "phoenix_healed_total{approved=\"false\"} 1",
        "phoenix_effects_total{kind=\"exec\",outcome=\"ok\"} 1",
        "phoenix_sandbox_runs_total{outcome=\"ok\"} 1",
        "phoenix_time_to_heal_seconds_count 1",
        "phoenix_open_faults{state=\"detected\"} 0",
        "phoenix_open_faults{state=\"awaiting_approval\"} 0",
        "phoenix_approvals_pending 0",
        "phoenix_breaker_open{breaker=\"global\"} 0",
        "phoenix_rollbacks_total{outcome=\"rolled_back\"} 0",
        "phoenix_reports_refused_total 0",
        "phoenix_auto_heal_ratio 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(
        text.contains("phoenix_http_requests_total{route=\"/v1/faults\",status=\"202\"} 2"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("phoenix_store_flush_seconds_count "))
    );

    let Some(promtool) = promtool() else { return };
    let check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_with_stdin(&text);
    assert!(check.0, "promtool check metrics: {}", check.1);
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus-rules.yml");
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(rules)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

trait WithStdin {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String);
}

impl WithStdin for Command {
    /// Runs the command with `input` on stdin; returns success and everything it printed.
    fn output_with_stdin(&mut self, input: &str) -> (bool, String) {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    }
}

/// The shipped alert rules' unit tests (`examples/prometheus-rules.test.yml`): each alert fires
/// on a series made to trip it, and stays quiet on a healthy one.
#[test]
fn the_alert_rules_fire_when_they_should_and_stay_quiet_otherwise() {
    let Some(promtool) = promtool() else { return };
    let output = Command::new(promtool)
        .args(["test", "rules", "prometheus-rules.test.yml"])
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool test rules: {printed}");
    assert!(printed.contains("SUCCESS"), "{printed}");
}
