//! The layers of `src/` point one way: each folder is a layer, and a module may use only its
//! own layer and the ones below it. This reads the source and fails on a `crate::` path that
//! points up or sideways, on sled or wasmtime outside the one layer that owns each, on I/O or
//! tokio in the core, on a path into the store's insides from outside it, and on the transition
//! table outside the engine (which alone decides a fault's state); and no two modules, in a
//! layer or across, import each other however far round.
//!
//! ```text
//! 0 core        pure data and rules
//! 1 fs          the file system, safely (no links followed, private files)
//! 2 store | sandbox | effects | fleet    (siblings: none imports another)
//! 3 patch       manifests and the registry
//! 4 engine      the imperative shell
//! 5 sources     the intake and the detection sources
//! 6 http        the API
//! 7 daemon      start-up, config, reload; cli (the binary) above all
//! ```

use std::path::Path;

/// Each layer's rank; a module may use a layer of lower rank, or its own.
const LAYERS: &[(&str, u8)] = &[
    ("core", 0),
    ("fs", 1),
    ("store", 2),
    ("sandbox", 2),
    ("effects", 2),
    ("fleet", 2),
    ("patch", 3),
    ("engine", 4),
    ("sources", 5),
    ("http", 6),
    ("daemon", 7),
];

/// External crates only one layer may use.
const OWNED_CRATES: &[(&str, &str)] = &[
    ("sled", "store"),
    ("wasmtime", "sandbox"),
    ("async_nats", "fleet"),
];

/// What the core may not use: it does no I/O and runs on no runtime.
const NOT_IN_CORE: &[&str] = &[
    "tokio::",
    "std::fs",
    "std::net::TcpStream",
    "std::process",
    "reqwest::",
    "axum::",
    "rustix::",
    "notify::",
];

/// Paths only one layer may use (besides the core, which defines them): the transition table is
/// the engine's, since the engine alone decides a fault's state.
const OWNED_PATHS: &[(&str, &str)] = &[("crate::core::machine", "engine")];

/// The store's modules that other layers may name (its facade is `crate::store::*`).
const STORE_PUBLIC: &[&str] = &["backup"];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// The code of `source` without comments (doc links may name any layer).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::LAYER[::NEXT]` a file's code names, `use crate::{a, b::c}` groups included:
/// (layer, the next segment if any).
fn crate_paths(code: &str) -> Vec<(String, Option<String>)> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                paths.push(split_path(item.trim()));
            }
            continue;
        }
        paths.push(split_path(rest));
    }
    paths
}

fn split_path(text: &str) -> (String, Option<String>) {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(text);
    let next = text[first.len()..]
        .strip_prefix("::")
        .map(ident)
        .filter(|n| !n.is_empty());
    (first, next)
}

/// Why the file of `layer` (at `path`) with `source` breaks the layer rules: one line each.
fn violations(layer: &str, path: &str, source: &str) -> Vec<String> {
    let code = code(source);
    let mut found = Vec::new();
    let own = rank(layer);
    for (used, next) in crate_paths(&code) {
        let Some(used_rank) = rank(&used) else {
            continue;
        };
        let Some(own_rank) = own else {
            continue;
        };
        if used != layer && used_rank >= own_rank {
            found.push(format!(
                "{path}: `crate::{used}` is not below `{layer}` (rank {used_rank} >= {own_rank})"
            ));
        }
        if used == "store"
            && layer != "store"
            && let Some(next) = &next
            && next.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && !STORE_PUBLIC.contains(&next.as_str())
            && code.contains(&format!("crate::store::{next}::"))
        {
            found.push(format!(
                "{path}: `crate::store::{next}` reaches into the store's insides"
            ));
        }
    }
    for (krate, owner) in OWNED_CRATES {
        let named = code.contains(&format!("{krate}::")) || code.contains(&format!("use {krate}"));
        if layer != *owner && named {
            found.push(format!("{path}: uses `{krate}`, which only `{owner}` may"));
        }
    }
    for (owned, owner) in OWNED_PATHS {
        if layer != *owner && layer != "core" && code.contains(owned) {
            found.push(format!(
                "{path}: uses `{owned}`, which only `{owner}` may (it alone decides state)"
            ));
        }
    }
    if layer == "core" {
        for forbidden in NOT_IN_CORE {
            if code.contains(forbidden) {
                found.push(format!(
                    "{path}: the core does no I/O and runs on no runtime, but uses `{forbidden}`"
                ));
            }
        }
    }
    found
}

