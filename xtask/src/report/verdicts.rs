//! Verdicts that outlive the run that reached them: a command that has tested an
//! architecture's build (qemu-cluster's checks in VMs, bench-compare's comparison)
//! records its verdict here, under `target/xtask/verdicts/`, one file per command and
//! architecture, the newest replacing the older; a release reads them back as the
//! evidence that what it ships was tested, and says for which revision and binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The command that reached it: `qemu-cluster`, `bench-compare`.
    pub command: String,
    pub arch: String,
    /// The revision whose build was tested (`-dirty` when the tree had changes).
    pub revision: String,
    /// The SHA-256 of the server binary tested, when one binary was.
    pub binary_sha256: Option<String>,
    pub ok: bool,
    /// What was checked and how it went, one line each.
    pub checks: Vec<String>,
    /// When, in seconds since the epoch.
    pub at: u64,
}

/// Where `command`'s verdict on `arch` is kept, under cargo's `target_dir`.
fn path(target_dir: &Path, command: &str, arch: &str) -> PathBuf {
    target_dir.join("xtask/verdicts").join(format!("{command}-{arch}.json"))
}

/// Keeps `verdict`, replacing the one recorded before for its command and architecture.
pub fn record(target_dir: &Path, verdict: &Recorded) -> Result<()> {
    let path = path(target_dir, &verdict.command, &verdict.arch);
    std::fs::create_dir_all(path.parent().context("the verdicts directory")?)?;
    // Written aside and renamed: a reader never sees half a verdict.
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(verdict)?)
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The verdict `command` last recorded for `arch`, if any (an unreadable one is none).
pub fn latest(target_dir: &Path, command: &str, arch: &str) -> Option<Recorded> {
    let bytes = std::fs::read(path(target_dir, command, arch)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Now, in seconds since the epoch, for [`Recorded::at`].
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_verdict_per_command_and_architecture_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target_dir = dir.path();
        let verdict = |arch: &str, ok| Recorded {
            command: "qemu-cluster".into(),
            arch: arch.into(),
            revision: "abc".into(),
            binary_sha256: Some("00".into()),
            ok,
            checks: vec!["membership: ok".into()],
            at: 1,
        };
        assert_eq!(latest(target_dir, "qemu-cluster", "x86_64"), None);
        record(target_dir, &verdict("x86_64", false)).unwrap();
        record(target_dir, &verdict("x86_64", true)).unwrap();
        record(target_dir, &verdict("aarch64", false)).unwrap();
        assert_eq!(
            latest(target_dir, "qemu-cluster", "x86_64"),
            Some(verdict("x86_64", true))
        );
        assert_eq!(
            latest(target_dir, "qemu-cluster", "aarch64"),
            Some(verdict("aarch64", false))
        );
        assert_eq!(latest(target_dir, "bench-compare", "x86_64"), None);
    }
}
