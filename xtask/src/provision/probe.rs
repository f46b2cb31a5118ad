//! One probe per requirement: is it here, and which version?

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use services::host::postgres_bin_dir;
use services::process::{self, cmd};

use super::cargo_tools::{CargoTool, CARGO_AUDITABLE};
use super::fix::BINFMT_DIR;
use super::{Check, Fix, Requirement, Status};
use crate::guest::kernels::GuestKernel;
use crate::system::{self, kvm, which};
use crate::workspace::targets::{Target, QEMU_USER_PACKAGE};
use crate::workspace::Workspace;

pub(super) fn probe(requirement: Requirement) -> Check {
    let check = Check::new(requirement);
    match requirement {
        Requirement::RustTarget(target) => rust_target(check, target),
        Requirement::Linker(target) => linker(check, target),
        Requirement::QemuUser(target) => qemu_user(check, target),
        Requirement::Binfmt(target) => binfmt(check, target),
        Requirement::QemuSystem(target) => qemu_system(check, target),
        Requirement::GuestKernel(target) => guest_kernel(check, target),
        Requirement::QemuImg => packaged(check, "qemu-img", "qemu-utils", &["--version"], "VMs' data disks"),
        Requirement::Mkfs => packaged(check, "mkfs.ext4", "e2fsprogs", &["-V"], "VMs' data disks"),
        Requirement::Kvm => kvm(check),
        Requirement::DockerEngine => docker_engine(check),
        Requirement::Postgres => postgres(check),
        Requirement::NatsServer => program(check, "nats-server", "cross-node fan-out"),
        Requirement::Valgrind => program(
            check,
            "valgrind",
            "bench-compare's instruction counts (its default when CI is set)",
        ),
        Requirement::CargoAuditable => cargo_auditable(check),
        Requirement::DpkgDeb => packaged(check, "dpkg-deb", "dpkg", &["--version"], "a release's Debian packages"),
        Requirement::Minisign => packaged(
            check,
            "minisign",
            "minisign",
            &["-v"],
            "signing a release (dist --sign)",
        ),
        Requirement::Skopeo => packaged(
            check,
            "skopeo",
            "skopeo",
            &["--version"],
            "pushing a release's OCI archive",
        ),
        Requirement::DockerCompose => packaged(
            check,
            "docker-compose",
            "docker-compose",
            &["version", "--short"],
            "checking and running a rendered deployment",
        ),
    }
}

fn rust_target(check: Check, target: &Target) -> Check {
    let installed = process::shell()
        .and_then(|sh| process::output(cmd!(sh, "rustup target list --installed")))
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line == target.triple)
        })
        .unwrap_or(false);
    if installed {
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

fn linker(check: Check, target: &Target) -> Check {
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

fn qemu_user(check: Check, target: &Target) -> Check {
    let program = target.qemu_user();
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

fn binfmt(check: Check, target: &Target) -> Check {
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

fn qemu_system(check: Check, target: &Target) -> Check {
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
fn guest_kernel(check: Check, target: &Target) -> Check {
    let arch = target.arch;
    let definition = Workspace::discover().and_then(|workspace| {
        let definition = crate::guest::load_definition(&workspace, arch)?;
        Ok((workspace, definition))
    });
    let (workspace, definition) = match definition {
        Ok(found) => found,
        Err(err) => {
            return check.missing(
                "the image definition cannot be read",
                Fix::Manual {
                    instruction: format!("{err:#}"),
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

fn kvm(mut check: Check) -> Check {
    let probe = kvm::probe();
    if probe.usable {
        check.found(Some(probe.reason))
    } else {
        check.status = Status::Unusable;
        check.detail = Some(format!("{}; guests run under TCG", probe.reason));
        check
    }
}

fn docker_engine(check: Check) -> Check {
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

fn postgres(check: Check) -> Check {
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

/// cargo-auditable at the pinned version: another one would embed other bytes.
fn cargo_auditable(check: Check) -> Check {
    let CargoTool { krate, version: pinned } = CARGO_AUDITABLE;
    let fix = Fix::CargoInstall {
        krate: krate.into(),
        version: pinned.into(),
    };
    match (CARGO_AUDITABLE.executable(), CARGO_AUDITABLE.installed_version()) {
        (Some(_), Some(version)) if version == pinned => check.found(Some(version)),
        (Some(_), Some(version)) => check.missing(format!("version {version} installed; the builds pin {pinned}"), fix),
        _ => check.missing("every server binary carries its crate list", fix),
    }
}

/// A program of a Debian package; system tools live in sbin, which is not
/// on every user's PATH.
fn packaged(check: Check, name: &str, package: &str, version_args: &[&str], why: &str) -> Check {
    match system::sbin_program(name) {
        Some(path) => check.found(system::version_line(&path.to_string_lossy(), version_args)),
        None => check.missing(
            why,
            Fix::Apt {
                packages: vec![package.into()],
            },
        ),
    }
}

fn program(check: Check, name: &str, why: &str) -> Check {
    match which(name) {
        Some(_) => check.found(system::version_line(name, &["--version"])),
        None => check.missing(
            why,
            Fix::Apt {
                packages: vec![name.into()],
            },
        ),
    }
}
