//! The durable store: faults, their histories, the dedup and idempotency indexes, and the patch
//! registry, in one sled tree.
//!
//! **Invariant:** this is the only module that imports sled.
//!
//! Every write goes through one committer thread. A write is a closure run there, alone, so it
//! can read and then write without racing another writer (that is how the compare-and-swap on a
//! fault's sequence number and the fingerprint dedup stay correct). The committer then runs the
//! other writes that queued up meanwhile, each seeing the ones before it, and hands the group's
//! writes to the journal thread, which appends them to the write-ahead journal as one record
//! (see `store/journal.rs`) and syncs it once; only then does it apply them to sled (group
//! commit) and answer every caller, so an acknowledged write is on disk, and N concurrent
//! writers cost one record and one fsync, not N. A write that fails leaves nothing in its
//! group. The two stages overlap: while one group is synced and applied, the next runs in the
//! committer, which reads the group in flight from memory (it may not be in sled yet).
//!
//! sled itself is flushed only at checkpoints (a closed journal segment at a time); a start
//! replays the journal left since the last one. sled's own atomic batches are not used: each
//! makes sled write out its log buffer twice, which kept its I/O threads busy for a quarter of
//! phoenix's CPU under ingest load; the journal record is what makes a group atomic across a
//! crash.
//!
//! Key layout (one tree, so that one write can touch several kinds of record atomically):
//! - `f/{id}` → [`Fault`]; `h/{id}/{seq: u64 BE}` → [`HistoryEntry`], or the entries from
//!   `seq` on that one write added (a JSON array)
//! - `fp/{fingerprint}` → id of the *open* fault with that fingerprint (removed when it ends);
//!   `fl/{fingerprint}` → id of the last one that ended, for faults that may recur
//! - `oc/{app}` → open faults of the app; `rw/{app}` → its healing runs in the rate window
//! - `br/{name}` → a circuit [`Breaker`]; `a/{seq: u64 BE}` → an [`AuditEntry`]
//! - `ik/faults/{key}`, `ik/faults-of/{caller}/{key}` → [`IdempotencyRecord`] (see
//!   [`Idempotency`])
//! - `pv/{name}/{hash}` → [`PatchRecord`]; `pa/{name}` → active hash; `pm/{hash}` → module bytes
//! - `ps/{hash}` → the [`Policy`] a run was started with (blake3 of its JSON), shared by runs

pub mod backup;
mod commit;
mod faults;
mod journal;
mod keys;
mod records;
mod writer;

pub use faults::{
    CountedSteps, Decided, FaultChange, FaultFilter, Idempotency, IdempotencyRecord, Opening,
    Reported,
};
pub use records::{Activation, AuditEntry, Audited};

use commit::*;
use faults::*;
use keys::*;
use writer::*;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::oneshot;

use crate::core::breaker::{Breaker, Position};
use crate::core::fault::{Fault, FaultState, HistoryEntry, Report, Source, Timestamp, sortable_id};
use crate::core::policy::Policy;
use crate::core::record::PatchRecord;
use crate::store::journal::Journal;

/// How long `open` waits for another process to release the store's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an I/O or corruption error (message kept; sled errors are not Clone).
    #[error("store I/O error: {0}")]
    Io(String),
    /// A record could not be decoded: the data dir holds something this version cannot read.
    #[error("store record `{key}` is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// A fault changed since it was read (another writer advanced its sequence).
    #[error("fault {id} is at seq {actual}, expected {expected}")]
    Conflict {
        id: String,
        expected: u64,
        actual: u64,
    },
    /// No fault with this id.
    #[error("no fault {0}")]
    NotFound(String),
    /// The idempotency key was used before with a different request body.
    #[error("idempotency key `{0}` was already used with a different request")]
    IdempotencyMismatch(String),
    /// The app already has as many open faults as allowed; the report was not stored.
    #[error("app `{app}` already has {limit} open faults")]
    TooManyOpen { app: String, limit: u64 },
    /// The data dir's file system is full: the write was not made durable.
    #[error("the data dir is out of space: {0}")]
    DiskFull(String),
    /// The committer thread is gone (the daemon is shutting down).
    #[error("store is closed")]
    Closed,
}

fn io(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => sync_error(&io, "the store"),
        other => StoreError::Io(other.to_string()),
    }
}

/// An I/O error of `what`, as a [`StoreError`] (a full disk named as such).
fn sync_error(error: &std::io::Error, what: &str) -> StoreError {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::DiskFull(error.to_string())
        }
        _ => StoreError::Io(format!("{what}: {error}")),
    }
}

/// How long a disk with plenty of room is trusted to still have it.
const FREE_SPACE_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Free space the data dir needs before a store that hit a full disk is worth reopening.
const REOPEN_FREE_BYTES: u64 = 4 << 20;

/// The store. Cheap to share behind an `Arc`; reads go straight to sled, writes to the committer.
pub struct Store {
    /// Most open faults one app may have; a new one past it is refused.
    max_open_per_app: u64,
    db: sled::Db,
    jobs: mpsc::Sender<Work>,
    commits: Arc<Commits>,
    dir: std::path::PathBuf,
    min_free_bytes: u64,
    opened: std::time::Instant,
    /// Until when (ms after `opened`) the disk is known to have room (see `check_free_space`).
    plenty_until: AtomicU64,
    registry: std::sync::Mutex<RegistryCache>,
}

