//! `cargo xtask cluster-local N`: N PlexiChat processes on loopback sharing an ephemeral
//! PostgreSQL and NATS, verified as one server — membership, cross-node WebSocket
//! delivery (with its latency), and failover with no acknowledged message lost. With
//! `--scenario`, the nodes run behind relays and a fault scenario runs on them instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use services::teardown::TempDir;
use services::{Durability, Nats, Postgres, ServerProcess};

use crate::cargo::artefact::target_binary;
use crate::cluster::engine::{self, Backend as _};
use crate::cluster::processes::{NodeSpec, ProcessCluster};
use crate::cluster::scenario_report::ScenarioReport;
use crate::cluster::{self, skipped, timed, CheckResult, Description, Member, NodeDescription, Percentiles, Verifier};
use crate::history::check::Bounds;
use crate::report::progress::Progress;
use crate::report::{Outcome, Report, Table};
use crate::scenario::{Planned, Scenario, Store};
use crate::system::http;
use crate::workspace::profile::Profile;
use crate::workspace::targets;
use crate::workspace::Workspace;

const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// How many server processes.
    #[arg(default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// Profile: NAME for profiles/NAME.yaml, or a path; its server section configures every node.
    #[arg(long, default_value = "dev")]
    profile: String,
    /// Stay up after verifying, until SIGINT or SIGTERM.
    #[arg(long, conflicts_with = "scenario")]
    hold: bool,
    /// Run a fault scenario: NAME for workflows/scenarios/NAME.yaml, or a path.
    #[arg(long, value_name = "NAME|FILE")]
    scenario: Option<String>,
    /// The seed of a random scenario (default: drawn from the clock, and reported).
    #[arg(long, requires = "scenario")]
    seed: Option<u64>,
    /// Run the scenario's timeline compressed or stretched to this duration (e.g. 40s).
    #[arg(long, requires = "scenario", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print the scenario's schedule (for a random one, what its seed draws) and exit.
    #[arg(long, requires = "scenario")]
    dry_run: bool,
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

/// What cluster-local reports: its checks, or a scenario's verdict.
#[derive(Serialize)]
#[serde(untagged)]
pub enum ClusterLocalOutcome {
    Checks(ClusterReport),
    Scenario(ScenarioReport),
    Plan(PlanReport),
}

impl Outcome for ClusterLocalOutcome {
    fn ok(&self) -> bool {
        match self {
            ClusterLocalOutcome::Checks(report) => report.ok(),
            ClusterLocalOutcome::Scenario(report) => report.ok(),
            ClusterLocalOutcome::Plan(report) => report.ok(),
        }
    }

    fn table(&self) -> Table {
        match self {
            ClusterLocalOutcome::Checks(report) => report.table(),
            ClusterLocalOutcome::Scenario(report) => report.table(),
            ClusterLocalOutcome::Plan(report) => report.table(),
        }
    }

    fn summary(&self) -> Option<String> {
        match self {
            ClusterLocalOutcome::Checks(report) => report.summary(),
            ClusterLocalOutcome::Scenario(report) => report.summary(),
            ClusterLocalOutcome::Plan(report) => report.summary(),
        }
    }
}

#[derive(Serialize)]
pub struct ClusterReport {
    ok: bool,
    #[serde(flatten)]
    description: Description,
    checks: Vec<CheckResult>,
    delivery_latency_ms: Option<Percentiles>,
    failover_detection_seconds: Option<f64>,
}

struct Node {
    id: String,
    server: ServerProcess,
    _dir: TempDir,
}

impl Node {
    fn member(&self) -> Member {
        Member {
            id: self.id.clone(),
            addr: self.server.addr,
        }
    }
}

