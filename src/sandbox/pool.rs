//! The instance pool: the pooling allocator's slots shared by runs (a run waits for a free one),
//! and the warm stores that serve further clean runs.

use super::*;

/// Instances (each with one memory and one table) the pooling allocator keeps ready. Runs beyond
/// it wait for a free slot: they are short (fuel and deadline bound them).
pub(super) const POOL_SLOTS: u32 = 64;

/// Runs one store serves before it is dropped (with their instances): a store's own cost
/// (creation, module registration, teardown) was ~0.4 us a run when each run had its own; 16
/// runs share it, while what a store keeps stays bounded.
pub(super) const WARM_RUNS: u32 = 16;

/// Warm stores kept at most (one per engine thread runs inline; others make their own).
/// Their instances hold slots: at most `WARM_STORES * (WARM_RUNS - 1)` = 30 of the 64 while no
/// run uses them, so runs never wait on idle stores.
pub(super) const WARM_STORES: usize = 2;

const _: () = assert!(WARM_STORES as u32 * (WARM_RUNS - 1) <= POOL_SLOTS / 2);

/// A store whose memory is larger than this after its run is not kept: its instances keep
/// their memory (what they touched of it) until the store is dropped.
pub(super) const WARM_MEMORY_MAX: usize = 128 << 10;

/// A store that serves more than one run. Each run's instance stays in it until it is dropped,
/// and keeps its slot until then.
pub(super) struct WarmStore {
    pub(super) store: Store<HostState>,
    /// Slots of the instances of its finished runs.
    pub(super) kept_slots: u32,
}

/// The pooling allocator's instance slots, shared by the runs, and the warm stores that keep
/// some of them; one lock for both, taken once as a run starts and once as it ends. A counting
/// semaphore for blocking threads (runs happen on tokio's blocking pool): a slot given back
/// wakes a thread only if one waits (a condvar notify is a syscall even with none).
pub(super) struct Pool {
    pub(super) state: Mutex<PoolState>,
    pub(super) freed: std::sync::Condvar,
}

pub(super) struct PoolState {
    pub(super) free: u32,
    pub(super) waiting: u32,
    pub(super) warm: Vec<WarmStore>,
}

/// Slots held, given back when dropped: a run's one slot for its instance, or those of a warm
/// store's earlier instances while a run uses it.
pub(super) struct Slots<'a> {
    pub(super) pool: &'a Pool,
    pub(super) count: u32,
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            self.pool.give_back(self.count);
        }
    }
}

impl Pool {
    pub(super) fn new(slots: u32) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                free: slots,
                waiting: 0,
                warm: Vec::new(),
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot (waiting for one if none is free) and a warm store, if one is kept.
    pub(super) fn take(&self) -> (Slots<'_>, Option<WarmStore>) {
        let mut state = self.lock();
        while state.free == 0 {
            state.waiting += 1;
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiting -= 1;
        }
        state.free -= 1;
        (self.one_slot(), state.warm.pop())
    }

    /// A slot and a warm store (if one is kept), if a slot is free now, without waiting.
    pub(super) fn try_take(&self) -> Option<(Slots<'_>, Option<WarmStore>)> {
        let mut state = self.lock();
        if state.free == 0 {
            return None;
        }
        state.free -= 1;
        Some((self.one_slot(), state.warm.pop()))
    }

    /// Ends a run in `warm`, whose instance has `slot`: keeps the store for the next runs if
    /// `reusable`, it has room for another run and fewer than `WARM_STORES` are kept; else
    /// drops it (outside the lock: that frees its instances) and then gives its slots back.
    pub(super) fn finish(&self, mut slot: Slots<'_>, mut warm: WarmStore, reusable: bool) {
        // Counted in `kept_slots` from here on.
        warm.kept_slots += std::mem::take(&mut slot.count);
        if reusable && warm.kept_slots < WARM_RUNS {
            let mut state = self.lock();
            if state.warm.len() < WARM_STORES {
                state.warm.push(warm);
                return;
            }
        }
        let kept = warm.kept_slots;
        drop(warm.store);
        self.give_back(kept);
    }

    /// One slot just taken from the count (under the lock).
    pub(super) fn one_slot(&self) -> Slots<'_> {
        Slots {
            pool: self,
            count: 1,
        }
    }

    pub(super) fn give_back(&self, count: u32) {
        let mut state = self.lock();
        state.free += count;
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }
}
