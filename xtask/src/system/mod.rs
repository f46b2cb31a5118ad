//! Facts about the host and the means to change it: commands on PATH, versions,
//! Debian packages (installed as root), privileges.

pub mod elf;
pub mod http;
pub mod kvm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The first match for `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The first line `program args` prints (stdout, else stderr), if it runs at all.
pub fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|line| line.trim().to_string())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|effective| effective == "0"))
        })
        .unwrap_or(false)
}

/// An exclusive lock on this machine named `name`, held until the file is dropped (or the
/// process dies: the kernel releases it). Toolchain runs go on side by side (tests in
/// parallel, a developer beside CI), and apt, dpkg and rustup refuse or break on
/// concurrent installs; whoever waits re-checks what is still missing once it holds it.
pub fn machine_lock(name: &str) -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("plexichat-xtask-{name}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Installs Debian packages (root only), refreshing the package lists first.
pub fn apt_install(packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "installing {} needs root: run `sudo apt-get install {}`",
            packages.join(" "),
            packages.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Runs a command to completion; its output is shown only if it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let description = format!("{command:?}");
    let output = command.output().with_context(|| format!("starting {description}"))?;
    if !output.status.success() {
        bail!(
            "{description} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The SHA-256 of a file's contents, in hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
