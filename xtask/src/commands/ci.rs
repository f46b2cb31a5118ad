//! `cargo xtask ci`: runs a pipeline kept as data in workflows/NAME.yaml — steps with
//! their needs, timeouts, conditions, prerequisites and matrices — the same way on a
//! workstation and on a CI service, which only provisions the host and calls it.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::pipeline::gates::Host;
use crate::pipeline::plan::{self, Entry};
use crate::pipeline::run::{self, Outcome, Status};
use crate::pipeline::workflow::Workflow;
use crate::report::{Report, Table};
use crate::workspace::Workspace;

const DEFAULT_WORKFLOW: &str = "ci";

#[derive(clap::Args)]
pub struct Args {
    /// The workflow: NAME for workflows/NAME.yaml, or a path to a workflow file.
    #[arg(long, default_value = DEFAULT_WORKFLOW)]
    workflow: String,
    /// Run only this step (every entry of its matrix) or this one matrix entry, e.g.
    /// "build-native (aarch64)"; repeatable. What it needs is taken as done.
    #[arg(long, value_name = "STEP")]
    only: Vec<String>,
    /// List the steps in the order they would run, and what would skip or fail them on
    /// this host; run nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Serialize)]
struct CiReport<'a> {
    workflow: &'a str,
    path: &'a str,
    dry_run: bool,
    /// Whether `CI` was set (a missing prerequisite then fails its step).
    ci: bool,
    ok: bool,
    steps: Vec<StepReport<'a>>,
    seconds: f64,
}

#[derive(Serialize)]
struct StepReport<'a> {
    id: &'a str,
    step: &'a str,
    /// What passing proves, from the workflow file.
    description: Option<&'a str>,
    matrix: BTreeMap<&'a str, &'a str>,
    needs: Vec<&'a str>,
    run: &'a str,
    timeout_seconds: u64,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

pub fn run(args: Args) -> Result<Report> {
    let started = Instant::now();
    let workspace = Workspace::discover()?;
    let workflow = Workflow::load(&workspace.root, &args.workflow)?;
    let entries = plan::select(plan::plan(&workflow)?, &args.only, &workflow)?;
    let host = Host::new(&workspace.root);
    let outcomes = if args.dry_run {
        run::preview(&entries, &host)
    } else {
        run::run(&entries, &host, &workspace.root)?
    };
    let ok = !outcomes.iter().any(|outcome| outcome.status.is_failure());
    let report = CiReport {
        workflow: &workflow.name,
        path: &workflow.place,
        dry_run: args.dry_run,
        ci: host.ci,
        ok,
        steps: entries
            .iter()
            .zip(&outcomes)
            .map(|(entry, outcome)| StepReport {
                id: &entry.id,
                step: &entry.step.id,
                description: entry.step.description.as_deref(),
                matrix: entry.matrix.iter().copied().collect(),
                needs: need_ids(entry, &entries),
                run: &entry.run,
                timeout_seconds: entry.step.timeout.as_secs(),
                outcome,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let (table, summary) = if args.dry_run {
        (plan_table(&entries, &outcomes), plan_summary(&workflow, &entries))
    } else {
        (
            results_table(&entries, &outcomes),
            results_summary(&workflow, &args.workflow, &report),
        )
    };
    Ok(Report::new(ok, table, &report).with_summary(summary))
}

fn need_ids<'a>(entry: &Entry, entries: &'a [Entry]) -> Vec<&'a str> {
    entry.needs.iter().map(|&need| entries[need].id.as_str()).collect()
}

fn plan_table(entries: &[Entry], outcomes: &[Outcome]) -> Table {
    let mut table = Table::new(&["#", "step", "needs", "timeout", "run", "here"]);
    for (index, (entry, outcome)) in entries.iter().zip(outcomes).enumerate() {
        table.row(vec![
            (index + 1).to_string(),
            entry.id.clone(),
            need_ids(entry, entries).join(", "),
            humantime::format_duration(entry.step.timeout).to_string(),
            entry.run.lines().next().unwrap_or_default().to_string(),
            outcome.detail.clone().unwrap_or_else(|| "would run".into()),
        ]);
    }
    table
}

fn plan_summary(workflow: &Workflow, entries: &[Entry]) -> String {
    format!(
        "{}: {} steps in this order; nothing was run (drop --dry-run to run them)",
        workflow.place,
        entries.len()
    )
}

fn results_table(entries: &[Entry], outcomes: &[Outcome]) -> Table {
    let mut table = Table::new(&["step", "status", "seconds", "detail"]);
    for (entry, outcome) in entries.iter().zip(outcomes) {
        table.row(vec![
            entry.id.clone(),
            outcome.status.to_string(),
            outcome
                .seconds
                .map_or_else(|| "-".into(), |seconds| format!("{seconds:.1}")),
            outcome.detail.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// Counts per status; for the first failure, where its log is and how to rerun it alone.
fn results_summary(workflow: &Workflow, workflow_arg: &str, report: &CiReport) -> String {
    let mut counts: BTreeMap<Status, usize> = BTreeMap::new();
    for step in &report.steps {
        *counts.entry(step.outcome.status).or_default() += 1;
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    let mut summary = format!("{}: {} in {:.1}s", workflow.place, counts.join(", "), report.seconds);
    if let Some(failed) = report.steps.iter().find(|step| step.outcome.status.is_failure()) {
        // Failed without running: a prerequisite was missing.
        let hint = if failed.outcome.seconds.is_none() {
            "provision the host with `cargo xtask doctor --fix`, then rerun it".to_string()
        } else {
            format!("its log is in the `::group::{}` above", failed.id)
        };
        let workflow_flag = if workflow_arg == DEFAULT_WORKFLOW {
            String::new()
        } else {
            format!(" --workflow {workflow_arg}")
        };
        summary.push_str(&format!(
            "\n`{}` failed: {hint}; rerun it alone with `cargo xtask ci{workflow_flag} --only '{}'`",
            failed.id, failed.id
        ));
    }
    summary
}
