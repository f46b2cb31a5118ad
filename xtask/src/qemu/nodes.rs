//! The VM backend of the fault scenarios (`qemu-cluster --scenario`): each node a VM with
//! a data disk of its own, reaching PostgreSQL and NATS through relays of its own on the
//! host (its fault points for one dependency), faulted as a hypervisor or a dying host
//! would: over QMP, and through the guest agent for what only the guest can do. A node
//! crashed or powered off boots again as itself: same id, port, disk and relays; an
//! upgraded one boots so from the new build's image. The whole cluster can be saved and
//! put back (QMP `snapshot-save`/`snapshot-load` onto each VM's qcow2 disk, with the
//! database the nodes share): for canaries and for scenario steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::runtime::Runtime;

use super::disk::{DataDisk, NODE_NAME};
use super::vm::{self, Launch, Vm, BOOT_TIMEOUT, HOST_FROM_GUEST, NETDEV, NIC};
use crate::cluster::canary::{Saved, SnapshotFigures, Snapshots};
use crate::cluster::dependencies::{DependencyRelays, ServiceAction, SharedServices};
use crate::cluster::engine::{on_each, Backend};
use crate::cluster::scenario_report::VmUsage;
use crate::cluster::{Member, NodeDescription};
use crate::guest::{image, Accelerator, ImageDefinition};
use crate::report::progress::Task;
use crate::scenario::{Capabilities, FaultKind, Planned, Store};
use crate::workspace::Workspace;

/// Each VM's data disk: room for a scenario's posts, small enough to fill quickly.
const DISK_MIB: u32 = 64;
/// The id of the slow-link filter on a VM's netdev.
const SLOW_LINK: &str = "slow-link";
/// How long QEMU may take to exit after `quit` or a guest power-off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One guest architecture's machine: what its VMs boot.
pub(crate) struct Machine {
    pub definition: ImageDefinition,
    pub accelerator: Accelerator,
    /// The build the nodes run (once upgraded, when they start on an earlier one).
    pub current: Boot,
    /// The earlier revision's build, which the nodes boot until upgraded (`--from`).
    pub earlier: Option<Boot>,
}

/// A guest image ready to boot: its kernel and its initramfs with the profile in it.
pub(crate) struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The SHA-256 of the server binary that is its /init: which build a verdict is of.
    pub binary_sha256: String,
}

impl Boot {
    /// The image of `definition` with `binary` as /init (a `variant` for another build's,
    /// see [`image::ensure`]) and the profile at `profile` in it, its initrd written into
    /// `run_dir`.
    pub(crate) fn make(
        workspace: &Workspace,
        definition: &ImageDefinition,
        binary: PathBuf,
        variant: Option<&str>,
        profile: &Path,
        run_dir: &Path,
        task: &Task,
    ) -> Result<Self> {
        let binary_sha256 =
            crate::system::file_sha256(&binary).with_context(|| format!("reading {}", binary.display()))?;
        let image = image::ensure(workspace, definition, binary, variant, task)?;
        Ok(Self {
            initrd: super::with_profile(&image.initramfs, profile, run_dir)?,
            kernel: image.kernel,
            binary_sha256,
        })
    }
}

