//! Facts about this host that the services need (programs on PATH, root, PostgreSQL's
//! binaries, a free port), and installing the Debian package of one that is missing,
//! one installation at a time on the machine.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::process::{self, cmd};

/// The first match for `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
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
    let sh = process::shell()?;
    process::run(cmd!(sh, "apt-get update -qq"))?;
    process::run(
        cmd!(sh, "apt-get install -y -qq --no-install-recommends {packages...}")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs Debian's `package` when `present` says it is missing, as `doctor --fix`
/// would: root is needed, and one installation at a time on the machine (apt holds a
/// lock). The lock is the one the toolchain's provisioning takes.
pub(crate) fn install_if_missing(package: &str, present: impl Fn() -> bool) -> Result<()> {
    if present() {
        return Ok(());
    }
    let _installing = machine_lock("provision")?;
    if present() {
        return Ok(());
    }
    if !is_root() {
        bail!("{package} is not installed (fix: sudo apt-get install {package}, or sudo cargo xtask doctor --fix)");
    }
    apt_install(&[package.to_string()]).with_context(|| format!("installing {package}"))?;
    if !present() {
        bail!("{package} was installed but is still not usable");
    }
    Ok(())
}

/// Debian installs PostgreSQL's server programs outside PATH, per major version.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The lowest port a picked one may have: below it are the well-known services'.
const LOWEST_PICKED: u16 = 10_000;

/// A free TCP port on loopback, for a server that binds it a moment later (and again when
/// it is restarted as itself). It is picked below the kernel's ephemeral range: a port from
/// that range (what binding port 0 gives) is also handed to every outgoing connection of
/// every process, and under a parallel test run one was taken that way between the pick
/// and the server's bind ("Address already in use"). Ports below the range are only ever
/// taken by a process that asks for them by number.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Taken in turn within a process, so that two picks of one process never coincide;
    // each process starts elsewhere in the span (by its pid), so that runs side by side
    // rarely meet.
    static PICKS: AtomicU32 = AtomicU32::new(0);
    let below = ephemeral_range_start().unwrap_or(32_768);
    if below > LOWEST_PICKED {
        let span = u32::from(below - LOWEST_PICKED);
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span.min(1_000) {
            let offset = (start + PICKS.fetch_add(1, Ordering::Relaxed)) % span;
            let port = LOWEST_PICKED + u16::try_from(offset).unwrap_or_default();
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_range_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_picked_port_is_free_and_outside_the_ephemeral_range() {
        let below = ephemeral_range_start().expect("Linux says its ephemeral range");
        let mut picked = std::collections::HashSet::new();
        for _ in 0..20 {
            // A picked port is free when picked; another process (a server still being
            // torn down by the test binary before this one, say) may take it before this
            // bind, as the picker's comment says. Three picks in a row taken that way
            // would be no race but a picker handing out busy ports.
            let bound = (0..3).find_map(|_| {
                let port = free_port().unwrap();
                if below > LOWEST_PICKED {
                    assert!((LOWEST_PICKED..below).contains(&port), "{port}");
                }
                assert!(picked.insert(port), "port {port} was picked twice");
                TcpListener::bind(("127.0.0.1", port)).ok()
            });
            assert!(bound.is_some(), "three picked ports in a row were taken");
        }
    }
}
