//! Intake: the one door every fault comes in by. It validates a report, records it durably
//! (deduplicated by fingerprint, idempotent by key), and hands new faults to the engine; a new
//! fault that no policy matches is closed `no_policy` in the write that records it.
//!
//! Detection sources (the HTTP API today; probes, log watchers, supervised programs and the
//! Alertmanager receiver later) all call [`Intake::submit`], so they share dedup and durability.

use std::sync::Arc;

use crate::core::fault::{Report, ReportError, Source};
use crate::engine::EngineHandle;
use crate::store::{Decided, Idempotency, Reported, Store, StoreError};

/// Why a report was not recorded. Nothing is stored in either case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeError {
    /// The report is malformed.
    #[error(transparent)]
    Invalid(#[from] ReportError),
    /// The store refused or failed (idempotency mismatch, I/O error…).
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Intake {
    store: Arc<Store>,
    engine: EngineHandle,
}

impl Intake {
    pub fn new(store: Arc<Store>, engine: EngineHandle) -> Intake {
        Intake { store, engine }
    }

    /// The engine this intake feeds (to wake it for other reasons, e.g. a human decision).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Records `report`. Returns once it is durable.
    pub async fn submit(
        &self,
        report: Report,
        source: Source,
        idempotency: Option<Idempotency>,
    ) -> Result<Reported, IntakeError> {
        report.validate()?;
        report.check_labels_for(source)?;
        let decided = Decided {
            opening: self.engine.first_look(&report, source).await,
            recur_to: report.reopen_within.and(self.engine.recurrence()),
        };
        let reported = match (self.store)
            .report_opening(report, source, idempotency, decided)
            .await
        {
            Ok(reported) => reported,
            Err(error) => {
                if matches!(error, StoreError::TooManyOpen { .. }) {
                    crate::core::metrics::metrics().inc("phoenix_reports_refused_total", &[]);
                }
                return Err(error.into());
            }
        };
        crate::core::metrics::metrics().inc(
            "phoenix_faults_reported_total",
            &[("source", source.as_str())],
        );
        if (reported.created || reported.reopened) && !reported.replayed {
            if !reported.opened_with.is_empty() {
                self.engine
                    .announce_written(&reported.fault, &reported.opened_with);
            }
            if !reported.fault.state.is_terminal() {
                self.engine.enqueue_written(reported.fault.clone());
            }
        }
        Ok(reported)
    }

    /// Records that the source considers the fault described by `report` over. If it is still
    /// open, the engine closes it without acting (when nothing was applied yet). Returns the
    /// fault's id, or None when no open fault matches.
    pub async fn resolve(
        &self,
        report: &Report,
        detail: String,
    ) -> Result<Option<String>, IntakeError> {
        let Some(fault) = self
            .store
            .mark_resolved(report.fingerprint(), detail)
            .await?
        else {
            return Ok(None);
        };
        // The engine may be idle on this fault (e.g. awaiting approval): wake it.
        self.engine.enqueue(fault.id.clone());
        Ok(Some(fault.id))
    }
}
