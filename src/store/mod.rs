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
//! (see [`crate::store::journal`]) and syncs it once; only then does it apply them to sled (group
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
pub mod journal;

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

/// Most writes applied before one flush; bounds the latency a single group can add.
const MAX_GROUP: usize = 512;

/// A journal segment is checkpointed once it holds this many bytes...
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ...or is this old (a checkpoint is one sled flush: it writes what the segment's writes
/// changed, so rare checkpoints write less per fault; and the journal left to replay at a
/// start stays small).
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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

/// What the store's threads share with readers: how many groups were made durable, and why
/// the store takes no more writes, if it does not.
#[derive(Default)]
struct Commits {
    flushes: AtomicU64,
    /// Why a group could not be journaled or applied. Set once, for good: the journal must
    /// hold every write sled holds, in order, so no later group may be applied after a
    /// failed one; phoenix must restart (it does by itself once a full disk has room).
    failure: std::sync::Mutex<Option<StoreError>>,
    /// `failure` is set (read per group, without the lock).
    failed: std::sync::atomic::AtomicBool,
    /// Bumped after each applied group that wrote a patch record or an active version.
    registry_generation: AtomicU64,
    /// Breaker positions by name (None: no record), for the engine's check of every fault
    /// (two sled reads and parses per fault otherwise). The journal thread sets a breaker's
    /// position after applying a write to it, before acknowledging that write, and forgets them
    /// all when an apply fails; readers add what they read only where nothing is known yet (a
    /// write applied meanwhile has set it, and wins).
    breaker_positions: std::sync::Mutex<HashMap<String, Option<Position>>>,
    /// Why the last checkpoint failed (cleared by the next that succeeds).
    checkpoint_failure: std::sync::Mutex<Option<StoreError>>,
    /// A closed journal segment is with the checkpointer: the journal keeps to its current
    /// segment until that is done (so at most two segments exist at a time).
    checkpointing: std::sync::atomic::AtomicBool,
    /// How old (ms) a journal segment with records gets before it is checkpointed
    /// ([`CHECKPOINT_INTERVAL`]; tests change it).
    checkpoint_after_ms: AtomicU64,
    /// sled's log file, when each journal record and checkpoint is to be synced
    /// (`store_fsync`).
    fsync: std::sync::OnceLock<std::fs::File>,
    /// Tests: the next group's apply writes its first key only, then fails (as a sled write
    /// error part-way through would), after its journal record is written.
    #[cfg(test)]
    fail_next_apply: std::sync::atomic::AtomicBool,
    /// Tests: the journal thread waits this long (ms) before applying each group.
    #[cfg(test)]
    apply_delay_ms: AtomicU64,
}

impl Commits {
    fn breaker_positions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Position>>> {
        // Only plain map updates happen under this lock: recover from poisoning.
        self.breaker_positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a group could not be journaled or applied (the first such error stays).
    fn fail(&self, error: &StoreError) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(message = "Store write failed; it is not acknowledged, and the store takes no more writes until phoenix restarts.", %error);
            *failure = Some(error.clone());
            self.breaker_positions().clear();
            self.failed.store(true, Ordering::Release);
        }
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why no more groups may be journaled or applied, if a group failed.
    fn failed(&self) -> Option<StoreError> {
        if !self.has_failed() {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the store takes no writes now: a group that failed, else the last checkpoint.
    fn failure(&self) -> Option<StoreError> {
        [&self.failure, &self.checkpoint_failure]
            .into_iter()
            .find_map(|failure| failure.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// How long a disk with plenty of room is trusted to still have it.
const FREE_SPACE_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Free space the data dir needs before a store that hit a full disk is worth reopening.
const REOPEN_FREE_BYTES: u64 = 4 << 20;

/// An `Idempotency-Key` with what it is checked against: whose key it is (a token's name; None
/// without authentication) and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub scope: Option<String>,
    pub key: String,
    pub request_hash: String,
}

impl Idempotency {
    /// Where its record is kept: `ik/faults/{key}` without a scope (as before scopes), else
    /// `ik/faults-of/{blake3(scope), 16 hex}/{key}`, so that one caller's key is never
    /// another's.
    fn store_key(&self) -> Vec<u8> {
        match &self.scope {
            None => format!("ik/faults/{}", self.key),
            Some(scope) => format!(
                "ik/faults-of/{}/{}",
                &blake3::hash(scope.as_bytes()).to_hex()[..16],
                self.key
            ),
        }
        .into_bytes()
    }
}

/// What an idempotent request returned the first time; replayed for the same key and body.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub fault: Fault,
    pub created: bool,
}

/// The outcome of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub fault: Fault,
    /// True when this report opened a new fault (and so a healing run must start).
    pub created: bool,
    /// True when this is a replay of an earlier request with the same idempotency key.
    pub replayed: bool,
    /// True when a recently healed fault was reopened (it recurred): a run must start again.
    pub reopened: bool,
    /// The steps written after `detected` in the same write, when the report opened a new
    /// fault with an [`Opening`] (empty otherwise).
    pub opened_with: Vec<(FaultState, String)>,
}

/// A change the engine makes to a fault record in the write that records its steps.
pub type FaultChange = Box<dyn FnOnce(&mut Fault) + Send>;

/// Decides a run's steps (and change) from the app's counts of healing runs, which it updates:
/// the per-app rate limit, counted in the write that starts the run.
pub type CountedSteps = Box<
    dyn FnOnce(
            &mut crate::core::window::WindowCounts,
        ) -> Result<(Vec<(FaultState, String)>, FaultChange), StoreError>
        + Send,
>;

/// What the engine concluded at its first look at a report, written with the report when it
/// opens a new fault (see [`Store::report_opening`]): analysis has no side effect to guard,
/// so the fault's first write can already say where analysis led.
pub enum Opening {
    /// These steps, after this change (a fault closed at once, or waiting for a person).
    Steps(Vec<(FaultState, String)>, FaultChange),
    /// A run that goes ahead unless the app's rate limit holds it (steps decided with the
    /// count, as [`Store::append_counting_run`] does).
    CountingRun(CountedSteps),
}

/// Whether a newly registered patch version becomes the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Yes (a version that passed its checks).
    Always,
    /// Only if the name has no active version yet (a version that failed its checks: it must not
    /// replace a good one, but a first version is kept active so faults fail with its reason).
    IfNoneActive,
}

/// One line of the audit log: who did what to what, when. Append-only.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Increasing; pass the last one seen as `after` to page.
    pub seq: u64,
    pub at: Timestamp,
    /// A token's name, `phoenix` for the daemon itself, or `anonymous` when auth is off.
    pub actor: String,
    /// e.g. `approve`, `reject`, `patch_upload`, `patch_rollback`, `breaker_trip`,
    /// `breaker_reset`, `action_applied`, `reload`.
    pub action: String,
    /// What it was done to: a fault id, a patch name, a breaker name…
    pub target: String,
    pub detail: String,
}

/// Filters for [`Store::list_faults`].
#[derive(Debug, Clone, Default)]
pub struct FaultFilter {
    pub state: Option<String>,
    pub app: Option<String>,
    /// Only these apps (a reporter's scope); None: all.
    pub apps: Option<Vec<String>>,
    /// Only ids strictly after this one in the listing order (the previous page's `next`).
    pub after: Option<String>,
    pub limit: usize,
    /// Newest first (ids descending) instead of oldest first.
    pub newest_first: bool,
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A group handed to the journal thread: its writes, what readers must learn once they are
/// applied, and its writers' answers.
struct Sealed {
    writes: Arc<Pending>,
    registry_changed: bool,
    breakers: Vec<(String, Position)>,
    completions: Vec<Completion>,
}
type Job = Box<dyn FnOnce(&sled::Tree, &mut Group) -> Completion + Send>;

/// What the committer is told: a job to run, that the journal thread can take the next group
/// (it has applied the one it had), or that the store was dropped.
enum Work {
    Job(Job),
    JournalFree,
    Close,
}

/// Writes not yet in sled, by key (`None`: removed): a group's, journaled as one record.
type Pending = BTreeMap<Vec<u8>, Option<sled::IVec>>;

/// The writes of the jobs run so far in this group, the group in flight, and the caches of
/// what the committer sees (see [`FaultCache`], [`FingerprintIndex`]).
#[derive(Default)]
struct Group {
    pending: Pending,
    /// The writes of the group handed over last, read before the tree: the journal thread may
    /// not have applied them yet. Every earlier group is in the tree (the committer hands a
    /// group over only once the journal thread has applied the one before).
    inflight: Arc<Pending>,
    /// Fault records written by this group's jobs, in order: the fault written, or `None`
    /// when written in a form the cache cannot follow (raw bytes, a removal).
    faults: Vec<(Vec<u8>, Option<Box<Fault>>)>,
    cache: FaultCache,
    /// A patch record or an active version was written by this group's jobs.
    registry_changed: bool,
    /// Breaker positions written by this group's jobs, for readers once applied.
    breakers: Vec<(String, Position)>,
    /// Where [`Writer::put`] serializes records (reused: it keeps its capacity).
    scratch: Vec<u8>,
    fingerprints: FingerprintIndex,
}

/// The fingerprint index (`fp/` keys: the open fault of each fingerprint) as the committer
/// sees it, kept by the committer: a report's dedup lookup and a closing fault's release would
/// otherwise search the tree, mostly for a key that is not there (two lookups per fault, ~5%
/// of phoenix's CPU in P3). Loaded when the committer starts and learned from every sealed
/// group, like [`FaultCache`]. Off (`None`: lookups go to the tree) once it would hold more
/// than `FINGERPRINT_INDEX_MAX` open faults.
#[derive(Default)]
struct FingerprintIndex(Option<HashMap<Vec<u8>, sled::IVec>>);

/// Most open faults the fingerprint index follows (about 150 bytes each).
const FINGERPRINT_INDEX_MAX: usize = 65_536;

impl FingerprintIndex {
    fn load(tree: &sled::Tree) -> FingerprintIndex {
        let mut index = HashMap::new();
        for item in tree.scan_prefix(b"fp/") {
            let Ok((key, value)) = item else {
                return FingerprintIndex(None);
            };
            if index.len() >= FINGERPRINT_INDEX_MAX {
                return FingerprintIndex(None);
            }
            index.insert(key.to_vec(), value);
        }
        FingerprintIndex(Some(index))
    }

    /// What the tree holds at `key`: `None` when the index cannot say (not a fingerprint key,
    /// or the index is off); `Some(None)` when the tree has no such key.
    fn lookup(&self, key: &[u8]) -> Option<Option<&sled::IVec>> {
        let index = self.0.as_ref()?;
        key.starts_with(b"fp/").then(|| index.get(key))
    }

    /// Learns a write of a sealed group.
    fn learn(&mut self, key: &[u8], value: Option<&sled::IVec>) {
        let Some(index) = self.0.as_mut() else {
            return;
        };
        if !key.starts_with(b"fp/") {
            return;
        }
        match value {
            Some(value) if index.len() < FINGERPRINT_INDEX_MAX || index.contains_key(key) => {
                index.insert(key.to_vec(), value.clone());
            }
            Some(_) => self.0 = None,
            None => {
                index.remove(key);
            }
        }
    }
}

/// Open faults as the committer sees them, decoded: a transition reads its fault here instead
/// of looking it up in sled and parsing its JSON (a third of the committer's time went there).
/// Only the committer touches it, and it learns every write of a fault record when that
/// write's group is sealed, so it never disagrees with what the committer reads. Bounded:
/// cleared when full; ended faults are not kept (they are rarely written again).
#[derive(Default)]
struct FaultCache(HashMap<Vec<u8>, Fault>);

/// Largest serialization buffer the committer keeps between writes (records are ~0.5-1 KiB).
const SCRATCH_KEPT: usize = 16 << 10;

/// Most faults the committer keeps decoded (about 1 KiB each).
const FAULT_CACHE_ENTRIES: usize = 1024;

impl FaultCache {
    fn keep(&mut self, key: Vec<u8>, fault: Fault) {
        if fault.state.is_terminal() {
            self.0.remove(&key);
            return;
        }
        if self.0.len() >= FAULT_CACHE_ENTRIES && !self.0.contains_key(&key) {
            self.0.clear();
        }
        self.0.insert(key, fault);
    }

    /// Learns the faults a sealed group wrote.
    fn learn(&mut self, written: Vec<(Vec<u8>, Option<Box<Fault>>)>) {
        for (key, fault) in written {
            match fault {
                Some(fault) => self.keep(key, *fault),
                None => {
                    self.0.remove(&key);
                }
            }
        }
    }
}

fn is_fault_key(key: &[u8]) -> bool {
    key.starts_with(b"f/")
}

/// Keys that [`RegistryCache`] mirrors: patch records and active versions.
fn is_registry_key(key: &[u8]) -> bool {
    key.starts_with(b"pv/") || key.starts_with(b"pa/")
}

/// Patch records and active versions as last read, for the engine's analysis of every fault
/// (which otherwise read and parsed them from sled each time). Valid for one `generation` of
/// [`Commits::registry_generation`], which the committer bumps after applying any write to
/// those keys and before acknowledging it.
#[derive(Default)]
struct RegistryCache {
    generation: u64,
    active: HashMap<String, Option<String>>,
    records: HashMap<(String, String), Option<PatchRecord>>,
}

/// A write in progress: reads see the store as committed so far, including the writes of the
/// jobs before it in its group; its own writes are kept apart until it succeeds, so a job that
/// fails leaves nothing behind.
pub struct Writer<'a> {
    tree: &'a sled::Tree,
    group: &'a mut Group,
    own: Pending,
    /// This job's fault writes, for the cache (see [`Group::faults`]).
    own_faults: Vec<(Vec<u8>, Option<Box<Fault>>)>,
    /// This job's breaker writes (see [`Group::breakers`]).
    own_breakers: Vec<(String, Position)>,
}

impl Writer<'_> {
    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let known = self
            .own
            .get(key)
            .or_else(|| self.group.pending.get(key))
            .or_else(|| self.group.inflight.get(key));
        match known
            .map(Option::as_ref)
            .or_else(|| self.group.fingerprints.lookup(key))
        {
            Some(Some(bytes)) => decode(key, bytes).map(Some),
            Some(None) => Ok(None),
            None => get(self.tree, key),
        }
    }

    /// The fault record at `key`: from this group's writes, else the committer's cache, else
    /// the group in flight or the tree. Taken out of the cache (a read is almost always
    /// followed by a write of the fault, which the cache learns once its group is sealed): one
    /// copy fewer per transition.
    fn fault(&mut self, key: &[u8]) -> Result<Option<Fault>, StoreError> {
        if self.own.contains_key(key) || self.group.pending.contains_key(key) {
            return self.get(key);
        }
        if let Some(fault) = self.group.cache.0.remove(key) {
            return Ok(Some(fault));
        }
        // Not cached (never read, or taken out by a job that then failed): the groups in
        // flight may hold a write of it that the tree does not have yet.
        self.get(key)
    }

    /// Writes a fault record (and tells the cache, once applied).
    fn put_fault(&mut self, key: &[u8], fault: &Fault) -> Result<(), StoreError> {
        self.put(key, fault)?;
        // The cache keeps no ended fault (it would drop this copy at once): no clone for one.
        if is_fault_key(key)
            && !fault.state.is_terminal()
            && let Some(last) = self.own_faults.last_mut()
        {
            last.1 = Some(Box::new(fault.clone()));
        }
        Ok(())
    }

    /// Writes a breaker record (and tells readers its position, once applied).
    fn put_breaker(&mut self, breaker: &Breaker) -> Result<(), StoreError> {
        self.put(&breaker_key(&breaker.name), breaker)?;
        self.own_breakers
            .push((breaker.name.clone(), breaker.position));
        Ok(())
    }

    fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StoreError> {
        // Serialized into the group's buffer, which keeps its capacity, then copied once into
        // the value sled takes: one allocation of the record's size instead of a growing
        // vector (glibc consolidates its free lists at every allocation of 1 KiB or more)
        // and a copy made by sled.
        let scratch = &mut self.group.scratch;
        scratch.clear();
        serde_json::to_writer(&mut *scratch, value).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into(),
            message: e.to_string(),
        })?;
        let bytes = sled::IVec::from(scratch.as_slice());
        if scratch.capacity() > SCRATCH_KEPT {
            *scratch = Vec::new(); // a rare large record: do not hold its size for good
        }
        self.written(key, Some(bytes));
        Ok(())
    }

    fn put_raw(&mut self, key: &[u8], value: &[u8]) {
        self.written(key, Some(sled::IVec::from(value)));
    }

    fn remove(&mut self, key: &[u8]) {
        self.written(key, None);
    }

    fn written(&mut self, key: &[u8], value: Option<sled::IVec>) {
        if is_fault_key(key) {
            // Unknown to the cache unless `put_fault` says what was written.
            self.own_faults.push((key.to_vec(), None));
        }
        self.own.insert(key.to_vec(), value);
    }

    /// The records under `prefix` in key order, as this job sees them without its own
    /// writes: the tree, overlaid with the group in flight and this group's earlier writes.
    fn scan(&self, prefix: &[u8]) -> Merged {
        let mut overlay: BTreeMap<Vec<u8>, Option<sled::IVec>> = BTreeMap::new();
        for layer in [&*self.group.inflight, &self.group.pending] {
            let under = layer
                .range::<[u8], _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(key, _)| key.starts_with(prefix));
            overlay.extend(under.map(|(key, value)| (key.clone(), value.clone())));
        }
        Merged {
            tree: self.tree.scan_prefix(prefix).peekable(),
            overlay: overlay.into_iter().peekable(),
        }
    }
}

