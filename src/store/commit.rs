//! The commit pipeline: the committer thread runs write jobs in groups, the journal thread
//! appends each group to the write-ahead journal as one record, syncs it, applies it to sled and
//! answers its writers; the checkpointer flushes sled once a journal segment is old or large and
//! deletes it; a start replays what a crash left. A failed journal write or apply stops every
//! later write until a restart.

use super::*;

/// Most writes applied before one flush; bounds the latency a single group can add.
pub(super) const MAX_GROUP: usize = 512;

/// A journal segment is checkpointed once it holds this many bytes...
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;

/// ...or is this old (a checkpoint is one sled flush: it writes what the segment's writes
/// changed, so rare checkpoints write less per fault; and the journal left to replay at a
/// start stays small).
pub(super) const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the store's threads share with readers: how many groups were made durable, and why
/// the store takes no more writes, if it does not.
#[derive(Default)]
pub(super) struct Commits {
    pub(super) flushes: AtomicU64,
    /// Why a group could not be journaled or applied. Set once, for good: the journal must
    /// hold every write sled holds, in order, so no later group may be applied after a
    /// failed one; phoenix must restart (it does by itself once a full disk has room).
    pub(super) failure: std::sync::Mutex<Option<StoreError>>,
    /// `failure` is set (read per group, without the lock).
    pub(super) failed: std::sync::atomic::AtomicBool,
    /// Bumped after each applied group that wrote a patch record or an active version.
    pub(super) registry_generation: AtomicU64,
    /// Breaker positions by name (None: no record), for the engine's check of every fault
    /// (two sled reads and parses per fault otherwise). The journal thread sets a breaker's
    /// position after applying a write to it, before acknowledging that write, and forgets them
    /// all when an apply fails; readers add what they read only where nothing is known yet (a
    /// write applied meanwhile has set it, and wins).
    pub(super) breaker_positions: std::sync::Mutex<HashMap<String, Option<Position>>>,
    /// Why the last checkpoint failed (cleared by the next that succeeds).
    pub(super) checkpoint_failure: std::sync::Mutex<Option<StoreError>>,
    /// A closed journal segment is with the checkpointer: the journal keeps to its current
    /// segment until that is done (so at most two segments exist at a time).
    pub(super) checkpointing: std::sync::atomic::AtomicBool,
    /// How old (ms) a journal segment with records gets before it is checkpointed
    /// ([`CHECKPOINT_INTERVAL`]; tests change it).
    pub(super) checkpoint_after_ms: AtomicU64,
    /// sled's log file, when each journal record and checkpoint is to be synced
    /// (`store_fsync`).
    pub(super) fsync: std::sync::OnceLock<std::fs::File>,
    /// Tests: the next group's apply writes its first key only, then fails (as a sled write
    /// error part-way through would), after its journal record is written.
    #[cfg(test)]
    pub(super) fail_next_apply: std::sync::atomic::AtomicBool,
    /// Tests: the journal thread waits this long (ms) before applying each group.
    #[cfg(test)]
    pub(super) apply_delay_ms: AtomicU64,
}

impl Commits {
    pub(super) fn breaker_positions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Option<Position>>> {
        // Only plain map updates happen under this lock: recover from poisoning.
        self.breaker_positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a group could not be journaled or applied (the first such error stays).
    pub(super) fn fail(&self, error: &StoreError) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(message = "Store write failed; it is not acknowledged, and the store takes no more writes until phoenix restarts.", %error);
            *failure = Some(error.clone());
            self.breaker_positions().clear();
            self.failed.store(true, Ordering::Release);
        }
    }

    pub(super) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why no more groups may be journaled or applied, if a group failed.
    pub(super) fn failed(&self) -> Option<StoreError> {
        if !self.has_failed() {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the store takes no writes now: a group that failed, else the last checkpoint.
    pub(super) fn failure(&self) -> Option<StoreError> {
        [&self.failure, &self.checkpoint_failure]
            .into_iter()
            .find_map(|failure| failure.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A group handed to the journal thread: its writes, what readers must learn once they are
/// applied, and its writers' answers.
pub(super) struct Sealed {
    pub(super) writes: Arc<Pending>,
    pub(super) registry_changed: bool,
    pub(super) breakers: Vec<(String, Position)>,
    pub(super) completions: Vec<Completion>,
}

pub(super) type Job = Box<dyn FnOnce(&sled::Tree, &mut Group) -> Completion + Send>;

/// What the committer is told: a job to run, that the journal thread can take the next group
/// (it has applied the one it had), or that the store was dropped.
pub(super) enum Work {
    Job(Job),
    JournalFree,
    Close,
}

/// The first stage of group commit: runs jobs as they come and hands the writes of those run
/// so far to [`journal_loop`] whenever that is free. Jobs that arrive while the journal syncs
/// a group all join the next one, so under load each sync answers about half the writers
/// waiting (a group sealed at once and then held until the journal is free would leave the
/// jobs arriving meanwhile to a third group and a third sync).
pub(super) fn commit_loop(
    tree: &sled::Tree,
    jobs: &mpsc::Receiver<Work>,
    sealed: &mpsc::SyncSender<Sealed>,
) {
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
pub(super) fn seal(group: &mut Group, completions: Vec<Completion>) -> Sealed {
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
pub(super) fn journal_loop(
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
pub(super) fn journal_group(
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
pub(super) fn apply_and_answer(
    tree: &sled::Tree,
    group: Sealed,
    written: Result<(), StoreError>,
    commits: &Commits,
) {
    let stored = written.and_then(|()| apply_journaled(tree, &group, commits));
    if let Err(error) = &stored {
        commits.fail(error);
    }
    for complete in group.completions {
        complete(stored.clone());
    }
}

/// How the journal thread applies a group it journaled: [`apply_group`].
#[cfg(not(test))]
use apply_group as apply_journaled;

/// How the journal thread applies a group in tests: [`apply_group`], after the delay the test
/// asked for, or failing part-way (its first key applied) when the test asked for that.
#[cfg(test)]
fn apply_journaled(tree: &sled::Tree, group: &Sealed, commits: &Commits) -> Result<(), StoreError> {
    thread::sleep(std::time::Duration::from_millis(
        commits.apply_delay_ms.load(Ordering::Relaxed),
    ));
    if commits.fail_next_apply.swap(false, Ordering::Relaxed) {
        let first = group.writes.iter().take(1);
        let first: Pending = first.map(|(k, v)| (k.clone(), v.clone())).collect();
        apply(tree, &first)?;
        return Err(StoreError::Io("injected apply failure".into()));
    }
    apply_group(tree, group, commits)
}

/// Applies one journaled group's writes to the tree and tells readers what changed.
pub(super) fn apply_group(
    tree: &sled::Tree,
    group: &Sealed,
    commits: &Commits,
) -> Result<(), StoreError> {
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
pub(super) const PAYLOAD_KEPT: usize = 1 << 20;

/// Applies journaled writes to the tree, key by key: a crash part-way is mended by replaying
/// the journal at the next start.
pub(super) fn apply(tree: &sled::Tree, writes: &Pending) -> Result<(), StoreError> {
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
pub(super) fn checkpoint_loop(
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
pub(super) fn flush_tree(db: &sled::Db, log: Option<&std::fs::File>) -> Result<(), StoreError> {
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
pub(super) fn replay_journal(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
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
