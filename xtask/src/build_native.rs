//! `cargo xtask build-native`: the cross-compile matrix of a profile. Static binaries at
//! `target/dist/<triple>/plexichat`, a manifest beside them, a content-addressed cache
//! key per artefact so that unchanged inputs are neither rebuilt nor re-linked, and a
//! smoke run of every binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::doctor::{self, Check};
use crate::elf;
use crate::profile::{BuildSection, Profile};
use crate::progress::{Progress, Task};
use crate::report::{Report, Table};
use crate::smoke::{self, Smoke};
use crate::system;
use crate::targets::{self, Target};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Profile: NAME for profiles/NAME.yaml, or a path to a profile file.
    #[arg(long, default_value = "release")]
    profile: String,
    /// x86_64, aarch64, riscv64, all, or a target triple; repeatable.
    /// Default: the profile's build.targets.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
}

/// One built binary, as recorded in target/dist/manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artefact {
    pub target: String,
    pub arch: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub profile: String,
    pub git_revision: String,
    pub cache_key: String,
    /// Seconds spent building; 0 on a cache hit.
    pub seconds: f64,
    pub cache_hit: bool,
    pub machine: String,
    pub is_static: bool,
    pub smoke: Smoke,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub artefacts: Vec<Artefact>,
}

impl Manifest {
    pub fn path(workspace: &Workspace) -> PathBuf {
        workspace.dist_dir().join("manifest.json")
    }

    /// The manifest on disk; a missing or unreadable one is an empty cache.
    pub fn load(workspace: &Workspace) -> Self {
        std::fs::read(Self::path(workspace))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(&self, workspace: &Workspace) -> Result<()> {
        let path = Self::path(workspace);
        std::fs::create_dir_all(workspace.dist_dir())?;
        std::fs::write(&path, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }

    fn find(&self, triple: &str) -> Option<&Artefact> {
        self.artefacts.iter().find(|a| a.target == triple)
    }

    fn upsert(&mut self, artefact: Artefact) {
        self.artefacts.retain(|a| a.target != artefact.target);
        self.artefacts.push(artefact);
        self.artefacts.sort_by(|a, b| a.target.cmp(&b.target));
    }
}

#[derive(Serialize)]
struct BuildReport<'a> {
    ok: bool,
    profile: &'a str,
    manifest: PathBuf,
    artefacts: Vec<&'a Artefact>,
    failures: &'a BTreeMap<String, String>,
}

pub fn run(args: Args) -> Result<Report> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let targets = if args.targets.is_empty() {
        profile.targets.clone()
    } else {
        targets::from_flags(&args.targets)?
    };
    let progress = Progress::new();
    let mut failures = provision(&targets, &progress);
    let toolchain = rustc_version()?;
    let revision = workspace.git_revision();
    let mut manifest = Manifest::load(&workspace);
    let mut built = Vec::new();

    // Builds run one after another (they share cargo's build lock and two cores); each
    // smoke run overlaps the next build.
    let buildable: Vec<&Target> = targets
        .iter()
        .copied()
        .filter(|t| !failures.contains_key(t.triple))
        .collect();
    std::thread::scope(|scope| {
        let mut smokes = Vec::new();
        for target in buildable {
            let task = progress.task(target.arch);
            let outcome = produce(&workspace, &profile, target, &toolchain, &manifest, &task);
            match outcome {
                Ok(mut artefact) => {
                    artefact.git_revision = revision.clone();
                    let (profile_path, version) = (&profile.path, &workspace.server_version);
                    smokes.push(scope.spawn(move || {
                        artefact.smoke = smoke::run(&artefact.path, target, profile_path, version, &task);
                        let verdict = if artefact.smoke.ok { "ok" } else { "smoke FAILED" };
                        task.finish(format!(
                            "{verdict} ({})",
                            if artefact.cache_hit { "cached" } else { "built" }
                        ));
                        artefact
                    }));
                }
                Err(err) => {
                    task.finish(format!("FAILED: {}", first_line(&format!("{err:#}"))));
                    failures.insert(target.triple.to_string(), format!("{err:#}"));
                }
            }
        }
        for smoke in smokes {
            match smoke.join() {
                Ok(artefact) => built.push(artefact),
                Err(_) => {
                    failures.insert("smoke".into(), "a smoke run panicked".into());
                }
            }
        }
    });

