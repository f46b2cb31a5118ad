//! `cargo xtask dist`: a release in `target/dist/release/<version>/`, made from
//! build-native's smoke-tested binaries of a profile's targets: per target an archive and
//! a Debian package, one OCI archive with an image per target, a CycloneDX SBOM of each
//! of those, then install.sh, evidence.json, SHA256SUMS and, with `--sign`, its minisign
//! signature. A target that fails to build, to pass its smoke run or to match its SBOM
//! fails its own artefacts only; the release is made of the others, and the command
//! exits 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cargo::artefact::Artefact;
use crate::cargo::auditable;
use crate::cargo::matrix::{self, first_line};
use crate::cargo::smoke::Policy;
use crate::docker;
use crate::docker::context::{self, ServerSettings};
use crate::provision::{self, Requirement};
use crate::release::evidence::{self, Evidence, Tested};
use crate::release::sbom::{self, Contained, Graph, Subject};
use crate::release::signature::SigningKey;
use crate::release::{archive, checksums, deb, installer, oci, Release};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::verdicts;
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::targets::{self, Target};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Profile: NAME for profiles/NAME.yaml, or a path. Its build section says how the
    /// binaries are built; the file itself is shipped as the installed settings.
    #[arg(long, default_value = "production")]
    profile: String,
    /// x86_64, aarch64, riscv64, all, or a target triple; repeatable.
    /// Default: the profile's build.targets.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// Sign SHA256SUMS with this minisign secret key (made with `minisign -G -W`: no
    /// password, so that nothing waits for one).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// auto: reuse a passing smoke result recorded for the same binary and inputs;
    /// always: run every smoke afresh.
    #[arg(long, value_enum, default_value_t = Policy::Auto)]
    smoke: Policy,
}

#[derive(Serialize)]
pub struct DistReport {
    ok: bool,
    version: String,
    revision: String,
    profile: String,
    dir: PathBuf,
    /// Every file of the release, with its size and SHA-256.
    files: Vec<FileReport>,
    /// Per target triple, why it has no artefacts.
    failures: BTreeMap<String, String>,
    seconds: f64,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    /// The target it is for; none for install.sh, the checksums and the evidence.
    target: Option<String>,
    bytes: u64,
    sha256: Option<String>,
}

