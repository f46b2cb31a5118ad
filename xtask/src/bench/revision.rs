//! Another revision's server, built exactly as bench-compare builds its baseline's (a
//! worktree of the commit, the baseline's kept target directory, the same cargo call),
//! for the commands that start a cluster on it or roll one onto it (`--from`, `--to`).
//!
//! Its binaries are kept by the key build-native gives the working tree's (the sources,
//! the build section, the target, the compiler), beside the working tree's own servers
//! ([`KeptServers`]): a revision asked for again, by another run or another test, is not
//! compiled again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::baseline::Worktree;
use super::build::{server, Checkout};
use super::{short, Checkouts};
use crate::cargo::artefact::tree_key;
use crate::cargo::kept::KeptServers;
use crate::cargo::rustc_version;
use crate::report::error::UsageError;
use crate::report::progress::Task;
use crate::workspace::profile::BuildSection;
use crate::workspace::targets::Target;

pub(crate) struct RevisionBuild {
    pub reference: String,
    pub commit: String,
    /// The server built for each target asked for.
    binaries: Vec<(&'static Target, PathBuf)>,
    /// The revision's workspace (its profiles), checked out until this is dropped.
    root: PathBuf,
    _worktree: Worktree,
    _checkouts: Checkouts,
}

impl RevisionBuild {
    /// The revision's server for `target`.
    pub(crate) fn binary(&self, target: &Target) -> Result<&Path> {
        self.binaries
            .iter()
            .find(|(built, _)| built.triple == target.triple)
            .map(|(_, binary)| binary.as_path())
            .with_context(|| format!("{} was not built for {}", self.reference, target.triple))
    }

    /// `file` (inside the working tree at `root`) as this revision has it, when it has
    /// it: a revision's nodes read their own revision's profile.
    pub(crate) fn same_file(&self, root: &Path, file: &Path) -> PathBuf {
        file.strip_prefix(root)
            .map(|relative| self.root.join(relative))
            .ok()
            .filter(|there| there.is_file())
            .unwrap_or_else(|| file.to_path_buf())
    }

    /// The reference and its commit, for progress lines and reports.
    pub(crate) fn label(&self) -> String {
        format!("{} ({})", self.reference, short(&self.commit))
    }
}

/// Builds the server of the commit `reference` (given with `flag`) names for each of
/// `targets`; a reference that names no commit, or a revision that does not build, is a
/// usage error naming it.
pub(crate) fn build(
    flag: &str,
    reference: &str,
    build: &BuildSection,
    targets: &[&'static Target],
    task: &Task,
) -> Result<RevisionBuild> {
    let checkouts = Checkouts::prepare(flag, Some(reference))?;
    task.step(format!("checking out {reference} ({})", short(&checkouts.commit)));
    let worktree = Worktree::add(&checkouts.repo, &checkouts.run_dir.join("revision"), &checkouts.commit)?;
    let root = worktree.path.join(&checkouts.relative_root);
    let toolchain = rustc_version(&root)?;
    let kept = KeptServers::in_target_dir(&checkouts.target_dir);
    let mut binaries = Vec::new();
    for &target in targets {
        let key = tree_key(&root, build, target, &toolchain)?;
        let binary = match kept.find(target, &key) {
            Some(binary) => {
                task.step(format!("{reference} for {}: built before", target.arch));
                binary
            }
            None => {
                let checkout = Checkout {
                    label: "revision",
                    root: &root,
                    target_dir: &checkouts.baseline_target_dir(),
                    bin_dir: checkouts.run_dir.join("bin").join(target.triple),
                    fresh_checkout: true,
                };
                let binary = server(&checkout, build, target, task).map_err(|err| {
                    UsageError(format!(
                        "{flag} {reference} ({}): its server does not build for {}: {err:#}\n  fix: pass a revision whose server builds",
                        short(&checkouts.commit),
                        target.arch
                    ))
                })?;
                kept.keep(&binary, target, &key)?
            }
        };
        binaries.push((target, binary));
    }
    Ok(RevisionBuild {
        reference: reference.to_string(),
        commit: checkouts.commit.clone(),
        binaries,
        root,
        _worktree: worktree,
        _checkouts: checkouts,
    })
}
