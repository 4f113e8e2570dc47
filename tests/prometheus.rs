//! A real Prometheus (Debian's `prometheus`, which CI installs) scrapes a live phoenix on
//! loopback while the demo faults run: every metric phoenix exports arrives with the labels
//! it should have, the shipped alert rules evaluate without error, and every panel query of
//! the Grafana dashboard (`examples/grafana/phoenix.json`) runs and returns data.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, free_port};
use serde_json::Value;

/// Prometheus scrapes (and evaluates rules) this often here.
const SCRAPE: &str = "1s";

/// A Prometheus server on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) as job `phoenix`, with the shipped rules.
    /// None when it is not installed (outside CI).
    async fn start(dir: &Path, target: &str) -> Option<Prometheus> {
        if !common::installed("prometheus", "apt-get install prometheus") {
            return None;
        }
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus-rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE}\n  evaluation_interval: {SCRAPE}\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: phoenix\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Some(prometheus);
            }
            assert!(
                started.elapsed() < DEADLINE,
                "prometheus did not get ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/PATH` with `query`; returns `data`, failing on an API error.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/{path}", self.base), query).unwrap();
        let response = self.http.get(url).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The label names each metric's series carry besides `job` and `instance` (a closed fault
/// that failed also says why: `reason`).
fn expected_labels(name: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match name {
        "phoenix_faults_reported_total" => (&["source"], &[]),
        "phoenix_transitions_total" => (&["to"], &[]),
        "phoenix_faults_closed_total" => (&["state"], &["reason"]),
        "phoenix_healed_total" => (&["approved"], &[]),
        "phoenix_sandbox_runs_total" => (&["outcome"], &[]),
        "phoenix_effects_total" => (&["kind", "outcome"], &[]),
        "phoenix_rollbacks_total" => (&["outcome"], &[]),
        "phoenix_http_requests_total" => (&["route", "status"], &[]),
        "phoenix_auth_failures_total" => (&["outcome"], &[]),
        "phoenix_open_faults" => (&["state"], &[]),
        "phoenix_breaker_open" => (&["breaker"], &[]),
        "phoenix_fleet_leases_total" => (&["outcome"], &[]),
        _ => (&[], &[]),
    }
}

#[tokio::test]
async fn prometheus_scrapes_every_metric_and_every_dashboard_query_returns_data() {
    let env = Env::shipped();
    std::fs::create_dir_all(env.path(".demo/config")).unwrap();
    std::fs::write(env.path(".demo/config/app.conf"), "port = 9999\n").unwrap();
    let daemon = env.start();
    let Some(prometheus) = Prometheus::start(&env.path(""), &daemon.addr).await else {
        return;
    };

    // A first scrape before the demo, so that rates and quantiles see it happen.
    let started = Instant::now();
    while prometheus
        .query("up{job=\"phoenix\"} == 1")
        .await
        .is_empty()
    {
        assert!(
            started.elapsed() < DEADLINE,
            "prometheus never scraped phoenix"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The demo: heals, one after an approval, a fault no policy matches, a refused request.
    for _ in 0..3 {
        let id = daemon
            .report_id(r#"{"app":"demo","kind":"disk_full"}"#)
            .await;
        assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
    }
    let asked = daemon
        .report_id(r#"{"app":"demo","kind":"config_drift"}"#)
        .await;
    daemon
        .wait_for(&asked, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;
    daemon.approve(&asked, "alice").await;
    assert_eq!(daemon.wait_terminal(&asked).await["state"], "healed");
    let nobody = daemon.report_id(r#"{"app":"nobody","kind":"k"}"#).await;
    daemon.wait_terminal(&nobody).await;
    let (status, _, _) = daemon.post("/v1/faults", r#"{"app":"demo"}"#, &[]).await;
    assert_eq!(status, 400);

    // Wait until Prometheus has scraped all of it, then a few scrapes more (rates need two).
    let started = Instant::now();
    loop {
        let healed = prometheus
            .query("sum(phoenix_faults_closed_total{job=\"phoenix\",state=\"healed\"})")
            .await;
        let value = healed
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok());
        if value == Some(4.0) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "prometheus saw {healed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every metric of the catalogue, with its labels.
    for (name, kind, _) in phoenix::core::metrics::CATALOG {
        let series_name = if *kind == "histogram" {
            format!("{name}_bucket")
        } else {
            (*name).to_owned()
        };
        let series = prometheus
            .query(&format!("{{__name__=\"{series_name}\",job=\"phoenix\"}}"))
            .await;
        assert!(!series.is_empty(), "{series_name}: no series in Prometheus");
        let (required, optional) = expected_labels(name);
        for one in &series {
            let labels: BTreeSet<&str> = one["metric"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| !["__name__", "job", "instance"].contains(k))
                .collect();
            let mut expected: BTreeSet<&str> = required.iter().copied().collect();
            if *kind == "histogram" {
                expected.insert("le");
            }
            let extra: Vec<&&str> = labels
                .difference(&expected)
                .filter(|l| !optional.contains(l))
                .collect();
            assert!(
                expected.is_subset(&labels) && extra.is_empty(),
                "{series_name}: labels {labels:?}, expected {expected:?} (optional {optional:?})"
            );
        }
    }

    // The shipped alert rules load and evaluate without error; nothing fires on a healthy demo.
    let groups = prometheus.api("rules", &[]).await;
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 7, "{groups}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_ne!(rule["state"], "firing", "{rule}");
    }

    // Every query of every dashboard panel, as Grafana would send it for "all instances".
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana/phoenix.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut ran = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            assert!(
                !expr.contains('$'),
                "{title}: an unknown variable in {expr}"
            );
            let result = prometheus.query(&expr).await;
            assert!(
                !result.is_empty(),
                "panel {title}: `{expr}` returned nothing"
            );
            let first = &result[0]["value"][1];
            // A quantile over no observations is NaN: the demo's heals, runs and commits are
            // in the window, so these panels show numbers.
            assert_ne!(first, "NaN", "panel {title}: `{expr}`");
            ran.push(format!(
                "{title}: {expr} -> {} series, first {first}",
                result.len()
            ));
        }
    }
    assert_eq!(ran.len(), 20, "{ran:#?}");
    common::artifact("dashboard-queries.txt", ran.join("\n") + "\n");
}