/// Where a cluster's VMs keep their sockets and disks, and their logs.
pub(crate) struct Places {
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

pub(crate) struct VmCluster {
    machines: Vec<Machine>,
    nodes: Vec<VmNode>,
    services: SharedServices,
    store: Store,
    places: Places,
    runtime: Arc<Runtime>,
    /// The snapshots `snapshot` steps took, with their figures.
    saved: Vec<Saved>,
}

/// The tag of the snapshot scenario step `step` takes.
fn snapshot_tag(step: usize) -> String {
    format!("step-{step}")
}

struct VmNode {
    id: String,
    machine: usize,
    http_port: u16,
    settings: Vec<String>,
    disk: DataDisk,
    dependencies: DependencyRelays,
    /// Boots the current build (else its machine's earlier one).
    upgraded: bool,
    /// Per snapshot saved: whether the node ran the current build then.
    snapshots: BTreeMap<String, bool>,
    /// How many times the node was started again as itself.
    generation: u32,
    vm: Option<Vm>,
    healthy_seconds: f64,
    /// What the node's earlier lives cost: their QEMU processes are gone.
    earlier: Usage,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

impl VmCluster {
    /// Launches a VM per entry of `arches` (an index into `machines`), each with a new data
    /// disk and, on PostgreSQL, its own relays to `services`; waits until every one is
    /// healthy.
    pub(crate) fn start(
        machines: Vec<Machine>,
        arches: &[usize],
        services: SharedServices,
        store: Store,
        places: Places,
        task: &Task,
    ) -> Result<Self> {
        let mut cluster = Self {
            machines,
            nodes: Vec::new(),
            services,
            store,
            places,
            runtime: super::qmp::runtime()?,
            saved: Vec::new(),
        };
        for (index, &machine) in arches.iter().enumerate() {
            let id = format!("node-{index}");
            let disk = DataDisk::create(&cluster.places.run_dir.join(format!("{id}.qcow2")), DISK_MIB)?;
            // None on SQLite: a single node there depends on no service.
            let dependencies = cluster.services.relays()?;
            // The guest reaches the host's loopback, where the relays listen, at the gateway.
            let via_gateway = |relay: &services::Relay| format!("{HOST_FROM_GUEST}:{}", relay.addr().port());
            let database_url = dependencies
                .postgres
                .as_ref()
                .map(|relay| format!("postgres://postgres@{}/postgres", via_gateway(relay)));
            let nats_url = dependencies
                .nats
                .as_ref()
                .map(|relay| format!("nats://{}", via_gateway(relay)));
            cluster.nodes.push(VmNode {
                settings: vm::node_settings(&id, database_url.as_deref(), nats_url.as_deref()),
                id,
                machine,
                http_port: services::free_port()?,
                disk,
                dependencies,
                upgraded: cluster.machines[machine].earlier.is_none(),
                snapshots: BTreeMap::new(),
                generation: 0,
                vm: None,
                healthy_seconds: 0.0,
                earlier: Usage::default(),
            });
        }
        for number in 1..=cluster.nodes.len() {
            let node = &cluster.nodes[number - 1];
            task.step(format!("booting {}", node.id));
            let vm = cluster.launch(node)?;
            cluster.nodes[number - 1].vm = Some(vm);
        }
        for node in &mut cluster.nodes {
            task.step(format!("waiting for {} to be healthy", node.id));
            let vm = node.vm.as_ref().context("launched")?;
            vm.wait_healthy(BOOT_TIMEOUT)?;
            node.healthy_seconds = vm.launched_at.elapsed().as_secs_f64();
        }
        Ok(cluster)
    }

    fn launch(&self, node: &VmNode) -> Result<Vm> {
        let machine = &self.machines[node.machine];
        let boot = match (&machine.earlier, node.upgraded) {
            (Some(earlier), false) => earlier,
            _ => &machine.current,
        };
        let launch = Launch {
            node_id: node.id.clone(),
            definition: &machine.definition,
            accelerator: machine.accelerator,
            kernel: &boot.kernel,
            initrd: &boot.initrd,
            http_port: node.http_port,
            data_disk: Some(&node.disk),
            generation: node.generation,
            settings: node.settings.clone(),
            run_dir: &self.places.run_dir,
            log_dir: &self.places.log_dir,
        };
        Vm::launch(launch, &self.runtime)
    }

    /// What the nodes are, for the cluster description.
    pub(crate) fn describe(&self) -> Vec<NodeDescription> {
        self.nodes
            .iter()
            .map(|node| NodeDescription {
                node_id: node.id.clone(),
                url: format!("http://127.0.0.1:{}", node.http_port),
                arch: self.machines[node.machine].definition.arch.clone(),
                healthy_seconds: node.healthy_seconds,
                pid: None,
                qmp_socket: node.vm.as_ref().map(|vm| vm.user_qmp_socket.clone()),
            })
            .collect()
    }

    /// The snapshots the scenario's steps took, with their sizes and times.
    pub(crate) fn snapshots(&self) -> Vec<Saved> {
        self.saved.clone()
    }

