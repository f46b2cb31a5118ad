//! `cargo xtask doctor [--fix]`: what this host has and lacks to build, run and emulate
//! PlexiChat, with the exact fix for each gap; `--fix` applies the fixes it can.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::kernels::GuestKernel;
use crate::kvm;
use crate::progress::Progress;
use crate::qemu_image;
use crate::report::{Report, Table};
use crate::system::{self, which};
use crate::targets::{Target, QEMU_USER_PACKAGE, TARGETS};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Install what is missing: rustup targets, Debian packages (as root), binfmt entries.
    #[arg(long)]
    fix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Found,
    Missing,
    /// Present but not usable; not an error when something else stands in (KVM → TCG).
    Unusable,
}

/// How to close a gap, precise enough to run by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fix {
    RustupTarget { target: String },
    Apt { packages: Vec<String> },
    Binfmt { arch: String },
    GuestKernel { arch: String },
    Manual { instruction: String },
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fix::RustupTarget { target } => write!(f, "rustup target add {target}"),
            Fix::Apt { packages } => write!(f, "apt-get install {}", packages.join(" ")),
            Fix::Binfmt { arch } => write!(
                f,
                "mount -t binfmt_misc binfmt_misc {BINFMT_DIR}; cat /usr/lib/binfmt.d/qemu-{arch}.conf > {BINFMT_DIR}/register"
            ),
            Fix::GuestKernel { arch } => write!(f, "cargo xtask doctor --fix (downloads the {arch} kernel package)"),
            Fix::Manual { instruction } => f.write_str(instruction),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub item: String,
    pub category: &'static str,
    pub status: Status,
    pub version: Option<String>,
    pub detail: Option<String>,
    /// Present when the item is missing; `None` when nothing needs doing.
    pub fix: Option<Fix>,
    /// Whether the item must be present for `doctor` to pass.
    pub required: bool,
}

impl Check {
    fn new(item: impl Into<String>, category: &'static str) -> Self {
        Self {
            item: item.into(),
            category,
            status: Status::Found,
            version: None,
            detail: None,
            fix: None,
            required: true,
        }
    }

    fn found(mut self, version: Option<String>) -> Self {
        self.status = Status::Found;
        self.version = version;
        self
    }

    fn missing(mut self, detail: impl Into<String>, fix: Fix) -> Self {
        self.status = Status::Missing;
        self.detail = Some(detail.into());
        self.fix = Some(fix);
        self
    }

    pub fn is_missing(&self) -> bool {
        self.status == Status::Missing
    }

    /// "ITEM (fix: HOW)", for a report of what is still missing.
    pub fn describe_gap(&self) -> String {
        format!(
            "{} (fix: {})",
            self.item,
            self.fix.as_ref().map(ToString::to_string).unwrap_or_default()
        )
    }
}

#[derive(Serialize)]
struct DoctorReport<'a> {
    ok: bool,
    checks: &'a [Check],
    fixed: Vec<String>,
    not_fixed: Vec<NotFixed>,
}

#[derive(Serialize)]
struct NotFixed {
    item: String,
    fix: String,
    reason: String,
}

