//! Which architecture each node runs, and what the host must have to boot them.

use anyhow::Result;

use crate::guest::ImageDefinition;
use crate::provision::{self, Requirement};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::workspace::targets::TARGETS;

/// The architecture of each of `nodes` nodes, from `--arch`: one name for all, `mixed`
/// (one x86_64, the rest aarch64 — a cloud node with edge boxes), or a comma-separated
/// list given to the nodes in turn.
pub fn arches(flag: &str, nodes: usize) -> Result<Vec<String>, UsageError> {
    if flag == "mixed" {
        return Ok((0..nodes)
            .map(|index| if index == 0 { "x86_64" } else { "aarch64" }.to_string())
            .collect());
    }
    let names: Vec<&str> = flag.split(',').map(str::trim).collect();
    for name in &names {
        if !TARGETS.iter().any(|target| target.arch == *name) {
            let known: Vec<&str> = TARGETS.iter().map(|target| target.arch).collect();
            return Err(UsageError(format!(
                "--arch: unknown architecture `{name}`\n  fix: use one of {}, mixed, or a comma-separated list of them",
                known.join(", ")
            )));
        }
    }
    Ok((0..nodes).map(|index| names[index % names.len()].to_string()).collect())
}

/// Installs what building and booting these images needs (each target's rust target and
/// cross linker, QEMU's system emulators), as `doctor --fix` would, in one go; the images
/// fetch their kernels themselves when they are built.
pub fn provision(definitions: &[ImageDefinition], progress: &Progress) -> Result<()> {
    let mut needed = Vec::new();
    for definition in definitions {
        let target = definition.target();
        needed.extend(Requirement::to_build(target));
        needed.push(Requirement::QemuSystem(target));
    }
    needed.extend([Requirement::QemuImg, Requirement::Mkfs]);
    provision::provision(&needed, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_is_one_cloud_node_and_edge_nodes() {
        assert_eq!(arches("mixed", 3).unwrap(), ["x86_64", "aarch64", "aarch64"]);
        assert_eq!(arches("mixed", 1).unwrap(), ["x86_64"]);
    }

    #[test]
    fn a_list_is_dealt_to_the_nodes_in_turn() {
        assert_eq!(arches("riscv64", 2).unwrap(), ["riscv64", "riscv64"]);
        assert_eq!(arches("x86_64,riscv64", 3).unwrap(), ["x86_64", "riscv64", "x86_64"]);
    }

    #[test]
    fn an_unknown_architecture_names_the_flag_and_the_choices() {
        let err = arches("x86_64,sparc", 2).unwrap_err().to_string();
        assert!(
            err.contains("--arch") && err.contains("sparc") && err.contains("mixed"),
            "{err}"
        );
    }
}
