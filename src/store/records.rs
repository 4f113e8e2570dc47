//! The other records: the audit log, circuit breakers, patch versions and modules, the policy
//! snapshots runs refer to, and backups of the whole store.

use super::*;

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

/// What an audit entry says: who did what to what.
#[derive(Debug, Clone)]
pub struct Audited {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Writes `entry` under the next audit sequence number.
pub(super) fn audit_in(
    w: &mut Writer<'_>,
    db: &sled::Db,
    entry: Audited,
) -> Result<(), StoreError> {
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
pub(super) fn update_breakers_in<T>(
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

impl Store {
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
    pub(super) fn registry_read<T: Clone>(
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

    pub(super) fn lock_registry(&self) -> std::sync::MutexGuard<'_, RegistryCache> {
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
}
