//! Helpers for driving the workspace's binaries from outside, as a user would.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// Builds `bin` of `package` once per test process (a no-op when it is fresh) and
/// returns its path: tests must run the binary of the source they test.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(bin) {
        return Ok(path.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--package", package, "--bin", bin])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p {package} --bin {bin} failed: {status}");
    }
    // This test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let path = profile_dir.join(bin);
    built.insert(bin.to_string(), path.clone());
    Ok(path)
}

/// A server process that is killed if the test ends without stopping it.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the server wrote to stderr after its listening line.
    pub log: mpsc::Receiver<String>,
    stop_reading: Arc<AtomicBool>,
}

impl ServerProcess {
    /// Starts `plexichat serve` with `args` in `dir` and waits for its listening line.
    pub fn start(dir: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary("plexichat", "plexichat")?)
            .arg("serve")
            .args(args)
            .current_dir(dir)
            .env("PLEXICHAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting plexichat")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (lines, log) = mpsc::channel();
        let stop_reading = Arc::new(AtomicBool::new(false));
        let stop = stop_reading.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            // Dropping the reader closes the pipe's read end.
            while !stop.load(Ordering::Relaxed) && reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = lines.send(std::mem::take(&mut line));
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            stop_reading,
        };
        let line = server.wait_for_log("listening on http://", Duration::from_secs(30))?;
        let addr = line.split("listening on http://").nth(1).unwrap_or_default();
        let addr = addr.split_whitespace().next().unwrap_or_default();
        server.addr = addr.parse().with_context(|| format!("listening address in {line:?}"))?;
        Ok(server)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(_) => bail!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    /// Stops reading the server's stderr and closes the pipe after its next line.
    pub fn close_log(&self) {
        self.stop_reading.store(true, Ordering::Relaxed);
    }

    /// Sends SIGTERM, as a service manager would.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed: {status}");
        }
        Ok(())
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("server still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET, so these tests depend on no HTTP client.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// Entries of the temporary directory that a toolchain run with `pid` made.
pub fn temp_dirs_of(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("xtask-") && name.contains(&format!("-{pid}-"))
        })
        .collect()
}

pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| !status.contains("State:\tZ"))
}
