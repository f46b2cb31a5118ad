//! Runs a plan, one entry at a time in its order: an entry whose need failed is blocked,
//! one whose need was skipped is skipped, one whose gate is closed is skipped or fails,
//! and the rest run as processes.

use std::fmt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use services::teardown;

use super::gates::{Gate, Host};
use super::plan::Entry;
use super::process;

/// In the order a summary counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// --dry-run: would run (see the detail for what would stop it here).
    Planned,
    Passed,
    Failed,
    TimedOut,
    /// Not run, not a failure: its condition did not hold, a prerequisite is missing
    /// where nothing requires it, or a step it needs was skipped.
    Skipped,
    /// Not run because a step it needs failed.
    Blocked,
}

impl Status {
    pub(crate) fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::TimedOut)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Planned => "planned",
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::TimedOut => "timed out",
            Status::Skipped => "skipped",
            Status::Blocked => "blocked",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub status: Status,
    /// How long its process ran; none when it did not run.
    pub seconds: Option<f64>,
    pub exit_code: Option<i32>,
    /// Why it failed, was skipped or blocked.
    pub detail: Option<String>,
}

impl Outcome {
    fn not_run(status: Status, detail: String) -> Self {
        Self {
            status,
            seconds: None,
            exit_code: None,
            detail: Some(detail),
        }
    }
}

/// Every entry's outcome, in plan order; fewer than the entries when a signal stopped
/// the run (the signal handler then tears down and exits).
pub(crate) fn run(entries: &[Entry], host: &Host, root: &Path) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
    for entry in entries {
        if teardown::interrupted() {
            break;
        }
        let outcome = match held_back(entry, entries, &outcomes) {
            Some(outcome) => outcome,
            None => match host.gate(entry) {
                Gate::Run => process::run(&entry.id, &entry.run, root, entry.step.timeout)?,
                Gate::Skip(reason) => Outcome::not_run(Status::Skipped, reason),
                Gate::Fail(reason) => Outcome::not_run(Status::Failed, reason),
            },
        };
        match &outcome.detail {
            Some(detail) => eprintln!("ci: {} {}: {detail}", entry.id, outcome.status),
            None => eprintln!("ci: {} {}", entry.id, outcome.status),
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// What --dry-run reports: every entry planned, with what would stop it on this host.
pub(crate) fn preview(entries: &[Entry], host: &Host) -> Vec<Outcome> {
    entries
        .iter()
        .map(|entry| Outcome {
            status: Status::Planned,
            seconds: None,
            exit_code: None,
            detail: match host.gate(entry) {
                Gate::Run => None,
                Gate::Skip(reason) => Some(format!("would skip: {reason}")),
                Gate::Fail(reason) => Some(format!("would fail: {reason}")),
            },
        })
        .collect()
}

/// Blocked by the first need that failed (naming the step that failed first, however
/// far back), else skipped after the first need that was skipped.
fn held_back(entry: &Entry, entries: &[Entry], outcomes: &[Outcome]) -> Option<Outcome> {
    let needs = || entry.needs.iter().map(|&need| (&entries[need].id, &outcomes[need]));
    if let Some((id, outcome)) =
        needs().find(|(_, outcome)| outcome.status.is_failure() || outcome.status == Status::Blocked)
    {
        let detail = match outcome.status {
            Status::Blocked => outcome.detail.clone().unwrap_or_default(),
            Status::TimedOut => format!("needs `{id}`, which timed out"),
            _ => format!("needs `{id}`, which failed"),
        };
        return Some(Outcome::not_run(Status::Blocked, detail));
    }
    needs()
        .find(|(_, outcome)| outcome.status == Status::Skipped)
        .map(|(id, _)| Outcome::not_run(Status::Skipped, format!("needs `{id}`, which was skipped")))
}