/// A scan of the tree merged with writes not yet in it (see [`Writer::scan`]). Owns what it
/// walks, so the job may write while scanning.
struct Merged {
    tree: std::iter::Peekable<sled::Iter>,
    overlay:
        std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, Option<sled::IVec>>>,
}

impl Iterator for Merged {
    type Item = Result<(sled::IVec, sled::IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let overlay_first = match (self.tree.peek(), self.overlay.peek()) {
                (_, None) => return self.tree.next().map(|item| item.map_err(io)),
                (Some(Err(_)), _) => return self.tree.next().map(|item| item.map_err(io)),
                (Some(Ok((tree_key, _))), Some((key, _))) => {
                    if key.as_slice() == tree_key.as_ref() {
                        self.tree.next(); // the overlay's write replaces it
                        true
                    } else {
                        key.as_slice() < tree_key.as_ref()
                    }
                }
                (None, Some(_)) => true,
            };
            if !overlay_first {
                return self.tree.next().map(|item| item.map_err(io));
            }
            if let Some((key, Some(value))) = self.overlay.next() {
                return Some(Ok((sled::IVec::from(key), value)));
            } // a removal: nothing to show
        }
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(io)? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some),
    }
}

/// Every record under `prefix`, in key order.
fn scan<T: DeserializeOwned>(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(prefix)
        .map(|item| {
            let (key, value) = item.map_err(io)?;
            decode(&key, &value)
        })
        .collect()
}