impl Drop for Store {
    /// Lets the committer end once it has run every job sent before (the journal thread holds
    /// a sender too, so the channel alone would not tell it).
    fn drop(&mut self) {
        let _ = self.jobs.send(Work::Close);
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails if another process holds it.
    ///
    /// The store's lock can outlive a killed phoenix for a moment: a child that phoenix was
    /// spawning when it died holds a copy of its file descriptors until that child's `exec`.
    /// So a held lock is retried for up to [`LOCK_WAIT`] before giving up.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        // Private (0700) before sled makes it with the umask's mode; sled's files are made
        // private once it has them open.
        crate::fs::create_private_dir(dir)
            .map_err(|e| sync_error(&e, "creating the store's folder"))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from the journal and the checkpoints' flushes, not a timer.
            .flush_every_ms(None);
        let started = std::time::Instant::now();
        let mut warned = false;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports a held lock only as text (an `Other` I/O error).
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    if !warned {
                        tracing::warn!(message = "The store is locked by another process; waiting.", dir = %dir.display());
                        warned = true;
                    }
                    thread::sleep(LOCK_RETRY);
                }
                Err(error) => return Err(io(error)),
            }
        };
        let journal_dir = dir.join("journal");
        let next_segment = replay_journal(&db, &journal_dir)?;
        crate::fs::make_private(dir)
            .map_err(|e| sync_error(&e, "making the store's files private"))?;
        let journal = Journal::start(&journal_dir, next_segment)
            .map_err(|e| sync_error(&e, "starting the store's journal"))?;
        let (jobs, receiver) = mpsc::channel::<Work>();
        // The committer hands a group over only when the journal has said it is free, so the
        // slot is always empty then.
        let (sealed, to_journal) = mpsc::sync_channel::<Sealed>(1);
        // The journal hands over a closed segment only when the checkpointer is idle.
        let (closed, to_checkpoint) = mpsc::sync_channel::<u64>(1);
        let tree: sled::Tree = (*db).clone();
        let commits = Arc::new(Commits {
            checkpoint_after_ms: AtomicU64::new(CHECKPOINT_INTERVAL.as_millis() as u64),
            ..Commits::default()
        });
        thread::Builder::new()
            .name("phoenix-store-commit".into())
            .spawn({
                let tree = tree.clone();
                move || commit_loop(&tree, &receiver, &sealed)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store committer: {e}")))?;
        thread::Builder::new()
            .name("phoenix-journal".into())
            .spawn({
                let (commits, free) = (Arc::clone(&commits), jobs.clone());
                move || journal_loop(journal, &tree, &to_journal, &closed, &free, &commits)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store's journal: {e}")))?;
        thread::Builder::new()
            .name("phoenix-checkpoint".into())
            .spawn({
                let (db, commits) = (db.clone(), Arc::clone(&commits));
                move || checkpoint_loop(&db, &journal_dir, &to_checkpoint, &commits)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store checkpointer: {e}")))?;
        Ok(Store {
            max_open_per_app: u64::MAX,
            db,
            jobs,
            commits,
            dir: dir.to_owned(),
            min_free_bytes: 0,
            opened: std::time::Instant::now(),
            plenty_until: AtomicU64::new(0),
            registry: std::sync::Mutex::default(),
        })
    }

    /// Syncs every journal record (fdatasync) and, at each checkpoint, sled's log file after
    /// sled's flush (the daemon's default, `store_fsync`). Without it, a journal record is only
    /// written to the kernel and sled's flush makes its log durable with `sync_file_range`:
    /// that survives phoenix being killed, not a power cut; with it, acknowledged writes also
    /// survive a power cut.
    pub fn fsync_each_flush(self) -> Result<Store, StoreError> {
        let path = self.dir.join("db");
        let log = std::fs::File::open(&path)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
        let _ = self.commits.fsync.set(log);
        Ok(self)
    }

    /// Refuses new reports while the data dir has less than `bytes` free: a disk that fills up
    /// then stops phoenix's intake, not its store (which takes no writes at all after one
    /// fails for lack of space). Healing runs in flight keep writing into the reserve.
    pub fn keep_free(mut self, bytes: u64) -> Store {
        self.min_free_bytes = bytes;
        self
    }

    /// Err when the data dir has less free space than [`Store::keep_free`] asks for.
    /// While the disk has at least twice the reserve free, it is looked at again only every
    /// [`FREE_SPACE_RECHECK`], not at every report.
    fn check_free_space(&self) -> Result<(), StoreError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let now = self.opened.elapsed().as_millis() as u64;
        if now < self.plenty_until.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Ok(fs) = rustix::fs::statvfs(&self.dir) else {
            return Ok(()); // Unknown: let the write itself tell.
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free >= self.min_free_bytes.saturating_mul(2) {
            let until = now + FREE_SPACE_RECHECK.as_millis() as u64;
            self.plenty_until.store(until, Ordering::Relaxed);
        }
        if free < self.min_free_bytes {
            return Err(StoreError::DiskFull(format!(
                "{} KiB free, below min_free_bytes ({} KiB)",
                free >> 10,
                self.min_free_bytes >> 10
            )));
        }
        Ok(())
    }

    /// Caps the open faults of each app (a flood of distinct reports cannot grow without bound).
    pub fn limit_open_faults(mut self, per_app: u64) -> Store {
        self.max_open_per_app = per_app;
        self
    }

    /// Runs `work` on the committer, journals its writes atomically, and returns once they are
    /// durable and applied. If `work` fails, nothing it wrote is kept.
    async fn commit<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |tree: &sled::Tree, group: &mut Group| {
            let mut writer = Writer {
                tree,
                group,
                own: Pending::new(),
                own_faults: Vec::new(),
                own_breakers: Vec::new(),
            };
            let result = work(&mut writer);
            if result.is_ok() {
                let (own, own_faults, own_breakers) = (
                    std::mem::take(&mut writer.own),
                    std::mem::take(&mut writer.own_faults),
                    std::mem::take(&mut writer.own_breakers),
                );
                group.pending.extend(own);
                group.faults.extend(own_faults);
                group.breakers.extend(own_breakers);
            }
            Box::new(move |stored: Result<(), StoreError>| {
                let _ = reply.send(result.and_then(|value| stored.map(|()| value)));
            })
        });
        self.jobs
            .send(Work::Job(job))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// How many group flushes the committer has made (each serves every write of its group).
    pub fn flushes(&self) -> u64 {
        self.commits.flushes.load(Ordering::Relaxed)
    }

    /// True when the store can still be read (the watchdog's test: a full disk is not a reason
    /// for systemd to restart phoenix, a store that cannot be read is).
    pub fn is_readable(&self) -> bool {
        self.db.get(b"f/").is_ok()
    }

    /// Why the store cannot take writes now (the last flush failed, or it cannot be read), for
    /// `/readyz`; None when it is healthy.
    pub fn problem(&self) -> Option<String> {
        if let Some(failure) = self.commits.failure() {
            return Some(failure.to_string());
        }
        if let Err(low) = self.check_free_space() {
            return Some(format!("{low}; new reports are refused"));
        }
        self.db.get(b"f/").err().map(|e| io(e).to_string())
    }

    /// True when a write or checkpoint failed for lack of space and the data dir has room
    /// again. The store takes no writes after such a failure until it is opened anew (see
    /// `Commits::failure`), and sled cannot be reopened inside the process that hit it; so
    /// phoenix restarts (see `daemon::serve`): the store then replays its journal to its last
    /// durable state, which holds everything acknowledged.
    pub fn recovered_from_full_disk(&self) -> bool {
        let full = matches!(self.commits.failure(), Some(StoreError::DiskFull(_)));
        full && rustix::fs::statvfs(&self.dir)
            .is_ok_and(|fs| fs.f_bavail.saturating_mul(fs.f_frsize) >= REOPEN_FREE_BYTES)
    }
}

/// Reads of faults: straight from sled, never through the committer.
impl Store {
    pub fn fault(&self, id: &str) -> Result<Option<Fault>, StoreError> {
        get(&self.db, &fault_key(id))
    }

    /// Whether fault `id` is stored, without decoding it.
    pub fn has_fault(&self, id: &str) -> Result<bool, StoreError> {
        self.db.contains_key(fault_key(id)).map_err(io)
    }

    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.db.scan_prefix(history_prefix(id)) {
            let (key, value) = item.map_err(io)?;
            // One entry, or the several steps of one write (a JSON array).
            if value.first() == Some(&b'[') {
                entries.extend(decode::<Vec<HistoryEntry>>(&key, &value)?);
            } else {
                entries.push(decode(&key, &value)?);
            }
        }
        Ok(entries)
    }

    /// Faults in id (= creation) order, filtered, one page at a time.
    pub fn list_faults(&self, filter: &FaultFilter) -> Result<Vec<Fault>, StoreError> {
        let items: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (&filter.after, filter.newest_first) {
                // The first key after `f/{after}`: append a zero byte.
                (Some(after), false) => {
                    let mut start = fault_key(after);
                    start.push(0);
                    Box::new(self.db.range(start..b"f0".to_vec()))
                }
                (None, false) => Box::new(self.db.range(b"f/".to_vec()..b"f0".to_vec())),
                (Some(after), true) => {
                    Box::new(self.db.range(b"f/".to_vec()..fault_key(after)).rev())
                }
                (None, true) => Box::new(self.db.range(b"f/".to_vec()..b"f0".to_vec()).rev()),
            };
        let mut faults = Vec::new();
        for item in items {
            let (key, value) = item.map_err(io)?;
            let fault: Fault = decode(&key, &value)?;
            if filter
                .state
                .as_ref()
                .is_some_and(|s| s != fault.state.name())
                || filter.app.as_ref().is_some_and(|a| *a != fault.app)
                || filter
                    .apps
                    .as_ref()
                    .is_some_and(|apps| !apps.contains(&fault.app))
            {
                continue;
            }
            faults.push(fault);
            if faults.len() >= filter.limit {
                break;
            }
        }
        Ok(faults)
    }

    /// Ids of every fault that has not reached a terminal state (read from the fingerprint
    /// index, which holds exactly those).
    pub fn open_fault_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = scan(&self.db, b"fp/")?;
        ids.sort();
        Ok(ids)
    }

    /// Open faults of `app`.
    pub fn open_faults_of(&self, app: &str) -> Result<u64, StoreError> {
        Ok(get::<u64>(&self.db, &open_count_key(app))?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fault::FailReason;
    use std::sync::Arc;

    fn report(app: &str) -> Report {
        Report::sample(app, "k", &[])
    }

    /// The fault a first report of `app` opens.
    async fn reported(store: &Store, app: &str) -> Fault {
        store
            .report(report(app), Source::Api, None)
            .await
            .unwrap()
            .fault
    }

    /// An opening that writes `steps` as they are.
    fn closing(steps: &[(FaultState, String)]) -> Decided {
        Decided {
            opening: Some(Opening::Steps(steps.to_vec(), Box::new(|_| {}))),
            recur_to: None,
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_matching_report_counts_an_occurrence_of_the_open_fault() {
        let (_dir, store) = open();
        let first = store.report(report("a"), Source::Api, None).await.unwrap();
        let second = store.report(report("a"), Source::Api, None).await.unwrap();
        let other = store.report(report("b"), Source::Api, None).await.unwrap();
        assert!(first.created && !second.created && other.created);
        assert_eq!(second.fault.id, first.fault.id);
        assert_eq!(second.fault.occurrences, 2);
        assert_ne!(other.fault.id, first.fault.id);
        assert_eq!(store.open_fault_ids().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_app_cannot_open_more_faults_than_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20)
            .unwrap()
            .limit_open_faults(2);
        let one = store
            .report(Report::sample("a", "k1", &[]), Source::Api, None)
            .await
            .unwrap()
            .fault;
        store
            .report(Report::sample("a", "k2", &[]), Source::Api, None)
            .await
            .unwrap();
        // A repeat of an open fault is not a new one: still accepted.
        assert!(
            store
                .report(Report::sample("a", "k1", &[]), Source::Api, None)
                .await
                .is_ok()
        );
        let third = store
            .report(Report::sample("a", "k3", &[]), Source::Api, None)
            .await;
        assert!(
            matches!(third, Err(StoreError::TooManyOpen { limit: 2, .. })),
            "{third:?}"
        );
        assert!(
            store
                .report(Report::sample("b", "k3", &[]), Source::Api, None)
                .await
                .is_ok(),
            "per app"
        );
        store
            .append(&one.id, 1, FaultState::Healed, "healed".into(), |_| {})
            .await
            .unwrap();
        assert_eq!(store.open_faults_of("a").unwrap(), 1);
        assert!(
            store
                .report(Report::sample("a", "k3", &[]), Source::Api, None)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_report_closed_at_once_is_one_write_of_the_engine_s_steps_and_holds_nothing_open() {
        let (_dir, store) = open();
        let failed = FaultState::Failed(FailReason::NoPolicy);
        let steps = vec![
            (FaultState::Analyzing, "picked up".to_string()),
            (failed, "no policy matches".to_string()),
        ];
        let key = Some(Idempotency {
            scope: None,
            key: "k1".into(),
            request_hash: "hash".into(),
        });
        let closed = store
            .report_opening(report("a"), Source::Api, key.clone(), closing(&steps))
            .await
            .unwrap();
        assert!(closed.created);
        let fault = &closed.fault;
        assert_eq!((fault.state, fault.seq), (failed, 3));
        assert!(fault.closed_at.is_some());
        assert_eq!(store.fault(&fault.id).unwrap().as_ref(), Some(fault));
        let history: Vec<(u64, FaultState, String)> = store
            .history(&fault.id)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.state, e.detail))
            .collect();
        assert_eq!(
            history,
            [
                (1, FaultState::Detected, "reported".to_string()),
                (2, FaultState::Analyzing, "picked up".to_string()),
                (3, failed, "no policy matches".to_string()),
            ]
        );
        assert_eq!(store.open_fault_ids().unwrap(), Vec::<String>::new());
        assert_eq!(store.open_faults_of("a").unwrap(), 0);
        // A replay answers the closed fault; the same report without a key opens a new one.
        let replay = store
            .report_opening(report("a"), Source::Api, key, closing(&steps))
            .await
            .unwrap();
        assert!(replay.replayed && replay.fault == closed.fault);
        let again = store
            .report_opening(report("a"), Source::Api, None, closing(&steps))
            .await
            .unwrap();
        assert!(again.created && again.fault.id != fault.id);

        // An occurrence of an open fault is only counted, never closed by these steps.
        let open = store.report(report("b"), Source::Api, None).await.unwrap();
        let repeat = store
            .report_opening(report("b"), Source::Api, None, closing(&steps))
            .await
            .unwrap();
        assert!(!repeat.created);
        assert_eq!(repeat.fault.id, open.fault.id);
        assert_eq!(
            (repeat.fault.state, repeat.fault.occurrences),
            (FaultState::Detected, 2)
        );
    }

    #[tokio::test]
    async fn a_report_can_open_its_fault_with_a_counted_run_in_the_same_write() {
        let (_dir, store) = open();
        let steps = vec![
            (FaultState::Analyzing, "picked up".to_string()),
            (FaultState::Patching, "attempt 1".to_string()),
            (
                FaultState::Testing,
                "plan applied (0 of 0 actions)".to_string(),
            ),
        ];
        let window = std::time::Duration::from_secs(60);
        let run = |steps: Vec<(FaultState, String)>| {
            let counted: CountedSteps = Box::new(move |runs| {
                runs.add(Timestamp::now(), window, true);
                let change: FaultChange = Box::new(|f| f.attempts = 1);
                Ok((steps, change))
            });
            Decided {
                opening: Some(Opening::CountingRun(counted)),
                recur_to: None,
            }
        };
        let counted_runs = |store: &Store| {
            get::<crate::core::window::WindowCounts>(&store.db, &app_runs_key("a"))
                .unwrap()
                .map(|runs| runs.attempts())
        };
        let flushes = store.flushes();
        let opened = store
            .report_opening(report("a"), Source::Api, None, run(steps.clone()))
            .await
            .unwrap();
        assert_eq!(store.flushes() - flushes, 1, "one write");
        assert!(opened.created);
        assert_eq!(opened.opened_with, steps);
        let fault = &opened.fault;
        assert_eq!(
            (fault.state, fault.seq, fault.attempts),
            (FaultState::Testing, 4, 1)
        );
        assert_eq!(store.fault(&fault.id).unwrap().as_ref(), Some(fault));
        let history: Vec<(u64, FaultState)> = store
            .history(&fault.id)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.state))
            .collect();
        assert_eq!(
            history,
            [
                (1, FaultState::Detected),
                (2, FaultState::Analyzing),
                (3, FaultState::Patching),
                (4, FaultState::Testing),
            ]
        );
        assert_eq!(counted_runs(&store), Some(1));
        assert_eq!(store.open_fault_ids().unwrap(), vec![fault.id.clone()]);

        // An occurrence of the open fault neither runs the opening nor counts a run.
        let repeat = store
            .report_opening(report("a"), Source::Api, None, run(steps))
            .await
            .unwrap();
        assert!(!repeat.created && repeat.opened_with.is_empty());
        assert_eq!(
            (
                repeat.fault.id.as_str(),
                repeat.fault.state,
                repeat.fault.occurrences
            ),
            (fault.id.as_str(), FaultState::Testing, 2)
        );
        assert_eq!(counted_runs(&store), Some(1));

        // An opening that fails leaves nothing: no fault, no count.
        let failing: CountedSteps = Box::new(move |runs| {
            runs.add(Timestamp::now(), window, true);
            Err(StoreError::Corrupt {
                key: "test".into(),
                message: "refused".into(),
            })
        });
        let refused = store
            .report_opening(
                report("b"),
                Source::Api,
                None,
                Decided {
                    opening: Some(Opening::CountingRun(failing)),
                    recur_to: None,
                },
            )
            .await;
        assert!(matches!(refused, Err(StoreError::Corrupt { .. })));
        assert_eq!(store.open_faults_of("b").unwrap(), 0);
        assert_eq!(store.open_fault_ids().unwrap(), vec![fault.id.clone()]);
    }

    #[tokio::test]
    async fn breaker_positions_follow_every_applied_write_and_only_those() {
        let (dir, store) = open();
        let now = Timestamp::now();
        assert_eq!(store.breaker_position("global").unwrap(), None);
        // Known as "no record" above; the write must replace that.
        store
            .update_breaker("global", move |b| b.trip("alice", "maintenance", now))
            .await
            .unwrap();
        assert_eq!(
            store.breaker_position("global").unwrap(),
            Some(Position::Open)
        );
        // A job that fails after writing a breaker leaves nothing, position included.
        let refused = store
            .commit(move |w| {
                let mut breaker = Breaker::new("global");
                breaker.reset("bob", "done", now);
                w.put_breaker(&breaker)?;
                Err::<(), _>(StoreError::Closed)
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(
            store.breaker_position("global").unwrap(),
            Some(Position::Open)
        );
        store
            .update_breakers(vec!["global".into(), "policy:p".into()], move |_, b| {
                b.reset("bob", "done", now)
            })
            .await
            .unwrap();
        for name in ["global", "policy:p"] {
            assert_eq!(
                store.breaker_position(name).unwrap(),
                Some(Position::Closed)
            );
        }
        // Read back from the tree by a store that knows nothing yet.
        drop(store);
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        assert_eq!(
            store.breaker_position("policy:p").unwrap(),
            Some(Position::Closed)
        );
    }

    #[tokio::test]
    async fn a_transition_and_the_outcome_it_feeds_to_breakers_are_written_together_or_not_at_all()
    {
        let (_dir, store) = open();
        let fault = reported(&store, "a").await;
        let names = || vec!["global".to_string(), "policy:p".to_string()];
        let feed = |b: &mut Breaker| {
            let config = crate::core::breaker::BreakerConfig::default();
            b.record("f1", true, Timestamp::now(), &config);
            b.recent.attempts()
        };
        // A stale sequence: neither the transition nor the outcome is recorded.
        let stale = store
            .append_steps_feeding_breakers(
                &fault.id,
                fault.seq + 1,
                vec![(FaultState::Analyzing, "picked up".into())],
                |_| {},
                names(),
                move |_, b| feed(b),
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
        assert_eq!(store.breaker("global").unwrap(), None);
        assert_eq!(store.history(&fault.id).unwrap().len(), 1);

        let (stored, attempts) = store
            .append_steps_feeding_breakers(
                &fault.id,
                fault.seq,
                vec![(FaultState::Analyzing, "picked up".into())],
                |_| {},
                names(),
                move |_, b| feed(b),
            )
            .await
            .unwrap();
        assert_eq!(attempts, vec![1, 1]);
        assert_eq!(stored.state, FaultState::Analyzing);
        assert_eq!(store.history(&fault.id).unwrap().len(), 2);
        for name in ["global", "policy:p"] {
            assert_eq!(store.breaker(name).unwrap().unwrap().recent.attempts(), 1);
        }
    }

    #[tokio::test]
    async fn an_audited_step_writes_its_audit_entry_with_it_or_neither() {
        let (_dir, store) = open();
        let fault = reported(&store, "a").await;
        let audited = || Audited {
            actor: "phoenix".into(),
            action: "action_applied".into(),
            target: fault.id.clone(),
            detail: "exec cleanup (p): exit 0".into(),
        };
        let step = || vec![(FaultState::Analyzing, "picked up".to_string())];
        let stale = store
            .append_steps_audited(&fault.id, fault.seq + 1, step(), |_| {}, audited())
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
        assert!(store.audit_log(None, 10).unwrap().is_empty());
        store
            .append_steps_audited(&fault.id, fault.seq, step(), |_| {}, audited())
            .await
            .unwrap();
        let log = store.audit_log(None, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].action.as_str(), log[0].target.as_str()),
            ("action_applied", fault.id.as_str())
        );
        assert_eq!(store.history(&fault.id).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_terminal_fault_releases_its_fingerprint() {
        let (_dir, store) = open();
        let first = reported(&store, "a").await;
        let failed = FaultState::Failed(FailReason::NoPolicy);
        store
            .append(&first.id, 1, failed, "no policy".into(), |_| {})
            .await
            .unwrap();
        let again = store.report(report("a"), Source::Api, None).await.unwrap();
        assert!(again.created);
        assert_ne!(again.fault.id, first.id);
        assert_eq!(store.open_fault_ids().unwrap(), vec![again.fault.id]);
    }

    #[tokio::test]
    async fn the_committer_s_fingerprint_index_agrees_with_the_tree_across_reopening() {
        let (dir, store) = open();
        let first = reported(&store, "a").await;
        // A job that fails after claiming a fingerprint leaves it free.
        let fp_key = fingerprint_key(&report("b").fingerprint());
        let refused = store
            .commit(move |w| {
                w.put(&fp_key, &"nobody")?;
                Err::<(), _>(StoreError::Closed)
            })
            .await;
        assert!(refused.is_err());
        assert!(
            store
                .report(report("b"), Source::Api, None)
                .await
                .unwrap()
                .created
        );

        // A new committer loads the open faults' fingerprints: a report joins the open fault.
        drop(store);
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let again = store.report(report("a"), Source::Api, None).await.unwrap();
        assert!(!again.created, "deduplicated after reopening");
        assert_eq!(
            (again.fault.id.as_str(), again.fault.occurrences),
            (first.id.as_str(), 2)
        );

        // Closing releases the fingerprint in the index too.
        let failed = FaultState::Failed(FailReason::NoPolicy);
        store
            .append(&first.id, 1, failed, "no policy".into(), |_| {})
            .await
            .unwrap();
        let third = store.report(report("a"), Source::Api, None).await.unwrap();
        assert!(third.created);
        assert_ne!(third.fault.id, first.id);
    }

    #[test]
    fn the_fingerprint_index_turns_off_rather_than_grow_past_its_bound() {
        let value = sled::IVec::from(&b"\"id\""[..]);
        let full: HashMap<Vec<u8>, sled::IVec> = (0..FINGERPRINT_INDEX_MAX)
            .map(|i| (format!("fp/{i}").into_bytes(), value.clone()))
            .collect();
        let mut index = FingerprintIndex(Some(full));
        // Rewriting a known key and removing one keep it on.
        index.learn(b"fp/7", Some(&value));
        index.learn(b"fp/8", None);
        index.learn(b"fp/8", Some(&value));
        assert_eq!(index.lookup(b"fp/8"), Some(Some(&value)));
        assert_eq!(
            index.lookup(b"f/8"),
            None,
            "other keys are not its to answer"
        );
        index.learn(b"fp/new", Some(&value));
        assert_eq!(index.lookup(b"fp/7"), None, "off: lookups go to the tree");
    }

    #[tokio::test]
    async fn a_recurrence_soon_after_healing_reopens_the_fault() {
        let (_dir, store) = open();
        let recurring = |window_ms: u64| Report {
            reopen_within: Some(std::time::Duration::from_millis(window_ms)),
            ..report("prog")
        };
        // Where the engine says a recurrence goes (the machine's `Recur`).
        let recur = || Decided {
            opening: None,
            recur_to: Some(FaultState::Detected),
        };
        let first = store
            .report_opening(recurring(60_000), Source::Supervisor, None, recur())
            .await
            .unwrap()
            .fault;
        store
            .append(&first.id, 1, FaultState::Healed, "healed".into(), |_| {})
            .await
            .unwrap();
        let again = store
            .report_opening(recurring(60_000), Source::Supervisor, None, recur())
            .await
            .unwrap();
        assert!(again.reopened && !again.created);
        assert_eq!(
            (
                again.fault.id.as_str(),
                again.fault.state,
                again.fault.occurrences
            ),
            (first.id.as_str(), FaultState::Detected, 2)
        );
        assert_eq!(store.open_fault_ids().unwrap(), vec![first.id.clone()]);
        let last = store.history(&first.id).unwrap().pop().unwrap();
        assert!(last.detail.starts_with("reopened"), "{}", last.detail);

        // A failed fault is not reopened, nor one healed longer ago than the window.
        let failed = FaultState::Failed(FailReason::VerifyFailed);
        store
            .append(&first.id, again.fault.seq, failed, "failed".into(), |_| {})
            .await
            .unwrap();
        let fresh = store
            .report_opening(recurring(60_000), Source::Supervisor, None, recur())
            .await
            .unwrap();
        assert!(fresh.created && fresh.fault.id != first.id);
        store
            .append(
                &fresh.fault.id,
                1,
                FaultState::Healed,
                "healed".into(),
                |_| {},
            )
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let late = store
            .report_opening(recurring(5), Source::Supervisor, None, recur())
            .await
            .unwrap();
        assert!(late.created && late.fault.id != fresh.fault.id);
        // Without the engine's word, a recurrence is never reopened.
        store
            .append(
                &late.fault.id,
                1,
                FaultState::Healed,
                "healed".into(),
                |_| {},
            )
            .await
            .unwrap();
        let undecided = store
            .report(recurring(60_000), Source::Supervisor, None)
            .await
            .unwrap();
        assert!(undecided.created && !undecided.reopened);
    }

    #[tokio::test]
    async fn append_is_a_compare_and_swap_on_the_sequence() {
        let (_dir, store) = open();
        let fault = reported(&store, "a").await;
        let moved = store
            .append(&fault.id, 1, FaultState::Analyzing, "begin".into(), |_| {})
            .await
            .unwrap();
        assert_eq!(moved.seq, 2);
        let stale = store
            .append(&fault.id, 1, FaultState::Analyzing, "again".into(), |_| {})
            .await;
        assert!(
            matches!(
                stale,
                Err(StoreError::Conflict {
                    expected: 1,
                    actual: 2,
                    ..
                })
            ),
            "{stale:?}"
        );
        let history = store.history(&fault.id).unwrap();
        let states: Vec<_> = history.iter().map(|h| (h.seq, h.state)).collect();
        assert_eq!(
            states,
            vec![(1, FaultState::Detected), (2, FaultState::Analyzing)]
        );
        // Several steps in one write: one record, every entry listed in order, and the next
        // write's entry after them.
        let steps = vec![
            (FaultState::Patching, "plan ready".to_string()),
            (FaultState::Testing, "nothing to apply".to_string()),
        ];
        let tested = store
            .append_steps(&fault.id, 2, steps, |_| {})
            .await
            .unwrap();
        assert_eq!((tested.seq, tested.state), (4, FaultState::Testing));
        store
            .append(&fault.id, 4, FaultState::Healed, "verified".into(), |_| {})
            .await
            .unwrap();
        let history = store.history(&fault.id).unwrap();
        let states: Vec<_> = history.iter().map(|h| (h.seq, h.state)).collect();
        assert_eq!(
            states,
            vec![
                (1, FaultState::Detected),
                (2, FaultState::Analyzing),
                (3, FaultState::Patching),
                (4, FaultState::Testing),
                (5, FaultState::Healed)
            ]
        );
        assert_eq!(history[3].detail, "nothing to apply");
        let records = store.db.scan_prefix(history_prefix(&fault.id)).count();
        assert_eq!(records, 4);
    }

    #[tokio::test]
    async fn idempotency_keys_replay_or_refuse() {
        let (_dir, store) = open();
        let key = |hash: &str| {
            Some(Idempotency {
                scope: None,
                key: "k1".into(),
                request_hash: hash.into(),
            })
        };
        let first = store
            .report(report("a"), Source::Api, key("h1"))
            .await
            .unwrap();
        let replay = store
            .report(report("a"), Source::Api, key("h1"))
            .await
            .unwrap();
        assert!(replay.replayed && replay.created);
        assert_eq!(
            replay.fault, first.fault,
            "the replay returns the first response, not a new count"
        );
        let mismatch = store.report(report("b"), Source::Api, key("h2")).await;
        assert!(matches!(mismatch, Err(StoreError::IdempotencyMismatch(_))));
        assert_eq!(
            store.fault(&first.fault.id).unwrap().unwrap().occurrences,
            1
        );
    }

    #[tokio::test]
    async fn an_idempotency_key_is_its_callers_own() {
        let (_dir, store) = open();
        let key = |scope: Option<&str>, hash: &str| {
            Some(Idempotency {
                scope: scope.map(str::to_owned),
                key: "shared".into(),
                request_hash: hash.into(),
            })
        };
        let mine = store
            .report(report("a"), Source::Api, key(Some("ci"), "h1"))
            .await
            .unwrap();
        // Another token's use of the same key is its own request: neither a mismatch nor a
        // replay of the first caller's answer.
        let theirs = store
            .report(report("b"), Source::Api, key(Some("deploy"), "h2"))
            .await
            .unwrap();
        assert!(theirs.created && !theirs.replayed);
        assert_ne!(theirs.fault.id, mine.fault.id);
        let anonymous = store
            .report(report("c"), Source::Api, key(None, "h3"))
            .await
            .unwrap();
        assert!(anonymous.created && !anonymous.replayed);
        // Each caller still gets its own replay, and its own mismatch.
        let replay = store
            .report(report("a"), Source::Api, key(Some("ci"), "h1"))
            .await
            .unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.fault.id, mine.fault.id);
        let mismatch = store
            .report(report("z"), Source::Api, key(Some("deploy"), "h9"))
            .await;
        assert!(matches!(mismatch, Err(StoreError::IdempotencyMismatch(_))));
    }

    #[tokio::test]
    async fn compaction_deletes_ended_faults_with_their_idempotency_keys() {
        let (_dir, store) = open();
        let key = |k: &str| {
            Some(Idempotency {
                scope: None,
                key: k.into(),
                request_hash: format!("hash-{k}"),
            })
        };
        let ended = store
            .report(report("a"), Source::Api, key("k1"))
            .await
            .unwrap();
        let open = store
            .report(report("b"), Source::Api, key("k2"))
            .await
            .unwrap();
        let failed = FaultState::Failed(FailReason::NoPolicy);
        store
            .append(&ended.fault.id, 1, failed, "over".into(), |_| {})
            .await
            .unwrap();

        let removed = store.compact(Timestamp(u64::MAX)).await.unwrap();

        assert_eq!(removed, 1);
        assert!(store.fault(&ended.fault.id).unwrap().is_none());
        assert!(store.history(&ended.fault.id).unwrap().is_empty());
        assert!(
            get::<IdempotencyRecord>(&store.db, b"ik/faults/k1")
                .unwrap()
                .is_none()
        );
        assert!(store.fault(&open.fault.id).unwrap().is_some());
        assert!(
            get::<IdempotencyRecord>(&store.db, b"ik/faults/k2")
                .unwrap()
                .is_some()
        );
        // The key is free again: the same request now opens a new fault.
        let again = store
            .report(report("a"), Source::Api, key("k1"))
            .await
            .unwrap();
        assert!(again.created && !again.replayed);
        assert_ne!(again.fault.id, ended.fault.id);
    }

    #[tokio::test]
    async fn concurrent_reports_of_one_fingerprint_open_one_fault() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .report(report("same"), Source::Api, None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            created += usize::from(task.await.unwrap().created);
        }
        assert_eq!(created, 1);
        let ids = store.open_fault_ids().unwrap();
        assert_eq!(store.fault(&ids[0]).unwrap().unwrap().occurrences, 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let writers = 200;
        let tasks: Vec<_> = (0..writers)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .report(report(&format!("app{i}")), Source::Api, None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().created);
        }
        assert_eq!(store.open_fault_ids().unwrap().len(), writers);
        let flushes = store.flushes();
        assert!(
            flushes < writers as u64 / 2,
            "{flushes} flushes for {writers} writes: no group commit"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_group_sees_the_writes_of_the_group_still_being_journaled() {
        // Every report of one app reads and rewrites its open-fault count: a group that read
        // the tree while the group before was still being synced would lose increments.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20)
            .unwrap()
            .fsync_each_flush()
            .unwrap();
        let store = Arc::new(store);
        let (writers, reports_each) = (8, 40);
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..reports_each {
                        let mut report = report("a");
                        report.kind = format!("kind{writer}-{i}");
                        let reported = store.report(report, Source::Api, None).await.unwrap();
                        assert!(reported.created);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let groups = store.flushes();
        assert!(
            groups > 2,
            "{groups} groups: none was in flight while the next ran"
        );
        assert_eq!(store.open_faults_of("a").unwrap(), writers * reports_each);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_sees_the_writes_of_the_group_not_yet_applied() {
        // While group 1 (a fault of app x) is being applied, slowly, group 2 (x again) runs in
        // the committer: it must read x's open count from group 1, in memory, not from the
        // tree. Group 3 (app y) runs while group 2 is applied.
        let (_dir, store) = open();
        store.commits.apply_delay_ms.store(400, Ordering::Relaxed);
        let store = Arc::new(store);
        let send = |app: &'static str, kind: &'static str| {
            let store = store.clone();
            let mut report = report(app);
            report.kind = kind.into();
            tokio::spawn(async move { store.report(report, Source::Api, None).await })
        };
        let first = send("x", "one");
        journaled(&store, 1).await;
        let second = send("x", "two");
        journaled(&store, 2).await;
        let third = send("y", "three");
        for task in [first, second, third] {
            assert!(task.await.unwrap().unwrap().created);
        }
        assert_eq!(store.flushes(), 3, "one group each");
        assert_eq!(store.open_faults_of("x").unwrap(), 2);
        assert_eq!(store.open_faults_of("y").unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_past_a_full_group_wait_for_the_next_one() {
        let (_dir, store) = open();
        store.commits.apply_delay_ms.store(50, Ordering::Relaxed);
        let store = Arc::new(store);
        let writers = 3 * MAX_GROUP;
        let tasks: Vec<_> = (0..writers)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut report = report("a");
                    report.kind = format!("kind{i}");
                    store.report(report, Source::Api, None).await
                })
            })
            .collect();
        for task in tasks {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(120), task);
            assert!(answered.await.unwrap().unwrap().unwrap().created);
        }
        assert_eq!(store.open_faults_of("a").unwrap(), writers as u64);
        assert!(
            store.flushes() >= 3,
            "groups hold at most {MAX_GROUP} writes"
        );
    }

    #[tokio::test]
    async fn a_write_that_fails_leaves_nothing_while_its_group_commits() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        // Many at once, so that failing and succeeding writes share groups.
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("t/{i}").into_bytes();
                    store
                        .commit(move |w| {
                            let seen: Option<u32> = w.get(b"t/shared")?;
                            w.put(b"t/shared", &(seen.unwrap_or(0) + 1))?;
                            w.put(&key, &i)?;
                            if i % 2 == 1 {
                                return Err(StoreError::NotFound(format!("refused {i}")));
                            }
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().is_ok(), i % 2 == 0);
        }
        for i in 0..200u32 {
            let stored: Option<u32> = get(&store.db, format!("t/{i}").as_bytes()).unwrap();
            assert_eq!(stored, (i % 2 == 0).then_some(i), "t/{i}");
        }
        // Each successful write saw every successful write before it, in and across groups.
        assert_eq!(get::<u32>(&store.db, b"t/shared").unwrap(), Some(100));
    }

    #[tokio::test]
    async fn the_committers_fault_cache_follows_only_writes_that_succeeded() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let id = store
            .report(report("a"), Source::Api, None)
            .await
            .unwrap()
            .fault
            .id;
        let key = fault_key(&id);
        // Many jobs on one fault at once (so they share groups): each adds one occurrence to
        // the fault it reads; the odd ones then fail, and their change must not be seen.
        let tasks: Vec<_> = (0..100u32)
            .map(|i| {
                let (store, key, id) = (store.clone(), key.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .commit(move |w| {
                            let mut fault = existing_fault(w, &key, &id)?;
                            fault.occurrences += 1;
                            w.put_fault(&key, &fault)?;
                            if i % 2 == 1 {
                                return Err(StoreError::NotFound(format!("refused {i}")));
                            }
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await.unwrap();
        }
        let seen_by_committer = committer_view(&store, &id).await;
        assert_eq!(seen_by_committer.occurrences, 51);
        assert_eq!(store.fault(&id).unwrap().unwrap(), seen_by_committer);
        // Alone in its group: a failed write is not what the next job reads.
        let (failing_key, failing_id) = (key.clone(), id.clone());
        let failed = store
            .commit(move |w| {
                let mut fault = existing_fault(w, &failing_key, &failing_id)?;
                fault.occurrences = 500;
                w.put_fault(&failing_key, &fault)?;
                Err::<(), _>(StoreError::NotFound("refused".into()))
            })
            .await;
        assert!(failed.is_err());
        // A change made and then refused (annotate) leaves the cached fault as it was.
        let refused = store
            .annotate(&id, |fault| {
                fault.occurrences = 1000;
                Err::<String, _>("no")
            })
            .await
            .unwrap();
        assert_eq!(refused, Err("no"));
        let after = store
            .annotate(&id, |fault| Ok::<_, ()>(format!("{}", fault.occurrences)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.occurrences, 51);
        // Written raw (as a restore does), the record is read from the tree again.
        let mut replaced = after.clone();
        replaced.occurrences = 7;
        let bytes = serde_json::to_vec(&replaced).unwrap();
        let raw_key = key.clone();
        store
            .commit(move |w| {
                w.put_raw(&raw_key, &bytes);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(committer_view(&store, &id).await.occurrences, 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fault_taken_from_the_cache_by_a_failed_job_is_read_from_the_group_in_flight() {
        // Group 1 adds an occurrence and is held before its apply; meanwhile a job takes the
        // fault out of the committer's cache and fails, and the next job must read group 1's
        // write from memory, not the tree's older record.
        let (_dir, store) = open();
        let id = store
            .report(report("a"), Source::Api, None)
            .await
            .unwrap()
            .fault
            .id;
        store.commits.apply_delay_ms.store(400, Ordering::Relaxed);
        let store = Arc::new(store);
        let before = store.flushes();
        let add = |fail: bool| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                store
                    .commit(move |w| {
                        let key = fault_key(&id);
                        let mut fault = existing_fault(w, &key, &id)?;
                        fault.occurrences += 1;
                        w.put_fault(&key, &fault)?;
                        if fail {
                            return Err(StoreError::NotFound("refused".into()));
                        }
                        Ok(())
                    })
                    .await
            }
        };
        let added = tokio::spawn(add(false));
        journaled(&store, before + 1).await;
        // Polled in this order by one task, the two jobs reach the committer in this order,
        // while group 1 is held.
        let (refused, seen) = tokio::join!(add(true), committer_view(&store, &id));
        assert!(added.await.unwrap().is_ok());
        assert!(refused.is_err());
        assert_eq!(seen.occurrences, 2);
    }

    /// Waits until the journal thread has taken `groups` groups in all (bounded).
    async fn journaled(store: &Store, groups: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.flushes() < groups {
            assert!(
                std::time::Instant::now() < deadline,
                "group {groups} never journaled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// The fault as a job on the committer reads it (through the committer's cache).
    async fn committer_view(store: &Store, id: &str) -> Fault {
        let id = id.to_owned();
        store
            .commit(move |w| existing_fault(w, &fault_key(&id), &id))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn patch_reads_see_every_acknowledged_registry_write() {
        use crate::core::record::Provenance;
        let (_dir, store) = open();
        let record = |version: &str, hash: &str| PatchRecord {
            schema: 1,
            name: "p".into(),
            version: version.into(),
            hash: hash.into(),
            description: String::new(),
            author: "a".into(),
            claimed_author: None,
            confidence: 0.9,
            source: Provenance::Api,
            registered_at: Timestamp::now(),
            check_problems: Vec::new(),
            tests: Vec::new(),
            first_use_approved: false,
            built_from: None,
        };
        // Absent, and read (so cached) as absent: registering must still show.
        assert_eq!(store.active_patch_hash("p").unwrap(), None);
        assert_eq!(store.patch("p", "h1").unwrap(), None);
        store
            .put_patch(record("1.0.0", "h1"), b"m1".to_vec(), Activation::Always)
            .await
            .unwrap();
        assert_eq!(store.active_patch_hash("p").unwrap().as_deref(), Some("h1"));
        assert_eq!(store.patch("p", "h1").unwrap().unwrap().version, "1.0.0");
        store
            .put_patch(record("2.0.0", "h2"), b"m2".to_vec(), Activation::Always)
            .await
            .unwrap();
        assert_eq!(store.active_patch_hash("p").unwrap().as_deref(), Some("h2"));
        store.set_active_patch("p", "h1").await.unwrap();
        assert_eq!(store.active_patch_hash("p").unwrap().as_deref(), Some("h1"));
        assert!(!store.patch("p", "h1").unwrap().unwrap().first_use_approved);
        store.mark_first_use_approved("p", "h1").await.unwrap();
        assert!(store.patch("p", "h1").unwrap().unwrap().first_use_approved);
        // Raw writes (a restore) too.
        store
            .commit(|w| {
                w.put_raw(b"pa/p", b"\"h2\"");
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.active_patch_hash("p").unwrap().as_deref(), Some("h2"));
    }

    #[tokio::test]
    async fn only_faults_that_may_recur_are_remembered_by_fingerprint_once_closed() {
        let (_dir, store) = open();
        for (app, source) in [("api", Source::Api), ("prog", Source::Supervisor)] {
            let fault = store.report(report(app), source, None).await.unwrap().fault;
            store
                .append(&fault.id, 1, FaultState::Healed, "ended".into(), |_| {})
                .await
                .unwrap();
        }
        let remembered: Vec<String> = store
            .db
            .scan_prefix(b"fl/")
            .values()
            .map(|id| decode::<String>(b"fl/", &id.unwrap()).unwrap())
            .collect();
        assert_eq!(remembered.len(), 1);
        let fault = store.fault(&remembered[0]).unwrap().unwrap();
        assert_eq!(
            (fault.app.as_str(), fault.source),
            ("prog", Source::Supervisor)
        );
    }

    /// The journal segments of the store in `dir`, by name, with their contents.
    fn journal_files(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                (
                    path.file_name().unwrap().to_owned(),
                    std::fs::read(&path).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn put_journal_files(dir: &Path, files: &[(std::ffi::OsString, Vec<u8>)]) {
        for (name, bytes) in files {
            std::fs::write(dir.join("journal").join(name), bytes).unwrap();
        }
    }

    /// Opens the store in `dir` again once the one before has let go of it.
    fn reopen(dir: &Path) -> Store {
        Store::open(dir, 8 << 20).unwrap()
    }

    #[tokio::test]
    async fn acknowledged_writes_are_replayed_from_the_journal_whatever_sled_kept() {
        let (dir, store) = open();
        store
            .commits
            .checkpoint_after_ms
            .store(u64::MAX, Ordering::Relaxed);
        let closed = reported(&store, "a").await;
        store
            .append_steps(
                &closed.id,
                closed.seq,
                vec![(FaultState::Failed(FailReason::NoPolicy), "gave up".into())],
                |_| {},
            )
            .await
            .unwrap();
        let open_fault = reported(&store, "b").await;
        let now = Timestamp::now();
        store
            .update_breaker("b", move |b| b.trip("alice", "maintenance", now))
            .await
            .unwrap();
        let written = store.snapshot().await.unwrap();
        // What a crash leaves of the journal: every acknowledged record (nothing checkpointed).
        let journal = journal_files(&dir.path().join("db"));
        drop(store);

        // Replayed onto a store that kept none of it: everything is back.
        let empty = tempfile::tempdir().unwrap();
        drop(reopen(&empty.path().join("db")));
        put_journal_files(&empty.path().join("db"), &journal);
        let recovered = reopen(&empty.path().join("db"));
        assert_eq!(recovered.snapshot().await.unwrap(), written);
        assert_eq!(
            recovered.open_fault_ids().unwrap(),
            vec![open_fault.id.clone()]
        );
        // ...and the replayed journal is gone, made durable in sled's own files.
        assert!(
            journal_files(&empty.path().join("db"))
                .iter()
                .all(|(_, bytes)| bytes.is_empty())
        );
        drop(recovered);
        assert_eq!(
            reopen(&empty.path().join("db")).snapshot().await.unwrap(),
            written
        );

        // Replayed onto the store that kept all of it: nothing changes.
        put_journal_files(&dir.path().join("db"), &journal);
        assert_eq!(
            reopen(&dir.path().join("db")).snapshot().await.unwrap(),
            written
        );
    }

    #[tokio::test]
    async fn a_group_whose_apply_fails_stops_the_store_and_is_replayed_whole_at_the_next_start() {
        let (dir, store) = open();
        // Checkpoints as often as possible: none may take the failed group's record away.
        store
            .commits
            .checkpoint_after_ms
            .store(0, Ordering::Relaxed);
        let kept = reported(&store, "a").await;
        store.commits.fail_next_apply.store(true, Ordering::Relaxed);
        // A new fault is several keys (fault, history, fingerprint, open count): sled gets the
        // first only.
        let failed = store.report(report("b"), Source::Api, None).await;
        assert!(failed.is_err(), "{failed:?}");
        let refused = store.report(report("c"), Source::Api, None).await;
        assert!(refused.is_err(), "a write after a failed one: {refused:?}");
        assert!(store.problem().is_some_and(|p| p.contains("injected")));
        drop(store);

        // The journal holds the failed group whole (not acknowledged, but written): replayed,
        // it is all there, and nothing after it is.
        let recovered = reopen(&dir.path().join("db"));
        assert_eq!(recovered.open_faults_of("a").unwrap(), 1);
        assert_eq!(recovered.open_faults_of("b").unwrap(), 1);
        assert_eq!(recovered.open_faults_of("c").unwrap(), 0);
        let open = recovered.open_fault_ids().unwrap();
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open.contains(&kept.id));
        for id in &open {
            let fault = recovered.fault(id).unwrap().expect("listed fault exists");
            assert_eq!(recovered.history(id).unwrap().len(), 1, "{fault:?}");
        }
        // A repeat of b counts an occurrence of the replayed fault.
        let repeat = recovered
            .report(report("b"), Source::Api, None)
            .await
            .unwrap();
        assert!(!repeat.created);
        assert_eq!(repeat.fault.occurrences, 2);
    }

    #[tokio::test]
    async fn a_checkpoint_deletes_the_journal_it_made_redundant() {
        let (dir, store) = open();
        store
            .commits
            .checkpoint_after_ms
            .store(0, Ordering::Relaxed);
        let fault = reported(&store, "a").await;
        let segments = || crate::store::journal::segments(&dir.path().join("db/journal")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // The segment that took the report is checkpointed within a second (the journal
        // looks at least that often), leaving only the empty one after it.
        while segments().first().map(|(number, _)| *number) == Some(1) {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: {:?}",
                segments()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(store.problem().is_none());
        drop(store);
        std::fs::remove_dir_all(dir.path().join("db/journal")).unwrap();
        let reopened = reopen(&dir.path().join("db"));
        assert_eq!(reopened.fault(&fault.id).unwrap().unwrap().app, "a");
    }

    #[test]
    fn a_job_s_scan_shows_the_writes_not_yet_in_the_tree_over_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        for key in ["p/a", "p/b", "p/c", "q/z"] {
            db.insert(key, key).unwrap();
        }
        let overlay: BTreeMap<Vec<u8>, Option<sled::IVec>> = [
            ("p/0", Some("new p/0")),
            ("p/b", None),
            ("p/c", Some("new p/c")),
            ("p/d", Some("new p/d")),
            ("p/e", None),
        ]
        .into_iter()
        .map(|(key, value)| (key.into(), value.map(sled::IVec::from)))
        .collect();
        let merged = Merged {
            tree: db.scan_prefix("p/").peekable(),
            overlay: overlay.into_iter().peekable(),
        };
        let seen: Vec<(String, String)> = merged
            .map(|item| {
                let (key, value) = item.unwrap();
                let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
                (text(&key), text(&value))
            })
            .collect();
        let expected = [
            ("p/0", "new p/0"),
            ("p/a", "p/a"),
            ("p/c", "new p/c"),
            ("p/d", "new p/d"),
        ];
        assert_eq!(
            seen,
            expected
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec()
        );
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(&dir.path().join("db"), 8 << 20)
                .unwrap()
                .fsync_each_flush()
                .unwrap();
            store
                .report(report("a"), Source::Api, None)
                .await
                .unwrap()
                .fault
                .id
        };
        // The committer thread still holds the old handle for a moment; `open` waits for it.
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        assert_eq!(store.fault(&id).unwrap().unwrap().app, "a");
        assert_eq!(store.open_fault_ids().unwrap(), vec![id]);
    }

    #[tokio::test]
    async fn listing_pages_and_filters() {
        let (_dir, store) = open();
        for app in ["a", "b", "c", "d"] {
            store.report(report(app), Source::Api, None).await.unwrap();
        }
        let page = store
            .list_faults(&FaultFilter {
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            page.iter().map(|f| f.app.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let filter = FaultFilter {
            limit: 2,
            after: Some(page[1].id.clone()),
            ..Default::default()
        };
        let next = store.list_faults(&filter).unwrap();
        assert_eq!(
            next.iter().map(|f| f.app.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        let by_app = FaultFilter {
            limit: 10,
            app: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(store.list_faults(&by_app).unwrap().len(), 1);
        let by_state = FaultFilter {
            limit: 10,
            state: Some("healed".into()),
            ..Default::default()
        };
        assert!(store.list_faults(&by_state).unwrap().is_empty());
        let newest = FaultFilter {
            limit: 3,
            newest_first: true,
            ..Default::default()
        };
        let page = store.list_faults(&newest).unwrap();
        assert_eq!(
            page.iter().map(|f| f.app.as_str()).collect::<Vec<_>>(),
            ["d", "c", "b"]
        );
        let older = FaultFilter {
            after: Some(page[2].id.clone()),
            ..newest
        };
        assert_eq!(
            store
                .list_faults(&older)
                .unwrap()
                .iter()
                .map(|f| f.app.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
    }
}
