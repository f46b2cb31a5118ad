//! Fault scenarios as data (`workflows/scenarios/NAME.yaml`): a workload, and a timeline
//! of faults — when, which fault, on which nodes or service, for how long. A scenario is
//! read with the path of every field, so that a mistake names the file, the step and the
//! field, and is planned against a backend and a cluster size into a [`Schedule`]: the
//! faults as they will run, one per node where a step says `each`.

pub(crate) mod random;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::report::error::UsageError;

const EXAMPLE: &str = "workflows/scenarios/partition.yaml";

/// What a scenario keeps doing while its faults run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Workload {
    /// Clients posting, each waiting for its answer before the next post, per node.
    pub posters_per_node: u32,
    /// WebSocket subscribers per node, recording every delivery.
    pub subscribers_per_node: u32,
    /// Posts per second per node, all its posters together.
    pub posts_per_second: f64,
    #[serde(with = "humantime_text")]
    pub duration: Duration,
}

/// A fault the toolchain can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Killed at once, started again as the same node (same ports, same disk) when healed.
    Crash,
    /// Stopped (SIGSTOP, QMP `stop`), resumed when healed.
    Freeze,
    /// A VM's reset button (QMP `system_reset`).
    Reboot,
    /// A VM's power button (QMP `system_powerdown`), started again when healed.
    PowerButton,
    /// Power lost with whatever the disk had not written, then booted from the same disk.
    PowerCut,
    /// Cut off from everything: clients, NATS and PostgreSQL (a VM's NIC link down).
    CutOff,
    /// Cut off from one dependency only, still reaching its clients and the other.
    CutFrom,
    /// Latency added to the node's link, removed when healed.
    SlowLink,
    /// The node's database disk filled, freed when healed.
    FillDisk,
    /// A shared service (NATS or PostgreSQL) killed, restarted on its port when healed.
    KillService,
    /// A shared service stopped (every process of it), resumed when healed.
    FreezeService,
    /// A shared service restarted at once.
    RestartService,
    /// The checker's own test: an acknowledged message deleted from PostgreSQL behind
    /// the cluster's back. A run with it must fail, naming the message.
    DropAcknowledged,
    /// The node stopped cleanly (SIGTERM) and started again as itself from the working
    /// tree's build: a cluster started `--from` an earlier revision is rolled forward.
    Upgrade,
    /// The whole cluster saved at one moment (VMs: every VM's memory, devices and disk,
    /// and the database they share), for a later `restore`.
    Snapshot,
    /// The whole cluster put back to the latest snapshot: a fork of the run, whose
    /// workload starts again on a channel of its own, checked on its own.
    Restore,
}

impl FaultKind {
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Crash,
        FaultKind::Freeze,
        FaultKind::Reboot,
        FaultKind::PowerButton,
        FaultKind::PowerCut,
        FaultKind::CutOff,
        FaultKind::CutFrom,
        FaultKind::SlowLink,
        FaultKind::FillDisk,
        FaultKind::KillService,
        FaultKind::FreezeService,
        FaultKind::RestartService,
        FaultKind::DropAcknowledged,
        FaultKind::Upgrade,
        FaultKind::Snapshot,
        FaultKind::Restore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Freeze => "freeze",
            FaultKind::Reboot => "reboot",
            FaultKind::PowerButton => "power-button",
            FaultKind::PowerCut => "power-cut",
            FaultKind::CutOff => "cut-off",
            FaultKind::CutFrom => "cut-from",
            FaultKind::SlowLink => "slow-link",
            FaultKind::FillDisk => "fill-disk",
            FaultKind::KillService => "kill-service",
            FaultKind::FreezeService => "freeze-service",
            FaultKind::RestartService => "restart-service",
            FaultKind::DropAcknowledged => "drop-acknowledged",
            FaultKind::Upgrade => "upgrade",
            FaultKind::Snapshot => "snapshot",
            FaultKind::Restore => "restore",
        }
    }

    /// What the fault acts on: nodes, or a shared service.
    pub fn target(self) -> TargetKind {
        match self {
            FaultKind::KillService | FaultKind::FreezeService | FaultKind::RestartService => TargetKind::Service,
            FaultKind::DropAcknowledged => TargetKind::Store,
            FaultKind::Snapshot | FaultKind::Restore => TargetKind::Cluster,
            _ => TargetKind::Nodes,
        }
    }

    /// Whether the node is back once the fault has been made: the engine then records its
    /// heal at once, so that the node is excused only while the fault was being made.
    pub fn over_when_made(self) -> bool {
        matches!(self, FaultKind::Upgrade | FaultKind::Snapshot)
    }

    /// Whether the fault lasts until healed (else it happens at once and is over).
    pub fn lasts(self) -> bool {
        !matches!(
            self,
            FaultKind::Reboot
                | FaultKind::RestartService
                | FaultKind::DropAcknowledged
                | FaultKind::Upgrade
                | FaultKind::Snapshot
                | FaultKind::Restore
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Nodes,
    Service,
    Store,
    /// Every node and the services they share, together.
    Cluster,
}

/// A service every node depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Nats,
    Postgres,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Nats => "nats",
            Service::Postgres => "postgres",
        })
    }
}

