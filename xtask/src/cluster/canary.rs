//! A canary with a way back (`qemu-cluster --from REF --canary`): the whole cluster started
//! on an earlier revision is saved first — every VM with its memory, and the database they
//! share — then one node is upgraded and watched under load by the checker. On a violation,
//! or when `--rollback` asks, the whole cluster is put back to the snapshot, and the
//! restored cluster must pass the checker again under the same workload.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::engine::{self, Backend, Run};
use super::scenario_report::{ScenarioReport, VmUsage};
use super::Description;
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::scenario::Scenario;

/// The snapshot a canary saves and rolls back to.
pub(crate) const TAG: &str = "canary";

/// A cluster that can be saved whole and put back: its nodes and the database they share.
pub(crate) trait Snapshots: Backend {
    fn save(&mut self, tag: &str) -> Result<Saved>;
    /// Puts the cluster back to `saved`, filling in the load times; every node serves
    /// again when this returns.
    fn restore(&mut self, saved: &mut Saved) -> Result<()>;
}

/// A snapshot of the whole cluster: its VMs and the database they share.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Saved {
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_save_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_load_seconds: Option<f64>,
    pub vms: Vec<SnapshotFigures>,
}

impl Saved {
    /// One line for a report: the sizes and times.
    pub(crate) fn describe(&self) -> String {
        let vms: Vec<String> = self
            .vms
            .iter()
            .map(|vm| {
                let load = vm
                    .load_seconds
                    .map(|s| format!(", loaded in {s:.2} s"))
                    .unwrap_or_default();
                format!(
                    "{} {:.0} MiB (disk file {:.0} MiB) saved in {:.2} s{load}",
                    vm.node_id, vm.vm_state_mib, vm.disk_file_mib, vm.save_seconds
                )
            })
            .collect();
        vms.join("; ")
    }
}

/// One VM's snapshot: its size and how long it took to save and to load.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SnapshotFigures {
    pub node_id: String,
    /// The memory and device state the snapshot holds.
    pub vm_state_mib: f64,
    /// The qcow2 file after saving: the disk's data and its snapshots.
    pub disk_file_mib: f64,
    pub save_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_seconds: Option<f64>,
}

/// What the canary found, and what the rollback did.
pub(crate) struct CanaryRuns {
    pub canary: Run,
    pub snapshot: Saved,
    pub rolled_back: Option<String>,
    pub restored: Option<Run>,
}

/// Saves `cluster`, runs `scenario` (whose timeline upgrades the canary) on it, and puts
/// it back when the checker finds a violation or `rollback` asks; the restored cluster
/// then runs the scenario's workload again, without its faults.
pub(crate) fn run<C: Snapshots>(
    cluster: &mut C,
    scenario: &Scenario,
    seed: u64,
    rollback: bool,
    lease: Duration,
    runs_dir: &Path,
    progress: &Progress,
) -> Result<CanaryRuns> {
    let task = progress.task("snapshot");
    task.step("saving every VM and the database");
    let mut snapshot = cluster.save(TAG)?;
    task.finish(format!("{} VM(s) saved as {TAG}", snapshot.vms.len()));

    let canary = engine::run_scenario(scenario, seed, cluster, lease, runs_dir, progress)?;
    let rolled_back = match (canary.violations.len(), rollback) {
        (0, false) => None,
        (0, true) => Some("--rollback asked for it".to_string()),
        (violations, _) => Some(format!("the canary broke {violations} promise(s)")),
    };
    let restored = match &rolled_back {
        Some(why) => {
            let task = progress.task("rollback");
            task.step(format!("{why}: loading {TAG} on every VM"));
            cluster.restore(&mut snapshot)?;
            task.finish("every VM back at the snapshot");
            let steady = scenario.without_faults("restored");
            Some(engine::run_scenario(&steady, seed, cluster, lease, runs_dir, progress)?)
        }
        None => None,
    };
    Ok(CanaryRuns {
        canary,
        snapshot,
        rolled_back,
        restored,
    })
}

/// What `qemu-cluster --canary` reports.
#[derive(Serialize)]
pub struct CanaryReport {
    ok: bool,
    /// The canary: one node upgraded under load.
    canary: ScenarioReport,
    snapshot: Saved,
    /// Why the cluster was put back, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back: Option<String>,
    /// The restored cluster under the same workload, checked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<ScenarioReport>,
}

impl CanaryReport {
    pub(crate) fn new(
        scenario: &Scenario,
        backend: &'static str,
        description: Description,
        runs: CanaryRuns,
        vms: Vec<VmUsage>,
    ) -> Self {
        let restored = runs.restored.map(|run| {
            ScenarioReport::new(
                &format!("{}-restored", scenario.name),
                backend,
                description.clone(),
                run,
            )
        });
        let canary = ScenarioReport::new(&scenario.name, backend, description, runs.canary).with_vms(vms, Vec::new());
        // A canary that broke a promise fails the run, even when the rollback worked: the
        // upgrade must not ship.
        let ok = canary.ok() && restored.as_ref().is_none_or(|restored| restored.ok());
        Self {
            ok,
            canary,
            snapshot: runs.snapshot,
            rolled_back: runs.rolled_back,
            restored,
        }
    }
}

impl Outcome for CanaryReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = self.canary.table();
        table.row(vec![
            format!("snapshot {}", self.snapshot.tag),
            "saved".into(),
            self.snapshot.describe(),
        ]);
        if let Some(seconds) = self.snapshot.database_save_seconds {
            let load = self.snapshot.database_load_seconds;
            table.row(vec![
                "snapshot database".into(),
                "PostgreSQL".into(),
                format!(
                    "copied in {seconds:.2} s, put back in {}",
                    load.map_or("-".into(), |s| format!("{s:.2} s"))
                ),
            ]);
        }
        match (&self.rolled_back, &self.restored) {
            (Some(why), Some(restored)) => {
                table.row(vec!["rollback".into(), "done".into(), why.clone()]);
                for mut row in restored.check_rows() {
                    row[0] = format!("restored: {}", row[0]);
                    table.row(row);
                }
            }
            _ => table.row(vec!["rollback".into(), "not needed".into(), String::new()]),
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let after = match &self.restored {
            Some(restored) if restored.ok() => "\nrolled back: the restored cluster passes every check",
            Some(_) => "\nrolled back: the restored cluster FAILS a check",
            None => "",
        };
        Some(format!("{}{after}", self.canary.summary().unwrap_or_default()))
    }
}
