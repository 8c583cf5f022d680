//! The module graph the architecture promises (ARCHITECTURE.md,
//! "Dependencies point one way"), checked on the source: which top-level
//! module of `src/` names which other with a `crate::` path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `crate::<module>` a top-level module names, by module, comments left out.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let path = regex::Regex::new(r"crate::(\w+)").unwrap();
    let group = regex::Regex::new(r"crate::\{([^}]*)\}").unwrap();
    let mut files = vec![root.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let code: String = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let entry = edges.entry(module.clone()).or_default();
        let mut names: Vec<String> = path
            .captures_iter(&code)
            .map(|c| c[1].to_string())
            .collect();
        for g in group.captures_iter(&code) {
            names.extend(g[1].split(',').filter_map(|item| {
                let name = item.trim().split("::").next()?.trim();
                (!name.is_empty()).then(|| name.to_string())
            }));
        }
        for name in names {
            if name != module {
                entry.insert(name);
            }
        }
    }
    edges
}

/// A cycle among the modules, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = graph();
    assert!(edges.len() > 10, "read the modules: {edges:?}");
    if let Some(c) = cycle(&edges) {
        panic!(
            "the modules import each other in a cycle: {}\n{edges:#?}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_parts_do_not_import_the_loader_or_the_wiring() {
    let edges = graph();
    let mut wrong = Vec::new();
    for (module, uses) in &edges {
        // The loader puts the parts' settings together: no part imports it.
        if [
            "observe",
            "evaluate",
            "remediate",
            "kubernetes",
            "telemetry",
            "state",
            "http",
        ]
        .contains(&module.as_str())
            && uses.contains("config")
        {
            wrong.push(format!("{module} imports config"));
        }
        // Nothing below the wiring imports it; only the command line runs it.
        if module != "commands" && uses.contains("daemon") {
            wrong.push(format!("{module} imports daemon"));
        }
    }
    // Remediation reports through its Recorder and is fed by the daemon.
    for below in ["telemetry", "state", "http", "kubernetes"] {
        if edges["remediate"].contains(below) {
            wrong.push(format!("remediate imports {below}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{edges:#?}", wrong.join("\n"));
}
