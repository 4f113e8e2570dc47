//! Webhooks: each `[[webhook]]` of the config gets the events it asks for, in the format its
//! receiver speaks — a Slack message, the raw event, a PagerDuty Events API v2 event, or an
//! Opsgenie alert — delivered in the background with retries.
//!
//! Paging formats carry a secret (a routing key, an API key). It is read from a file or a
//! systemd credential when the config loads, never written in the config itself, and never
//! logged or serialized.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::engine::events::{EVENT_KINDS, Events, PushEvent};

/// One `[[webhook]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// `slack`, `raw`, `pagerduty` or `opsgenie`.
    #[serde(default = "default_format")]
    pub format: WebhookFormat,
    /// Event kinds to send; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    /// A file holding the secret a paging format needs (PagerDuty's routing key, Opsgenie's API
    /// key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name of a systemd credential holding that secret (`LoadCredential=NAME:…` in the
    /// unit): read from `$CREDENTIALS_DIRECTORY/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_credential: Option<String>,
    /// The secret, once read ([`WebhookConfig::load`]).
    #[serde(skip)]
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"text": summary}`: Slack, Mattermost, Rocket.Chat and the like.
    Slack,
    /// The event as JSON.
    Raw,
    /// PagerDuty Events API v2 (`url`: the events endpoint, `…/v2/enqueue`).
    Pagerduty,
    /// Opsgenie's Alert API (`url`: the API's base, `https://api.opsgenie.com` or the EU one).
    Opsgenie,
}

impl WebhookFormat {
    fn needs_key(self) -> bool {
        matches!(self, WebhookFormat::Pagerduty | WebhookFormat::Opsgenie)
    }
}

fn default_format() -> WebhookFormat {
    WebhookFormat::Slack
}

/// A secret read from a file: compared and cloned, never shown.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The longest secret accepted (PagerDuty's keys are 32 characters, Opsgenie's 36).
const MAX_SECRET: usize = 256;

impl WebhookConfig {
    /// Checks the webhook and reads its secret. `credentials` is `$CREDENTIALS_DIRECTORY`.
    pub fn load(&mut self, credentials: Option<&Path>) -> Result<(), String> {
        let url = &self.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("webhook `{url}`: `url` must be http(s)"));
        }
        if let Some(kind) = self
            .events
            .iter()
            .find(|k| !EVENT_KINDS.contains(&k.as_str()))
        {
            return Err(format!(
                "webhook `{url}`: unknown event `{kind}` (one of {})",
                EVENT_KINDS.join(", ")
            ));
        }
        let path = match (&self.key_file, &self.key_credential) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "webhook `{url}`: give `key_file` or `key_credential`, not both"
                ));
            }
            (Some(file), None) => Some(file.clone()),
            (None, Some(name)) => {
                if name.is_empty() || name.contains('/') || name.starts_with('.') {
                    return Err(format!(
                        "webhook `{url}`: `key_credential` must be a credential's name, not a path"
                    ));
                }
                let Some(directory) = credentials else {
                    return Err(format!(
                        "webhook `{url}`: `key_credential = \"{name}\"` but CREDENTIALS_DIRECTORY is not set (add `LoadCredential={name}:/path/to/key` to the unit, or use `key_file`)"
                    ));
                };
                Some(directory.join(name))
            }
            (None, None) => None,
        };
        match (self.format.needs_key(), path) {
            (true, None) => Err(format!(
                "webhook `{url}`: format `{}` needs its secret in `key_file` or `key_credential`",
                self.format_name()
            )),
            (false, Some(_)) => Err(format!(
                "webhook `{url}`: format `{}` takes no key",
                self.format_name()
            )),
            (false, None) => Ok(()),
            (true, Some(path)) => {
                self.key =
                    Some(read_secret(&path).map_err(|why| format!("webhook `{url}`: {why}"))?);
                Ok(())
            }
        }
    }

    fn format_name(&self) -> &'static str {
        match self.format {
            WebhookFormat::Slack => "slack",
            WebhookFormat::Raw => "raw",
            WebhookFormat::Pagerduty => "pagerduty",
            WebhookFormat::Opsgenie => "opsgenie",
        }
    }
}

/// Reads a secret: one line of visible ASCII, in a file others cannot read.
fn read_secret(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if metadata.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "`{shown}` is readable by every user; a secret must not be (chmod o-r, or use a systemd credential)"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let secret = text.trim();
    if secret.is_empty()
        || secret.len() > MAX_SECRET
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "`{shown}` must hold one secret: 1-{MAX_SECRET} visible ASCII characters"
        ));
    }
    Ok(Secret(secret.to_owned()))
}

/// One HTTP request to a webhook.
#[derive(Debug, PartialEq)]
pub struct Delivery {
    pub url: String,
    /// An `Authorization` header's value, if the format sends one.
    pub authorization: Option<String>,
    pub body: Value,
}

