//! The input watcher: notices changes under policies/ and patches/ and asks for a reload.
//!
//! It never acts itself. notify's callback (on notify's own thread) only forwards "something
//! changed" into a channel; a task debounces bursts (editors write a file in several steps, or
//! replace it by rename) and then sends one [`Control::Reload`]. Directories are watched rather
//! than files, so replaced files are seen.

use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// What the daemon's control loop can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read policies and patches.
    Reload,
}

/// How long the inputs must be quiet before a reload: long enough to cover an editor's save
/// burst, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    pub source: notify::Error,
}

/// Keeps the watch alive; dropping it stops watching.
pub struct InputWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `dirs` (recursively) and sends `Control::Reload` on `control` after each debounced
/// burst of changes.
pub fn watch(dirs: &[PathBuf], control: mpsc::Sender<Control>) -> Result<InputWatcher, WatchError> {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Reads (Linux reports opens and closes-without-write) change nothing.
            Ok(event) => !matches!(event.kind, EventKind::Access(_)),
            // An error (e.g. the kernel queue overflowed) may hide changes: reload to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = changed.send(());
        }
    })
    .map_err(|source| WatchError {
        path: PathBuf::new(),
        source,
    })?;
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError {
                path: dir.clone(),
                source,
            })?;
    }
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Quiet period: keep absorbing events until none arrives for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if control.send(Control::Reload).await.is_err() {
                return;
            }
        }
    });
    Ok(InputWatcher { _watcher: watcher })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_gives_one_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (control, mut reloads) = mpsc::channel(8);
        let _watcher = watch(&[dir.path().to_owned()], control).unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join("p.toml"), format!("version {i}")).unwrap();
        }
        let first = tokio::time::timeout(Duration::from_secs(30), reloads.recv()).await;
        assert_eq!(first.unwrap(), Some(Control::Reload));
        // Nothing more after the quiet period: the burst was one reload.
        let second = tokio::time::timeout(DEBOUNCE * 4, reloads.recv()).await;
        assert!(second.is_err(), "a second reload for one burst: {second:?}");
    }

    #[tokio::test]
    async fn a_file_replaced_by_rename_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), "old").unwrap();
        let (control, mut reloads) = mpsc::channel(8);
        let _watcher = watch(&[dir.path().to_owned()], control).unwrap();
        std::fs::write(dir.path().join(".p.toml.swp"), "new").unwrap();
        std::fs::rename(dir.path().join(".p.toml.swp"), dir.path().join("p.toml")).unwrap();
        let reload = tokio::time::timeout(Duration::from_secs(30), reloads.recv()).await;
        assert_eq!(reload.unwrap(), Some(Control::Reload));
    }
}
