//! phoenix: a self-healing supervisor daemon.
//!
//! A fault flows: sources → intake → store → engine (with `core::machine` as its transition
//! table) → sandbox → plan check → effects → verify. The folders are the layers, lowest first;
//! a module imports only from its own layer and the ones below it (`tests/layers.rs` keeps it
//! so). See ARCHITECTURE.md for the map.

pub mod core;
pub mod fs;

pub mod effects;
pub mod fleet;
pub mod sandbox;
pub mod store;

pub mod patch;

pub(crate) mod engine;

pub mod sources;

pub(crate) mod http;

pub mod daemon;
