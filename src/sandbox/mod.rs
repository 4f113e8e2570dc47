//! The patch sandbox: runs a patch's WebAssembly module under wasmtime and collects its plan.
//!
//! **Invariant:** this is the only module that imports wasmtime. A patch sees the host only
//! through three functions of the `phoenix` import module, none of which acts on the system:
//!
//! - `fault_get(key_ptr, key_len, out_ptr, out_cap) -> i32`: copies the fault field named by the
//!   key (`app`, `kind`, `message`, `severity`, `fingerprint`, `occurrences`, `labels.NAME`) into
//!   `out`, at most `out_cap` bytes; returns the field's full length, or -1 if it has no value.
//! - `action(ptr, len) -> i32`: appends one action, as JSON (`{"kind":"exec","command":"x"}`), to
//!   the plan; returns 0. A malformed action or one past the plan limits ends the run.
//! - `log(ptr, len)`: a line for phoenix's log (the first 32 lines of a run, 1 KiB each).
//!
//! Pointers and lengths must lie inside the module's memory (else `bad_pointer`), and each host
//! call costs fuel: 100 units plus one per byte copied.
//!
//! The module must export `memory` and `heal: () -> i32` (0 means "plan ready"). Each run gets a
//! fresh instance (its own memory, globals and table) with a fuel budget, a wall-clock deadline
//! (epoch interruption), and memory and table caps; any excess, trap or bad host call fails that
//! run with a precise [`RunError`] and leaves the daemon untouched. Compiled modules are cached
//! on disk by content hash.
//!
//! A wasmtime store outlives its run when the run ended cleanly: the next runs instantiate into
//! it (see `WarmStore`), which saves the store's creation and teardown (a third of a warm
//! run). That keeps the isolation: a core wasm instance reaches nothing of another instance
//! unless the host links them, and phoenix links only its three functions, which act on the
//! current run's state alone.
//!
//! The daemon compiles patches in a short-lived child (`phoenix compile-patch`, the same binary,
//! see [`Compiler`]): a module that crashes or exhausts the compiler cannot take the daemon down,
//! and the compiler's code and memory never become part of the daemon's resident set.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, InstanceAllocationStrategy, InstancePre, Linker,
    Memory, Module, ModuleExport, PoolingAllocationConfig, ResourceLimiter, Store, Trap, ValRaw,
    ValType,
};

use crate::core::plan::Action;

/// Per-run limits. Defaults suit small remediation logic; see the `[sandbox]` config table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel per run (roughly one unit per wasm instruction).
    pub fuel: u64,
    /// Wall-clock budget per run.
    #[serde(with = "crate::core::forms::duration")]
    pub deadline: Duration,
    /// Linear memory cap, in bytes.
    pub memory_bytes: usize,
    /// Table elements cap.
    pub table_elements: usize,
    /// Most actions one plan may hold.
    pub max_actions: usize,
    /// Largest single action, in bytes of JSON.
    pub max_action_bytes: usize,
    /// Largest module accepted at registration, in bytes of wasm.
    pub max_module_bytes: usize,
    /// Memory the patch compiler (a child process) may allocate (its `RLIMIT_DATA`): a module
    /// built to exhaust the compiler is refused at this cap instead of taking the host's memory.
    pub compile_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fuel: 50_000_000,
            deadline: Duration::from_secs(2),
            memory_bytes: 16 << 20,
            table_elements: 10_000,
            max_actions: 32,
            max_action_bytes: 8 << 10,
            max_module_bytes: 1 << 20,
            compile_memory_bytes: 1 << 30,
        }
    }
}

/// The fault as a patch sees it: named string fields.
pub type FaultView = BTreeMap<String, String>;

/// Why a patch run produced no plan. `code()` is the stable short name recorded in the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The fuel budget ran out (an endless or too-long loop).
    #[error("out_of_fuel: the patch used its whole fuel budget")]
    OutOfFuel,
    /// The wall-clock deadline passed.
    #[error("deadline: the patch ran past its {0:?} deadline")]
    Deadline(Duration),
    /// The module tried to grow memory beyond the cap.
    #[error("memory_limit: the patch asked for {desired} bytes of memory; the cap is {cap}")]
    MemoryLimit { desired: usize, cap: usize },
    /// The module tried to grow a table beyond the cap.
    #[error("table_limit: the patch asked for {desired} table elements; the cap is {cap}")]
    TableLimit { desired: usize, cap: usize },
    /// The wasm call stack overflowed (deep recursion).
    #[error("stack_overflow: the patch exhausted its call stack")]
    StackOverflow,
    /// Any other trap (unreachable, out-of-bounds access, division by zero…).
    #[error("trap: {0}")]
    Trap(String),
    /// The plan exceeded the action count limit.
    #[error("plan_too_large: the patch planned more than {0} actions")]
    PlanTooLarge(usize),
    /// One action exceeded the size limit.
    #[error("action_too_large: an action of {size} bytes exceeds the {max}-byte limit")]
    ActionTooLarge { size: usize, max: usize },
    /// An action was not valid JSON of a known kind.
    #[error("bad_action: {0}")]
    BadAction(String),
    /// A host call passed a pointer/length outside the module's memory.
    #[error("bad_pointer: a host call referred to memory outside the patch's linear memory")]
    BadPointer,
    /// `heal` returned a non-zero status: the patch declined to plan.
    #[error("declined: heal() returned {0}")]
    Declined(i32),
    /// The module could not be compiled or instantiated.
    #[error("instantiate: {0}")]
    Instantiate(String),
}

impl RunError {
    /// The stable short cause, e.g. `out_of_fuel`.
    pub fn code(&self) -> &'static str {
        match self {
            RunError::OutOfFuel => "out_of_fuel",
            RunError::Deadline(_) => "deadline",
            RunError::MemoryLimit { .. } => "memory_limit",
            RunError::TableLimit { .. } => "table_limit",
            RunError::StackOverflow => "stack_overflow",
            RunError::Trap(_) => "trap",
            RunError::PlanTooLarge(_) => "plan_too_large",
            RunError::ActionTooLarge { .. } => "action_too_large",
            RunError::BadAction(_) => "bad_action",
            RunError::BadPointer => "bad_pointer",
            RunError::Declined(_) => "declined",
            RunError::Instantiate(_) => "instantiate",
        }
    }
}

