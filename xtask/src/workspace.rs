//! Where things are: the workspace root, its target directory, the server's version.

use std::path::PathBuf;

use anyhow::{Context, Result};

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub server_version: String,
}

impl Workspace {
    pub fn discover() -> Result<Self> {
        let metadata = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .exec()
            .context("reading the workspace with cargo metadata")?;
        let server = metadata
            .packages
            .iter()
            .find(|package| package.name == "plexichat")
            .context("the workspace has no plexichat package")?;
        Ok(Self {
            root: metadata.workspace_root.into_std_path_buf(),
            target_dir: metadata.target_directory.into_std_path_buf(),
            server_version: server.version.to_string(),
        })
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// Where build-native puts its artefacts and manifest.
    pub fn dist_dir(&self) -> PathBuf {
        self.target_dir.join("dist")
    }

    /// The commit checked out, with `-dirty` when the work tree differs from it.
    pub fn git_revision(&self) -> String {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(&self.root)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        };
        match git(&["rev-parse", "HEAD"]) {
            Some(revision) => match git(&["status", "--porcelain"]) {
                Some(changes) if !changes.is_empty() => format!("{revision}-dirty"),
                _ => revision,
            },
            None => "unknown".into(),
        }
    }
}
