//! A release's software bills of materials: one CycloneDX 1.5 JSON document per artefact
//! (`<artefact>.cdx.json`), listing every crate compiled into its binary — as cargo
//! resolves them for the binary's target and features from the lockfile (`cargo metadata
//! --filter-platform`), with the lockfile's checksums and the crates' licences — and
//! checked against the list the binary itself carries (cargo-auditable): two derivations
//! of the same graph that must agree before anything ships.
//!
//! A crate is `required` when the binary links it and `excluded` when only its build uses
//! it (build scripts' dependencies, proc-macros), as cargo-auditable classifies them.
//! Nothing in a document depends on the machine or the time it was made (no paths, the
//! release's epoch as timestamp, a serial number derived from the artefact's hash), so
//! the same binaries make the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cargo_metadata::{CargoOpt, DependencyKind, MetadataCommand, Package, PackageId, TargetKind};
use cyclonedx_bom::external_models::date_time::DateTime;
use cyclonedx_bom::external_models::normalized_string::NormalizedString;
use cyclonedx_bom::external_models::spdx::SpdxExpression;
use cyclonedx_bom::external_models::uri::Purl;
use cyclonedx_bom::models::bom::{Bom, SpecVersion, UrnUuid};
use cyclonedx_bom::models::component::{Classification, Component, Components, Scope};
use cyclonedx_bom::models::dependency::{Dependencies, Dependency};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{License, LicenseChoice, Licenses};
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::models::tool::{Tool, Tools};
use cyclonedx_bom::validation::Validate;

use super::Release;
use crate::cargo::auditable::{self, VersionInfo};
use crate::workspace::profile::BuildSection;
use crate::workspace::targets::Target;

/// The server's package: the root of every binary's graph.
const SERVER_PACKAGE: &str = "plexichat";
/// CycloneDX's own property for the target a Rust SBOM was resolved for.
const TARGET_PROPERTY: &str = "cdx:rustc:sbom:target:triple";
/// The release file an SBOM's subject is.
const FILE_PROPERTY: &str = "plexichat:release:file";
const SPEC: SpecVersion = SpecVersion::V1_5;

/// One crate of a binary's dependency graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crate {
    pub name: String,
    pub version: String,
    /// On crates.io (the others are the workspace's own, or from git or a path).
    pub from_crates_io: bool,
    /// Linked into the binary, as opposed to used by its build only.
    pub runtime: bool,
    pub root: bool,
    pub licence: Option<String>,
    pub description: Option<String>,
    /// The lockfile's SHA-256 of the crate's `.crate` file.
    pub checksum: Option<String>,
    /// Indexes into the graph's crates.
    pub dependencies: Vec<usize>,
}

impl Crate {
    fn key(&self) -> (String, String, bool, bool) {
        (self.name.clone(), self.version.clone(), self.runtime, self.root)
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}",
            self.name,
            self.version,
            if self.runtime { "" } else { " (build only)" }
        )
    }
}

/// Every crate of one binary's build, sorted by name and version.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub crates: Vec<Crate>,
}

impl Graph {
    /// The server's crates for `target` with `build`'s features, as cargo resolves them in
    /// the workspace at `root` from its lockfile.
    pub(crate) fn resolve(root: &Path, build: &BuildSection, target: &Target) -> Result<Self> {
        let manifest = root.join(SERVER_PACKAGE).join("Cargo.toml");
        let mut command = MetadataCommand::new();
        command.manifest_path(&manifest).other_options(vec![
            "--filter-platform".into(),
            target.triple.into(),
            "--locked".into(),
        ]);
        if !build.features.is_empty() {
            command.features(CargoOpt::SomeFeatures(build.features.clone()));
        }
        let metadata = command
            .exec()
            .with_context(|| format!("cargo metadata for {} ({})", manifest.display(), target.triple))?;
        let checksums = lockfile_checksums(&root.join("Cargo.lock"))?;
        Self::of(&metadata, &checksums)
    }

