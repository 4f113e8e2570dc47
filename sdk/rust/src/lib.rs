//! Write a [phoenix](https://github.com/) patch as a plain Rust function.
//!
//! A patch is untrusted WebAssembly that reads one fault and returns a *plan*: the actions it
//! asks phoenix to take. phoenix checks the plan against the policy's capabilities and carries
//! it out; the patch itself touches nothing. This crate wraps phoenix's patch ABI, version 1
//! (`docs/patch-abi.md`): [`fault`] reads the fault, [`plan`] appends actions as correctly
//! escaped JSON, [`log()`] writes a line to phoenix's log, and [`entry!`] exports your
//! function as the module's `heal`.
//!
//! ```ignore
//! #![no_std]
//! use phoenix_patch::{decline, fault, plan, Outcome};
//!
//! phoenix_patch::entry!(heal);
//!
//! fn heal() -> Outcome {
//!     if fault::kind() != "disk_full" {
//!         return decline();
//!     }
//!     plan::exec("cleanup")
//! }
//! ```
//!
//! Nothing here allocates: fields are read into fixed buffers ([`Text`]) on the stack, sized
//! for phoenix's limits, and actions are written into an 8 KiB buffer (phoenix's default
//! `max_action_bytes`). The crate has no dependencies and builds with Rust 1.63 or newer.
//! On other targets than wasm32 it links a stand-in host ([`testing`]), so a patch's logic can
//! be unit-tested with `cargo test`.

#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod buf;
pub mod fault;
mod host;
mod json;
pub mod plan;
mod text;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use text::Text;

/// The version of phoenix's patch ABI this crate speaks. A module built with it states the
/// version in its `phoenix.abi` custom section; phoenix refuses versions it does not speak.
pub const ABI_VERSION: u32 = 1;

// The module's statement of its ABI version: a custom section holding the version's decimal
// digits. `#[used]` keeps it through link-time optimisation.
#[cfg(target_arch = "wasm32")]
#[link_section = "phoenix.abi"]
#[used]
static ABI: [u8; 1] = *b"1";

/// How `heal` ended short of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The patch does not heal this fault: `heal` returns 1, and phoenix records
    /// `sandbox_error` (`declined: heal() returned 1`) without running anything.
    Declined,
    /// An action did not fit in [`plan::MAX_ACTION_BYTES`]: `heal` returns 2.
    ActionTooLarge,
    /// An HTTP action was given more than [`plan::MAX_HEADERS`] headers: `heal` returns 3.
    TooManyHeaders,
}

impl Stop {
    /// The status `heal` returns for it (0 is reserved for "the plan is ready").
    pub fn status(self) -> i32 {
        match self {
            Stop::Declined => 1,
            Stop::ActionTooLarge => 2,
            Stop::TooManyHeaders => 3,
        }
    }
}

/// What a patch's function returns: `Ok(())` when the plan is ready (it may be empty), or why
/// there is none. Each [`plan`] builder returns it too, so `?` and a last `plan::…` call read
/// naturally.
pub type Outcome = Result<(), Stop>;

/// The patch declines this fault (see [`Stop::Declined`]).
pub fn decline() -> Outcome {
    Err(Stop::Declined)
}

/// Writes `line` to phoenix's log (at `info`, once the run ends, with the patch's name). A run
/// keeps its first 32 lines, each cut at 1 KiB.
pub fn log(line: &str) {
    host::log(line.as_bytes());
}

/// Formats a log line, as `format!` would (at most 1 KiB; longer lines are cut):
/// `phoenix_patch::log!("disk full on {}", mount)`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        let mut line = $crate::Text::<1024>::new();
        let _ = ::core::fmt::Write::write_fmt(&mut line, ::core::format_args!($($arg)*));
        $crate::log(line.as_str());
    }};
}

/// Exports `$heal` (a `fn() -> Outcome`) as the module's `heal`, the function phoenix calls.
#[macro_export]
macro_rules! entry {
    ($heal:path) => {
        #[export_name = "heal"]
        pub extern "C" fn __phoenix_patch_heal() -> i32 {
            $crate::status($heal())
        }
    };
}

/// The status `heal` returns for `outcome` (used by [`entry!`]).
#[doc(hidden)]
pub fn status(outcome: Outcome) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(stop) => stop.status(),
    }
}

// A panic (an index out of bounds, say) ends the run as a trap: phoenix records
// `sandbox_error` with the trap, and nothing of the plan is used.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
