//! `plexichat-<version>.oci.tar`: one OCI image layout, archived, whose index (tagged with
//! the version) lists an image per target — linux/amd64, linux/arm64, linux/riscv64 —
//! so that `skopeo copy --all oci-archive:…:<version> docker://REGISTRY/plexichat:<version>`
//! pushes them as one multi-architecture tag.
//!
//! Each image is the one docker-build makes (the same root file system in one layer, the
//! same user, environment, volume, port, entry point and health check), written here
//! rather than exported from the engine, as ko writes its images: the engine stamps an
//! image with the time it was built, and a release's bytes must depend on its inputs
//! alone. Every JSON document is serialised with sorted keys (the spec types keep
//! annotations and labels in hash maps), dated at the release's epoch.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Release;
use crate::docker::context::{
    self, Runtime, ServerSettings, HEALTH_INTERVAL, HEALTH_RETRIES, HEALTH_START_PERIOD, HEALTH_TIMEOUT,
};
use crate::docker::{DATA, USER};
use crate::system::hex;
use crate::system::tarball::{self, Tarball, ROOT};
use crate::workspace::targets::Target;

/// The annotation that names an image of a layout: the tag `oci-archive:FILE:TAG` reads.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The archive's file name.
pub(crate) fn file_name(release: &Release) -> String {
    format!("plexichat-{}.oci.tar", release.version)
}

/// A layout being filled: its blobs by digest, and each platform's manifest.
struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: Vec<Descriptor>,
}

impl Layout {
    /// Stores `bytes` as a blob; returns its descriptor.
    fn blob(&mut self, media_type: MediaType, bytes: Vec<u8>) -> Result<Descriptor> {
        let digest = hex(&Sha256::digest(&bytes));
        let descriptor = Descriptor::new(media_type, bytes.len() as u64, sha256(&digest)?);
        self.blobs.insert(digest, bytes);
        Ok(descriptor)
    }
}

fn sha256(hex_digest: &str) -> Result<Sha256Digest> {
    hex_digest.parse().context("a SHA-256 digest")
}

/// Serialises an OCI document with its keys in order: the same document, the same bytes.
fn canonical(document: &impl Serialize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(document)?)?)
}

/// The archive's bytes, an image per `(target, binary)`, each with `server`'s settings
/// and `labels` (docker-build's, dated at the release's epoch).
pub(crate) fn make(
    release: &Release,
    server: &ServerSettings,
    labels: &BTreeMap<String, String>,
    images: &[(&Target, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut layout = Layout {
        blobs: BTreeMap::new(),
        manifests: Vec::new(),
    };
    let created = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(release.epoch)).to_string();
    let runtime = Runtime::of(server);
    for (target, binary) in images {
        let rootfs = context::rootfs(binary, &release.shipped.profile);
        let diff_id = hex(&Sha256::digest(&rootfs));
        let layer = layout.blob(MediaType::ImageLayerGzip, tarball::gzip(&rootfs))?;
        let config = ConfigBuilder::default()
            .user(USER)
            .env(runtime.env.clone())
            .entrypoint(runtime.entrypoint.clone())
            .cmd(runtime.cmd.clone())
            .working_dir(DATA)
            .volumes(vec![DATA.to_string()])
            .exposed_ports(vec![format!("{}/tcp", runtime.port)])
            .labels(labels.clone().into_iter().collect::<HashMap<_, _>>())
            .build()?;
        let image = ImageConfigurationBuilder::default()
            .created(created.clone())
            .architecture(Arch::from(target.deb_arch))
            .os(Os::Linux)
            .config(config)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![format!("sha256:{diff_id}")])
                    .build()?,
            )
            .history(vec![HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!(
                    "cargo xtask dist: {} for {}",
                    release.archive_stem(target),
                    target.triple
                ))
                .build()?])
            .build()?;
        let mut document = serde_json::to_value(&image)?;
        // Docker's extension of the config, which the engine honours when the image is
        // loaded: the HEALTHCHECK docker-build's Dockerfile gives.
        let nanos = |duration: Duration| duration.as_nanos() as u64;
        let test: Vec<String> = std::iter::once("CMD".to_string())
            .chain(runtime.healthcheck.iter().cloned())
            .collect();
        document["config"]["Healthcheck"] = serde_json::json!({
            "Test": test,
            "Interval": nanos(HEALTH_INTERVAL),
            "Timeout": nanos(HEALTH_TIMEOUT),
            "StartPeriod": nanos(HEALTH_START_PERIOD),
            "Retries": HEALTH_RETRIES,
        });
        let config = layout.blob(MediaType::ImageConfig, serde_json::to_vec(&document)?)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(vec![layer])
            .build()?;
        let mut descriptor = layout.blob(MediaType::ImageManifest, canonical(&manifest)?)?;
        descriptor.set_platform(Some(
            PlatformBuilder::default()
                .architecture(Arch::from(target.deb_arch))
                .os(Os::Linux)
                .build()?,
        ));
        layout.manifests.push(descriptor);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(std::mem::take(&mut layout.manifests))
        .build()?;
    let index = layout.blob(MediaType::ImageIndex, canonical(&index)?)?;
    // The layout's own index.json names the multi-platform index by the version.
    let tagged = DescriptorBuilder::default()
        .media_type(MediaType::ImageIndex)
        .digest(index.digest().clone())
        .size(index.size())
        .annotations(
            [(REF_NAME.to_string(), release.version.clone())]
                .into_iter()
                .collect::<HashMap<_, _>>(),
        )
        .build()?;
    let top = ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(vec![tagged])
        .build()?;
    let oci_layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?;

    let mut archive = Tarball::new(release.epoch);
    archive
        .file("oci-layout", 0o644, ROOT, &canonical(&oci_layout)?)
        .file("index.json", 0o644, ROOT, &canonical(&top)?)
        .dir("blobs/", 0o755, ROOT)
        .dir("blobs/sha256/", 0o755, ROOT);
    for (digest, bytes) in &layout.blobs {
        archive.file(&format!("blobs/sha256/{digest}"), 0o644, ROOT, bytes);
    }
    Ok(archive.finish())
}
