//! Helpers for driving the workspace's binaries from outside, as a user would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
pub use xtask::node::ServerProcess;

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

/// Starts `plexichat serve ARGS` in `dir` through the toolchain's own server runner.
pub fn start_server(dir: &Path, args: &[&str]) -> Result<ServerProcess> {
    let mut command = Command::new(binary("plexichat", "plexichat")?);
    command.arg("serve").args(args).current_dir(dir);
    ServerProcess::start(command, Duration::from_secs(30))
}

/// GET `path`: the status and the JSON body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, serde_json::Value)> {
    xtask::http::request(addr, "GET", path, None, None)
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
