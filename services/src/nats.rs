//! An ephemeral NATS server for local clusters and tests: Debian's `nats-server`, its log
//! in a temporary directory, on a free loopback port, stopped when dropped (and on
//! Ctrl-C, through the teardown registry).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::{self, free_port};
use crate::process::{ProcessGuard, Signal};
use crate::teardown::TempDir;
use crate::START_TIMEOUT;

pub struct Nats {
    process: ProcessGuard,
    port: u16,
    _dir: TempDir,
}

impl Nats {
    pub fn start() -> Result<Self> {
        host::install_if_missing("nats-server", || host::which("nats-server").is_some())?;
        let program = host::which("nats-server").context("nats-server is missing after installing it")?;
        Self::start_on(&program, free_port()?)
    }

    /// Starts on a given port, e.g. to restart a stopped server where clients expect it.
    pub fn start_on(program: &Path, port: u16) -> Result<Self> {
        let dir = TempDir::new("nats")?;
        // The server runs until the guard stops it: a child of ours, not a command.
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-l")
            .arg(dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let nats = Self {
            process: ProcessGuard::stopped_by(child, Signal::SIGTERM),
            port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = nats.process.child().try_wait() {
                bail!("nats-server exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    pub fn url(&self) -> String {
        self.url_via("127.0.0.1")
    }

    /// The URL as seen from elsewhere, e.g. a VM that reaches this host as `host`.
    pub fn url_via(&self, host: &str) -> String {
        format!("nats://{host}:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.process.child().id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| !status.contains("State:\tZ"))
    }

    #[test]
    fn nats_listens_and_goes_away() {
        let nats = Nats::start().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", nats.port())).is_ok());
        let pid = nats.pid();
        drop(nats);
        assert!(!running(pid), "nats-server outlived its guard");
    }
}
