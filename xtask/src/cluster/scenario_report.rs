//! What a scenario run reports: the schedule as executed, each fault window's posts,
//! detection and recovery, delivery latency, and the checker's verdict — the JSON document
//! and the table are views of one [`ScenarioReport`].

use std::path::PathBuf;

use serde::Serialize;

use super::canary::Saved;
use super::engine::{Executed, Interop, NodeVersion, Run};
use super::Description;
use crate::history::check::{Check, Violation};
use crate::history::stats::{self, Counts, Latency, Window};
use crate::report::{Outcome, Table};

#[derive(Serialize)]
pub struct ScenarioReport {
    ok: bool,
    scenario: String,
    backend: &'static str,
    /// The seed a random scenario was drawn from: `--seed` replays it.
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(flatten)]
    description: Description,
    schedule: Vec<Executed>,
    windows: Vec<Window>,
    posts: Counts,
    delivery_latency_ms: Option<Latency>,
    checks: Vec<CheckVerdict>,
    violations: Vec<Violation>,
    /// The build each node ran before and after.
    versions: Vec<NodeVersion>,
    /// Old and new builds side by side, after each upgrade.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interop: Vec<Interop>,
    /// Per VM, on the VM backend.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vms: Vec<VmUsage>,
    /// The snapshots the scenario's `snapshot` steps took (VMs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    snapshots: Vec<Saved>,
    history: PathBuf,
    /// The picture: posts, errors and delivery latency over time, fault windows shaded.
    timeline: PathBuf,
}

/// What one VM cost the host over a run, all its lives together.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VmUsage {
    pub node_id: String,
    pub arch: String,
    /// Boots: 1, plus one per restart as the same node.
    pub boots: u32,
    /// QEMU's CPU time, user and system.
    pub cpu_seconds: f64,
    /// QEMU's largest resident memory.
    pub peak_rss_mib: f64,
}

/// One of the checker's checks: held, or how many violations.
#[derive(Serialize)]
struct CheckVerdict {
    name: &'static str,
    result: &'static str,
    violations: usize,
}

impl ScenarioReport {
    pub fn new(scenario: &str, backend: &'static str, description: Description, run: Run) -> Self {
        let checks = Check::ALL
            .into_iter()
            .map(|check| {
                let violations = run.violations.iter().filter(|v| v.check == check).count();
                // Only an upgrade puts two builds side by side.
                let ran = check != Check::Interoperation || !run.interop.is_empty();
                CheckVerdict {
                    name: check.name(),
                    result: match (ran, violations) {
                        (false, _) => "not run",
                        (true, 0) => "ok",
                        (true, _) => "failed",
                    },
                    violations,
                }
            })
            .collect();
        Self {
            ok: run.violations.is_empty(),
            scenario: scenario.to_string(),
            backend,
            seed: run.schedule.seed,
            description,
            windows: stats::windows(&run.history),
            posts: stats::totals(&run.history),
            delivery_latency_ms: stats::delivery_latency(&run.history),
            schedule: run.executed,
            checks,
            violations: run.violations,
            versions: run.versions,
            interop: run.interop,
            vms: Vec::new(),
            snapshots: Vec::new(),
            history: run.history_path,
            timeline: run.timeline_path,
        }
    }
}

impl ScenarioReport {
    /// A table row per check: its name, result, and its first violation.
    pub(crate) fn check_rows(&self) -> Vec<Vec<String>> {
        self.checks
            .iter()
            .map(|check| {
                let first = self
                    .violations
                    .iter()
                    .find(|v| v.check.name() == check.name)
                    .map(|v| format!("{} (history lines {:?})", v.message, v.lines))
                    .unwrap_or_default();
                let detail = match check.violations {
                    0 => String::new(),
                    1 => first,
                    n => format!("{n} violations; first: {first}"),
                };
                vec![check.name.into(), check.result.into(), detail]
            })
            .collect()
    }

    /// The report with what each VM cost the host, and the snapshots its steps took.
    pub(crate) fn with_vms(mut self, vms: Vec<VmUsage>, snapshots: Vec<Saved>) -> Self {
        self.vms = vms;
        self.snapshots = snapshots;
        self
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| format!("{s:.2} s"))
}

impl Outcome for ScenarioReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["item", "result", "detail"]);
        for window in &self.windows {
            let posts = &window.posts;
            table.row(vec![
                format!("{} {}", window.fault, window.nodes.join(","))
                    .trim_end()
                    .to_string(),
                format!(
                    "{:.1}–{} s",
                    window.started_s,
                    window.healed_s.map_or("end".into(), |h| format!("{h:.1}"))
                ),
                format!(
                    "posts ok {} / 503 {} / other {} / no answer {}; detected {}, recovered {}",
                    posts.ok,
                    posts.unavailable,
                    posts.refused,
                    posts.failed,
                    seconds(window.detected_after_s),
                    seconds(window.recovered_after_s)
                ),
            ]);
        }
        for version in self.versions.iter().filter(|v| v.before != v.after) {
            let out = version.out_s.map(|s| format!("; out {s:.2} s")).unwrap_or_default();
            table.row(vec![
                version.node_id.clone(),
                "upgraded".into(),
                format!("{} → {}{out}", version.before, version.after),
            ]);
        }
        for probe in &self.interop {
            table.row(vec![
                format!("{} ↔ {}", probe.nodes[0], probe.nodes[1]),
                if probe.ok { "interoperate" } else { "FAILED" }.into(),
                format!("after step {}: {}", probe.after_step, probe.detail),
            ]);
        }
        for vm in &self.vms {
            table.row(vec![
                vm.node_id.clone(),
                format!("{} boot(s)", vm.boots),
                format!(
                    "{}: QEMU used {:.1} CPU s, peak {:.0} MiB resident",
                    vm.arch, vm.cpu_seconds, vm.peak_rss_mib
                ),
            ]);
        }
        for saved in &self.snapshots {
            table.row(vec![
                format!("snapshot {}", saved.tag),
                "saved".into(),
                saved.describe(),
            ]);
        }
        for row in self.check_rows() {
            table.row(row);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let latency = self
            .delivery_latency_ms
            .map(|l| format!("; delivery p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms))
            .unwrap_or_default();
        let seed = self
            .seed
            .map(|seed| format!("\nseed {seed}: `--seed {seed}` replays this schedule"))
            .unwrap_or_default();
        Some(format!(
            "scenario {} on {}: {} posts acknowledged, {} refused with 503, {} unanswered{latency}\nhistory: {}\ntimeline: {}{seed}",
            self.scenario,
            self.backend,
            self.posts.ok,
            self.posts.unavailable,
            self.posts.failed,
            self.history.display(),
            self.timeline.display()
        ))
    }
}
