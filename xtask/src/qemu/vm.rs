//! One PlexiChat node in a QEMU VM: launched with its serial log and QMP socket, a
//! loopback-only forward of its HTTP port, and a guard that ends it however the run
//! ends — over QMP first, with signals only as the last resort.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use services::process::{self, ProcessGuard, Signal};
use tokio::runtime::Runtime;

use super::disk::DataDisk;
use super::qmp::{Qmp, VmEvent};
use crate::cluster::Member;
use crate::guest::{Accelerator, ImageDefinition, Powerdown};
use crate::system::{http, status_kib};

/// The port the guest serves on; QEMU forwards a loopback port of the host to it.
pub const GUEST_HTTP_PORT: u16 = 8000;
/// Where a guest reaches the host under QEMU's user-mode networking.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// Where the node's profile sits inside the guest (an overlay on the image's initramfs).
pub const GUEST_PROFILE: &str = "/etc/plexichat/profile.yaml";
/// Boot to first healthy answer, under TCG on a loaded 2-core host.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The ids of the VM's network backend and NIC on the QEMU command line.
pub const NETDEV: &str = "net0";
pub const NIC: &str = "nic0";
/// The name of the guest agent's virtio-serial port: the guest's init looks for it.
const AGENT_PORT: &str = "org.plexichat.agent.0";
/// How long the agent may take to answer (filling a disk under TCG takes a while).
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a clean power-off may take at teardown before QMP `quit` ends the VM.
const TEARDOWN_POWERDOWN: Duration = Duration::from_secs(5);
/// How long QEMU may take to exit once told to.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// What a VM is launched with.
pub struct Launch<'a> {
    pub node_id: String,
    pub definition: &'a ImageDefinition,
    pub accelerator: Accelerator,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The loopback port forwarded to the guest's HTTP port: kept across restarts.
    pub http_port: u16,
    /// The disk init mounts on /data; without one, /data is a tmpfs.
    pub data_disk: Option<&'a DataDisk>,
    /// 0 for the first boot; a node restarted as itself appends to its logs.
    pub generation: u32,
    /// Appended to the definition's kernel command line: the node's settings.
    pub settings: Vec<String>,
    /// Where the QMP socket goes (a private temporary directory).
    pub run_dir: &'a Path,
    /// Where the serial console and QEMU's own messages are written.
    pub log_dir: &'a Path,
}

pub struct Vm {
    pub node_id: String,
    pub arch: String,
    pub accelerator: Accelerator,
    pub http: SocketAddr,
    /// The toolchain's own QMP monitor: it holds the only connection QEMU allows on it.
    pub qmp_socket: PathBuf,
    /// A second monitor, left free for the user's QMP clients while the VM runs.
    pub user_qmp_socket: PathBuf,
    /// The host end of the guest agent's port.
    agent_socket: PathBuf,
    pub serial_log: PathBuf,
    pub launched_at: Instant,
    pub qmp: Arc<Qmp>,
    /// How this machine's power button is pressed.
    powerdown: Powerdown,
    process: ProcessGuard,
    qemu_log: PathBuf,
}

impl Vm {
    /// Starts QEMU and negotiates QMP; the guest boots in the background.
    pub fn launch(launch: Launch<'_>, runtime: &Arc<Runtime>) -> Result<Self> {
        let port = launch.http_port;
        let http: SocketAddr = ([127, 0, 0, 1], port).into();
        let sockets = Sockets {
            qmp: [
                launch.run_dir.join(format!("{}.toolchain.qmp", launch.node_id)),
                launch.run_dir.join(format!("{}.qmp", launch.node_id)),
            ],
            agent: launch.run_dir.join(format!("{}.agent", launch.node_id)),
        };
        let serial_log = launch.log_dir.join(format!("{}.serial.log", launch.node_id));
        let qemu_log = launch.log_dir.join(format!("{}.qemu.log", launch.node_id));
        if launch.generation == 0 {
            // A new run's logs; a restarted node's follow its earlier lives'.
            for log in [&serial_log, &qemu_log] {
                File::create(log).with_context(|| format!("creating {}", log.display()))?;
            }
        }
        let command = qemu_command(&launch, port, &sockets, &serial_log, &qemu_log)?;
        let Sockets {
            qmp: [qmp_socket, user_qmp_socket],
            agent: agent_socket,
        } = sockets;
        let launched_at = Instant::now();
        let child = spawn(command, &launch.definition.qemu.binary)?;
        // Teardown needs the QMP connection, which exists only once negotiated.
        let qmp_slot: Arc<Mutex<Option<Arc<Qmp>>>> = Arc::default();
        let for_teardown = qmp_slot.clone();
        let powerdown = launch.definition.qemu.powerdown;
        let process = ProcessGuard::with_teardown(child, move |child| {
            let qmp = for_teardown.lock().unwrap_or_else(|p| p.into_inner()).take();
            end(child, qmp.as_deref(), powerdown);
        });
        let qmp = match Qmp::connect(runtime.clone(), &qmp_socket) {
            Ok(qmp) => Arc::new(qmp),
            Err(err) => {
                let said = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                return Err(err.context(format!("QEMU for {} said: {}", launch.node_id, said.trim())));
            }
        };
        *qmp_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(qmp.clone());
        Ok(Self {
            node_id: launch.node_id,
            arch: launch.definition.arch.clone(),
            accelerator: launch.accelerator,
            http,
            qmp_socket,
            user_qmp_socket,
            agent_socket,
            serial_log,
            launched_at,
            qmp,
            powerdown,
            process,
            qemu_log,
        })
    }

