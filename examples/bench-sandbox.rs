//! P4 for `scripts/bench`: one warm patch run through phoenix's sandbox (fresh store, fuel,
//! deadline, limits, instantiate, `heal`, plan collected and parsed) against the floor, a bare
//! wasmtime instantiate + call of an empty function with a default engine, in the same process.
//!
//! Prints `P4 patch_us floor_us empty_us` (means over the best of several rounds; `empty_us` is
//! the sandbox running a patch that does nothing).

use std::collections::BTreeMap;
use std::time::Instant;

use phoenix::sandbox::{Limits, Sandbox};

const ROUNDS: usize = 5;
const RUNS: u32 = 20_000;

/// Best (lowest) mean over ROUNDS rounds of RUNS calls, in microseconds.
fn best_mean(mut run: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        run(); // warm-up
    }
    (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..RUNS {
                run();
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(RUNS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wat = std::fs::read(root.join("patches/disk-cleanup/patch.wat")).expect("shipped patch");
    let wasm = phoenix::sandbox::wat_to_wasm(&wat).expect("valid patch");
    let cache = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::new(Limits::default(), cache.path().to_owned()).expect("sandbox");
    let hash = blake3::hash(&wasm).to_hex().to_string();
    sandbox.prepare(&hash, &wasm).expect("compiles");
    let view: BTreeMap<String, String> = [("app", "demo"), ("kind", "disk_full")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let patch_us = best_mean(|| {
        let plan = sandbox
            .run("disk-cleanup", &hash, &wasm, view.clone())
            .expect("plans");
        assert_eq!(plan.len(), 1);
    });

    // The sandbox's own cost with nothing to do (empty heal, empty plan): what the isolation
    // (fresh store, fuel, deadline, limiter, pooled memory) costs before any patch logic.
    let empty = phoenix::sandbox::wat_to_wasm(
        br#"(module (memory (export "memory") 1) (func (export "heal") (result i32) (i32.const 0)))"#,
    )
    .expect("valid");
    let empty_hash = blake3::hash(&empty).to_hex().to_string();
    let empty_us = best_mean(|| {
        let plan = sandbox
            .run("empty", &empty_hash, &empty, BTreeMap::new())
            .expect("runs");
        assert!(plan.is_empty());
    });

    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, r#"(module (func (export "f")))"#).expect("floor");
    let floor_us = best_mean(|| {
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
        let f = instance
            .get_typed_func::<(), ()>(&mut store, "f")
            .expect("export");
        f.call(&mut store, ()).expect("call");
    });
    println!("P4 {patch_us:.2} {floor_us:.2} {empty_us:.2}");
}
