//! The baseline side: a git ref resolved to a commit and checked out in a worktree of its
//! own under target/, removed again by a guard however the run ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use services::process::{self, cmd};
use services::teardown::Guard;

use crate::report::error::UsageError;
use crate::workspace::git;

/// The commit `reference` names, or a usage error (exit 2) saying how to name one with
/// `flag` (`--baseline`, `--from`).
pub(crate) fn resolve(repo: &Path, flag: &str, reference: &str) -> Result<String, UsageError> {
    git(repo, &["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")]).ok_or_else(|| {
        UsageError(format!(
            "{flag} {reference}: no such commit in {}\n  fix: pass a branch, tag or commit that exists (`git log --oneline` lists them), e.g. {flag} HEAD~1",
            repo.display()
        ))
    })
}

/// The default baseline: where this branch left main, or the previous commit when the
/// work is on main itself (or there is no main).
pub(crate) fn default_reference(repo: &Path) -> Result<(String, String), UsageError> {
    let head = git(repo, &["rev-parse", "HEAD"]);
    for main in ["main", "origin/main"] {
        if let Some(base) = git(repo, &["merge-base", "HEAD", main]) {
            if Some(&base) != head.as_ref() {
                return Ok((format!("merge-base with {main}"), base));
            }
        }
    }
    resolve(repo, "--baseline", "HEAD~1")
        .map(|commit| ("HEAD~1".to_string(), commit))
        .map_err(|_| {
            UsageError(
                "no default baseline: HEAD has no parent and no branch `main` to start from\n  fix: pass --baseline REF"
                    .into(),
            )
        })
}

/// The baseline commit checked out (detached) at `path`; the worktree goes with the guard.
pub(crate) struct Worktree {
    pub path: PathBuf,
    _guard: Guard,
}

impl Worktree {
    pub(crate) fn add(repo: &Path, path: &Path, commit: &str) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let path_text = path.to_string_lossy().into_owned();
        // Registered before it exists, so an interruption during the checkout still cleans up.
        let (owned_repo, owned_path) = (repo.to_path_buf(), path.to_path_buf());
        let guard = Guard::new(move || remove(&owned_repo, &owned_path));
        let sh = process::shell_in(repo)?;
        let output = process::output(cmd!(sh, "git worktree add --detach --force {path_text} {commit}"))?;
        if !output.status.success() {
            anyhow::bail!(
                "git worktree add {path_text} {commit} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            _guard: guard,
        })
    }
}

fn remove(repo: &Path, path: &Path) {
    let _ = git(repo, &["worktree", "remove", "--force", &path.to_string_lossy()]);
    let _ = std::fs::remove_dir_all(path);
    let _ = git(repo, &["worktree", "prune"]);
}

/// Whether the working tree is exactly `commit`: HEAD is it and nothing differs, not even
/// an untracked file. Then one build is both sides' build.
pub(crate) fn working_tree_is(repo: &Path, commit: &str) -> bool {
    git(repo, &["rev-parse", "HEAD"]).as_deref() == Some(commit)
        && git(repo, &["status", "--porcelain"]).is_some_and(|changes| changes.is_empty())
}

/// HEAD, with `-dirty` when the working tree differs from it.
pub(crate) fn working_tree_revision(repo: &Path) -> String {
    match git(repo, &["rev-parse", "HEAD"]) {
        Some(head) => match git(repo, &["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
            _ => head,
        },
        None => "unknown".into(),
    }
}