    /// The graph below `metadata`'s root package, walked as cargo-auditable walks it: a
    /// crate is runtime when a path of runtime edges reaches it from the root, and a
    /// proc-macro never is; development dependencies are not part of a binary.
    fn of(metadata: &cargo_metadata::Metadata, checksums: &HashMap<(String, String), String>) -> Result<Self> {
        let resolve = metadata
            .resolve
            .as_ref()
            .context("cargo metadata gave no dependency graph")?;
        let root = resolve.root.as_ref().context("cargo metadata named no root package")?;
        let nodes: HashMap<&PackageId, &cargo_metadata::Node> = resolve.nodes.iter().map(|n| (&n.id, n)).collect();
        let packages: HashMap<&PackageId, &Package> = metadata.packages.iter().map(|p| (&p.id, p)).collect();

        // Breadth first; a crate is visited again when a stronger kind reaches it.
        let mut runtime: HashMap<&PackageId, bool> = HashMap::from([(root, true)]);
        let mut queue = vec![root];
        while let Some(parent) = queue.pop() {
            let parent_runtime = runtime[parent];
            for dep in &nodes.get(parent).context("a package missing from the graph")?.deps {
                let kinds: Vec<&DependencyKind> = dep.dep_kinds.iter().map(|info| &info.kind).collect();
                if !kinds.is_empty() && kinds.iter().all(|kind| **kind == DependencyKind::Development) {
                    continue;
                }
                let proc_macro = packages.get(&dep.pkg).is_some_and(|p| is_proc_macro(p));
                let linked =
                    parent_runtime && !proc_macro && (kinds.is_empty() || kinds.contains(&&DependencyKind::Normal));
                match runtime.get(&dep.pkg) {
                    Some(&seen) if seen || !linked => {}
                    _ => {
                        runtime.insert(&dep.pkg, linked);
                        queue.push(&dep.pkg);
                    }
                }
            }
        }

        let mut ids: Vec<&PackageId> = runtime.keys().copied().collect();
        ids.sort_by_key(|id| {
            let package = packages[id];
            (package.name.clone(), package.version.clone(), id.repr.clone())
        });
        let index: HashMap<&PackageId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let crates = ids
            .iter()
            .map(|id| {
                let package = packages[id];
                let mut dependencies: Vec<usize> = nodes[id]
                    .deps
                    .iter()
                    .filter(|dep| {
                        dep.dep_kinds.is_empty()
                            || dep
                                .dep_kinds
                                .iter()
                                .any(|info| info.kind != DependencyKind::Development)
                    })
                    .filter_map(|dep| index.get(&dep.pkg).copied())
                    .collect();
                dependencies.sort_unstable();
                let version = package.version.to_string();
                Crate {
                    checksum: checksums.get(&(package.name.clone(), version.clone())).cloned(),
                    name: package.name.clone(),
                    version,
                    from_crates_io: package.source.as_ref().is_some_and(|source| source.is_crates_io()),
                    runtime: runtime[id],
                    root: *id == root,
                    licence: package.license.clone(),
                    description: package.description.clone(),
                    dependencies,
                }
            })
            .collect();
        Ok(Self { crates })
    }

