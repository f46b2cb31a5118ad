//! `cargo xtask qemu-image`: guest images, one per architecture, from the definitions in
//! qemu-images/<arch>.yaml. An image is a kernel (from the pinned Debian package, made
//! directly bootable) and a gzipped initramfs written here: the static server as /init,
//! the kernel modules its init loads and their load order. Built images live in
//! target/xtask/qemu-images/<arch>/ with an image.json; an image whose inputs have not
//! changed is reused, not rebuilt.

pub mod definition;
pub mod initramfs;
pub mod kernel;
pub mod modules;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use definition::{load_definition, load_file, Accelerator, ImageDefinition, KernelSection, Powerdown, QemuSection};
pub use kernel::KernelFormat;
pub use modules::ModuleEntry;

use crate::build_native::{self, hex};
use crate::error::UsageError;
use crate::kernels::GuestKernel;
use crate::profile::{BuildSection, Profile};
use crate::progress::{Progress, Task};
use crate::report::{Report, Table};
use crate::system;
use crate::targets::{Target, TARGETS};
use crate::teardown::TempDir;
use crate::workspace::Workspace;

/// Bumped whenever the same inputs would now make a different image.
const FORMAT_VERSION: u32 = 1;

#[derive(clap::Args)]
pub struct Args {
    /// x86_64, aarch64, riscv64, or all.
    #[arg(long, default_value = "all", value_name = "ARCH")]
    arch: String,
    /// Build this image definition file instead of qemu-images/<ARCH>.yaml.
    #[arg(long, value_name = "FILE", conflicts_with = "arch")]
    definition: Option<PathBuf>,
    /// Profile: NAME for profiles/NAME.yaml, or a path; its build section makes the server.
    #[arg(long, default_value = "release")]
    profile: String,
}

/// A built image, as recorded in its image.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltImage {
    pub arch: String,
    /// The definition's name: its file name without `.yaml`.
    pub name: String,
    pub definition: PathBuf,
    pub cache_key: String,
    pub kernel_package: String,
    /// The .deb it came from.
    pub kernel_deb: String,
    /// `uname -r` of the guest.
    pub kernel_version: String,
    pub kernel_format: KernelFormat,
    pub kernel: PathBuf,
    pub kernel_bytes: u64,
    pub initramfs: PathBuf,
    pub initramfs_bytes: u64,
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub binary_bytes: u64,
    /// In load order; built-in ones are listed but not in the initramfs.
    pub modules: Vec<ModuleEntry>,
    pub cmdline: String,
    /// Seconds spent building; 0 on a cache hit.
    pub seconds: f64,
    pub cache_hit: bool,
}

#[derive(Serialize)]
struct ImageReport<'a> {
    ok: bool,
    profile: &'a str,
    images: &'a [BuiltImage],
    failures: &'a std::collections::BTreeMap<String, String>,
}

