//! The Prometheus Alertmanager receiver: turns a webhook notification (payload version 4) into
//! fault reports and resolutions for the intake.
//!
//! Each firing alert becomes a fault: `app` and `kind` come from two of its labels (by default
//! `app` and `alertname`), the other labels come along, the alert's own fingerprint is the dedup
//! key (so a repeated notification counts an occurrence of the same fault). A resolved alert is
//! recorded on its open fault; if nothing was applied yet, the engine closes that fault without
//! acting. The payload is read tolerantly (unknown fields are ignored, as Alertmanager adds
//! fields over time); an alert that cannot become a valid fault is skipped with a reason, so one
//! bad alert neither blocks the others nor makes Alertmanager retry forever.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::fault::{Report, Severity, Source};
use crate::sources::intake::{Intake, IntakeError};

/// Which alert labels name the fault's app and kind (`[alertmanager]` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerConfig {
    pub app_label: String,
    pub kind_label: String,
}

impl Default for AlertmanagerConfig {
    fn default() -> AlertmanagerConfig {
        AlertmanagerConfig {
            app_label: "app".into(),
            kind_label: "alertname".into(),
        }
    }
}

/// The webhook body. Only the fields phoenix uses are declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub ends_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// What happened to each alert of a notification.
#[derive(Debug, Default, Serialize)]
pub struct Receipt {
    /// Ids of the faults the firing alerts opened or counted.
    pub firing: Vec<String>,
    /// Ids of the open faults that were marked resolved.
    pub resolved: Vec<String>,
    /// Resolved alerts with no open fault (already closed, or never seen).
    pub resolved_unmatched: usize,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub fingerprint: String,
    pub reason: String,
}

/// Why a notification as a whole was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Not payload version 4.
    #[error("unsupported Alertmanager webhook version `{0}` (phoenix reads version 4)")]
    Version(String),
    /// The store failed; Alertmanager should retry.
    #[error(transparent)]
    Intake(IntakeError),
}

/// The report an alert stands for, or why it cannot be one.
pub fn to_report(alert: &Alert, config: &AlertmanagerConfig) -> Result<Report, String> {
    let label = |name: &str| {
        alert
            .labels
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("alert has no `{name}` label"))
    };
    if alert.fingerprint.is_empty() {
        return Err("alert has no fingerprint".into());
    }
    let severity = match alert.labels.get("severity").map(String::as_str) {
        Some("critical") => Severity::Critical,
        Some("warning") => Severity::Warning,
        Some("info") => Severity::Info,
        _ => Severity::Error,
    };
    let mut message = alert
        .annotations
        .get("summary")
        .or_else(|| alert.annotations.get("description"))
        .cloned();
    if let Some(text) = message.as_mut() {
        truncate(text, crate::core::fault::MAX_MESSAGE_LEN);
    }
    let report = Report {
        app: label(&config.app_label)?,
        kind: label(&config.kind_label)?,
        labels: without_reserved(&alert.labels),
        message,
        severity,
        dedup_key: Some(alert.fingerprint.clone()),
        reopen_within: None,
    };
    report.validate().map_err(|e| e.to_string())?;
    Ok(report)
}

