//! What a write means for faults: a report (deduplicated by fingerprint, idempotent by key, a
//! healed fault reopened when it recurs), transitions appended with a compare-and-swap on the
//! sequence, resolutions and annotations, compaction; and the reads of faults and histories.
//! The states are the engine's: the store writes the steps it is given, keeping its indexes
//! (open counts, fingerprints) in step with them.

use super::*;

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
    pub(super) fn store_key(&self) -> Vec<u8> {
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

/// What the engine decided a report's write does beyond recording it (the store decides no
/// state): the steps a new fault opens with, and where a healed fault that recurs goes.
#[derive(Default)]
pub struct Decided {
    /// The engine's first look at a new fault (None: the engine analyzes it after the write).
    pub opening: Option<Opening>,
    /// The state a healed fault that recurs moves to (None: a recurrence opens a new fault).
    pub recur_to: Option<FaultState>,
}

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

/// The stored fault `id` (at `key`), or `NotFound`.
pub(super) fn existing_fault(
    w: &mut Writer<'_>,
    key: &[u8],
    id: &str,
) -> Result<Fault, StoreError> {
    w.fault(key)?
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

/// Adds `delta` to `app`'s open-fault count; returns the new count.
pub(super) fn count_open(w: &mut Writer<'_>, app: &str, delta: i64) -> Result<u64, StoreError> {
    let key = open_count_key(app);
    let count: u64 = w.get(&key)?.unwrap_or(0);
    let count = count.saturating_add_signed(delta);
    w.put(&key, &count)?;
    Ok(count)
}

/// Runs `counted` on `app`'s counts of healing runs and writes them back.
pub(super) fn count_runs<T>(
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
pub(super) fn append_in<F>(
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
pub(super) fn record_steps(
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

/// The last closed fault with `fingerprint`, if it was healed less than `window` ago.
pub(super) fn reopenable(
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

/// Reopens a healed fault that recurred: to `state` (the engine's decision: the machine's
/// `Recur`), one more occurrence, a fresh run.
pub(super) fn reopen(
    w: &mut Writer<'_>,
    mut fault: Fault,
    state: FaultState,
    now: Timestamp,
) -> Result<Fault, StoreError> {
    let healed_ago = fault
        .closed_at
        .map(|c| now.0.saturating_sub(c.0))
        .unwrap_or(0);
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

impl Store {
    /// Records a report: a new fault in `detected`, or, if an open fault has the same
    /// fingerprint, one more occurrence of it. With an idempotency key, a repeat of the same
    /// request replays the first outcome; a different request with that key is refused.
    pub async fn report(
        &self,
        report: Report,
        source: Source,
        idempotency: Option<Idempotency>,
    ) -> Result<Reported, StoreError> {
        self.report_opening(report, source, idempotency, Decided::default())
            .await
    }

    /// [`Store::report`], with what the engine decided the write does beyond recording it
    /// ([`Decided`]): if the report opens a new fault (not for an occurrence or a reopening),
    /// the steps of `decided.opening` are appended to it in the same write, as the engine would
    /// append them (the whole history of that write is one record); a healed fault that
    /// recurs moves to `decided.recur_to` (without it, none is reopened).
    pub async fn report_opening(
        &self,
        report: Report,
        source: Source,
        idempotency: Option<Idempotency>,
        decided: Decided,
    ) -> Result<Reported, StoreError> {
        let Decided { opening, recur_to } = decided;
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
            let recurring = match (&open, report.reopen_within, recur_to) {
                (None, Some(window), Some(to)) if source.may_recur() => {
                    reopenable(w, &report.fingerprint(), window, now)?.map(|fault| (fault, to))
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
                (None, Some((recurring, to))) => {
                    let fault = reopen(w, recurring, to, now)?;
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
}
