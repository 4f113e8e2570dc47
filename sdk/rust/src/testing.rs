//! A stand-in for phoenix on targets other than wasm32, so that a patch's logic can be
//! unit-tested natively with `cargo test`:
//!
//! ```ignore
//! let run = phoenix_patch::testing::run(&[("kind", "disk_full")], heal);
//! assert_eq!(run.status, 0);
//! assert_eq!(run.actions, [r#"{"kind":"exec","command":"cleanup"}"#]);
//! ```
//!
//! The fault is given as phoenix's fields (`kind`, `labels.mount`, …; `attempt` and `source`
//! as phoenix writes them). phoenix's own contract tests (`phoenix patch test`) remain the
//! test of the built module.

use std::cell::RefCell;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::Outcome;

/// What one run of a patch's function did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// What `heal` returns for it: 0 with a plan, else the [`crate::Stop`]'s status.
    pub status: i32,
    /// Each action appended, as the JSON phoenix would receive.
    pub actions: Vec<String>,
    /// Each line logged.
    pub logs: Vec<String>,
}

#[derive(Default)]
struct Host {
    fault: Vec<(String, String)>,
    actions: Vec<String>,
    logs: Vec<String>,
}

std::thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Runs `heal` against a fault with `fields`, and returns what it planned and logged.
pub fn run(fields: &[(&str, &str)], heal: impl FnOnce() -> Outcome) -> Run {
    HOST.with(|host| {
        *host.borrow_mut() = Host {
            fault: fields
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..Host::default()
        };
    });
    let status = crate::status(heal());
    HOST.with(|host| {
        let host = std::mem::take(&mut *host.borrow_mut());
        Run {
            status,
            actions: host.actions,
            logs: host.logs,
        }
    })
}

pub(crate) mod host {
    use super::HOST;
    use std::string::String;

    pub(crate) fn fault_get(key: &[u8], out: &mut [core::mem::MaybeUninit<u8>]) -> i32 {
        HOST.with(|host| {
            let host = host.borrow();
            let value = match host.fault.iter().find(|(k, _)| k.as_bytes() == key) {
                Some((_, value)) => value,
                None => return -1,
            };
            // As phoenix does: the bytes that fit, and the whole length.
            for (slot, byte) in out.iter_mut().zip(value.as_bytes()) {
                *slot = core::mem::MaybeUninit::new(*byte);
            }
            i32::try_from(value.len()).unwrap_or(i32::MAX)
        })
    }

    pub(crate) fn action(json: &[u8]) {
        HOST.with(|host| {
            host.borrow_mut()
                .actions
                .push(String::from_utf8_lossy(json).into_owned())
        });
    }

    pub(crate) fn log(line: &[u8]) {
        HOST.with(|host| {
            host.borrow_mut()
                .logs
                .push(String::from_utf8_lossy(line).into_owned())
        });
    }
}