/// An alert's labels with each one only phoenix's own sources set (`probe`, `log`, …, see
/// [`crate::core::fault::RESERVED_LABELS`]) renamed `alert_NAME`, so an alert keeps what it says
/// without posing as one of them (a label of that name already in the alert is kept).
fn without_reserved(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut kept = labels.clone();
    for reserved in crate::core::fault::RESERVED_LABELS {
        if let Some(value) = kept.remove(reserved) {
            kept.entry(format!("alert_{reserved}")).or_insert(value);
        }
    }
    kept
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Feeds every alert of `notification` to the intake.
pub async fn receive(
    intake: &Intake,
    config: &AlertmanagerConfig,
    notification: Notification,
) -> Result<Receipt, ReceiveError> {
    if notification.version != "4" {
        return Err(ReceiveError::Version(notification.version));
    }
    let mut receipt = Receipt::default();
    for alert in &notification.alerts {
        let report = match to_report(alert, config) {
            Ok(report) => report,
            Err(reason) => {
                tracing::warn!(message = "Alert skipped.", fingerprint = %alert.fingerprint, %reason);
                receipt.skipped.push(Skipped {
                    fingerprint: alert.fingerprint.clone(),
                    reason,
                });
                continue;
            }
        };
        match alert.status {
            AlertStatus::Firing => {
                let reported = intake
                    .submit(report, Source::Alertmanager, None)
                    .await
                    .map_err(ReceiveError::Intake)?;
                receipt.firing.push(reported.fault.id);
            }
            AlertStatus::Resolved => {
                let ends = alert.ends_at.as_deref().unwrap_or("an unknown time");
                let detail = format!(
                    "Alertmanager: alert {} resolved (ends at {ends})",
                    alert.fingerprint
                );
                match intake
                    .resolve(&report, detail)
                    .await
                    .map_err(ReceiveError::Intake)?
                {
                    Some(id) => receipt.resolved.push(id),
                    None => receipt.resolved_unmatched += 1,
                }
            }
        }
    }
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(labels: &[(&str, &str)]) -> Alert {
        Alert {
            status: AlertStatus::Firing,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: [("summary".to_string(), "disk almost full".to_string())].into(),
            fingerprint: "c0ffee0123456789".into(),
            ends_at: None,
        }
    }

    #[test]
    fn an_alert_maps_to_a_report_keyed_by_its_fingerprint() {
        let config = AlertmanagerConfig::default();
        let report = to_report(
            &alert(&[
                ("app", "web"),
                ("alertname", "DiskFull"),
                ("severity", "critical"),
            ]),
            &config,
        )
        .unwrap();
        assert_eq!(
            (report.app.as_str(), report.kind.as_str()),
            ("web", "DiskFull")
        );
        assert_eq!(report.severity, Severity::Critical);
        assert_eq!(report.message.as_deref(), Some("disk almost full"));
        // Labels may change between notifications; the alert fingerprint keeps it one fault.
        let mut changed = alert(&[("app", "web"), ("alertname", "DiskFull"), ("value", "97")]);
        changed.annotations.clear();
        assert_eq!(
            to_report(&changed, &config).unwrap().fingerprint(),
            report.fingerprint()
        );
    }

    #[test]
    fn an_alert_keeps_labels_only_phoenixs_own_sources_set_under_another_name() {
        let config = AlertmanagerConfig::default();
        let report = to_report(
            &alert(&[
                ("app", "web"),
                ("alertname", "Exited"),
                ("supervisor", "phoenix"),
                ("probe", "blackbox"),
                ("alert_log", "kept"),
                ("log", "dropped for the existing alert_log"),
            ]),
            &config,
        )
        .unwrap();
        let labels: Vec<(&str, &str)> = report
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("alert_log", "kept"),
                ("alert_probe", "blackbox"),
                ("alert_supervisor", "phoenix"),
                ("alertname", "Exited"),
                ("app", "web"),
            ]
        );
        assert_eq!(report.check_labels_for(Source::Alertmanager), Ok(()));
    }

    #[test]
    fn labels_for_app_and_kind_are_configurable_and_required() {
        let config = AlertmanagerConfig {
            app_label: "service".into(),
            kind_label: "alertname".into(),
        };
        let report =
            to_report(&alert(&[("service", "db"), ("alertname", "Down")]), &config).unwrap();
        assert_eq!(report.app, "db");
        let missing =
            to_report(&alert(&[("app", "db"), ("alertname", "Down")]), &config).unwrap_err();
        assert_eq!(missing, "alert has no `service` label");
        let bad = to_report(
            &alert(&[("service", "my db"), ("alertname", "Down")]),
            &config,
        )
        .unwrap_err();
        assert!(bad.contains("`app` may only contain"), "{bad}");
    }

    #[test]
    fn a_v4_payload_parses_and_ignores_unknown_fields() {
        let body = r#"{"version":"4","groupKey":"{}:{}","truncatedAlerts":0,"status":"firing",
            "receiver":"phoenix","groupLabels":{},"commonLabels":{},"commonAnnotations":{},
            "externalURL":"http://am","alerts":[{"status":"resolved","labels":{"app":"a","alertname":"X"},
            "annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"2026-01-01T00:05:00Z",
            "generatorURL":"","fingerprint":"abc","newField":1}]}"#;
        let notification: Notification = serde_json::from_str(body).unwrap();
        assert_eq!(notification.alerts[0].status, AlertStatus::Resolved);
        assert_eq!(
            notification.alerts[0].ends_at.as_deref(),
            Some("2026-01-01T00:05:00Z")
        );
    }
}