/// The host functions a patch may import, with their wasm signatures (params, results).
const ALLOWED_IMPORTS: [(&str, &[ValKind], &[ValKind]); 3] = [
    (
        "fault_get",
        &[ValKind::I32, ValKind::I32, ValKind::I32, ValKind::I32],
        &[ValKind::I32],
    ),
    ("action", &[ValKind::I32, ValKind::I32], &[ValKind::I32]),
    ("log", &[ValKind::I32, ValKind::I32], &[]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValKind {
    I32,
    Other,
}

fn kinds(types: impl Iterator<Item = ValType>) -> Vec<ValKind> {
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
struct HostState {
    /// None between runs.
    fault: Option<Arc<FaultView>>,
    plan: Vec<Action>,
    limits: Limits,
    /// The instance's exported memory, once instantiated.
    memory: Option<Memory>,
    failure: Option<RunError>,
    log_lines: u32,
    /// Lines the run logged, written to phoenix's log when it ends (those of an inline run
    /// stopped at its budget are dropped: the run is made again).
    logs: Vec<String>,
    /// Fuel the run used (also when it failed).
    fuel_used: u64,
}

impl HostState {
    /// The state of a store between runs.
    fn idle(limits: &Limits) -> HostState {
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

/// The sandbox: one wasmtime engine, its epoch ticker, and the compiled-module cache.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    cache_dir: PathBuf,
    compiler: Compiler,
    /// Compiled modules with their imports already resolved, by content hash.
    modules: Mutex<Modules>,
    /// Live instances, at most the pool's size (one past it would fail to instantiate): each
    /// run takes a slot, and a warm store keeps those of its runs until it is dropped.
    pool: Pool,
    /// [`INLINE_WALL_TIME`], but for tests.
    inline_wall_time: Duration,
}

/// Loaded modules by content hash.
type Modules = HashMap<String, Arc<Prepared>, std::hash::BuildHasherDefault<DigestHasher>>;

/// Hashes the map's keys, blake3 digests in hex, with a multiply per 8 bytes: SipHash, the
/// default, was ~3% of a warm run for its resistance to chosen keys, which digests of the
/// stored modules cannot be.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A module ready to run: imports resolved, and its exports looked up once (by index, not by
/// name, at every run). Shared: a run takes it out of the map with one reference count.
struct Prepared {
    pre: InstancePre<HostState>,
    heal: Option<ModuleExport>,
    memory: Option<ModuleExport>,
    /// How its runs on the caller's thread went.
    inline: InlineRecord,
}

/// Whether `module` exports `heal` with the type phoenix calls it with, `() -> i32`.
fn exports_heal(module: &Module) -> bool {
    matches!(
        module.get_export("heal"),
        Some(ExternType::Func(ty)) if ty.params().len() == 0 && kinds(ty.results()) == [ValKind::I32]
    )
}

/// A module's standing for runs on the caller's thread (see [`Sandbox::run_inline`]).
#[derive(Default)]
struct InlineRecord {
    /// Set once runs of the module went over the inline budget: from then on it runs only on
    /// a blocking thread.
    too_slow: AtomicBool,
    /// Inline runs over [`INLINE_WALL_TIME`] or the deadline, less those within them (never
    /// below zero): a thread preempted now and then adds a strike rarely and loses it at once.
    strikes: AtomicU32,
}

/// Strikes after which a module no longer runs inline.
const INLINE_STRIKES: u32 = 3;

/// The most fuel a run on the caller's (async) thread may use: a few hundred microseconds of
/// wasm at most. A run that needs more is stopped and run again on a blocking thread.
const INLINE_FUEL: u64 = 200_000;

/// An inline run longer than this counts a strike against its module: what fuel does not
/// bound (a `memory.fill` of the whole memory cap), but also a thread preempted mid-run, hence
/// strikes rather than at once (see [`INLINE_STRIKES`]).
const INLINE_WALL_TIME: Duration = Duration::from_micros(500);

/// The outcome of [`Sandbox::run_inline`].
pub enum Inline {
    /// The run finished within the inline budget: this is its final outcome.
    Done(Result<Vec<Action>, RunError>),
    /// Not run here (module not loaded, slow, or no free slot) or stopped at the inline budget:
    /// run it with [`Sandbox::run`] on a blocking thread. Gives the fault view back.
    Elsewhere(Arc<FaultView>),
}

/// How a run is bounded.
struct Budget {
    fuel: u64,
    ticks: u64,
}

/// Where patches are compiled (a run never compiles twice: see the on-disk cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process: the offline CLI checks and the tests.
    InProcess,
    /// In a child running `EXE compile-patch` (the daemon: `/proc/self/exe`, the very binary that
    /// runs, even if a newer one was installed since, so that artifacts always match the
    /// engine). If the child cannot be started at all, the module is compiled in process.
    Subprocess(PathBuf),
}

/// Longest a compiler child may take before it is stopped (and the module refused).
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit status of a compiler child that refused the module (its reason on standard output).
const COMPILE_REFUSED: u8 = 65;

/// Instances (each with one memory and one table) the pooling allocator keeps ready. Runs beyond
/// it wait for a free slot: they are short (fuel and deadline bound them).
const POOL_SLOTS: u32 = 64;

/// Runs one store serves before it is dropped (with their instances): a store's own cost
/// (creation, module registration, teardown) was ~0.4 us a run when each run had its own; 16
/// runs share it, while what a store keeps stays bounded.
const WARM_RUNS: u32 = 16;

/// Warm stores kept at most (one per engine thread runs inline; others make their own).
/// Their instances hold slots: at most `WARM_STORES * (WARM_RUNS - 1)` = 30 of the 64 while no
/// run uses them, so runs never wait on idle stores.
const WARM_STORES: usize = 2;
const _: () = assert!(WARM_STORES as u32 * (WARM_RUNS - 1) <= POOL_SLOTS / 2);

/// A store whose memory is larger than this after its run is not kept: its instances keep
/// their memory (what they touched of it) until the store is dropped.
const WARM_MEMORY_MAX: usize = 128 << 10;

/// A store that serves more than one run. Each run's instance stays in it until it is dropped,
/// and keeps its slot until then.
struct WarmStore {
    store: Store<HostState>,
    /// Slots of the instances of its finished runs.
    kept_slots: u32,
}

/// The pooling allocator's instance slots, shared by the runs, and the warm stores that keep
/// some of them; one lock for both, taken once as a run starts and once as it ends. A counting
/// semaphore for blocking threads (runs happen on tokio's blocking pool): a slot given back
/// wakes a thread only if one waits (a condvar notify is a syscall even with none).
struct Pool {
    state: Mutex<PoolState>,
    freed: std::sync::Condvar,
}

struct PoolState {
    free: u32,
    waiting: u32,
    warm: Vec<WarmStore>,
}

/// Slots held, given back when dropped: a run's one slot for its instance, or those of a warm
/// store's earlier instances while a run uses it.
struct Slots<'a> {
    pool: &'a Pool,
    count: u32,
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            self.pool.give_back(self.count);
        }
    }
}

impl Pool {
    fn new(slots: u32) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                free: slots,
                waiting: 0,
                warm: Vec::new(),
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot (waiting for one if none is free) and a warm store, if one is kept.
    fn take(&self) -> (Slots<'_>, Option<WarmStore>) {
        let mut state = self.lock();
        while state.free == 0 {
            state.waiting += 1;
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiting -= 1;
        }
        state.free -= 1;
        (self.one_slot(), state.warm.pop())
    }