/// Which nodes a step acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Nodes {
    /// Every node at once.
    All,
    /// One node after another: the step runs once per node, `gap` apart.
    Each,
    /// These nodes (numbered from 1) at once.
    List(Vec<usize>),
}

/// One step of a scenario's timeline, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    /// From the start of the scenario.
    #[serde(with = "humantime_text")]
    pub at: Duration,
    pub fault: FaultKind,
    #[serde(default)]
    pub nodes: Option<Nodes>,
    /// The service of `kill-service`, `freeze-service` and `restart-service`.
    #[serde(default)]
    pub service: Option<Service>,
    /// The dependency a `cut-from` cuts the node from.
    #[serde(default)]
    pub dependency: Option<Service>,
    /// The latency a `slow-link` adds.
    #[serde(default, with = "humantime_text::optional")]
    pub latency: Option<Duration>,
    /// How long the fault lasts before it heals.
    #[serde(default, rename = "for", with = "humantime_text::optional")]
    pub lasting: Option<Duration>,
    /// With `nodes: each`: from one node's heal to the next node's fault.
    #[serde(default, with = "humantime_text::optional")]
    pub gap: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: String,
    workload: Workload,
    #[serde(default)]
    timeline: Vec<Step>,
    /// Draw the timeline from a seed instead (the `random` scenario).
    #[serde(default)]
    random: bool,
    #[serde(default)]
    requires: Requires,
}

/// What a scenario needs of the cluster it runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Requires {
    /// Exactly this many nodes.
    pub nodes: Option<usize>,
    /// The store the nodes run on (default: PostgreSQL, shared).
    pub store: Option<Store>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Store {
    Postgres,
    Sqlite,
}

#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// The file's stem: `partition` for workflows/scenarios/partition.yaml.
    pub name: String,
    /// The path as people see it in messages: relative to the workspace when inside it.
    pub place: String,
    pub description: String,
    pub workload: Workload,
    pub timeline: Vec<Step>,
    pub random: bool,
    pub requires: Requires,
}

/// What a backend can do, for planning: its faults and the cluster it runs.
#[derive(Debug, Clone)]
pub(crate) struct Capabilities {
    /// `processes` or `VMs`, for messages.
    pub backend: &'static str,
    pub faults: Vec<FaultKind>,
    pub nodes: usize,
}

