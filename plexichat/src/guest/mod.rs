//! Guest mode: plexichat as PID 1 (`/init`) of a QEMU VM whose initramfs holds nothing
//! else. It does the little an init and a few tools would do (filesystems, kernel
//! modules, network, clock), serves, and powers the VM off when asked to stop (QMP
//! `system_powerdown`, SIGTERM) or when anything fails, because PID 1 must never exit.
//!
//! Per-VM settings come from the kernel command line (`plexichat.node_id=g1`, see
//! cmdline.rs); progress goes to the console as `plexichat-guest: …` lines.

mod agent;
mod clock;
mod cmdline;
mod console;
mod modules;
mod mounts;
mod net;
mod power;
mod settings;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tracing_subscriber::EnvFilter;

use self::cmdline::GuestNet;
use self::console::say;
use self::net::Ipv4Net;
use crate::config::Settings;
use crate::Server;

const ETH0: &str = "eth0";
/// virtio-net registers eth0 shortly after its module loads; longer than this means it
/// is not coming (no such device on the QEMU command line, or no driver).
const ETH0_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop request, the server's own drain (10 s for WebSockets) plus slack.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long background blocking work may hold up power-off once the server has stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);
/// The host binary's default filter.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// Whether this process is a machine's init, not merely PID 1: container runtimes also
/// start their entry point as PID 1, but mount /proc before they do, whereas the kernel
/// starts init with nothing mounted. A containerised server must not try to power off.
pub fn is_vm_init() -> bool {
    std::process::id() == 1 && !Path::new("/proc/self").exists()
}

/// Boots the VM's userland, serves until asked to stop, and powers off. Never returns.
pub fn run() -> ! {
    power::install_panic_hook();
    say(format_args!("plexichat {} starting as init", crate::version()));
    mounts::mount_all();

    // Variables the kernel passed to init (undotted `NAME=value` parameters); one that is
    // not UTF-8 cannot be a setting, and std::env::vars would panic on it.
    let process_env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(var, value)| Some((var.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|err| {
        say(format_args!("cannot read /proc/cmdline ({err}); using the defaults"));
        String::new()
    });
    let boot = match cmdline::parse(&cmdline) {
        Ok(boot) => boot,
        Err(err) => {
            say(err);
            power::power_off()
        }
    };
    init_logging(settings::log_filter(&boot, &process_env));
    let settings = match settings::load(&boot, process_env) {
        Ok(settings) => settings,
        Err(err) => {
            say(format_args!("configuration error: {err}"));
            power::power_off()
        }
    };

    let modules = modules::load_listed(Path::new(modules::LIST));
    if modules != modules::Loaded::default() {
        say(format_args!(
            "kernel modules: {} loaded, {} already loaded, {} failed",
            modules.loaded, modules.already, modules.failed
        ));
    }
    // After the modules: the data disk's driver is one of them.
    match mounts::mount_data() {
        Ok(mounts::Data::Disk(device)) => say(format_args!("data disk {device} mounted on /data")),
        Ok(mounts::Data::Tmpfs) => say("no data disk: /data is a tmpfs, gone at power-off"),
        Err(err) => {
            say(format_args!("cannot mount the data disk: {err}"));
            power::power_off()
        }
    }
    agent::serve(mounts::DATA);
    // Watched from here on, so a power-down during the rest of the boot is not lost:
    // Notify keeps the request until the server starts waiting for it.
    let stop = Arc::new(Notify::new());
    power::watch_power_button({
        let stop = stop.clone();
        let pressed = AtomicBool::new(false);
        move || {
            if !pressed.swap(true, Ordering::SeqCst) {
                say("power button pressed, shutting down");
                stop.notify_one();
            }
        }
    });
    clock::sync_with_rtc();
    let address = bring_up_network(&boot.net);
    name_host(&settings, address);

    match serve(settings, stop) {
        Ok(()) => say("server stopped"),
        Err(err) => say(format_args!("server failed: {err:#}")),
    }
    power::power_off()
}

fn init_logging(filter: Option<String>) {
    let filter = match filter {
        Some(filter) => EnvFilter::try_new(&filter).unwrap_or_else(|err| {
            say(format_args!(
                "ignoring log filter `{filter}` ({err}); using {DEFAULT_LOG_FILTER}"
            ));
            EnvFilter::new(DEFAULT_LOG_FILTER)
        }),
        None => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A serial console transcript is read in files and logs, not on a terminal.
        .with_ansi(false)
        .log_internal_errors(false)
        .try_init();
}

/// Loopback, then eth0 with its default route. Returns eth0's address when it is up; a
/// VM without it still serves on loopback, which the console says.
fn bring_up_network(guest: &GuestNet) -> Option<Ipv4Addr> {
    if let Err(err) = net::configure("lo", Ipv4Net::LOOPBACK) {
        say(format_args!("cannot configure lo: {err}"));
    }
    if !net::wait_for_interface(ETH0, ETH0_TIMEOUT) {
        say(format_args!(
            "no {ETH0} after {}s: serving on loopback only (is virtio_net in the module list, \
             and a virtio-net device on the QEMU command line?)",
            ETH0_TIMEOUT.as_secs()
        ));
        return None;
    }
    if let Err(err) = net::configure(ETH0, guest.address) {
        say(format_args!("cannot configure {ETH0} as {}: {err}", guest.address));
        return None;
    }
    match net::add_default_route(ETH0, guest.gateway) {
        Ok(()) => say(format_args!("network {ETH0} {} via {}", guest.address, guest.gateway)),
        Err(err) => say(format_args!(
            "network {ETH0} {} without a default route (via {}: {err})",
            guest.address, guest.gateway
        )),
    }
    Some(guest.address.addr)
}

/// Names the host after the node: the server takes the host name as its node id when none
/// is given, and the kernel's default, "(none)", is no name for a cluster member.
fn name_host(settings: &Settings, address: Option<Ipv4Addr>) {
    let current = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty() && name != "(none)");
    let name = settings
        .node_id
        .clone()
        .or_else(|| current.clone())
        .unwrap_or_else(|| "plexichat".into());
    if current.as_deref() != Some(name.as_str()) {
        if let Err(err) = net::set_hostname(&name) {
            say(format_args!("cannot set the host name to `{name}`: {err}"));
        }
    }
    if let Err(err) = net::write_hosts(&name, address) {
        say(format_args!("cannot write /etc/hosts: {err}"));
    }
}

fn serve(settings: Settings, stop: Arc<Notify>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on(async move {
        let server = Server::bind(settings).await?;
        say(format_args!("serving on {}", server.local_addr()));
        server.run_until(stop_requested(stop)).await
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    served
}

/// Completes on the power button or SIGTERM/SIGINT, and from then on bounds how long the
/// server may take to stop.
async fn stop_requested(button: Arc<Notify>) {
    tokio::select! {
        () = button.notified() => {}
        signal = termination_signal() => say(format_args!("{signal} received, shutting down")),
    }
    power::power_off_after(SHUTDOWN_GRACE);
}

/// The kernel ignores signals PID 1 has no handler for, so these only work because tokio
/// installs handlers here.
async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        },
        (Err(err), _) | (_, Err(err)) => {
            say(format_args!(
                "cannot watch SIGTERM/SIGINT ({err}); only the power button stops this VM"
            ));
            std::future::pending().await
        }
    }
}
