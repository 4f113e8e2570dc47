//! Push: what phoenix announces as it happens — an approval request, a breaker change, a fault
//! reaching its end — fanned out to server-sent-event clients (`GET /v1/events`) and to
//! configured webhooks.
//!
//! Publishing never waits: events go into a bounded broadcast channel, and a slow SSE client or a
//! dead webhook only loses (or retries) its own copy. Healing never blocks on a consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}

/// One `[[webhook]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// `slack` (`{"text": summary}`) or `raw` (the event as JSON).
    #[serde(default = "default_format")]
    pub format: WebhookFormat,
    /// Event kinds to send; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    Slack,
    Raw,
}

fn default_format() -> WebhookFormat {
    WebhookFormat::Slack
}

pub const EVENT_KINDS: [&str; 4] = [
    "approval_requested",
    "approval_decided",
    "breaker_changed",
    "fault_closed",
];

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("webhook `{}`: `url` must be http(s)", self.url));
        }
        if let Some(kind) = self
            .events
            .iter()
            .find(|k| !EVENT_KINDS.contains(&k.as_str()))
        {
            return Err(format!(
                "webhook `{}`: unknown event `{kind}` (one of {})",
                self.url,
                EVENT_KINDS.join(", ")
            ));
        }
        Ok(())
    }
}

/// Delivery attempts per event and webhook, and the pause before each retry.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];

/// Sends every matching event to each webhook, in the background, with retries.
pub fn spawn_webhooks(events: &Events, webhooks: Vec<WebhookConfig>, http: reqwest::Client) {
    for webhook in webhooks {
        let mut receiver = events.subscribe();
        let failures = Arc::clone(&events.webhook_failures);
        let http = http.clone();
        tokio::spawn(async move {
            loop {
                let event = match receiver.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(message = "Webhook fell behind; events skipped.", url = %webhook.url, missed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !webhook.events.is_empty() && !webhook.events.contains(&event.kind) {
                    continue;
                }
                let body = match webhook.format {
                    WebhookFormat::Slack => serde_json::json!({ "text": event.summary }),
                    WebhookFormat::Raw => serde_json::to_value(&event).unwrap_or_default(),
                };
                // Each delivery on its own task: a slow endpoint does not hold back the next event.
                let (http, url, failures) =
                    (http.clone(), webhook.url.clone(), Arc::clone(&failures));
                tokio::spawn(async move {
                    for (attempt, pause) in
                        std::iter::once(Duration::ZERO).chain(RETRIES).enumerate()
                    {
                        tokio::time::sleep(pause).await;
                        let sent = http
                            .post(&url)
                            .json(&body)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status().is_success() => return,
                            Ok(response) => {
                                tracing::warn!(message = "Webhook refused an event.", %url, status = %response.status(), attempt)
                            }
                            Err(error) => {
                                tracing::warn!(message = "Webhook unreachable.", %url, %error, attempt)
                            }
                        }
                    }
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(message = "Webhook delivery failed after every retry.", %url);
                });
            }
        });
    }
}
