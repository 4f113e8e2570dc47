//! Detection sources: everything that finds faults besides `POST /v1/faults`. Each one turns
//! what it sees into reports (and resolutions) for the intake, so all faults share one dedup and
//! one durability path.

pub mod alertmanager;
pub mod logwatch;
pub mod probe;
