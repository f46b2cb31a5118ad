//! `cargo xtask qemu-cluster N`: N PlexiChat nodes, each the PID 1 of its own QEMU VM
//! with a data disk of its own, sharing PostgreSQL and NATS on the host (reached through
//! user-mode networking's gateway), verified as one server and then failed over QMP:
//! paused, resumed, reset and quit, the way a hypervisor or a dying host would. With
//! `--scenario`, a fault scenario runs on the VMs instead (on an earlier revision's build
//! with `--from`, as a canary with a way back with `--canary`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use services::teardown::TempDir;
use services::{Durability, Nats, Postgres};

use crate::bench::revision::RevisionBuild;
use crate::cargo::artefact::target_binary;
use crate::cluster::canary::{self, CanaryReport};
use crate::cluster::dependencies::SharedServices;
use crate::cluster::engine;
use crate::cluster::outcome::{ClusterOutcome, ScenarioArgs};
use crate::cluster::scenario_report::ScenarioReport;
use crate::cluster::{self, skipped, timed, CheckResult, Description, Member, NodeDescription, Percentiles, Verifier};
use crate::guest::{self as guest_images, ImageDefinition};
use crate::qemu::disk::DataDisk;
use crate::qemu::nodes::{Boot, Machine, Places, VmCluster};
use crate::qemu::vm::{Launch, Vm, BOOT_TIMEOUT, HOST_FROM_GUEST};
use crate::qemu::{checks, plan, qmp, vm};
use crate::report::progress::{Progress, Task};
use crate::report::verdicts::{self, Recorded};
use crate::report::{Outcome, Report, Table};
use crate::scenario::{Scenario, Store};
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// Each VM's data disk in the plain checks.
const DISK_MIB: u32 = 64;

#[derive(clap::Args)]
pub struct Args {
    /// How many VMs (nodes).
    #[arg(default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// x86_64, aarch64, riscv64, mixed (one x86_64, the rest aarch64: the edge
    /// deployment), or a comma-separated list assigned to the nodes in turn.
    #[arg(long, default_value = "x86_64")]
    arch: String,
    /// Profile: NAME for profiles/NAME.yaml, or a path. Its build section builds the
    /// guests' binaries; its server section configures every node.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Stay up after verifying, until SIGINT or SIGTERM.
    #[arg(long, conflicts_with = "scenario")]
    hold: bool,
    #[command(flatten)]
    scenario: ScenarioArgs,
}

/// What qemu-cluster reports: its checks, a scenario's verdict, or a scenario's plan.
pub type QemuClusterOutcome = ClusterOutcome<ClusterReport>;

#[derive(Serialize)]
struct VmReport {
    node_id: String,
    arch: String,
    accelerator: &'static str,
    url: String,
    launch_to_healthy_seconds: f64,
    rss_mib: Option<f64>,
    qmp_status: String,
    serial_log: PathBuf,
}

#[derive(Serialize)]
pub struct ClusterReport {
    ok: bool,
    #[serde(flatten)]
    description: Description,
    vms: Vec<VmReport>,
    launch_to_all_healthy_seconds: f64,
    checks: Vec<CheckResult>,
    delivery_latency_ms: Option<Percentiles>,
}

