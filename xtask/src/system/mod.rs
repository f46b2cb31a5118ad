//! Facts about the host and the means to change it: commands on PATH, versions,
//! Debian packages (installed as root), privileges. What the services crate needs of
//! these lives there, and is re-exported here.

pub mod elf;
pub mod http;
pub mod kvm;
pub(crate) mod tarball;

use std::path::Path;

use anyhow::Result;
pub use services::host::{apt_install, is_root, machine_lock, which};
use services::process::{self, cmd};
use sha2::{Digest, Sha256};

/// Where `program` is: on PATH, or in the sbin directories where Debian puts system tools
/// (mkfs.ext4), which are on root's PATH but not on every user's.
pub fn sbin_program(program: &str) -> Option<std::path::PathBuf> {
    which(program).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(program))
            .find(|path| path.is_file())
    })
}

/// The first line `program args` prints (stdout, else stderr), if it runs at all.
pub fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let sh = process::shell().ok()?;
    let output = process::output(cmd!(sh, "{program} {args...}")).ok()?;
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

/// The SHA-256 of a file's contents, in hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