    /// Whether the crate list embedded in a binary is this graph: the same crates, at the
    /// same versions, linked or build-only alike. The error names every difference.
    pub(crate) fn check_embedded(&self, embedded: &VersionInfo) -> Result<()> {
        let listed: BTreeSet<_> = self.crates.iter().map(Crate::key).collect();
        let carried: BTreeMap<_, String> = embedded
            .packages
            .iter()
            .map(|package| {
                let runtime = package.kind == auditable::DependencyKind::Runtime;
                let described = Crate {
                    name: package.name.clone(),
                    version: package.version.to_string(),
                    from_crates_io: false,
                    runtime,
                    root: package.root,
                    licence: None,
                    description: None,
                    checksum: None,
                    dependencies: Vec::new(),
                };
                (described.key(), described.describe())
            })
            .collect();
        let only_binary: Vec<&str> = carried
            .iter()
            .filter(|(key, _)| !listed.contains(*key))
            .map(|(_, described)| described.as_str())
            .collect();
        let only_sbom: Vec<String> = self
            .crates
            .iter()
            .filter(|krate| !carried.contains_key(&krate.key()))
            .map(Crate::describe)
            .collect();
        if only_binary.is_empty() && only_sbom.is_empty() {
            return Ok(());
        }
        bail!(
            "the binary's embedded crate list (cargo-auditable) is not the SBOM's: in the binary only: [{}]; in the SBOM only: [{}]\n  fix: rebuild (cargo xtask build-native) so that the binary and the lockfile agree",
            only_binary.join(", "),
            only_sbom.join(", ")
        )
    }
}

fn is_proc_macro(package: &Package) -> bool {
    matches!(package.targets.as_slice(), [only] if only.kind == [TargetKind::ProcMacro])
}

/// The lockfile's checksum of each registry crate, by name and version.
fn lockfile_checksums(path: &Path) -> Result<HashMap<(String, String), String>> {
    let lockfile = cargo_lock::Lockfile::load(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(lockfile
        .packages
        .into_iter()
        .filter_map(|package| {
            let checksum = package.checksum?;
            Some((
                (package.name.as_str().to_string(), package.version.to_string()),
                checksum.to_string(),
            ))
        })
        .collect())
}

/// What an SBOM describes: one file of the release.
pub(crate) struct Subject<'a> {
    pub file: &'a str,
    pub sha256: &'a str,
    /// An image (the OCI archive) rather than an application's package.
    pub container: bool,
}

/// A binary inside the subject, with the graph it was built from.
pub(crate) struct Contained<'a> {
    pub target: &'a Target,
    pub sha256: &'a str,
    pub graph: &'a Graph,
}

/// The SBOM's file name for the release file `artefact`.
pub(crate) fn file_name(artefact: &str) -> String {
    format!("{artefact}.cdx.json")
}

