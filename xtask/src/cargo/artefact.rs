//! Build-native's artefacts and their cache: a content-addressed key per artefact (every
//! input that can change the binary), the manifest in target/dist/ that records them,
//! and the static binary each target gets, from the cache when its key matches; and its
//! smoke result, recorded with it and reused while neither the binary nor the smoke's
//! inputs change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::kept::KeptServers;
use super::smoke::{self, Policy, Smoke};
use super::KeyHasher;
use crate::report::progress::Task;
use crate::system::elf;
use crate::system::{self, file_sha256, hex};
use crate::workspace::profile::{BuildSection, Profile};
use crate::workspace::targets::Target;
use crate::workspace::{build_revision, Workspace};

/// One built binary, as recorded in target/dist/manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Artefact {
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
pub(crate) struct Manifest {
    pub artefacts: Vec<Artefact>,
}

impl Manifest {
    pub(crate) fn path(workspace: &Workspace) -> PathBuf {
        workspace.dist_dir().join("manifest.json")
    }

    /// The manifest on disk; a missing or unreadable one is an empty cache.
    pub(crate) fn load(workspace: &Workspace) -> Self {
        std::fs::read(Self::path(workspace))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub(crate) fn save(&self, workspace: &Workspace) -> Result<()> {
        let path = Self::path(workspace);
        std::fs::create_dir_all(workspace.dist_dir())?;
        std::fs::write(&path, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }

    pub(crate) fn find(&self, triple: &str) -> Option<&Artefact> {
        self.artefacts.iter().find(|a| a.target == triple)
    }

    pub(crate) fn upsert(&mut self, artefact: Artefact) {
        self.artefacts.retain(|a| a.target != artefact.target);
        self.artefacts.push(artefact);
        self.artefacts.sort_by(|a, b| a.target.cmp(&b.target));
    }
}

/// The artefact for `target`: from the cache when its key matches, else built.
pub(crate) fn produce(
    workspace: &Workspace,
    profile: &Profile,
    target: &Target,
    toolchain: &str,
    manifest: &Manifest,
    task: &Task,
) -> Result<Artefact> {
    task.step("computing cache key");
    let key = tree_key(&workspace.root, &profile.build, target, toolchain)?;
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
    let executable = super::target_build(workspace, &profile.build, target, task)?;
    std::fs::create_dir_all(dest.parent().context("dist path has a parent")?)?;
    let bytes = put_in_place(&executable, &dest)?;
    let seconds = started.elapsed().as_secs_f64();
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
        smoke: Smoke::default(),
    })
}

/// The smoke result of `artefact`: the one `manifest` records for the target when it
/// passed for this very binary and these inputs and `policy` allows reusing it, else a
/// fresh run.
pub(crate) fn smoke(
    artefact: &Artefact,
    target: &Target,
    profile: &Profile,
    version: &str,
    manifest: &Manifest,
    policy: Policy,
    task: &Task,
) -> Smoke {
    // Without a key (the profile became unreadable) the smoke runs, and reports why it fails.
    let key = smoke::key(&artefact.sha256, target, &profile.path, version).ok();
    if let Some(reused) = recorded_smoke(manifest, target, key.as_deref(), policy) {
        task.step("smoke: passed before for this binary and these inputs (cached)");
        return reused;
    }
    Smoke {
        key: key.unwrap_or_default(),
        ..smoke::run(&artefact.path, target, &profile.path, version, task)
    }
}

/// The manifest's smoke result for `target`, if `policy` allows reusing one and it passed
/// with the inputs `key` stands for (the binary's hash among them).
fn recorded_smoke(manifest: &Manifest, target: &Target, key: Option<&str>, policy: Policy) -> Option<Smoke> {
    if policy == Policy::Always {
        return None;
    }
    manifest.find(target.triple)?.smoke.reuse(key?)
}

