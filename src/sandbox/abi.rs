//! The ABI a patch sees: the three host functions of the `phoenix` import module (each
//! checks whole buffers against the module's memory and charges fuel for the bytes it copies),
//! the imports a module may declare, and the per-run state they act on (the fault, the plan
//! being built, the log lines, the resource limiter). None of them acts on the system.

use super::*;

/// The host functions a patch may import, with their wasm signatures (params, results).
pub(super) const ALLOWED_IMPORTS: [(&str, &[ValKind], &[ValKind]); 3] = [
    (
        "fault_get",
        &[ValKind::I32, ValKind::I32, ValKind::I32, ValKind::I32],
        &[ValKind::I32],
    ),
    ("action", &[ValKind::I32, ValKind::I32], &[ValKind::I32]),
    ("log", &[ValKind::I32, ValKind::I32], &[]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValKind {
    I32,
    Other,
}

pub(super) fn kinds(types: impl Iterator<Item = ValType>) -> Vec<ValKind> {
    types
        .map(|t| {
            if matches!(t, ValType::I32) {
                ValKind::I32
            } else {
                ValKind::Other
            }
        })
        .collect()
}

/// What one run may touch: the fault it reads and the plan it builds, plus what went wrong.
pub(super) struct HostState {
    /// None between runs.
    pub(super) fault: Option<Arc<FaultView>>,
    pub(super) plan: Vec<Action>,
    pub(super) limits: Limits,
    /// The instance's exported memory, once instantiated.
    pub(super) memory: Option<Memory>,
    pub(super) failure: Option<RunError>,
    pub(super) log_lines: u32,
    /// Lines the run logged, written to phoenix's log when it ends (those of an inline run
    /// stopped at its budget are dropped: the run is made again).
    pub(super) logs: Vec<String>,
    /// Fuel the run used (also when it failed).
    pub(super) fuel_used: u64,
}

impl HostState {
    /// The state of a store between runs.
    pub(super) fn idle(limits: &Limits) -> HostState {
        HostState {
            fault: None,
            plan: Vec::new(),
            limits: limits.clone(),
            memory: None,
            failure: None,
            log_lines: 0,
            logs: Vec::new(),
            fuel_used: 0,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.failure = Some(RunError::MemoryLimit {
                desired,
                cap: self.limits.memory_bytes,
            });
            return Err(wasmtime::Error::msg("memory limit"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            self.failure = Some(RunError::TableLimit {
                desired,
                cap: self.limits.table_elements,
            });
            return Err(wasmtime::Error::msg("table limit"));
        }
        Ok(true)
    }

    // Counted over the store's life, which spans up to `WARM_RUNS` runs; per module, the pool
    // allows one memory and one table.
    fn instances(&self) -> usize {
        WARM_RUNS as usize
    }

    fn tables(&self) -> usize {
        WARM_RUNS as usize
    }

    fn memories(&self) -> usize {
        WARM_RUNS as usize
    }
}

pub(super) fn bounds(memory: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= memory.len()).then_some(start..end)
}

pub(super) fn memory_of(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    // Known once `heal` runs; a start function's host calls look it up by name.
    if let Some(memory) = caller.data().memory {
        return Some(memory);
    }
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
}

/// Records `failure` and returns the error that unwinds the wasm call.
pub(super) fn fail(caller: &mut Caller<'_, HostState>, failure: RunError) -> wasmtime::Error {
    let message = failure.to_string();
    caller.data_mut().failure = Some(failure);
    wasmtime::Error::msg(message)
}

/// Fuel a host call costs: a base plus one unit per byte it copies, so that a loop of cheap
/// wasm instructions cannot make the host do unbounded work outside the fuel budget.
pub(super) const HOST_CALL_FUEL: u64 = 100;

pub(super) fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL.saturating_add(bytes as u64);
    let left = caller.get_fuel().unwrap_or(0);
    if left < cost {
        let _ = caller.set_fuel(0);
        return Err(fail(caller, RunError::OutOfFuel));
    }
    caller.set_fuel(left - cost)?;
    Ok(())
}

/// The module's memory and the range of `len` bytes at `ptr` in it (at most `keep` of them),
/// charged by length; the whole range must be inside the memory.
pub(super) fn checked_range(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    keep: usize,
) -> wasmtime::Result<(Memory, std::ops::Range<usize>)> {
    let Some(memory) = memory_of(caller) else {
        return Err(fail(caller, RunError::BadPointer));
    };
    let Some(range) = bounds(memory.data(&*caller), ptr, len) else {
        return Err(fail(caller, RunError::BadPointer));
    };
    let range = range.start..range.end.min(range.start.saturating_add(keep));
    charge(caller, range.len())?;
    Ok((memory, range))
}

pub(super) fn host_fault_get(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> wasmtime::Result<i32> {
    let (memory, key) = checked_range(&mut caller, key_ptr, key_len, usize::MAX)?;
    // Key and value are used where they lie (the module's memory, the fault view): no copies.
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(value) = state
        .fault
        .as_deref()
        .and_then(|view| view.get(String::from_utf8_lossy(&data[key]).as_ref()))
    else {
        return Ok(-1);
    };
    // The whole output buffer the module declared must be its own memory, not just the part
    // this value happens to fill.
    let Some(out) = bounds(data, out_ptr, out_cap) else {
        return Err(fail(&mut caller, RunError::BadPointer));
    };
    let copy = value.len().min(out.len());
    data[out.start..out.start + copy].copy_from_slice(&value.as_bytes()[..copy]);
    let length = i32::try_from(value.len()).unwrap_or(i32::MAX);
    charge(&mut caller, copy)?;
    Ok(length)
}

pub(super) fn host_action(
    mut caller: Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let (max_actions, max_action_bytes) = {
        let limits = &caller.data().limits;
        (limits.max_actions, limits.max_action_bytes)
    };
    if caller.data().plan.len() >= max_actions {
        return Err(fail(&mut caller, RunError::PlanTooLarge(max_actions)));
    }
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    if size > max_action_bytes {
        return Err(fail(
            &mut caller,
            RunError::ActionTooLarge {
                size,
                max: max_action_bytes,
            },
        ));
    }
    let (memory, range) = checked_range(&mut caller, ptr, len, usize::MAX)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    match serde_json::from_slice::<Action>(&data[range]) {
        Ok(action) => {
            state.plan.push(action);
            Ok(0)
        }
        Err(error) => Err(fail(&mut caller, RunError::BadAction(error.to_string()))),
    }
}

pub(super) fn host_log(
    mut caller: Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<()> {
    // The line must lie in the module's memory; only its first KiB is kept.
    let (memory, range) = checked_range(&mut caller, ptr, len, 1024)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    state.log_lines += 1;
    // Kept only if phoenix's log takes patch lines at all (the level of `log_patch_line`).
    if state.log_lines <= MAX_LOG_LINES && tracing::enabled!(tracing::Level::INFO) {
        state
            .logs
            .push(String::from_utf8_lossy(&data[range]).into_owned());
    }
    Ok(())
}

/// Lines a run may log; the rest are counted but dropped.
pub(super) const MAX_LOG_LINES: u32 = 32;

pub(super) fn log_patch_line(patch: &str, line: &str) {
    tracing::info!(message = "Patch log.", patch = %patch, line = %line);
}