pub fn run(args: Args) -> Result<ClusterLocalOutcome> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let scenario = match &args.scenario {
        Some(name) => Some(Scenario::load(&workspace.root, name)?.stretched_to(args.duration)),
        None => None,
    };
    let seed = args.seed.unwrap_or_else(clock_seed);
    if let (true, Some(scenario)) = (args.dry_run, &scenario) {
        let store = scenario.requires.store.unwrap_or(Store::Postgres);
        let capabilities = ProcessCluster::capabilities_for(usize::from(args.nodes), store);
        let schedule = scenario.plan(&capabilities, seed)?;
        return Ok(ClusterLocalOutcome::Plan(PlanReport {
            ok: true,
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            seed: schedule.seed,
            schedule: schedule.faults,
        }));
    }
    let progress = Progress::new();

    let task = progress.task("build");
    // The static binary for this host: the same build as build-native's, images' and VMs'.
    let binary = target_binary(&workspace, &profile.build, targets::host()?, &task)?;
    task.finish("plexichat is up to date");
    match scenario {
        Some(scenario) => run_scenario(&args, &workspace, &profile, binary, &scenario, seed, &progress)
            .map(ClusterLocalOutcome::Scenario),
        None => run_checks(&args, &workspace, &profile, &binary, &progress).map(ClusterLocalOutcome::Checks),
    }
}

/// Boots the nodes behind their relays, then runs `scenario` on them.
fn run_scenario(
    args: &Args,
    workspace: &Workspace,
    profile: &Profile,
    binary: PathBuf,
    scenario: &Scenario,
    seed: u64,
    progress: &Progress,
) -> Result<ScenarioReport> {
    let nodes = usize::from(args.nodes);
    let store = scenario.requires.store.unwrap_or(Store::Postgres);
    let task = progress.task("services");
    let postgres = match store {
        Store::Postgres => {
            task.step("starting PostgreSQL");
            Some(Postgres::start(
                &workspace.target_dir.join("xtask/cache"),
                Durability::Durable,
            )?)
        }
        Store::Sqlite => None,
    };
    // A cluster shares PostgreSQL and NATS; a single SQLite node needs neither.
    let nats = match store {
        Store::Postgres => {
            task.step("starting NATS");
            Some(Nats::start()?)
        }
        Store::Sqlite => None,
    };
    let description_services = (
        postgres.as_ref().map(|p| p.url("postgres")).unwrap_or_default(),
        nats.as_ref().map(Nats::url).unwrap_or_default(),
    );
    task.finish("services up");

    let task = progress.task("nodes");
    task.step(format!("starting {nodes} node(s) behind their relays"));
    let spec = NodeSpec {
        binary,
        profile: profile.path.clone(),
        store,
    };
    let mut cluster = ProcessCluster::start(nodes, spec, postgres, nats)?;
    let members = cluster.members();
    for member in &members {
        wait_ready(member.addr)?;
    }
    task.finish(format!("{nodes} node(s) ready"));

    let schedule = scenario.plan(&cluster.capabilities(), seed)?;
    let task = progress.task(&format!("scenario {}", scenario.name));
    let verifier = Verifier::new(&members[0])?;
    task.step("membership");
    verifier.membership(&members)?;
    let client = verifier.new_channel(
        &members[0],
        &format!("scenario-{}-{}", scenario.name, std::process::id()),
    )?;
    let bounds = Bounds {
        convergence: profile.cluster_lease() + Duration::from_secs(2),
    };
    let run_dir = engine::run_dir(&workspace.target_dir.join("xtask/cluster-local"), &scenario.name)?;
    let history = run_dir.join("history.jsonl");
    let run = engine::run(scenario, schedule, &mut cluster, &client, bounds, &history, &task)?;
    task.finish(if run.violations.is_empty() {
        "every check held".to_string()
    } else {
        format!("{} violation(s)", run.violations.len())
    });
    let description = Description {
        nodes: cluster
            .description_pids()
            .into_iter()
            .zip(&members)
            .map(|((node_id, pid), member)| NodeDescription {
                node_id,
                url: format!("http://{}", member.addr),
                arch: std::env::consts::ARCH.into(),
                healthy_seconds: 0.0,
                pid,
                qmp_socket: None,
            })
            .collect(),
        database_url: description_services.0,
        nats_url: description_services.1,
    };
    Ok(ScenarioReport::new(&scenario.name, "processes", description, run))
}