/// The static server for `target` as `build` makes it: build-native's artefact when its
/// cache key says it was built from exactly these inputs, else the server kept under
/// that key, else a fresh build (cargo rebuilds what is stale and nothing else), checked
/// to be a static binary of the target's machine and kept. Never cargo's own output,
/// which the next build of the target with other inputs replaces.
pub(crate) fn target_binary(
    workspace: &Workspace,
    build: &BuildSection,
    target: &Target,
    task: &Task,
) -> Result<PathBuf> {
    task.step("computing the server's cache key");
    let key = tree_key(&workspace.root, build, target, &super::rustc_version(&workspace.root)?)?;
    if let Some((_, path)) = cached_artefact(workspace, &Manifest::load(workspace), target, &key) {
        task.step(format!(
            "server: build-native's artefact is current ({})",
            target.triple
        ));
        return Ok(path);
    }
    let kept = KeptServers::in_target_dir(&workspace.target_dir);
    if let Some(path) = kept.find(target, &key) {
        task.step(format!("server: built before ({})", target.triple));
        return Ok(path);
    }
    let executable = super::target_build(workspace, build, target, task)?;
    let bytes = std::fs::read(&executable).with_context(|| format!("reading {}", executable.display()))?;
    check_static(&bytes, target, &executable)?;
    kept.keep(&executable, target, &key)
}

