//! The architectures PlexiChat ships for, and what building and running each needs.
//!
//! Every target is `*-unknown-linux-gnu` linked with `+crt-static` by Debian's gcc for
//! that architecture: fully static, and glibc (2.34 and later) resolves host names from
//! /etc/hosts and DNS without loading NSS libraries, so a binary alone in a FROM-scratch
//! image or a VM's initramfs can still reach `postgres://db-host/…`. musl was the other
//! route, but riscv64's musl std cannot be installed here and its C code needs zig.

use crate::report::error::UsageError;

#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// Short name used on the command line and in profiles.
    pub arch: &'static str,
    pub triple: &'static str,
    /// gcc that links (and compiles bundled C for) this target.
    pub linker: &'static str,
    /// Debian packages providing the linker and a static libc for it.
    pub toolchain_packages: &'static [&'static str],
    /// The static C library the link needs.
    pub static_libc: &'static str,
    /// ELF e_machine of this architecture's binaries.
    pub elf_machine: u16,
    pub qemu_system: &'static str,
    pub qemu_system_package: &'static str,
    /// Debian's name for the architecture (kernel packages, apt).
    pub deb_arch: &'static str,
}

pub const TARGETS: [Target; 3] = [
    Target {
        arch: "x86_64",
        triple: "x86_64-unknown-linux-gnu",
        linker: "x86_64-linux-gnu-gcc",
        toolchain_packages: &["gcc", "libc6-dev"],
        static_libc: "/usr/lib/x86_64-linux-gnu/libc.a",
        elf_machine: 62,
        qemu_system: "qemu-system-x86_64",
        qemu_system_package: "qemu-system-x86",
        deb_arch: "amd64",
    },
    Target {
        arch: "aarch64",
        triple: "aarch64-unknown-linux-gnu",
        linker: "aarch64-linux-gnu-gcc",
        toolchain_packages: &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        static_libc: "/usr/aarch64-linux-gnu/lib/libc.a",
        elf_machine: 183,
        qemu_system: "qemu-system-aarch64",
        qemu_system_package: "qemu-system-arm",
        deb_arch: "arm64",
    },
    Target {
        arch: "riscv64",
        triple: "riscv64gc-unknown-linux-gnu",
        linker: "riscv64-linux-gnu-gcc",
        toolchain_packages: &["gcc-riscv64-linux-gnu", "libc6-dev-riscv64-cross"],
        static_libc: "/usr/riscv64-linux-gnu/lib/libc.a",
        elf_machine: 243,
        qemu_system: "qemu-system-riscv64",
        qemu_system_package: "qemu-system-misc",
        deb_arch: "riscv64",
    },
];

/// Debian's package for the qemu-user emulators (`qemu-<arch>-static`).
pub const QEMU_USER_PACKAGE: &str = "qemu-user-static";

impl Target {
    /// Whether binaries for this target need an emulator on this host.
    pub fn is_foreign(&self) -> bool {
        self.arch != std::env::consts::ARCH
    }

    /// The qemu-user emulator for this architecture.
    pub fn qemu_user(&self) -> String {
        format!("qemu-{}-static", self.arch)
    }

    /// Cargo's environment-variable spelling of the triple: `CARGO_TARGET_<THIS>_LINKER`.
    pub fn env_key(&self) -> String {
        self.triple.to_uppercase().replace('-', "_")
    }
}

/// `x86_64`, a triple such as `aarch64-unknown-linux-gnu`, or `all`.
/// The target of the architecture `arch` (x86_64, aarch64, riscv64).
pub fn by_arch(arch: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.arch == arch)
}

/// The target of this host's architecture: its static binaries run here natively.
pub fn host() -> Result<&'static Target, UsageError> {
    TARGETS.iter().find(|target| !target.is_foreign()).ok_or_else(|| {
        UsageError(format!(
            "this host ({}) is none of the architectures PlexiChat ships for\n  fix: run the toolchain on one of {}",
            std::env::consts::ARCH,
            allowed()
        ))
    })
}

pub fn parse(name: &str) -> Result<Vec<&'static Target>, String> {
    if name == "all" {
        return Ok(TARGETS.iter().collect());
    }
    TARGETS
        .iter()
        .find(|t| t.arch == name || t.triple == name)
        .map(|t| vec![t])
        .ok_or_else(|| format!("unknown target `{name}`"))
}

/// The names `parse` accepts, for error messages.
pub fn allowed() -> String {
    let mut names: Vec<&str> = TARGETS.iter().flat_map(|t| [t.arch, t.triple]).collect();
    names.push("all");
    names.join(", ")
}

/// Parses target names given on the command line, de-duplicated in matrix order.
pub fn from_flags(names: &[String]) -> Result<Vec<&'static Target>, UsageError> {
    let mut chosen = Vec::new();
    for name in names {
        let targets = parse(name)
            .map_err(|problem| UsageError(format!("--target: {problem}\n  fix: use one of {}", allowed())))?;
        chosen.extend(targets);
    }
    Ok(TARGETS.iter().filter(|t| chosen.contains(t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_triples_parse() {
        assert_eq!(parse("aarch64").unwrap()[0].triple, "aarch64-unknown-linux-gnu");
        assert_eq!(parse("riscv64gc-unknown-linux-gnu").unwrap()[0].arch, "riscv64");
        assert_eq!(parse("all").unwrap().len(), 3);
        assert!(parse("mips").is_err());
    }

    #[test]
    fn flags_keep_matrix_order_without_duplicates() {
        let names = ["riscv64", "x86_64", "riscv64gc-unknown-linux-gnu"].map(String::from);
        let arches: Vec<&str> = from_flags(&names).unwrap().iter().map(|t| t.arch).collect();
        assert_eq!(arches, ["x86_64", "riscv64"]);
        let err = from_flags(&["sparc".to_string()]).unwrap_err().to_string();
        assert!(err.contains("--target") && err.contains("aarch64"), "{err}");
    }

    #[test]
    fn env_key_is_cargos_spelling() {
        assert_eq!(TARGETS[2].env_key(), "RISCV64GC_UNKNOWN_LINUX_GNU");
    }
}
