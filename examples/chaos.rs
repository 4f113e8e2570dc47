//! Crash chaos: phoenix under a steady load of fault reports and healing runs, killed with
//! SIGKILL at random moments and restarted on the same data dir, again and again.
//!
//! Usage (see `scripts/chaos`): `chaos --phoenix PATH --kills N [--seed S] [--reporters R]`.
//!
//! Every report carries an Idempotency-Key; a report whose answer was lost to a kill is sent
//! again with the same key once phoenix is back (what a careful client does). Every healing run
//! appends `fault-id attempt` to a ledger file. After each restart, and at the end, it checks:
//! - the store opened (phoenix became ready again);
//! - every acknowledged report's fault exists, under the id it was acknowledged with;
//! - no ledger line appears twice (no patch attempt applied twice);
//! - at the end, with the load stopped, every fault reaches a terminal state.
//!
//! Ends with one summary line of counts; exits 1 if any check failed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Nothing in a healthy run waits this long without progress; a wait past it is a failure.
const DEADLINE: Duration = Duration::from_secs(120);

/// The load: about this many reports a second over all reporters (at the default count), so
/// that a long run's backlog stays within what phoenix heals while it is being killed.
const REPORTS_PER_SECOND: f64 = 200.0;
const REPORTERS_NOMINAL: f64 = 4.0;

