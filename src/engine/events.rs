//! Push: what phoenix announces as it happens — an approval request, a breaker change, a fault
//! reaching its end — fanned out to server-sent-event clients (`GET /v1/events`) and to
//! configured webhooks (`webhooks.rs`).
//!
//! Publishing never waits: events go into a bounded broadcast channel, and a slow SSE client or a
//! dead webhook only loses (or retries) its own copy. Healing never blocks on a consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::core::fault::Timestamp;

/// Events kept for slow consumers before they start missing some.
const BACKLOG: usize = 1024;

/// One announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    /// `approval_requested`, `approval_decided`, `breaker_changed` or `fault_closed`.
    pub kind: String,
    pub at: Timestamp,
    /// One human line (what a chat message shows).
    pub summary: String,
    pub data: serde_json::Value,
}

/// The event hub. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<PushEvent>,
    webhook_failures: Arc<AtomicU64>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            sender: broadcast::channel(BACKLOG).0,
            webhook_failures: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Events {
    pub fn publish(&self, kind: &str, summary: String, data: serde_json::Value) {
        let event = PushEvent {
            kind: kind.to_owned(),
            at: Timestamp::now(),
            summary,
            data,
        };
        // No subscriber is fine: nobody is listening.
        let _ = self.sender.send(event);
    }

    /// Whether anything receives events now (an event stream or a webhook): an event
    /// published when nothing does is dropped, so callers may skip building it.
    pub fn listened_to(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PushEvent> {
        self.sender.subscribe()
    }

    /// Webhook deliveries that failed after every retry.
    pub fn webhook_failures(&self) -> u64 {
        self.webhook_failures.load(Ordering::Relaxed)
    }

    /// The counter a webhook's deliveries add their failures to.
    pub(crate) fn webhook_failure_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.webhook_failures)
    }
}

pub const EVENT_KINDS: [&str; 4] = [
    "approval_requested",
    "approval_decided",
    "breaker_changed",
    "fault_closed",
];
