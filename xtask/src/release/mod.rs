//! A release: what a user downloads, made from build-native's smoke-tested binaries into
//! `target/dist/release/<version>/` — per target an archive and a Debian package, one
//! multi-architecture OCI image archive, the installer, the checksums (signed on request)
//! and the evidence that each binary was tested on its architecture. Every file is a function of the binaries and the
//! workspace's files alone: owners, modes and dates are fixed (dates at the release's
//! [`Release::epoch`]), entries come in a fixed order, compressors run with fixed
//! settings, so the same binaries make the same bytes.

pub(crate) mod archive;
pub(crate) mod checksums;
pub(crate) mod deb;
pub(crate) mod evidence;
pub(crate) mod installer;
pub(crate) mod oci;
pub(crate) mod sbom;
pub(crate) mod signature;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::report::error::UsageError;
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::{git, Workspace};

/// The files shipped beside the binary, read from the workspace.
pub(crate) struct Shipped {
    pub readme: Vec<u8>,
    /// (file name, text) of each licence the server is offered under.
    pub licences: Vec<(&'static str, Vec<u8>)>,
    /// The release's profile: the server's settings as installed.
    pub profile: Vec<u8>,
    pub unit: Vec<u8>,
}

/// Where the packaging files live in the workspace.
const PACKAGING: &str = "packaging";
const LICENCES: [&str; 2] = ["LICENSE-MIT", "LICENSE-APACHE"];

pub(crate) struct Release {
    pub version: String,
    /// The commit the binaries were built from (`-dirty` with local changes).
    pub revision: String,
    /// The date of every file inside the release's archives, in seconds since the epoch:
    /// `SOURCE_DATE_EPOCH` when set, else the commit's.
    pub epoch: u64,
    pub dir: PathBuf,
    pub packaging: PathBuf,
    pub shipped: Shipped,
    /// The server package's repository: where install.sh downloads from by default.
    pub homepage: Option<String>,
}

impl Release {
    /// The release of `workspace` with `profile`'s settings shipped.
    pub(crate) fn of(workspace: &Workspace, profile: &Profile) -> Result<Self> {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let packaging = workspace.root.join(PACKAGING);
        let shipped = Shipped {
            readme: read(&workspace.root.join("README.md"))?,
            licences: LICENCES
                .iter()
                .map(|name| Ok((*name, read(&workspace.root.join(name))?)))
                .collect::<Result<_>>()?,
            profile: read(&profile.path)?,
            unit: read(&packaging.join("plexichat.service"))?,
        };
        Ok(Self {
            version: workspace.server_version.clone(),
            revision: workspace.git_revision(),
            epoch: source_date_epoch(&workspace.root)?,
            dir: workspace.dist_dir().join("release").join(&workspace.server_version),
            packaging,
            shipped,
            homepage: workspace.server_repository.clone(),
        })
    }

    /// The archive of `target`'s build, and the directory it unpacks into.
    pub(crate) fn archive_stem(&self, target: &Target) -> String {
        format!("plexichat-{}-{}", self.version, target.triple)
    }

    /// Where install.sh downloads from by default: the repository's release page for
    /// this version (GitHub's layout), overridable at install time.
    pub(crate) fn download_url(&self) -> String {
        match &self.homepage {
            Some(repository) => format!(
                "{}/releases/download/v{}",
                repository.trim_end_matches('/'),
                self.version
            ),
            None => String::new(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention) when set, else the commit
/// time of HEAD, else 0 outside git.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value.trim().parse().map_err(|_| {
            UsageError(format!(
                "SOURCE_DATE_EPOCH={value}: not a number of seconds\n  fix: unset it, or set it to e.g. $(git log -1 --format=%ct)"
            ))
            .into()
        });
    }
    Ok(git(root, &["log", "-1", "--format=%ct", "HEAD"])
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_default())
}
