//! `cargo xtask cluster-local N`: N PlexiChat processes on loopback sharing an ephemeral
//! PostgreSQL and NATS, verified as one server — membership, cross-node WebSocket
//! delivery (with its latency), and failover with no acknowledged message lost. With
//! `--scenario`, the nodes run behind relays and a fault scenario runs on them instead.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use services::teardown::TempDir;
use services::{Durability, Nats, Postgres, ServerProcess};

use crate::bench::revision::RevisionBuild;
use crate::cargo::artefact::target_binary;
use crate::cluster::dependencies::SharedServices;
use crate::cluster::engine::{self, Backend as _};
use crate::cluster::outcome::{ClusterOutcome, ScenarioArgs};
use crate::cluster::processes::{Build, NodeSpec, ProcessCluster};
use crate::cluster::scenario_report::ScenarioReport;
use crate::cluster::{self, skipped, timed, CheckResult, Description, Member, NodeDescription, Percentiles, Verifier};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::{Outcome, Report, Table};
use crate::scenario::{Scenario, Store};
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
    #[command(flatten)]
    scenario: ScenarioArgs,
}

/// What cluster-local reports: its checks, a scenario's verdict, or a scenario's plan.
pub type ClusterLocalOutcome = ClusterOutcome<ClusterReport>;

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
    if args.scenario.canary {
        return Err(UsageError(
            "--canary saves the cluster with VM snapshots to roll it back, and processes have none\n  fix: cargo xtask qemu-cluster N --from REF --canary".into(),
        )
        .into());
    }
    let scenario = args.scenario.load(&workspace.root)?;
    let seed = args.scenario.seed();
    if let Some(plan) = scenario.as_ref().and_then(|scenario| {
        args.scenario.dry_run(scenario, |store| {
            ProcessCluster::capabilities_for(usize::from(args.nodes), store, args.scenario.from.is_some())
        })
    }) {
        return Ok(ClusterOutcome::Plan(plan?));
    }
    let progress = Progress::new();

    let host = targets::host()?;
    let revisions = args.scenario.revisions(&profile.build, &[host], &progress)?;
    let own_build = |revision: &RevisionBuild| -> Result<Build> {
        Ok(Build {
            binary: revision.binary(host)?.to_path_buf(),
            profile: revision.same_file(&workspace.root, &profile.path),
        })
    };
    let current = match &revisions.to {
        Some(to) => own_build(to)?,
        None => {
            let task = progress.task("build");
            // The static binary for this host: the same build as build-native's, images' and VMs'.
            let binary = target_binary(&workspace, &profile.build, host, &task)?;
            task.finish("plexichat is up to date");
            Build {
                binary,
                profile: profile.path.clone(),
            }
        }
    };
    match scenario {
        Some(scenario) => {
            let spec = NodeSpec {
                from: revisions.from.as_ref().map(own_build).transpose()?,
                current,
                store: scenario.requires.store.unwrap_or(Store::Postgres),
            };
            run_scenario(&args, &workspace, &profile, spec, &scenario, seed, &progress)
                .map(|report| ClusterOutcome::Scenario(Box::new(report)))
        }
        None => run_checks(&args, &workspace, &profile, &current.binary, &progress).map(ClusterOutcome::Checks),
    }
}

/// Boots the nodes behind their relays, then runs `scenario` on them.
fn run_scenario(
    args: &Args,
    workspace: &Workspace,
    profile: &Profile,
    spec: NodeSpec,
    scenario: &Scenario,
    seed: u64,
    progress: &Progress,
) -> Result<ScenarioReport> {
    let nodes = usize::from(args.nodes);
    let store = spec.store;
    let task = progress.task("services");
    let services = SharedServices::start_for(store, &workspace.target_dir.join("xtask/cache"), &task)?;
    let (database_url, nats_url) = services.urls();
    task.finish("services up");

    let task = progress.task("nodes");
    task.step(format!("starting {nodes} node(s) behind their relays"));
    let mut cluster = ProcessCluster::start(nodes, spec, services)?;
    let members = cluster.members();
    for member in &members {
        wait_ready(member.addr)?;
    }
    task.finish(format!("{nodes} node(s) ready"));

    let runs_dir = workspace.target_dir.join("xtask/cluster-local");
    let run = engine::run_scenario(
        scenario,
        seed,
        &mut cluster,
        profile.cluster_lease(),
        &runs_dir,
        progress,
    )?;
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
        database_url,
        nats_url,
    };
    Ok(ScenarioReport::new(&scenario.name, "processes", description, run))
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
