//! The cargo driver: how the server is compiled and linked for each target, and the one
//! place that runs `cargo build` for it and reads cargo's JSON messages.

pub(crate) mod artefact;
pub(crate) mod auditable;
pub(crate) mod kept;
pub(crate) mod matrix;

pub(crate) mod smoke;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use cargo_metadata::{Artifact, Message};
use services::process::{self, cmd};
use sha2::{Digest, Sha256};

use crate::provision::{self, Requirement};
use crate::report::progress::Task;
use crate::system::{self, hex};
use crate::workspace::profile::BuildSection;
use crate::workspace::targets::Target;
use crate::workspace::{build_revision, Workspace};

/// The one place that says how a target is compiled and linked. The same values every
/// time, so cargo's own fingerprints never see a change and never rebuild needlessly.
///
/// The host's own target gets no linker or C compiler override: cargo applies a
/// `target.<host>.linker` to build scripts and proc-macros too, which would make every
/// switch between targets (and every plain `cargo build --release`) rebuild them all.
/// Rustflags given with `--target` reach only the target's code.
///
/// `revision` (see [`build_revision`]) is compiled into the server as its version's build
/// part, so it is an input of the build like the rest.
pub(crate) fn cargo_env(build: &BuildSection, target: &Target, revision: Option<&str>) -> Vec<(String, String)> {
    let key = target.env_key();
    let mut rustflags = vec!["-C".to_string(), "target-feature=+crt-static".to_string()];
    rustflags.extend(build.rustflags.iter().cloned());
    let mut env = vec![(format!("CARGO_TARGET_{key}_RUSTFLAGS"), rustflags.join(" "))];
    if target.is_foreign() {
        env.push((format!("CARGO_TARGET_{key}_LINKER"), target.linker.to_string()));
        env.push((
            format!("CC_{}", target.triple.replace('-', "_")),
            target.linker.to_string(),
        ));
    }
    let profile_key = build.cargo_profile.to_uppercase().replace('-', "_");
    if let Some(lto) = build.lto {
        env.push((format!("CARGO_PROFILE_{profile_key}_LTO"), lto.cargo_value().into()));
    }
    if let Some(units) = build.codegen_units {
        env.push((format!("CARGO_PROFILE_{profile_key}_CODEGEN_UNITS"), units.to_string()));
    }
    if build.sccache {
        env.push(("RUSTC_WRAPPER".into(), "sccache".into()));
    }
    if let Some(revision) = revision {
        env.push(("PLEXICHAT_BUILD_REVISION".into(), revision.into()));
    }
    env
}

/// Runs cargo for one target; returns the executable it produced.
pub(crate) fn target_build(
    workspace: &Workspace,
    build: &BuildSection,
    target: &Target,
    task: &Task,
) -> Result<PathBuf> {
    if build.sccache && system::which("sccache").is_none() {
        bail!("the profile asks for sccache, which is not installed (fix: apt-get install sccache)");
    }
    let command = server_build(&workspace.root, build, target, task)?;
    task.step(format!(
        "cargo build for {} --profile {}",
        target.triple, build.cargo_profile
    ));
    let mut executable = None;
    let mut compiled = 0;
    let (status, stderr) = with_messages(command, |artifact| {
        compiled += 1;
        task.detail(format!("{compiled} crates: {}", artifact.target.name));
        if let Some(path) = artifact.executable {
            executable = Some(path.into_std_path_buf());
        }
    })?;
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        bail!(
            "cargo build failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    executable.context("cargo reported no executable for plexichat")
}

/// The one `cargo build` of the server: its static binary for `target`, as `build` says,
/// in the workspace at `root`. Every user of a release server (build-native, the images,
/// the VMs, cluster-local, bench-compare's e2e) builds through it, so that one build in a
/// target directory serves them all. Through cargo-auditable: the binary carries the list
/// of crates it was built from (installed first if missing, telling `task`).
pub(crate) fn server_build(root: &Path, build: &BuildSection, target: &Target, task: &Task) -> Result<Command> {
    provision::ensure(&[Requirement::CargoAuditable], task)?;
    let mut command = auditable::cargo(&["build", "--locked", "--package", "plexichat", "--bin", "plexichat"])?;
    command
        .current_dir(root)
        .args(["--profile", &build.cargo_profile])
        .args(["--target", target.triple])
        .envs(cargo_env(build, target, build_revision(root).as_deref()));
    if !build.features.is_empty() {
        command.args(["--features", &build.features.join(",")]);
    }
    Ok(command)
}

/// The cargo running us (cargo sets `CARGO` for `cargo xtask`), else the one on PATH.
pub(crate) fn cargo() -> Command {
    // Builds stream their messages while they run: a child of ours, not a command.
    process::cargo()
}

/// Runs `command` (a cargo build, bench, …) with cargo's JSON messages on its stdout,
/// handing every compiled artefact to `on_artifact` as it comes; returns cargo's exit
/// status and what it said on stderr (its rendered diagnostics).
pub(crate) fn with_messages(
    mut command: Command,
    mut on_artifact: impl FnMut(Artifact),
) -> Result<(ExitStatus, String)> {
    command
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting cargo")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
    for message in Message::parse_stream(stdout) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's messages")? {
            on_artifact(artifact);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    Ok((status, stderr_reader.join().unwrap_or_default()))
}

/// A SHA-256 over labelled fields, for cache keys. Each label and value is length-prefixed
/// so that no two different lists of fields feed the same bytes.
#[derive(Default)]
pub(crate) struct KeyHasher(Sha256);

impl KeyHasher {
    pub(crate) fn feed(&mut self, label: &str, bytes: &[u8]) {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// `rustc -vV` as the workspace at `dir` sees it (its toolchain file included): the
/// compiler's full identity (version, commit, host, LLVM), as cache keys and baseline
/// comparisons need it.
pub(crate) fn rustc_version(dir: &Path) -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sh = process::shell_in(dir)?;
    let output = process::output(cmd!(sh, "{rustc} -vV"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_target_keeps_the_default_linker_so_host_artefacts_are_shared() {
        let host = crate::workspace::targets::TARGETS
            .iter()
            .find(|t| !t.is_foreign())
            .expect("the host is a supported target");
        let env = cargo_env(&BuildSection::default(), host, None);
        assert!(
            env.iter()
                .all(|(name, _)| !name.ends_with("_LINKER") && !name.starts_with("CC_")),
            "{env:?}"
        );
        assert!(env
            .iter()
            .any(|(name, value)| name.ends_with("_RUSTFLAGS") && value.contains("crt-static")));
    }

    #[test]
    fn cargo_env_links_statically_with_the_targets_gcc() {
        let env = cargo_env(&BuildSection::default(), &crate::workspace::targets::TARGETS[1], None);
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(
            get("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"),
            Some("aarch64-linux-gnu-gcc")
        );
        assert_eq!(
            get("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS"),
            Some("-C target-feature=+crt-static")
        );
        assert_eq!(get("CC_aarch64_unknown_linux_gnu"), Some("aarch64-linux-gnu-gcc"));
    }
}
