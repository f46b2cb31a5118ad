//! The process backend of the fault scenarios (`cluster-local --scenario`): each node a
//! `plexichat serve` process behind relays of its own — the one its clients come through,
//! one to NATS, one to PostgreSQL — which are the node's fault points. A crashed node is
//! started again as the same node: same id, same port, same directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use services::process::{self, cmd, Signal};
use services::teardown::{Guard, TempDir};
use services::{Relay, ServerProcess};

use super::dependencies::{DependencyRelays, ServiceAction, SharedServices};
use super::engine::{on_each, Backend};
use super::Member;
use crate::scenario::{Capabilities, FaultKind, Planned, Store};

const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A node's SQLite disk for `fill-disk`: small, so that filling it is quick.
const DISK_MIB: u32 = 16;

/// What every node is started with.
pub(crate) struct NodeSpec {
    /// The working tree's build.
    pub current: Build,
    /// An earlier revision's build, which the nodes start on (`--from`) until upgraded.
    pub from: Option<Build>,
    pub store: Store,
}

/// A server build and the profile its nodes run with (each revision reads its own).
pub(crate) struct Build {
    pub binary: PathBuf,
    pub profile: PathBuf,
}

pub(crate) struct ProcessCluster {
    nodes: Vec<ProcessNode>,
    services: SharedServices,
    spec: NodeSpec,
}

struct ProcessNode {
    id: String,
    /// Runs the working tree's build (else the `--from` one).
    upgraded: bool,
    /// The port the server itself listens on; clients reach it through `clients`.
    port: u16,
    server: Option<ServerProcess>,
    clients: Relay,
    dependencies: DependencyRelays,
    /// The node's SQLite disk (a tmpfs mounted by us) when the store is SQLite.
    disk: Option<Tmpfs>,
    dir: TempDir,
}