/// `prefix` followed by `name`, sized once (the committer builds several keys per write;
/// `format!` cost it ~2% of its time).
fn prefixed(prefix: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.len() + 8);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn fault_key(id: &str) -> Vec<u8> {
    prefixed("f/", id)
}

fn history_prefix(id: &str) -> Vec<u8> {
    let mut prefix = prefixed("h/", id);
    prefix.push(b'/');
    prefix
}

fn history_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = history_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn fingerprint_key(fingerprint: &str) -> Vec<u8> {
    prefixed("fp/", fingerprint)
}

/// The stored fault `id` (at `key`), or `NotFound`.
fn existing_fault(w: &mut Writer<'_>, key: &[u8], id: &str) -> Result<Fault, StoreError> {
    w.fault(key)?
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

/// How many faults of `app` are open.
fn open_count_key(app: &str) -> Vec<u8> {
    prefixed("oc/", app)
}

/// Adds `delta` to `app`'s open-fault count; returns the new count.
fn count_open(w: &mut Writer<'_>, app: &str, delta: i64) -> Result<u64, StoreError> {
    let key = open_count_key(app);
    let count: u64 = w.get(&key)?.unwrap_or(0);
    let count = count.saturating_add_signed(delta);
    w.put(&key, &count)?;
    Ok(count)
}

/// The healing runs counted against `app`'s rate limit (a [`crate::core::window::WindowCounts`]).
fn app_runs_key(app: &str) -> Vec<u8> {
    prefixed("rw/", app)
}

/// Runs `counted` on `app`'s counts of healing runs and writes them back.
fn count_runs<T>(
    w: &mut Writer<'_>,
    app: &str,
    counted: impl FnOnce(&mut crate::core::window::WindowCounts) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let key = app_runs_key(app);
    let mut runs = w.get(&key)?.unwrap_or_default();
    let decided = counted(&mut runs)?;
    w.put(&key, &runs)?;
    Ok(decided)
}

/// Appends `steps` to fault `id` if its sequence is still `expected_seq` (see
/// [`Store::append_steps`]).
fn append_in<F>(
    w: &mut Writer<'_>,
    id: &str,
    expected_seq: u64,
    steps: Vec<(FaultState, String)>,
    change: F,
) -> Result<Fault, StoreError>
where
    F: FnOnce(&mut Fault),
{
    let key = fault_key(id);
    let mut fault = existing_fault(w, &key, id)?;
    if fault.seq != expected_seq {
        return Err(StoreError::Conflict {
            id: id.to_owned(),
            expected: expected_seq,
            actual: fault.seq,
        });
    }
    change(&mut fault);
    record_steps(w, fault, steps)
}

/// Writes `fault` after appending `steps` to its history (the last state is the fault's), and
/// releases its fingerprint if that closes it.
fn record_steps(
    w: &mut Writer<'_>,
    mut fault: Fault,
    steps: Vec<(FaultState, String)>,
) -> Result<Fault, StoreError> {
    let (id, key) = (fault.id.clone(), fault_key(&fault.id));
    let id = id.as_str();
    let at = Timestamp::now();
    let first_seq = fault.seq + 1;
    let mut entries: Vec<HistoryEntry> = steps
        .into_iter()
        .map(|(state, detail)| {
            fault.seq += 1;
            fault.state = state;
            HistoryEntry {
                seq: fault.seq,
                state,
                at,
                detail,
            }
        })
        .collect();
    // The steps of one write share one record (one key fewer per extra step in sled).
    match entries.len() {
        0 => {}
        1 => w.put(&history_key(id, first_seq), &entries.remove(0))?,
        _ => w.put(&history_key(id, first_seq), &entries)?,
    }
    if fault.state.is_terminal() {
        count_open(w, &fault.app, -1)?;
        fault.closed_at = Some(at);
        let fp_key = fingerprint_key(&fault.fingerprint);
        if w.get::<String>(&fp_key)?.as_deref() == Some(id) {
            w.remove(&fp_key);
        }
        // Only faults that may be reopened need to be found by fingerprint once closed (a key
        // per fingerprint, spread over the whole tree: one random leaf per closed fault).
        if fault.source.may_recur() {
            w.put(&last_closed_key(&fault.fingerprint), &id)?;
        }
    }
    w.put_fault(&key, &fault)?;
    Ok(fault)
}

/// What an audit entry says: who did what to what.
#[derive(Debug, Clone)]
pub struct Audited {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Writes `entry` under the next audit sequence number.
fn audit_in(w: &mut Writer<'_>, db: &sled::Db, entry: Audited) -> Result<(), StoreError> {
    let seq = db.generate_id().map_err(io)?;
    let entry = AuditEntry {
        seq,
        at: Timestamp::now(),
        actor: entry.actor,
        action: entry.action,
        target: entry.target,
        detail: entry.detail,
    };
    let mut key = b"a/".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    w.put(&key, &entry)
}

/// Runs `change` on each breaker of `names` (created closed if new) and writes it back.
fn update_breakers_in<T>(
    w: &mut Writer<'_>,
    names: &[String],
    mut change: impl FnMut(&str, &mut Breaker) -> T,
) -> Result<Vec<T>, StoreError> {
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let mut breaker = w
            .get::<Breaker>(&breaker_key(name))?
            .unwrap_or_else(|| Breaker::new(name));
        results.push(change(name, &mut breaker));
        w.put_breaker(&breaker)?;
    }
    Ok(results)
}

fn breaker_key(name: &str) -> Vec<u8> {
    prefixed("br/", name)
}

fn policy_snapshot_key(hash: &str) -> Vec<u8> {
    prefixed("ps/", hash)
}

/// The last fault with this fingerprint that ended, for reopening a recurrence (kept only for
/// faults whose source may recur, see [`Source::may_recur`]).
fn last_closed_key(fingerprint: &str) -> Vec<u8> {
    prefixed("fl/", fingerprint)
}

/// The last closed fault with `fingerprint`, if it was healed less than `window` ago.
fn reopenable(
    w: &mut Writer<'_>,
    fingerprint: &str,
    window: std::time::Duration,
    now: Timestamp,
) -> Result<Option<Fault>, StoreError> {
    let Some(id) = w.get::<String>(&last_closed_key(fingerprint))? else {
        return Ok(None);
    };
    let Some(fault) = w.fault(&fault_key(&id))? else {
        return Ok(None);
    };
    let recent = fault
        .closed_at
        .is_some_and(|closed| now.0.saturating_sub(closed.0) <= window.as_millis() as u64);
    Ok((fault.state == FaultState::Healed && recent).then_some(fault))
}

/// Reopens a healed fault that recurred: back to `detected` (the machine's `Recur`), one more
/// occurrence, a fresh run.
fn reopen(w: &mut Writer<'_>, mut fault: Fault, now: Timestamp) -> Result<Fault, StoreError> {
    let healed_ago = fault
        .closed_at
        .map(|c| now.0.saturating_sub(c.0))
        .unwrap_or(0);
    let state = crate::core::machine::next(fault.state, crate::core::machine::Event::Recur)
        .map_err(|e| StoreError::Corrupt {
            key: fault.id.clone(),
            message: e.to_string(),
        })?;
    fault.state = state;
    fault.occurrences += 1;
    fault.last_seen = now;
    fault.closed_at = None;
    fault.resolved_at = None;
    fault.run = None;
    fault.seq += 1;
    let detail = format!(
        "reopened: it recurred {healed_ago} ms after it was healed (occurrence {})",
        fault.occurrences
    );
    let entry = HistoryEntry {
        seq: fault.seq,
        state,
        at: now,
        detail,
    };
    w.put(&history_key(&fault.id, fault.seq), &entry)?;
    w.put_fault(&fault_key(&fault.id), &fault)?;
    Ok(fault)
}

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

    /// Open faults of `app`.
    pub fn open_faults_of(&self, app: &str) -> Result<u64, StoreError> {
        Ok(get::<u64>(&self.db, &open_count_key(app))?.unwrap_or(0))
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

    /// Records a report: a new fault in `detected`, or, if an open fault has the same
    /// fingerprint, one more occurrence of it. With an idempotency key, a repeat of the same
    /// request replays the first outcome; a different request with that key is refused.
    pub async fn report(
        &self,
        report: Report,
        source: Source,
        idempotency: Option<Idempotency>,
    ) -> Result<Reported, StoreError> {
        self.report_opening(report, source, idempotency, None).await
    }

    /// [`Store::report`], and if the report opens a new fault (not for an occurrence or a
    /// reopening), the steps of `opening` appended to it in the same write, as the engine
    /// would append them: the whole history of that write is one record.
    pub async fn report_opening(
        &self,
        report: Report,
        source: Source,
        idempotency: Option<Idempotency>,
        opening: Option<Opening>,
    ) -> Result<Reported, StoreError> {
        self.check_free_space()?;
        let db = self.db.clone();
        let max_open = self.max_open_per_app;
        self.commit(move |w| {
            let idem_key = idempotency.as_ref().map(Idempotency::store_key);
            if let (Some(ik), Some(idempotency)) = (&idem_key, &idempotency)
                && let Some(first) = w.get::<IdempotencyRecord>(ik)?
            {
                if first.request_hash != idempotency.request_hash {
                    return Err(StoreError::IdempotencyMismatch(idempotency.key.clone()));
                }
                return Ok(Reported {
                    fault: first.fault,
                    created: first.created,
                    replayed: true,
                    reopened: false,
                    opened_with: Vec::new(),
                });
            }
            let now = Timestamp::now();
            let fp_key = fingerprint_key(&report.fingerprint());
            let open: Option<String> = w.get(&fp_key)?;
            let recurring = match (&open, report.reopen_within) {
                (None, Some(window)) if source.may_recur() => {
                    reopenable(w, &report.fingerprint(), window, now)?
                }
                _ => None,
            };
            let reopened = recurring.is_some();
            let mut opened_with = Vec::new();
            if open.is_none() {
                let app = &report.app;
                let count: u64 = w.get(&open_count_key(app))?.unwrap_or(0);
                if count >= max_open {
                    return Err(StoreError::TooManyOpen {
                        app: app.clone(),
                        limit: max_open,
                    });
                }
                count_open(w, app, 1)?;
            }
            let (fault, created) = match (open, recurring) {
                (None, Some(recurring)) => {
                    let fault = reopen(w, recurring, now)?;
                    w.put(&fp_key, &fault.id)?;
                    (fault, false)
                }
                (Some(id), _) => {
                    let key = fault_key(&id);
                    let mut fault: Fault = w.fault(&key)?.ok_or_else(|| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&fp_key).into_owned(),
                        message: format!("points at missing fault {id}"),
                    })?;
                    fault.occurrences += 1;
                    fault.last_seen = now;
                    w.put_fault(&key, &fault)?;
                    (fault, false)
                }
                (None, None) => {
                    let counter = db.generate_id().map_err(io)?;
                    let id = sortable_id(now, counter);
                    let mut fault = Fault::new(id.clone(), report, source, now);
                    w.put(&fp_key, &id)?;
                    let opened = match opening {
                        None => None,
                        Some(Opening::Steps(steps, change)) => Some((steps, change)),
                        Some(Opening::CountingRun(counted)) => {
                            Some(count_runs(w, &fault.app, counted)?)
                        }
                    };
                    let fault = match opened {
                        None => {
                            let entry = HistoryEntry {
                                seq: 1,
                                state: FaultState::Detected,
                                at: now,
                                detail: "reported".into(),
                            };
                            w.put(&history_key(&id, 1), &entry)?;
                            w.put_fault(&fault_key(&id), &fault)?;
                            fault
                        }
                        Some((steps, change)) => {
                            change(&mut fault);
                            opened_with = steps.clone();
                            // The report's own entry leads the steps: one history record.
                            let mut all = Vec::with_capacity(steps.len() + 1);
                            all.push((FaultState::Detected, "reported".to_string()));
                            all.extend(steps);
                            fault.seq = 0;
                            record_steps(w, fault, all)?
                        }
                    };
                    (fault, true)
                }
            };
            if let (Some(ik), Some(idempotency)) = (&idem_key, &idempotency) {
                let record = IdempotencyRecord {
                    request_hash: idempotency.request_hash.clone(),
                    fault: fault.clone(),
                    created,
                };
                w.put(ik, &record)?;
            }
            Ok(Reported {
                fault,
                created,
                replayed: false,
                reopened,
                opened_with,
            })
        })
        .await
    }

    /// Appends one history entry to fault `id`, provided its sequence is still `expected_seq`
    /// (compare-and-swap), after applying `change` to the stored record. `state` becomes the
    /// fault's state. When the fault ends, its fingerprint is released so that a new report
    /// opens a new fault.
    pub async fn append<F>(
        &self,
        id: &str,
        expected_seq: u64,
        state: FaultState,
        detail: String,
        change: F,
    ) -> Result<Fault, StoreError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
    {
        self.append_steps(id, expected_seq, vec![(state, detail)], change)
            .await
    }

    /// [`Store::append`] of several entries in one atomic write: each `(state, detail)` in
    /// order; the last state is the fault's.
    pub async fn append_steps<F>(
        &self,
        id: &str,
        expected_seq: u64,
        steps: Vec<(FaultState, String)>,
        change: F,
    ) -> Result<Fault, StoreError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
    {
        let id = id.to_owned();
        self.commit(move |w| append_in(w, &id, expected_seq, steps, change))
            .await
    }

    /// [`Store::append_steps`] decided in the same atomic write as a count of the runs of
    /// `app` (for the per-app rate limit, key `rw/{app}`; the `rl/` records of earlier versions,
    /// one entry per run, are no longer read): `counted` updates the counts and turns them into
    /// the entries and the change. Returns the fault and the entries written.
    pub async fn append_counting_run<F>(
        &self,
        id: &str,
        expected_seq: u64,
        app: &str,
        counted: impl FnOnce(
            &mut crate::core::window::WindowCounts,
        ) -> Result<(Vec<(FaultState, String)>, F), StoreError>
        + Send
        + 'static,
    ) -> Result<(Fault, Vec<(FaultState, String)>), StoreError>
    where
        F: FnOnce(&mut Fault),
    {
        let (id, app) = (id.to_owned(), app.to_owned());
        self.commit(move |w| {
            let (steps, change) = count_runs(w, &app, counted)?;
            let fault = append_in(w, &id, expected_seq, steps.clone(), change)?;
            Ok((fault, steps))
        })
        .await
    }

    /// Records that the open fault with `fingerprint` is over according to its source: sets
    /// `resolved_at` and appends a history entry (the state is the engine's to change). Returns
    /// the fault, or None when no open fault has that fingerprint.
    pub async fn mark_resolved(
        &self,
        fingerprint: String,
        detail: String,
    ) -> Result<Option<Fault>, StoreError> {
        self.commit(move |w| {
            let Some(id) = w.get::<String>(&fingerprint_key(&fingerprint))? else {
                return Ok(None);
            };
            let key = fault_key(&id);
            let mut fault = existing_fault(w, &key, &id)?;
            if fault.resolved_at.is_some() {
                return Ok(Some(fault));
            }
            let now = Timestamp::now();
            fault.resolved_at = Some(now);
            fault.seq += 1;
            let entry = HistoryEntry {
                seq: fault.seq,
                state: fault.state,
                at: now,
                detail,
            };
            w.put(&history_key(&id, fault.seq), &entry)?;
            w.put_fault(&key, &fault)?;
            Ok(Some(fault))
        })
        .await
    }

    /// Runs `change` on fault `id` atomically; if it succeeds, appends the history line it
    /// returns (the state is unchanged: only the engine changes state). A refusal (`Err(E)`)
    /// writes nothing and is returned as the inner error.
    pub async fn annotate<E, F>(&self, id: &str, change: F) -> Result<Result<Fault, E>, StoreError>
    where
        E: Send + 'static,
        F: FnOnce(&mut Fault) -> Result<String, E> + Send + 'static,
    {
        let id = id.to_owned();
        self.commit(move |w| {
            let key = fault_key(&id);
            let mut fault = existing_fault(w, &key, &id)?;
            let detail = match change(&mut fault) {
                Ok(detail) => detail,
                Err(refusal) => return Ok(Err(refusal)),
            };
            fault.seq += 1;
            let entry = HistoryEntry {
                seq: fault.seq,
                state: fault.state,
                at: Timestamp::now(),
                detail,
            };
            w.put(&history_key(&id, fault.seq), &entry)?;
            w.put_fault(&key, &fault)?;
            Ok(Ok(fault))
        })
        .await
    }

    /// Appends to the audit log (durably, like every write).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        let entry = Audited {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        let db = self.db.clone();
        self.commit(move |w| audit_in(w, &db, entry)).await
    }

    /// [`Store::append_steps`] with an audit entry in the same atomic write (an applied
    /// action's entry and its `done` step: one write, never one without the other).
    pub async fn append_steps_audited<F>(
        &self,
        id: &str,
        expected_seq: u64,
        steps: Vec<(FaultState, String)>,
        change: F,
        audited: Audited,
    ) -> Result<Fault, StoreError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
    {
        let id = id.to_owned();
        let db = self.db.clone();
        self.commit(move |w| {
            let fault = append_in(w, &id, expected_seq, steps, change)?;
            audit_in(w, &db, audited)?;
            Ok(fault)
        })
        .await
    }

    /// Audit entries after `after` (oldest first), at most `limit`.
    pub fn audit_log(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut start = b"a/".to_vec();
        start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
        let mut entries = Vec::new();
        for item in self.db.range(start..b"a0".to_vec()).take(limit) {
            let (key, value) = item.map_err(io)?;
            entries.push(decode(&key, &value)?);
        }
        Ok(entries)
    }

    /// Every key and value, read on the committer so that no write lands in the middle: a
    /// consistent snapshot of the store while the daemon runs.
    pub async fn snapshot(&self) -> Result<crate::store::backup::Entries, StoreError> {
        self.commit(|w| {
            w.scan(b"")
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
        .await
    }

    /// Replaces the whole store with `entries` (a snapshot). For `phoenix restore`, with the
    /// daemon stopped.
    pub async fn restore(
        &self,
        entries: crate::store::backup::Entries,
    ) -> Result<usize, StoreError> {
        self.commit(move |w| {
            let keys: Vec<sled::IVec> = w
                .scan(b"")
                .map(|item| item.map(|(key, _)| key))
                .collect::<Result<_, _>>()?;
            for key in keys {
                w.remove(&key);
            }
            let count = entries.len();
            for (key, value) in entries {
                w.put_raw(&key, &value);
            }
            Ok(count)
        })
        .await
    }

    /// Deletes faults that ended before `before` (with their history, indexes and idempotency
    /// keys); returns how many. Open faults are never touched.
    pub async fn compact(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.commit(move |w| {
            let mut removed = 0;
            for item in w.scan(b"f/") {
                let (key, value) = item?;
                let fault: Fault = decode(&key, &value)?;
                if fault.closed_at.is_none_or(|closed| closed >= before) {
                    continue;
                }
                for entry in w.scan(&history_prefix(&fault.id)) {
                    let (history_key, _) = entry?;
                    w.remove(&history_key);
                }
                let last_closed = last_closed_key(&fault.fingerprint);
                if w.get::<String>(&last_closed)?.as_deref() == Some(fault.id.as_str()) {
                    w.remove(&last_closed);
                }
                w.remove(&key);
                removed += 1;
            }
            // An idempotency key outlives its fault only to answer with a fault that is gone.
            for item in w.scan(b"ik/") {
                let (key, value) = item?;
                let record: IdempotencyRecord = decode(&key, &value)?;
                let fault = fault_key(&record.fault.id);
                if w.get::<serde::de::IgnoredAny>(&fault)?.is_none() {
                    w.remove(&key);
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Runs `change` on the breaker `name` (created closed if new) atomically and stores it.
    pub async fn update_breaker<T, F>(&self, name: &str, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Breaker) -> T + Send + 'static,
    {
        let name = name.to_owned();
        self.commit(move |w| {
            let mut breaker = w
                .get::<Breaker>(&breaker_key(&name))?
                .unwrap_or_else(|| Breaker::new(&name));
            let result = change(&mut breaker);
            w.put_breaker(&breaker)?;
            Ok(result)
        })
        .await
    }

    /// Runs `change` on each breaker of `names` (created closed if new), all in one atomic write;
    /// returns each result, in order. (One write where a healing run feeds several breakers.)
    pub async fn update_breakers<T, F>(
        &self,
        names: Vec<String>,
        change: F,
    ) -> Result<Vec<T>, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&str, &mut Breaker) -> T + Send + 'static,
    {
        self.commit(move |w| update_breakers_in(w, &names, change))
            .await
    }

    /// [`Store::append_steps`] and [`Store::update_breakers`] in one atomic write: a run's last
    /// transition with the outcome it feeds to the breakers (neither is recorded without the
    /// other). Returns the fault and each breaker's result.
    pub async fn append_steps_feeding_breakers<F, T, B>(
        &self,
        id: &str,
        expected_seq: u64,
        steps: Vec<(FaultState, String)>,
        change: F,
        names: Vec<String>,
        feed: B,
    ) -> Result<(Fault, Vec<T>), StoreError>
    where
        F: FnOnce(&mut Fault) + Send + 'static,
        T: Send + 'static,
        B: FnMut(&str, &mut Breaker) -> T + Send + 'static,
    {
        let id = id.to_owned();
        self.commit(move |w| {
            let fault = append_in(w, &id, expected_seq, steps, change)?;
            let results = update_breakers_in(w, &names, feed)?;
            Ok((fault, results))
        })
        .await
    }

    /// The breaker `name`, if it has recorded anything.
    pub fn breaker(&self, name: &str) -> Result<Option<Breaker>, StoreError> {
        get(&self.db, &breaker_key(name))
    }

    /// Where breaker `name` stands (None: it has recorded nothing): what the committer last
    /// told readers, else read from the tree and remembered (see `Commits::breaker_positions`:
    /// a write applied meanwhile wins over what was read).
    pub fn breaker_position(&self, name: &str) -> Result<Option<Position>, StoreError> {
        if let Some(known) = self.commits.breaker_positions().get(name) {
            return Ok(*known);
        }
        let read = self.breaker(name)?.map(|b| b.position);
        self.commits
            .breaker_positions()
            .entry(name.to_owned())
            .or_insert(read);
        Ok(read)
    }

    /// Every breaker that has recorded something, by name.
    pub fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        scan(&self.db, b"br/")
    }

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

    /// Registers a patch version (idempotent: the same hash twice keeps the first record) and
    /// decides, atomically with the registration, whether it becomes the active version of its
    /// name. Returns the stored record and whether it is now active.
    pub async fn put_patch(
        &self,
        record: PatchRecord,
        module: Vec<u8>,
        activation: Activation,
    ) -> Result<(PatchRecord, bool), StoreError> {
        self.commit(move |w| {
            let version_key = format!("pv/{}/{}", record.name, record.hash).into_bytes();
            let stored = match w.get::<PatchRecord>(&version_key)? {
                Some(existing) => existing,
                None => {
                    w.put(&version_key, &record)?;
                    w.put_raw(format!("pm/{}", record.hash).as_bytes(), &module);
                    record
                }
            };
            let active_key = format!("pa/{}", stored.name).into_bytes();
            let current: Option<String> = w.get(&active_key)?;
            let activate = match activation {
                Activation::Always => true,
                Activation::IfNoneActive => current.is_none(),
            };
            if activate {
                w.put(&active_key, &stored.hash)?;
            }
            let is_active = activate || current.as_deref() == Some(stored.hash.as_str());
            Ok((stored, is_active))
        })
        .await
    }

    /// Makes version `hash` of `name` the active one (a rollback). Fails when it is not
    /// registered.
    pub async fn set_active_patch(
        &self,
        name: &str,
        hash: &str,
    ) -> Result<PatchRecord, StoreError> {
        let (name, hash) = (name.to_owned(), hash.to_owned());
        self.commit(move |w| {
            let record: PatchRecord = w
                .get(format!("pv/{name}/{hash}").as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("patch {name} at {hash}")))?;
            w.put(format!("pa/{name}").as_bytes(), &hash)?;
            Ok(record)
        })
        .await
    }

    /// Notes that a person approved a run of an uploaded version.
    pub async fn mark_first_use_approved(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        let key = format!("pv/{name}/{hash}").into_bytes();
        self.commit(move |w| {
            if let Some(mut record) = w.get::<PatchRecord>(&key)?
                && !record.first_use_approved
            {
                record.first_use_approved = true;
                w.put(&key, &record)?;
            }
            Ok(())
        })
        .await
    }

    /// Stores a run's policy under its hash (content-addressed: writing it again changes
    /// nothing).
    pub async fn put_policy_snapshot(&self, hash: &str, json: Vec<u8>) -> Result<(), StoreError> {
        let key = policy_snapshot_key(hash);
        self.commit(move |w| {
            w.put_raw(&key, &json);
            Ok(())
        })
        .await
    }

    /// The policy stored under `hash` by [`Store::put_policy_snapshot`].
    pub fn policy_snapshot(&self, hash: &str) -> Result<Option<Policy>, StoreError> {
        get(&self.db, &policy_snapshot_key(hash))
    }

    /// Names of every registered patch, sorted.
    pub fn patch_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for item in self.db.scan_prefix(b"pa/") {
            let (key, _) = item.map_err(io)?;
            names.push(String::from_utf8_lossy(&key[3..]).into_owned());
        }
        Ok(names)
    }

    pub fn patch(&self, name: &str, hash: &str) -> Result<Option<PatchRecord>, StoreError> {
        let key = (name.to_owned(), hash.to_owned());
        self.registry_read(
            |cache| cache.records.get(&key).cloned(),
            || get(&self.db, format!("pv/{name}/{hash}").as_bytes()),
            |cache, record| {
                cache.records.insert(key.clone(), record);
            },
        )
    }

    pub fn active_patch_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.registry_read(
            |cache| cache.active.get(name).cloned(),
            || get(&self.db, format!("pa/{name}").as_bytes()),
            |cache, hash| {
                cache.active.insert(name.to_owned(), hash);
            },
        )
    }

    /// A registry value: cached if this generation has it, else read from the tree and cached
    /// only if no registry write was applied meanwhile (the value read may predate it).
    fn registry_read<T: Clone>(
        &self,
        cached: impl FnOnce(&RegistryCache) -> Option<T>,
        read: impl FnOnce() -> Result<T, StoreError>,
        keep: impl FnOnce(&mut RegistryCache, T),
    ) -> Result<T, StoreError> {
        let generation = self.commits.registry_generation.load(Ordering::Acquire);
        {
            let mut cache = self.lock_registry();
            if cache.generation != generation {
                *cache = RegistryCache {
                    generation,
                    ..RegistryCache::default()
                };
            }
            if let Some(value) = cached(&cache) {
                return Ok(value);
            }
        }
        let value = read()?;
        let mut cache = self.lock_registry();
        if cache.generation == generation
            && self.commits.registry_generation.load(Ordering::Acquire) == generation
        {
            keep(&mut cache, value.clone());
        }
        Ok(value)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, RegistryCache> {
        // Only plain map updates happen under this lock: recover from poisoning.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn patch_versions(&self, name: &str) -> Result<Vec<PatchRecord>, StoreError> {
        scan(&self.db, format!("pv/{name}/").as_bytes())
    }

    pub fn patch_module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(format!("pm/{hash}").as_bytes())
            .map_err(io)?
            .map(|bytes| bytes.to_vec()))
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

/// The first stage of group commit: runs jobs as they come and hands the writes of those run
/// so far to [`journal_loop`] whenever that is free. Jobs that arrive while the journal syncs
/// a group all join the next one, so under load each sync answers about half the writers
/// waiting (a group sealed at once and then held until the journal is free would leave the
/// jobs arriving meanwhile to a third group and a third sync).
fn commit_loop(tree: &sled::Tree, jobs: &mpsc::Receiver<Work>, sealed: &mpsc::SyncSender<Sealed>) {
    let mut group = Group {
        fingerprints: FingerprintIndex::load(tree),
        ..Group::default()
    };
    let mut completions: Vec<Completion> = Vec::new();
    // Jobs received but not run yet (the group was full, or the committer was waiting).
    let mut held: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut journal_busy = false;
    let mut closing = false;
    loop {
        // Run what is waiting, without blocking, until the group is full.
        while completions.len() < MAX_GROUP {
            let work = match held.pop_front() {
                Some(job) => Work::Job(job),
                None => match jobs.try_recv() {
                    Ok(work) => work,
                    Err(_) => break,
                },
            };
            match work {
                Work::Job(job) => completions.push(job(tree, &mut group)),
                Work::JournalFree => journal_busy = false,
                Work::Close => closing = true,
            }
        }
        if !journal_busy && !completions.is_empty() {
            let next = seal(&mut group, std::mem::take(&mut completions));
            // The journal is free: it has applied the group handed over last, which is in the
            // tree now; only this one need be read from memory.
            group.inflight = Arc::clone(&next.writes);
            if sealed.send(next).is_err() {
                return;
            }
            journal_busy = true;
            continue;
        }
        if closing && completions.is_empty() && held.is_empty() {
            return;
        }
        // Nothing to hand over yet: wait for a job (run at the top, if the group has room) or
        // for the journal.
        match jobs.recv() {
            Ok(Work::Job(job)) => held.push_back(job),
            Ok(Work::JournalFree) => journal_busy = false,
            Ok(Work::Close) => closing = true,
            // Only the journal thread is left holding a sender once the store is dropped, and
            // it keeps it until it ends.
            Err(_) => return,
        }
    }
}

/// Closes the group's writes for the journal; the committer's caches learn them.
fn seal(group: &mut Group, completions: Vec<Completion>) -> Sealed {
    let writes = std::mem::take(&mut group.pending);
    for (key, value) in &writes {
        group.registry_changed |= is_registry_key(key);
        group.fingerprints.learn(key, value.as_ref());
    }
    group.cache.learn(std::mem::take(&mut group.faults));
    Sealed {
        writes: Arc::new(writes),
        registry_changed: std::mem::take(&mut group.registry_changed),
        breakers: std::mem::take(&mut group.breakers),
        completions,
    }
}

/// The second stage: per group, one journal record, synced, then the group is applied to the
/// tree and its writers answered (see [`apply_and_answer`]); only then may the committer hand
/// over the next group, which it has been running meanwhile. Between groups, the journal moves
/// on to a new segment once the current one is big or old enough, and hands the closed one to
/// [`checkpoint_loop`] (every group in it is applied by then).
///
/// Applying here rather than on a thread of its own saves a hand-over (two thread wake-ups)
/// per group: under P2, 62 → 58 µs of CPU per report (means of 12 and 16 alternating runs),
/// at the same rate within the noise; the overlap of one group's apply with the next one's
/// sync gave nothing back on two busy cores.
fn journal_loop(
    mut journal: Journal,
    tree: &sled::Tree,
    groups: &mpsc::Receiver<Sealed>,
    closed: &mpsc::SyncSender<u64>,
    free: &mpsc::Sender<Work>,
    commits: &Commits,
) {
    let mut segment_started = std::time::Instant::now();
    let mut payload = Vec::new();
    loop {
        match groups.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(group) => {
                let written = match commits.failed() {
                    Some(error) => Err(error),
                    None => journal_group(&mut journal, &group, &mut payload, commits),
                };
                apply_and_answer(tree, group, written, commits);
                // The group is in the tree (or failed): the committer may hand over the next.
                let _ = free.send(Work::JournalFree);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let after = commits.checkpoint_after_ms.load(Ordering::Relaxed);
        let due = journal.len() >= CHECKPOINT_BYTES
            || (!journal.is_empty() && segment_started.elapsed().as_millis() as u64 >= after);
        // Once a group failed, sled may hold part of it: its journal record must stay for
        // the next start to replay, so nothing more is checkpointed.
        if due && !commits.has_failed() && !commits.checkpointing.load(Ordering::Acquire) {
            match journal.rotate() {
                Ok(number) => {
                    segment_started = std::time::Instant::now();
                    commits.checkpointing.store(true, Ordering::Release);
                    if closed.send(number).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let error = sync_error(&error, "starting a journal segment");
                    tracing::error!(message = "Store journal cannot move to a new segment.", %error);
                }
            }
        }
    }
}

/// Writes one group's record to the journal (and syncs it).
fn journal_group(
    journal: &mut Journal,
    group: &Sealed,
    payload: &mut Vec<u8>,
    commits: &Commits,
) -> Result<(), StoreError> {
    commits.flushes.fetch_add(1, Ordering::Relaxed);
    if group.writes.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    payload.clear();
    for (key, value) in group.writes.iter() {
        match value {
            Some(value) => crate::store::journal::encode_put(payload, key, value),
            None => crate::store::journal::encode_remove(payload, key),
        }
    }
    let written = journal
        .append(payload, commits.fsync.get().is_some())
        .map_err(|e| sync_error(&e, "writing the store's journal"));
    if written.is_ok() {
        crate::core::metrics::metrics().observe(
            "phoenix_store_flush_seconds",
            started.elapsed().as_secs_f64(),
        );
    }
    if payload.capacity() > PAYLOAD_KEPT {
        *payload = Vec::new();
    }
    written
}

/// Applies a group whose journal record was `written` to the tree, tells readers what
/// changed, and answers its writers. A group that failed (`written` carries the failure of
/// this group or of one before: the journal thread, the only one that records failures,
/// checks before it writes) is answered with it and not applied.
fn apply_and_answer(
    tree: &sled::Tree,
    group: Sealed,
    written: Result<(), StoreError>,
    commits: &Commits,
) {
    let stored = written.and_then(|()| apply_group(tree, &group, commits));
    if let Err(error) = &stored {
        commits.fail(error);
    }
    for complete in group.completions {
        complete(stored.clone());
    }
}

/// Applies one journaled group's writes to the tree and tells readers what changed.
fn apply_group(tree: &sled::Tree, group: &Sealed, commits: &Commits) -> Result<(), StoreError> {
    #[cfg(test)]
    thread::sleep(std::time::Duration::from_millis(
        commits.apply_delay_ms.load(Ordering::Relaxed),
    ));
    #[cfg(test)]
    if commits.fail_next_apply.swap(false, Ordering::Relaxed) {
        let first = group.writes.iter().take(1);
        let first: Pending = first.map(|(k, v)| (k.clone(), v.clone())).collect();
        apply(tree, &first)?;
        return Err(StoreError::Io("injected apply failure".into()));
    }
    apply(tree, &group.writes)?;
    if group.registry_changed {
        commits.registry_generation.fetch_add(1, Ordering::Release);
    }
    if !group.breakers.is_empty() {
        let mut positions = commits.breaker_positions();
        for (name, position) in &group.breakers {
            positions.insert(name.clone(), Some(*position));
        }
    }
    Ok(())
}

/// Largest journal payload buffer kept between groups.
const PAYLOAD_KEPT: usize = 1 << 20;

/// Applies journaled writes to the tree, key by key: a crash part-way is mended by replaying
/// the journal at the next start.
fn apply(tree: &sled::Tree, writes: &Pending) -> Result<(), StoreError> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key.as_slice(), value.clone()),
            None => tree.remove(key.as_slice()),
        }
        .map_err(io)?;
    }
    Ok(())
}

