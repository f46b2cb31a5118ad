//! A `plexichat serve` process started by the toolchain: spawned, awaited until it
//! says where it listens, stopped with SIGTERM as a service manager would, and torn
//! down by its guard whatever happens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, ProcessGuard, Signal};

pub struct ServerProcess {
    process: ProcessGuard,
    pub addr: SocketAddr,
    /// From spawning to the server's listening line.
    pub started_in: Duration,
    /// What the server logs after its listening line.
    log: mpsc::Receiver<String>,
    stop_reading: Arc<AtomicBool>,
}

impl ServerProcess {
    /// Spawns `command` (a `plexichat serve …`) and waits up to `timeout` for it to listen.
    pub fn start(mut command: Command, timeout: Duration) -> Result<Self> {
        let started = Instant::now();
        let mut child = command
            .env("PLEXICHAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the server")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let process = ProcessGuard::new(child);
        let (lines, log) = mpsc::channel();
        let stop_reading = Arc::new(AtomicBool::new(false));
        let stop = stop_reading.clone();
        // Read to the end even after start-up (unless told to stop): a server whose
        // stderr pipe closes gets EPIPE on every log line.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) && reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = lines.send(std::mem::take(&mut line).trim_end().to_string());
            }
        });
        let deadline = started + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let addr = addr.parse().with_context(|| format!("address in {line:?}"))?;
                        return Ok(Self {
                            process,
                            addr,
                            started_in: started.elapsed(),
                            log,
                            stop_reading,
                        });
                    }
                    seen.push(line);
                }
                Err(_) => bail!(
                    "the server did not start within {timeout:?}; it said:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.child().id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(_) => bail!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    /// Stops reading the server's stderr: the pipe closes after its next line, as when
    /// whoever collected the logs goes away.
    pub fn close_log(&self) {
        self.stop_reading.store(true, Ordering::Relaxed);
    }

    /// SIGKILL: the node dies on the spot, as in a crash.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.process.child();
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&self, timeout: Duration) -> Result<()> {
        if !process::signal(self.pid(), Signal::SIGTERM) {
            bail!("cannot send SIGTERM to {}: it is gone", self.pid());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.child().try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("exited with {status} after SIGTERM"))
                };
            }
            if Instant::now() > deadline {
                bail!("still running {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
