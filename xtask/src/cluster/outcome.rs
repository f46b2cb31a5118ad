//! What both cluster commands (`cluster-local`, `qemu-cluster`) take and give for fault
//! scenarios: the `--scenario` flags, and an outcome that is their plain checks, a
//! scenario's verdict, or a scenario's plan (`--dry-run`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::canary::CanaryReport;
use super::scenario_report::ScenarioReport;
use crate::bench::revision::{self, RevisionBuild};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::scenario::{Capabilities, Planned, Scenario, Schedule, Store};
use crate::workspace::profile::BuildSection;
use crate::workspace::targets::Target;

#[derive(clap::Args)]
// A scenario runs with --scenario, or with --canary (its own by default).
#[command(group(clap::ArgGroup::new("runs_scenario").args(["scenario", "canary"]).multiple(true)))]
pub(crate) struct ScenarioArgs {
    /// Run a fault scenario: NAME for workflows/scenarios/NAME.yaml, or a path.
    #[arg(long, value_name = "NAME|FILE")]
    pub(crate) scenario: Option<String>,
    /// The seed of a random scenario (default: drawn from the clock, and reported).
    #[arg(long, requires = "runs_scenario")]
    pub(crate) seed: Option<u64>,
    /// Run the scenario's timeline compressed or stretched to this duration (e.g. 40s).
    #[arg(long, requires = "runs_scenario", value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Print the scenario's schedule (for a random one, what its seed draws) and exit.
    #[arg(long, requires = "runs_scenario")]
    pub(crate) dry_run: bool,
    /// Start the cluster on this revision's build (a commit, branch or tag); the scenario's
    /// `upgrade` steps roll its nodes forward to the working tree's, one by one.
    #[arg(long, value_name = "REF")]
    pub(crate) from: Option<String>,
    /// Roll the cluster onto this revision's build instead of the working tree's (with
    /// `--from`: an upgrade between two releases).
    #[arg(long, requires = "from", value_name = "REF")]
    pub(crate) to: Option<String>,
    /// Save every VM and the database first, upgrade one node under load (the `canary`
    /// scenario, or --scenario's), and put the whole cluster back if the checker finds a
    /// violation (qemu-cluster).
    #[arg(long, requires = "from")]
    pub(crate) canary: bool,
    /// With --canary: put the cluster back even when the canary holds.
    #[arg(long, requires = "canary")]
    pub(crate) rollback: bool,
}

/// The builds a rolling upgrade goes between: `--from`'s, and `--to`'s (else the working
/// tree's, which the command builds itself).
pub(crate) struct Revisions {
    pub from: Option<RevisionBuild>,
    pub to: Option<RevisionBuild>,
}

impl ScenarioArgs {
    /// The scenario `--scenario` names (with `--canary`, `canary` by default), compressed
    /// or stretched to `--duration`.
    pub(crate) fn load(&self, root: &Path) -> Result<Option<Scenario>, UsageError> {
        let name = match (&self.scenario, self.canary) {
            (Some(name), _) => Some(name.as_str()),
            (None, true) => Some("canary"),
            (None, false) => None,
        };
        if self.from.is_some() && name.is_none() {
            return Err(UsageError(
                "--from starts a cluster on an earlier revision for an upgrade, and nothing upgrades it\n  fix: add --scenario rolling-upgrade (or --canary on qemu-cluster)".into(),
            ));
        }
        name.map(|name| Ok(Scenario::load(root, name)?.stretched_to(self.duration)))
            .transpose()
    }

    /// With `--dry-run`, the schedule `scenario` would run, drawn for a cluster that
    /// `capabilities` describes for the scenario's store; otherwise nothing.
    pub(crate) fn dry_run(
        &self,
        scenario: &Scenario,
        capabilities: impl Fn(Store) -> Capabilities,
    ) -> Option<Result<PlanReport, UsageError>> {
        if !self.dry_run {
            return None;
        }
        let store = scenario.requires.store.unwrap_or(Store::Postgres);
        Some(
            scenario
                .plan(&capabilities(store), self.seed())
                .map(|schedule| PlanReport::new(scenario, schedule)),
        )
    }

