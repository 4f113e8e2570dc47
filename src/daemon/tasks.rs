//! The daemon's background tasks: detection sources, the systemd watchdog, retention and the
//! backups of deleted faults, the full-disk watch, SIGHUP.

use super::*;

/// While the data dir is full, phoenix serves reads and refuses writes (507). Once it has room
/// again the store must be reopened, which sled allows only in a new process: ask for a
/// restart (see [`Store::recovered_from_full_disk`]).
pub(super) fn spawn_full_disk_watch(
    store: Arc<Store>,
    restart: tokio::sync::oneshot::Sender<String>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            ticker.tick().await;
            if store.recovered_from_full_disk() {
                let _ = restart.send(
                    "the data dir has room again after it ran full; the store is reopened at the next start".into(),
                );
                return;
            }
        }
    });
}

/// Starts the detection sources of the config (probes, log watches).
pub(super) fn start_sources(config: &Config, intake: &Intake) -> Result<(), DaemonError> {
    let http = crate::effects::http_client().map_err(http_client_error)?;
    for probe in &config.probes {
        tracing::info!(message = "Probe started.", probe = %probe.name, interval = ?probe.interval);
        probe::spawn(
            probe.clone(),
            intake.clone(),
            http.clone(),
            config.base_dir.clone(),
        );
    }
    for log in &config.logs {
        // Validated when the config was parsed; compile again for this thread.
        let regex = log.validate().map_err(|message| {
            DaemonError::Config(ConfigError::Invalid {
                path: "<config>".into(),
                message,
            })
        })?;
        logwatch::spawn(log.clone(), regex, intake.clone()).map_err(|e| DaemonError::Io {
            what: e.to_string(),
            source: std::io::Error::other("log watch"),
        })?;
        tracing::info!(message = "Log watch started.", log = %log.name, path = %log.path.display());
    }
    Ok(())
}

/// Sends `WATCHDOG=1` every `interval`, but only while the engine's dispatcher answers and the
/// store can be read: a stuck phoenix stops petting the watchdog and systemd restarts it.
pub(super) fn spawn_watchdog(
    interval: std::time::Duration,
    engine: crate::engine::EngineHandle,
    store: Arc<Store>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            if engine.alive(interval).await && store.is_readable() {
                crate::daemon::notify::notify("WATCHDOG=1");
            } else {
                tracing::error!(
                    message = "Engine or store not responding; withholding the systemd watchdog."
                );
            }
        }
    });
}

/// Where the engine keeps the bytes a `write_file` replaced, one folder per fault.
pub(super) fn backup_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("backups")
}

/// Deletes faults that ended more than `retention` ago, now and then (a tenth of the retention,
/// at most hourly), so the store does not grow without bound; then the file backups of faults
/// no longer stored.
pub(super) fn spawn_retention(
    store: Arc<Store>,
    retention: std::time::Duration,
    backups: std::path::PathBuf,
) {
    let every = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let before = crate::core::fault::Timestamp::now()
                .0
                .saturating_sub(retention.as_millis() as u64);
            match store.compact(crate::core::fault::Timestamp(before)).await {
                Ok(0) => {}
                Ok(removed) => {
                    for _ in 0..removed {
                        crate::core::metrics::metrics().inc("phoenix_faults_compacted_total", &[]);
                    }
                    tracing::info!(message = "Old faults compacted.", removed);
                }
                Err(error) => tracing::error!(message = "Compaction failed.", %error),
            }
            let (store, backups) = (Arc::clone(&store), backups.clone());
            let swept =
                tokio::task::spawn_blocking(move || remove_orphaned_backups(&store, &backups))
                    .await
                    .unwrap_or_else(|panicked| Err(std::io::Error::other(panicked)));
            match swept {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(message = "Backups of deleted faults removed.", removed)
                }
                Err(error) => tracing::error!(message = "Removing old backups failed.", %error),
            }
        }
    });
}

/// Removes the backup folder of every fault the store no longer has (compacted, also by an
/// earlier run that stopped before removing its folders). A fault's folder is made only after
/// the fault is stored, and open faults are never compacted, so a folder still needed for an
/// undo is never removed. Returns how many folders went.
pub(super) fn remove_orphaned_backups(
    store: &Store,
    backups: &std::path::Path,
) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(backups) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let stored = store
            .has_fault(&id)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if !stored && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// SIGHUP asks for a reload, as with most daemons.
pub(super) fn spawn_sighup(control: mpsc::Sender<Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(message = "SIGHUP: reloading policies and patches.");
                    if control.send(Control::Reload).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(error) => tracing::warn!(message = "Cannot listen for SIGHUP.", %error),
    }
}