impl ProcessCluster {
    /// Starts `count` nodes, each reaching the shared `services` through relays of its own.
    pub(crate) fn start(count: usize, spec: NodeSpec, services: SharedServices) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            services,
            spec,
        };
        for index in 0..count {
            let node = cluster.new_node(format!("node-{index}"))?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn new_node(&self, id: String) -> Result<ProcessNode> {
        let dir = TempDir::new(&format!("scenario-{id}"))?;
        let port = services::free_port()?;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let disk = match self.spec.store {
            Store::Sqlite => Some(Tmpfs::mount(&dir.path().join("disk"), DISK_MIB)?),
            Store::Postgres => None,
        };
        let mut node = ProcessNode {
            id,
            upgraded: self.spec.from.is_none(),
            port,
            server: None,
            clients: Relay::start(loopback(port))?,
            dependencies: self.services.relays()?,
            disk,
            dir,
        };
        node.server = Some(self.launch(&node)?);
        Ok(node)
    }

    fn launch(&self, node: &ProcessNode) -> Result<ServerProcess> {
        let database_url = match (&node.dependencies.postgres, &node.disk) {
            (Some(relay), _) => format!("postgres://postgres@{}/postgres", relay.addr()),
            (None, Some(disk)) => format!("sqlite://{}", disk.path.join("plexichat.db").display()),
            (None, None) => bail!("{} has neither PostgreSQL nor a disk", node.id),
        };
        let build = match (&self.spec.from, node.upgraded) {
            (Some(from), false) => from,
            _ => &self.spec.current,
        };
        let mut command = Command::new(&build.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&build.profile)
            .args(["--listen", &format!("127.0.0.1:{}", node.port)])
            .args(["--database-url", &database_url])
            .args(["--node-id", &node.id])
            .current_dir(node.dir.path());
        if let Some(relay) = &node.dependencies.nats {
            command.args(["--nats-url", &format!("nats://{}", relay.addr())]);
        }
        ServerProcess::start(command, NODE_START_TIMEOUT).with_context(|| format!("starting {}", node.id))
    }

    fn node(&self, number: usize) -> Result<&ProcessNode> {
        self.nodes
            .get(number.wrapping_sub(1))
            .with_context(|| format!("no node {number}"))
    }

    fn relays_of(node: &ProcessNode) -> impl Iterator<Item = &Relay> {
        std::iter::once(&node.clients).chain(node.dependencies.iter())
    }

    pub(crate) fn description_pids(&self) -> Vec<(String, Option<u32>)> {
        self.nodes
            .iter()
            .map(|node| (node.id.clone(), node.server.as_ref().map(ServerProcess::pid)))
            .collect()
    }

    fn stop_node(&mut self, number: usize, how: Stop) -> Result<String> {
        let index = number - 1;
        let node = self.nodes.get_mut(index).with_context(|| format!("no node {number}"))?;
        let server = node
            .server
            .take()
            .with_context(|| format!("{} is not running", node.id))?;
        match how {
            Stop::Kill => server.kill()?,
            Stop::Terminate => server.terminate(STOP_TIMEOUT)?,
        }
        // Its clients' connections die with it, as they would with the host.
        node.clients.reset_connections();
        Ok(format!("{} {}", node.id, how.past()))
    }

    fn restart_node(&mut self, number: usize) -> Result<String> {
        let node = self.node(number)?;
        let server = self.launch(node)?;
        let detail = format!("{} started again in {:.2} s", node.id, server.started_in.as_secs_f64());
        self.nodes[number - 1].server = Some(server);
        Ok(detail)
    }

    /// Stops a node cleanly and starts it again as itself from the working tree's build;
    /// the detail says how long it was out (stopped until listening again).
    fn upgrade_node(&mut self, number: usize) -> Result<String> {
        let stopping = std::time::Instant::now();
        let stopped = self.stop_node(number, Stop::Terminate)?;
        let node = self.nodes.get_mut(number - 1).context("a node stopped just now")?;
        if node.upgraded {
            bail!("{} already runs the working tree's build", node.id);
        }
        node.upgraded = true;
        let started = self.restart_node(number)?;
        Ok(format!(
            "{stopped}; {started}; out {:.2} s",
            stopping.elapsed().as_secs_f64()
        ))
    }

    fn signal_node(&self, number: usize, signal: Signal) -> Result<String> {
        let node = self.node(number)?;
        let pid = node
            .server
            .as_ref()
            .map(ServerProcess::pid)
            .with_context(|| format!("{} is not running", node.id))?;
        if !process::signal(pid, signal) {
            bail!("{} (pid {pid}) is gone", node.id);
        }
        Ok(format!("{} {signal}", node.id))
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Kill,
    Terminate,
}

impl Stop {
    fn past(self) -> &'static str {
        match self {
            Stop::Kill => "killed (SIGKILL)",
            Stop::Terminate => "shut down (SIGTERM)",
        }
    }
}

impl ProcessCluster {
    /// What `nodes` processes on `store` can be put through. A cluster runs on PostgreSQL
    /// and NATS; a single SQLite node owns a disk of its own and depends on no service.
    pub(crate) fn capabilities_for(nodes: usize, store: Store, upgradable: bool) -> Capabilities {
        Capabilities::of_cluster("processes", nodes, store, upgradable, false)
    }
}

impl Backend for ProcessCluster {
    fn capabilities(&self) -> Capabilities {
        Self::capabilities_for(self.nodes.len(), self.spec.store, self.spec.from.is_some())
    }

    fn members(&self) -> Vec<Member> {
        self.nodes
            .iter()
            .map(|node| Member {
                id: node.id.clone(),
                addr: node.clients.addr(),
            })
            .collect()
    }