/// The request `webhook` gets for `event`, or None when its format has nothing to say about it
/// (a pager is not told of a breaker change, nor of a heal that never paged).
pub fn render(webhook: &WebhookConfig, event: &PushEvent, host: &str) -> Option<Delivery> {
    let plain = |body| {
        Some(Delivery {
            url: webhook.url.clone(),
            authorization: None,
            body,
        })
    };
    let key = webhook
        .key
        .as_ref()
        .map(|k| k.0.as_str())
        .unwrap_or_default();
    match webhook.format {
        WebhookFormat::Slack => plain(json!({ "text": event.summary })),
        WebhookFormat::Raw => plain(serde_json::to_value(event).unwrap_or_default()),
        WebhookFormat::Pagerduty => {
            let page = Page::of(event)?;
            let body = match page {
                Page::Open => json!({
                    "routing_key": key,
                    "event_action": "trigger",
                    "dedup_key": event.data["fault_id"],
                    "client": "phoenix",
                    "payload": {
                        "summary": cut(&event.summary, 1024),
                        "source": host,
                        "severity": severity(event, ["critical", "error", "warning", "info"]),
                        "timestamp": event.at,
                        "component": event.data["app"],
                        "class": event.data["kind"],
                        "group": "phoenix",
                        "custom_details": event.data,
                    },
                }),
                Page::Close => json!({
                    "routing_key": key,
                    "event_action": "resolve",
                    "dedup_key": event.data["fault_id"],
                }),
            };
            plain(body)
        }
        WebhookFormat::Opsgenie => {
            let page = Page::of(event)?;
            let base = webhook.url.trim_end_matches('/');
            let alias = event.data["fault_id"].as_str().unwrap_or_default();
            let (url, body) = match page {
                Page::Open => {
                    let details: serde_json::Map<String, Value> = event
                        .data
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| {
                            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            (k.clone(), Value::String(cut(&text, 8000)))
                        })
                        .collect();
                    let body = json!({
                        "message": cut(&event.summary, 130),
                        "alias": alias,
                        "description": cut(&event.summary, 15000),
                        "source": format!("phoenix@{host}"),
                        "entity": event.data["app"],
                        "priority": severity(event, ["P1", "P2", "P3", "P5"]),
                        "tags": ["phoenix", event.kind],
                        "details": details,
                    });
                    (format!("{base}/v2/alerts"), body)
                }
                Page::Close => {
                    let url = format!(
                        "{base}/v2/alerts/{}/close?identifierType=alias",
                        url_segment(alias)
                    );
                    let body = json!({
                        "source": format!("phoenix@{host}"),
                        "note": cut(&event.summary, 25000),
                    });
                    (url, body)
                }
            };
            Some(Delivery {
                url,
                authorization: Some(format!("GenieKey {key}")),
                body,
            })
        }
    }
}

/// What a pager does with an event.
enum Page {
    /// A person is needed: the fault failed, or waits for an approval.
    Open,
    /// It healed after having paged (it waited for an approval).
    Close,
}