    for artefact in &built {
        if artefact.smoke.ok {
            manifest.upsert(artefact.clone());
        } else {
            failures.insert(artefact.target.clone(), smoke_failure(&artefact.smoke));
        }
    }
    manifest.save(&workspace)?;

    let ok = failures.is_empty();
    let mut table = Table::new(&["target", "result", "cache", "build s", "size", "static", "smoke"]);
    for target in &targets {
        if let Some(artefact) = built.iter().find(|a| a.target == target.triple) {
            table.row(vec![
                target.triple.into(),
                if artefact.smoke.ok { "ok" } else { "FAILED" }.into(),
                if artefact.cache_hit { "hit" } else { "miss" }.into(),
                format!("{:.1}", artefact.seconds),
                format!("{:.2} MB", artefact.bytes as f64 / 1e6),
                if artefact.is_static { "yes" } else { "NO" }.into(),
                artefact
                    .smoke
                    .steps
                    .iter()
                    .map(|s| format!("{}:{}", s.name, if s.ok { "ok" } else { "FAIL" }))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        } else {
            let error = failures.get(target.triple).map(|e| first_line(e)).unwrap_or_default();
            table.row(vec![
                target.triple.into(),
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error,
            ]);
        }
    }
    let mut summary = format!("artefacts and manifest: {}", Manifest::path(&workspace).display());
    for (target, error) in &failures {
        summary.push_str(&format!("\n{target}: {error}"));
    }
    let report = BuildReport {
        ok,
        profile: &profile.name,
        manifest: Manifest::path(&workspace),
        artefacts: built.iter().collect(),
        failures: &failures,
    };
    Ok(Report::new(ok, table, &report).with_summary(summary))
}

/// Installs what the chosen targets need, as `doctor --fix` would. Returns the targets
/// that still lack something, with what.
pub fn provision(targets: &[&'static Target], progress: &Progress) -> BTreeMap<String, String> {
    let still_missing = doctor::install_missing(|check| targets.iter().any(|t| needs(t, check)), progress);
    let mut failures = BTreeMap::new();
    for target in targets {
        let lacking: Vec<String> = still_missing
            .iter()
            .filter(|check| needs(target, check))
            .map(Check::describe_gap)
            .collect();
        if !lacking.is_empty() {
            failures.insert(target.triple.to_string(), format!("missing {}", lacking.join(", ")));
        }
    }
    failures
}

/// Whether building and smoke-testing `target` needs the item `check` is about.
pub fn needs(target: &Target, check: &Check) -> bool {
    check.item == format!("rust target {}", target.triple)
        || check.item == format!("linker {}", target.linker)
        || (target.is_foreign() && check.item == target.qemu_user())
}

/// The artefact for `target`: from the cache when its key matches, else built.
fn produce(
    workspace: &Workspace,
    profile: &Profile,
    target: &Target,
    toolchain: &str,
    manifest: &Manifest,
    task: &Task,
) -> Result<Artefact> {
    task.step("computing cache key");
    let key = artefact_key(workspace, &profile.build, target, toolchain)?;
    if let Some((cached, path)) = cached_artefact(workspace, manifest, target, &key) {
        task.step("cache hit: nothing to build");
        return Ok(Artefact {
            cache_hit: true,
            seconds: 0.0,
            path,
            profile: profile.name.clone(),
            ..cached.clone()
        });
    }
    let dest = workspace.dist_dir().join(target.triple).join("plexichat");
    let started = Instant::now();
    let executable = cargo_build(workspace, &profile.build, target, task)?;
    std::fs::create_dir_all(dest.parent().context("dist path has a parent")?)?;
    std::fs::copy(&executable, &dest).with_context(|| format!("copying to {}", dest.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = std::fs::read(&dest)?;
    let info = check_static(&bytes, target, &dest)?;
    Ok(Artefact {
        target: target.triple.into(),
        arch: target.arch.into(),
        path: dest,
        sha256: hex(&Sha256::digest(&bytes)),
        bytes: bytes.len() as u64,
        profile: profile.name.clone(),
        git_revision: String::new(),
        cache_key: key,
        seconds,
        cache_hit: false,
        machine: elf::machine_name(info.machine).into(),
        is_static: info.is_static,
        smoke: Smoke {
            ok: false,
            steps: Vec::new(),
        },
    })
}

/// The static server for `target` as `build` makes it: build-native's artefact when its
/// cache key says it was built from exactly these inputs, else cargo's own output
/// (cargo rebuilds what is stale and nothing else). Checked to be a static binary of
/// the target's machine either way.
pub fn target_binary(workspace: &Workspace, build: &BuildSection, target: &Target, task: &Task) -> Result<PathBuf> {
    task.step("computing the server's cache key");
    let key = artefact_key(workspace, build, target, &rustc_version()?)?;
    if let Some((_, path)) = cached_artefact(workspace, &Manifest::load(workspace), target, &key) {
        task.step(format!(
            "server: build-native's artefact is current ({})",
            target.triple
        ));
        return Ok(path);
    }
    let executable = cargo_build(workspace, build, target, task)?;
    let bytes = std::fs::read(&executable).with_context(|| format!("reading {}", executable.display()))?;
    check_static(&bytes, target, &executable)?;
    Ok(executable)
}

/// build-native's cache key of the artefact for `target`.
fn artefact_key(workspace: &Workspace, build: &BuildSection, target: &Target, toolchain: &str) -> Result<String> {
    let linker = system::version_line(target.linker, &["--version"]).unwrap_or_default();
    cache_key(&workspace.root, build, target, toolchain, &linker)
}

/// The manifest's artefact for `target` and its path, if it was built with `key` and
/// the file is still the one recorded.
fn cached_artefact<'m>(
    workspace: &Workspace,
    manifest: &'m Manifest,
    target: &Target,
    key: &str,
) -> Option<(&'m Artefact, PathBuf)> {
    let path = workspace.dist_dir().join(target.triple).join("plexichat");
    manifest
        .find(target.triple)
        .filter(|cached| cached.cache_key == key)
        .filter(|cached| file_sha256(&path).ok().as_deref() == Some(cached.sha256.as_str()))
        .map(|cached| (cached, path))
}

/// A binary of the target's machine with no program interpreter, or an error.
fn check_static(bytes: &[u8], target: &Target, path: &Path) -> Result<elf::ElfInfo> {
    let info = elf::inspect(bytes).with_context(|| format!("inspecting {}", path.display()))?;
    if info.machine != target.elf_machine {
        bail!(
            "built a {} binary, expected {}",
            elf::machine_name(info.machine),
            elf::machine_name(target.elf_machine)
        );
    }
    if !info.is_static {
        bail!(
            "{} is dynamically linked (it has a program interpreter)",
            path.display()
        );
    }
    Ok(info)
}

/// The one place that says how a target is compiled and linked. The same values every
/// time, so cargo's own fingerprints never see a change and never rebuild needlessly.
///
/// The host's own target gets no linker or C compiler override: cargo applies a
/// `target.<host>.linker` to build scripts and proc-macros too, which would make every
/// switch between targets (and every plain `cargo build --release`) rebuild them all.
/// Rustflags given with `--target` reach only the target's code.
fn cargo_env(build: &BuildSection, target: &Target) -> Vec<(String, String)> {
    let key = target.env_key();
    let mut rustflags = vec!["-C".to_string(), "target-feature=+crt-static".to_string()];
    rustflags.extend(build.rustflags.iter().cloned());
    let mut env = vec![(format!("CARGO_TARGET_{key}_RUSTFLAGS"), rustflags.join(" "))];
    if target.is_foreign() {
        env.push((format!("CARGO_TARGET_{key}_LINKER"), target.linker.to_string()));
        env.push((
            format!("CC_{}", target.triple.replace('-', "_")),
            target.linker.to_string(),
        ));
    }
    let profile_key = build.cargo_profile.to_uppercase().replace('-', "_");
    if let Some(lto) = build.lto {
        env.push((format!("CARGO_PROFILE_{profile_key}_LTO"), lto.cargo_value().into()));
    }
    if let Some(units) = build.codegen_units {
        env.push((format!("CARGO_PROFILE_{profile_key}_CODEGEN_UNITS"), units.to_string()));
    }
    if build.sccache {
        env.push(("RUSTC_WRAPPER".into(), "sccache".into()));
    }
    env
}

/// The server for this host, as the profile builds it (not static: it runs here only).
/// Cargo rebuilds what is stale and nothing else.
pub fn host_binary(workspace: &Workspace, build: &BuildSection, task: &Task) -> Result<PathBuf> {
    run_cargo(workspace, build, None, task)
}

/// Runs cargo for one target; returns the executable it produced.
fn cargo_build(workspace: &Workspace, build: &BuildSection, target: &Target, task: &Task) -> Result<PathBuf> {
    run_cargo(workspace, build, Some(target), task)
}

/// `cargo build` of the server, for `target` or (with `None`) the host.
fn run_cargo(workspace: &Workspace, build: &BuildSection, target: Option<&Target>, task: &Task) -> Result<PathBuf> {
    if build.sccache && system::which("sccache").is_none() {
        bail!("the profile asks for sccache, which is not installed (fix: apt-get install sccache)");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace.root)
        .args(["build", "--locked", "--package", "plexichat", "--bin", "plexichat"])
        .args(["--profile", &build.cargo_profile])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(target) = target {
        command.args(["--target", target.triple]).envs(cargo_env(build, target));
    }
    if !build.features.is_empty() {
        command.args(["--features", &build.features.join(",")]);
    }
    let destination = target.map_or("the host", |t| t.triple);
    task.step(format!(
        "cargo build for {destination} --profile {}",
        build.cargo_profile
    ));
    let mut child = command.spawn().context("starting cargo")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut executable = None;
    let mut compiled = 0;
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let message: serde_json::Value = match serde_json::from_str(&line?) {
            Ok(message) => message,
            Err(_) => continue,
        };
        if message["reason"] == "compiler-artifact" {
            compiled += 1;
            task.detail(format!(
                "{compiled} crates: {}",
                message["target"]["name"].as_str().unwrap_or("?")
            ));
            if let Some(path) = message["executable"].as_str() {
                executable = Some(PathBuf::from(path));
            }
        }
    }
    let status = child.wait()?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        bail!(
            "cargo build failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    executable.context("cargo reported no executable for plexichat")
}

/// Everything that can change the artefact: sources and lockfile, the profile's build
/// section, the target, the compiler and linker, and the environment cargo reads.
fn cache_key(root: &Path, build: &BuildSection, target: &Target, toolchain: &str, linker: &str) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut feed = |label: &str, bytes: &[u8]| {
        hasher.update((label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    feed("target", target.triple.as_bytes());
    feed("toolchain", toolchain.as_bytes());
    feed("linker", linker.as_bytes());
    // The target list says which artefacts to make, not how any one is made.
    let build = BuildSection {
        targets: Vec::new(),
        ..build.clone()
    };
    feed("build", &serde_json::to_vec(&build)?);
    for (name, value) in cargo_env(&build, target) {
        feed(&name, value.as_bytes());
    }
    for (name, value) in std::env::vars()
        .filter(|(name, _)| affects_build(name))
        .collect::<BTreeMap<_, _>>()
    {
        feed(&name, value.as_bytes());
    }
    for file in input_files(root)? {
        let relative = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().into_owned();
        feed(
            &relative,
            &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    Ok(hex(&hasher.finalize()))
}

/// Environment variables cargo, rustc or cc-rs read when compiling.
fn affects_build(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_INCREMENTAL",
        "CC",
        "CXX",
        "AR",
        "CFLAGS",
        "CXXFLAGS",
        "LDFLAGS",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CC_",
        "CFLAGS_",
        "AR_",
        "CXX_",
        "LIBSQLITE3_",
    ];
    let target_specific = name.starts_with("CARGO_TARGET_") && name != "CARGO_TARGET_DIR";
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) || target_specific
}

/// The workspace files a build of the server reads: manifests, the lockfile, cargo's
/// configuration and the server's sources (not its tests, benches or examples).
fn input_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "rust-toolchain.toml",
        "rust-toolchain",
    ]
    .iter()
    .map(|name| root.join(name))
    .filter(|path| path.is_file())
    .collect();
    let package = root.join("plexichat");
    let mut pending = vec![package.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if path.is_dir() {
                let skipped = dir == package && matches!(name, "tests" | "benches" | "examples" | "target");
                if !skipped {
                    pending.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn rustc_version() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().context("running rustc -vV")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn file_sha256(path: &Path) -> Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn smoke_failure(smoke: &Smoke) -> String {
    smoke
        .steps
        .iter()
        .filter(|step| !step.ok)
        .map(|step| format!("smoke {}: {}", step.name, step.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    #[test]
    fn the_key_depends_on_target_and_build_section_but_not_the_target_list() {
        let root = workspace_root();
        let build = BuildSection::default();
        let key = |build: &BuildSection, target: &Target| cache_key(&root, build, target, "rustc 1", "gcc 1").unwrap();
        let x86 = &targets::TARGETS[0];
        let arm = &targets::TARGETS[1];
        assert_eq!(key(&build, x86), key(&build, x86));
        assert_ne!(key(&build, x86), key(&build, arm));
        let only_x86 = BuildSection {
            targets: vec!["x86_64".into()],
            ..build.clone()
        };
        assert_eq!(key(&build, x86), key(&only_x86, x86));
        let with_lto = BuildSection {
            lto: Some(crate::profile::Lto::Fat),
            ..build.clone()
        };
        assert_ne!(key(&build, x86), key(&with_lto, x86));
        assert_ne!(
            key(&build, x86),
            cache_key(&root, &build, x86, "rustc 2", "gcc 1").unwrap()
        );
    }

    #[test]
    fn inputs_are_the_servers_sources_not_its_tests() {
        let root = workspace_root();
        let files = input_files(&root).unwrap();
        let has = |relative: &str| files.contains(&root.join(relative));
        assert!(has("Cargo.lock") && has("plexichat/src/main.rs") && has("plexichat/Cargo.toml"));
        assert!(has("plexichat/migrations/sqlite/0001_initial.sql"));
        assert!(!files.iter().any(|f| f.starts_with(root.join("plexichat/tests"))));
        assert!(!files.iter().any(|f| f.starts_with(root.join("xtask"))));
    }

    #[test]
    fn build_environment_is_recognised() {
        for name in [
            "RUSTFLAGS",
            "CARGO_PROFILE_RELEASE_LTO",
            "CC_aarch64_unknown_linux_gnu",
            "CARGO_TARGET_X_LINKER",
        ] {
            assert!(affects_build(name), "{name}");
        }
        for name in ["HOME", "CARGO_TARGET_DIR", "PATH", "CARGO_HOME"] {
            assert!(!affects_build(name), "{name}");
        }
    }

    #[test]
    fn the_host_target_keeps_the_default_linker_so_host_artefacts_are_shared() {
        let host = targets::TARGETS
            .iter()
            .find(|t| !t.is_foreign())
            .expect("the host is a supported target");
        let env = cargo_env(&BuildSection::default(), host);
        assert!(
            env.iter()
                .all(|(name, _)| !name.ends_with("_LINKER") && !name.starts_with("CC_")),
            "{env:?}"
        );
        assert!(env
            .iter()
            .any(|(name, value)| name.ends_with("_RUSTFLAGS") && value.contains("crt-static")));
    }

    #[test]
    fn cargo_env_links_statically_with_the_targets_gcc() {
        let env = cargo_env(&BuildSection::default(), &targets::TARGETS[1]);
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(
            get("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"),
            Some("aarch64-linux-gnu-gcc")
        );
        assert_eq!(
            get("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS"),
            Some("-C target-feature=+crt-static")
        );
        assert_eq!(get("CC_aarch64_unknown_linux_gnu"), Some("aarch64-linux-gnu-gcc"));
    }
}
