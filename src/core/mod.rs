//! The core: phoenix's data and rules, pure. What a fault is and how it moves (the transition
//! table), what a plan and a policy say and how one is checked against the other, breakers,
//! sliding windows, approvals, and the forms every layer shares (durations, TOML errors, the
//! escaping of text from outside, the metrics registry).
//!
//! **Layer rule:** no I/O, no tokio, and no import from any other layer: everything else is
//! built on this.

pub mod approval;
pub mod breaker;
pub mod escape;
pub mod fault;
pub mod forms;
pub mod machine;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod record;
pub mod source;
pub mod window;