impl Capabilities {
    /// What `nodes` nodes on `store` can be put through, on either backend. A cluster runs
    /// on PostgreSQL and NATS: its shared services, the relays to them and the rows the
    /// checker's own test deletes; a single SQLite node owns a disk of its own (the one
    /// `fill-disk` fills) and depends on no service.
    /// An upgrade needs an earlier build to start from (`upgradable`); a snapshot, a backend
    /// that can save its nodes whole (`snapshots`: VMs).
    pub(crate) fn of_cluster(
        backend: &'static str,
        nodes: usize,
        store: Store,
        upgradable: bool,
        snapshots: bool,
    ) -> Self {
        Self {
            backend,
            faults: FaultKind::ALL
                .into_iter()
                .filter(|fault| match fault {
                    FaultKind::Upgrade => upgradable,
                    FaultKind::Snapshot | FaultKind::Restore => snapshots,
                    FaultKind::FillDisk => store == Store::Sqlite,
                    FaultKind::KillService
                    | FaultKind::FreezeService
                    | FaultKind::RestartService
                    | FaultKind::CutFrom
                    | FaultKind::DropAcknowledged => store == Store::Postgres,
                    _ => true,
                })
                .collect(),
            nodes,
        }
    }
}

/// A fault as it will run: one node set, one start, one heal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// The timeline step it comes from (its index), for messages and the history.
    pub step: usize,
    pub fault: FaultKind,
    /// Node numbers from 1; empty for a fault on a service or the store.
    pub nodes: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependency: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_text::optional")]
    pub latency: Option<Duration>,
    #[serde(with = "humantime_text")]
    pub at: Duration,
    /// When it heals; `None` for a fault that is over at once.
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_text::optional")]
    pub heals: Option<Duration>,
    /// A restore's snapshot: the step that took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restores: Option<usize>,
}

impl Planned {
    /// Whether every node depends on what the fault acts on.
    pub fn shared(&self) -> bool {
        self.fault.target() != TargetKind::Nodes
    }
}

/// A scenario planned for one backend and cluster: what will run, in start order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub faults: Vec<Planned>,
    /// The seed a random scenario was drawn from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// How long a lasting fault lasts when its step does not say.
const DEFAULT_LASTING: Duration = Duration::from_secs(10);
/// How long `nodes: each` waits between one node's heal and the next fault.
const DEFAULT_GAP: Duration = Duration::from_secs(10);
/// How much latency `slow-link` adds when its step does not say.
const DEFAULT_LATENCY: Duration = Duration::from_millis(300);

pub(crate) fn scenarios_dir(root: &Path) -> PathBuf {
    root.join("workflows").join("scenarios")
}

impl Scenario {
    /// The scenario `--scenario NAME` names: workflows/scenarios/NAME.yaml, or a path.
    pub(crate) fn load(root: &Path, name: &str) -> Result<Self, UsageError> {
        let (path, place, text) = crate::workspace::read_named_yaml(root, &scenarios_dir(root), "scenario", name)?;
        Self::parse(&path, place, &text)
    }

    pub(crate) fn parse(path: &Path, place: String, text: &str) -> Result<Self, UsageError> {
        let document = serde_yaml::Deserializer::from_str(text);
        let file: ScenarioFile =
            serde_path_to_error::deserialize(document).map_err(|err| UsageError::yaml(&place, err, EXAMPLE))?;
        let scenario = Self {
            name: path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("scenario")
                .to_string(),
            place,
            description: file.description,
            workload: file.workload,
            timeline: file.timeline,
            random: file.random,
            requires: file.requires,
        };
        scenario.validate()?;
        Ok(scenario)
    }

    /// The scenario with its timeline compressed or stretched so that its workload lasts
    /// `duration`: the same faults in the same proportions (tests run shorter versions).
    pub(crate) fn stretched_to(mut self, duration: Option<Duration>) -> Self {
        let Some(duration) = duration else { return self };
        let factor = duration.as_secs_f64() / self.workload.duration.as_secs_f64();
        let scale = |value: Duration| Duration::from_secs_f64(value.as_secs_f64() * factor);
        for step in &mut self.timeline {
            step.at = scale(step.at);
            step.lasting = step.lasting.map(scale);
            step.gap = step.gap.map(scale);
        }
        self.workload.duration = duration;
        self
    }

