//! The core's modules form layers: each uses only modules of the layers
//! below it, so there is no import cycle and each module can be read
//! knowing only what is below it. Guards against a module reaching up (a
//! connection asking the node operations, a domain record the protocol
//! state machine), which ties the two into one.
//!
//! The check reads the sources: every `crate::` path outside comments and
//! `#[cfg(test)]` code, attributed to the top-level module of the file it
//! is in (a directory module's files, such as `protocol/`, are one
//! module: the parts of one type).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The core's top-level modules, lowest first (as the crate documentation
/// lists them). A module may use the ones before it only.
const LAYERS: [&str; 12] =
    ["features", "access", "quota", "error", "reply", "ops", "ring", "conn", "watch", "domain", "reader", "protocol"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `conn.rs` → `conn`,
/// `protocol/mod.rs` and `protocol/image.rs` → `protocol`; `None` for the
/// crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first.to_string()),
    }
}

/// The first identifiers of the paths after each `crate::` in `code`
/// (`crate::a::b` → `a`, `crate::{a, b::c}` → `a`, `b`).
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level items of the group, up to its closing brace.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push(ident(group[start..i].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(group[start..i].trim_start()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// Each module's uses of other modules, with the files they are in.
fn uses() -> BTreeMap<String, BTreeMap<String, Vec<PathBuf>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeMap<String, Vec<PathBuf>>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else { continue };
        let text = fs::read_to_string(&file).expect("readable");
        let code: String = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for used in crate_paths(&code) {
            if used != module {
                let rel = file.strip_prefix(&src).unwrap_or(&file).to_path_buf();
                uses.entry(module.clone()).or_default().entry(used).or_default().push(rel);
            }
        }
    }
    uses
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        let Some(level) = LAYERS.iter().position(|m| *m == module) else {
            wrong.push(format!("module `{module}` is not in LAYERS: place it there"));
            continue;
        };
        for (other, files) in used {
            match LAYERS.iter().position(|m| *m == other) {
                Some(l) if l < level => {}
                Some(_) => wrong.push(format!("`{module}` uses `{other}`, a layer above it ({files:?})")),
                None => wrong.push(format!(
                    "`{module}` uses `crate::{other}`, not a module in LAYERS: name the module the item is in ({files:?})"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_path_scanner_reads_groups_and_plain_paths() {
    let code = "use crate::{a::B, c, d::{e, f}};\nfn x() { crate::g::h(); }";
    assert_eq!(crate_paths(code), ["a", "c", "d", "g"]);
}
