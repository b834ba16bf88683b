//! The top-level modules form a DAG: no module reaches itself through `crate::` paths (in
//! `use` lines or in code; comments and doc links are not dependencies). A cycle makes a
//! layer impossible to understand, test or replace on its own, so this test names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/gpu/cam.rs` -> `gpu`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Names `n` with `crate::n` in `code` (also inside `use crate::{a, b::c}` groups).
fn crate_refs(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) {
                    refs.insert(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if modules.contains(&name) {
            refs.insert(name);
        }
    }
    refs
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(&src, f) else { continue };
        let code = strip_comments(&std::fs::read_to_string(f).unwrap());
        let entry = edges.entry(m.clone()).or_default();
        for r in crate_refs(&code, &modules) {
            if r != m {
                entry.insert(r);
            }
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    node: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in edges.get(node).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(edges, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_cycle() {
    let edges = graph();
    assert!(edges.len() >= 8, "the scan found the modules: {edges:?}");
    let mut cycles = Vec::new();
    for m in edges.keys() {
        if let Some(c) = cycle_from(&edges, m, m, &mut vec![m.clone()], &mut BTreeSet::new()) {
            cycles.push(c.join(" -> "));
        }
    }
    for (m, deps) in &edges {
        eprintln!("{m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The scanner itself: a cycle it must see, and groups and comments it must read right.
#[test]
fn the_scanner_sees_a_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let refs = crate_refs(&strip_comments("use crate::{a::X, b};\n// crate::c\nlet _ = crate::c::f();"), &modules);
    assert_eq!(refs.len(), 3);
    let refs = crate_refs(&strip_comments("/// see [`crate::c`]\nuse crate::a;"), &modules);
    assert_eq!(refs, ["a".to_string()].into_iter().collect());
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), ["b".to_string()].into_iter().collect::<BTreeSet<_>>());
    edges.insert("b".to_string(), ["a".to_string()].into_iter().collect());
    let c = cycle_from(&edges, "a", "a", &mut vec!["a".into()], &mut BTreeSet::new());
    assert_eq!(c.unwrap().join(" -> "), "a -> b -> a");
}
