//! Counts over a sliding time window, in a bounded number of buckets.
//!
//! The circuit breakers and the per-app rate limit keep "how many attempts (and failures) in the
//! last N minutes" in the store, rewritten at every healing run. One entry per attempt would grow
//! with the rate (at thousands of faults a second, megabytes rewritten per run); buckets keep the
//! record at most [`BUCKETS`] entries whatever the rate. The price: an attempt leaves the window
//! up to one bucket (1/64 of the window) late, never early.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::forms::Timestamp;

/// Buckets per window.
pub const BUCKETS: u64 = 64;

/// Attempts and failures in the window, per bucket (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    buckets: VecDeque<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    /// Start of the bucket, Unix milliseconds.
    start: u64,
    attempts: u32,
    failures: u32,
}

fn width(window: Duration) -> u64 {
    (window.as_millis() as u64 / BUCKETS).max(1)
}

impl WindowCounts {
    /// Counts one attempt at `now` (a failure unless `succeeded`), after dropping what left the
    /// window.
    pub fn add(&mut self, now: Timestamp, window: Duration, succeeded: bool) {
        self.prune(now, window);
        let width = width(window);
        let start = now.0 - now.0 % width;
        if self.buckets.back().is_none_or(|b| b.start < start) {
            self.buckets.push_back(Bucket {
                start,
                attempts: 0,
                failures: 0,
            });
        }
        // A clock stepping back lands in the newest bucket.
        let bucket = self.buckets.back_mut().expect("pushed above");
        bucket.attempts = bucket.attempts.saturating_add(1);
        if !succeeded {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// Drops the buckets that ended before `now - window`.
    pub fn prune(&mut self, now: Timestamp, window: Duration) {
        let horizon = now.0.saturating_sub(window.as_millis() as u64);
        let width = width(window);
        while self
            .buckets
            .front()
            .is_some_and(|b| b.start.saturating_add(width) <= horizon)
        {
            self.buckets.pop_front();
        }
        // A window shortened by a config change can leave more buckets than it has.
        while self.buckets.len() as u64 > BUCKETS + 1 {
            self.buckets.pop_front();
        }
    }

    pub fn attempts(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.attempts)).sum()
    }

    pub fn failures(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.failures)).sum()
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

/// At most `runs_per_app` healing runs per app within `window`; beyond it, faults wait for a
/// person (like systemd's StartLimitBurst, but asking instead of giving up).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub runs_per_app: u32,
    #[serde(with = "crate::core::forms::duration")]
    pub window: std::time::Duration,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            runs_per_app: 20,
            window: std::time::Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn counts_attempts_and_failures_within_the_window() {
        let mut counts = WindowCounts::default();
        let t0 = 1_000_000_000;
        counts.add(Timestamp(t0), MINUTE, true);
        counts.add(Timestamp(t0 + 10), MINUTE, false);
        counts.add(Timestamp(t0 + 30_000), MINUTE, false);
        assert_eq!((counts.attempts(), counts.failures()), (3, 2));
        // Past the window (plus at most one bucket), the first two are gone.
        counts.prune(Timestamp(t0 + 60_000 + 60_000 / BUCKETS + 20), MINUTE);
        assert_eq!((counts.attempts(), counts.failures()), (1, 1));
        counts.prune(Timestamp(t0 + 200_000), MINUTE);
        assert_eq!(counts.attempts(), 0);
    }

    #[test]
    fn an_attempt_never_leaves_early() {
        let mut counts = WindowCounts::default();
        let t0 = 1_000_000_123;
        counts.add(Timestamp(t0), MINUTE, true);
        counts.prune(Timestamp(t0 + 59_999), MINUTE);
        assert_eq!(counts.attempts(), 1);
    }

    #[test]
    fn the_record_stays_small_at_any_rate() {
        let mut counts = WindowCounts::default();
        for i in 0..100_000u64 {
            counts.add(Timestamp(1_000_000_000 + i * 3), MINUTE, i % 3 == 0);
        }
        assert!(counts.buckets.len() as u64 <= BUCKETS + 1);
        assert!(serde_json::to_vec(&counts).unwrap().len() < 4096);
    }
}