pub fn run(args: Args) -> Result<Report> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let definitions = match &args.definition {
        Some(path) => vec![load_file(path)?],
        None => arches(&args.arch)?
            .into_iter()
            .map(|arch| load_definition(&workspace, arch))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let progress = Progress::new();
    let targets: Vec<&'static Target> = definitions.iter().map(|d| d.target()).collect();
    let mut failures = build_native::provision(&targets, &progress);
    let mut images = Vec::new();
    for definition in &definitions {
        let task = progress.task(&definition.name());
        if let Some(missing) = failures.get(definition.target().triple).cloned() {
            task.finish(format!("FAILED: {missing}"));
            failures.remove(definition.target().triple);
            failures.insert(definition.name(), missing);
            continue;
        }
        match ensure(&workspace, definition, &profile.build, &task) {
            Ok(image) => {
                task.finish(if image.cache_hit {
                    "ok (cached)".to_string()
                } else {
                    format!("ok (built in {:.1} s)", image.seconds)
                });
                images.push(image);
            }
            // A definition that is wrong stops the run: exit status 2 names its field.
            Err(err) if err.downcast_ref::<UsageError>().is_some() => {
                task.finish("FAILED: the image definition needs fixing");
                return Err(err);
            }
            Err(err) => {
                task.finish(format!("FAILED: {}", first_line(&format!("{err:#}"))));
                failures.insert(definition.name(), format!("{err:#}"));
            }
        }
    }
    let ok = failures.is_empty();
    let mut table = Table::new(&[
        "image",
        "result",
        "cache",
        "kernel package",
        "modules",
        "kernel",
        "initramfs",
        "s",
    ]);
    for image in &images {
        let built_in = image.modules.iter().filter(|m| m.built_in).count();
        table.row(vec![
            image.name.clone(),
            "ok".into(),
            if image.cache_hit { "hit" } else { "miss" }.into(),
            image.kernel_package.clone(),
            format!("{} (+{built_in} built in)", image.modules.len() - built_in),
            megabytes(image.kernel_bytes),
            megabytes(image.initramfs_bytes),
            format!("{:.1}", image.seconds),
        ]);
    }
    for (name, error) in &failures {
        let mut row = vec![name.clone(), "FAILED".into()];
        row.extend(["-"; 5].map(String::from));
        row.push(first_line(error));
        table.row(row);
    }
    let mut summary = format!(
        "images: {}/<arch>/ (kernel, initramfs.cpio.gz, image.json)",
        workspace.target_dir.join("xtask/qemu-images").display()
    );
    if let Some((image, definition)) = images.first().and_then(|image| {
        let definition = definitions.iter().find(|d| d.name() == image.name)?;
        Some((image, definition))
    }) {
        if let Ok((accelerator, _)) = definition.accelerator() {
            summary.push_str(&format!(
                "\nboot {} by hand: {}",
                image.name,
                shell_words(&boot_command(definition, image, accelerator))
            ));
        }
    }
    for (name, error) in &failures {
        summary.push_str(&format!("\n{name}: {error}"));
    }
    let report = ImageReport {
        ok,
        profile: &profile.name,
        images: &images,
        failures: &failures,
    };
    Ok(Report::new(ok, table, &report).with_summary(summary))
}

/// The architectures `--arch` names.
fn arches(flag: &str) -> Result<Vec<&'static str>, UsageError> {
    if flag == "all" {
        return Ok(TARGETS.iter().map(|t| t.arch).collect());
    }
    match TARGETS.iter().find(|t| t.arch == flag) {
        Some(target) => Ok(vec![target.arch]),
        None => Err(UsageError(format!(
            "--arch: unknown architecture `{flag}`\n  fix: use one of x86_64, aarch64, riscv64, all"
        ))),
    }
}

/// Where the image of `definition` is built.
pub fn image_dir(workspace: &Workspace, definition: &ImageDefinition) -> PathBuf {
    workspace.target_dir.join("xtask/qemu-images").join(definition.name())
}

/// The image `definition` describes, with the server as `build` makes it: reused when
/// nothing it is made from has changed, else built (fetching the kernel package and
/// building the server first if needed).
pub fn ensure(
    workspace: &Workspace,
    definition: &ImageDefinition,
    build: &BuildSection,
    task: &Task,
) -> Result<BuiltImage> {
    let started = Instant::now();
    let guest_kernel = GuestKernel::of(definition);
    let deb = match guest_kernel.cached(&workspace.target_dir) {
        Some(deb) => deb,
        None => {
            task.step(format!("fetching {} ({})", guest_kernel.package, guest_kernel.suite));
            guest_kernel.fetch(&workspace.target_dir)?
        }
    };
    let binary = build_native::target_binary(workspace, build, definition.target(), task)?;
    let server = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let binary_sha256 = hex(&Sha256::digest(&server));
    let key = cache_key(definition, &deb, &binary_sha256)?;
    let dir = image_dir(workspace, definition);
    if let Some(image) = cached(&dir, &key) {
        task.step("cache hit: nothing to build");
        return Ok(BuiltImage {
            binary,
            seconds: 0.0,
            cache_hit: true,
            ..image
        });
    }

    let deb_name = file_name(&deb);
    task.step(format!("unpacking {deb_name}"));
    let unpacked = TempDir::new("qemu-image").context("creating a directory to unpack the kernel package in")?;
    system::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(unpacked.path()))
        .with_context(|| format!("unpacking {} (dpkg-deb comes with Debian's dpkg)", deb.display()))?;
    let tree = modules::ModuleTree::scan(unpacked.path())?;
    let boot_image = boot_image(unpacked.path(), &tree.version)?;
    let (kernel, kernel_format, why) = kernel::bootable(
        &definition.arch,
        &std::fs::read(&boot_image).with_context(|| format!("reading {}", boot_image.display()))?,
    )
    .with_context(|| format!("making {} bootable", file_name(&boot_image)))?;
    task.step(format!("kernel {}: {why}", tree.version));

    task.step("resolving modules");
    let modules = modules::resolve(&definition.path, &definition.modules, |name| tree.find(name))?;
    let built_in: Vec<&str> = modules
        .iter()
        .filter(|m| m.entry.built_in)
        .map(|m| m.entry.name.as_str())
        .collect();
    if !built_in.is_empty() {
        task.step(format!("built into the kernel, not loaded: {}", built_in.join(", ")));
    }
    task.step("writing the initramfs");
    let initramfs = initramfs::gzip(&initramfs::archive(&server, &modules)?)?;

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let record = dir.join("image.json");
    // The record goes first and comes back last: an interrupted build is never a hit.
    let _ = std::fs::remove_file(&record);
    let kernel_path = dir.join("kernel");
    let initramfs_path = dir.join("initramfs.cpio.gz");
    write_atomically(&kernel_path, &kernel)?;
    write_atomically(&initramfs_path, &initramfs)?;
    let image = BuiltImage {
        arch: definition.arch.clone(),
        name: definition.name(),
        definition: definition.path.clone(),
        cache_key: key,
        kernel_package: definition.kernel.package.clone(),
        kernel_deb: deb_name,
        kernel_version: tree.version.clone(),
        kernel_format,
        kernel: kernel_path,
        kernel_bytes: kernel.len() as u64,
        initramfs: initramfs_path,
        initramfs_bytes: initramfs.len() as u64,
        binary,
        binary_sha256,
        binary_bytes: server.len() as u64,
        modules: modules.into_iter().map(|m| m.entry).collect(),
        cmdline: definition.cmdline.clone(),
        seconds: started.elapsed().as_secs_f64(),
        cache_hit: false,
    };
    write_atomically(&record, &serde_json::to_vec_pretty(&image)?)?;
    Ok(image)
}