/// The last stage: a checkpoint per closed journal segment: flushes sled (everything in the
/// segment was applied before it closed, so the flush covers it), then deletes the segments it
/// made redundant. A failed checkpoint keeps them (the next one that succeeds deletes them) and
/// is reported by [`Store::problem`].
fn checkpoint_loop(
    db: &sled::Db,
    journal_dir: &Path,
    closed: &mpsc::Receiver<u64>,
    commits: &Commits,
) {
    while let Ok(number) = closed.recv() {
        let started = std::time::Instant::now();
        let checkpoint = flush_tree(db, commits.fsync.get()).and_then(|()| {
            crate::store::journal::remove_through(journal_dir, number)
                .map_err(|e| sync_error(&e, "deleting checkpointed journal segments"))
        });
        crate::core::metrics::metrics().observe(
            "phoenix_store_checkpoint_seconds",
            started.elapsed().as_secs_f64(),
        );
        if let Err(error) = &checkpoint {
            tracing::error!(message = "Store checkpoint failed; its journal is kept.", %error);
        }
        *commits
            .checkpoint_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = checkpoint.err();
        commits.checkpointing.store(false, Ordering::Release);
    }
}

/// Makes everything applied to sled so far durable in sled's own files: its flush, and with
/// `log` (`store_fsync`), an fdatasync of its log file.
fn flush_tree(db: &sled::Db, log: Option<&std::fs::File>) -> Result<(), StoreError> {
    db.flush().map_err(io)?;
    match log {
        Some(log) => log
            .sync_data()
            .map_err(|e| sync_error(&e, "syncing the store's log")),
        None => Ok(()),
    }
}