    /// What each VM cost the host so far.
    pub(crate) fn usage(&self) -> Vec<VmUsage> {
        self.nodes
            .iter()
            .map(|node| {
                let now = node.current_usage();
                VmUsage {
                    node_id: node.id.clone(),
                    arch: self.machines[node.machine].definition.arch.clone(),
                    boots: node.generation + 1,
                    cpu_seconds: node.earlier.cpu_seconds + now.cpu_seconds,
                    peak_rss_mib: node.earlier.peak_rss_mib.max(now.peak_rss_mib),
                }
            })
            .collect()
    }

    /// What `nodes` VMs on `store` can be put through: the faults of the process backend
    /// (a single SQLite node has no shared services, a cluster's data is in PostgreSQL),
    /// and upgrades when they boot an earlier revision.
    pub(crate) fn capabilities_for(nodes: usize, store: Store, upgradable: bool) -> Capabilities {
        Capabilities::of_cluster("vms", nodes, store, upgradable, true)
    }

    fn node(&self, number: usize) -> Result<&VmNode> {
        self.nodes
            .get(number.wrapping_sub(1))
            .with_context(|| format!("no node {number}"))
    }

    fn running(&self, number: usize) -> Result<(&VmNode, &Vm)> {
        let node = self.node(number)?;
        let vm = node
            .vm
            .as_ref()
            .with_context(|| format!("{} is not running", node.id))?;
        Ok((node, vm))
    }

    /// Ends a node's VM: at once (`quit`: a crash, a power cut), or with the power button.
    fn stop_node(&mut self, number: usize, how: Stop) -> Result<String> {
        let node = self
            .nodes
            .get_mut(number.wrapping_sub(1))
            .with_context(|| format!("no node {number}"))?;
        let vm = node
            .vm
            .as_ref()
            .with_context(|| format!("{} is not running", node.id))?;
        // Read before QEMU is gone, with its /proc entry.
        let usage = node.current_usage();
        let detail = match how {
            Stop::Quit => {
                vm.qmp.quit()?;
                if !vm.wait_exit(EXIT_TIMEOUT) {
                    bail!("QEMU for {} kept running after QMP quit", node.id);
                }
                format!("{} lost power (QMP quit)", node.id)
            }
            Stop::PowerButton => {
                let took = vm.power_off(EXIT_TIMEOUT)?;
                format!("{} powered off in {:.1} s (power button)", node.id, took.as_secs_f64())
            }
        };
        node.earlier = node.earlier.add(usage);
        node.vm = None;
        Ok(detail)
    }

    /// Boots a stopped node again as itself: same id, port, disk and relays.
    fn restart_node(&mut self, number: usize) -> Result<String> {
        let index = number.wrapping_sub(1);
        let node = self.nodes.get_mut(index).with_context(|| format!("no node {number}"))?;
        node.generation += 1;
        let node = &self.nodes[index];
        let vm = self.launch(node)?;
        let took = vm.wait_healthy(BOOT_TIMEOUT)?;
        let detail = format!(
            "{} booted again (boot {}) and healthy in {:.1} s",
            node.id,
            node.generation + 1,
            took.as_secs_f64()
        );
        self.nodes[index].vm = Some(vm);
        Ok(detail)
    }

    /// Powers a node off with its power button and boots it again as itself from the
    /// current build; the detail says how long it was out (power button until healthy).
    fn upgrade_node(&mut self, number: usize) -> Result<String> {
        let pressed = std::time::Instant::now();
        let node = self.node(number)?;
        if node.upgraded {
            bail!("{} already runs the current build", node.id);
        }
        let stopped = self.stop_node(number, Stop::PowerButton)?;
        self.nodes[number - 1].upgraded = true;
        let booted = self.restart_node(number)?;
        Ok(format!(
            "{stopped}; {booted}; out {:.1} s",
            pressed.elapsed().as_secs_f64()
        ))
    }

    /// Does `act` to every running VM.
    fn each_vm(&self, act: impl Fn(&Vm) -> Result<()>) -> Result<()> {
        self.nodes.iter().filter_map(|node| node.vm.as_ref()).try_for_each(act)
    }

