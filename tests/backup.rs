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

/// The bytes a `write_file` replaced are kept (in `data_dir/backups/FAULT`) while the fault is
/// stored, for its undo, and deleted with it once retention compacts it; a folder left by a
/// fault already gone is deleted at the next sweep.
#[tokio::test]
async fn file_backups_stay_while_their_fault_is_stored_and_go_with_it() {
    let env = Env::new();
    env.write_config("retention = \"1s\"");
    std::fs::create_dir_all(env.path("conf")).unwrap();
    std::fs::write(env.path("conf/app.conf"), "old\n").unwrap();
    let write = r#"{"kind":"write_file","path":"conf/app.conf","content":"new\n"}"#;
    env.patch("rewrite", &common::planner(&[write]), "");
    // Verification waits for the test to create `ready`: the fault stays open meanwhile.
    env.policy(
        "web",
        "[match]\napp = \"web\"\n[patch]\nname = \"rewrite\"\n[capabilities]\nwritable_dirs = [\"conf\"]\n[verify]\ncommand = [\"test\", \"-e\", \"ready\"]\nwithin = \"60s\"\ninterval = \"100ms\"\n",
    );
    let daemon = env.start();
    let id = daemon.report_id(r#"{"app":"web","kind":"k"}"#).await;
    daemon
        .wait_for(&id, "verification", |f| f["state"] == "testing")
        .await;
    let backups = env.path(&format!("data/backups/{id}"));
    assert!(backups.join("1-1").exists(), "the backup of conf/app.conf");

    // A folder of a fault already gone, put in place (whole) now: once it is removed, a sweep
    // has run that also saw the open fault's folder, which must still be there.
    let orphan = env.path("data/backups/f-long-gone");
    std::fs::create_dir_all(env.path("scratch")).unwrap();
    std::fs::write(env.path("scratch/1-1"), "old").unwrap();
    std::fs::rename(env.path("scratch"), &orphan).unwrap();
    let started = Instant::now();
    while orphan.exists() {
        assert!(started.elapsed() < DEADLINE, "the orphan was never removed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(backups.join("1-1")).unwrap(),
        "old\n",
        "an open fault keeps its backup"
    );

    std::fs::write(env.path("ready"), "").unwrap();
    assert_eq!(daemon.wait_terminal(&id).await["state"], "healed");
    let started = Instant::now();
    while backups.exists() || daemon.get(&format!("/v1/faults/{id}")).await.0 != 404 {
        assert!(
            started.elapsed() < DEADLINE,
            "the healed fault and its backup were never deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(env.path("conf/app.conf")).unwrap(),
        "new\n"
    );
}