    /// A slot and a warm store (if one is kept), if a slot is free now, without waiting.
    fn try_take(&self) -> Option<(Slots<'_>, Option<WarmStore>)> {
        let mut state = self.lock();
        if state.free == 0 {
            return None;
        }
        state.free -= 1;
        Some((self.one_slot(), state.warm.pop()))
    }

    /// Ends a run in `warm`, whose instance has `slot`: keeps the store for the next runs if
    /// `reusable`, it has room for another run and fewer than `WARM_STORES` are kept; else
    /// drops it (outside the lock: that frees its instances) and then gives its slots back.
    fn finish(&self, mut slot: Slots<'_>, mut warm: WarmStore, reusable: bool) {
        // Counted in `kept_slots` from here on.
        warm.kept_slots += std::mem::take(&mut slot.count);
        if reusable && warm.kept_slots < WARM_RUNS {
            let mut state = self.lock();
            if state.warm.len() < WARM_STORES {
                state.warm.push(warm);
                return;
            }
        }
        let kept = warm.kept_slots;
        drop(warm.store);
        self.give_back(kept);
    }

    /// One slot just taken from the count (under the lock).
    fn one_slot(&self) -> Slots<'_> {
        Slots {
            pool: self,
            count: 1,
        }
    }

    fn give_back(&self, count: u32) {
        let mut state = self.lock();
        state.free += count;
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }
}

/// Epoch tick length: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);

fn bounds(memory: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= memory.len()).then_some(start..end)
}

fn memory_of(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    // Known once `heal` runs; a start function's host calls look it up by name.
    if let Some(memory) = caller.data().memory {
        return Some(memory);
    }
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
}

/// Records `failure` and returns the error that unwinds the wasm call.
fn fail(caller: &mut Caller<'_, HostState>, failure: RunError) -> wasmtime::Error {
    let message = failure.to_string();
    caller.data_mut().failure = Some(failure);
    wasmtime::Error::msg(message)
}

/// Fuel a host call costs: a base plus one unit per byte it copies, so that a loop of cheap
/// wasm instructions cannot make the host do unbounded work outside the fuel budget.
const HOST_CALL_FUEL: u64 = 100;

fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> wasmtime::Result<()> {
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
fn checked_range(
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

fn host_fault_get(
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

fn host_action(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
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

fn host_log(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    // The line must lie in the module's memory; only its first KiB is kept.
    let (memory, range) = checked_range(&mut caller, ptr, len, 1024)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    #[cfg(test)]
    assert_ne!(&data[range.clone()], b"test: panic", "a run that panics");
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
const MAX_LOG_LINES: u32 = 32;

fn log_patch_line(patch: &str, line: &str) {
    tracing::info!(message = "Patch log.", patch = %patch, line = %line);
}

/// Why a sandbox could not be built or a module not prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// wasmtime rejected the engine configuration.
    #[error("cannot configure wasmtime: {0}")]
    Engine(String),
    /// The compiled-module cache directory is unusable.
    #[error("module cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Sandbox {
    /// Builds the engine and starts its epoch ticker. `cache_dir` holds compiled modules.
    pub fn new(limits: Limits, cache_dir: PathBuf) -> Result<Sandbox, SandboxError> {
        let engine_error = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
        let engine = Engine::new(&engine_config(&limits)).map_err(engine_error)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("phoenix-sandbox-epoch".into())
            .spawn(move || {
                // Ends when the engine is dropped.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap("phoenix", "fault_get", host_fault_get)
            .map_err(engine_error)?;
        linker
            .func_wrap("phoenix", "action", host_action)
            .map_err(engine_error)?;
        linker
            .func_wrap("phoenix", "log", host_log)
            .map_err(engine_error)?;
        crate::fs::create_private_dir(&cache_dir).map_err(|source| SandboxError::Cache {
            path: cache_dir.clone(),
            source,
        })?;
        Ok(Sandbox {
            engine,
            linker,
            limits,
            cache_dir,
            compiler: Compiler::InProcess,
            modules: Mutex::new(Modules::default()),
            pool: Pool::new(POOL_SLOTS),
            inline_wall_time: INLINE_WALL_TIME,
        })
    }

    /// Compiles patches with `compiler` from now on.
    pub fn compile_with(mut self, compiler: Compiler) -> Sandbox {
        self.compiler = compiler;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registration-time checks of the module with content hash `hash`: size, validity, imports
    /// only from the allow-list (so no WASI), and the required exports. Returns every problem
    /// found, or none. The compiled module is kept for the runs that follow.
    pub fn static_check(&self, hash: &str, wasm: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        if wasm.len() > self.limits.max_module_bytes {
            problems.push(format!(
                "module is {} bytes; the limit is {}",
                wasm.len(),
                self.limits.max_module_bytes
            ));
            return problems;
        }
        let module = match self.compiled(hash, wasm) {
            Ok(module) => module,
            Err(text) => {
                // The pool is sized by the caps, so a module declaring more memory or table
                // than they allow is refused here, before it ever runs: name the cap.
                let problem = if text.contains("memory index") && text.contains("pooling") {
                    format!(
                        "memory_limit: the module declares more memory than the {}-byte cap: {text}",
                        self.limits.memory_bytes
                    )
                } else if text.contains("table index") && text.contains("pooling") {
                    format!(
                        "table_limit: the module declares a table larger than the {}-element cap: {text}",
                        self.limits.table_elements
                    )
                } else {
                    format!("module does not compile: {text}")
                };
                problems.push(problem);
                return problems;
            }
        };
        for import in module.imports() {
            let (module_name, name) = (import.module(), import.name());
            if module_name.starts_with("wasi") {
                problems.push(format!(
                    "import {module_name}.{name}: WASI is not available to patches"
                ));
                continue;
            }
            let allowed = ALLOWED_IMPORTS
                .iter()
                .find(|(n, _, _)| module_name == "phoenix" && *n == name);
            let Some((_, params, results)) = allowed else {
                problems.push(format!(
                    "import {module_name}.{name} is not allowed (allowed: phoenix.fault_get, phoenix.action, phoenix.log)"
                ));
                continue;
            };
            match import.ty() {
                ExternType::Func(ty)
                    if kinds(ty.params()) == *params && kinds(ty.results()) == *results => {}
                _ => problems.push(format!("import phoenix.{name} has the wrong type")),
            }
        }
        match module.get_export("memory") {
            Some(ExternType::Memory(_)) => {}
            _ => problems.push("module must export a memory named `memory`".into()),
        }
        if !exports_heal(&module) {
            problems.push("module must export `heal: () -> i32`".into());
        }
        problems
    }

    /// The compiled module for `hash`, imports resolved: from memory, else from the disk cache,
    /// else compiled (and written to the cache).
    fn module(&self, hash: &str, wasm: &[u8]) -> Result<Arc<Prepared>, RunError> {
        if let Some(module) = self.lock_modules().get(hash) {
            return Ok(Arc::clone(module));
        }
        let module = self.compiled(hash, wasm).map_err(RunError::Instantiate)?;
        let prepared = Arc::new(Prepared {
            // Only an export of the right type: `execute` calls it without checking again.
            heal: module
                .get_export_index("heal")
                .filter(|_| exports_heal(&module)),
            memory: module.get_export_index("memory"),
            inline: InlineRecord::default(),
            pre: self
                .linker
                .instantiate_pre(&module)
                .map_err(|e| RunError::Instantiate(format!("{e:#}")))?,
        });
        self.lock_modules()
            .insert(hash.to_owned(), Arc::clone(&prepared));
        Ok(prepared)
    }

    /// The module `hash` compiled: from the disk cache, else compiled (see [`Compiler`]) and
    /// written to the cache. Err: why the compiler refused it.
    fn compiled(&self, hash: &str, wasm: &[u8]) -> Result<Module, String> {
        let path = self.cache_dir.join(format!("{hash}.cwasm"));
        if let Some(module) = self.load_cached(&path) {
            return Ok(module);
        }
        let artifact = match &self.compiler {
            Compiler::InProcess => None,
            Compiler::Subprocess(exe) => match compile_in_child(exe, &self.limits, wasm) {
                Ok(outcome) => Some(outcome?),
                Err(error) => {
                    tracing::warn!(message = "Cannot start the patch compiler; compiling in process.", exe = %exe.display(), %error);
                    None
                }
            },
        };
        let artifact = match artifact {
            Some(artifact) => artifact,
            None => Module::from_binary(&self.engine, wasm)
                .and_then(|module| module.serialize())
                .map_err(|e| format!("{e:#}"))?,
        };
        self.store_cached(&path, &artifact);
        self.trusted_artifact(&artifact)
            .ok_or_else(|| "the compiled module does not load into this engine".to_string())
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, Modules> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cache file layout: 32 bytes of blake3 over the artifact, then the artifact.
    fn store_cached(&self, path: &Path, artifact: &[u8]) {
        let mut bytes = blake3::hash(artifact).as_bytes().to_vec();
        bytes.extend_from_slice(artifact);
        let temp = path.with_extension("cwasm.tmp");
        if crate::fs::write_private(&temp, &bytes)
            .and_then(|()| std::fs::rename(&temp, path))
            .is_err()
        {
            tracing::warn!(message = "Cannot write the compiled-module cache.", path = %path.display());
        }
    }

    fn load_cached(&self, path: &Path) -> Option<Module> {
        let bytes = std::fs::read(path).ok()?;
        let (digest, artifact) = bytes.split_at_checked(32)?;
        if blake3::hash(artifact).as_bytes() != digest {
            tracing::warn!(message = "Compiled-module cache entry is corrupt; recompiling.", path = %path.display());
            return None;
        }
        self.trusted_artifact(artifact)
    }

    /// Loads an artifact that phoenix's own compiler produced: read back from the cache file
    /// `store_cached` wrote (its blake3 digest checked), or just returned by a compiler child
    /// (this same binary, over a pipe).
    #[allow(unsafe_code)]
    fn trusted_artifact(&self, artifact: &[u8]) -> Option<Module> {
        // SAFETY: `Module::deserialize` trusts its input to be an artifact wasmtime produced. Both
        // callers hand it bytes that `Module::serialize` of this very binary produced, intact
        // (digest-checked from disk, or straight from the child's pipe). wasmtime itself rejects
        // artifacts from another version or config.
        unsafe { Module::deserialize(&self.engine, artifact) }.ok()
    }

    /// Compiles (or loads) the module so that its first real run is fast.
    pub fn prepare(&self, hash: &str, wasm: &[u8]) -> Result<(), RunError> {
        self.module(hash, wasm).map(|_| ())
    }

    /// Runs `heal` of the module `hash` against `fault` and returns its plan. Blocking and CPU
    /// bound (bounded by fuel and deadline): call it from a blocking thread.
    pub fn run(
        &self,
        patch: &str,
        hash: &str,
        wasm: &[u8],
        fault: Arc<FaultView>,
    ) -> Result<Vec<Action>, RunError> {
        let module = self.module(hash, wasm)?;
        let budget = Budget {
            fuel: self.limits.fuel,
            ticks: self.deadline_ticks(),
        };
        let (slot, warm) = self.pool.take();
        let (outcome, mut state) = self.execute(&module, fault, &budget, slot, warm);
        Self::write_logs(patch, &mut state);
        Self::report_fuel(&state);
        self.finish(outcome, &mut state)
    }

    /// Runs `heal` on the calling thread when that is sure to be short: the module is loaded
    /// (nothing to compile or read), has not been sent to the blocking pool (see below), and a
    /// slot is free now. The run gets `INLINE_FUEL` (well under the limits' fuel); one that
    /// needs more, or reaches its deadline, is stopped and handed back ([`Inline::Elsewhere`])
    /// to be run again in full on a blocking thread. A run cannot change anything but its own
    /// plan, so running it again is safe; its log lines are held until its outcome is final. A
    /// module that runs out of the inline fuel once, or overruns `INLINE_WALL_TIME` or the
    /// deadline `INLINE_STRIKES` times more often than not, never runs inline again.
    ///
    /// Saves the hop to a blocking thread and back (two thread wake-ups) for the usual patch,
    /// which plans in a few microseconds.
    pub fn run_inline(&self, patch: &str, hash: &str, fault: Arc<FaultView>) -> Inline {
        let Some(module) = self.lock_modules().get(hash).cloned() else {
            return Inline::Elsewhere(fault);
        };
        let record = &module.inline;
        if record.too_slow.load(Ordering::Relaxed) {
            return Inline::Elsewhere(fault);
        }
        let Some((slot, warm)) = self.pool.try_take() else {
            return Inline::Elsewhere(fault);
        };
        let budget = Budget {
            fuel: self.limits.fuel.min(INLINE_FUEL),
            // The deadline is checked at ticks: two of them are 5 to 10 ms (fuel ends the run
            // long before, unless it waits in the host or the thread is preempted).
            ticks: self.deadline_ticks().min(2),
        };
        let started = Instant::now();
        let (outcome, mut state) = self.execute(&module, Arc::clone(&fault), &budget, slot, warm);
        let result = self.finish(outcome, &mut state);
        let out_of_fuel = matches!(result, Err(RunError::OutOfFuel));
        let deadline = matches!(result, Err(RunError::Deadline(_)));
        // Fuel does not depend on the machine: a module that needed more than the inline fuel
        // will most likely need it again. Time does (a busy machine preempts threads): only
        // repeated overruns count.
        if out_of_fuel {
            record.too_slow.store(true, Ordering::Relaxed);
        } else if deadline || started.elapsed() > self.inline_wall_time {
            if record.strikes.fetch_add(1, Ordering::Relaxed) + 1 >= INLINE_STRIKES {
                record.too_slow.store(true, Ordering::Relaxed);
            }
        } else {
            let _ = record
                .strikes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        if out_of_fuel || deadline {
            return Inline::Elsewhere(fault);
        }
        Self::write_logs(patch, &mut state);
        Self::report_fuel(&state);
        Inline::Done(result)
    }

    /// The deadline in epoch ticks.
    fn deadline_ticks(&self) -> u64 {
        let ticks = self
            .limits
            .deadline
            .as_millis()
            .div_ceil(TICK.as_millis())
            .max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Instantiates `module` in `warm` (or a new store) bounded by `budget` and calls `heal`;
    /// `slot` is the new instance's.
    fn execute(
        &self,
        module: &Prepared,
        fault: Arc<FaultView>,
        budget: &Budget,
        slot: Slots<'_>,
        warm: Option<WarmStore>,
    ) -> (wasmtime::Result<i32>, HostState) {
        let state = HostState {
            fault: Some(fault),
            ..HostState::idle(&self.limits)
        };
        // If the run panics, the store is dropped unfinished: the slots of its earlier runs'
        // instances are given back then (after the store: locals drop in reverse order).
        let mut kept_on_unwind = Slots {
            pool: &self.pool,
            count: 0,
        };
        let mut warm = match warm {
            Some(mut warm) => {
                *warm.store.data_mut() = state;
                warm
            }
            None => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| state);
                store.epoch_deadline_trap();
                WarmStore {
                    store,
                    kept_slots: 0,
                }
            }
        };
        kept_on_unwind.count = warm.kept_slots;
        let store = &mut warm.store;
        store.set_epoch_deadline(budget.ticks);
        let outcome = store.set_fuel(budget.fuel).and_then(|()| {
            let instance = module.pre.instantiate(&mut *store)?;
            let export = |store: &mut Store<HostState>, index: &Option<ModuleExport>| {
                index
                    .as_ref()
                    .and_then(|index| instance.get_module_export(&mut *store, index))
            };
            store.data_mut().memory =
                export(&mut *store, &module.memory).and_then(Extern::into_memory);
            let heal = export(&mut *store, &module.heal)
                .and_then(Extern::into_func)
                .ok_or_else(|| wasmtime::Error::msg("the module exports no `heal: () -> i32`"))?;
            // One slot: `heal` takes nothing and its one result is written there.
            let mut params_and_results = [ValRaw::i32(0)];
            // SAFETY: `Prepared::heal` is only set for an export `heal` of type `() -> i32`
            // (see `Sandbox::module`): no parameters, one i32 result, which fits the slot. The
            // checked calls cost a warm run a type lookup each: `typed` ~9% of the run, even
            // `TypedFunc::new_unchecked` (it clones the type under the engine's lock) ~5%.
            #[allow(unsafe_code)]
            unsafe {
                heal.call_unchecked(&mut *store, &mut params_and_results)?;
            }
            Ok(params_and_results[0].get_i32())
        });
        // Fuel left tells how much the run used (also for runs that failed).
        let used = store
            .get_fuel()
            .map_or(0, |left| budget.fuel.saturating_sub(left));
        let mut state = std::mem::replace(store.data_mut(), HostState::idle(&self.limits));
        state.fuel_used = used;
        // Only a clean run's store serves again (after a trap or a refused host call nothing
        // of it is trusted; such runs are rare), and only if its instance keeps little memory.
        let memory_bytes = state.memory.map_or(0, |memory| memory.data_size(&*store));
        let reusable =
            outcome.is_ok() && state.failure.is_none() && memory_bytes <= WARM_MEMORY_MAX;
        kept_on_unwind.count = 0; // `finish` accounts for them
        self.pool.finish(slot, warm, reusable);
        (outcome, state)
    }

    fn write_logs(patch: &str, state: &mut HostState) {
        for line in std::mem::take(&mut state.logs) {
            log_patch_line(patch, &line);
        }
    }

    fn report_fuel(state: &HostState) {
        crate::core::metrics::metrics().add_fuel_used(state.fuel_used);
    }

    /// The plan, or why there is none (taken from `state`, which keeps the fault view).
    fn finish(
        &self,
        outcome: wasmtime::Result<i32>,
        state: &mut HostState,
    ) -> Result<Vec<Action>, RunError> {
        if let Some(failure) = state.failure.take() {
            return Err(failure);
        }
        match outcome {
            Ok(0) => Ok(std::mem::take(&mut state.plan)),
            Ok(status) => Err(RunError::Declined(status)),
            Err(error) => Err(match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => RunError::OutOfFuel,
                Some(Trap::Interrupt) => RunError::Deadline(self.limits.deadline),
                Some(Trap::StackOverflow) => RunError::StackOverflow,
                Some(trap) => RunError::Trap(trap.to_string()),
                None => RunError::Instantiate(format!("{error:#}")),
            }),
        }
    }
}

/// The engine settings for `limits`: the daemon's runs and a compiler child must agree on them
/// (wasmtime refuses an artifact compiled under other settings).
fn engine_config(limits: &Limits) -> Config {
    // The pooling allocator keeps memories and tables ready for reuse, so a run does not map
    // and unmap memory (the bulk of an on-demand instantiation). Each slot is sized by the
    // limits; the limiter still decides, and names, a cap that is hit.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(POOL_SLOTS)
        .total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(limits.memory_bytes)
        .table_elements(limits.table_elements)
        // Reset small memories by memset rather than madvise: cheaper for typical patches.
        .linear_memory_keep_resident(4 << 10)
        .table_keep_resident(16 << 10)
        // What is not kept resident is decommitted for 32 runs at once (one `process_madvise`;
        // 16 cost ~7% more per warm run). A run that finds no free slot meanwhile makes
        // wasmtime decommit the queue at once.
        .decommit_batch_size(POOL_SLOTS as usize / 2);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        // A patch may declare a memory of 1-byte pages (`(memory 4096 (pagesize 1))`): one
        // that fits in `linear_memory_keep_resident` is reset by a copy alone, with nothing to
        // decommit (the shipped patches' 4 KiB memories run ~15% faster than one 64 KiB page).
        // wasmtime's tier 2 (tested, fuzzed; not yet a phase-4 standard).
        .wasm_custom_page_sizes(true)
        // A patch's contract tests hold on every host: relaxed SIMD instructions get their
        // one specified result, not whatever the CPU gives (x86 and Arm differ).
        .relaxed_simd_deterministic(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Compiles `wasm` in a child `EXE compile-patch`. Outer Err: the child could not be started;
/// inner Err: why the module was refused (by the compiler, or because the child failed).
fn compile_in_child(
    exe: &Path,
    limits: &Limits,
    wasm: &[u8],
) -> std::io::Result<Result<Vec<u8>, String>> {
    let limits_cap = limits.compile_memory_bytes;
    let limits = serde_json::to_string(limits).map_err(std::io::Error::other)?;
    let mut child = Command::new(exe)
        .args(["compile-patch", "--limits", &limits])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the compiler's pipes are missing"));
    };
    // Feed and drain on threads, so that a child stuck anywhere is still stopped in time.
    let input = wasm.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(16 << 10).read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > COMPILE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Err(format!(
                "compiling took longer than {COMPILE_TIMEOUT:?}; the compiler was stopped"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = feeder.join();
    let out = reader
        .join()
        .map_err(|_| std::io::Error::other("the compiler's reader panicked"))??;
    let errors = errors.join().unwrap_or_default();
    Ok(match status.code() {
        Some(0) => Ok(out),
        Some(code) if code == i32::from(COMPILE_REFUSED) => {
            Err(String::from_utf8_lossy(&out).into_owned())
        }
        _ if errors.contains("memory allocation of") => Err(format!(
            "compiling needs more memory than `sandbox.compile_memory_bytes` ({} bytes) allows; the compiler was stopped",
            limits_cap
        )),
        _ => Err(format!(
            "the patch compiler failed ({status}): {}",
            errors.trim()
        )),
    })
}

/// `phoenix compile-patch --limits JSON`, the child side of [`Compiler::Subprocess`]: reads a
/// module from standard input and writes the compiled artifact to standard output (status 0),
/// or the compiler's reason for refusing it (status 65).
pub fn compile_child(limits: &str) -> ExitCode {
    let limits: Limits = match serde_json::from_str(limits) {
        Ok(limits) => limits,
        Err(error) => {
            eprintln!("compile-patch: bad --limits: {error}");
            return ExitCode::from(64);
        }
    };
    if let Err(error) = cap_data_memory(limits.compile_memory_bytes) {
        eprintln!("compile-patch: cannot cap its memory: {error}");
        return ExitCode::from(71);
    }
    let mut wasm = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut wasm) {
        eprintln!("compile-patch: cannot read the module: {error}");
        return ExitCode::from(66);
    }
    let compiled = Engine::new(&engine_config(&limits))
        .and_then(|engine| Module::from_binary(&engine, &wasm))
        .and_then(|module| module.serialize());
    let (bytes, status) = match compiled {
        Ok(artifact) => (artifact, ExitCode::SUCCESS),
        Err(error) => (
            format!("{error:#}").into_bytes(),
            ExitCode::from(COMPILE_REFUSED),
        ),
    };
    match std::io::stdout().lock().write_all(&bytes) {
        Ok(()) => status,
        Err(_) => ExitCode::from(74),
    }
}

/// Caps this process's data memory (heap and private mappings) at `bytes`, or at the hard
/// limit it already has if that is lower. An allocation past the cap fails and aborts the
/// compiler child, which the daemon reports as a module refused for its memory.
fn cap_data_memory(bytes: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Data).maximum;
    let cap = hard.map_or(bytes, |hard| hard.min(bytes));
    setrlimit(
        Resource::Data,
        Rlimit {
            current: Some(cap),
            maximum: hard,
        },
    )
    .map_err(std::io::Error::from)
}

/// Compiles WebAssembly text to binary (a `.wasm` file's bytes pass through unchanged).
pub fn wat_to_wasm(bytes: &[u8]) -> Result<Vec<u8>, String> {
    wat::parse_bytes(bytes)
        .map(|cow| cow.into_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patch skeleton: `body` is the body of `heal`, `data` strings are placed at offset 0.
    fn module(imports: &str, data: &str, body: &str) -> Vec<u8> {
        let text = format!(
            r#"(module
                 (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
                 (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
                 {imports}
                 (memory (export "memory") 1)
                 (data (i32.const 0) "{data}")
                 (func (export "heal") (result i32) {body}))"#
        );
        wat_to_wasm(text.as_bytes()).unwrap()
    }

    fn hash(wasm: &[u8]) -> String {
        blake3::hash(wasm).to_hex().to_string()
    }

    fn sandbox(limits: Limits) -> (tempfile::TempDir, Sandbox) {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(limits, dir.path().join("modules")).unwrap();
        (dir, sandbox)
    }

    fn run(sandbox: &Sandbox, wasm: &[u8]) -> Result<Vec<Action>, RunError> {
        let hash = blake3::hash(wasm).to_hex().to_string();
        let mut fault = FaultView::new();
        fault.insert("kind".into(), "disk_full".into());
        sandbox.run("test", &hash, wasm, Arc::new(fault))
    }

    const EXEC: &str = r#"{\"kind\":\"exec\",\"command\":\"cleanup\"}"#;
    const EXEC_LEN: usize = 35;

    fn check(limits: Limits, wasm: Vec<u8>, expect: Result<Vec<Action>, &str>) {
        let (_dir, sandbox) = sandbox(limits);
        assert!(
            sandbox.static_check(&hash(&wasm), &wasm).is_empty(),
            "{:?}",
            sandbox.static_check(&hash(&wasm), &wasm)
        );
        let got = run(&sandbox, &wasm);
        match expect {
            Ok(plan) => assert_eq!(got, Ok(plan)),
            Err(code) => assert_eq!(got.as_ref().map_err(RunError::code), Err(code), "{got:?}"),
        }
    }

    #[test]
    fn a_patch_returns_its_plan() {
        let body =
            format!("(drop (call $action (i32.const 0) (i32.const {EXEC_LEN}))) (i32.const 0)");
        check(
            Limits::default(),
            module("", EXEC, &body),
            Ok(vec![Action::Exec {
                command: "cleanup".into(),
            }]),
        );
    }

    fn inline(sandbox: &Sandbox, wasm: &[u8]) -> Option<Result<Vec<Action>, RunError>> {
        let mut fault = FaultView::new();
        fault.insert("kind".into(), "disk_full".into());
        match sandbox.run_inline("test", &hash(wasm), Arc::new(fault)) {
            Inline::Done(outcome) => Some(outcome),
            Inline::Elsewhere(view) => {
                assert_eq!(view.get("kind").map(String::as_str), Some("disk_full"));
                None
            }
        }
    }

    #[test]
    fn a_loaded_quick_patch_runs_inline_with_the_same_outcome() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let body =
            format!("(drop (call $action (i32.const 0) (i32.const {EXEC_LEN}))) (i32.const 0)");
        let wasm = module("", EXEC, &body);
        // Not loaded yet: nothing to run inline (loading may mean compiling).
        assert_eq!(inline(&sandbox, &wasm), None);
        sandbox.prepare(&hash(&wasm), &wasm).unwrap();
        let plan = inline(&sandbox, &wasm).expect("runs inline");
        assert_eq!(plan, run(&sandbox, &wasm));
        assert_eq!(plan.map(|p| p.len()), Ok(1));
        // A final failure is final inline too.
        let declines = module("", "", "(i32.const 7)");
        sandbox.prepare(&hash(&declines), &declines).unwrap();
        assert_eq!(
            inline(&sandbox, &declines),
            Some(Err(RunError::Declined(7)))
        );
    }

    #[test]
    fn a_patch_over_the_inline_budget_is_handed_back_and_never_runs_inline_again() {
        let (_dir, sandbox) = sandbox(Limits::default());
        // About 3 fuel per iteration: 100,000 iterations are over the inline fuel and well
        // within the limits' fuel; the full run plans.
        let body = format!(
            "(local $i i32)
             (loop $again
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $again (i32.lt_u (local.get $i) (i32.const 100000))))
             (drop (call $action (i32.const 0) (i32.const {EXEC_LEN})))
             (i32.const 0)"
        );
        let wasm = module("", EXEC, &body);
        sandbox.prepare(&hash(&wasm), &wasm).unwrap();
        assert_eq!(
            inline(&sandbox, &wasm),
            None,
            "stopped at the inline budget"
        );
        assert_eq!(run(&sandbox, &wasm).map(|p| p.len()), Ok(1));
        let prepared = sandbox.lock_modules().get(&hash(&wasm)).cloned().unwrap();
        assert!(prepared.inline.too_slow.load(Ordering::Relaxed));
        assert_eq!(inline(&sandbox, &wasm), None, "not tried again");
        // A patch that never ends is stopped inline, then fails precisely in full.
        let endless = module("", "", "(loop $l (br $l)) (i32.const 0)");
        sandbox.prepare(&hash(&endless), &endless).unwrap();
        assert_eq!(inline(&sandbox, &endless), None);
        assert_eq!(
            run(&sandbox, &endless).map_err(|e| e.code()),
            Err("out_of_fuel")
        );
    }

    #[test]
    fn only_repeated_overruns_of_the_inline_wall_time_stop_a_module_running_inline() {
        let (_dir, mut sandbox) = sandbox(Limits::default());
        let wasm = module("", "", "(i32.const 0)");
        sandbox.prepare(&hash(&wasm), &wasm).unwrap();
        // Every run is over a zero wall time: a strike each; the last one demotes the module.
        sandbox.inline_wall_time = Duration::ZERO;
        for run in 0..INLINE_STRIKES {
            assert_eq!(inline(&sandbox, &wasm), Some(Ok(Vec::new())), "run {run}");
        }
        assert_eq!(inline(&sandbox, &wasm), None);

        // Strikes are paid back by runs within the wall time: an overrun now and then (a thread
        // preempted on a busy machine) never adds up.
        let other = module("", "", "(i32.const 1)");
        sandbox.prepare(&hash(&other), &other).unwrap();
        for run in 0..4 * INLINE_STRIKES {
            sandbox.inline_wall_time = if run % 2 == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            };
            assert_eq!(inline(&sandbox, &other), Some(Err(RunError::Declined(1))));
        }
    }

    #[test]
    fn filling_the_whole_memory_cap_is_not_done_inline() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let wasm = module(
            "",
            "",
            "(drop (memory.grow (i32.const 255)))
             (memory.fill (i32.const 0) (i32.const 1) (i32.const 16777216))
             (i32.const 0)",
        );
        sandbox.prepare(&hash(&wasm), &wasm).unwrap();
        assert_eq!(inline(&sandbox, &wasm), None);
        assert_eq!(run(&sandbox, &wasm), Ok(Vec::new()));
    }

    #[test]
    fn no_inline_run_without_a_free_slot() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let wasm = module("", "", "(i32.const 0)");
        sandbox.prepare(&hash(&wasm), &wasm).unwrap();
        let taken: Vec<_> = (0..POOL_SLOTS).map(|_| sandbox.pool.take()).collect();
        assert_eq!(inline(&sandbox, &wasm), None);
        drop(taken);
        assert_eq!(inline(&sandbox, &wasm), Some(Ok(Vec::new())));
    }

    /// Slots free now (taken and given back).
    fn free_slots(sandbox: &Sandbox) -> usize {
        let taken: Vec<_> = std::iter::from_fn(|| sandbox.pool.try_take()).collect();
        let free = taken.len();
        for (slot, warm) in taken {
            sandbox.pool.lock().warm.extend(warm);
            drop(slot);
        }
        free
    }

    #[test]
    fn each_run_gets_a_fresh_instance_even_in_a_store_that_served_before() {
        // A run that finds the marks of an earlier one (memory byte, global) declines.
        let wasm = module(
            "(global $ran (mut i32) (i32.const 0))",
            "",
            "(if (i32.or (global.get $ran) (i32.load8_u (i32.const 100)))
                 (then (return (i32.const 7))))
             (global.set $ran (i32.const 1))
             (i32.store8 (i32.const 100) (i32.const 1))
             (i32.const 0)",
        );
        let (_dir, sandbox) = sandbox(Limits::default());
        for _ in 0..3 * WARM_RUNS {
            assert_eq!(run(&sandbox, &wasm), Ok(Vec::new()));
        }
    }

    #[test]
    fn each_run_starts_from_the_modules_memory_whatever_its_page_size() {
        // A run that finds the marks of an earlier one (its data byte overwritten, bytes set
        // near the start and at the very end of the memory) declines. wasmtime resets a 4 KiB
        // memory of 1-byte pages by copying alone, and a 64 KiB page partly by decommitting
        // it; enough runs that pooled slots are reused after a decommit batch.
        for (memory, last) in [("4096 (pagesize 1)", 4095), ("1", 65535)] {
            let text = format!(
                r#"(module
                     (memory (export "memory") {memory})
                     (data (i32.const 0) "d")
                     (func (export "heal") (result i32)
                       (if (i32.ne (i32.load8_u (i32.const 0)) (i32.const 100))
                         (then (return (i32.const 7))))
                       (if (i32.or (i32.load8_u (i32.const 100)) (i32.load8_u (i32.const {last})))
                         (then (return (i32.const 8))))
                       (i32.store8 (i32.const 0) (i32.const 101))
                       (i32.store8 (i32.const 100) (i32.const 1))
                       (i32.store8 (i32.const {last}) (i32.const 1))
                       (i32.const 0)))"#
            );
            let wasm = wat_to_wasm(text.as_bytes()).unwrap();
            let (_dir, sandbox) = sandbox(Limits::default());
            for _ in 0..4 * POOL_SLOTS {
                assert_eq!(run(&sandbox, &wasm), Ok(Vec::new()), "memory {memory}");
            }
        }
    }

    #[test]
    fn relaxed_simd_gives_every_host_the_same_plan() {
        // Truncating NaN: the specified result is 0; x86's native instruction gives i32::MIN.
        let wasm = module(
            "",
            "",
            "(i32x4.extract_lane 0 (i32x4.relaxed_trunc_f32x4_s (f32x4.splat (f32.const nan))))",
        );
        let (_dir, sandbox) = sandbox(Limits::default());
        assert_eq!(run(&sandbox, &wasm), Ok(Vec::new()));
    }

    #[test]
    fn a_warm_store_holds_the_slots_of_the_instances_it_keeps_and_only_after_clean_runs() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let clean = module("", "", "(i32.const 0)");
        let trapping = module("", "", "unreachable");
        assert_eq!(free_slots(&sandbox), POOL_SLOTS as usize);
        for kept in 1..WARM_RUNS {
            assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
            assert_eq!(free_slots(&sandbox), (POOL_SLOTS - kept) as usize);
        }
        // The store has served its runs: dropped with its instances after the next one.
        assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
        assert_eq!(free_slots(&sandbox), POOL_SLOTS as usize);
        // A run that traps is not followed by another in its store.
        assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
        assert!(run(&sandbox, &trapping).is_err());
        assert_eq!(free_slots(&sandbox), POOL_SLOTS as usize);

        // The count matches wasmtime's pool: with one store keeping three instances and every
        // free slot taken, the pool has room for exactly as many instances as slots taken.
        for _ in 0..3 {
            assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
        }
        let taken: Vec<_> = std::iter::from_fn(|| sandbox.pool.try_take()).collect();
        assert_eq!(taken.len(), POOL_SLOTS as usize - 3);
        let prepared = sandbox.module(&hash(&clean), &clean).unwrap();
        // (No limiter on this store: it may hold as many instances as the pool has room for.)
        let mut store = Store::new(&sandbox.engine, HostState::idle(sandbox.limits()));
        let mut instances = 0;
        while instances <= POOL_SLOTS && prepared.pre.instantiate(&mut store).is_ok() {
            instances += 1;
        }
        assert_eq!(instances as usize, taken.len());
    }

    #[test]
    fn a_run_that_panics_gives_back_the_slots_of_its_store() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let clean = module("", "", "(i32.const 0)");
        let panics = module(
            r#"(import "phoenix" "log" (func $log (param i32 i32)))"#,
            "test: panic",
            "(call $log (i32.const 0) (i32.const 11)) (i32.const 0)",
        );
        for _ in 0..3 {
            assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
        }
        assert_eq!(free_slots(&sandbox), POOL_SLOTS as usize - 3);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&sandbox, &panics)));
        assert!(panicked.is_err());
        assert_eq!(free_slots(&sandbox), POOL_SLOTS as usize);
        assert_eq!(run(&sandbox, &clean), Ok(Vec::new()));
    }

    #[test]
    fn a_compiler_child_that_cannot_start_leaves_compiling_to_this_process() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let sandbox = sandbox.compile_with(Compiler::Subprocess("/nonexistent/phoenix".into()));
        let wasm = module("", "", "(i32.const 0)");
        assert_eq!(
            sandbox.static_check(&hash(&wasm), &wasm),
            Vec::<String>::new()
        );
        assert_eq!(run(&sandbox, &wasm), Ok(vec![]));
    }

    #[test]
    fn a_compiler_child_that_fails_refuses_the_module() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let sandbox = sandbox.compile_with(Compiler::Subprocess("/bin/false".into()));
        let wasm = module("", "", "(i32.const 0)");
        let problems = sandbox.static_check(&hash(&wasm), &wasm);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("module does not compile: the patch compiler failed (exit status: 1)"),
            "{problems:?}"
        );
        assert_eq!(
            run(&sandbox, &wasm).map_err(|e| e.code()),
            Err("instantiate")
        );
    }

    #[test]
    fn a_patch_reads_the_fault() {
        // Reads `kind` into offset 100 and plans only when its first byte is 'd'.
        let body = format!(
            "(drop (call $fault_get (i32.const {EXEC_LEN}) (i32.const 4) (i32.const 100) (i32.const 64)))
             (if (i32.eq (i32.load8_u (i32.const 100)) (i32.const 100))
               (then (drop (call $action (i32.const 0) (i32.const {EXEC_LEN})))))
             (i32.const 0)"
        );
        check(
            Limits::default(),
            module("", &format!("{EXEC}kind"), &body),
            Ok(vec![Action::Exec {
                command: "cleanup".into(),
            }]),
        );
    }

    #[test]
    fn runaway_patches_fail_precisely() {
        let small = Limits {
            fuel: 100_000,
            ..Limits::default()
        };
        check(
            small,
            module("", "", "(loop $l (br $l)) (i32.const 0)"),
            Err("out_of_fuel"),
        );
        let deadline = Limits {
            fuel: u64::MAX / 2,
            deadline: Duration::from_millis(50),
            ..Limits::default()
        };
        check(
            deadline,
            module("", "", "(loop $l (br $l)) (i32.const 0)"),
            Err("deadline"),
        );
        let grow = "(drop (memory.grow (i32.const 1000))) (i32.const 0)";
        check(Limits::default(), module("", "", grow), Err("memory_limit"));
        check(
            Limits::default(),
            module("", "", "(unreachable)"),
            Err("trap"),
        );
        let many = format!(
            "(loop $l (drop (call $action (i32.const 0) (i32.const {EXEC_LEN}))) (br $l)) (i32.const 0)"
        );
        check(
            Limits::default(),
            module("", EXEC, &many),
            Err("plan_too_large"),
        );
        let oob = "(drop (call $action (i32.const 65530) (i32.const 100))) (i32.const 0)";
        check(Limits::default(), module("", "", oob), Err("bad_pointer"));
        let bad = "(drop (call $action (i32.const 0) (i32.const 3))) (i32.const 0)";
        check(Limits::default(), module("", "abc", bad), Err("bad_action"));
        check(
            Limits::default(),
            module("", "", "(i32.const 7)"),
            Err("declined"),
        );
    }

    #[test]
    fn forbidden_imports_and_missing_exports_are_refused() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let wasi = module(
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            "",
            "(i32.const 0)",
        );
        let problems = sandbox.static_check(&hash(&wasi), &wasi);
        assert!(
            problems.iter().any(|p| p.contains("WASI is not available")),
            "{problems:?}"
        );
        let unknown = module(
            r#"(import "phoenix" "exec_now" (func))"#,
            "",
            "(i32.const 0)",
        );
        assert!(
            sandbox
                .static_check(&hash(&unknown), &unknown)
                .iter()
                .any(|p| p.contains("phoenix.exec_now is not allowed"))
        );
        let no_heal = wat_to_wasm(br#"(module (memory (export "memory") 1))"#).unwrap();
        assert_eq!(
            sandbox.static_check(&hash(&no_heal), &no_heal),
            vec!["module must export `heal: () -> i32`".to_string()]
        );
        assert!(
            sandbox
                .static_check("garbage", b"\0asm garbage")
                .iter()
                .any(|p| p.contains("does not compile"))
        );
    }

    #[test]
    fn compiled_modules_are_cached_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = module("", "", "(i32.const 0)");
        let hash = blake3::hash(&wasm).to_hex().to_string();
        {
            let sandbox = Sandbox::new(Limits::default(), dir.path().to_owned()).unwrap();
            sandbox.prepare(&hash, &wasm).unwrap();
        }
        assert!(dir.path().join(format!("{hash}.cwasm")).exists());
        let sandbox = Sandbox::new(Limits::default(), dir.path().to_owned()).unwrap();
        // Loaded from the cache (the wasm passed is garbage, so compiling would fail).
        assert_eq!(
            sandbox.run("t", &hash, b"not wasm", Arc::new(FaultView::new())),
            Ok(vec![])
        );
    }
}
