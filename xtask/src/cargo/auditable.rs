//! cargo-auditable: every server binary carries the list of crates it was built from
//! (zlib-compressed JSON in a `.dep-v0` section), so that a scanner (`cargo audit bin`,
//! syft, trivy) reads it from the file alone. The builds pin its version and put it in
//! their cache key: the section's bytes are its output.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
pub(crate) use auditable_serde::{DependencyKind, VersionInfo};
use services::process;

use crate::provision::cargo_tools::{CargoTool, CARGO_AUDITABLE};

/// The largest embedded list read back: the server's is some 40 KB of JSON.
const JSON_LIMIT: usize = 8 << 20;

/// `cargo auditable` with `args` (build and its flags): cargo, with the wrapper that
/// embeds the crate list in what it links.
pub(crate) fn cargo(args: &[&str]) -> Result<Command> {
    let CargoTool { krate, version } = CARGO_AUDITABLE;
    let executable = CARGO_AUDITABLE.executable().with_context(|| {
        format!(
            "{krate} is not installed; every server binary is built with it\n  fix: cargo xtask doctor --fix, or cargo install --locked {krate} --version {version}"
        )
    })?;
    let mut command = process::cargo_tool(executable);
    // As cargo runs a subcommand: its own name first, then the arguments.
    // It runs the cargo in `CARGO` (ours, as for any subcommand), else the one on PATH.
    command.arg("auditable").args(args);
    Ok(command)
}

/// The crate list embedded in `binary`, the contents of the file at `path`.
pub(crate) fn read(binary: &[u8], path: &Path) -> Result<VersionInfo> {
    auditable_info::audit_info_from_slice(binary, JSON_LIMIT)
        .map_err(|err| anyhow::anyhow!("{}: no readable cargo-auditable data: {err}", path.display()))
}
