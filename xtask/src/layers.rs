//! The layer rule, checked from the sources as rust-analyzer's tidy tests check theirs:
//! commands never import commands, the core never imports a command, and no two core
//! modules import each other, directly or round a longer loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where a source file sits: a command (`commands/<name>.rs`) or a core module (the
/// first folder or file under `src/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Command(String),
    Core(String),
    /// `lib.rs`, `main.rs` and this checker: they name every module by design.
    Root,
}

fn place(relative: &Path) -> Place {
    let parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [only] if matches!(only.as_str(), "lib" | "main" | "layers") => Place::Root,
        [folder, name, ..] if folder == "commands" => Place::Command(name.clone()),
        [module, ..] => Place::Core(module.clone()),
        [] => Place::Root,
    }
}

/// The top-level modules a file names as `crate::<module>`, outside comments.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` names several at once.
            if name.is_empty() && after.starts_with('{') {
                let group = after[1..].split('}').next().unwrap_or_default();
                named.extend(
                    group
                        .split(',')
                        .map(|item| item.trim().split("::").next().unwrap_or_default().to_string())
                        .filter(|item| !item.is_empty()),
                );
            } else if !name.is_empty() {
                named.insert(name);
            }
            rest = after;
        }
    }
    named
}

/// Every breach of the layer rule among `files` (paths relative to `src/`, and their
/// text), each as one line saying where and what.
pub(crate) fn breaches(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let from = place(Path::new(path));
        for module in crate_modules(text) {
            match (&from, module.as_str()) {
                (Place::Root, _) => {}
                (Place::Command(_), "commands") => {
                    problems.push(format!("{path}: a command imports a command (crate::commands)"))
                }
                (Place::Core(core), "commands") => problems.push(format!(
                    "{path}: the core module `{core}` imports a command (crate::commands)"
                )),
                (Place::Core(core), other) if other != core => {
                    edges.entry(core.clone()).or_default().insert(other.to_string());
                }
                _ => {}
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        problems.push(format!(
            "core modules import each other in a loop: {}",
            cycle.join(" → ")
        ));
    }
    problems
}

/// A loop in the import graph, as the modules round it (the first repeated at the end).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("reading the sources") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    let relative = path
                        .strip_prefix(&root)
                        .expect("under src")
                        .to_string_lossy()
                        .into_owned();
                    files.push((relative, std::fs::read_to_string(&path).expect("reading a source")));
                }
            }
        }
        files
    }

    #[test]
    fn the_toolchain_keeps_its_layers() {
        let files = sources();
        assert!(files.len() > 40, "found only {} source files", files.len());
        let problems = breaches(&files);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn a_command_importing_a_command_is_a_breach() {
        let files = [(
            "commands/doctor.rs".to_string(),
            "use crate::commands::build_native::run;".to_string(),
        )];
        assert_eq!(breaches(&files).len(), 1, "{:?}", breaches(&files));
    }

    #[test]
    fn the_core_importing_a_command_is_a_breach() {
        let files = [(
            "cargo/mod.rs".to_string(),
            "use crate::{report, commands::doctor};".to_string(),
        )];
        assert_eq!(breaches(&files).len(), 1, "{:?}", breaches(&files));
    }

    #[test]
    fn a_loop_between_core_modules_is_a_breach_naming_it() {
        let files = [
            (
                "cargo/mod.rs".to_string(),
                "use crate::provision::Requirement;".to_string(),
            ),
            (
                "provision/probe.rs".to_string(),
                "let x = crate::guest::load();".to_string(),
            ),
            ("guest/image.rs".to_string(), "use crate::cargo::artefact;".to_string()),
            (
                "guest/kernel.rs".to_string(),
                "// crate::commands in a comment is fine".to_string(),
            ),
        ];
        let problems = breaches(&files);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("cargo → provision → guest → cargo"),
            "{problems:?}"
        );
    }

    #[test]
    fn layered_imports_pass() {
        let files = [
            ("commands/doctor.rs".to_string(), "use crate::provision;".to_string()),
            (
                "provision/mod.rs".to_string(),
                "use crate::{system, workspace::targets};".to_string(),
            ),
            ("system/mod.rs".to_string(), "use super::kvm;".to_string()),
        ];
        assert!(breaches(&files).is_empty());
    }
}
