//! The static checks a module passes at registration: a core module of the allowed size that
//! compiles, imports only the `phoenix` functions with their signatures, exports `memory` and
//! `heal: () -> i32`.

use super::*;

impl Sandbox {
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
}