struct Options {
    phoenix: PathBuf,
    kills: u32,
    seed: u64,
    reporters: usize,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        phoenix: PathBuf::from("target/debug/phoenix"),
        kills: 20,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        reporters: 4,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--phoenix" => options.phoenix = PathBuf::from(&value),
            "--kills" => options.kills = number()? as u32,
            "--seed" => options.seed = number()?,
            "--reporters" => options.reporters = number()?.max(1) as usize,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// xorshift64*: reproducible kill timing and report mix from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The setup: a policy whose command appends to the ledger and whose probe finds the line
/// (`down` faults heal), and one whose probe never passes (`stuck` faults fail and roll back).
fn write_setup(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::create_dir_all(dir.join("patches/ledger"))?;
    std::fs::write(
        dir.join("phoenix.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nmax_open_faults_per_app = 1000000\n\n[rate_limit]\nruns_per_app = 1000000\n",
    )?;
    std::fs::write(
        dir.join("patches/ledger/patch.toml"),
        "name = \"ledger\"\nversion = \"1.0.0\"\nconfidence = 0.99\n",
    )?;
    std::fs::write(
        dir.join("patches/ledger/patch.wat"),
        r#"(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"record\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 34)))
    (i32.const 0)))
"#,
    )?;
    let record = r#"[capabilities.commands.record]
argv = ["sh", "-c", "echo \"$PHOENIX_FAULT_ID $PHOENIX_ATTEMPT\" >> ledger"]
timeout = "30s""#;
    std::fs::write(
        dir.join("policies/down.toml"),
        format!(
            "[match]\napp = \"chaos\"\nkind = \"down\"\n\n[patch]\nname = \"ledger\"\n\n{record}\n\n[verify]\ncommand = [\"sh\", \"-c\", \"grep -q \\\"^$PHOENIX_FAULT_ID \\\" ledger\"]\nwithin = \"10s\"\ninterval = \"50ms\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("policies/stuck.toml"),
        format!(
            "[match]\napp = \"chaos\"\nkind = \"stuck\"\n\n[patch]\nname = \"ledger\"\n\n{record}\n\n[verify]\ncommand = [\"false\"]\nwithin = \"200ms\"\ninterval = \"50ms\"\n"
        ),
    )
}

/// One phoenix process on the chaos data dir.
struct Daemon {
    child: Child,
    addr: String,
}

fn start(phoenix: &Path, dir: &Path) -> Result<Daemon, String> {
    let addr_file = dir.join("data/phoenix.addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("phoenix.log"))
        .map_err(|e| e.to_string())?;
    let child = Command::new(phoenix)
        .args(["serve", "--config"])
        .arg(dir.join("phoenix.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", phoenix.display()))?;
    let mut daemon = Daemon {
        child,
        addr: String::new(),
    };
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if let Ok(addr) = std::fs::read_to_string(&addr_file)
            && !addr.trim().is_empty()
        {
            daemon.addr = addr.trim().to_owned();
            return Ok(daemon);
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!(
                "phoenix exited at start ({status}); see {}",
                dir.join("phoenix.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = daemon.child.kill();
    Err("phoenix did not become ready within the deadline".into())
}

/// What the reporters share with the main loop.
#[derive(Default)]
struct Shared {
    /// The current daemon's address (empty while it is down).
    addr: Mutex<String>,
    /// Idempotency key → fault id, for every acknowledged report.
    acked: Mutex<BTreeMap<String, String>>,
    sent: AtomicU64,
    retried: AtomicU64,
    refused: AtomicU64,
    stop: AtomicBool,
}

/// Sends reports until told to stop. A report that got no answer is re-sent with its key.
async fn reporter(shared: Arc<Shared>, client: reqwest::Client, id: usize, seed: u64) {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut n = 0u64;
    let pause = Duration::from_secs_f64(1.0 / REPORTS_PER_SECOND * REPORTERS_NOMINAL);
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(pause).await;
        n += 1;
        let key = format!("r{id}-{n}");
        // Mostly new faults; some repeat a recent fingerprint (dedup); one in five fails its probe.
        let instance = if n > 1 && rng.below(4) == 0 {
            format!("r{id}-{}", n - 1 - rng.below((n - 1).min(5)))
        } else {
            key.clone()
        };
        let kind = if rng.below(5) == 0 { "stuck" } else { "down" };
        let body = serde_json::json!({
            "app": "chaos",
            "kind": kind,
            "labels": { "instance": instance },
            "message": "chaos",
        });
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let mut first = true;
        // Same key until an answer arrives (or the run stops: then it stays unacknowledged).
        while !shared.stop.load(Ordering::Relaxed) {
            if !first {
                shared.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            first = false;
            let addr = shared.addr.lock().unwrap().clone();
            if addr.is_empty() {
                continue;
            }
            let response = client
                .post(format!("http://{addr}/v1/faults"))
                .header("idempotency-key", &key)
                .timeout(Duration::from_secs(10))
                .json(&body)
                .send()
                .await;
            let Ok(response) = response else { continue };
            let status = response.status();
            let Ok(answer) = response.json::<Value>().await else {
                continue;
            };
            if status.is_success() {
                let fault = answer["id"].as_str().unwrap_or_default().to_owned();
                shared.acked.lock().unwrap().insert(key.clone(), fault);
            } else {
                // A refusal is an answer too (never expected here); count it and move on.
                eprintln!("chaos: report {key} refused with {status}: {answer}");
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
    }
}

/// Every fault phoenix holds: id → state (paging through `GET /v1/faults`).
async fn all_faults(
    client: &reqwest::Client,
    addr: &str,
) -> Result<HashMap<String, Value>, String> {
    let mut faults = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("http://{addr}/v1/faults?limit=1000");
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page: Value = client
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("listing faults: {e}"))?
            .json()
            .await
            .map_err(|e| format!("listing faults: {e}"))?;
        for fault in page["faults"].as_array().into_iter().flatten() {
            let id = fault["id"].as_str().unwrap_or_default().to_owned();
            faults.insert(id, fault.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(faults),
        }
    }
}

fn ledger(dir: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("ledger")).unwrap_or_default();
    let mut seen = HashMap::<&str, usize>::new();
    for line in text.lines() {
        *seen.entry(line).or_default() += 1;
    }
    let twice = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(line, n)| format!("{line} (x{n})"))
        .collect();
    (text.lines().count(), twice)
}

/// The checks that hold at any moment: acknowledged faults exist, nothing applied twice.
async fn check(
    client: &reqwest::Client,
    addr: &str,
    shared: &Shared,
    dir: &Path,
    problems: &mut Vec<String>,
) -> Result<HashMap<String, Value>, String> {
    let acked = shared.acked.lock().unwrap().clone();
    let faults = all_faults(client, addr).await?;
    for (key, id) in &acked {
        if !faults.contains_key(id) {
            problems.push(format!("acknowledged report {key} (fault {id}) is missing"));
        }
    }
    let (_, twice) = ledger(dir);
    for line in twice {
        problems.push(format!("applied more than once: {line}"));
    }
    Ok(faults)
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!(
                "chaos: {error}\nusage: chaos --phoenix PATH --kills N [--seed S] [--reporters R]"
            );
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(run(options));
    std::process::exit(code);
}

async fn run(options: Options) -> i32 {
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path().to_owned();
    write_setup(&dir).expect("chaos setup");
    println!(
        "chaos: seed {} kills {} reporters {} dir {}",
        options.seed,
        options.kills,
        options.reporters,
        dir.display()
    );
    let client = phoenix::effects::http_client().expect("http client");
    let shared = Arc::new(Shared::default());
    let mut rng = Rng(options.seed | 1);
    let mut problems = Vec::new();
    let mut failed_restarts = 0u32;

    let mut daemon = match start(&options.phoenix, &dir) {
        Ok(daemon) => daemon,
        Err(error) => {
            eprintln!("chaos: {error}");
            return 1;
        }
    };
    *shared.addr.lock().unwrap() = daemon.addr.clone();
    let reporters: Vec<_> = (0..options.reporters)
        .map(|i| tokio::spawn(reporter(shared.clone(), client.clone(), i, options.seed)))
        .collect();

    let mut kills = 0;
    while kills < options.kills {
        // Random moments: mostly within a healing run's lifetime, sometimes right after a start.
        let pause = 20 + rng.below(400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        shared.addr.lock().unwrap().clear();
        let _ = daemon.child.kill(); // SIGKILL
        let _ = daemon.child.wait();
        kills += 1;
        daemon = match start(&options.phoenix, &dir) {
            Ok(daemon) => daemon,
            Err(error) => {
                failed_restarts += 1;
                problems.push(format!("restart after kill {kills}: {error}"));
                break;
            }
        };
        *shared.addr.lock().unwrap() = daemon.addr.clone();
        if let Err(error) = check(&client, &daemon.addr, &shared, &dir, &mut problems).await {
            problems.push(format!("after kill {kills}: {error}"));
        }
        if !problems.is_empty() {
            break;
        }
    }

    // Stop the load, let every fault finish, check once more.
    shared.stop.store(true, Ordering::Relaxed);
    for reporter in reporters {
        let _ = reporter.await;
    }
    let mut faults = HashMap::new();
    let mut unfinished = 0usize;
    if failed_restarts == 0 {
        // The backlog left by the load drains at phoenix's healing rate: wait while it shrinks.
        let mut progress = (usize::MAX, Instant::now());
        loop {
            match check(&client, &daemon.addr, &shared, &dir, &mut Vec::new()).await {
                Ok(now) => faults = now,
                Err(error) => problems.push(error),
            }
            unfinished = faults
                .values()
                .filter(|f| {
                    !["healed", "failed", "resolved"].contains(&f["state"].as_str().unwrap_or(""))
                })
                .count();
            if unfinished < progress.0 {
                progress = (unfinished, Instant::now());
            }
            if unfinished == 0 || progress.1.elapsed() > DEADLINE || !problems.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(error) = check(&client, &daemon.addr, &shared, &dir, &mut problems).await {
            problems.push(error);
        }
        if unfinished > 0 {
            problems.push(format!(
                "{unfinished} faults did not reach a terminal state"
            ));
        }
    }
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();

    let mut by_state = BTreeMap::<String, usize>::new();
    for fault in faults.values() {
        let state = match fault["state"].as_str().unwrap_or("?") {
            "failed" => format!("failed:{}", fault["reason"].as_str().unwrap_or("?")),
            other => other.to_owned(),
        };
        *by_state.entry(state).or_default() += 1;
    }
    let (ledger_lines, twice) = ledger(&dir);
    // A healed `down` fault was verified by finding its ledger line: one without is a lie.
    let ledger_text = std::fs::read_to_string(dir.join("ledger")).unwrap_or_default();
    let applied: std::collections::HashSet<&str> = ledger_text
        .lines()
        .filter_map(|line| line.split(' ').next())
        .collect();
    for (id, fault) in &faults {
        if fault["state"] == "healed" && !applied.contains(id.as_str()) {
            problems.push(format!("fault {id} is healed but its action never ran"));
        }
    }
    let acked = shared.acked.lock().unwrap().len();
    let lost = problems.iter().filter(|p| p.contains("is missing")).count();
    for problem in problems.iter().take(20) {
        eprintln!("chaos: PROBLEM {problem}");
    }
    let states = by_state
        .iter()
        .map(|(state, n)| format!("{state}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let verdict = if problems.is_empty() { "OK" } else { "FAILED" };
    println!(
        "chaos {verdict}: seed={} kills={kills} restarts_failed={failed_restarts} reports_sent={} resent_after_kill={} acked={acked} refused={} lost={lost} faults={} [{states}] unfinished={unfinished} ledger_lines={ledger_lines} applied_twice={}",
        options.seed,
        shared.sent.load(Ordering::Relaxed),
        shared.retried.load(Ordering::Relaxed),
        shared.refused.load(Ordering::Relaxed),
        faults.len(),
        twice.len(),
    );
    if problems.is_empty() {
        0
    } else {
        // Keep the evidence.
        let kept = work.keep();
        eprintln!("chaos: data dir and log kept in {}", kept.display());
        1
    }
}
