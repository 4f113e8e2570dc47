//! The three host functions of the `phoenix` import module, behind safe wrappers. On wasm32
//! they are phoenix's; elsewhere, the stand-in of [`crate::testing`].

#[cfg(target_arch = "wasm32")]
use core::mem::MaybeUninit;

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "phoenix")]
    extern "C" {
        pub fn fault_get(
            key_ptr: *const u8,
            key_len: usize,
            out_ptr: *mut u8,
            out_cap: usize,
        ) -> i32;
        pub fn action(ptr: *const u8, len: usize) -> i32;
        pub fn log(ptr: *const u8, len: usize);
    }
}

/// Copies the fault field `key` into `out` (at most `out.len()` bytes) and returns the field's
/// whole length, or -1 when the fault has no such field.
/// `out` need not be initialized: phoenix writes its first `min(length, out.len())` bytes.
#[cfg(target_arch = "wasm32")]
pub(crate) fn fault_get(key: &[u8], out: &mut [MaybeUninit<u8>]) -> i32 {
    // SAFETY: both buffers are live slices of this module's memory, passed with their lengths;
    // phoenix writes only within `out` and keeps neither pointer after the call.
    unsafe { imports::fault_get(key.as_ptr(), key.len(), out.as_mut_ptr().cast(), out.len()) }
}

/// Appends one action (its JSON) to the plan. phoenix ends the run on a malformed action or
/// one past the plan limits, so this returns only when the action was taken.
#[cfg(target_arch = "wasm32")]
pub(crate) fn action(json: &[u8]) {
    // SAFETY: a live slice of this module's memory with its length; phoenix only reads it.
    unsafe {
        imports::action(json.as_ptr(), json.len());
    }
}

/// A line for phoenix's log.
#[cfg(target_arch = "wasm32")]
pub(crate) fn log(line: &[u8]) {
    // SAFETY: a live slice of this module's memory with its length; phoenix only reads it.
    unsafe { imports::log(line.as_ptr(), line.len()) }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host::{action, fault_get, log};