/// The CycloneDX document for `subject`, holding `binaries`, validated as the model
/// library checks it.
pub(crate) fn render(release: &Release, subject: &Subject, binaries: &[Contained]) -> Result<Vec<u8>> {
    let mut artefact = Component::new(
        if subject.container {
            Classification::Container
        } else {
            Classification::Application
        },
        SERVER_PACKAGE,
        &release.version,
        Some(subject.file.to_string()),
    );
    artefact.hashes = Some(sha256(subject.sha256));
    artefact.properties = Some(Properties(vec![Property::new(FILE_PROPERTY, subject.file)]));

    let mut components = Vec::new();
    let mut dependencies = vec![Dependency {
        dependency_ref: subject.file.to_string(),
        dependencies: Vec::new(),
    }];
    for binary in binaries {
        let reference = |krate: &Crate| format!("{}/{}@{}", binary.target.triple, krate.name, krate.version);
        for krate in &binary.graph.crates {
            let bom_ref = reference(krate);
            let mut component = Component::new(
                if krate.root {
                    Classification::Application
                } else {
                    Classification::Library
                },
                &krate.name,
                &krate.version,
                Some(bom_ref.clone()),
            );
            component.scope = Some(if krate.runtime {
                Scope::Required
            } else {
                Scope::Excluded
            });
            component.description = krate.description.as_deref().map(NormalizedString::new);
            component.licenses = krate.licence.as_deref().map(licences);
            if krate.from_crates_io {
                component.purl = Some(
                    Purl::new("cargo", &krate.name, &krate.version)
                        .map_err(|err| anyhow!("a purl for {} {}: {err:?}", krate.name, krate.version))?,
                );
            }
            if krate.root {
                // The root is the binary itself: its hash is the file's, and its target is said.
                component.hashes = Some(sha256(binary.sha256));
                component.properties = Some(Properties(vec![Property::new(TARGET_PROPERTY, binary.target.triple)]));
                dependencies[0].dependencies.push(bom_ref.clone());
            } else {
                component.hashes = krate.checksum.as_deref().map(sha256);
            }
            components.push(component);
            dependencies.push(Dependency {
                dependency_ref: bom_ref,
                dependencies: krate
                    .dependencies
                    .iter()
                    .map(|&i| reference(&binary.graph.crates[i]))
                    .collect(),
            });
        }
    }

    let mut metadata = Metadata::new().map_err(|err| anyhow!("SBOM metadata: {err:?}"))?;
    metadata.timestamp = Some(timestamp(release.epoch)?);
    metadata.component = Some(artefact);
    metadata.tools = Some(Tools::List(vec![Tool::new(
        "PlexiChat",
        "cargo xtask dist",
        env!("CARGO_PKG_VERSION"),
    )]));
    let bom = Bom {
        serial_number: Some(serial_number(subject)?),
        metadata: Some(metadata),
        components: Some(Components(components)),
        dependencies: Some(Dependencies(dependencies)),
        ..Bom::default()
    };
    let validation = bom.validate_version(SPEC);
    if validation.has_errors() {
        bail!(
            "the SBOM of {} is not valid CycloneDX {SPEC}: {:?}",
            subject.file,
            validation.errors().collect::<Vec<_>>()
        );
    }
    let mut json = Vec::new();
    bom.output_as_json(&mut json, SPEC)
        .map_err(|err| anyhow!("writing the SBOM of {}: {err:?}", subject.file))?;
    json.push(b'\n');
    Ok(json)
}

/// A crate's licence as an SPDX expression; the text as cargo has it when it is not one.
fn licences(licence: &str) -> Licenses {
    Licenses(vec![match SpdxExpression::parse_lax(licence.to_string()) {
        Ok(expression) => LicenseChoice::Expression(expression),
        Err(_) => LicenseChoice::License(License::named_license(licence)),
    }])
}

fn sha256(hex: &str) -> Hashes {
    Hashes(vec![Hash {
        alg: HashAlgorithm::SHA_256,
        content: HashValue(hex.to_string()),
    }])
}

/// The release's epoch as an ISO 8601 date and time (UTC).
fn timestamp(epoch: u64) -> Result<DateTime> {
    let seconds = i64::try_from(epoch).context("the release's epoch")?;
    let date = time::OffsetDateTime::from_unix_timestamp(seconds).context("the release's epoch")?;
    let text = date
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the release's epoch")?;
    DateTime::try_from(text).map_err(|err| anyhow!("the SBOM's timestamp: {err:?}"))
}

