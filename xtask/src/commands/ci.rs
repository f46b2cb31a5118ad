//! `cargo xtask ci`: runs a pipeline kept as data in workflows/NAME.yaml — steps with
//! their needs, timeouts, conditions, prerequisites and matrices — the same way on a
//! workstation and on a CI service, which only provisions the host and calls it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Serialize, Serializer};

use crate::pipeline::gates::Host;
use crate::pipeline::plan;
use crate::pipeline::run::{self, Outcome, Status};
use crate::pipeline::workflow::Workflow;
use crate::report::{self, Table};
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
pub struct CiReport {
    workflow: String,
    path: String,
    dry_run: bool,
    /// Whether `CI` was set (a missing prerequisite then fails its step).
    ci: bool,
    ok: bool,
    steps: Vec<StepReport>,
    seconds: f64,
    /// `--workflow` as given: the rerun hint repeats it.
    #[serde(skip)]
    workflow_arg: String,
}

#[derive(Serialize)]
struct StepReport {
    id: String,
    step: String,
    /// What passing proves, from the workflow file.
    description: Option<String>,
    matrix: BTreeMap<String, String>,
    needs: Vec<String>,
    run: String,
    /// Whole seconds in the document; the table shows it as written.
    #[serde(rename = "timeout_seconds", serialize_with = "whole_seconds")]
    timeout: Duration,
    #[serde(flatten)]
    outcome: Outcome,
}

pub fn run(args: Args) -> Result<CiReport> {
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
    Ok(CiReport {
        workflow: workflow.name.clone(),
        path: workflow.place.clone(),
        dry_run: args.dry_run,
        ci: host.ci,
        ok: !outcomes.iter().any(|outcome| outcome.status.is_failure()),
        steps: entries
            .iter()
            .zip(outcomes)
            .map(|(entry, outcome)| StepReport {
                id: entry.id.clone(),
                step: entry.step.id.clone(),
                description: entry.step.description.clone(),
                matrix: entry
                    .matrix
                    .iter()
                    .map(|&(axis, value)| (axis.to_string(), value.to_string()))
                    .collect(),
                needs: entry.needs.iter().map(|&need| entries[need].id.clone()).collect(),
                run: entry.run.clone(),
                timeout: entry.step.timeout,
                outcome,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
        workflow_arg: args.workflow,
    })
}

fn whole_seconds<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

impl report::Outcome for CiReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        if self.dry_run {
            self.plan_table()
        } else {
            self.results_table()
        }
    }

    fn summary(&self) -> Option<String> {
        Some(if self.dry_run {
            format!(
                "{}: {} steps in this order; nothing was run (drop --dry-run to run them)",
                self.path,
                self.steps.len()
            )
        } else {
            self.results_summary()
        })
    }
}

impl CiReport {
    fn plan_table(&self) -> Table {
        let mut table = Table::new(&["#", "step", "needs", "timeout", "run", "here"]);
        for (index, step) in self.steps.iter().enumerate() {
            table.row(vec![
                (index + 1).to_string(),
                step.id.clone(),
                step.needs.join(", "),
                humantime::format_duration(step.timeout).to_string(),
                step.run.lines().next().unwrap_or_default().to_string(),
                step.outcome.detail.clone().unwrap_or_else(|| "would run".into()),
            ]);
        }
        table
    }

    fn results_table(&self) -> Table {
        let mut table = Table::new(&["step", "status", "seconds", "detail"]);
        for step in &self.steps {
            table.row(vec![
                step.id.clone(),
                step.outcome.status.to_string(),
                step.outcome
                    .seconds
                    .map_or_else(|| "-".into(), |seconds| format!("{seconds:.1}")),
                step.outcome.detail.clone().unwrap_or_default(),
            ]);
        }
        table
    }

    /// Counts per status; for the first failure, where its log is and how to rerun it alone.
    fn results_summary(&self) -> String {
        let mut counts: BTreeMap<Status, usize> = BTreeMap::new();
        for step in &self.steps {
            *counts.entry(step.outcome.status).or_default() += 1;
        }
        let counts: Vec<String> = counts
            .iter()
            .map(|(status, count)| format!("{count} {status}"))
            .collect();
        let mut summary = format!("{}: {} in {:.1}s", self.path, counts.join(", "), self.seconds);
        if let Some(failed) = self.steps.iter().find(|step| step.outcome.status.is_failure()) {
            // Failed without running: a prerequisite was missing.
            let hint = if failed.outcome.seconds.is_none() {
                "provision the host with `cargo xtask doctor --fix`, then rerun it".to_string()
            } else {
                format!("its log is in the `::group::{}` above", failed.id)
            };
            let workflow_flag = if self.workflow_arg == DEFAULT_WORKFLOW {
                String::new()
            } else {
                format!(" --workflow {}", self.workflow_arg)
            };
            summary.push_str(&format!(
                "\n`{}` failed: {hint}; rerun it alone with `cargo xtask ci{workflow_flag} --only '{}'`",
                failed.id, failed.id
            ));
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::run::Status;
    use crate::report::Outcome as _;

    #[test]
    fn a_timeout_is_whole_seconds_in_the_document_and_as_written_in_the_plan() {
        let report = CiReport {
            workflow: "ci".into(),
            path: "workflows/ci.yaml".into(),
            dry_run: true,
            ci: false,
            ok: true,
            steps: vec![StepReport {
                id: "fmt".into(),
                step: "fmt".into(),
                description: None,
                matrix: BTreeMap::new(),
                needs: Vec::new(),
                run: "cargo fmt --all --check\nmore".into(),
                timeout: Duration::from_millis(90_500),
                outcome: Outcome {
                    status: Status::Planned,
                    seconds: None,
                    exit_code: None,
                    detail: None,
                },
            }],
            seconds: 0.0,
            workflow_arg: DEFAULT_WORKFLOW.into(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["steps"][0]["timeout_seconds"], 90);
        assert_eq!(json["steps"][0]["status"], "planned");
        assert!(json.get("workflow_arg").is_none());
        let table = report.table().to_string();
        let row = table.lines().nth(2).unwrap();
        assert!(row.contains("1m 30s 500ms"), "{row}");
        assert!(row.ends_with("cargo fmt --all --check  would run"), "{row}");
    }
}
