//! phoenix: a self-healing supervisor daemon.
//!
//! A fault flows: sources → intake → store → engine (with `machine` as its transition table) →
//! sandbox → plan check → effects → verify. See ARCHITECTURE.md for the map.

pub mod api;
pub mod approval;
pub mod auth;
pub mod backup;
pub mod breaker;
pub mod config;
pub mod console;
pub mod containment;
pub mod daemon;
pub mod effects;
pub mod engine;
pub mod escape;
pub mod events;
pub mod fault;
pub mod files;
pub mod guard;
pub mod intake;
pub mod journal;
pub mod listener;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod notify;
pub mod patch;
pub mod plan;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod server;
pub mod sources;
pub mod store;
pub mod supervisor;
pub mod verify;
pub mod watch;
pub mod window;
