//! Admission: the circuit breakers a run answers to (the global one and its policy's), asked
//! before a plan is used and fed each attempt's outcome.

use crate::core::breaker::{Admission, Breaker, Change, Position};
use crate::core::fault::{Fault, Timestamp};
use crate::core::policy::Policy;

use super::{Engine, EngineError};

/// The breakers a run of `policy` answers to: the global one and the policy's own.
pub(super) fn breaker_names(policy: &Policy) -> [String; 2] {
    ["global".to_string(), format!("policy:{}", policy.name)]
}

/// A breaker that changed position when fed an outcome: its name and the change.
pub(super) type BreakerChange = Option<(String, Change)>;

impl Engine {
    /// Asks the global breaker, then the policy's, whether `fault` may be healed now. Returns
    /// why not, or None.
    pub(super) async fn admit(
        &self,
        fault: &str,
        policy: &Policy,
    ) -> Result<Option<String>, EngineError> {
        let now = Timestamp::now();
        let [global, own] = breaker_names(policy);
        let checks = [
            (global, self.parts.global_breaker.clone()),
            (own, policy.breaker.clone()),
        ];
        for (name, config) in checks {
            // A closed breaker (the usual case) admits without changing: no write, no flush.
            if self.breaker_closed(&name)? {
                continue;
            }
            let id = fault.to_owned();
            let admission = self
                .parts
                .store
                .update_breaker(&name, move |b| b.admit(&id, now, &config))
                .await?;
            if let Admission::Refused(why) = admission {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// Feeds one attempt's outcome to the global and the policy's breaker (one write); logs and
    /// announces a change.
    pub(super) async fn record_outcome(&self, fault: &Fault, policy: &Policy, succeeded: bool) {
        let (names, feed) = self.outcome_feed(fault, policy, succeeded);
        match self.parts.store.update_breakers(names, feed).await {
            Ok(changes) => self.announce_breaker_changes(changes),
            Err(error) => {
                tracing::error!(message = "Cannot record a breaker outcome.", fault = %fault.id, %error)
            }
        }
    }

    /// The breakers an attempt of `fault` under `policy` feeds (the global one and the
    /// policy's), and the update that records its outcome in each; the update returns a change
    /// of position, if any.
    pub(super) fn outcome_feed(
        &self,
        fault: &Fault,
        policy: &Policy,
        succeeded: bool,
    ) -> (
        Vec<String>,
        impl FnMut(&str, &mut Breaker) -> BreakerChange + use<>,
    ) {
        let now = Timestamp::now();
        let global = self.parts.global_breaker.clone();
        let own = policy.breaker.clone();
        let names = breaker_names(policy).to_vec();
        let id = fault.id.clone();
        let feed = move |name: &str, b: &mut Breaker| {
            let config = if name == "global" { &global } else { &own };
            let before = b.position;
            b.record(&id, succeeded, now, config);
            (before != b.position)
                .then(|| b.changes.last().cloned().map(|c| (name.to_owned(), c)))
                .flatten()
        };
        (names, feed)
    }

    /// Logs and announces the breakers that changed position.
    pub(super) fn announce_breaker_changes(&self, changes: Vec<BreakerChange>) {
        for (name, change) in changes.into_iter().flatten() {
            tracing::warn!(message = "Circuit breaker changed.", breaker = %name, to = ?change.to, reason = %change.reason);
            let summary = format!(
                "phoenix: breaker `{name}` is now {:?}: {}",
                change.to, change.reason
            );
            let data = serde_json::json!({ "breaker": name, "change": change });
            self.parts.events.publish("breaker_changed", summary, data);
        }
    }

    /// Whether the global and the policy's breaker are both closed (read, not written).
    pub(super) fn breakers_closed(&self, policy: &Policy) -> Result<bool, EngineError> {
        for name in breaker_names(policy) {
            if !self.breaker_closed(&name)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn breaker_closed(&self, name: &str) -> Result<bool, EngineError> {
        Ok(self
            .parts
            .store
            .breaker_position(name)?
            .is_none_or(|position| position == Position::Closed))
    }
}
