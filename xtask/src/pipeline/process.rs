//! One entry's process: `sh -ec SCRIPT` in the workspace root, in a process group of its
//! own so that a timeout or Ctrl-C stops everything it started (cargo, the toolchain,
//! the VMs and servers those start), its output in a CI log group.

use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::run::{Outcome, Status};
use crate::report::teardown::ProcessGuard;

/// How long a stopped entry's processes may take to exit on SIGTERM before the group is
/// killed: the toolchain's own subcommands power off VMs and stop databases on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Runs `script` under `timeout` inside `::group::ID` … `::endgroup::` (GitHub's log
/// groups; other logs show them as plain markers).
pub fn run(id: &str, script: &str, root: &Path, timeout: Duration) -> Result<Outcome> {
    eprintln!("::group::{id}");
    eprintln!("$ {script}");
    let outcome = supervise(script, root, timeout);
    eprintln!("::endgroup::");
    outcome
}

fn supervise(script: &str, root: &Path, timeout: Duration) -> Result<Outcome> {
    // The step's stdout joins our stderr: with --json, stdout carries the report alone.
    let output = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("sharing stderr with the step")?;
    let started = Instant::now();
    let child = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(output)
        // Its own group: a terminal's Ctrl-C reaches only us, and we stop the group
        // in order (SIGTERM, grace, SIGKILL) through the teardown.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `sh -ec {script}` in {}", root.display()))?;
    let process = ProcessGuard::with_teardown(child, stop_group);
    loop {
        let exited = process.child().try_wait().context("waiting for the step")?;
        if let Some(status) = exited {
            // What the script left running in the background ends with it.
            signal_group(process.child().id(), "KILL");
            return Ok(exited_with(status, started.elapsed()));
        }
        if started.elapsed() >= timeout {
            stop_group(&mut process.child());
            return Ok(Outcome {
                status: Status::TimedOut,
                seconds: Some(started.elapsed().as_secs_f64()),
                exit_code: None,
                detail: Some(format!(
                    "over its timeout of {}: its process group was stopped",
                    humantime::format_duration(timeout)
                )),
            });
        }
        sleep(POLL);
    }
}

fn exited_with(status: ExitStatus, elapsed: Duration) -> Outcome {
    let detail = match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(format!("exited with status {code}")),
        (None, Some(signal)) => Some(format!("killed by signal {signal}")),
        (None, None) => Some(format!("ended with {status}")),
    };
    Outcome {
        status: if status.success() {
            Status::Passed
        } else {
            Status::Failed
        },
        seconds: Some(elapsed.as_secs_f64()),
        exit_code: status.code(),
        detail,
    }
}

/// SIGTERM to the whole group; SIGKILL to whatever is left of it after the grace.
fn stop_group(child: &mut Child) {
    let group = child.id();
    if signal_group(group, "TERM") {
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            // Reaped, the leader no longer counts as a member still running.
            let _ = child.try_wait();
            if !signal_group(group, "0") {
                break;
            }
            sleep(POLL);
        }
    }
    signal_group(group, "KILL");
    // Should `kill` itself be missing, the leader at least must not outlive the wait.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` to every process of the group; false when none is left.
fn signal_group(group: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_script(script: &str, timeout: Duration) -> Outcome {
        run("unit", script, Path::new("."), timeout).unwrap()
    }

    #[test]
    fn exit_statuses_become_outcomes() {
        let passed = run_script("true", Duration::from_secs(30));
        assert_eq!((passed.status, passed.exit_code), (Status::Passed, Some(0)));
        let failed = run_script("echo to-stderr-via-stdout; exit 3", Duration::from_secs(30));
        assert_eq!((failed.status, failed.exit_code), (Status::Failed, Some(3)));
        assert_eq!(failed.detail.as_deref(), Some("exited with status 3"));
    }

    #[test]
    fn a_multi_line_script_stops_at_its_first_failure() {
        let outcome = run_script("false\necho never", Duration::from_secs(30));
        assert_eq!(outcome.exit_code, Some(1));
    }
}
