//! The one way a process is run. A short-lived command (git, apt-get, rustup, a version
//! probe…) is written with xshell's `cmd!` and run to completion here. A long-running
//! child (a server, QEMU, PostgreSQL, a pipeline step) stays a `std::process::Child`
//! that a [`ProcessGuard`] owns, so that it is stopped however the run ends; one started
//! in a process group of its own is stopped with everything it started. Signals go
//! through `nix`, not through a `kill` process.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;
pub use xshell::{cmd, Cmd, Shell};

use crate::teardown::Guard;

/// How long a process may take to stop on its stop signal before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// A shell whose commands run in `dir`.
pub fn shell_in(dir: &Path) -> Result<Shell> {
    let sh = shell()?;
    sh.change_dir(dir);
    Ok(sh)
}

/// A shell whose commands run in the current directory.
pub fn shell() -> Result<Shell> {
    Shell::new().context("reading the current directory")
}

/// `cargo` (the one running us when there is one) without the variables cargo sets for the
/// package it runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …). Started under `cargo run` or a
/// test with them, cargo takes their values for changed inputs of the build scripts that
/// read them (ring's, for one) and rebuilds those crates and everything above them; runs
/// from a shell and from the tests would then rebuild the server in turn.
pub fn cargo() -> Command {
    cargo_tool(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `program`, a cargo subcommand's executable (which runs cargo itself), without the
/// variables cargo sets for the package it runs, as [`cargo`].
pub fn cargo_tool(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_variable) {
            command.env_remove(name);
        }
    }
    command
}

/// A variable cargo sets for one package's build or run, as opposed to cargo's own
/// configuration (`CARGO`, `CARGO_HOME`, `CARGO_TARGET_DIR`, …).
fn is_package_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// Runs a short-lived command to completion; its output is shown only if it fails.
pub fn run(cmd: Cmd<'_>) -> Result<()> {
    let description = cmd.to_string();
    checked(&description, output(cmd)?)
}

/// [`run`], as the user and group `owner` when there is one (xshell cannot say that).
pub fn run_as(cmd: Cmd<'_>, owner: Option<(u32, u32)>) -> Result<()> {
    let description = cmd.to_string();
    let mut command = Command::from(cmd);
    as_user(&mut command, owner);
    let output = command.output().with_context(|| format!("starting {description}"))?;
    checked(&description, output)
}

/// Makes `command` run as the user and group `owner`, when there is one.
pub fn as_user(command: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// Runs a short-lived command to completion, whatever its exit status, capturing both
/// streams: for callers whose failure message says more than the command line.
pub fn output(cmd: Cmd<'_>) -> Result<Output> {
    let description = cmd.to_string();
    cmd.quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("starting {description}"))
}

/// The command's trimmed stdout, or `None` if it did not run or failed.
pub fn read(cmd: Cmd<'_>) -> Option<String> {
    let output = output(cmd).ok().filter(|output| output.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn checked(description: &str, output: Output) -> Result<()> {
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

/// A process id as `nix` takes it; `None` for 0 and for what does not fit, which `kill`
/// would read as "my own group" or "every process".
fn pid(id: u32) -> Option<Pid> {
    i32::try_from(id).ok().filter(|id| *id > 0).map(Pid::from_raw)
}

/// Sends `signal` to the process `id`; false when it is gone (or not ours to signal).
pub fn signal(id: u32, signal: Signal) -> bool {
    pid(id).is_some_and(|pid| nix::sys::signal::kill(pid, signal).is_ok())
}

/// Sends `signal` to every process of the group `group` (`None` only asks whether one
/// is left); false when none is.
pub fn signal_group(group: u32, signal: Option<Signal>) -> bool {
    pid(group).is_some_and(|group| nix::sys::signal::killpg(group, signal).is_ok())
}

/// A child process, stopped and reaped when the guard goes.
pub struct ProcessGuard {
    child: Arc<Mutex<Child>>,
    _guard: Guard,
}

impl ProcessGuard {
    /// Killed outright (SIGKILL) at teardown.
    pub fn new(child: Child) -> Self {
        Self::stopped_by(child, Signal::SIGKILL)
    }

    /// Sent `signal` (e.g. SIGQUIT for PostgreSQL's immediate shutdown) at teardown, and
    /// killed if it is still running after a grace period.
    pub fn stopped_by(child: Child, signal: Signal) -> Self {
        Self::guard(child, move |child| stop(child, signal))
    }

    /// A child that leads a process group of its own (`Command::process_group(0)`),
    /// stopped at teardown with everything it started: see [`stop_group`].
    pub fn group_leader(child: Child) -> Self {
        Self::guard(child, stop_group)
    }

    /// Torn down by `teardown` (which must leave no process behind).
    pub fn with_teardown(child: Child, teardown: impl FnOnce(&mut Child) + Send + 'static) -> Self {
        Self::guard(child, teardown)
    }

    fn guard(child: Child, stop: impl FnOnce(&mut Child) + Send + 'static) -> Self {
        let child = Arc::new(Mutex::new(child));
        let owned = child.clone();
        let guard = Guard::new(move || {
            let mut child = owned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            stop(&mut child);
        });
        Self { child, _guard: guard }
    }

    pub fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends `signal`, waits a grace period for the exit, then kills and reaps.
pub fn stop(child: &mut Child, signal: Signal) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // Not yet reaped, the child's pid cannot name another process.
    if signal != Signal::SIGKILL && self::signal(child.id(), signal) {
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM to the group that `leader` leads; SIGKILL to whatever is left of it after
/// the grace. The toolchain's own subcommands power off VMs and stop databases on
/// SIGTERM, so they get the time to.
pub fn stop_group(leader: &mut Child) {
    let group = leader.id();
    if signal_group(group, Some(Signal::SIGTERM)) {
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            // Reaped, the leader no longer counts as a member still running.
            let _ = leader.try_wait();
            if !signal_group(group, None) {
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    signal_group(group, Some(Signal::SIGKILL));
    // Should the group be out of reach, the leader at least must not outlive the wait.
    let _ = leader.kill();
    let _ = leader.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_runs_without_the_variables_of_the_package_running_us() {
        assert!(is_package_variable("CARGO_PKG_DESCRIPTION") && is_package_variable("CARGO_MANIFEST_DIR"));
        assert!(!is_package_variable("CARGO") && !is_package_variable("CARGO_TARGET_DIR"));
        // This test runs under cargo, which set CARGO_MANIFEST_DIR for it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = cargo();
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name)
            .collect();
        assert!(removed.iter().any(|name| *name == "CARGO_MANIFEST_DIR"), "{removed:?}");
        assert!(removed.iter().any(|name| *name == "CARGO_PKG_NAME"), "{removed:?}");
        assert!(!removed.iter().any(|name| *name == "CARGO"), "{removed:?}");
    }

    #[test]
    fn processes_are_killed_when_dropped() {
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let guard = ProcessGuard::new(child);
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(guard);
        // Reaped by the guard, so the pid no longer names our child.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(!status.contains("sleep"), "{status}");
    }

    #[test]
    fn no_pid_reads_as_a_group_or_everyone() {
        assert!(pid(0).is_none());
        assert!(pid(u32::MAX).is_none());
        assert!(!signal(0, Signal::SIGTERM));
    }
}
