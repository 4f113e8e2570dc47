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
}

/// The labels phoenix's own sources set (a supervised program's exit: `supervisor`,
/// `exit_code`, `signal`; a probe: `probe`, `target`; a log watch: `log`). A report from outside
/// (the API, an alert) may not carry them, so that no reporter can pose as one of them: a
/// forged "exit" of a healthy program would have it restarted.
pub const RESERVED_LABELS: [&str; 6] = [
    "supervisor",
    "exit_code",
    "signal",
    "probe",
    "target",
    "log",
];

impl Source {
    /// Every source, as the patch SDKs must know them (`tests/sdk.rs` keeps them equal).
    pub const ALL: [Source; 5] = [
        Source::Api,
        Source::Alertmanager,
        Source::Probe,
        Source::Log,
        Source::Supervisor,
    ];

    /// The source's name, as in the API and in a policy's `match.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Alertmanager => "alertmanager",
            Source::Probe => "probe",
            Source::Log => "log",
            Source::Supervisor => "supervisor",
        }
    }

    /// A source phoenix runs itself: the only ones whose reports may carry
    /// [`RESERVED_LABELS`].
    pub fn is_phoenixs_own(self) -> bool {
        matches!(self, Source::Probe | Source::Log | Source::Supervisor)
    }

    /// Its reports may carry `reopen_within`: a supervised program that crashes again soon after
    /// its restart healed it reopens that fault. The store remembers the last closed fault per
    /// fingerprint only for such sources.
    pub fn may_recur(self) -> bool {
        matches!(self, Source::Supervisor)
    }
}