    fn start(&mut self, fault: &Planned) -> Result<String> {
        match fault.fault {
            // A process has no page cache of its own to lose: a power cut is a kill, and
            // what it tests is that the server acknowledged nothing it had not committed.
            FaultKind::Crash | FaultKind::PowerCut => on_each(self, fault, |c, n| c.stop_node(n, Stop::Kill)),
            FaultKind::Reboot => on_each(self, fault, |c, n| {
                let stopped = c.stop_node(n, Stop::Kill)?;
                Ok(format!("{stopped}; {}", c.restart_node(n)?))
            }),
            // What a power button does to a host: an orderly shutdown.
            FaultKind::PowerButton => on_each(self, fault, |c, n| c.stop_node(n, Stop::Terminate)),
            FaultKind::Freeze => on_each(self, fault, |c, n| c.signal_node(n, Signal::SIGSTOP)),
            FaultKind::CutOff => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                Self::relays_of(node).for_each(Relay::cut);
                Ok(format!("{} cut off", node.id))
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
            FaultKind::SlowLink => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                let latency = fault.latency.unwrap_or_default();
                Self::relays_of(node).for_each(|relay| relay.set_latency(latency));
                Ok(format!("{} +{latency:?} each way", node.id))
            }),
            FaultKind::FillDisk => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                let disk = node
                    .disk
                    .as_ref()
                    .context("the node's store is not on a disk of ours")?;
                Ok(format!("{}: {}", node.id, disk.fill()?))
            }),
            FaultKind::KillService => self.services.act(fault.service, ServiceAction::Kill),
            FaultKind::FreezeService => self.services.act(fault.service, ServiceAction::Freeze),
            FaultKind::RestartService => self.services.act(fault.service, ServiceAction::Restart),
            FaultKind::Upgrade => on_each(self, fault, |c, n| c.upgrade_node(n)),
            FaultKind::DropAcknowledged => bail!("drop-acknowledged is the engine's to run"),
            FaultKind::Snapshot | FaultKind::Restore => bail!("processes have no snapshots: the VM backend has"),
        }
    }

    fn heal(&mut self, fault: &Planned) -> Result<String> {
        match fault.fault {
            FaultKind::Crash | FaultKind::PowerCut | FaultKind::PowerButton => {
                on_each(self, fault, |c, n| c.restart_node(n))
            }
            FaultKind::Freeze => on_each(self, fault, |c, n| c.signal_node(n, Signal::SIGCONT)),
            FaultKind::CutOff | FaultKind::CutFrom => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                Self::relays_of(node).for_each(Relay::restore);
                Ok(format!("{} restored", node.id))
            }),
            FaultKind::SlowLink => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                Self::relays_of(node).for_each(|relay| relay.set_latency(Duration::ZERO));
                Ok(format!("{} at full speed", node.id))
            }),
            FaultKind::FillDisk => on_each(self, fault, |c, n| {
                let node = c.node(n)?;
                node.disk.as_ref().context("no disk")?.free()?;
                Ok(format!("{}: disk freed", node.id))
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

/// A small tmpfs of ours, mounted under a node's directory for its SQLite file, and
/// unmounted by its guard (when dropped, or on Ctrl-C).
struct Tmpfs {
    path: PathBuf,
    _unmount: Guard,
}

impl Tmpfs {
    /// The file that fills the disk.
    const FILLER: &'static str = "filler";

    fn mount(path: &Path, mebibytes: u32) -> Result<Self> {
        if !services::host::is_root() {
            bail!("a node's disk is a tmpfs, and mounting one needs root\n  fix: run as root");
        }
        std::fs::create_dir_all(path)?;
        let size = format!("size={mebibytes}m");
        let sh = process::shell()?;
        process::run(cmd!(sh, "mount -t tmpfs -o {size} tmpfs {path}"))?;
        let mounted = path.to_path_buf();
        let unmount = Guard::new(move || {
            if let Ok(sh) = process::shell() {
                // Lazily: a server still holding its file must not keep the mount behind.
                let _ = process::run(cmd!(sh, "umount -l {mounted}"));
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            _unmount: unmount,
        })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> Result<String> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.path.join(Self::FILLER))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        while file.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        // The last partial chunk: byte by byte is not needed, tmpfs takes pages.
        let _ = file.flush();
        Ok(format!("disk filled ({} KiB written)", written / 1024))
    }

    fn free(&self) -> Result<()> {
        std::fs::remove_file(self.path.join(Self::FILLER)).context("removing the filler file")
    }
}
