//! What a write job sees: the [`Writer`] over the tree, the group in flight and its own writes
//! (an overlay read through, scanned merged), and the committer's caches (open faults as the tree
//! holds them, the fingerprint index, the registry's reader cache).

use super::*;

/// Writes not yet in sled, by key (`None`: removed): a group's, journaled as one record.
pub(super) type Pending = BTreeMap<Vec<u8>, Option<sled::IVec>>;

/// The writes of the jobs run so far in this group, the group in flight, and the caches of
/// what the committer sees (see [`FaultCache`], [`FingerprintIndex`]).
#[derive(Default)]
pub(super) struct Group {
    pub(super) pending: Pending,
    /// The writes of the group handed over last, read before the tree: the journal thread may
    /// not have applied them yet. Every earlier group is in the tree (the committer hands a
    /// group over only once the journal thread has applied the one before).
    pub(super) inflight: Arc<Pending>,
    /// Fault records written by this group's jobs, in order: the fault written, or `None`
    /// when written in a form the cache cannot follow (raw bytes, a removal).
    pub(super) faults: Vec<(Vec<u8>, Option<Box<Fault>>)>,
    pub(super) cache: FaultCache,
    /// A patch record or an active version was written by this group's jobs.
    pub(super) registry_changed: bool,
    /// Breaker positions written by this group's jobs, for readers once applied.
    pub(super) breakers: Vec<(String, Position)>,
    /// Where [`Writer::put`] serializes records (reused: it keeps its capacity).
    pub(super) scratch: Vec<u8>,
    pub(super) fingerprints: FingerprintIndex,
}

/// The fingerprint index (`fp/` keys: the open fault of each fingerprint) as the committer
/// sees it, kept by the committer: a report's dedup lookup and a closing fault's release would
/// otherwise search the tree, mostly for a key that is not there (two lookups per fault, ~5%
/// of phoenix's CPU in P3). Loaded when the committer starts and learned from every sealed
/// group, like [`FaultCache`]. Off (`None`: lookups go to the tree) once it would hold more
/// than `FINGERPRINT_INDEX_MAX` open faults.
#[derive(Default)]
pub(super) struct FingerprintIndex(pub(super) Option<HashMap<Vec<u8>, sled::IVec>>);

/// Most open faults the fingerprint index follows (about 150 bytes each).
pub(super) const FINGERPRINT_INDEX_MAX: usize = 65_536;

impl FingerprintIndex {
    pub(super) fn load(tree: &sled::Tree) -> FingerprintIndex {
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
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Option<&sled::IVec>> {
        let index = self.0.as_ref()?;
        key.starts_with(b"fp/").then(|| index.get(key))
    }

    /// Learns a write of a sealed group.
    pub(super) fn learn(&mut self, key: &[u8], value: Option<&sled::IVec>) {
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
pub(super) struct FaultCache(pub(super) HashMap<Vec<u8>, Fault>);

/// Largest serialization buffer the committer keeps between writes (records are ~0.5-1 KiB).
pub(super) const SCRATCH_KEPT: usize = 16 << 10;

/// Most faults the committer keeps decoded (about 1 KiB each).
pub(super) const FAULT_CACHE_ENTRIES: usize = 1024;

impl FaultCache {
    pub(super) fn keep(&mut self, key: Vec<u8>, fault: Fault) {
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
    pub(super) fn learn(&mut self, written: Vec<(Vec<u8>, Option<Box<Fault>>)>) {
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

pub(super) fn is_fault_key(key: &[u8]) -> bool {
    key.starts_with(b"f/")
}

/// Keys that [`RegistryCache`] mirrors: patch records and active versions.
pub(super) fn is_registry_key(key: &[u8]) -> bool {
    key.starts_with(b"pv/") || key.starts_with(b"pa/")
}

/// Patch records and active versions as last read, for the engine's analysis of every fault
/// (which otherwise read and parsed them from sled each time). Valid for one `generation` of
/// [`Commits::registry_generation`], which the committer bumps after applying any write to
/// those keys and before acknowledging it.
#[derive(Default)]
pub(super) struct RegistryCache {
    pub(super) generation: u64,
    pub(super) active: HashMap<String, Option<String>>,
    pub(super) records: HashMap<(String, String), Option<PatchRecord>>,
}

/// A write in progress: reads see the store as committed so far, including the writes of the
/// jobs before it in its group; its own writes are kept apart until it succeeds, so a job that
/// fails leaves nothing behind.
pub struct Writer<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) group: &'a mut Group,
    pub(super) own: Pending,
    /// This job's fault writes, for the cache (see [`Group::faults`]).
    pub(super) own_faults: Vec<(Vec<u8>, Option<Box<Fault>>)>,
    /// This job's breaker writes (see [`Group::breakers`]).
    pub(super) own_breakers: Vec<(String, Position)>,
}

impl Writer<'_> {
    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
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
    pub(super) fn fault(&mut self, key: &[u8]) -> Result<Option<Fault>, StoreError> {
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
    pub(super) fn put_fault(&mut self, key: &[u8], fault: &Fault) -> Result<(), StoreError> {
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
    pub(super) fn put_breaker(&mut self, breaker: &Breaker) -> Result<(), StoreError> {
        self.put(&breaker_key(&breaker.name), breaker)?;
        self.own_breakers
            .push((breaker.name.clone(), breaker.position));
        Ok(())
    }

    pub(super) fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StoreError> {
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

    pub(super) fn put_raw(&mut self, key: &[u8], value: &[u8]) {
        self.written(key, Some(sled::IVec::from(value)));
    }

    pub(super) fn remove(&mut self, key: &[u8]) {
        self.written(key, None);
    }

    pub(super) fn written(&mut self, key: &[u8], value: Option<sled::IVec>) {
        if is_fault_key(key) {
            // Unknown to the cache unless `put_fault` says what was written.
            self.own_faults.push((key.to_vec(), None));
        }
        self.own.insert(key.to_vec(), value);
    }

    /// The records under `prefix` in key order, as this job sees them without its own
    /// writes: the tree, overlaid with the group in flight and this group's earlier writes.
    pub(super) fn scan(&self, prefix: &[u8]) -> Merged {
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
pub(super) struct Merged {
    pub(super) tree: std::iter::Peekable<sled::Iter>,
    pub(super) overlay:
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

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

pub(super) fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(io)? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some),
    }
}

/// Every record under `prefix`, in key order.
pub(super) fn scan<T: DeserializeOwned>(
    tree: &sled::Tree,
    prefix: &[u8],
) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(prefix)
        .map(|item| {
            let (key, value) = item.map_err(io)?;
            decode(&key, &value)
        })
        .collect()
}