/// build-native's cache key of the artefact for `target`.
/// The key of the server `build` makes for `target` from the sources at `root` (the
/// working tree, or an earlier revision's checkout) with `toolchain` (`rustc -vV`).
pub(crate) fn tree_key(root: &Path, build: &BuildSection, target: &Target, toolchain: &str) -> Result<String> {
    let linker = system::version_line(target.linker, &["--version"]).unwrap_or_default();
    cache_key(root, build, target, toolchain, &linker)
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

/// Copies `executable` to `dest` through a rename, so that whoever has the previous file
/// open (another build-native run hashing it, a smoke server under qemu-user) keeps a
/// whole file instead of watching it being rewritten. Returns the bytes put there.
pub(crate) fn put_in_place(executable: &Path, dest: &Path) -> Result<Vec<u8>> {
    let partial = dest.with_extension(format!("partial-{}", std::process::id()));
    let copied = std::fs::copy(executable, &partial)
        .and_then(|_| std::fs::read(&partial))
        .and_then(|bytes| std::fs::rename(&partial, dest).map(|()| bytes));
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied.with_context(|| format!("copying {} to {}", executable.display(), dest.display()))
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

/// Everything that can change the artefact: sources and lockfile, the profile's build
/// section, the target, the compiler and linker, and the environment cargo reads.
fn cache_key(root: &Path, build: &BuildSection, target: &Target, toolchain: &str, linker: &str) -> Result<String> {
    let mut key = KeyHasher::default();
    key.feed("target", target.triple.as_bytes());
    key.feed("toolchain", toolchain.as_bytes());
    key.feed("linker", linker.as_bytes());
    // The wrapper writes the embedded crate list: its version decides those bytes.
    key.feed(
        "cargo-auditable",
        crate::provision::cargo_tools::CARGO_AUDITABLE.version.as_bytes(),
    );
    // The target list says which artefacts to make, not how any one is made.
    let build = BuildSection {
        targets: Vec::new(),
        ..build.clone()
    };
    key.feed("build", &serde_json::to_vec(&build)?);
    for (name, value) in super::cargo_env(&build, target, build_revision(root).as_deref()) {
        key.feed(&name, value.as_bytes());
    }
    for (name, value) in std::env::vars()
        .filter(|(name, _)| affects_build(name))
        .collect::<BTreeMap<_, _>>()
    {
        key.feed(&name, value.as_bytes());
    }
    for file in input_files(root)? {
        let relative = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().into_owned();
        key.feed(
            &relative,
            &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    Ok(key.finish())
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
        let x86 = &crate::workspace::targets::TARGETS[0];
        let arm = &crate::workspace::targets::TARGETS[1];
        assert_eq!(key(&build, x86), key(&build, x86));
        assert_ne!(key(&build, x86), key(&build, arm));
        let only_x86 = BuildSection {
            targets: vec!["x86_64".into()],
            ..build.clone()
        };
        assert_eq!(key(&build, x86), key(&only_x86, x86));
        let with_lto = BuildSection {
            lto: Some(crate::workspace::profile::Lto::Fat),
            ..build.clone()
        };
        assert_ne!(key(&build, x86), key(&with_lto, x86));
        assert_ne!(
            key(&build, x86),
            cache_key(&root, &build, x86, "rustc 2", "gcc 1").unwrap()
        );
    }

    fn artefact(target: &Target, sha256: &str, smoke: Smoke) -> Artefact {
        Artefact {
            target: target.triple.into(),
            arch: target.arch.into(),
            path: PathBuf::from("plexichat"),
            sha256: sha256.into(),
            bytes: 1,
            profile: "release".into(),
            git_revision: String::new(),
            cache_key: String::new(),
            seconds: 0.0,
            cache_hit: true,
            machine: String::new(),
            is_static: true,
            smoke,
        }
    }

    #[test]
    fn a_smoke_result_is_reused_only_for_the_same_binary_and_inputs() {
        let root = workspace_root();
        let (release, dev) = (root.join("profiles/release.yaml"), root.join("profiles/dev.yaml"));
        let (x86, arm) = (
            &crate::workspace::targets::TARGETS[0],
            &crate::workspace::targets::TARGETS[1],
        );
        let key = |sha: &str, target: &Target, profile: &Path, version: &str| {
            smoke::key(sha, target, profile, version).unwrap()
        };
        let passed = Smoke {
            ok: true,
            steps: vec![smoke::Step {
                name: "version".into(),
                ok: true,
                detail: "plexichat 1.0.0".into(),
            }],
            key: key("aa", arm, &release, "1.0.0"),
            cached: false,
        };
        let only = |smoke: Smoke| Manifest {
            artefacts: vec![artefact(arm, "aa", smoke)],
        };
        let manifest = only(passed.clone());
        let recorded = |key: &str, policy| recorded_smoke(&manifest, arm, Some(key), policy);

        let reused = recorded(&key("aa", arm, &release, "1.0.0"), Policy::Auto).expect("same binary, same inputs");
        assert!(reused.ok && reused.cached, "{reused:?}");
        assert_eq!(reused.steps.len(), 1);
        for (other, differs) in [
            (key("bb", arm, &release, "1.0.0"), "binary"),
            (key("aa", arm, &dev, "1.0.0"), "profile"),
            (key("aa", arm, &release, "1.0.1"), "version"),
        ] {
            assert!(recorded(&other, Policy::Auto).is_none(), "another {differs}");
        }
        assert!(
            recorded(&key("aa", arm, &release, "1.0.0"), Policy::Always).is_none(),
            "--smoke always"
        );
        assert!(recorded_smoke(&manifest, arm, None, Policy::Auto).is_none(), "no key");
        let other_target = key("aa", x86, &release, "1.0.0");
        assert!(recorded_smoke(&manifest, x86, Some(&other_target), Policy::Auto).is_none());

        // Neither a failure nor a result recorded before results were keyed is reused.
        let failed = Smoke {
            ok: false,
            ..passed.clone()
        };
        let unkeyed: Smoke = serde_json::from_str(r#"{"ok": true, "steps": []}"#).unwrap();
        for (smoke, what) in [(failed, "a failure"), (unkeyed, "an unkeyed result")] {
            let manifest = only(smoke);
            assert!(
                recorded_smoke(&manifest, arm, Some(&passed.key), Policy::Auto).is_none(),
                "{what}"
            );
        }
    }

    #[test]
    fn an_artefact_is_replaced_whole_under_whoever_has_the_old_one_open() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("xtask-unit-put-in-place-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (built, dest) = (dir.join("built"), dir.join("plexichat"));
        std::fs::write(&dest, "the previous binary").unwrap();
        std::fs::write(&built, "the new one").unwrap();
        let mut reader = std::fs::File::open(&dest).unwrap();

        assert_eq!(put_in_place(&built, &dest).unwrap(), b"the new one");
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "the previous binary");
        assert_eq!(std::fs::read(&dest).unwrap(), b"the new one");
        let left = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, 2, "a partial file was left behind");
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
}