pub fn run(args: Args) -> Result<Report> {
    let mut checks = check_all();
    let mut fixed = Vec::new();
    let mut not_fixed = Vec::new();
    if args.fix {
        let outcome = apply_fixes(&checks);
        checks = check_all();
        for (fix, result) in outcome {
            match result {
                Ok(()) => fixed.push(fix.to_string()),
                Err(reason) => {
                    for check in checks.iter().filter(|c| c.fix.as_ref() == Some(&fix)) {
                        not_fixed.push(NotFixed {
                            item: check.item.clone(),
                            fix: fix.to_string(),
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        // A fix that ran without error but left the item missing must still be reported.
        for check in checks.iter().filter(|c| c.is_missing()) {
            if !not_fixed.iter().any(|n| n.item == check.item) {
                let fix = check.fix.as_ref().map(ToString::to_string).unwrap_or_default();
                not_fixed.push(NotFixed {
                    item: check.item.clone(),
                    fix,
                    reason: "still missing after the fix ran".into(),
                });
            }
        }
    }
    let ok = !checks.iter().any(|c| c.required && c.is_missing());
    let mut table = Table::new(&["item", "status", "version / detail", "fix"]);
    for check in &checks {
        let status = match check.status {
            Status::Found => "ok",
            Status::Missing => "MISSING",
            Status::Unusable => "unusable",
        };
        let detail = check
            .version
            .clone()
            .or_else(|| check.detail.clone())
            .unwrap_or_default();
        let fix = check.fix.as_ref().map(ToString::to_string).unwrap_or_default();
        table.row(vec![check.item.clone(), status.into(), detail, fix]);
    }
    let missing = checks.iter().filter(|c| c.is_missing()).count();
    let mut summary = if missing == 0 {
        "everything PlexiChat's toolchain needs is here".to_string()
    } else if args.fix {
        format!("{missing} item(s) still missing")
    } else {
        format!("{missing} item(s) missing: `cargo xtask doctor --fix` installs what it can")
    };
    for item in &not_fixed {
        summary.push_str(&format!(
            "\n  could not fix {}: {} ({})",
            item.item, item.reason, item.fix
        ));
    }
    let report = DoctorReport {
        ok,
        checks: &checks,
        fixed,
        not_fixed,
    };
    Ok(Report::new(ok, table, &report).with_summary(summary))
}

pub fn check_all() -> Vec<Check> {
    let installed_targets = installed_rust_targets();
    let mut checks = Vec::new();
    for target in &TARGETS {
        checks.push(rust_target(target, &installed_targets));
    }
    for target in &TARGETS {
        checks.push(c_toolchain(target));
    }
    for target in TARGETS.iter().filter(|t| t.is_foreign()) {
        checks.push(qemu_user(target));
        checks.push(binfmt(target));
    }
    for target in &TARGETS {
        checks.push(qemu_system(target));
    }
    if let Ok(workspace) = Workspace::discover() {
        for target in &TARGETS {
            checks.push(guest_kernel(&workspace, target.arch));
        }
    }
    checks.push(kvm_check());
    checks.push(docker_engine());
    checks.push(postgres());
    checks.push(nats_server());
    checks.push(valgrind());
    checks
}

/// Missing items that `--fix` can close, in the order they must run.
pub fn fixes_for(checks: &[Check]) -> Vec<Fix> {
    let mut rustup = Vec::new();
    let mut packages = BTreeSet::new();
    let mut after_apt = Vec::new();
    for fix in checks.iter().filter(|c| c.is_missing()).filter_map(|c| c.fix.clone()) {
        match fix {
            Fix::RustupTarget { .. } => rustup.push(fix),
            Fix::Apt { packages: names } => packages.extend(names),
            Fix::Binfmt { .. } | Fix::GuestKernel { .. } => after_apt.push(fix),
            Fix::Manual { .. } => {}
        }
    }
    let mut ordered = rustup;
    if !packages.is_empty() {
        ordered.push(Fix::Apt {
            packages: packages.into_iter().collect(),
        });
    }
    // binfmt entries need qemu-user-static's files, so they come after apt.
    ordered.extend(after_apt);
    ordered
}

/// Runs every fix it can; each comes back with its outcome. One run provisions at a
/// time; a run that waited for another fixes only what that one left missing.
pub fn apply_fixes(checks: &[Check]) -> Vec<(Fix, Result<(), String>)> {
    let lock = system::machine_lock("provision");
    let still_missing: Vec<Check> = check_all()
        .into_iter()
        .filter(|now| now.is_missing() && checks.iter().any(|before| before.item == now.item))
        .collect();
    let fixes = fixes_for(&still_missing);
    if let Err(err) = lock {
        // Without the lock, fixing is still better than not: say why it may collide.
        eprintln!("warning: provisioning unlocked ({err:#}); a concurrent install may fail");
    }
    fixes
        .into_iter()
        .map(|fix| {
            let result = apply(&fix).map_err(|err| format!("{err:#}"));
            (fix, result)
        })
        .collect()
}

/// Installs, as `--fix` would, whatever `needed` selects and is missing; returns what
/// is still missing afterwards (with its fix), for the caller to report.
pub fn install_missing(needed: impl Fn(&Check) -> bool, progress: &Progress) -> Vec<Check> {
    let relevant = |checks: Vec<Check>| -> Vec<Check> {
        checks
            .into_iter()
            .filter(|check| check.is_missing() && needed(check))
            .collect()
    };
    let missing = relevant(check_all());
    if missing.is_empty() {
        return missing;
    }
    let task = progress.task("provision");
    task.step(format!(
        "installing: {}",
        fixes_for(&missing)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    ));
    for (fix, result) in apply_fixes(&missing) {
        if let Err(reason) = result {
            task.step(format!("could not `{fix}`: {reason}"));
        }
    }
    task.finish("done");
    relevant(check_all())
}

/// `install_missing`, failing with the fixes still to make if anything is left.
pub fn provision(needed: impl Fn(&Check) -> bool, progress: &Progress) -> Result<()> {
    let still_missing = install_missing(needed, progress);
    if still_missing.is_empty() {
        return Ok(());
    }
    let lacking: Vec<String> = still_missing.iter().map(Check::describe_gap).collect();
    anyhow::bail!("this host lacks {}", lacking.join(", "))
}

fn apply(fix: &Fix) -> Result<()> {
    match fix {
        Fix::RustupTarget { target } => system::run(Command::new("rustup").args(["target", "add", target])),
        Fix::Apt { packages } => system::apt_install(packages),
        Fix::Binfmt { arch } => register_binfmt(arch),
        Fix::GuestKernel { arch } => {
            let workspace = Workspace::discover()?;
            let definition = qemu_image::load_definition(&workspace, arch)?;
            GuestKernel::of(&definition).fetch(&workspace.target_dir).map(drop)
        }
        Fix::Manual { instruction } => anyhow::bail!("needs a person: {instruction}"),
    }
}

fn installed_rust_targets() -> BTreeSet<String> {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn rust_target(target: &Target, installed: &BTreeSet<String>) -> Check {
    let check = Check::new(format!("rust target {}", target.triple), "rust");
    if installed.contains(target.triple) {
        check.found(None)
    } else {
        check.missing(
            "its standard library is not installed",
            Fix::RustupTarget {
                target: target.triple.into(),
            },
        )
    }
}

fn c_toolchain(target: &Target) -> Check {
    let check = Check::new(format!("linker {}", target.linker), "cross");
    let fix = Fix::Apt {
        packages: target.toolchain_packages.iter().map(|p| p.to_string()).collect(),
    };
    if which(target.linker).is_none() {
        return check.missing("not on PATH", fix);
    }
    if !Path::new(target.static_libc).is_file() {
        return check.missing(format!("no static C library at {}", target.static_libc), fix);
    }
    check.found(system::version_line(target.linker, &["--version"]))
}

fn qemu_user(target: &Target) -> Check {
    let program = target.qemu_user();
    let check = Check::new(program.clone(), "emulation");
    match which(&program) {
        Some(_) => check.found(system::version_line(&program, &["--version"])),
        None => check.missing(
            "runs foreign binaries for smoke tests",
            Fix::Apt {
                packages: vec![QEMU_USER_PACKAGE.into()],
            },
        ),
    }
}

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

fn binfmt(target: &Target) -> Check {
    let check = Check::new(format!("binfmt qemu-{}", target.arch), "emulation");
    let entry = Path::new(BINFMT_DIR).join(format!("qemu-{}", target.arch));
    let fix = Fix::Binfmt {
        arch: target.arch.into(),
    };
    match std::fs::read_to_string(&entry) {
        Ok(text) if text.starts_with("enabled") => {
            let flags = text.lines().find_map(|l| l.strip_prefix("flags: ")).unwrap_or_default();
            if flags.contains('F') {
                check.found(Some(format!("enabled, flags {flags}")))
            } else {
                check.missing(
                    format!("registered without the F flag ({flags}): fails inside containers"),
                    fix,
                )
            }
        }
        Ok(_) => check.missing("registered but disabled", fix),
        Err(_) => check.missing("not registered: foreign containers cannot run", fix),
    }
}

/// Mounts binfmt_misc if needed and registers Debian's qemu entry for `arch`. The
/// entries carry the F flag, so the kernel opens the emulator at registration and
/// containers and chroots need no copy of it.
fn register_binfmt(arch: &str) -> Result<()> {
    if !system::is_root() {
        anyhow::bail!("registering binfmt entries needs root");
    }
    if !Path::new(BINFMT_DIR).join("register").exists() {
        system::run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR]))?;
    }
    let entry = Path::new(BINFMT_DIR).join(format!("qemu-{arch}"));
    if entry.exists() {
        // Re-register from scratch: an old entry may lack the F flag.
        std::fs::write(&entry, "-1").with_context(|| format!("removing {}", entry.display()))?;
    }
    let conf = PathBuf::from(format!("/usr/lib/binfmt.d/qemu-{arch}.conf"));
    let line = std::fs::read_to_string(&conf)
        .with_context(|| format!("reading {} (from {QEMU_USER_PACKAGE})", conf.display()))?;
    let mut register = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new(BINFMT_DIR).join("register"))?;
    register
        .write_all(line.trim().as_bytes())
        .context("writing the binfmt entry")?;
    Ok(())
}

fn qemu_system(target: &Target) -> Check {
    let check = Check::new(target.qemu_system, "emulation");
    match which(target.qemu_system) {
        Some(_) => check.found(system::version_line(target.qemu_system, &["--version"])),
        None => check.missing(
            format!("boots {} guests", target.arch),
            Fix::Apt {
                packages: vec![target.qemu_system_package.into()],
            },
        ),
    }
}

/// The kernel package that qemu-images/<arch>.yaml pins, downloaded or not.
fn guest_kernel(workspace: &Workspace, arch: &str) -> Check {
    let check = Check::new(format!("guest kernel {arch}"), "emulation");
    let definition = match qemu_image::load_definition(workspace, arch) {
        Ok(definition) => definition,
        Err(err) => {
            return check.missing(
                "the image definition cannot be read",
                Fix::Manual {
                    instruction: err.to_string(),
                },
            )
        }
    };
    let kernel = GuestKernel::of(&definition);
    match kernel.cached(&workspace.target_dir) {
        Some(deb) => check.found(deb.file_name().map(|name| name.to_string_lossy().into_owned())),
        None => check.missing(
            format!("{} ({}) for {arch} guests", kernel.package, kernel.suite),
            Fix::GuestKernel { arch: arch.into() },
        ),
    }
}

fn kvm_check() -> Check {
    let probe = kvm::probe();
    let mut check = Check::new("kvm", "emulation");
    check.required = false;
    if probe.usable {
        check.found(Some(probe.reason))
    } else {
        check.status = Status::Unusable;
        check.detail = Some(format!("{}; guests run under TCG", probe.reason));
        check
    }
}

fn docker_engine() -> Check {
    let check = Check::new("docker engine", "services");
    let socket = docker_socket();
    match docker_version(&socket) {
        Ok(version) => check.found(Some(version)),
        Err(err) => {
            let fix = if which("dockerd").is_some() {
                Fix::Manual {
                    instruction: "start the engine: `systemctl start docker` (or `dockerd &` as root)".into(),
                }
            } else {
                Fix::Apt {
                    packages: vec!["docker.io".into()],
                }
            };
            check.missing(format!("{}: {err}", socket.display()), fix)
        }
    }
}

/// "engine VERSION, API VERSION" when the Docker Engine answers on its socket; else
/// why not, naming the socket.
pub fn docker_engine_version() -> Result<String> {
    let socket = docker_socket();
    docker_version(&socket).with_context(|| format!("no Docker Engine answers on {}", socket.display()))
}

/// The engine's socket: DOCKER_HOST when it names a unix socket, else the default.
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// "engine VERSION, API VERSION" from the engine's /version endpoint.
fn docker_version(socket: &Path) -> Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let version: serde_json::Value = serde_json::from_str(body)?;
    Ok(format!(
        "engine {}, API {}",
        version["Version"].as_str().unwrap_or("?"),
        version["ApiVersion"].as_str().unwrap_or("?")
    ))
}

/// Debian installs PostgreSQL's server programs outside PATH, per major version.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn postgres() -> Check {
    let check = Check::new("postgres (initdb, pg_ctl)", "services");
    match postgres_bin_dir() {
        Some(bin) if bin.join("pg_ctl").is_file() && bin.join("postgres").is_file() => check.found(
            system::version_line(&bin.join("postgres").to_string_lossy(), &["--version"]),
        ),
        _ => check.missing(
            "the scale-out store",
            Fix::Apt {
                packages: vec!["postgresql".into()],
            },
        ),
    }
}

fn nats_server() -> Check {
    let check = Check::new("nats-server", "services");
    match which("nats-server") {
        Some(_) => check.found(system::version_line("nats-server", &["--version"])),
        None => check.missing(
            "cross-node fan-out",
            Fix::Apt {
                packages: vec!["nats-server".into()],
            },
        ),
    }
}

fn valgrind() -> Check {
    let check = Check::new("valgrind (callgrind)", "bench");
    match which("valgrind") {
        Some(_) => check.found(system::version_line("valgrind", &["--version"])),
        None => check.missing(
            "bench-compare's instruction counts (its default when CI is set)",
            Fix::Apt {
                packages: vec!["valgrind".into()],
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(item: &str, fix: Fix) -> Check {
        Check::new(item, "test").missing("absent", fix)
    }

    #[test]
    fn fixes_run_rustup_then_one_apt_call_then_binfmt() {
        let checks = vec![
            missing("binfmt", Fix::Binfmt { arch: "aarch64".into() }),
            missing(
                "a",
                Fix::Apt {
                    packages: vec!["qemu-user-static".into()],
                },
            ),
            missing(
                "b",
                Fix::Apt {
                    packages: vec!["nats-server".into(), "qemu-user-static".into()],
                },
            ),
            missing(
                "t",
                Fix::RustupTarget {
                    target: "aarch64-unknown-linux-gnu".into(),
                },
            ),
            missing(
                "m",
                Fix::Manual {
                    instruction: "ask".into(),
                },
            ),
            Check::new("present", "test").found(None),
        ];
        let fixes = fixes_for(&checks);
        assert_eq!(
            fixes,
            vec![
                Fix::RustupTarget {
                    target: "aarch64-unknown-linux-gnu".into()
                },
                Fix::Apt {
                    packages: vec!["nats-server".into(), "qemu-user-static".into()]
                },
                Fix::Binfmt { arch: "aarch64".into() },
            ]
        );
    }

    #[test]
    fn fixes_are_spelled_as_commands() {
        let apt = Fix::Apt {
            packages: vec!["a".into(), "b".into()],
        };
        assert_eq!(apt.to_string(), "apt-get install a b");
        let rustup = Fix::RustupTarget { target: "x".into() };
        assert_eq!(rustup.to_string(), "rustup target add x");
    }
}
