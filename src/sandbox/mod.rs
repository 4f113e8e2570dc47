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

mod abi;
mod check;
mod compile;
mod pool;

pub use check::{ABI_SECTION, ABI_VERSION, abi_version, custom_sections};
pub use compile::{Compiler, compile_child, wat_to_wasm};

use abi::*;
use pool::*;

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

/// What `log` does with a patch's line (the host's own [`host_log`]; a test's stand-in).
type LogFn = fn(Caller<'_, HostState>, i32, i32) -> wasmtime::Result<()>;

/// The linker with the three `phoenix.*` host functions, `log` being `log`.
fn link(engine: &Engine, log: LogFn) -> Result<Linker<HostState>, SandboxError> {
    let engine_error = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
    let mut linker = Linker::new(engine);
    linker
        .func_wrap("phoenix", "fault_get", host_fault_get)
        .map_err(engine_error)?;
    linker
        .func_wrap("phoenix", "action", host_action)
        .map_err(engine_error)?;
    linker
        .func_wrap("phoenix", "log", log)
        .map_err(engine_error)?;
    Ok(linker)
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

/// Epoch tick length: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);

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
        let linker = link(&engine, host_log)?;
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
        // The first 16 KiB of a memory are reset by a copy (of the module's initial bytes)
        // rather than decommitted: a patch built with an SDK keeps its stack, data and the
        // start of its action buffer there, and a page decommitted after each run costs the
        // next run a page fault (~2 us here; with 4 KiB kept, the Rust SDK's disk-cleanup
        // took 14 us a run, with 16 KiB 2.3 us; 64 KiB cost every 64 KiB memory a 64 KiB copy).
        .linear_memory_keep_resident(16 << 10)
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
                arg: None,
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

    /// A `log` that panics: a run that calls it panics inside the host.
    fn panicking_log(_: Caller<'_, HostState>, _: i32, _: i32) -> wasmtime::Result<()> {
        panic!("a run that panics")
    }

    #[test]
    fn a_run_that_panics_gives_back_the_slots_of_its_store() {
        let (_dir, mut sandbox) = sandbox(Limits::default());
        sandbox.linker = link(&sandbox.engine, panicking_log).unwrap();
        let clean = module("", "", "(i32.const 0)");
        let panics = module(
            r#"(import "phoenix" "log" (func $log (param i32 i32)))"#,
            "",
            "(call $log (i32.const 0) (i32.const 0)) (i32.const 0)",
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
                arg: None,
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
    fn a_module_states_the_abi_version_it_speaks_or_is_version_1() {
        let (_dir, sandbox) = sandbox(Limits::default());
        let with = |sections: &str| {
            let text = format!(
                r#"(module {sections}
                     (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
                     (memory (export "memory") 1)
                     (func (export "heal") (result i32) (i32.const 0)))"#
            );
            let wasm = wat_to_wasm(text.as_bytes()).unwrap();
            (
                abi_version(&wasm),
                sandbox.static_check(&hash(&wasm), &wasm),
            )
        };
        assert_eq!(with(""), (Ok(1), vec![]), "none stated: version 1");
        assert_eq!(with(r#"(@custom "phoenix.abi" "1")"#), (Ok(1), vec![]));
        // Anywhere in the module, other custom sections beside it.
        assert_eq!(
            with(r#"(@custom "name2" "x") (@custom "phoenix.abi" (after code) "1")"#),
            (Ok(1), vec![])
        );
        let (version, problems) = with(r#"(@custom "phoenix.abi" "2")"#);
        assert!(
            version.is_err() && problems.len() == 1,
            "{version:?} {problems:?}"
        );
        assert!(
            problems[0].contains("speaks ABI version 2") && problems[0].contains("version 1 only"),
            "{problems:?}"
        );
        for bad in ["", "01", "1 ", "one", "-1", "99999999999", "\\01"] {
            let (version, problems) = with(&format!(r#"(@custom "phoenix.abi" "{bad}")"#));
            assert!(version.is_err(), "{bad:?}: {version:?}");
            assert!(
                problems[0].contains("must hold the ABI version in decimal digits"),
                "{bad:?}: {problems:?}"
            );
        }
        let (_, problems) = with(r#"(@custom "phoenix.abi" "1") (@custom "phoenix.abi" "1")"#);
        assert!(
            problems[0].contains("states its ABI version 2 times"),
            "{problems:?}"
        );
    }

    #[test]
    fn section_walking_never_reads_past_the_bytes() {
        assert!(abi_version(b"\0asm").is_err());
        // A section claiming more bytes than follow, a LEB128 size that never ends.
        assert!(abi_version(b"\0asm\x01\0\0\0\x00\x7f").is_err());
        assert!(abi_version(b"\0asm\x01\0\0\0\x00\xff\xff\xff\xff\xff\x01").is_err());
        // A custom section whose name is longer than the section.
        assert!(abi_version(b"\0asm\x01\0\0\0\x00\x02\x05ab").is_err());
        assert_eq!(abi_version(b"\0asm\x01\0\0\0"), Ok(1));
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