pub fn run(args: Args) -> Result<QemuClusterOutcome> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let arches = plan::arches(&args.arch, usize::from(args.nodes))?;
    let scenario = args.scenario.load(&workspace.root)?;
    let seed = args.scenario.seed();
    if let Some(plan) = scenario.as_ref().and_then(|scenario| {
        args.scenario.dry_run(scenario, |store| {
            VmCluster::capabilities_for(arches.len(), store, args.scenario.from.is_some())
        })
    }) {
        return Ok(ClusterOutcome::Plan(plan?));
    }
    let progress = Progress::new();

    // Every definition is read before anything is built: a mistake costs nothing.
    let mut definitions: Vec<ImageDefinition> = Vec::new();
    for arch in &arches {
        if !definitions.iter().any(|d| &d.arch == arch) {
            definitions.push(guest_images::load_definition(&workspace, arch)?);
        }
    }
    let accelerators = definitions
        .iter()
        .map(|d| d.accelerator().map(|(accelerator, _)| accelerator))
        .collect::<Result<Vec<_>, _>>()?;
    plan::provision(&definitions, &progress)?;
    let targets: Vec<&'static Target> = definitions.iter().map(ImageDefinition::target).collect();
    let revisions = args.scenario.revisions(&profile.build, &targets, &progress)?;

    let run_dir = TempDir::new("qemu-cluster")?;
    let log_dir = workspace.target_dir.join("xtask/qemu-cluster");
    std::fs::create_dir_all(&log_dir)?;
    // The machine of each node, by index into the definitions.
    let machine_of: Vec<usize> = arches
        .iter()
        .map(|arch| definitions.iter().position(|d| &d.arch == arch).unwrap_or_default())
        .collect();
    let mut machines = Vec::new();
    for (definition, accelerator) in definitions.into_iter().zip(accelerators) {
        let task = progress.task(&format!("image {}", definition.arch));
        let target = definition.target();
        let images = Images {
            workspace: &workspace,
            definition: &definition,
            run_dir: run_dir.path(),
            task: &task,
        };
        let current = match &revisions.to {
            Some(to) => images.of_revision(to, "to", &profile.path)?,
            None => images.boot(
                target_binary(&workspace, &profile.build, target, &task)?,
                None,
                &profile.path,
            )?,
        };
        let earlier = revisions
            .from
            .as_ref()
            .map(|from| images.of_revision(from, "from", &profile.path))
            .transpose()?;
        task.finish("images ready");
        machines.push(Machine {
            definition,
            accelerator,
            current,
            earlier,
        });
    }
    let booted = Booted {
        machines,
        machine_of,
        run_dir,
        log_dir,
    };
    match scenario {
        Some(scenario) => run_scenario(&args, &workspace, &profile, booted, &scenario, seed, &progress),
        None => run_checks(&args, &workspace, &profile, &booted, &progress).map(ClusterOutcome::Checks),
    }
}

/// What every node boots: the machines and their images, ready to launch.
struct Booted {
    /// One per architecture.
    machines: Vec<Machine>,
    /// Per node: its definition.
    machine_of: Vec<usize>,
    run_dir: TempDir,
    log_dir: PathBuf,
}

/// Boots the VMs with their relays and disks, then runs `scenario` on them (as a canary
/// with `--canary`).
fn run_scenario(
    args: &Args,
    workspace: &Workspace,
    profile: &Profile,
    booted: Booted,
    scenario: &Scenario,
    seed: u64,
    progress: &Progress,
) -> Result<QemuClusterOutcome> {
    let store = scenario.requires.store.unwrap_or(Store::Postgres);
    let task = progress.task("services");
    let services = SharedServices::start_for(store, &workspace.target_dir.join("xtask/cache"), &task)?;
    let (database_url, nats_url) = services.urls();
    task.finish("services up");

    let task = progress.task("vms");
    let Booted {
        machines,
        machine_of,
        run_dir,
        log_dir,
    } = booted;
    let places = Places {
        run_dir: run_dir.path().to_path_buf(),
        log_dir,
    };
    let mut cluster = VmCluster::start(machines, &machine_of, services, store, places, &task)?;
    task.finish(format!("{} VM(s) healthy", machine_of.len()));

    let runs_dir = workspace.target_dir.join("xtask/qemu-cluster");
    let lease = profile.cluster_lease();
    let outcome = if args.scenario.canary {
        let runs = canary::run(
            &mut cluster,
            scenario,
            seed,
            args.scenario.rollback,
            lease,
            &runs_dir,
            progress,
        )?;
        let description = Description {
            nodes: cluster.describe(),
            database_url,
            nats_url,
        };
        ClusterOutcome::Canary(Box::new(CanaryReport::new(
            scenario,
            "vms",
            description,
            runs,
            cluster.usage(),
        )))
    } else {
        let run = engine::run_scenario(scenario, seed, &mut cluster, lease, &runs_dir, progress)?;
        let description = Description {
            nodes: cluster.describe(),
            database_url,
            nats_url,
        };
        ClusterOutcome::Scenario(Box::new(
            ScenarioReport::new(&scenario.name, "vms", description, run).with_vms(cluster.usage(), cluster.snapshots()),
        ))
    };
    drop(cluster);
    drop(run_dir);
    Ok(outcome)
}