impl Page {
    fn of(event: &PushEvent) -> Option<Page> {
        match event.kind.as_str() {
            "approval_requested" => Some(Page::Open),
            "fault_closed" => match event.data["state"].as_str() {
                Some("failed") => Some(Page::Open),
                Some("healed") if event.data["approval"] == true => Some(Page::Close),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The fault's severity in a vendor's words: `names` for critical, error, warning, info.
fn severity(event: &PushEvent, names: [&'static str; 4]) -> &'static str {
    match event.data["severity"].as_str() {
        Some("critical") => names[0],
        Some("warning") => names[2],
        Some("info") => names[3],
        _ => names[1],
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// `text` as one URL path segment (a fault id is `[A-Za-z0-9-]` already; this keeps it so
/// whatever it becomes).
fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Delivery attempts per event and webhook, and the pause before each retry.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];

/// This machine's name, as a pager shows where a fault happened.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Sends every matching event to each webhook, in the background, with retries.
pub fn spawn_webhooks(events: &Events, webhooks: Vec<WebhookConfig>, http: reqwest::Client) {
    let host: Arc<str> = host_name().into();
    for webhook in webhooks {
        let mut receiver = events.subscribe();
        let failures = events.webhook_failure_counter();
        let http = http.clone();
        let host = Arc::clone(&host);
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
                let Some(delivery) = render(&webhook, &event, &host) else {
                    continue;
                };
                // Each delivery on its own task: a slow endpoint does not hold back the next event.
                let (http, failures) = (http.clone(), Arc::clone(&failures));
                tokio::spawn(async move {
                    let url = &delivery.url;
                    for (attempt, pause) in
                        std::iter::once(Duration::ZERO).chain(RETRIES).enumerate()
                    {
                        tokio::time::sleep(pause).await;
                        let mut request = http
                            .post(url)
                            .json(&delivery.body)
                            .timeout(Duration::from_secs(5));
                        if let Some(authorization) = &delivery.authorization {
                            request = request.header(reqwest::header::AUTHORIZATION, authorization);
                        }
                        match request.send().await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fault::Timestamp;

    fn webhook(format: &str, extra: &str) -> Result<WebhookConfig, String> {
        let mut webhook: WebhookConfig = toml::from_str(&format!(
            "url = \"https://pager.example/v2/enqueue\"\nformat = \"{format}\"\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        webhook.load(None)?;
        Ok(webhook)
    }

    fn key_file(mode: u32, text: &str) -> (tempfile::TempDir, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let line = format!("key_file = \"{}\"", path.display());
        (dir, line)
    }

    fn event(kind: &str, data: Value) -> PushEvent {
        PushEvent {
            kind: kind.into(),
            at: Timestamp(0),
            summary: "phoenix: fault f-1 (web down) failed (verify_failed): no".into(),
            data,
        }
    }

    #[test]
    fn a_paging_format_needs_a_private_secret_and_the_others_take_none() {
        let refused = |format: &str, extra: &str, why: &str| {
            let error = webhook(format, extra).unwrap_err();
            assert!(error.contains(why), "{format} {extra}: {error}");
        };
        refused("pagerduty", "", "needs its secret");
        refused("opsgenie", "", "needs its secret");
        let (_dir, line) = key_file(0o600, "k\n");
        refused("slack", &line, "takes no key");
        let (_dir, open) = key_file(0o644, "k\n");
        refused("pagerduty", &open, "readable by every user");
        let (_dir, empty) = key_file(0o600, " \n");
        refused("pagerduty", &empty, "must hold one secret");
        let (_dir, two) = key_file(0o600, "a b\n");
        refused("pagerduty", &two, "must hold one secret");
        refused(
            "pagerduty",
            "key_credential = \"pd\"",
            "CREDENTIALS_DIRECTORY is not set",
        );
        refused("pagerduty", "key_credential = \"../pd\"", "not a path");
        refused(
            "pagerduty",
            &format!("{line}\nkey_credential = \"pd\""),
            "not both",
        );
        refused("pagerduty", "routing_key = \"k\"", "unknown field");

        let ok = webhook("pagerduty", &line).unwrap();
        assert_eq!(ok.key, Some(Secret("k".into())));
        assert!(!format!("{ok:?}").contains("\"k\""), "{ok:?}");
        assert!(!serde_json::to_string(&ok).unwrap().contains("\"k\""));
    }

    #[test]
    fn a_credential_is_read_from_the_credentials_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pagerduty");
        std::fs::write(&path, "R0UTING\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mut webhook: WebhookConfig = toml::from_str(
            "url = \"https://e.example\"\nformat = \"pagerduty\"\nkey_credential = \"pagerduty\"",
        )
        .unwrap();
        webhook.load(Some(dir.path())).unwrap();
        assert_eq!(webhook.key, Some(Secret("R0UTING".into())));
    }

    #[test]
    fn pagers_hear_of_failures_and_approvals_and_of_heals_only_after_a_page() {
        let (_dir, line) = key_file(0o600, "k");
        let pd = webhook("pagerduty", &line).unwrap();
        let failed = event(
            "fault_closed",
            json!({"fault_id": "f-1", "state": "failed", "severity": "critical", "app": "web", "kind": "down"}),
        );
        assert!(render(&pd, &failed, "h").is_some());
        let asked = event(
            "approval_requested",
            json!({"fault_id": "f-1", "app": "web"}),
        );
        assert_eq!(
            render(&pd, &asked, "h").unwrap().body["event_action"],
            "trigger"
        );
        let healed = |approval: bool| {
            event(
                "fault_closed",
                json!({"fault_id": "f-1", "state": "healed", "approval": approval}),
            )
        };
        assert_eq!(
            render(&pd, &healed(true), "h").unwrap().body["event_action"],
            "resolve"
        );
        assert_eq!(render(&pd, &healed(false), "h"), None);
        assert_eq!(render(&pd, &event("breaker_changed", json!({})), "h"), None);
        // Chat formats get everything.
        let slack = webhook("slack", "").unwrap();
        assert!(render(&slack, &healed(false), "h").is_some());
    }

    #[test]
    fn severities_map_to_each_vendors_words() {
        let (_dir, line) = key_file(0o600, "k");
        let pd = webhook("pagerduty", &line).unwrap();
        let og = webhook("opsgenie", &line).unwrap();
        for (ours, pagerduty, opsgenie) in [
            ("critical", "critical", "P1"),
            ("error", "error", "P2"),
            ("warning", "warning", "P3"),
            ("info", "info", "P5"),
        ] {
            let failed = event(
                "fault_closed",
                json!({"fault_id": "f", "state": "failed", "severity": ours}),
            );
            let pd_body = render(&pd, &failed, "h").unwrap().body;
            assert_eq!(pd_body["payload"]["severity"], pagerduty);
            assert_eq!(
                render(&og, &failed, "h").unwrap().body["priority"],
                opsgenie
            );
        }
    }

    #[test]
    fn long_summaries_are_cut_to_each_vendors_limit_on_a_character_boundary() {
        let (_dir, line) = key_file(0o600, "k");
        let og = webhook("opsgenie", &line).unwrap();
        let mut long = event("fault_closed", json!({"fault_id": "f", "state": "failed"}));
        long.summary = "é".repeat(2000);
        let body = render(&og, &long, "h").unwrap().body;
        let message = body["message"].as_str().unwrap();
        assert_eq!(message.len(), 130);
        assert_eq!(body["description"].as_str().unwrap().len(), 4000);
        assert_eq!(url_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