/// Replays the journal segments left in `dir` (by a phoenix that stopped before their
/// checkpoint) onto `db`, makes that durable in sled's files and deletes them. Returns the
/// number for the next segment: above every one seen, in case a deletion is not durable.
fn replay_journal(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
    let listing_error = |e: std::io::Error| sync_error(&e, "reading the store's journal");
    if !dir.exists() {
        crate::fs::create_private_dir(dir).map_err(listing_error)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|parent| parent.sync_all())
                .map_err(listing_error)?;
        }
    }
    let segments = crate::store::journal::segments(dir).map_err(listing_error)?;
    let Some(&(last, _)) = segments.last() else {
        return Ok(1);
    };
    let mut replayed = 0;
    for (_, path) in &segments {
        let bytes = std::fs::read(path).map_err(listing_error)?;
        for payload in crate::store::journal::records(&bytes) {
            let writes =
                crate::store::journal::decode(payload).map_err(|message| StoreError::Corrupt {
                    key: path.display().to_string(),
                    message,
                })?;
            let mut batch = sled::Batch::default();
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            db.apply_batch(batch).map_err(io)?;
            replayed += 1;
        }
    }
    if replayed > 0 {
        // Synced whatever `store_fsync` says: this happens once per start, after a crash.
        let log = std::fs::File::open(dir.with_file_name("db")).ok();
        flush_tree(db, log.as_ref())?;
        tracing::info!(
            message = "Replayed the store's journal.",
            records = replayed,
            segments = segments.len()
        );
    }
    crate::store::journal::remove_through(dir, last).map_err(listing_error)?;
    Ok(last + 1)
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
    fn closing(steps: &[(FaultState, String)]) -> Option<Opening> {
        Some(Opening::Steps(steps.to_vec(), Box::new(|_| {})))
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
            Some(Opening::CountingRun(counted))
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
                Some(Opening::CountingRun(failing)),
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
        let first = store
            .report(recurring(60_000), Source::Supervisor, None)
            .await
            .unwrap()
            .fault;
        store
            .append(&first.id, 1, FaultState::Healed, "healed".into(), |_| {})
            .await
            .unwrap();
        let again = store
            .report(recurring(60_000), Source::Supervisor, None)
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
            .report(recurring(60_000), Source::Supervisor, None)
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
            .report(recurring(5), Source::Supervisor, None)
            .await
            .unwrap();
        assert!(late.created && late.fault.id != fresh.fault.id);
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