/// Everything the image is made from: the definition, the kernel package, the server
/// binary, and how this code puts them together.
fn cache_key(definition: &ImageDefinition, deb: &Path, binary_sha256: &str) -> Result<String> {
    let deb_bytes = std::fs::metadata(deb)
        .with_context(|| format!("reading {}", deb.display()))?
        .len();
    let mut hasher = Sha256::new();
    for (label, value) in [
        ("format", FORMAT_VERSION.to_string()),
        ("definition", definition.sha256.clone()),
        ("deb", format!("{} {deb_bytes}", file_name(deb))),
        ("binary", binary_sha256.to_string()),
    ] {
        hasher.update(format!("{label}={value}\n"));
    }
    Ok(hex(&hasher.finalize()))
}

/// The image in `dir` if it was built with `key` and its files are whole.
fn cached(dir: &Path, key: &str) -> Option<BuiltImage> {
    let record: BuiltImage = serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()?;
    let image = BuiltImage {
        kernel: dir.join("kernel"),
        initramfs: dir.join("initramfs.cpio.gz"),
        ..record
    };
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).ok();
    let whole =
        size(&image.kernel) == Some(image.kernel_bytes) && size(&image.initramfs) == Some(image.initramfs_bytes);
    (image.cache_key == key && whole).then_some(image)
}

/// The package's boot/vmlinuz-<version> (vmlinux-<version> on riscv64).
fn boot_image(unpacked: &Path, version: &str) -> Result<PathBuf> {
    for name in [format!("vmlinuz-{version}"), format!("vmlinux-{version}")] {
        let path = unpacked.join("boot").join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("the kernel package has no boot/vmlinuz-{version} or boot/vmlinux-{version}")
}

/// Written beside, then renamed: a VM starting meanwhile sees the old file or the new.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("partial-{}-{unique}", std::process::id()));
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

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

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            if word.is_empty() || word.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))) {
                format!("'{}'", word.replace('\'', r"'\''"))
            } else {
                word.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_flags_are_checked() {
        assert_eq!(arches("all").unwrap(), ["x86_64", "aarch64", "riscv64"]);
        assert_eq!(arches("riscv64").unwrap(), ["riscv64"]);
        let err = arches("aarch64-unknown-linux-gnu").unwrap_err().to_string();
        assert!(err.contains("--arch") && err.contains("riscv64"), "{err}");
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let words = ["qemu", "-append", "console=ttyS0 panic=-1", "it's"].map(String::from);
        assert_eq!(shell_words(&words), r"qemu -append 'console=ttyS0 panic=-1' 'it'\''s'");
    }
}
