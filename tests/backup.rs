//! Backup while running, restore into a wiped data dir, and retention of ended faults.

mod common;

use std::time::Instant;

use common::{DEADLINE, Env};

#[tokio::test]
async fn backup_wipe_restore_gives_back_the_same_faults() {
    let env = Env::new();
    let mut daemon = env.start();
    let mut ids = Vec::new();
    for app in ["a", "b", "c"] {
        let id = daemon
            .report_id(&format!(r#"{{"app":"{app}","kind":"k"}}"#))
            .await;
        daemon.wait_terminal(&id).await;
        ids.push(id);
    }
    let (_, before) = daemon.get("/v1/faults").await;
    let (code, out, err) = env.run(&[
        "--addr",
        &format!("http://{}", daemon.addr),
        "backup",
        "--out",
        "snapshot.jsonl",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("wrote "), "{out}");
    assert_eq!(daemon.terminate(), Some(0));

    std::fs::remove_dir_all(env.path("data/store")).unwrap();
    let (code, out, err) = env.run(&[
        "restore",
        "--config",
        "phoenix.toml",
        "--from",
        "snapshot.jsonl",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("restored "), "{out}");

    let daemon = env.start();
    let (_, after) = daemon.get("/v1/faults").await;
    assert_eq!(after, before, "the same faults, states and counters");
    let history = daemon.fault(&ids[0]).await["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(history >= 3, "histories are back too");

    // A damaged backup is refused and changes nothing.
    std::fs::write(
        env.path("broken.jsonl"),
        "{\"phoenix_backup\":1,\"at\":\"2026-01-01T00:00:00Z\",\"entries\":5}\n",
    )
    .unwrap();
    let (code, _, err) = env.run(&[
        "restore",
        "--config",
        "phoenix.toml",
        "--from",
        "broken.jsonl",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("truncated"), "{err}");
}

#[tokio::test]
async fn ended_faults_are_compacted_after_the_retention_period_and_open_ones_stay() {
    let env = Env::new();
    env.write_config("retention = \"1s\"");
    env.production_web();
    let daemon = env.start();
    let ended = daemon.report_id(r#"{"app":"nobody","kind":"k"}"#).await;
    daemon.wait_terminal(&ended).await;
    let open = daemon.report_id(r#"{"app":"web","kind":"k"}"#).await;
    daemon
        .wait_for(&open, "awaiting approval", |f| {
            f["state"] == "awaiting_approval"
        })
        .await;

    let started = Instant::now();
    loop {
        let (status, _) = daemon.get(&format!("/v1/faults/{ended}")).await;
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the ended fault was never compacted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        daemon.fault(&open).await["state"],
        "awaiting_approval",
        "open faults stay"
    );
    // The fault disappears as the compaction's batch is applied; the counter follows once that
    // batch is flushed: poll for it.
    let started = Instant::now();
    loop {
        let metrics = daemon.metrics().await;
        if metrics
            .lines()
            .any(|l| l == "phoenix_faults_compacted_total 1")
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "compaction never counted:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