/// The layer a file of `src/` belongs to: its folder (`src/lib.rs`: none).
fn layer_of(relative: &Path) -> Option<String> {
    let mut components = relative.components();
    let first = components
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    components.next().map(|_| first)
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_its_own_layer_and_the_ones_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut found = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(layer) = layer_of(relative) else {
            continue;
        };
        if layer == "cli" {
            continue; // the binary: above every layer
        }
        assert!(
            rank(&layer).is_some(),
            "{}: folder `{layer}` is no layer of tests/layers.rs",
            relative.display()
        );
        let source = std::fs::read_to_string(file).unwrap();
        found.extend(violations(&layer, &relative.display().to_string(), &source));
        checked += 1;
    }
    assert!(checked > 40, "read too few files: {checked}");
    assert!(
        found.is_empty(),
        "layer rules broken:\n{}",
        found.join("\n")
    );
}

/// The production code of a file: without its `mod tests`.
fn production(source: &str) -> &str {
    source
        .find("#[cfg(test)]\nmod ")
        .map_or(source, |at| &source[..at])
}

/// A module's path (`store::faults`) from its file under `src/`.
fn module_of(relative: &Path) -> String {
    let text = relative.with_extension("").display().to_string();
    text.trim_end_matches("/mod").replace('/', "::")
}

/// The first cycle among `graph`'s modules, as the path that closes it.
fn cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut found = path[at..].to_vec();
            found.push(module.to_owned());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_import_each_other_however_far_round() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut sources = std::collections::BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let name = module_of(relative);
        if name.starts_with("cli") || name == "main" || name == "lib" || name.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        sources.insert(name, code(production(&text)));
    }
    let modules: Vec<String> = sources.keys().cloned().collect();
    let mut graph = std::collections::BTreeMap::new();
    for (module, code) in &sources {
        let mut uses = std::collections::BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // The longest module the path names.
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let named = (1..=segments.len())
                .rev()
                .map(|n| segments[..n].join("::"))
                .find(|candidate| modules.contains(candidate));
            if let Some(named) = named.filter(|named| named != module) {
                uses.insert(named);
            }
        }
        graph.insert(module.clone(), uses.into_iter().collect::<Vec<_>>());
    }
    assert!(graph.len() > 40, "read too few modules: {}", graph.len());
    if let Some(found) = cycle(&graph) {
        panic!("modules import each other: {}", found.join(" -> "));
    }
    let mut with_cycle = graph.clone();
    with_cycle
        .entry("core::window".into())
        .or_default()
        .push("core::fault".into());
    with_cycle
        .entry("core::fault".into())
        .or_default()
        .push("core::window".into());
    assert!(
        cycle(&with_cycle).is_some(),
        "the check finds a cycle it is given"
    );
}

#[test]
fn the_rules_catch_what_they_forbid() {
    let caught = |layer: &str, source: &str| !violations(layer, "x.rs", source).is_empty();
    // Up, and sideways among siblings.
    assert!(caught("core", "use crate::http::ApiError;"));
    assert!(caught("store", "use crate::sandbox::Sandbox;"));
    assert!(caught("effects", "fn f() { crate::store::Store::open(); }"));
    assert!(caught(
        "engine",
        "use crate::{core::fault::Fault, http::router};"
    ));
    // Crates a layer does not own, I/O in the core, the store's insides.
    assert!(caught("engine", "use sled::Db;"));
    assert!(caught("http", "let m: wasmtime::Module;"));
    assert!(caught("core", "let f = std::fs::read(path);"));
    assert!(caught("core", "tokio::spawn(f);"));
    assert!(caught("http", "use crate::store::journal::Journal;"));
    assert!(caught(
        "store",
        "crate::core::machine::next(state, Event::Recur)"
    ));
    // Allowed: down, its own layer, the store's facade and backup format, comments.
    assert!(!caught(
        "engine",
        "use crate::core::fault::Fault;\nuse crate::engine::verify;"
    ));
    assert!(!caught("http", "use crate::store::{Store, StoreError};"));
    assert!(!caught("http", "crate::store::backup::encode(&e);"));
    assert!(!caught(
        "core",
        "/// See [`crate::http::ApiError`].\nfn f() {}"
    ));
}
