//! Both sides built the same way (one cargo, one rustc, the bench profile, the same
//! environment), each side's bench executables copied aside, and their benchmarks listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cargo_metadata::TargetKind;
use services::process::{self, cmd};

use crate::cargo::{cargo, rustc_version, server_build, with_messages};
use crate::report::progress::Task;
use crate::workspace::profile::BuildSection;
use crate::workspace::targets::Target;

/// One side of the comparison: its source tree and its bench executables.
pub(crate) struct Side {
    pub label: &'static str,
    pub root: PathBuf,
    /// Bench id (criterion's `group/function/value`) → the executable that runs it.
    pub benches: BTreeMap<String, PathBuf>,
    pub rustc: String,
}

/// Where one side is built: its workspace, its target directory, where its executables
/// are copied.
pub(crate) struct Checkout<'a> {
    pub label: &'static str,
    pub root: &'a Path,
    pub target_dir: &'a Path,
    pub bin_dir: PathBuf,
    /// The sources were checked out for this run (the baseline): see `cargo_executables`.
    pub fresh_checkout: bool,
}

/// Builds every `[[bench]]` target of the workspace and lists the benchmarks that match
/// `filter`.
pub(crate) fn benches(checkout: &Checkout, filter: Option<&str>, task: &Task) -> Result<Side> {
    task.step(format!("building the {} benches", checkout.label));
    let mut command = cargo();
    command.args(["bench", "--no-run", "--workspace", "--bench", "*"]);
    let executables = cargo_executables(checkout, command, &["bench"], task)?;
    let mut benches = BTreeMap::new();
    for executable in executables.into_values() {
        for id in list(&executable, checkout.root, filter)? {
            benches.insert(id, executable.clone());
        }
    }
    Ok(Side {
        label: checkout.label,
        root: checkout.root.to_path_buf(),
        benches,
        rustc: compiler(checkout.root),
    })
}

/// The server's static binary for `target`, built as build-native builds it (the one
/// cargo invocation of `crate::cargo::server_build`), so that the working tree's is the
/// very artefact the images and VMs use.
pub(crate) fn server(checkout: &Checkout, build: &BuildSection, target: &Target, task: &Task) -> Result<PathBuf> {
    task.step(format!("building the {} server for {}", checkout.label, target.arch));
    // Copied aside per target: every target's executable is called `plexichat`.
    let per_target = Checkout {
        bin_dir: checkout.bin_dir.join(target.triple),
        ..*checkout
    };
    let mut executables = cargo_executables(
        &per_target,
        server_build(checkout.root, build, target, task)?,
        &["bin"],
        task,
    )?;
    executables
        .remove("plexichat")
        .context("cargo built no `plexichat` executable")
}

/// The load generator (its own package: a release build of it compiles a few HTTP and
/// WebSocket crates, not the server's dev-dependencies).
pub(crate) fn load_generator(checkout: &Checkout, task: &Task) -> Result<PathBuf> {
    task.step("building the load generator (release)");
    let mut command = cargo();
    command.args(["build", "--locked", "--release", "--package", "plexichat-load"]);
    let mut executables = cargo_executables(checkout, command, &["bin"], task)?;
    executables.remove("load").context("cargo built no `load` executable")
}

/// The compiler as reports name it: `rustc -vV`'s first line at `root`.
pub(crate) fn compiler(root: &Path) -> String {
    rustc_version(root)
        .ok()
        .and_then(|version| version.lines().next().map(str::to_string))
        .unwrap_or_default()
}

/// Runs `cargo ARGS` at `root` into `target_dir` and copies the executables it produced
/// of the target `kinds` (cargo also builds the package's binaries for its benches) into
/// `bin_dir`: name → copy.
///
/// The copy matters: cargo names a workspace crate's artefacts by its path relative to the
/// workspace root, so both sides' executables would have the same name in one target
/// directory, and a concurrent run could rebuild them under our feet.
fn cargo_executables(
    checkout: &Checkout,
    mut command: Command,
    kinds: &[&str],
    task: &Task,
) -> Result<BTreeMap<String, PathBuf>> {
    let Checkout {
        label,
        root,
        target_dir,
        ref bin_dir,
        fresh_checkout,
    } = *checkout;
    let _lock = BuildLock::acquire(&target_dir.join("xtask-bench-compare.lock"), task)?;
    if fresh_checkout {
        // Cargo keys a workspace crate's build by its path relative to the workspace root
        // and judges it fresh by mtimes: another checkout built here since this one was
        // made would pass for it. Newer sources than any build force the rebuild.
        touch(root)?;
    }
    let described = format!("{command:?}");
    command.current_dir(root).env("CARGO_TARGET_DIR", target_dir);
    let mut built = Vec::new();
    let (status, errors) = with_messages(command, |artifact| {
        task.detail(format!("{label}: compiled {}", artifact.target.name));
        let wanted = kinds
            .iter()
            .any(|kind| artifact.target.is_kind(TargetKind::from(*kind)));
        if let (true, Some(path)) = (wanted, artifact.executable) {
            built.push(path.into_std_path_buf());
        }
    })
    .with_context(|| described.clone())?;
    if !status.success() {
        bail!(
            "{described} for the {label} side in {} failed:\n{errors}",
            root.display()
        );
    }
    std::fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let mut executables = BTreeMap::new();
    for path in built {
        let name = path.file_name().context("an executable's name")?;
        let copy = bin_dir.join(name);
        std::fs::copy(&path, &copy).with_context(|| format!("copying {}", path.display()))?;
        executables.insert(name.to_string_lossy().into_owned(), copy);
    }
    Ok(executables)
}

/// The ids of the benchmarks in `executable` that match `filter` (criterion's `--list`).
fn list(executable: &Path, root: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    let sh = process::shell_in(root)?;
    let filter = filter.into_iter();
    let output = process::output(cmd!(sh, "{executable} --bench --list {filter...}"))
        .with_context(|| format!("listing the benchmarks of {}", executable.display()))?;
    if !output.status.success() {
        bail!(
            "{} --bench --list failed ({}):\n{}",
            executable.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": benchmark"))
        .map(str::to_string)
        .collect())
}

/// Held from a side's build until its executables are copied: another run building other
/// sources into the same target directory would replace them under the same names.
struct BuildLock {
    path: PathBuf,
}

impl BuildLock {
    fn acquire(path: &Path, task: &Task) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut waiting = false;
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(Self {
                        path: path.to_path_buf(),
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A holder that died (SIGKILL) leaves the lock behind: take it over.
                    let holder = std::fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let alive = holder
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if !alive && !holder.is_empty() {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                    if !waiting {
                        task.step(format!(
                            "waiting for another bench-compare to finish building ({})",
                            path.display()
                        ));
                        waiting = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sets the modification time of every file under `root` (but `.git`) to now.
fn touch(root: &Path) -> Result<()> {
    let now = std::time::SystemTime::now();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() && entry.file_name() != ".git" {
                pending.push(entry.path());
            } else if kind.is_file() {
                std::fs::File::options()
                    .append(true)
                    .open(entry.path())
                    .and_then(|file| file.set_modified(now))
                    .with_context(|| format!("touching {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}
