//! QEMU: the machine a guest definition describes, QMP (the protocol qemu-cluster drives
//! every VM through), the VMs themselves, their fault checks, and the host plan.

pub mod checks;
pub mod disk;
pub mod guests;
pub mod nodes;
pub mod plan;
pub mod qmp;
pub mod vm;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::guest::cpio::CpioWriter;
use crate::guest::image::BuiltImage;
use crate::guest::{Accelerator, ImageDefinition};

/// The arguments (after the QEMU binary) that make the machine a definition describes
/// and boot `kernel` with `initrd` and `cmdline`; callers add the console, network and
/// control they want.
pub fn machine_args(
    definition: &ImageDefinition,
    accelerator: Accelerator,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Vec<OsString> {
    let qemu = &definition.qemu;
    let mut args: Vec<OsString> = [
        "-machine",
        &qemu.machine,
        "-cpu",
        &qemu.cpu,
        "-accel",
        accelerator.as_str(),
        "-m",
        &qemu.memory_mib.to_string(),
        "-smp",
        &qemu.vcpus.to_string(),
        "-nodefaults",
        "-display",
        "none",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(qemu.extra_args.iter().map(OsString::from));
    args.extend([
        "-kernel".into(),
        kernel.into(),
        "-initrd".into(),
        initrd.into(),
        "-append".into(),
        cmdline.into(),
    ]);
    args
}

/// A QEMU command line that boots `image` with its console on stdio and no network:
/// what a person runs to look at a guest; qemu-cluster adds networking and QMP.
pub fn boot_command(definition: &ImageDefinition, image: &BuiltImage, accelerator: Accelerator) -> Vec<String> {
    let mut command = vec![definition.qemu.binary.clone()];
    let machine = machine_args(definition, accelerator, &image.kernel, &image.initramfs, &image.cmdline);
    command.extend(machine.iter().map(|arg| arg.to_string_lossy().into_owned()));
    command.extend(["-serial", "stdio", "-no-reboot"].map(String::from));
    command
}

/// The image's initramfs with the profile appended as a second archive, which the
/// kernel unpacks over the first: one image serves every profile.
fn with_profile(initramfs: &Path, profile: &Path, run_dir: &Path) -> Result<PathBuf> {
    let mut bytes = std::fs::read(initramfs).with_context(|| format!("reading {}", initramfs.display()))?;
    let yaml = std::fs::read(profile).with_context(|| format!("reading {}", profile.display()))?;
    let mut overlay = CpioWriter::new(Vec::new());
    overlay.file(vm::GUEST_PROFILE, 0o644, &yaml)?;
    let overlay = overlay.finish()?;
    // Each archive in the initramfs starts on a 4-byte boundary.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.write_all(&overlay)?;
    let stem = initramfs
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = run_dir.join(format!("{stem}.initrd"));
    std::fs::write(&path, bytes)?;
    Ok(path)
}
