//! How a gap is closed: precise enough to run by hand, and run by `--fix`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;
use services::process::{self, cmd};

use super::Check;
use crate::guest::kernels::GuestKernel;
use crate::system;
use crate::workspace::targets::QEMU_USER_PACKAGE;
use crate::workspace::Workspace;

pub(super) const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fix {
    RustupTarget {
        target: String,
    },
    /// A tool from crates.io at a pinned version, into cargo's own bin directory.
    CargoInstall {
        krate: String,
        version: String,
    },
    Apt {
        packages: Vec<String>,
    },
    Binfmt {
        arch: String,
    },
    GuestKernel {
        arch: String,
    },
    Manual {
        instruction: String,
    },
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fix::RustupTarget { target } => write!(f, "rustup target add {target}"),
            Fix::CargoInstall { krate, version } => {
                write!(f, "cargo install --locked {krate} --version {version} --force")
            }
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

/// The fixes of the missing `checks` that can be run, in the order they must run:
/// rustup first (cargo installs need no package, and build with the toolchain), then one
/// apt call for every package, then what needs those packages.
pub(super) fn in_order(checks: &[Check]) -> Vec<Fix> {
    let mut rustup = Vec::new();
    let mut packages = BTreeSet::new();
    let mut after_apt = Vec::new();
    for fix in checks.iter().filter(|c| c.is_missing()).filter_map(|c| c.fix.clone()) {
        match fix {
            Fix::RustupTarget { .. } | Fix::CargoInstall { .. } => rustup.push(fix),
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

pub(super) fn apply(fix: &Fix) -> Result<()> {
    match fix {
        Fix::RustupTarget { target } => {
            let sh = process::shell()?;
            process::run(cmd!(sh, "rustup target add {target}"))
        }
        Fix::CargoInstall { krate, version } => {
            // Outside any workspace: a cargo install reads no project's configuration.
            let sh = process::shell_in(&std::env::temp_dir())?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            process::run(cmd!(
                sh,
                "{cargo} install --locked --quiet {krate} --version {version} --force"
            ))
        }
        Fix::Apt { packages } => system::apt_install(packages),
        Fix::Binfmt { arch } => register_binfmt(arch),
        Fix::GuestKernel { arch } => {
            let workspace = Workspace::discover()?;
            let definition = crate::guest::load_definition(&workspace, arch)?;
            GuestKernel::of(&definition).fetch(&workspace.target_dir).map(drop)
        }
        Fix::Manual { instruction } => anyhow::bail!("needs a person: {instruction}"),
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
        let sh = process::shell()?;
        process::run(cmd!(sh, "mount -t binfmt_misc binfmt_misc {BINFMT_DIR}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::Requirement;

    fn missing(fix: Fix) -> Check {
        Check::new(Requirement::Valgrind).missing("absent", fix)
    }

    #[test]
    fn fixes_run_rustup_then_one_apt_call_then_binfmt() {
        let checks = vec![
            missing(Fix::Binfmt { arch: "aarch64".into() }),
            missing(Fix::Apt {
                packages: vec!["qemu-user-static".into()],
            }),
            missing(Fix::Apt {
                packages: vec!["nats-server".into(), "qemu-user-static".into()],
            }),
            missing(Fix::RustupTarget {
                target: "aarch64-unknown-linux-gnu".into(),
            }),
            missing(Fix::Manual {
                instruction: "ask".into(),
            }),
            Check::new(Requirement::Postgres).found(None),
        ];
        assert_eq!(
            in_order(&checks),
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
        let install = Fix::CargoInstall {
            krate: "k".into(),
            version: "1.2.3".into(),
        };
        assert_eq!(install.to_string(), "cargo install --locked k --version 1.2.3 --force");
    }
}
