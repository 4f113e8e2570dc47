//! Where a fault came from, and the labels only phoenix's own sources set.

use serde::{Deserialize, Serialize};

/// Where a fault came from. Later detection sources (probes, log watching, supervised programs,
/// Alertmanager) add their own variants and feed the same intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `POST /v1/faults`.
    Api,
    /// `POST /v1/alertmanager` (a Prometheus Alertmanager webhook).
    Alertmanager,
    /// A `[[probe]]` of the config.
    Probe,
    /// A `[[log]]` watch of the config.
    Log,
    /// A `[[program]]` of the config exited.
    Supervisor,
    /// A systemd unit failed (its `OnFailure=phoenix-report@%n.service`): reported with a
    /// token whose `source` is `systemd`, never claimed by a report's body.
    Systemd,
}

/// The labels phoenix's own sources set (a supervised program's exit: `supervisor`,
/// `exit_code`, `signal`; a probe: `probe`, `target`; a log watch: `log`), and the ones of a
/// failed systemd unit (`unit_result`, `unit_exit_code`, `unit_exit_status`). A report from
/// another source (the API, an alert) may not carry them, so that no reporter can pose as one of
/// them: a forged "exit" of a healthy program would have it restarted.
pub const RESERVED_LABELS: [&str; 9] = [
    "supervisor",
    "exit_code",
    "signal",
    "probe",
    "target",
    "log",
    "unit_result",
    "unit_exit_code",
    "unit_exit_status",
];

/// The labels of [`RESERVED_LABELS`] a `systemd` report sets (from systemd's `$MONITOR_*`).
pub const SYSTEMD_LABELS: [&str; 3] = ["unit_result", "unit_exit_code", "unit_exit_status"];

impl Source {
    /// Every source, as the patch SDKs must know them (`tests/sdk.rs` keeps them equal).
    pub const ALL: [Source; 6] = [
        Source::Api,
        Source::Alertmanager,
        Source::Probe,
        Source::Log,
        Source::Supervisor,
        Source::Systemd,
    ];

    /// The source's name, as in the API and in a policy's `match.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Alertmanager => "alertmanager",
            Source::Probe => "probe",
            Source::Log => "log",
            Source::Supervisor => "supervisor",
            Source::Systemd => "systemd",
        }
    }

    /// A source phoenix runs itself: the only ones whose reports may carry every label of
    /// [`RESERVED_LABELS`].
    pub fn is_phoenixs_own(self) -> bool {
        matches!(self, Source::Probe | Source::Log | Source::Supervisor)
    }

    /// Whether a report from this source may carry `label`.
    pub fn may_set(self, label: &str) -> bool {
        self.is_phoenixs_own()
            || !RESERVED_LABELS.contains(&label)
            || (self == Source::Systemd && SYSTEMD_LABELS.contains(&label))
    }

    /// Its reports may carry `reopen_within`: a supervised program that crashes again soon after
    /// its restart healed it reopens that fault. The store remembers the last closed fault per
    /// fingerprint only for such sources.
    pub fn may_recur(self) -> bool {
        matches!(self, Source::Supervisor)
    }
}
