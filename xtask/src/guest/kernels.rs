//! Guest kernels for the QEMU images: Debian's kernel packages, fetched with
//! `apt-get download` through a private apt configuration per architecture and suite
//! (its own sources list, package lists and status file), so the host's apt is never
//! touched — not even for riscv64, which only trixie carries. Which package is fetched
//! is pinned in the image definitions (qemu-images/<arch>.yaml), so an image changes only
//! when its definition does.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use services::process::{self, cmd, Cmd, Shell};

use crate::guest::ImageDefinition;
use crate::report::error::UsageError;
use crate::system;

/// The kernel package an image definition pins, and where it is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestKernel {
    pub arch: String,
    /// Debian's name for the architecture.
    pub deb_arch: &'static str,
    pub suite: String,
    /// The exact, versioned image package.
    pub package: String,
    /// The definition that pins it, named when the pin has gone stale.
    pub definition: PathBuf,
}

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl GuestKernel {
    pub(crate) fn of(definition: &ImageDefinition) -> Self {
        Self {
            arch: definition.arch.clone(),
            deb_arch: definition.target().deb_arch,
            suite: definition.kernel.suite.clone(),
            package: definition.kernel.package.clone(),
            definition: definition.path.clone(),
        }
    }

    /// The metapackage that always depends on the newest package of this flavour:
    /// `linux-image-6.1.0-50-cloud-amd64` → `linux-image-cloud-amd64`.
    pub(crate) fn metapackage(&self) -> String {
        let flavour: Vec<&str> = self
            .package
            .trim_start_matches("linux-image-")
            .split('-')
            .skip_while(|part| part.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        format!("linux-image-{}", flavour.join("-"))
    }

    pub(crate) fn cache_dir(&self, target_dir: &Path) -> PathBuf {
        target_dir.join("xtask/kernels").join(&self.arch)
    }

    /// The downloaded package (`<package>_<version>_<arch>.deb`), if there is one.
    pub(crate) fn cached(&self, target_dir: &Path) -> Option<PathBuf> {
        let prefix = format!("{}_", self.package);
        let mut debs: Vec<PathBuf> = std::fs::read_dir(self.cache_dir(target_dir))
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .collect();
        debs.sort();
        debs.pop()
    }

    /// Downloads the pinned package into the cache. When the mirror no longer has it
    /// (Debian drops superseded kernels at point releases), the error says what the
    /// flavour's metapackage points to now and which field to change.
    pub(crate) fn fetch(&self, target_dir: &Path) -> Result<PathBuf> {
        // The private apt state is shared by every run on this target directory.
        let _lock = system::machine_lock(&format!("kernel-{}-{}", self.deb_arch, self.suite))?;
        if let Some(deb) = self.cached(target_dir) {
            return Ok(deb);
        }
        let apt = PrivateApt::new(target_dir, self)?;
        apt.run("apt-get", &["update", "-qq"])
            .context("apt-get update (private lists)")?;
        if apt
            .output("apt-cache", &["show", "--no-all-versions", &self.package])
            .is_err()
        {
            let metapackage = self.metapackage();
            let current = apt
                .output("apt-cache", &["depends", &metapackage])
                .ok()
                .and_then(|depends| kernel_package(&depends));
            let fix = match current {
                Some(current) => format!(
                    "set it to {current}, which {metapackage} depends on now (then `cargo xtask qemu-image --arch {}`)",
                    self.arch
                ),
                None => format!("pin a package that `apt-cache depends {metapackage}` names"),
            };
            return Err(UsageError::at(
                self.definition.display(),
                "kernel.package",
                format!(
                    "{MIRROR} {} has no {} (Debian drops superseded kernels at point releases)",
                    self.suite, self.package
                ),
                fix,
            )
            .into());
        }
        let dir = self.cache_dir(target_dir);
        std::fs::create_dir_all(&dir)?;
        let sh = process::shell_in(&dir)?;
        process::run(apt.command(&sh, "apt-get", &["download", &self.package]))
            .with_context(|| format!("apt-get download {}", self.package))?;
        self.cached(target_dir)
            .with_context(|| format!("{} was not saved in {}", self.package, dir.display()))
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

    fn command<'a>(&self, sh: &'a Shell, program: &str, args: &[&str]) -> Cmd<'a> {
        let options = &self.options;
        cmd!(sh, "{program} {options...} {args...}")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let sh = process::shell()?;
        process::run(self.command(&sh, program, args))
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let sh = process::shell()?;
        let output = process::output(self.command(&sh, program, args))?;
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

    fn kernel(package: &str) -> GuestKernel {
        GuestKernel {
            arch: "x86_64".into(),
            deb_arch: "amd64",
            suite: "bookworm".into(),
            package: package.into(),
            definition: PathBuf::from("qemu-images/x86_64.yaml"),
        }
    }

    #[test]
    fn the_metapackage_is_the_package_without_its_version() {
        assert_eq!(
            kernel("linux-image-6.1.0-50-cloud-amd64").metapackage(),
            "linux-image-cloud-amd64"
        );
        assert_eq!(kernel("linux-image-6.1.0-50-arm64").metapackage(), "linux-image-arm64");
        assert_eq!(
            kernel("linux-image-6.12.57+deb13-riscv64").metapackage(),
            "linux-image-riscv64"
        );
    }

    #[test]
    fn only_the_pinned_package_counts_as_cached() {
        let dir = std::env::temp_dir().join(format!("xtask-kernels-unit-{}", std::process::id()));
        let kernel = kernel("linux-image-6.1.0-50-cloud-amd64");
        let cache = kernel.cache_dir(&dir);
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("linux-image-6.1.0-49-cloud-amd64_6.1.170-1_amd64.deb"), "").unwrap();
        assert_eq!(kernel.cached(&dir), None);
        let pinned = cache.join("linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb");
        std::fs::write(&pinned, "").unwrap();
        assert_eq!(kernel.cached(&dir), Some(pinned));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