/// Boots the VMs, verifies them as one server, and fails them over QMP.
fn run_checks(
    args: &Args,
    workspace: &Workspace,
    profile: &Profile,
    booted: &Booted,
    progress: &Progress,
) -> Result<ClusterReport> {
    let task = progress.task("services");
    task.step("starting PostgreSQL and NATS");
    let postgres = Postgres::start(&workspace.target_dir.join("xtask/cache"), Durability::Durable)?;
    let nats = Nats::start()?;
    task.finish(format!("PostgreSQL on {}, NATS on {}", postgres.port(), nats.port()));

    let runtime = qmp::runtime()?;
    let mut vms = Vec::new();
    for (index, &which) in booted.machine_of.iter().enumerate() {
        let machine = &booted.machines[which];
        let node_id = format!("node-{index}");
        let disk = DataDisk::create(&booted.run_dir.path().join(format!("{node_id}.qcow2")), DISK_MIB)?;
        let settings = vm::node_settings(
            &node_id,
            Some(&postgres.url_via(HOST_FROM_GUEST, "postgres")),
            Some(&nats.url_via(HOST_FROM_GUEST)),
        );
        let launch = Launch {
            node_id,
            definition: &machine.definition,
            accelerator: machine.accelerator,
            kernel: &machine.current.kernel,
            initrd: &machine.current.initrd,
            http_port: services::free_port()?,
            data_disk: Some(&disk),
            generation: 0,
            settings,
            run_dir: booted.run_dir.path(),
            log_dir: &booted.log_dir,
        };
        vms.push(vm::Vm::launch(launch, &runtime)?);
    }
    let healthy = wait_all_healthy(&vms, progress)?;
    let all_healthy = healthy.iter().copied().fold(0.0, f64::max);

    let members: Vec<Member> = vms.iter().map(Vm::member).collect();
    let memory: Vec<Option<f64>> = vms.iter().map(Vm::rss_mib).collect();
    let description = Description {
        nodes: vms
            .iter()
            .zip(&healthy)
            .map(|(vm, seconds)| NodeDescription {
                node_id: vm.node_id.clone(),
                url: vm.url(),
                arch: vm.arch.clone(),
                healthy_seconds: *seconds,
                pid: None,
                qmp_socket: Some(vm.user_qmp_socket.clone()),
            })
            .collect(),
        database_url: postgres.url("postgres"),
        nats_url: nats.url(),
    };

    let lease = profile.cluster_lease();
    let task = progress.task("verify");
    let verifier = Verifier::new(&members[0]).context("registering the verifier's user")?;
    let (mut checks, latencies) = cluster::verify_basics(&verifier, &members, &task);
    if args.hold {
        checks.push(skipped("failover", "not run with --hold: every VM stays up for you"));
    } else if vms.len() < 2 {
        checks.push(skipped("failover", "needs at least 2 nodes"));
    } else {
        let failover = checks::Failover {
            verifier: &verifier,
            vms: &vms,
            members: &members,
            lease,
            boot_timeout: BOOT_TIMEOUT,
        };
        task.step("QMP stop/cont: a frozen node");
        checks.push(timed("pause", || failover.pause_and_resume()));
        task.step("QMP system_reset: a rebooted node");
        checks.push(timed("reset", || failover.reset()));
        task.step("QMP quit under load: a vanished node");
        checks.push(timed("quit", || failover.quit_under_load()));
    }
    let statuses: Vec<String> = vms.iter().map(qmp_status).collect();
    if !args.hold {
        task.step("QMP system_powerdown: clean power-off");
        checks.push(timed("powerdown", || checks::power_off_all(&vms)));
    }
    let ok = !checks.iter().any(CheckResult::failed);
    task.finish(if ok { "every check held" } else { "a check FAILED" });
    if !args.hold {
        record_verdicts(workspace, &booted.machines, ok, &checks)?;
    }

    let vm_reports = vms
        .iter()
        .zip(healthy.iter().zip(memory.iter().zip(statuses)))
        .map(|(vm, (seconds, (rss, status)))| VmReport {
            node_id: vm.node_id.clone(),
            arch: vm.arch.clone(),
            accelerator: vm.accelerator.as_str(),
            url: vm.url(),
            launch_to_healthy_seconds: *seconds,
            rss_mib: *rss,
            qmp_status: status,
            serial_log: vm.serial_log.clone(),
        })
        .collect();
    let report = ClusterReport {
        ok,
        description,
        vms: vm_reports,
        launch_to_all_healthy_seconds: all_healthy,
        checks,
        delivery_latency_ms: latencies,
    };
    if args.hold {
        cluster::hold(workspace, "qemu-cluster", &report.description, &Report::of(&report))?;
    }
    Ok(report)
}