    fn qmp(&self, number: usize, what: &str, act: impl FnOnce(&Vm) -> Result<()>) -> Result<String> {
        let (node, vm) = self.running(number)?;
        act(vm)?;
        Ok(format!("{}: {what}", node.id))
    }
}

impl VmNode {
    fn current_usage(&self) -> Usage {
        self.vm
            .as_ref()
            .map(|vm| Usage {
                cpu_seconds: vm.cpu_seconds().unwrap_or_default(),
                peak_rss_mib: vm.peak_rss_mib().unwrap_or_default(),
            })
            .unwrap_or_default()
    }
}

impl Usage {
    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            peak_rss_mib: self.peak_rss_mib.max(other.peak_rss_mib),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Quit,
    PowerButton,
}

impl Backend for VmCluster {
    fn capabilities(&self) -> Capabilities {
        let upgradable = self.machines.iter().any(|machine| machine.earlier.is_some());
        Self::capabilities_for(self.nodes.len(), self.store, upgradable)
    }

    fn members(&self) -> Vec<Member> {
        self.nodes
            .iter()
            .map(|node| Member {
                id: node.id.clone(),
                addr: ([127, 0, 0, 1], node.http_port).into(),
            })
            .collect()
    }

    fn start(&mut self, fault: &Planned) -> Result<String> {
        match fault.fault {
            // To a VM, a crash of its host and a power cut are the same: QEMU ends with the
            // guest's page cache, and only what reached the disk survives.
            FaultKind::Crash | FaultKind::PowerCut => on_each(self, fault, |c, n| c.stop_node(n, Stop::Quit)),
            FaultKind::PowerButton => on_each(self, fault, |c, n| c.stop_node(n, Stop::PowerButton)),
            FaultKind::Reboot => on_each(self, fault, |c, n| {
                c.qmp(n, "reset (QMP system_reset)", |vm| vm.qmp.system_reset())
            }),
            FaultKind::Freeze => on_each(self, fault, |c, n| c.qmp(n, "paused (QMP stop)", |vm| vm.qmp.stop())),
            FaultKind::CutOff => on_each(self, fault, |c, n| {
                c.qmp(n, "link down (QMP set_link)", |vm| vm.qmp.set_link(NIC, false))
            }),
            FaultKind::SlowLink => on_each(self, fault, |c, n| {
                let latency = fault.latency.unwrap_or_default();
                c.qmp(n, &format!("packets held {latency:?} (filter-buffer)"), |vm| {
                    vm.qmp.add_delay(SLOW_LINK, NETDEV, latency)
                })
            }),
            FaultKind::CutFrom => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                node.dependencies.to(fault.dependency)?.cut();
                Ok(format!(
                    "{} cut from {}",
                    node.id,
                    fault.dependency.map(|d| d.to_string()).unwrap_or_default()
                ))
            }),
            FaultKind::FillDisk => on_each(self, fault, |c, n| {
                let (node, vm) = c.running(n)?;
                Ok(format!("{}: {}", node.id, vm.agent("fill-disk")?))
            }),
            FaultKind::KillService => self.services.act(fault.service, ServiceAction::Kill),
            FaultKind::FreezeService => self.services.act(fault.service, ServiceAction::Freeze),
            FaultKind::RestartService => self.services.act(fault.service, ServiceAction::Restart),
            FaultKind::DropAcknowledged => bail!("drop-acknowledged is the engine's to run"),
            FaultKind::Upgrade => on_each(self, fault, |c, n| c.upgrade_node(n)),
            FaultKind::Snapshot => {
                let saved = self.save(&snapshot_tag(fault.step))?;
                let detail = saved.describe();
                self.saved.push(saved);
                Ok(detail)
            }
            FaultKind::Restore => {
                let tag = snapshot_tag(fault.restores.context("a restore names no snapshot")?);
                let index = self
                    .saved
                    .iter()
                    .rposition(|saved| saved.tag == tag)
                    .with_context(|| format!("no snapshot {tag} was taken"))?;
                // Its figures gain the load times of the latest restore.
                let mut snapshot = self.saved[index].clone();
                self.restore(&mut snapshot)?;
                let detail = format!("the cluster put back to {tag}: {}", snapshot.describe());
                self.saved[index] = snapshot;
                Ok(detail)
            }
        }
    }

