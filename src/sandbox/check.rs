//! The static checks a module passes at registration: a core module of the allowed size that
//! compiles, speaks an ABI version this phoenix knows, imports only the `phoenix` functions
//! with their signatures, exports `memory` and `heal: () -> i32`.

use super::*;

/// The ABI version this phoenix speaks (`docs/patch-abi.md`).
pub const ABI_VERSION: u32 = 1;

/// The custom section in which a module states its ABI version, in decimal digits.
pub const ABI_SECTION: &str = "phoenix.abi";

/// The ABI version `wasm` states: [`ABI_VERSION`] 1 when it states none (the patches written
/// before versions were). `wasm` must be a module wasmtime accepted: its section layout is
/// valid.
pub fn abi_version(wasm: &[u8]) -> Result<u32, String> {
    let stated = custom_sections(wasm, ABI_SECTION)?;
    let payload = match stated.as_slice() {
        [] => return Ok(1),
        [payload] => *payload,
        more => {
            return Err(format!(
                "the module states its ABI version {} times (custom section `{ABI_SECTION}`); state it once",
                more.len()
            ));
        }
    };
    let digits = payload.iter().all(u8::is_ascii_digit)
        && !payload.is_empty()
        && payload.len() <= 9
        && (payload[0] != b'0' || payload.len() == 1);
    let version = std::str::from_utf8(payload)
        .ok()
        .filter(|_| digits)
        .and_then(|text| text.parse::<u32>().ok());
    match version {
        Some(version) if version == ABI_VERSION => Ok(version),
        Some(version) => Err(format!(
            "the module speaks ABI version {version}; this phoenix speaks version {ABI_VERSION} only: build the patch with the SDK of this phoenix (or a newer phoenix)"
        )),
        None => Err(format!(
            "custom section `{ABI_SECTION}` must hold the ABI version in decimal digits, e.g. `{ABI_VERSION}` (it holds {:?})",
            String::from_utf8_lossy(&payload[..payload.len().min(32)])
        )),
    }
}

/// The payloads of the custom sections named `name`, in order (`wasm` need not have been
/// compiled: a malformed layout is an error, never a read past the bytes).
pub fn custom_sections<'a>(wasm: &'a [u8], name: &str) -> Result<Vec<&'a [u8]>, String> {
    let malformed = || "the module's sections are malformed".to_string();
    let mut rest = wasm.get(8..).ok_or_else(malformed)?; // magic and version
    let mut found = Vec::new();
    while let Some((&id, after_id)) = rest.split_first() {
        let (size, after_size) = leb_u32(after_id).ok_or_else(malformed)?;
        let size = usize::try_from(size).map_err(|_| malformed())?;
        let body = after_size.get(..size).ok_or_else(malformed)?;
        rest = &after_size[size..];
        if id != 0 {
            continue;
        }
        let (length, after_length) = leb_u32(body).ok_or_else(malformed)?;
        let length = usize::try_from(length).map_err(|_| malformed())?;
        let section_name = after_length.get(..length).ok_or_else(malformed)?;
        if section_name == name.as_bytes() {
            found.push(&after_length[length..]);
        }
    }
    Ok(found)
}

/// An unsigned LEB128 number of at most 32 bits, and the bytes after it.
fn leb_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(5) {
        let bits = u32::from(byte & 0x7f);
        if index == 4 && bits > 0x0f {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

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
        if let Err(problem) = abi_version(wasm) {
            problems.push(problem);
        }
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