/// Waits for every VM at once (they boot in parallel); seconds from launch to healthy.
fn wait_all_healthy(vms: &[Vm], progress: &Progress) -> Result<Vec<f64>> {
    std::thread::scope(|scope| {
        let waits: Vec<_> = vms
            .iter()
            .map(|vm| {
                let task = progress.task(&vm.node_id);
                task.step(format!("booting {} ({})", vm.arch, vm.accelerator.as_str()));
                scope.spawn(move || {
                    vm.wait_healthy(BOOT_TIMEOUT)?;
                    let seconds = vm.launched_at.elapsed().as_secs_f64();
                    task.finish(format!("healthy at {} after {seconds:.2} s", vm.url()));
                    Ok(seconds)
                })
            })
            .collect();
        waits
            .into_iter()
            .map(|wait| {
                wait.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a boot watcher panicked")))
            })
            .collect()
    })
}

/// The VM's run state as QMP reports it, or how it ended.
fn qmp_status(vm: &Vm) -> String {
    if vm.exited() {
        let ended = vm.qmp.events().into_iter().rev().find_map(|event| match event {
            qmp::VmEvent::Shutdown { reason, .. } => Some(reason),
            _ => None,
        });
        return format!("exited ({})", ended.unwrap_or_else(|| "no SHUTDOWN event".into()));
    }
    vm.qmp.status().unwrap_or_else(|err| format!("unknown: {err:#}"))
}

/// Where one machine's images are made, for each build its nodes boot.
struct Images<'a> {
    workspace: &'a Workspace,
    definition: &'a ImageDefinition,
    run_dir: &'a Path,
    task: &'a Task,
}

impl Images<'_> {
    /// The image with `binary` as /init (a `variant` for another revision's) and the
    /// profile at `profile` in it, ready to boot.
    fn boot(&self, binary: PathBuf, variant: Option<&str>, profile: &Path) -> Result<Boot> {
        Boot::make(
            self.workspace,
            self.definition,
            binary,
            variant,
            profile,
            self.run_dir,
            self.task,
        )
    }

    /// `revision`'s image, with that revision's own version of the profile.
    fn of_revision(&self, revision: &RevisionBuild, variant: &str, profile: &Path) -> Result<Boot> {
        let binary = revision.binary(self.definition.target())?.to_path_buf();
        let profile = revision.same_file(&self.workspace.root, profile);
        self.boot(binary, Some(variant), &profile)
    }
}

impl Outcome for ClusterReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["item", "result", "detail"]);
        for vm in &self.vms {
            table.row(vec![
                vm.node_id.clone(),
                format!("healthy in {:.2} s", vm.launch_to_healthy_seconds),
                format!(
                    "{} {}, {} MiB, QMP {}, {}",
                    vm.arch,
                    vm.accelerator,
                    vm.rss_mib.map_or("?".into(), |mib| format!("{mib:.0}")),
                    vm.qmp_status,
                    vm.url
                ),
            ]);
        }
        for check in &self.checks {
            table.row(vec![check.name.into(), check.result.into(), check.detail.clone()]);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        Some(format!(
            "{} VMs: launch → all healthy {:.2} s",
            self.vms.len(),
            self.launch_to_all_healthy_seconds
        ))
    }
}

/// Keeps each architecture's verdict for a release's evidence (`report::verdicts`): the
/// checks of a cluster hold or fail for every architecture in it.
fn record_verdicts(workspace: &Workspace, machines: &[Machine], ok: bool, checks: &[CheckResult]) -> Result<()> {
    let lines: Vec<String> = checks
        .iter()
        .map(|check| format!("{}: {} ({})", check.name, check.result, check.detail))
        .collect();
    for machine in machines {
        verdicts::record(
            &workspace.target_dir,
            &Recorded {
                command: "qemu-cluster".into(),
                arch: machine.definition.arch.clone(),
                revision: workspace.git_revision(),
                binary_sha256: Some(machine.current.binary_sha256.clone()),
                ok,
                checks: lines.clone(),
                at: verdicts::now(),
            },
        )?;
    }
    Ok(())
}