    pub fn member(&self) -> Member {
        Member {
            id: self.node_id.clone(),
            addr: self.http,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn pid(&self) -> u32 {
        self.process.child().id()
    }

    /// Whether QEMU has exited.
    pub fn exited(&self) -> bool {
        !matches!(self.process.child().try_wait(), Ok(None))
    }

    /// Waits until the guest answers /health, failing early if QEMU exits. Each probe
    /// has its own short timeout: while the guest boots (or is paused) the forwarded
    /// port accepts connections that nobody answers.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = http::request_within(Duration::from_secs(2), self.http, "GET", "/health", None, None)
            {
                return Ok(started.elapsed());
            }
            if self.exited() {
                bail!("QEMU exited before {} was healthy{}", self.node_id, self.last_words());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} was not healthy within {timeout:?}{}",
                    self.node_id,
                    self.last_words()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end of the serial console and QEMU's own messages, for error reports.
    pub fn last_words(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n    ")
        };
        format!(
            "\n  serial console ({}):\n    {}\n  QEMU: {}",
            self.serial_log.display(),
            tail(&self.serial_log),
            tail(&self.qemu_log)
        )
    }

    /// QEMU's resident memory, in MiB: what a VM really costs the host.
    pub fn rss_mib(&self) -> Option<f64> {
        status_kib(self.pid(), "VmRSS:").map(|kib| kib / 1024.0)
    }

    /// QEMU's CPU time so far (user and system), in seconds: what the VM cost the host.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        Some(ticks as f64 / per_second as f64)
    }

    /// QEMU's peak resident memory, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        status_kib(self.pid(), "VmHWM:").map(|kib| kib / 1024.0)
    }

    /// Sends one request to the guest agent (`fill-disk`, `free-disk`, `ping`) and returns
    /// its answer; an `error …` answer is an error.
    pub fn agent(&self, request: &str) -> Result<String> {
        use std::io::{BufRead as _, BufReader, Write as _};
        let stream = std::os::unix::net::UnixStream::connect(&self.agent_socket)
            .with_context(|| format!("connecting to {}'s agent", self.node_id))?;
        stream.set_read_timeout(Some(AGENT_TIMEOUT))?;
        writeln!(&stream, "{request}")?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .with_context(|| format!("{}'s agent did not answer `{request}`", self.node_id))?;
        let answer = answer.trim();
        match answer.split_once(' ') {
            Some(("ok", detail)) => Ok(detail.to_string()),
            _ => bail!("{}'s agent answered `{request}` with: {answer}", self.node_id),
        }
    }

    /// Waits for QEMU to exit; true if it did within `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        wait_exit(&mut self.process.child(), timeout)
    }

    /// Presses the power button and waits for the guest to shut itself down and QEMU
    /// to exit; returns how long that took.
    pub fn power_off(&self, timeout: Duration) -> Result<Duration> {
        let pressed = Instant::now();
        press_power_button(&self.qmp, self.powerdown)?;
        let shutdown = self.qmp.wait_for(pressed, timeout, |event| {
            matches!(event, VmEvent::Shutdown { guest: true, .. })
        });
        let took = pressed.elapsed();
        if !self.wait_exit(EXIT_GRACE) {
            bail!("QEMU for {} kept running after the power button", self.node_id);
        }
        match shutdown {
            Ok(_) => Ok(took),
            // riscv64 virt's power-off (OpenSBI's test finisher) ends QEMU at once with
            // status 0, before any SHUTDOWN event.
            Err(_) if self.exit_status().is_some_and(|status| status.success()) => Ok(took),
            Err(err) => Err(err.context(format!(
                "{} did not shut down on the power button{}",
                self.node_id,
                self.last_words()
            ))),
        }
    }

    /// How QEMU exited, once it has.
    fn exit_status(&self) -> Option<ExitStatus> {
        self.process.child().try_wait().ok().flatten()
    }
}

