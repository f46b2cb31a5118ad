//! Guest kernels for the QEMU images: Debian's kernel packages, fetched with
//! `apt-get download` through a private apt configuration per architecture and suite
//! (its own sources list, package lists and status file), so the host's apt is never
//! touched — not even for riscv64, which only trixie carries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::system;

#[derive(Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub arch: &'static str,
    /// Debian's name for the architecture.
    pub deb_arch: &'static str,
    pub suite: &'static str,
    /// The metapackage that depends on the current kernel of that flavour.
    pub metapackage: &'static str,
}

pub const KERNELS: [GuestKernel; 3] = [
    GuestKernel {
        arch: "x86_64",
        deb_arch: "amd64",
        suite: "bookworm",
        metapackage: "linux-image-cloud-amd64",
    },
    // The generic arm64 flavour: the cloud one lacks gpio_keys, so the ACPI power button
    // (QMP system_powerdown) would do nothing.
    GuestKernel {
        arch: "aarch64",
        deb_arch: "arm64",
        suite: "bookworm",
        metapackage: "linux-image-arm64",
    },
    GuestKernel {
        arch: "riscv64",
        deb_arch: "riscv64",
        suite: "trixie",
        metapackage: "linux-image-riscv64",
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl GuestKernel {
    pub fn cache_dir(&self, target_dir: &Path) -> PathBuf {
        target_dir.join("xtask/kernels").join(self.arch)
    }

    /// The downloaded kernel package, if there is one.
    pub fn cached(&self, target_dir: &Path) -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(self.cache_dir(target_dir))
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .collect();
        debs.sort();
        debs.pop()
    }

    /// Downloads the current kernel package of this flavour into the cache.
    pub fn fetch(&self, target_dir: &Path) -> Result<PathBuf> {
        let apt = PrivateApt::new(target_dir, self)?;
        apt.run("apt-get", &["update", "-qq"])
            .context("apt-get update (private lists)")?;
        let depends = apt.output("apt-cache", &["depends", self.metapackage])?;
        let package = kernel_package(&depends)
            .with_context(|| format!("{} names no kernel package:\n{depends}", self.metapackage))?;
        let dir = self.cache_dir(target_dir);
        std::fs::create_dir_all(&dir)?;
        let mut download = apt.command("apt-get", &["download", &package]);
        download.current_dir(&dir);
        system::run(&mut download).with_context(|| format!("apt-get download {package}"))?;
        self.cached(target_dir)
            .with_context(|| format!("{package} was not saved in {}", dir.display()))
    }
}

/// An apt configuration of its own for one architecture and suite.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(target_dir: &Path, kernel: &GuestKernel) -> Result<Self> {
        let root = target_dir.join(format!("xtask/apt/{}-{}", kernel.deb_arch, kernel.suite));
        for dir in ["lists/partial", "cache/archives/partial", "parts"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let sources = root.join("sources.list");
        std::fs::write(
            &sources,
            format!(
                "deb [arch={} signed-by={KEYRING}] {MIRROR} {} main\n",
                kernel.deb_arch, kernel.suite
            ),
        )?;
        let status = root.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        let settings = [
            ("Dir::Etc::SourceList", sources.display().to_string()),
            ("Dir::Etc::SourceParts", root.join("parts").display().to_string()),
            ("Dir::State::Lists", root.join("lists").display().to_string()),
            ("Dir::State::Status", status.display().to_string()),
            ("Dir::Cache", root.join("cache").display().to_string()),
            ("APT::Architecture", kernel.deb_arch.to_string()),
            ("APT::Architectures", kernel.deb_arch.to_string()),
        ];
        let options = settings
            .iter()
            .flat_map(|(key, value)| ["-o".to_string(), format!("{key}={value}")])
            .collect();
        Ok(Self { options })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options).args(args);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        system::run(&mut self.command(program, args))
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = self.command(program, args).output()?;
        if !output.status.success() {
            bail!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The versioned image package a kernel metapackage depends on.
fn kernel_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|name| name.starts_with("linux-image-") && name.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_package_is_picked_from_apt_cache_depends() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-41-cloud-amd64\n";
        assert_eq!(
            kernel_package(depends).as_deref(),
            Some("linux-image-6.1.0-41-cloud-amd64")
        );
        let riscv = "linux-image-riscv64\n  Depends: linux-image-6.12.57+deb13-riscv64\n  Depends: initramfs-tools\n";
        assert_eq!(
            kernel_package(riscv).as_deref(),
            Some("linux-image-6.12.57+deb13-riscv64")
        );
        assert_eq!(kernel_package("linux-image-x\n  Depends: firmware\n"), None);
    }
}
