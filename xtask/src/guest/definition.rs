//! Image definitions, `qemu-images/<arch>.yaml`: how a guest of one architecture is
//! emulated (QEMU binary, machine, CPU, accelerators, memory, vCPUs, network device),
//! which Debian kernel package it boots, the modules its init loads and the kernel
//! command line. Every mistake names the file, the field and the fix (exit status 2).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::error::UsageError;
use crate::system::kvm;
use crate::workspace::targets::{self, Target};
use crate::workspace::Workspace;

#[derive(Debug, Clone, Serialize)]
pub struct ImageDefinition {
    pub arch: String,
    /// The YAML file this was read from.
    pub path: PathBuf,
    pub description: Option<String>,
    pub qemu: QemuSection,
    pub kernel: KernelSection,
    /// Modules the guest's init loads, as written; dependencies are added when the
    /// image is built.
    pub modules: Vec<String>,
    pub cmdline: String,
    /// sha256 of the file's bytes: part of the built image's cache key.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuSection {
    /// `qemu-system-<arch>`, or a path to one.
    pub binary: String,
    /// `-M`: e.g. q35, virt.
    pub machine: String,
    /// `-cpu`.
    pub cpu: String,
    /// In order of preference; the first one that works on this host is used.
    pub accelerators: Vec<Accelerator>,
    /// `-m`, in MiB.
    pub memory_mib: u32,
    /// `-smp`.
    pub vcpus: u32,
    /// The `-device` model and its properties, e.g. `virtio-net-pci,romfile=`; whoever
    /// boots the image appends `,netdev=<id>`.
    pub network_device: String,
    /// The `-device` model of the VM's data disk; whoever boots the image appends `,drive=<id>`.
    #[serde(default = "QemuSection::default_disk_device")]
    pub disk_device: String,
    /// The `-device` model of the virtio-serial bus that carries the toolchain's agent port.
    #[serde(default = "QemuSection::default_serial_bus")]
    pub serial_bus: String,
    /// Further QEMU arguments, passed as they are.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// How a clean shutdown is asked of the guest over QMP.
    #[serde(default)]
    pub powerdown: Powerdown,
}

impl QemuSection {
    fn default_disk_device() -> String {
        "virtio-blk-pci".into()
    }

    fn default_serial_bus() -> String {
        "virtio-serial-pci".into()
    }
}

/// The QMP request that makes the guest's init see KEY_POWER and power off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Powerdown {
    /// `system_powerdown`: the machine's power button (ACPI on q35, a GPIO key on arm virt).
    #[default]
    SystemPowerdown,
    /// `send-key` with the `power` key, for machines without a power button (riscv64
    /// virt): needs a keyboard device (e.g. virtio-keyboard-pci) in `extra_args`.
    PowerKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// The Debian suite the package comes from: bookworm, trixie, …
    pub suite: String,
    /// The exact, versioned image package (not the metapackage), so that an image
    /// only changes when this file does.
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    /// QEMU's name, as given to `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    description: Option<String>,
    arch: String,
    qemu: QemuSection,
    kernel: KernelSection,
    modules: Vec<String>,
    cmdline: String,
}

/// Where the image definitions live.
pub(crate) fn definitions_dir(workspace: &Workspace) -> PathBuf {
    workspace.root.join("qemu-images")
}

/// `qemu-images/<arch>.yaml`.
pub(crate) fn load_definition(workspace: &Workspace, arch: &str) -> Result<ImageDefinition, UsageError> {
    let dir = definitions_dir(workspace);
    if targets::TARGETS.iter().all(|t| t.arch != arch) {
        return Err(UsageError(format!(
            "no image definition for architecture `{arch}`\n  fix: use one of {}",
            crate::workspace::yaml_names(&dir).join(", ")
        )));
    }
    let definition = load_file(&dir.join(format!("{arch}.yaml")))?;
    if definition.arch != arch {
        return Err(UsageError::at(
            definition.path.display(),
            "arch",
            format!("says `{}`, but the file is the definition for {arch}", definition.arch),
            format!("set it to {arch}"),
        ));
    }
    Ok(definition)
}

