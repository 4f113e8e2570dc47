//! Compiling modules: in a short-lived child (`phoenix compile-patch`, memory-capped and timed)
//! or in this process, and the compiled-module disk cache (blake3-checked before it is trusted).

use super::*;

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
pub(super) const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit status of a compiler child that refused the module (its reason on standard output).
pub(super) const COMPILE_REFUSED: u8 = 65;

/// Compiles `wasm` in a child `EXE compile-patch`. Outer Err: the child could not be started;
/// inner Err: why the module was refused (by the compiler, or because the child failed).
pub(super) fn compile_in_child(
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
pub(super) fn cap_data_memory(bytes: u64) -> std::io::Result<()> {
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

impl Sandbox {
    /// The compiled module for `hash`, imports resolved: from memory, else from the disk cache,
    /// else compiled (and written to the cache).
    pub(super) fn module(&self, hash: &str, wasm: &[u8]) -> Result<Arc<Prepared>, RunError> {
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
    pub(super) fn compiled(&self, hash: &str, wasm: &[u8]) -> Result<Module, String> {
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

    pub(super) fn lock_modules(&self) -> std::sync::MutexGuard<'_, Modules> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cache file layout: 32 bytes of blake3 over the artifact, then the artifact.
    pub(super) fn store_cached(&self, path: &Path, artifact: &[u8]) {
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

    pub(super) fn load_cached(&self, path: &Path) -> Option<Module> {
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
    pub(super) fn trusted_artifact(&self, artifact: &[u8]) -> Option<Module> {
        // SAFETY: `Module::deserialize` trusts its input to be an artifact wasmtime produced. Both
        // callers hand it bytes that `Module::serialize` of this very binary produced, intact
        // (digest-checked from disk, or straight from the child's pipe). wasmtime itself rejects
        // artifacts from another version or config.
        unsafe { Module::deserialize(&self.engine, artifact) }.ok()
    }
}