    /// The revisions `--from` and `--to` name, built for `targets` first: a revision that
    /// names no commit or does not build costs no other build.
    pub(crate) fn revisions(
        &self,
        build: &BuildSection,
        targets: &[&'static Target],
        progress: &Progress,
    ) -> Result<Revisions> {
        let build_one = |flag: &str, reference: &Option<String>| -> Result<Option<RevisionBuild>> {
            let Some(reference) = reference else { return Ok(None) };
            let task = progress.task(flag.trim_start_matches('-'));
            let built = revision::build(flag, reference, build, targets, &task)?;
            task.finish(format!("{} built", built.label()));
            Ok(Some(built))
        };
        Ok(Revisions {
            from: build_one("--from", &self.from)?,
            to: build_one("--to", &self.to)?,
        })
    }

    /// `--seed`, or one from the clock: reported, so the run can be replayed.
    pub(crate) fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        })
    }
}

/// What a cluster command reports: its checks, a scenario's verdict, or a scenario's plan.
#[derive(Serialize)]
#[serde(untagged)]
pub enum ClusterOutcome<Checks> {
    Checks(Checks),
    Scenario(Box<ScenarioReport>),
    Plan(PlanReport),
    Canary(Box<CanaryReport>),
}

impl<Checks: Outcome> ClusterOutcome<Checks> {
    fn inner(&self) -> &dyn OutcomeView {
        match self {
            ClusterOutcome::Checks(report) => report,
            ClusterOutcome::Scenario(report) => report.as_ref(),
            ClusterOutcome::Plan(report) => report,
            ClusterOutcome::Canary(report) => report.as_ref(),
        }
    }
}

/// [`Outcome`] without its serde bound, so that the variants can be seen as one.
trait OutcomeView {
    fn ok(&self) -> bool;
    fn table(&self) -> Table;
    fn summary(&self) -> Option<String>;
}

impl<T: Outcome> OutcomeView for T {
    fn ok(&self) -> bool {
        Outcome::ok(self)
    }

    fn table(&self) -> Table {
        Outcome::table(self)
    }

    fn summary(&self) -> Option<String> {
        Outcome::summary(self)
    }
}

impl<Checks: Outcome> Outcome for ClusterOutcome<Checks> {
    fn ok(&self) -> bool {
        self.inner().ok()
    }

    fn table(&self) -> Table {
        self.inner().table()
    }

    fn summary(&self) -> Option<String> {
        self.inner().summary()
    }
}

/// A scenario planned and not run (`--dry-run`).
#[derive(Serialize)]
pub struct PlanReport {
    ok: bool,
    scenario: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    schedule: Vec<Planned>,
}

impl PlanReport {
    pub(crate) fn new(scenario: &Scenario, schedule: Schedule) -> Self {
        Self {
            ok: true,
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            seed: schedule.seed,
            schedule: schedule.faults,
        }
    }
}

impl Outcome for PlanReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["at", "fault", "on", "heals"]);
        for fault in &self.schedule {
            let on = match (fault.service, fault.dependency) {
                (Some(service), _) => service.to_string(),
                (None, Some(dependency)) => format!("{:?} from {dependency}", fault.nodes),
                (None, None) => format!("{:?}", fault.nodes),
            };
            table.row(vec![
                format!("{:.1} s", fault.at.as_secs_f64()),
                fault.fault.to_string(),
                on,
                fault
                    .heals
                    .map_or("-".into(), |heals| format!("{:.1} s", heals.as_secs_f64())),
            ]);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let seed = self
            .seed
            .map(|seed| format!("\nseed {seed}: the same seed draws the same schedule"))
            .unwrap_or_default();
        Some(format!("{}: {}{seed}", self.scenario, self.description))
    }
}
