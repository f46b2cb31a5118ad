//! `cargo xtask qemu-cluster N`: N PlexiChat nodes, each the PID 1 of its own QEMU VM,
//! sharing PostgreSQL and NATS on the host (reached through user-mode networking's
//! gateway), verified as one server and then failed over QMP: paused, resumed, reset
//! and quit, the way a hypervisor or a dying host would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use services::teardown::TempDir;
use services::{Durability, Nats, Postgres};

use crate::cargo::artefact::target_binary;
use crate::cluster::{self, skipped, timed, CheckResult, Description, Member, NodeDescription, Percentiles, Verifier};
use crate::guest::cpio::CpioWriter;
use crate::guest::image::{self, BuiltImage};
use crate::guest::{self as guest_images, ImageDefinition};
use crate::qemu::vm::{Launch, Vm};
use crate::qemu::{checks, plan, qmp, vm};
use crate::report::progress::Progress;
use crate::report::{Outcome, Report, Table};
use crate::workspace::profile::Profile;
use crate::workspace::Workspace;

/// Where a guest reaches the host under QEMU's user-mode networking.
const HOST_FROM_GUEST: &str = "10.0.2.2";
/// Where the node's profile sits inside the guest (an overlay on the image's initramfs).
const GUEST_PROFILE: &str = "/etc/plexichat/profile.yaml";
/// Boot to first healthy answer, under TCG on a loaded 2-core host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

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
    #[arg(long)]
    hold: bool,
}

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

pub fn run(args: Args) -> Result<ClusterReport> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let arches = plan::arches(&args.arch, usize::from(args.nodes))?;
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

    let run_dir = TempDir::new("qemu-cluster")?;
    let log_dir = workspace.target_dir.join("xtask/qemu-cluster");
    std::fs::create_dir_all(&log_dir)?;
    let mut images: Vec<(BuiltImage, PathBuf)> = Vec::new();
    for definition in &definitions {
        let task = progress.task(&format!("image {}", definition.arch));
        let binary = target_binary(&workspace, &profile.build, definition.target(), &task)?;
        let image = image::ensure(&workspace, definition, binary, &task)?;
        let initrd = with_profile(&image.initramfs, &profile.path, run_dir.path())?;
        task.finish(if image.cache_hit { "up to date" } else { "built" });
        images.push((image, initrd));
    }

    let task = progress.task("services");
    task.step("starting PostgreSQL and NATS");
    let postgres = Postgres::start(&workspace.target_dir.join("xtask/cache"), Durability::Durable)?;
    let nats = Nats::start()?;
    task.finish(format!("PostgreSQL on {}, NATS on {}", postgres.port(), nats.port()));

    let runtime = qmp::runtime()?;
    let mut vms = Vec::new();
    for (index, arch) in arches.iter().enumerate() {
        let which = definitions
            .iter()
            .position(|d| &d.arch == arch)
            .context("a definition per arch")?;
        let (image, initrd) = &images[which];
        let node_id = format!("node-{index}");
        let settings = vec![
            format!("plexichat.node_id={node_id}"),
            format!("plexichat.listen=0.0.0.0:{}", vm::GUEST_HTTP_PORT),
            format!(
                "plexichat.database_url={}",
                postgres.url_via(HOST_FROM_GUEST, "postgres")
            ),
            format!("plexichat.nats_url={}", nats.url_via(HOST_FROM_GUEST)),
            format!("plexichat.config={GUEST_PROFILE}"),
        ];
        let launch = Launch {
            node_id,
            definition: &definitions[which],
            accelerator: accelerators[which],
            kernel: &image.kernel,
            initrd,
            settings,
            run_dir: run_dir.path(),
            log_dir: &log_dir,
        };
        vms.push(vm::Vm::launch(launch, &runtime)?);
    }
    let healthy = wait_all_healthy(&vms, &progress)?;
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
        cluster::hold(&workspace, "qemu-cluster", &report.description, &Report::of(&report))?;
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

/// The image's initramfs with the profile appended as a second archive, which the
/// kernel unpacks over the first: one image serves every profile.
fn with_profile(initramfs: &Path, profile: &Path, run_dir: &Path) -> Result<PathBuf> {
    let mut bytes = std::fs::read(initramfs).with_context(|| format!("reading {}", initramfs.display()))?;
    let yaml = std::fs::read(profile).with_context(|| format!("reading {}", profile.display()))?;
    let mut overlay = CpioWriter::new(Vec::new());
    overlay.file(GUEST_PROFILE, 0o644, &yaml)?;
    let overlay = overlay.finish()?;
    // Each archive in the initramfs starts on a 4-byte boundary.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.write_all(&overlay)?;
    let stem = initramfs
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = run_dir.join(format!("{stem}.initrd"));
    std::fs::write(&path, bytes)?;
    Ok(path)
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
