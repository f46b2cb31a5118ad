//! The smoke run of a built binary: it prints its version, serves /health on loopback,
//! resolves a host name from a root file system holding nothing but itself and
//! /etc/hosts (as in a FROM-scratch image or a VM's initramfs), and stops on SIGTERM.
//! Foreign binaries run under qemu-user. A passing result is keyed on everything it
//! depends on, so that the same binary with the same inputs need not be run again.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use services::process::{self, cmd, Cmd, Shell};
use services::teardown::TempDir;
use services::ServerProcess;

use super::KeyHasher;
use crate::report::progress::Task;
use crate::system;
use crate::workspace::targets::Target;

/// Emulated binaries start slowly; a real failure still shows well within this.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The name the bare root file system's /etc/hosts gives to loopback.
const SMOKE_HOST: &str = "plexichat-smoke.test";
/// Part of every smoke key: bump it when the checks below change, so that results of
/// the old checks are not taken for results of the new ones.
const CHECKS_REVISION: u32 = 1;

/// Whether a recorded smoke result may stand in for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Policy {
    /// Reuse a passing result recorded for the same binary and the same inputs.
    #[default]
    Auto,
    /// Run the smoke afresh every time.
    Always,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Smoke {
    pub ok: bool,
    pub steps: Vec<Step>,
    /// The [`key`] of the inputs this result was obtained with; empty when unknown
    /// (manifests written before results were reused), which never matches.
    #[serde(default)]
    pub key: String,
    /// Whether this is a recorded result reused instead of a fresh run.
    #[serde(default)]
    pub cached: bool,
}

impl Smoke {
    /// This result again, marked cached, if it passed with exactly the inputs `key`
    /// stands for. A failure is never reused: the next run tries again.
    pub(crate) fn reuse(&self, key: &str) -> Option<Smoke> {
        (self.ok && !self.key.is_empty() && self.key == key).then(|| Smoke {
            cached: true,
            ..self.clone()
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a smoke run's verdict depends on besides the checks themselves: the binary (by
/// its SHA-256), the target it runs as, the profile file the server starts with (the
/// whole file: the server reads its `server` section and rejects unknown sections), the
/// version it must print, and the `PLEXICHAT_*` settings the server inherits from here.
pub(crate) fn key(sha256: &str, target: &Target, profile: &Path, version: &str) -> Result<String> {
    let profile_text = std::fs::read(profile).with_context(|| format!("reading {}", profile.display()))?;
    let settings: BTreeMap<String, String> = std::env::vars()
        .filter(|(name, _)| name.starts_with("PLEXICHAT_"))
        .collect();
    let mut key = KeyHasher::default();
    key.feed("checks", &CHECKS_REVISION.to_le_bytes());
    key.feed("binary", sha256.as_bytes());
    key.feed("target", target.triple.as_bytes());
    key.feed("profile", &profile_text);
    key.feed("version", version.as_bytes());
    for (name, value) in &settings {
        key.feed(name, value.as_bytes());
    }
    Ok(key.finish())
}

pub(crate) fn run(binary: &Path, target: &Target, profile: &Path, version: &str, task: &Task) -> Smoke {
    let mut steps = Vec::new();
    let mut record = |name: &str, result: Result<String>| {
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|err| format!("{err:#}"));
        task.step(format!("smoke {name}: {}", if ok { "ok" } else { "FAILED" }));
        steps.push(Step {
            name: name.into(),
            ok,
            detail,
        });
        ok
    };
    if record("version", check_version(binary, target, version)) {
        match start_server(binary, target, profile) {
            Ok(smoke) => {
                let port = smoke.server.addr.port();
                record(
                    "health",
                    healthcheck(binary, target, &format!("http://127.0.0.1:{port}/health")),
                );
                record("resolve", resolve_from_bare_root(binary, target, port));
                let stopped = smoke
                    .server
                    .terminate(STOP_TIMEOUT)
                    .map(|()| "exited 0 after SIGTERM".to_string());
                record("sigterm", stopped);
            }
            Err(err) => {
                record("serve", Err(err));
            }
        }
    }
    Smoke {
        ok: steps.iter().all(|s| s.ok),
        steps,
        ..Smoke::default()
    }
}

/// `binary args…`, through qemu-user when the binary is foreign.
fn command<'a>(sh: &'a Shell, binary: &Path, target: &Target) -> Cmd<'a> {
    if target.is_foreign() {
        let emulator = target.qemu_user();
        cmd!(sh, "{emulator} {binary}")
    } else {
        cmd!(sh, "{binary}")
    }
}

fn check_version(binary: &Path, target: &Target, version: &str) -> Result<String> {
    let sh = process::shell()?;
    let output = process::output(command(&sh, binary, target).arg("--version")).context("running --version")?;
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let expected = format!("plexichat {version}");
    if !output.status.success() || printed != expected {
        bail!(
            "--version printed {printed:?} ({}), expected {expected:?}",
            output.status
        );
    }
    Ok(printed)
}

fn healthcheck(binary: &Path, target: &Target, url: &str) -> Result<String> {
    let sh = process::shell()?;
    let output = process::output(command(&sh, binary, target).args(["healthcheck", "--url", url, "--timeout", "20s"]))
        .context("running plexichat healthcheck")?;
    if !output.status.success() {
        bail!(
            "healthcheck of {url} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The smoke server and the directory holding its database.
struct SmokeServer {
    server: ServerProcess,
    _dir: TempDir,
}

fn start_server(binary: &Path, target: &Target, profile: &Path) -> Result<SmokeServer> {
    let dir = TempDir::new("smoke")?;
    let database = format!("sqlite://{}", dir.path().join("smoke.db").display());
    let node_id = format!("smoke-{}", target.arch);
    let sh = process::shell_in(dir.path())?;
    let serve = command(&sh, binary, target)
        .arg("serve")
        .arg("--config")
        .arg(profile)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--node-id",
            &node_id,
        ]);
    // The server runs until the smoke run stops it: a child of ours, not a command.
    let command = Command::from(serve);
    Ok(SmokeServer {
        server: ServerProcess::start(command, START_TIMEOUT)?,
        _dir: dir,
    })
}

/// Runs `plexichat healthcheck` by host name, chrooted into a root file system that
/// holds only the binary (and its emulator) and an /etc/hosts.
fn resolve_from_bare_root(binary: &Path, target: &Target, port: u16) -> Result<String> {
    if !system::is_root() {
        bail!("needs root (chroot) to build a bare root file system");
    }
    let root = TempDir::new("bare-root")?;
    std::fs::create_dir_all(root.path().join("etc"))?;
    std::fs::write(root.path().join("etc/hosts"), format!("127.0.0.1 {SMOKE_HOST}\n"))?;
    std::fs::copy(binary, root.path().join("plexichat"))?;
    let (sh, new_root) = (process::shell()?, root.path());
    let mut chroot = cmd!(sh, "chroot {new_root}");
    if target.is_foreign() {
        let emulator =
            system::which(&target.qemu_user()).with_context(|| format!("{} not found", target.qemu_user()))?;
        std::fs::copy(emulator, root.path().join("qemu"))?;
        chroot = chroot.arg("/qemu");
    }
    let url = format!("http://{SMOKE_HOST}:{port}/health");
    let output = process::output(chroot.args(["/plexichat", "healthcheck", "--url", &url, "--timeout", "20s"]))
        .context("running chroot")?;
    if !output.status.success() {
        bail!(
            "{url} from a bare root: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(format!("{SMOKE_HOST} resolved from /etc/hosts alone"))
}