/// A seed for a random scenario run without `--seed`: reported, so the run can be replayed.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Boots the nodes, verifies them as one server, and fails one over.
fn run_checks(
    args: &Args,
    workspace: &Workspace,
    profile: &Profile,
    binary: &Path,
    progress: &Progress,
) -> Result<ClusterReport> {
    let task = progress.task("services");
    task.step("starting PostgreSQL");
    let postgres = Postgres::start(&workspace.target_dir.join("xtask/cache"), Durability::Durable)?;
    task.step("starting NATS");
    let nats = Nats::start()?;
    let database_url = postgres.url("postgres");
    task.finish(format!("PostgreSQL on {}, NATS on {}", postgres.port(), nats.port()));

    let mut nodes = Vec::new();
    for index in 0..usize::from(args.nodes) {
        let id = format!("node-{index}");
        let task = progress.task(&id);
        task.step("starting");
        let dir = TempDir::new(&format!("cluster-{id}"))?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&profile.path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
                "--nats-url",
                &nats.url(),
            ])
            .args(["--node-id", &id])
            .current_dir(dir.path());
        let server = ServerProcess::start(command, NODE_START_TIMEOUT)?;
        wait_ready(server.addr)?;
        task.finish(format!(
            "healthy at {} after {:.2} s",
            server.url(),
            server.started_in.as_secs_f64()
        ));
        nodes.push(Node { id, server, _dir: dir });
    }
    let description = Description {
        nodes: nodes
            .iter()
            .map(|node| NodeDescription {
                node_id: node.id.clone(),
                url: node.server.url(),
                arch: std::env::consts::ARCH.into(),
                healthy_seconds: node.server.started_in.as_secs_f64(),
                pid: Some(node.server.pid()),
                qmp_socket: None,
            })
            .collect(),
        database_url,
        nats_url: nats.url(),
    };

    let lease = profile.cluster_lease();
    let members: Vec<Member> = nodes.iter().map(Node::member).collect();
    let verifier = Verifier::new(&members[0])?;
    let task = progress.task("verify");
    let (mut checks, latencies) = cluster::verify_basics(&verifier, &members, &task);
    let mut detection = None;
    if args.hold {
        checks.push(skipped("failover", "not run with --hold: every node stays up for you"));
    } else if nodes.len() < 2 {
        checks.push(skipped("failover", "needs at least 2 nodes"));
    } else {
        task.step("failover: killing a node under load");
        checks.push(timed("failover", || {
            let victim = nodes.last().map(|node| &node.server);
            let kill = || victim.map_or(Ok(()), ServerProcess::kill);
            let (detail, seconds) = verifier.failover(&members, lease, "killed", kill)?;
            detection = Some(seconds);
            Ok(detail)
        }));
    }
    let ok = !checks.iter().any(CheckResult::failed);
    task.finish(if ok { "every check held" } else { "a check FAILED" });

    let report = ClusterReport {
        ok,
        description,
        checks,
        delivery_latency_ms: latencies,
        failover_detection_seconds: detection,
    };
    if args.hold {
        cluster::hold(workspace, "cluster-local", &report.description, &Report::of(&report))?;
    }
    Ok(report)
}

impl Outcome for ClusterReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["item", "result", "detail"]);
        for node in &self.description.nodes {
            table.row(vec![
                node.node_id.clone(),
                format!("healthy in {:.2} s", node.healthy_seconds),
                format!("{} (pid {})", node.url, node.pid.unwrap_or_default()),
            ]);
        }
        for check in &self.checks {
            table.row(vec![check.name.into(), check.result.into(), check.detail.clone()]);
        }
        table
    }
}

fn wait_ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    loop {
        if let Ok((200, _)) = http::request(addr, "GET", "/ready", None, None) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("http://{addr} did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