    fn error(&self, field: &str, problem: impl fmt::Display, fix: impl fmt::Display) -> UsageError {
        UsageError::at(&self.place, field, problem, fix)
    }

    /// What serde cannot check, independent of the backend.
    fn validate(&self) -> Result<(), UsageError> {
        let workload = &self.workload;
        if workload.posters_per_node == 0 {
            return Err(self.error(
                "workload.posters_per_node",
                "no posters: nothing would be checked",
                "give at least 1",
            ));
        }
        if !(workload.posts_per_second.is_finite() && workload.posts_per_second > 0.0) {
            return Err(self.error(
                "workload.posts_per_second",
                format!("{} is not a rate", workload.posts_per_second),
                "give a number above 0, e.g. 10",
            ));
        }
        if self.random && !self.timeline.is_empty() {
            return Err(self.error(
                "random",
                "a random scenario draws its own timeline",
                "remove `timeline`, or set `random: false`",
            ));
        }
        if !self.random && self.timeline.is_empty() {
            return Err(self.error(
                "timeline",
                "no steps",
                "add one, e.g. `- {at: 5s, fault: crash, nodes: [1], for: 10s}`",
            ));
        }
        for (index, step) in self.timeline.iter().enumerate() {
            self.validate_step(index, step)?;
        }
        Ok(())
    }

    fn validate_step(&self, index: usize, step: &Step) -> Result<(), UsageError> {
        let at = |field: &str| format!("timeline[{index}].{field}");
        let fault = step.fault;
        let only_for = |given: bool, field: &str, which: &str| {
            if given {
                Err(self.error(
                    &at(field),
                    format!("`{field}` does not apply to {fault}"),
                    format!("remove it: only {which} take `{field}`"),
                ))
            } else {
                Ok(())
            }
        };
        match fault.target() {
            TargetKind::Nodes => {
                if step.nodes.is_none() {
                    return Err(self.error(
                        &at("nodes"),
                        format!("{fault} acts on nodes and none are named"),
                        "add `nodes: [1]`, `nodes: all` or `nodes: each`",
                    ));
                }
                only_for(
                    step.service.is_some(),
                    "service",
                    "kill-service, freeze-service and restart-service",
                )?;
            }
            TargetKind::Service => {
                if step.service.is_none() {
                    return Err(self.error(
                        &at("service"),
                        format!("{fault} acts on a service and none is named"),
                        "add `service: nats` or `service: postgres`",
                    ));
                }
                only_for(step.nodes.is_some(), "nodes", "faults on nodes")?;
            }
            TargetKind::Store | TargetKind::Cluster => {
                only_for(step.nodes.is_some(), "nodes", "faults on nodes")?;
                only_for(
                    step.service.is_some(),
                    "service",
                    "kill-service, freeze-service and restart-service",
                )?;
            }
        }
        match (fault, step.dependency) {
            (FaultKind::CutFrom, None) => {
                return Err(self.error(
                    &at("dependency"),
                    "cut-from cuts a node from one dependency and none is named",
                    "add `dependency: nats` or `dependency: postgres`",
                ))
            }
            (FaultKind::CutFrom, Some(_)) => {}
            (_, given) => only_for(given.is_some(), "dependency", "cut-from steps")?,
        }
        if fault != FaultKind::SlowLink {
            only_for(step.latency.is_some(), "latency", "slow-link steps")?;
        }
        if !fault.lasts() {
            only_for(step.lasting.is_some(), "for", "faults that last until healed")?;
        }
        if step.nodes != Some(Nodes::Each) {
            only_for(step.gap.is_some(), "gap", "steps with `nodes: each`")?;
        }
        if let Some(Nodes::List(list)) = &step.nodes {
            if list.is_empty() || list.contains(&0) {
                return Err(self.error(
                    &at("nodes"),
                    "nodes are numbered from 1 and at least one is needed",
                    "e.g. `nodes: [1]`, `nodes: all` or `nodes: each`",
                ));
            }
        }
        Ok(())
    }