    fn heal(&mut self, fault: &Planned) -> Result<String> {
        match fault.fault {
            FaultKind::Crash | FaultKind::PowerCut | FaultKind::PowerButton => {
                on_each(self, fault, |c, n| c.restart_node(n))
            }
            FaultKind::Freeze => on_each(self, fault, |c, n| c.qmp(n, "resumed (QMP cont)", |vm| vm.qmp.cont())),
            FaultKind::CutOff => on_each(self, fault, |c, n| {
                c.qmp(n, "link up (QMP set_link)", |vm| vm.qmp.set_link(NIC, true))
            }),
            FaultKind::SlowLink => on_each(self, fault, |c, n| {
                c.qmp(n, "at full speed", |vm| vm.qmp.remove_object(SLOW_LINK))
            }),
            FaultKind::CutFrom => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                node.dependencies.iter().for_each(services::Relay::restore);
                Ok(format!("{} restored", node.id))
            }),
            FaultKind::FillDisk => on_each(self, fault, |c, n| {
                let (node, vm) = c.running(n)?;
                Ok(format!("{}: {}", node.id, vm.agent("free-disk")?))
            }),
            FaultKind::KillService => self.services.act(fault.service, ServiceAction::Start),
            FaultKind::FreezeService => self.services.act(fault.service, ServiceAction::Thaw),
            FaultKind::Reboot
            | FaultKind::RestartService
            | FaultKind::DropAcknowledged
            | FaultKind::Upgrade
            | FaultKind::Snapshot
            | FaultKind::Restore => Ok("nothing to heal".into()),
        }
    }

    fn drop_message(&mut self, id: i64) -> Result<String> {
        self.services.drop_message(id)
    }
}

impl Snapshots for VmCluster {
    /// Keeps the whole cluster as snapshot `tag`: every VM stopped at one moment, the
    /// shared database copied, each VM's memory, devices and disk saved onto its qcow2
    /// disk, and every VM running again.
    fn save(&mut self, tag: &str) -> Result<Saved> {
        self.each_vm(|vm| vm.qmp.stop())?;
        let database = self.services.save_database(tag)?;
        let mut vms = Vec::new();
        for node in &mut self.nodes {
            let vm = node
                .vm
                .as_ref()
                .with_context(|| format!("{} is not running", node.id))?;
            let took = vm.qmp.snapshot_save(tag, NODE_NAME)?;
            node.snapshots.insert(tag.to_string(), node.upgraded);
            vms.push(SnapshotFigures {
                node_id: node.id.clone(),
                vm_state_mib: mib(node.disk.snapshot_bytes(tag)?),
                disk_file_mib: mib(node.disk.file_bytes()?),
                save_seconds: took.as_secs_f64(),
                load_seconds: None,
            });
        }
        self.each_vm(|vm| vm.qmp.cont())?;
        Ok(Saved {
            tag: tag.to_string(),
            database_save_seconds: database.map(|took| took.as_secs_f64()),
            database_load_seconds: None,
            vms,
        })
    }

    /// Puts the whole cluster back to snapshot `tag` (see [`Self::save`]): every VM
    /// stopped, the database put back, each VM loaded, every VM running again and
    /// healthy. Each node runs again the build it ran then. Fills in the load times.
    fn restore(&mut self, saved: &mut Saved) -> Result<()> {
        let tag = saved.tag.clone();
        self.each_vm(|vm| vm.qmp.stop())?;
        saved.database_load_seconds = self.services.restore_database(&tag)?.map(|took| took.as_secs_f64());
        for node in &mut self.nodes {
            let vm = node
                .vm
                .as_ref()
                .with_context(|| format!("{} is not running", node.id))?;
            let took = vm.qmp.snapshot_load(&tag, NODE_NAME)?;
            node.upgraded = *node
                .snapshots
                .get(&tag)
                .with_context(|| format!("{} has no snapshot {tag}", node.id))?;
            if let Some(figures) = saved.vms.iter_mut().find(|figures| figures.node_id == node.id) {
                figures.load_seconds = Some(took.as_secs_f64());
            }
        }
        // Each node's connections to NATS and PostgreSQL went back in time with it, and
        // their far ends moved on: ended now, so that the node sees them dead and connects
        // again at once, instead of at its client's next keepalive (NATS: minutes).
        for node in &self.nodes {
            node.dependencies.iter().for_each(services::Relay::reset_connections);
        }
        self.each_vm(|vm| vm.qmp.cont())?;
        for node in &self.nodes {
            node.vm.as_ref().context("restored")?.wait_healthy(BOOT_TIMEOUT)?;
        }
        Ok(())
    }
}
