//! Circuit breakers: stop auto-healing when healing keeps failing.
//!
//! One breaker per policy (`policy:NAME`) and one for everything (`global`). A breaker keeps the
//! outcomes of recent attempts (a sliding time window); when at least `min_attempts` are in the
//! window and the share of failures reaches `failure_rate`, it opens. While open, matching faults
//! are not auto-healed (they wait for approval or fail `breaker_open`, per policy). After
//! `cooldown` it lets one trial through (half-open): a success closes it, a failure opens it
//! again. Operators can trip or reset it by hand; every change is kept in its audit list.
//!
//! Pure: the store runs these methods atomically on the persisted record.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::forms::Timestamp;
use crate::core::window::WindowCounts;

/// Breaker settings (`[breaker]` in a policy, and in the config for the global one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Outcomes older than this no longer count.
    #[serde(with = "crate::core::forms::duration")]
    pub window: Duration,
    /// Fewer outcomes than this in the window never open the breaker.
    pub min_attempts: u32,
    /// Share of failures (0-1) that opens it.
    pub failure_rate: f64,
    /// How long it stays open before a trial.
    #[serde(with = "crate::core::forms::duration")]
    pub cooldown: Duration,
    /// What happens to a matching fault while it is open.
    pub when_open: WhenOpen,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(600),
            min_attempts: 3,
            failure_rate: 0.5,
            cooldown: Duration::from_secs(300),
            when_open: WhenOpen::Fail,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!("`{key}.failure_rate` must be in (0, 1]"));
        }
        if self.min_attempts == 0 || self.window.is_zero() || self.cooldown.is_zero() {
            return Err(format!(
                "`{key}.min_attempts`, `window` and `cooldown` must be positive"
            ));
        }
        Ok(())
    }
}

/// While a breaker is open: fail matching faults (`breaker_open`) or let them wait for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenOpen {
    Fail,
    Approval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Closed,
    Open,
    HalfOpen,
}

/// One recorded change of position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub at: Timestamp,
    pub to: Position,
    pub by: String,
    pub reason: String,
}

/// The persisted breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    pub name: String,
    pub position: Position,
    /// Attempts and failures in the window. (Records written before 0.1 kept an `outcomes`
    /// list instead; it is ignored, and the counts start empty.)
    #[serde(default)]
    pub recent: WindowCounts,
    pub opened_at: Option<Timestamp>,
    /// The fault allowed through while half-open, and when.
    pub trial: Option<(String, Timestamp)>,
    /// Most recent changes first is easier to read; kept oldest first, at most `AUDIT_LEN` (50).
    pub changes: Vec<Change>,
}

const AUDIT_LEN: usize = 50;

/// What a breaker says about healing one fault now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Closed: heal.
    Allowed,
    /// Half-open: this fault is the one trial.
    Trial,
    /// Open: do not auto-heal; the text says since when and until when.
    Refused(String),
}

impl Breaker {
    pub fn new(name: &str) -> Breaker {
        Breaker {
            name: name.to_owned(),
            position: Position::Closed,
            recent: WindowCounts::default(),
            opened_at: None,
            trial: None,
            changes: Vec::new(),
        }
    }

    fn change(&mut self, at: Timestamp, to: Position, by: &str, reason: String) {
        self.position = to;
        self.changes.push(Change {
            at,
            to,
            by: by.to_owned(),
            reason,
        });
        if self.changes.len() > AUDIT_LEN {
            self.changes.remove(0);
        }
    }

    /// May `fault` be healed now? Moves an open breaker to half-open after its cooldown (and
    /// lets a stuck trial be replaced after another cooldown).
    pub fn admit(&mut self, fault: &str, now: Timestamp, config: &BreakerConfig) -> Admission {
        let cooldown = config.cooldown.as_millis() as u64;
        match self.position {
            Position::Closed => Admission::Allowed,
            Position::Open => {
                let opened = self.opened_at.unwrap_or(now);
                if now.0 >= opened.0 + cooldown {
                    self.change(
                        now,
                        Position::HalfOpen,
                        "phoenix",
                        format!("cooldown over; trial with fault {fault}"),
                    );
                    self.trial = Some((fault.to_owned(), now));
                    Admission::Trial
                } else {
                    let until = Timestamp(opened.0 + cooldown);
                    Admission::Refused(format!(
                        "breaker `{}` is open since {opened}, until {until}",
                        self.name
                    ))
                }
            }
            Position::HalfOpen => match &self.trial {
                Some((trial, _)) if trial == fault => Admission::Trial,
                Some((_, started)) if now.0 < started.0 + cooldown => Admission::Refused(format!(
                    "breaker `{}` is half-open; its trial is running",
                    self.name
                )),
                _ => {
                    self.trial = Some((fault.to_owned(), now));
                    Admission::Trial
                }
            },
        }
    }