/// An image definition at any path (e.g. a variant kept outside qemu-images/).
pub(crate) fn load_file(path: &Path) -> Result<ImageDefinition, UsageError> {
    let bytes = std::fs::read(path).map_err(|err| {
        let listed = path.parent().map(crate::workspace::yaml_names).unwrap_or_default();
        UsageError(format!(
            "image definition {}: cannot read it: {err}\n  fix: use one of {}",
            path.display(),
            if listed.is_empty() {
                "x86_64, aarch64, riscv64".into()
            } else {
                listed.join(", ")
            }
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        UsageError(format!(
            "image definition {}: not UTF-8 text\n  fix: save it as UTF-8 YAML",
            path.display()
        ))
    })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<ImageDefinition, UsageError> {
    let place = path.display();
    let document = serde_yaml::Deserializer::from_str(text);
    let file: DefinitionFile = serde_path_to_error::deserialize(document)
        .map_err(|err| UsageError::yaml(&place, err, "qemu-images/x86_64.yaml"))?;
    validate(path, &file)?;
    Ok(ImageDefinition {
        arch: file.arch,
        path: path.to_path_buf(),
        description: file.description,
        qemu: file.qemu,
        kernel: file.kernel,
        modules: file.modules,
        cmdline: file.cmdline,
        sha256: crate::system::hex(&Sha256::digest(text.as_bytes())),
    })
}

/// Values serde accepts but a guest cannot boot with.
fn validate(path: &Path, file: &DefinitionFile) -> Result<(), UsageError> {
    let place = path.display();
    let bad = |field: &str, problem: String, fix: &str| Err(UsageError::at(&place, field, problem, fix));
    if targets::TARGETS.iter().all(|t| t.arch != file.arch) {
        let arches: Vec<&str> = targets::TARGETS.iter().map(|t| t.arch).collect();
        return bad(
            "arch",
            format!("unknown architecture `{}`", file.arch),
            &format!("use one of {}", arches.join(", ")),
        );
    }
    let qemu = &file.qemu;
    for (field, value, example) in [
        ("qemu.binary", &qemu.binary, "qemu-system-x86_64"),
        ("qemu.machine", &qemu.machine, "q35 or virt"),
        ("qemu.cpu", &qemu.cpu, "qemu64 or cortex-a57"),
        ("qemu.network_device", &qemu.network_device, "virtio-net-pci,romfile="),
        ("qemu.disk_device", &qemu.disk_device, "virtio-blk-pci"),
        ("qemu.serial_bus", &qemu.serial_bus, "virtio-serial-pci"),
    ] {
        if value.trim().is_empty() || value.contains(char::is_whitespace) {
            return bad(
                field,
                format!("`{value}` is empty or has spaces"),
                &format!("use e.g. {example}"),
            );
        }
    }
    if qemu.accelerators.is_empty() {
        return bad(
            "qemu.accelerators",
            "empty".into(),
            "list them in order of preference, e.g. [kvm, tcg]",
        );
    }
    if qemu.accelerators.iter().collect::<BTreeSet<_>>().len() != qemu.accelerators.len() {
        return bad(
            "qemu.accelerators",
            "lists one twice".into(),
            "name each at most once, e.g. [kvm, tcg]",
        );
    }
    // The initramfs is unpacked into RAM beside the running server.
    if qemu.memory_mib < 64 {
        return bad(
            "qemu.memory_mib",
            format!(
                "{} MiB cannot hold the kernel, the initramfs and the server",
                qemu.memory_mib
            ),
            "use at least 128, e.g. 256",
        );
    }
    if !(1..=64).contains(&qemu.vcpus) {
        return bad(
            "qemu.vcpus",
            format!("{} is not between 1 and 64", qemu.vcpus),
            "use e.g. 1 or 2",
        );
    }
    if file.kernel.suite.is_empty() || !file.kernel.suite.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
        return bad(
            "kernel.suite",
            format!("`{}` is not a Debian suite name", file.kernel.suite),
            "use e.g. bookworm or trixie",
        );
    }
    let package = &file.kernel.package;
    let versioned = package
        .strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
    if !versioned || package.contains(char::is_whitespace) {
        return bad(
            "kernel.package",
            format!("`{package}` is not a versioned Debian kernel image package"),
            "pin one such as linux-image-6.1.0-50-cloud-amd64 (`apt-cache depends linux-image-cloud-amd64` names the current one)",
        );
    }
    let mut seen = BTreeSet::new();
    for (index, name) in file.modules.iter().enumerate() {
        let field = format!("modules[{index}]");
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !plain {
            return bad(
                &field,
                format!("`{name}` is not a module name"),
                "use the name without a path or .ko, e.g. virtio_net",
            );
        }
        if !seen.insert(name.replace('-', "_")) {
            return bad(&field, format!("`{name}` is listed twice"), "list each module once");
        }
    }
    if file.cmdline.trim().is_empty() {
        return bad(
            "cmdline",
            "empty".into(),
            "give at least the console, e.g. `console=ttyS0 panic=-1`",
        );
    }
    Ok(())
}

impl ImageDefinition {
    /// The build target of this architecture (`arch` was checked against them on load).
    pub fn target(&self) -> &'static Target {
        targets::TARGETS
            .iter()
            .find(|t| t.arch == self.arch)
            .unwrap_or(&targets::TARGETS[0])
    }

    /// The name of the built image's directory: the definition file's name without
    /// `.yaml` (the architecture, for the definitions in qemu-images/).
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.arch.clone())
    }

    /// The first accelerator of `qemu.accelerators` that works here, and why. KVM counts
    /// only for the host's own architecture and when the probe says it can really boot
    /// a guest (a nested, para-virtual /dev/kvm cannot).
    pub fn accelerator(&self) -> Result<(Accelerator, String), UsageError> {
        let probe = kvm::probe();
        let mut refused = Vec::new();
        for accelerator in &self.qemu.accelerators {
            match accelerator {
                Accelerator::Tcg => return Ok((Accelerator::Tcg, "TCG (emulation)".into())),
                Accelerator::Kvm if self.target().is_foreign() => refused.push(format!(
                    "kvm: a {} guest on a {} host",
                    self.arch,
                    std::env::consts::ARCH
                )),
                Accelerator::Kvm if !probe.usable => refused.push(format!("kvm: {}", probe.reason)),
                Accelerator::Kvm => return Ok((Accelerator::Kvm, probe.reason)),
            }
        }
        Err(UsageError::at(
            self.path.display(),
            "qemu.accelerators",
            format!("none works on this host ({})", refused.join("; ")),
            "add tcg as the fallback: [kvm, tcg]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "\
description: test
arch: x86_64
qemu:
  binary: qemu-system-x86_64
  machine: q35
  cpu: qemu64
  accelerators: [kvm, tcg]
  memory_mib: 256
  vcpus: 1
  network_device: virtio-net-pci,romfile=
kernel:
  suite: bookworm
  package: linux-image-6.1.0-50-cloud-amd64
modules: [virtio_pci, virtio_net]
cmdline: console=ttyS0 panic=-1
";

    fn parse_text(text: &str) -> Result<ImageDefinition, UsageError> {
        parse(Path::new("qemu-images/test.yaml"), text)
    }

    fn error_of(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_definition_is_read() {
        let definition = parse_text(VALID).unwrap();
        assert_eq!(definition.arch, "x86_64");
        assert_eq!(definition.qemu.accelerators, [Accelerator::Kvm, Accelerator::Tcg]);
        assert!(definition.qemu.extra_args.is_empty());
        assert_eq!(definition.qemu.powerdown, Powerdown::SystemPowerdown);
        assert_eq!(definition.modules, ["virtio_pci", "virtio_net"]);
        assert_eq!(definition.name(), "test");
        assert_eq!(definition.target().triple, "x86_64-unknown-linux-gnu");
        assert_eq!(definition.sha256.len(), 64);
    }

    #[test]
    fn an_unknown_field_names_file_and_field() {
        let err = error_of(&VALID.replace("  vcpus: 1\n", "  vcpus: 1\n  vpcus: 2\n"));
        assert!(err.contains("qemu-images/test.yaml"), "{err}");
        assert!(err.contains("qemu.vpcus"), "{err}");
        assert!(err.contains("fix:") && err.contains("`vcpus`"), "{err}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = error_of(&VALID.replace("cmdline: console=ttyS0 panic=-1\n", ""));
        assert!(err.contains("cmdline"), "{err}");
    }

    #[test]
    fn the_power_key_route_is_read_and_a_bad_one_named() {
        let text = VALID.replace("  vcpus: 1\n", "  vcpus: 1\n  powerdown: power_key\n");
        assert_eq!(parse_text(&text).unwrap().qemu.powerdown, Powerdown::PowerKey);
        let err = error_of(&VALID.replace("  vcpus: 1\n", "  vcpus: 1\n  powerdown: acpi\n"));
        assert!(err.contains("qemu.powerdown") && err.contains("`power_key`"), "{err}");
    }

    #[test]
    fn a_bad_accelerator_lists_the_known_ones() {
        let err = error_of(&VALID.replace("[kvm, tcg]", "[kvm, hvf]"));
        assert!(err.contains("qemu.accelerators[1]"), "{err}");
        assert!(err.contains("`tcg`"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (from, to, field) in [
            ("arch: x86_64", "arch: mips", "`arch`"),
            ("memory_mib: 256", "memory_mib: 0", "qemu.memory_mib"),
            ("memory_mib: 256", "memory_mib: -1", "qemu.memory_mib"),
            ("vcpus: 1", "vcpus: 0", "qemu.vcpus"),
            ("binary: qemu-system-x86_64", "binary: ''", "qemu.binary"),
            ("[kvm, tcg]", "[]", "qemu.accelerators"),
            ("[kvm, tcg]", "[tcg, tcg]", "qemu.accelerators"),
            (
                "linux-image-6.1.0-50-cloud-amd64",
                "linux-image-cloud-amd64",
                "kernel.package",
            ),
            ("suite: bookworm", "suite: Bookworm 12", "kernel.suite"),
            ("[virtio_pci, virtio_net]", "[virtio_pci, virtio_net.ko]", "modules[1]"),
            ("[virtio_pci, virtio_net]", "[virtio_pci, virtio-pci]", "modules[1]"),
            ("cmdline: console=ttyS0 panic=-1", "cmdline: ' '", "`cmdline`"),
        ] {
            let text = VALID.replace(from, to);
            assert_ne!(text, VALID, "{from}");
            let err = error_of(&text);
            assert!(err.contains("qemu-images/test.yaml"), "{err}");
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains("fix:"), "{err}");
        }
    }

    #[test]
    fn tcg_is_always_available_and_kvm_never_for_a_foreign_guest() {
        let definition = parse_text(&VALID.replace("[kvm, tcg]", "[tcg]")).unwrap();
        assert_eq!(definition.accelerator().unwrap().0, Accelerator::Tcg);
        let foreign = if std::env::consts::ARCH == "aarch64" {
            "riscv64"
        } else {
            "aarch64"
        };
        let kvm_only = parse_text(
            &VALID
                .replace("[kvm, tcg]", "[kvm]")
                .replace("arch: x86_64", &format!("arch: {foreign}")),
        )
        .unwrap();
        let err = kvm_only.accelerator().unwrap_err().to_string();
        assert!(err.contains("qemu.accelerators") && err.contains("tcg"), "{err}");
    }
}
