//! An earlier revision's server, built exactly as bench-compare builds its baseline's (a
//! worktree of the commit, the baseline's kept target directory, the same cargo call), for
//! the commands that start a cluster on it and roll it forward (`--from REF`).

use std::path::PathBuf;

use anyhow::Result;

use super::baseline::Worktree;
use super::build::{server, Checkout};
use super::{short, Checkouts};
use crate::report::error::UsageError;
use crate::report::progress::Task;
use crate::workspace::profile::BuildSection;

pub(crate) struct EarlierServer {
    pub commit: String,
    pub binary: PathBuf,
    /// The revision's workspace (its profiles), checked out until this is dropped.
    pub root: PathBuf,
    _worktree: Worktree,
    _checkouts: Checkouts,
}

/// Builds the server of the commit `reference` names; a reference that names no commit,
/// or a revision that does not build, is a usage error naming it.
pub(crate) fn build(reference: &str, build: &BuildSection, task: &Task) -> Result<EarlierServer> {
    let checkouts = Checkouts::prepare("--from", Some(reference))?;
    task.step(format!("checking out {reference} ({})", short(&checkouts.commit)));
    let worktree = Worktree::add(&checkouts.repo, &checkouts.run_dir.join("from"), &checkouts.commit)?;
    let root = worktree.path.join(&checkouts.relative_root);
    let checkout = Checkout {
        label: "earlier",
        root: &root,
        target_dir: &checkouts.baseline_target_dir(),
        bin_dir: checkouts.run_dir.join("from-bin"),
        fresh_checkout: true,
    };
    let binary = server(&checkout, build, task).map_err(|err| {
        UsageError(format!(
            "--from {reference} ({}): its server does not build: {err:#}\n  fix: pass a revision whose server builds",
            short(&checkouts.commit)
        ))
    })?;
    Ok(EarlierServer {
        commit: checkouts.commit.clone(),
        binary,
        root,
        _worktree: worktree,
        _checkouts: checkouts,
    })
}