    /// The same workload without any fault, named `<name>-<suffix>`: how a cluster that
    /// was put back (a rollback) shows it serves.
    pub(crate) fn without_faults(&self, suffix: &str) -> Scenario {
        Scenario {
            name: format!("{}-{suffix}", self.name),
            timeline: Vec::new(),
            random: false,
            ..self.clone()
        }
    }

    /// The faults as they will run on `capabilities`; `seed` draws a random scenario's.
    pub(crate) fn plan(&self, capabilities: &Capabilities, seed: u64) -> Result<Schedule, UsageError> {
        if let Some(nodes) = self.requires.nodes {
            if capabilities.nodes != nodes {
                return Err(self.error(
                    "requires.nodes",
                    format!(
                        "the scenario needs exactly {nodes} node(s) and the cluster has {}",
                        capabilities.nodes
                    ),
                    format!("run it with N = {nodes}"),
                ));
            }
        }
        if self.random {
            return Ok(Schedule {
                faults: random::draw(seed, capabilities, self.workload.duration),
                seed: Some(seed),
            });
        }
        let mut faults = Vec::new();
        for (index, step) in self.timeline.iter().enumerate() {
            if step.fault == FaultKind::Upgrade && !capabilities.faults.contains(&step.fault) {
                return Err(self.error(
                    &format!("timeline[{index}].fault"),
                    "an upgrade replaces a node's build with the working tree's, and the cluster already runs it",
                    "start the cluster on an earlier revision: pass --from REF (e.g. --from HEAD~1)",
                ));
            }
            if !capabilities.faults.contains(&step.fault) {
                return Err(self.error(
                    &format!("timeline[{index}].fault"),
                    format!("{} cannot be injected on {}", step.fault, capabilities.backend),
                    format!(
                        "use one of {}, or the other backend",
                        capabilities
                            .faults
                            .iter()
                            .map(|f| f.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            faults.extend(self.expand(index, step, capabilities.nodes)?);
        }
        faults.sort_by_key(|planned| (planned.at, planned.step));
        // A restore loads the latest snapshot taken before it.
        let mut latest_snapshot = None;
        for planned in &mut faults {
            match planned.fault {
                FaultKind::Snapshot => latest_snapshot = Some(planned.step),
                FaultKind::Restore => {
                    planned.restores = Some(latest_snapshot.ok_or_else(|| {
                        self.error(
                            &format!("timeline[{}].fault", planned.step),
                            "restore puts the cluster back to the latest snapshot, and none is taken before it",
                            "add a `snapshot` step earlier in the timeline, e.g. `- {at: 5s, fault: snapshot}`",
                        )
                    })?);
                }
                _ => {}
            }
        }
        if let Some(last) = faults.iter().map(|f| f.heals.unwrap_or(f.at)).max() {
            if last >= self.workload.duration {
                return Err(self.error(
                    "workload.duration",
                    format!(
                        "the last fault heals at {} on {} node(s), not before the workload ends at {}",
                        humantime::format_duration(last),
                        capabilities.nodes,
                        humantime::format_duration(self.workload.duration)
                    ),
                    "lengthen the workload, or shorten the timeline: recovery is checked after the last heal",
                ));
            }
        }
        Ok(Schedule { faults, seed: None })
    }

    /// One step as planned: once, or once per node with `nodes: each`.
    fn expand(&self, index: usize, step: &Step, cluster: usize) -> Result<Vec<Planned>, UsageError> {
        let lasting = step.fault.lasts().then(|| step.lasting.unwrap_or(DEFAULT_LASTING));
        let planned = |nodes: Vec<usize>, at: Duration| Planned {
            step: index,
            fault: step.fault,
            nodes,
            service: step.service,
            dependency: step.dependency,
            latency: (step.fault == FaultKind::SlowLink).then(|| step.latency.unwrap_or(DEFAULT_LATENCY)),
            at,
            heals: lasting.map(|lasting| at + lasting),
            restores: None,
        };
        Ok(match &step.nodes {
            None => vec![planned(Vec::new(), step.at)],
            Some(Nodes::All) => vec![planned((1..=cluster).collect(), step.at)],
            Some(Nodes::Each) => {
                let stride = lasting.unwrap_or_default() + step.gap.unwrap_or(DEFAULT_GAP);
                (1..=cluster)
                    .map(|node| planned(vec![node], step.at + stride * (node as u32 - 1)))
                    .collect()
            }
            Some(Nodes::List(list)) => {
                if let Some(beyond) = list.iter().find(|node| **node > cluster) {
                    return Err(self.error(
                        &format!("timeline[{index}].nodes"),
                        format!("node {beyond}, and the cluster has {cluster}"),
                        format!("run a cluster of at least {beyond} nodes, or name nodes 1 to {cluster}"),
                    ));
                }
                vec![planned(list.clone(), step.at)]
            }
        })
    }
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodesVisitor;

        impl<'de> Visitor<'de> for NodesVisitor {
            type Value = Nodes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all`, `each` or a list of node numbers such as [1, 3]")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Nodes, E> {
                match text {
                    "all" => Ok(Nodes::All),
                    "each" => Ok(Nodes::Each),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Nodes, A::Error> {
                let mut nodes = Vec::new();
                while let Some(node) = seq.next_element::<usize>()? {
                    nodes.push(node);
                }
                Ok(Nodes::List(nodes))
            }
        }

        deserializer.deserialize_any(NodesVisitor)
    }
}

/// Durations in humantime's notation (`90s`, `1m30s`, `300ms`), as the profiles write them.
mod humantime_text {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    const EXPECTED: &str = "a duration such as 90s, 1m30s or 300ms";

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                humantime::parse_duration(text).map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }

        deserializer.deserialize_str(Text)
    }

    pub(super) mod optional {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub(in super::super) fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(duration) => super::serialize(duration, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, UsageError> {
        Scenario::parse(
            Path::new("workflows/scenarios/test.yaml"),
            "workflows/scenarios/test.yaml".into(),
            text,
        )
    }

    const WORKLOAD: &str = "description: d\nworkload: {posters_per_node: 1, subscribers_per_node: 1, posts_per_second: 5, duration: 60s}\n";

    fn with_timeline(timeline: &str) -> String {
        format!("{WORKLOAD}timeline:\n{timeline}")
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn processes(nodes: usize) -> Capabilities {
        Capabilities {
            backend: "processes",
            faults: FaultKind::ALL
                .into_iter()
                .filter(|f| !matches!(f, FaultKind::Reboot | FaultKind::PowerButton))
                .collect(),
            nodes,
        }
    }

    #[test]
    fn each_expands_to_one_fault_per_node_gap_apart() {
        let scenario = parse(&with_timeline(
            "  - {at: 5s, fault: cut-off, nodes: each, for: 10s, gap: 5s}\n  - {at: 50s, fault: restart-service, service: postgres}\n",
        ))
        .unwrap();
        let schedule = scenario.plan(&processes(3), 0).unwrap();
        let starts: Vec<(u64, Vec<usize>, Option<u64>)> = schedule
            .faults
            .iter()
            .map(|f| (f.at.as_secs(), f.nodes.clone(), f.heals.map(|h| h.as_secs())))
            .collect();
        assert_eq!(
            starts,
            [
                (5, vec![1], Some(15)),
                (20, vec![2], Some(30)),
                (35, vec![3], Some(45)),
                (50, vec![], None)
            ]
        );
        assert!(schedule.faults[3].shared());
    }

    #[test]
    fn a_stretched_scenario_keeps_its_proportions() {
        let scenario = parse(&with_timeline(
            "  - {at: 6s, fault: cut-off, nodes: each, for: 12s, gap: 3s}\n",
        ))
        .unwrap()
        .stretched_to(Some(Duration::from_secs(30)));
        assert_eq!(scenario.workload.duration, Duration::from_secs(30));
        let step = &scenario.timeline[0];
        assert_eq!(
            (step.at, step.lasting, step.gap),
            (
                Duration::from_secs(3),
                Some(Duration::from_secs(6)),
                Some(Duration::from_millis(1500))
            )
        );
        let planned = scenario.plan(&processes(2), 0).unwrap();
        assert_eq!(planned.faults[1].at, Duration::from_millis(10_500));
    }

    #[test]
    fn a_step_missing_what_its_fault_needs_names_the_step_and_field() {
        let message = error(&with_timeline("  - {at: 5s, fault: cut-from, nodes: [1]}\n"));
        assert!(
            message.starts_with("workflows/scenarios/test.yaml: field `timeline[0].dependency`"),
            "{message}"
        );
        assert!(message.contains("fix: add `dependency: nats`"), "{message}");

        let message = error(&with_timeline("  - {at: 5s, fault: kill-service}\n"));
        assert!(message.contains("`timeline[0].service`"), "{message}");
        let message = error(&with_timeline("  - {at: 5s, fault: crash}\n"));
        assert!(message.contains("`timeline[0].nodes`"), "{message}");
    }

    #[test]
    fn a_field_that_does_not_apply_is_refused() {
        let message = error(&with_timeline(
            "  - {at: 5s, fault: crash, nodes: [1], latency: 50ms}\n",
        ));
        assert!(
            message.contains("`timeline[0].latency`: `latency` does not apply to crash"),
            "{message}"
        );
        let message = error(&with_timeline("  - {at: 5s, fault: reboot, nodes: [1], for: 5s}\n"));
        assert!(message.contains("`timeline[0].for`"), "{message}");
    }

    #[test]
    fn unknown_faults_fields_and_bad_values_name_the_field_and_what_is_expected() {
        let message = error(&with_timeline("  - {at: 5s, fault: meteor, nodes: [1]}\n"));
        assert!(message.contains("`timeline[0].fault`"), "{message}");
        assert!(message.contains("crash"), "the fix lists the faults: {message}");
        let message = error(&with_timeline("  - {at: soon, fault: crash, nodes: [1]}\n"));
        assert!(message.contains("`timeline[0].at`"), "{message}");
        assert!(message.contains("fix: use a duration such as 90s"), "{message}");
        let message = error(&with_timeline("  - {at: 5s, fault: crash, nodes: some}\n"));
        assert!(
            message.contains("fix: use `all`, `each` or a list of node numbers"),
            "{message}"
        );
        let message = error(&with_timeline("  - {at: 5s, fault: crash, nodes: [1], colour: red}\n"));
        assert!(
            message.contains("timeline[0]") && message.contains("colour"),
            "{message}"
        );
        let message = error(&with_timeline("  - {at: 5s, fault: crash, nodes: [0]}\n"));
        assert!(message.contains("numbered from 1"), "{message}");
    }

    #[test]
    fn planning_refuses_what_the_backend_or_cluster_cannot_do() {
        let scenario = parse(&with_timeline("  - {at: 5s, fault: reboot, nodes: [1]}\n")).unwrap();
        let message = scenario.plan(&processes(3), 0).unwrap_err().to_string();
        assert!(
            message.contains("`timeline[0].fault`: reboot cannot be injected on processes"),
            "{message}"
        );

        let scenario = parse(&with_timeline("  - {at: 5s, fault: crash, nodes: [3]}\n")).unwrap();
        let message = scenario.plan(&processes(2), 0).unwrap_err().to_string();
        assert!(message.contains("node 3, and the cluster has 2"), "{message}");

        let scenario = parse(&with_timeline("  - {at: 5s, fault: crash, nodes: each, for: 20s}\n")).unwrap();
        let message = scenario.plan(&processes(3), 0).unwrap_err().to_string();
        assert!(message.contains("`workload.duration`"), "{message}");
    }

    #[test]
    fn a_scenario_needing_one_node_refuses_three() {
        let scenario = parse(&format!(
            "{WORKLOAD}requires: {{nodes: 1, store: sqlite}}\ntimeline:\n  - {{at: 5s, fault: power-cut, nodes: [1], for: 3s}}\n"
        ))
        .unwrap();
        assert_eq!(scenario.requires.store, Some(Store::Sqlite));
        let message = scenario.plan(&processes(3), 0).unwrap_err().to_string();
        assert!(message.contains("fix: run it with N = 1"), "{message}");
        assert_eq!(scenario.plan(&processes(1), 0).unwrap().faults.len(), 1);
    }

    #[test]
    fn random_scenarios_have_no_timeline_and_report_their_seed() {
        let message = error(&format!(
            "{WORKLOAD}random: true\ntimeline:\n  - {{at: 5s, fault: crash, nodes: [1]}}\n"
        ));
        assert!(message.contains("`random`"), "{message}");
        let scenario = parse(&format!("{WORKLOAD}random: true\n")).unwrap();
        assert_eq!(scenario.plan(&processes(3), 7).unwrap().seed, Some(7));
    }

    #[test]
    fn a_restore_loads_the_latest_snapshot_before_it() {
        let scenario = parse(&with_timeline(
            "  - {at: 2s, fault: snapshot}\n  - {at: 10s, fault: restore}\n  - {at: 12s, fault: snapshot}\n  - {at: 20s, fault: restore}\n  - {at: 25s, fault: restore}\n",
        ))
        .unwrap();
        let schedule = scenario.plan(&processes(3), 0).unwrap();
        let restores: Vec<(usize, Option<usize>)> = schedule
            .faults
            .iter()
            .filter(|f| f.fault == FaultKind::Restore)
            .map(|f| (f.step, f.restores))
            .collect();
        assert_eq!(restores, [(1, Some(0)), (3, Some(2)), (4, Some(2))]);
        assert!(schedule.faults.iter().all(|f| f.nodes.is_empty() && f.heals.is_none()));
    }

    #[test]
    fn a_restore_without_an_earlier_snapshot_is_refused() {
        let scenario = parse(&with_timeline(
            "  - {at: 10s, fault: restore}\n  - {at: 12s, fault: snapshot}\n",
        ))
        .unwrap();
        let message = scenario.plan(&processes(3), 0).unwrap_err().to_string();
        assert!(message.contains("`timeline[0].fault`"), "{message}");
        assert!(message.contains("add a `snapshot` step earlier"), "{message}");
        // A snapshot acts on the whole cluster: it names no nodes.
        let message = error(&with_timeline("  - {at: 10s, fault: snapshot, nodes: [1]}\n"));
        assert!(message.contains("`timeline[0].nodes`"), "{message}");
    }

    #[test]
    fn snapshots_are_for_backends_that_can_save_their_nodes() {
        let on = |snapshots| Capabilities::of_cluster("x", 3, Store::Postgres, false, snapshots).faults;
        assert!(on(true).contains(&FaultKind::Restore));
        assert!(!on(false).contains(&FaultKind::Snapshot) && !on(false).contains(&FaultKind::Restore));
    }

    #[test]
    fn the_shipped_scenarios_plan_on_three_nodes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = crate::workspace::yaml_names(&scenarios_dir(root));
        for name in [
            "failover",
            "partition",
            "slow-link",
            "dependencies",
            "crash-restart",
            "power-cut",
            "disk-full",
            "random",
            "rolling-upgrade",
            "canary",
            "forks",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "workflows/scenarios/{name}.yaml is missing"
            );
        }
        for name in names {
            let scenario = Scenario::load(root, &name).unwrap();
            let nodes = scenario.requires.nodes.unwrap_or(3);
            let vm = Capabilities {
                backend: "VMs",
                faults: FaultKind::ALL.to_vec(),
                nodes,
            };
            scenario.plan(&vm, 1).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(
                scenario.workload.duration <= Duration::from_secs(150),
                "{name} is bounded to about two minutes"
            );
        }
    }
}