/// A name-based UUID (RFC 4122 version 5) of the subject's name and hash: the same file
/// gets the same serial number, another file another one.
fn serial_number(subject: &Subject) -> Result<UrnUuid> {
    let uuid = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{}#sha256:{}", subject.file, subject.sha256).as_bytes(),
    );
    UrnUuid::new(format!("urn:uuid:{uuid}")).map_err(|err| anyhow!("the SBOM's serial number: {err:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::targets::TARGETS;
    use auditable_serde::{Package as Embedded, Source};

    fn krate(name: &str, version: &str, runtime: bool, root: bool, dependencies: Vec<usize>) -> Crate {
        Crate {
            name: name.into(),
            version: version.into(),
            from_crates_io: !root,
            runtime,
            root,
            licence: Some("MIT/Apache-2.0".into()),
            description: None,
            checksum: (!root).then(|| "ab".repeat(32)),
            dependencies,
        }
    }

    fn graph() -> Graph {
        Graph {
            crates: vec![
                krate("cc", "1.2.0", false, false, vec![]),
                krate("plexichat", "0.1.0", true, true, vec![0, 2]),
                krate("tokio", "1.40.0", true, false, vec![]),
            ],
        }
    }

    /// The list cargo-auditable would embed for `graph`.
    fn embedded(graph: &Graph) -> VersionInfo {
        let packages = graph
            .crates
            .iter()
            .map(|krate| Embedded {
                name: krate.name.clone(),
                version: krate.version.parse().unwrap(),
                source: if krate.root { Source::Local } else { Source::CratesIo },
                kind: if krate.runtime {
                    auditable::DependencyKind::Runtime
                } else {
                    auditable::DependencyKind::Build
                },
                dependencies: krate.dependencies.clone(),
                root: krate.root,
            })
            .collect();
        VersionInfo { packages, format: 1 }
    }

    #[test]
    fn the_embedded_list_of_the_same_graph_agrees() {
        let graph = graph();
        graph.check_embedded(&embedded(&graph)).unwrap();
    }

    #[test]
    fn a_binary_built_from_other_crates_fails_the_check_and_is_named() {
        let graph = graph();
        let mut other = graph.clone();
        other.crates[2].version = "1.41.0".into();
        other.crates[0].runtime = true;
        let err = graph.check_embedded(&embedded(&other)).unwrap_err().to_string();
        assert!(err.contains("in the binary only: [cc 1.2.0, tokio 1.41.0]"), "{err}");
        assert!(
            err.contains("in the SBOM only: [cc 1.2.0 (build only), tokio 1.40.0]"),
            "{err}"
        );
    }

    #[test]
    fn the_document_is_cyclonedx_with_the_binary_as_root_and_the_same_bytes_each_time() {
        let release = Release {
            version: "0.1.0".into(),
            revision: "abc".into(),
            epoch: 1_796_515_200,
            dir: "release".into(),
            packaging: "packaging".into(),
            shipped: crate::release::Shipped {
                readme: Vec::new(),
                licences: Vec::new(),
                profile: Vec::new(),
                unit: Vec::new(),
            },
            homepage: None,
        };
        let graph = graph();
        let binaries = [Contained {
            target: &TARGETS[0],
            sha256: &"cd".repeat(32),
            graph: &graph,
        }];
        let subject = Subject {
            file: "plexichat-0.1.0-x86_64-unknown-linux-gnu.tar.gz",
            sha256: &"ef".repeat(32),
            container: false,
        };
        let bytes = render(&release, &subject, &binaries).unwrap();
        assert_eq!(bytes, render(&release, &subject, &binaries).unwrap());
        let bom: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(bom["specVersion"], "1.5");
        assert_eq!(bom["metadata"]["timestamp"], "2026-12-06T00:00:00Z");
        assert_eq!(bom["metadata"]["component"]["hashes"][0]["content"], "ef".repeat(32));
        let components = bom["components"].as_array().unwrap();
        assert_eq!(components.len(), 3);
        let root = &components[1];
        assert_eq!(root["type"], "application");
        assert_eq!(root["hashes"][0]["content"], "cd".repeat(32));
        assert_eq!(root["properties"][0]["value"], TARGETS[0].triple);
        assert_eq!(components[0]["scope"], "excluded");
        assert_eq!(components[2]["scope"], "required");
        assert_eq!(components[2]["purl"], "pkg:cargo/tokio@1.40.0");
        assert_eq!(components[2]["licenses"][0]["expression"], "MIT OR Apache-2.0");
        let depends: Vec<&str> = bom["dependencies"][0]["dependsOn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(depends, [format!("{}/plexichat@0.1.0", TARGETS[0].triple)]);

        let other = Subject {
            file: "plexichat_0.1.0_amd64.deb",
            ..subject
        };
        let other: serde_json::Value = serde_json::from_slice(&render(&release, &other, &binaries).unwrap()).unwrap();
        assert_ne!(other["serialNumber"], bom["serialNumber"]);
    }
}
