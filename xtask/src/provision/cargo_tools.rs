//! Tools that the builds install with `cargo install`, at pinned versions: where one is,
//! and which version of it cargo says it installed.

use std::path::{Path, PathBuf};

use services::process;

/// A crate whose binary the builds run, at the one version they were checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CargoTool {
    /// The crate, which is also the binary's name.
    pub(crate) krate: &'static str,
    pub(crate) version: &'static str,
}

/// cargo-auditable, which embeds each server binary's crate list. Pinned: another version
/// would embed other bytes, so the builds also put it in their cache key.
pub(crate) const CARGO_AUDITABLE: CargoTool = CargoTool {
    krate: "cargo-auditable",
    version: "0.7.7",
};

impl CargoTool {
    /// The binary on PATH, else in cargo's own bin directory (where `cargo install` puts
    /// it, which a non-login shell's PATH may lack).
    pub(crate) fn executable(&self) -> Option<PathBuf> {
        crate::system::which(self.krate).or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
            Some(home.join("bin").join(self.krate)).filter(|path| path.is_file())
        })
    }

    /// The version that `cargo install --list` says is installed.
    pub(crate) fn installed_version(&self) -> Option<String> {
        let output = process::cargo().args(["install", "--list"]).output().ok()?;
        installed(&String::from_utf8_lossy(&output.stdout), self.krate)
    }
}

/// The version of `krate` in a `cargo install --list` listing ("NAME vVERSION:" lines).
fn installed(listing: &str, krate: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let (name, rest) = line.split_once(' ')?;
        let version = rest.strip_prefix('v')?.strip_suffix(':')?;
        (name == krate).then(|| version.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_version_is_read_from_cargos_listing() {
        let listing = "cargo-nextest v0.9.1:\n    cargo-nextest\ncargo-auditable v0.7.7:\n    cargo-auditable\n";
        assert_eq!(installed(listing, "cargo-auditable").as_deref(), Some("0.7.7"));
        assert_eq!(installed(listing, "cargo-audit"), None);
        assert_eq!(installed("", "cargo-auditable"), None);
    }
}
