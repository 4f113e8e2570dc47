//! Load driver for `scripts/bench` (P3 and P5): sends N distinct fault reports to phoenix, or N
//! alerts to an Alertmanager, with C concurrent requests.
//!
//! - `bench-load phoenix ADDR APP N C [--healed]`: reports `{"app":APP,...}`; with `--healed`,
//!   then waits until phoenix's `/metrics` count N more healed faults, and prints
//!   `P3 N faults report->healed in S s = R faults/s`.
//! - `bench-load alertmanager ADDR N C`: posts N distinct alerts to `/api/v2/alerts`, 100 per
//!   request.
//!
//! Prints how long the sends took. Exits 1 on any refused request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: bench-load phoenix ADDR APP N C [--healed] | bench-load alertmanager ADDR N C"
    );
    std::process::exit(2)
}

fn number(text: Option<&String>) -> u64 {
    text.and_then(|t| t.parse().ok()).unwrap_or_else(|| usage())
}

async fn healed_count(client: &reqwest::Client, addr: &str) -> u64 {
    let Ok(response) = client.get(format!("http://{addr}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("phoenix_faults_closed_total{state=\"healed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = phoenix::effects::http_client().expect("http client");
    let (target, addr) = match (args.first(), args.get(1)) {
        (Some(t), Some(a)) => (t.clone(), a.clone()),
        _ => usage(),
    };
    let (app, total, concurrency, requests): (String, u64, u64, u64) = match target.as_str() {
        "phoenix" => {
            let total = number(args.get(3));
            (args[2].clone(), total, number(args.get(4)), total)
        }
        "alertmanager" => {
            let total = number(args.get(2));
            (
                String::new(),
                total,
                number(args.get(3)),
                total.div_ceil(100),
            )
        }
        _ => usage(),
    };
    let wait_healed = args.iter().any(|a| a == "--healed");
    let before = if wait_healed {
        healed_count(&client, &addr).await
    } else {
        0
    };

    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, addr, app, target) =
            (client.clone(), addr.clone(), app.clone(), target.clone());
        let (next, failed) = (next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return;
                }
                let request =
                    if target == "phoenix" {
                        client
                            .post(format!("http://{addr}/v1/faults"))
                            .json(&serde_json::json!({
                                "app": app, "kind": "load", "labels": {"n": n.to_string()}
                            }))
                    } else {
                        let alerts: Vec<_> = (n * 100..((n + 1) * 100).min(total))
                        .map(|i| serde_json::json!({
                            "labels": {"alertname": "load", "app": "bench", "n": i.to_string()},
                            "annotations": {"summary": "bench-load"},
                        }))
                        .collect();
                        client
                            .post(format!("http://{addr}/api/v2/alerts"))
                            .json(&alerts)
                    };
                let ok = request
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let sent = started.elapsed();
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "bench-load: {total} {} sent in {:.2} s ({failed} refused)",
        if target == "phoenix" {
            "reports"
        } else {
            "alerts"
        },
        sent.as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    if wait_healed {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let healed = healed_count(&client, &addr).await - before;
            if healed >= total {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("bench-load: only {healed} of {total} healed after 10 minutes");
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "P3 {total} faults report->healed in {elapsed:.2} s = {:.0} faults/s",
            total as f64 / elapsed
        );
    }
}
