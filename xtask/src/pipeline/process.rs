//! One entry's process: `sh -ec SCRIPT` in the workspace root, in a process group of its
//! own so that a timeout or Ctrl-C stops everything it started (cargo, the toolchain,
//! the VMs and servers those start), its output in a CI log group.

use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use services::process::{self, ProcessGuard, Signal};

use super::run::{Outcome, Status};

const POLL: Duration = Duration::from_millis(50);

/// Runs `script` under `timeout` inside `::group::ID` … `::endgroup::` (GitHub's log
/// groups; other logs show them as plain markers).
pub(crate) fn run(id: &str, script: &str, root: &Path, timeout: Duration) -> Result<Outcome> {
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
    // A step runs for as long as it takes, under our timeout: a child, not a command.
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
    let step = ProcessGuard::group_leader(child);
    loop {
        let exited = step.child().try_wait().context("waiting for the step")?;
        if let Some(status) = exited {
            // What the script left running in the background ends with it.
            process::signal_group(step.child().id(), Some(Signal::SIGKILL));
            return Ok(exited_with(status, started.elapsed()));
        }
        if started.elapsed() >= timeout {
            process::stop_group(&mut step.child());
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
