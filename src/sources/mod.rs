//! Detection sources: the intake, the one door every fault comes in by, and everything that
//! finds faults besides `POST /v1/faults` (probes, log watches, Alertmanager). Each one turns
//! what it sees into reports (and resolutions) for the intake, so all faults share one dedup and
//! one durability path.
//!
//! **Layer rule:** sources feed the engine and the store's facade; they never reach into the
//! store's insides.

pub mod alertmanager;
pub mod intake;
pub mod logwatch;
pub mod probe;
