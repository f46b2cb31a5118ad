//! Servers kept aside by their build key (see [`super::artefact::tree_key`]): the binary
//! a set of sources, a build section, a target and a compiler make, copied out of cargo's
//! target directory. Cargo's own output is one path per target and profile, which the
//! next build of the target with other inputs (another commit, a broken linker, other
//! features) replaces or removes under whoever is still using it; a kept server stays
//! until newer ones push it out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::artefact::put_in_place;
use crate::workspace::targets::Target;

/// How many servers of each target are kept: the revisions a team rolls between, and the
/// working tree's.
const KEPT_PER_TARGET: usize = 4;

/// The servers kept under one directory (`target/xtask/servers`).
pub(crate) struct KeptServers {
    dir: PathBuf,
}

impl KeptServers {
    pub(crate) fn in_target_dir(target_dir: &Path) -> Self {
        Self {
            dir: target_dir.join("xtask").join("servers"),
        }
    }

    /// The server kept for `target` under `key`, made the newest of its target (so that
    /// pruning keeps the ones in use), if there is one.
    pub(crate) fn find(&self, target: &Target, key: &str) -> Option<PathBuf> {
        let kept = self.path(target, key);
        if !kept.is_file() {
            return None;
        }
        if let Some(dir) = kept.parent() {
            let _ = std::fs::File::open(dir).and_then(|dir| dir.set_modified(std::time::SystemTime::now()));
        }
        Some(kept)
    }

    /// Copies `binary` in as the server for `target` under `key` (through a rename: a
    /// concurrent run sees it whole or not at all), forgets the oldest servers of the
    /// target beyond [`KEPT_PER_TARGET`], and returns the kept copy's path.
    pub(crate) fn keep(&self, binary: &Path, target: &Target, key: &str) -> Result<PathBuf> {
        let kept = self.path(target, key);
        let dir = kept.parent().context("a kept server's directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        put_in_place(binary, &kept)?;
        let target_dir = self.dir.join(target.triple);
        let mut servers: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&target_dir)
            .with_context(|| format!("reading {}", target_dir.display()))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
            .collect();
        servers.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, old) in servers.into_iter().skip(KEPT_PER_TARGET) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(kept)
    }

    fn path(&self, target: &Target, key: &str) -> PathBuf {
        self.dir.join(target.triple).join(key).join("plexichat")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::targets::TARGETS;

    #[test]
    fn a_kept_server_is_found_by_its_key_and_the_oldest_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptServers::in_target_dir(dir.path());
        let target = &TARGETS[0];
        let built = dir.path().join("built");
        std::fs::write(&built, b"a server").unwrap();
        assert_eq!(kept.find(target, "k0"), None);
        let first = kept.keep(&built, target, "k0").unwrap();
        assert_eq!(kept.find(target, "k0"), Some(first.clone()));
        assert_eq!(std::fs::read(&first).unwrap(), b"a server");
        // Directory times have a coarse grain on some file systems: k0 is aged by hand.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::open(first.parent().unwrap())
            .unwrap()
            .set_modified(old)
            .unwrap();
        for n in 1..=KEPT_PER_TARGET {
            kept.keep(&built, target, &format!("k{n}")).unwrap();
        }
        assert_eq!(kept.find(target, "k0"), None, "the oldest is forgotten");
        for n in 1..=KEPT_PER_TARGET {
            assert!(kept.find(target, &format!("k{n}")).is_some(), "k{n} is kept");
        }
    }
}
