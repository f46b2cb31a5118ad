//! What a host needs, typed. Every [`Requirement`] has a probe (is it here, which
//! version?) and a fix (how to install it); `doctor` lists them all, and a command asks
//! for exactly the requirements it needs and has only those installed.

pub(crate) mod cargo_tools;
mod fix;
mod probe;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use serde::Serialize;

pub use self::fix::Fix;
pub use self::probe::docker_engine_version;
use crate::report::progress::{Progress, Task};
use crate::system;
use crate::workspace::targets::{Target, TARGETS};

/// One thing a host may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The Rust standard library for a target (`rustup target add`).
    RustTarget(&'static Target),
    /// The C cross toolchain that links a target's static binaries.
    Linker(&'static Target),
    /// qemu-user, which runs a foreign target's binaries (smoke tests).
    QemuUser(&'static Target),
    /// The kernel's binfmt entry handing a foreign target's binaries to qemu-user, with
    /// the F flag so that it works inside containers.
    Binfmt(&'static Target),
    /// The system emulator that boots a target's guests.
    QemuSystem(&'static Target),
    /// The guest kernel package that the target's image definition pins.
    GuestKernel(&'static Target),
    /// `qemu-img`, which turns a formatted filesystem into a VM's qcow2 data disk.
    QemuImg,
    /// `mkfs.ext4`, which formats a VM's data disk.
    Mkfs,
    /// Hardware virtualisation; optional (guests fall back to TCG).
    Kvm,
    DockerEngine,
    Postgres,
    NatsServer,
    Valgrind,
    /// cargo-auditable, with which every server binary is built: it carries the list of
    /// crates it was built from.
    CargoAuditable,
    /// `dpkg-deb`, which builds a release's Debian packages.
    DpkgDeb,
    /// `minisign`, which signs a release's checksums (`dist --sign`).
    Minisign,
    /// `skopeo`, which pushes a release's OCI archive to a registry as one tag.
    Skopeo,
    /// Compose (Debian's docker-compose), which checks and runs a rendered deployment.
    DockerCompose,
}

impl Requirement {
    /// Everything `doctor` checks, in the order of its table.
    pub fn all() -> Vec<Requirement> {
        let mut all = Vec::new();
        all.extend(TARGETS.iter().map(Requirement::RustTarget));
        all.extend(TARGETS.iter().map(Requirement::Linker));
        all.push(Requirement::CargoAuditable);
        for target in TARGETS.iter().filter(|t| t.is_foreign()) {
            all.extend([Requirement::QemuUser(target), Requirement::Binfmt(target)]);
        }
        all.extend(TARGETS.iter().map(Requirement::QemuSystem));
        // Kernels are pinned by the workspace's image definitions: outside it, none.
        if crate::workspace::Workspace::discover().is_ok() {
            all.extend(TARGETS.iter().map(Requirement::GuestKernel));
        }
        all.extend([
            Requirement::QemuImg,
            Requirement::Mkfs,
            Requirement::Kvm,
            Requirement::DockerEngine,
            Requirement::Postgres,
            Requirement::NatsServer,
            Requirement::Valgrind,
            Requirement::DpkgDeb,
            Requirement::Minisign,
            Requirement::Skopeo,
            Requirement::DockerCompose,
        ]);
        all
    }

    /// What building `target`'s static binary and smoke-testing it here need.
    pub fn to_build(target: &'static Target) -> Vec<Requirement> {
        let mut needed = vec![
            Requirement::RustTarget(target),
            Requirement::Linker(target),
            Requirement::CargoAuditable,
        ];
        if target.is_foreign() {
            needed.push(Requirement::QemuUser(target));
        }
        needed
    }

    /// Whether `doctor` fails when this is missing: KVM is optional (TCG stands in), and
    /// so are minisign (only `dist --sign` needs it, and installs it) and skopeo (a
    /// release's OCI archive is pushed with it, not made).
    pub fn is_required(&self) -> bool {
        !matches!(self, Requirement::Kvm | Requirement::Minisign | Requirement::Skopeo)
    }

    pub fn category(&self) -> &'static str {
        match self {
            Requirement::RustTarget(_) | Requirement::CargoAuditable => "rust",
            Requirement::Linker(_) => "cross",
            Requirement::QemuUser(_)
            | Requirement::Binfmt(_)
            | Requirement::QemuSystem(_)
            | Requirement::GuestKernel(_)
            | Requirement::QemuImg
            | Requirement::Mkfs
            | Requirement::Kvm => "emulation",
            Requirement::DockerEngine
            | Requirement::DockerCompose
            | Requirement::Postgres
            | Requirement::NatsServer => "services",
            Requirement::Valgrind => "bench",
            Requirement::DpkgDeb | Requirement::Minisign | Requirement::Skopeo => "release",
        }
    }

    /// Is it here? The answer says what was found, or what is missing and its fix.
    pub fn probe(&self) -> Check {
        probe::probe(*self)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::RustTarget(target) => write!(f, "rust target {}", target.triple),
            Requirement::Linker(target) => write!(f, "linker {}", target.linker),
            Requirement::QemuUser(target) => f.write_str(&target.qemu_user()),
            Requirement::Binfmt(target) => write!(f, "binfmt qemu-{}", target.arch),
            Requirement::QemuSystem(target) => f.write_str(target.qemu_system),
            Requirement::GuestKernel(target) => write!(f, "guest kernel {}", target.arch),
            Requirement::QemuImg => f.write_str("qemu-img (qemu-utils)"),
            Requirement::Mkfs => f.write_str("mkfs.ext4 (e2fsprogs)"),
            Requirement::Kvm => f.write_str("kvm"),
            Requirement::DockerEngine => f.write_str("docker engine"),
            Requirement::Postgres => f.write_str("postgres (initdb, pg_ctl)"),
            Requirement::NatsServer => f.write_str("nats-server"),
            Requirement::Valgrind => f.write_str("valgrind (callgrind)"),
            Requirement::CargoAuditable => f.write_str("cargo-auditable"),
            Requirement::DpkgDeb => f.write_str("dpkg-deb (dpkg)"),
            Requirement::Minisign => f.write_str("minisign"),
            Requirement::Skopeo => f.write_str("skopeo"),
            Requirement::DockerCompose => f.write_str("docker-compose"),
        }
    }
}

impl Serialize for Requirement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Found,
    Missing,
    /// Present but not usable; not an error when something else stands in (KVM → TCG).
    Unusable,
}

/// What a probe found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    #[serde(rename = "item")]
    pub requirement: Requirement,
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
    fn new(requirement: Requirement) -> Self {
        Self {
            requirement,
            category: requirement.category(),
            status: Status::Found,
            version: None,
            detail: None,
            fix: None,
            required: requirement.is_required(),
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
            self.requirement,
            self.fix.as_ref().map(ToString::to_string).unwrap_or_default()
        )
    }
}

/// Probes each of `requirements`.
pub fn probe_all(requirements: &[Requirement]) -> Vec<Check> {
    requirements.iter().map(Requirement::probe).collect()
}

/// Runs the fix of every missing one of `checks` that can be fixed; each fix comes back
/// with its outcome. One run provisions at a time, machine-wide; a run that waited for
/// another fixes only what that one left missing.
pub fn apply_fixes(checks: &[Check]) -> Vec<(Fix, Result<(), String>)> {
    let lock = system::machine_lock("provision");
    let missing: Vec<Requirement> = checks
        .iter()
        .filter(|c| c.is_missing())
        .map(|c| c.requirement)
        .collect();
    let still_missing: Vec<Check> = probe_all(&missing).into_iter().filter(Check::is_missing).collect();
    if let Err(err) = lock {
        // Without the lock, fixing is still better than not: say why it may collide.
        eprintln!("warning: provisioning unlocked ({err:#}); a concurrent install may fail");
    }
    fix::in_order(&still_missing)
        .into_iter()
        .map(|fix| {
            let result = fix::apply(&fix).map_err(|err| format!("{err:#}"));
            (fix, result)
        })
        .collect()
}

/// Installs, as `doctor --fix` would, whichever of `requirements` are missing; returns
/// what is still missing afterwards (with its fix), for the caller to report.
pub fn install_missing(requirements: &[Requirement], progress: &Progress) -> Vec<Check> {
    let missing: Vec<Check> = probe_all(requirements).into_iter().filter(Check::is_missing).collect();
    if missing.is_empty() {
        return missing;
    }
    let task = progress.task("provision");
    let missing = install_in(requirements, missing, &task);
    task.finish(if missing.is_empty() {
        "done"
    } else {
        "some remain missing"
    });
    missing
}

/// Installs whichever of `requirements` are missing, telling `task` (a step of a
/// command's own work, such as a build that needs a tool); fails with the fixes still to
/// make if anything is left.
pub fn ensure(requirements: &[Requirement], task: &Task) -> Result<()> {
    let missing: Vec<Check> = probe_all(requirements).into_iter().filter(Check::is_missing).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fail_on_gaps(install_in(requirements, missing, task))
}

fn install_in(requirements: &[Requirement], mut missing: Vec<Check>, task: &Task) -> Vec<Check> {
    // Everything asked for is probed again after each round, not only what was missing: a
    // fix can take away what was there (Debian's QEMU removes a newer qemu-utils from
    // backports, and qemu-img with it), and a second round puts it back.
    for _round in 0..2 {
        if missing.is_empty() {
            break;
        }
        task.step(format!(
            "installing: {}",
            fix::in_order(&missing)
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
        missing = probe_all(requirements).into_iter().filter(Check::is_missing).collect();
    }
    missing
}

/// `install_missing`, failing with the fixes still to make if anything is left.
pub fn provision(requirements: &[Requirement], progress: &Progress) -> Result<()> {
    fail_on_gaps(install_missing(requirements, progress))
}

fn fail_on_gaps(still_missing: Vec<Check>) -> Result<()> {
    if still_missing.is_empty() {
        return Ok(());
    }
    let lacking: Vec<String> = still_missing.iter().map(Check::describe_gap).collect();
    anyhow::bail!("this host lacks {}", lacking.join(", "))
}

/// Installs, for each of `targets`, what `needs` says it needs; returns the targets that
/// still lack something, with what (for commands that go on with the other targets).
pub fn install_per_target(
    targets: &[&'static Target],
    needs: impl Fn(&'static Target) -> Vec<Requirement>,
    progress: &Progress,
) -> BTreeMap<String, String> {
    let wanted: Vec<Requirement> = targets.iter().flat_map(|target| needs(target)).collect();
    let still_missing = install_missing(&wanted, progress);
    let mut failures = BTreeMap::new();
    for target in targets {
        let its_own = needs(target);
        let lacking: Vec<String> = still_missing
            .iter()
            .filter(|check| its_own.contains(&check.requirement))
            .map(Check::describe_gap)
            .collect();
        if !lacking.is_empty() {
            failures.insert(target.triple.to_string(), format!("missing {}", lacking.join(", ")));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_requirement_has_a_distinct_name() {
        let all = Requirement::all();
        let mut names: Vec<String> = all.iter().map(ToString::to_string).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "{names:?}");
    }

    #[test]
    fn a_foreign_target_needs_its_emulator_to_be_smoke_tested() {
        for target in &TARGETS {
            let needed = Requirement::to_build(target);
            assert!(needed.contains(&Requirement::RustTarget(target)));
            assert!(needed.contains(&Requirement::Linker(target)));
            assert!(needed.contains(&Requirement::CargoAuditable));
            assert_eq!(needed.contains(&Requirement::QemuUser(target)), target.is_foreign());
        }
    }
}
