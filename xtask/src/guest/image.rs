//! A built guest image: the kernel made directly bootable and a gzipped initramfs with
//! the static server as /init, the modules its init loads and their load order. Images
//! live in target/xtask/qemu-images/<name>/ with an image.json; one whose inputs have not
//! changed is reused, not rebuilt.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use services::process::{self, cmd};
use services::teardown::TempDir;
use sha2::{Digest, Sha256};

use super::kernels::GuestKernel;
use super::{initramfs, kernel, modules, ImageDefinition, KernelFormat, ModuleEntry};
use crate::report::progress::Task;
use crate::system::hex;
use crate::workspace::Workspace;

/// Bumped whenever the same inputs would now make a different image.
const FORMAT_VERSION: u32 = 2;

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

/// Where the image of `definition` is built: the working tree's, or with a `variant`
/// (`from`, `to`) another revision's, each kept beside the others.
pub(crate) fn image_dir(workspace: &Workspace, definition: &ImageDefinition, variant: Option<&str>) -> PathBuf {
    let name = match variant {
        Some(variant) => format!("{}.{variant}", definition.name()),
        None => definition.name(),
    };
    workspace.target_dir.join("xtask/qemu-images").join(name)
}

/// The image `definition` describes, with `binary` (a static server for its target) as
/// /init: reused when nothing it is made from has changed, else built (fetching the
/// kernel package first if needed). `variant`: see [`image_dir`].
pub(crate) fn ensure(
    workspace: &Workspace,
    definition: &ImageDefinition,
    binary: PathBuf,
    variant: Option<&str>,
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
    let server = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let binary_sha256 = hex(&Sha256::digest(&server));
    let key = cache_key(definition, &deb, &binary_sha256)?;
    let dir = image_dir(workspace, definition, variant);
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
    let (sh, into) = (process::shell()?, unpacked.path());
    process::run(cmd!(sh, "dpkg-deb -x {deb} {into}"))
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
