//! The key layout of the one tree (see the store's module doc).

/// `prefix` followed by `name`, sized once (the committer builds several keys per write;
/// `format!` cost it ~2% of its time).
pub(super) fn prefixed(prefix: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.len() + 8);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

pub(super) fn fault_key(id: &str) -> Vec<u8> {
    prefixed("f/", id)
}

pub(super) fn history_prefix(id: &str) -> Vec<u8> {
    let mut prefix = prefixed("h/", id);
    prefix.push(b'/');
    prefix
}

pub(super) fn history_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = history_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn fingerprint_key(fingerprint: &str) -> Vec<u8> {
    prefixed("fp/", fingerprint)
}

/// How many faults of `app` are open.
pub(super) fn open_count_key(app: &str) -> Vec<u8> {
    prefixed("oc/", app)
}

/// The healing runs counted against `app`'s rate limit (a [`crate::core::window::WindowCounts`]).
pub(super) fn app_runs_key(app: &str) -> Vec<u8> {
    prefixed("rw/", app)
}

pub(super) fn breaker_key(name: &str) -> Vec<u8> {
    prefixed("br/", name)
}

pub(super) fn policy_snapshot_key(hash: &str) -> Vec<u8> {
    prefixed("ps/", hash)
}

/// The last fault with this fingerprint that ended, for reopening a recurrence (kept only for
/// faults whose source may recur, see [`Source::may_recur`]).
pub(super) fn last_closed_key(fingerprint: &str) -> Vec<u8> {
    prefixed("fl/", fingerprint)
}
