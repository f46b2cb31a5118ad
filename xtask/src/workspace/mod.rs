//! Where things are: the workspace root, its target directory, the server's version.

pub mod profile;
pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use services::process::{self, cmd};

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub server_version: String,
    /// The server package's manifest fields that images and reports carry.
    pub server_description: Option<String>,
    pub server_license: Option<String>,
    pub server_repository: Option<String>,
}

impl Workspace {
    /// The workspace of the current directory, read once per process: commands and
    /// provisioning probes all ask, and each `cargo metadata` costs a tenth of a second.
    pub fn discover() -> Result<Self> {
        static DISCOVERED: OnceLock<Workspace> = OnceLock::new();
        if let Some(workspace) = DISCOVERED.get() {
            return Ok(workspace.clone());
        }
        let workspace = Self::read()?;
        Ok(DISCOVERED.get_or_init(|| workspace).clone())
    }

    fn read() -> Result<Self> {
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
            server_description: server.description.clone(),
            server_license: server.license.clone(),
            server_repository: server.repository.clone(),
        })
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// Where build-native puts its artefacts and manifest.
    pub fn dist_dir(&self) -> PathBuf {
        self.target_dir.join("dist")
    }

    /// The version a server built here by the toolchain reports: the package version and
    /// the build's revision (see [`build_revision`]).
    pub fn build_version(&self) -> String {
        match build_revision(&self.root) {
            Some(revision) => format!("{}+{revision}", self.server_version),
            None => self.server_version.clone(),
        }
    }

    /// The commit checked out, with `-dirty` when the work tree differs from it.
    pub fn git_revision(&self) -> String {
        match git(&self.root, &["rev-parse", "HEAD"]) {
            Some(revision) => match git(&self.root, &["status", "--porcelain"]) {
                Some(changes) if !changes.is_empty() => format!("{revision}-dirty"),
                _ => revision,
            },
            None => "unknown".into(),
        }
    }
}

/// The revision a server built from the tree at `root` says it is (`plexichat --version`,
/// `/health`): the commit's first 12 digits, with `-dirty` when the work tree differs from
/// it; `None` outside git.
pub fn build_revision(root: &Path) -> Option<String> {
    let commit = git(root, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(root, &["status", "--porcelain"]).is_some_and(|changes| !changes.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}

/// `git ARGS` in `dir`: its trimmed stdout, or `None` if it failed.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let sh = process::shell_in(dir).ok()?;
    process::read(cmd!(sh, "git {args...}"))
}

/// A YAML file a flag names: `NAME` for `dir/NAME.yaml`, or a path (it contains a `/` or
/// ends in `.yaml` or `.yml`). Returns the path, how messages show it (relative to `root`
/// when inside it) and its text; a file that cannot be read is a usage error listing the
/// files of `dir`. `kind` says what the file is, e.g. `workflow`.
pub(crate) fn read_named_yaml(
    root: &Path,
    dir: &Path,
    kind: &str,
    name: &str,
) -> Result<(PathBuf, String, String), crate::report::error::UsageError> {
    let path = named_yaml_path(dir, name);
    let place = path.strip_prefix(root).unwrap_or(&path).display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|err| {
        crate::report::error::UsageError(format!(
            "{kind} {place}: cannot read it: {err}\n  fix: use one of {}, or a path to a {kind} file",
            yaml_names(dir).join(", ")
        ))
    })?;
    Ok((path, place, text))
}

/// `dir/NAME.yaml` for a name, the path itself for a path.
fn named_yaml_path(dir: &Path, name: &str) -> PathBuf {
    if name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml") {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.yaml"))
    }
}

/// The names (without `.yaml`) of the YAML files in `dir`, sorted: what a bad name in a
/// flag could have been.
pub fn yaml_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .path()
                .file_name()?
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_directory_and_paths_stay_paths() {
        let dir = Path::new("/repo/workflows");
        assert_eq!(named_yaml_path(dir, "ci"), Path::new("/repo/workflows/ci.yaml"));
        assert_eq!(named_yaml_path(dir, "other/ci.yml"), Path::new("other/ci.yml"));
        assert_eq!(named_yaml_path(dir, "mine.yaml"), Path::new("mine.yaml"));
    }
}