/// A node's settings, for the kernel command line: its id, where it listens, its profile,
/// and — when not the profile's own — where its database and NATS are, as the guest
/// reaches them.
pub fn node_settings(node_id: &str, database_url: Option<&str>, nats_url: Option<&str>) -> Vec<String> {
    let mut settings = vec![
        format!("plexichat.node_id={node_id}"),
        format!("plexichat.listen=0.0.0.0:{GUEST_HTTP_PORT}"),
        format!("plexichat.config={GUEST_PROFILE}"),
    ];
    settings.extend(database_url.map(|url| format!("plexichat.database_url={url}")));
    settings.extend(nats_url.map(|url| format!("plexichat.nats_url={url}")));
    settings
}

/// The host ends of a VM's sockets: its two QMP monitors and the guest agent's port.
struct Sockets {
    qmp: [PathBuf; 2],
    agent: PathBuf,
}

fn qemu_command(
    launch: &Launch<'_>,
    port: u16,
    sockets: &Sockets,
    serial_log: &Path,
    qemu_log: &Path,
) -> Result<Command> {
    let qemu = &launch.definition.qemu;
    let mut cmdline = launch.definition.cmdline.clone();
    for setting in &launch.settings {
        cmdline.push(' ');
        cmdline.push_str(setting);
    }
    // QEMU runs until its guard ends it: a child of ours, not a command.
    let mut command = Command::new(&qemu.binary);
    command
        .args(["-name", &launch.node_id])
        .args(super::machine_args(
            launch.definition,
            launch.accelerator,
            launch.kernel,
            launch.initrd,
            &cmdline,
        ))
        // Appended to: a node restarted as itself keeps one console transcript.
        .arg("-chardev")
        .arg(format!("file,id=serial0,path={},append=on", serial_log.display()))
        .args(["-serial", "chardev:serial0"])
        .args([
            "-netdev",
            &format!("user,id={NETDEV},hostfwd=tcp:127.0.0.1:{port}-:{GUEST_HTTP_PORT}"),
            "-device",
            &format!("{},netdev={NETDEV},id={NIC}", qemu.network_device),
        ])
        .args(
            launch
                .data_disk
                .map(|disk| disk.qemu_args(&qemu.disk_device))
                .into_iter()
                .flatten(),
        )
        // The guest agent's port: a socket here, a virtio-serial port there.
        .args([
            "-device".to_string(),
            qemu.serial_bus.clone(),
            "-chardev".to_string(),
            format!("socket,id=agent,path={},server=on,wait=off", sockets.agent.display()),
            "-device".to_string(),
            format!("virtserialport,chardev=agent,name={AGENT_PORT}"),
        ])
        // Two monitors: QEMU serves one client per monitor, and the toolchain keeps its own.
        .args(sockets.qmp.iter().flat_map(|socket| {
            [
                "-qmp".to_string(),
                format!("unix:{},server=on,wait=off", socket.display()),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(File::options().append(true).open(qemu_log)?)
        .stderr(File::options().append(true).open(qemu_log)?);
    Ok(command)
}

fn spawn(mut command: Command, binary: &str) -> Result<Child> {
    command
        .spawn()
        .with_context(|| format!("starting {binary} (is it installed? `cargo xtask doctor --fix` installs it)"))
}

fn press_power_button(qmp: &Qmp, powerdown: Powerdown) -> Result<()> {
    match powerdown {
        Powerdown::SystemPowerdown => qmp.system_powerdown(),
        Powerdown::PowerKey => qmp.press_power_key(),
    }
}

/// Ends a VM at teardown: the power button (a clean guest shutdown), then QMP `quit`,
/// and signals only if QEMU ignores both.
fn end(child: &mut Child, qmp: Option<&Qmp>, powerdown: Powerdown) {
    if let Some(qmp) = qmp.filter(|_| matches!(child.try_wait(), Ok(None))) {
        let clean = press_power_button(qmp, powerdown).is_ok() && wait_exit(child, TEARDOWN_POWERDOWN);
        if !clean && qmp.quit().is_ok() {
            wait_exit(child, EXIT_GRACE);
        }
    }
    process::stop(child, Signal::SIGTERM);
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