    /// Records one attempt's outcome for `fault`; may open or close the breaker.
    pub fn record(&mut self, fault: &str, succeeded: bool, now: Timestamp, config: &BreakerConfig) {
        if self.position == Position::HalfOpen
            && self.trial.as_ref().is_some_and(|(t, _)| t == fault)
        {
            self.trial = None;
            if succeeded {
                self.recent.clear();
                self.opened_at = None;
                self.change(
                    now,
                    Position::Closed,
                    "phoenix",
                    format!("trial fault {fault} healed"),
                );
            } else {
                self.opened_at = Some(now);
                self.change(
                    now,
                    Position::Open,
                    "phoenix",
                    format!("trial fault {fault} failed"),
                );
            }
            return;
        }
        self.recent.add(now, config.window, succeeded);
        if self.position != Position::Closed {
            return;
        }
        let total = self.recent.attempts();
        let failures = self.recent.failures();
        if total >= u64::from(config.min_attempts)
            && failures as f64 >= config.failure_rate * total as f64
        {
            self.opened_at = Some(now);
            let reason = format!("{failures} of the last {total} attempts failed");
            self.change(now, Position::Open, "phoenix", reason);
        }
    }

    /// An operator opens the breaker by hand.
    pub fn trip(&mut self, by: &str, reason: &str, now: Timestamp) {
        self.opened_at = Some(now);
        self.trial = None;
        self.change(
            now,
            Position::Open,
            by,
            format!("tripped by hand: {reason}"),
        );
    }

    /// An operator closes the breaker and forgets its outcomes.
    pub fn reset(&mut self, by: &str, reason: &str, now: Timestamp) {
        self.recent.clear();
        self.opened_at = None;
        self.trial = None;
        self.change(
            now,
            Position::Closed,
            by,
            format!("reset by hand: {reason}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(60),
            min_attempts: 3,
            failure_rate: 0.5,
            cooldown: Duration::from_secs(10),
            when_open: WhenOpen::Fail,
        }
    }

    fn t(seconds: u64) -> Timestamp {
        Timestamp(seconds * 1000)
    }

    #[test]
    fn it_opens_at_the_failure_rate_once_enough_attempts_were_seen() {
        let mut breaker = Breaker::new("policy:p");
        breaker.record("a", false, t(1), &config());
        breaker.record("b", false, t(2), &config());
        assert_eq!(
            breaker.position,
            Position::Closed,
            "two attempts are fewer than min_attempts"
        );
        breaker.record("c", true, t(3), &config());
        assert_eq!(breaker.position, Position::Open, "2 of 3 failed");
        assert!(matches!(
            breaker.admit("d", t(4), &config()),
            Admission::Refused(_)
        ));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut breaker = Breaker::new("global");
        breaker.record("a", false, t(0), &config());
        breaker.record("b", false, t(1), &config());
        breaker.record("c", false, t(100), &config());
        assert_eq!(
            breaker.position,
            Position::Closed,
            "the first two fell out of the 60 s window"
        );
    }

    #[test]
    fn after_the_cooldown_one_trial_decides() {
        let mut breaker = Breaker::new("policy:p");
        breaker.trip("alice", "bad deploy", t(0));
        assert!(matches!(
            breaker.admit("a", t(5), &config()),
            Admission::Refused(_)
        ));
        assert_eq!(breaker.admit("b", t(10), &config()), Admission::Trial);
        assert!(
            matches!(breaker.admit("c", t(11), &config()), Admission::Refused(_)),
            "one trial at a time"
        );
        breaker.record("b", false, t(12), &config());
        assert_eq!(breaker.position, Position::Open);
        assert_eq!(breaker.admit("c", t(22), &config()), Admission::Trial);
        breaker.record("c", true, t(23), &config());
        assert_eq!(breaker.position, Position::Closed);
        assert_eq!(breaker.admit("d", t(24), &config()), Admission::Allowed);
        let audit: Vec<Position> = breaker.changes.iter().map(|c| c.to).collect();
        assert_eq!(
            audit,
            [
                Position::Open,
                Position::HalfOpen,
                Position::Open,
                Position::HalfOpen,
                Position::Closed
            ]
        );
        assert_eq!(breaker.changes[0].by, "alice");
    }

    #[test]
    fn a_reset_forgets_the_failures() {
        let mut breaker = Breaker::new("global");
        for (i, fault) in ["a", "b", "c"].iter().enumerate() {
            breaker.record(fault, false, t(i as u64), &config());
        }
        assert_eq!(breaker.position, Position::Open);
        breaker.reset("bob", "fixed the config", t(5));
        assert_eq!(breaker.admit("d", t(6), &config()), Admission::Allowed);
        breaker.record("d", false, t(7), &config());
        assert_eq!(breaker.position, Position::Closed);
    }
}