pub fn run(args: Args) -> Result<DistReport> {
    let started = Instant::now();
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    if !profile.declares_build {
        return Err(UsageError::at(
            profile.path.display(),
            "build",
            "missing: a release says how its binaries are built",
            "add a build section (see profiles/production.yaml), or pass --profile production",
        )
        .into());
    }
    let targets = if args.targets.is_empty() {
        profile.targets.clone()
    } else {
        targets::from_flags(&args.targets)?
    };
    let key = args.sign.as_deref().map(SigningKey::given).transpose()?;
    let progress = Progress::new();
    let mut tools = vec![Requirement::DpkgDeb];
    if key.is_some() {
        tools.push(Requirement::Minisign);
    }
    let lacking: Vec<String> = provision::install_missing(&tools, &progress)
        .iter()
        .map(|check| check.describe_gap())
        .collect();
    if !lacking.is_empty() {
        return Err(UsageError(format!(
            "dist needs {}\n  fix: cargo xtask doctor --fix (as root)",
            lacking.join(", ")
        ))
        .into());
    }

    let built = matrix::build(&workspace, &profile, &targets, args.smoke, &progress)?;
    let release = Release::of(&workspace, &profile)?;
    let task = progress.task("release");
    // A fresh directory: a file left from an earlier release (a target since dropped)
    // must not be listed with this one.
    if release.dir.exists() {
        std::fs::remove_dir_all(&release.dir).with_context(|| format!("clearing {}", release.dir.display()))?;
    }
    std::fs::create_dir_all(&release.dir)?;
    let rustc = crate::cargo::rustc_version(&workspace.root)?;
    let mut evidence = Evidence::new(&release, &profile.name, &rustc);
    let mut files = Vec::new();
    // What the OCI archive is made of: a packaged binary per target.
    let mut images: Vec<Packaged> = Vec::new();
    let mut failures = built.failures.clone();
    for artefact in built.passed() {
        let target = targets::by_arch(&artefact.arch).context("a built artefact's architecture")?;
        let binary = std::fs::read(&artefact.path).with_context(|| format!("reading {}", artefact.path.display()))?;
        task.step(format!("the crates of {}", target.triple));
        let graph = match crates_of(&workspace, &profile, artefact, &binary, target) {
            Ok(graph) => graph,
            Err(err) => {
                failures.insert(target.triple.to_string(), format!("{err:#}"));
                continue;
            }
        };
        task.step(format!("packaging {}", target.triple));
        let tested = tested(&workspace, artefact, target, graph.crates.len());
        let archive_name = format!("{}.tar.gz", release.archive_stem(target));
        write(&release, &archive_name, &archive::make(&release, target, &binary))?;
        let deb_name = deb::file_name(&release, target);
        deb::make(&release, target, &binary, &release.dir.join(&deb_name))?;
        let contained = [Contained {
            target,
            sha256: &artefact.sha256,
            graph: &graph,
        }];
        for (name, kind) in [(archive_name, "archive"), (deb_name, "deb")] {
            let file = describe(&release, &name)?;
            let sbom_name = write_sbom(&release, &file, false, &contained)?;
            evidence.artefacts.push(tested.artefact(file, kind, sbom_name.clone()));
            let triple = Some(target.triple.to_string());
            files.extend([(name, triple.clone()), (sbom_name, triple)]);
        }
        images.push(Packaged {
            target,
            artefact,
            binary,
            tested,
            graph,
        });
    }
    if !images.is_empty() {
        task.step("the multi-architecture OCI image");
        let name = oci::file_name(&release);
        let mut labels = context::image_labels(&workspace, &profile, UNIX_EPOCH + Duration::from_secs(release.epoch));
        // docker-build's own mark: what it may prune. A release's image is the user's.
        labels.remove(docker::LABEL);
        let binaries: Vec<(&Target, Vec<u8>)> = images
            .iter()
            .map(|image| (image.target, image.binary.clone()))
            .collect();
        let server = ServerSettings::of(&profile)?;
        write(&release, &name, &oci::make(&release, &server, &labels, &binaries)?)?;
        let contained: Vec<Contained> = images
            .iter()
            .map(|image| Contained {
                target: image.target,
                sha256: &image.artefact.sha256,
                graph: &image.graph,
            })
            .collect();
        let file = describe(&release, &name)?;
        let sbom_name = write_sbom(&release, &file, true, &contained)?;
        for image in &images {
            evidence
                .artefacts
                .push(image.tested.artefact(file.clone(), "oci", sbom_name.clone()));
        }
        files.extend([(name, None), (sbom_name, None)]);
    }
    task.step("install.sh, evidence.json, SHA256SUMS");
    let install = "install.sh".to_string();
    write(
        &release,
        &install,
        installer::render(&release, &release.packaging.join("install.sh"))?.as_bytes(),
    )?;
    evidence.others.push(describe(&release, &install)?);
    files.push((install, None));
    let evidence_name = "evidence.json".to_string();
    write(&release, &evidence_name, &serde_json::to_vec_pretty(&evidence)?)?;
    files.push((evidence_name, None));
    let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    let sums = checksums::of(&release.dir, &names)?;
    write(&release, checksums::FILE, checksums::render(&sums).as_bytes())?;
    files.push((checksums::FILE.into(), None));
    if let Some(key) = &key {
        task.step("signing SHA256SUMS");
        let comment = format!("plexichat {} {}", release.version, release.revision);
        let signature = key.sign(&release.dir.join(checksums::FILE), &comment)?;
        let name = signature
            .file_name()
            .and_then(|name| name.to_str())
            .context("the signature's name")?;
        files.push((name.to_string(), None));
    }
    task.finish(format!("{} files in {}", files.len(), release.dir.display()));

    let files = files
        .into_iter()
        .map(|(file, target)| {
            let bytes = std::fs::metadata(release.dir.join(&file))?.len();
            Ok(FileReport {
                sha256: sums.get(&file).cloned(),
                file,
                target,
                bytes,
            })
        })
        .collect::<Result<_>>()?;
    Ok(DistReport {
        ok: failures.is_empty(),
        version: release.version,
        revision: release.revision,
        profile: profile.name,
        dir: release.dir,
        files,
        failures,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A target's binary once its archive and package are written.
struct Packaged<'a> {
    target: &'static Target,
    artefact: &'a Artefact,
    binary: Vec<u8>,
    tested: Tested,
    graph: Graph,
}

/// The crates `artefact`'s binary (`binary`, its bytes) was built from, as the lockfile
/// resolves them for its target, checked against the list the binary carries.
fn crates_of(
    workspace: &Workspace,
    profile: &Profile,
    artefact: &Artefact,
    binary: &[u8],
    target: &Target,
) -> Result<Graph> {
    let graph = Graph::resolve(&workspace.root, &profile.build, target)?;
    graph.check_embedded(&auditable::read(binary, &artefact.path)?)?;
    Ok(graph)
}

/// Writes the SBOM of the release's `file`, which holds `binaries`; returns its name.
fn write_sbom(release: &Release, file: &evidence::File, container: bool, binaries: &[Contained]) -> Result<String> {
    let subject = Subject {
        file: &file.file,
        sha256: &file.sha256,
        container,
    };
    let name = sbom::file_name(&file.file);
    write(release, &name, &sbom::render(release, &subject, binaries)?)?;
    Ok(name)
}

/// The evidence a binary's artefacts share: its build and smoke run, and the verdicts
/// recorded for its architecture.
fn tested(workspace: &Workspace, artefact: &Artefact, target: &Target, embedded_crates: usize) -> Tested {
    let host = targets::host().ok();
    let bench = host
        .filter(|host| *host == target)
        .and_then(|host| verdicts::latest(&workspace.target_dir, "bench-compare", host.arch));
    let cluster = verdicts::latest(&workspace.target_dir, "qemu-cluster", target.arch);
    Tested::of(artefact, target, embedded_crates, cluster, bench)
}

fn write(release: &Release, name: &str, bytes: &[u8]) -> Result<()> {
    let path = release.dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn describe(release: &Release, name: &str) -> Result<evidence::File> {
    let path = release.dir.join(name);
    Ok(evidence::File {
        file: name.to_string(),
        sha256: crate::system::file_sha256(&path)?,
        bytes: std::fs::metadata(&path)?.len(),
    })
}

impl Outcome for DistReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["file", "target", "size", "sha256"]);
        for file in &self.files {
            table.row(vec![
                file.file.clone(),
                file.target.clone().unwrap_or_else(|| "-".into()),
                format!("{:.2} MB", file.bytes as f64 / 1e6),
                file.sha256
                    .as_deref()
                    .map_or_else(|| "-".into(), |sum| sum[..16].to_string()),
            ]);
        }
        for (target, error) in &self.failures {
            table.row(vec![
                "-".into(),
                target.clone(),
                "-".into(),
                format!("FAILED: {}", first_line(error)),
            ]);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let mut summary = format!(
            "release {} ({}) in {} ({:.0} s)",
            self.version,
            self.revision,
            self.dir.display(),
            self.seconds
        );
        for (target, error) in &self.failures {
            summary.push_str(&format!("\n{target}: no artefacts: {error}"));
        }
        Some(summary)
    }
}
