//! Docker images of the server through the Docker Engine API (bollard; never the `docker`
//! CLI): the build context assembled in memory, the engine calls, and the smoke run that
//! talks to a container as a client would.
//!
//! Everything a run creates in the engine besides the images it means to keep — the
//! smoke containers — carries the labels `org.plexichat.xtask=docker-build` and
//! `org.plexichat.xtask.run=<pid>`, so that a cleanup pass can find what a run left.

pub(crate) mod context;
pub(crate) mod engine;
pub(crate) mod smoke;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::TagImageOptionsBuilder;
use serde::Serialize;

use self::context::{build_context, platform, ServerSettings};
use self::engine::{build_image, Engine};
use crate::cargo::artefact::target_binary;
use crate::cargo::smoke::Step;
use crate::report::progress::Task;
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// The label on everything docker-build creates, and its value.
pub(crate) const LABEL: &str = "org.plexichat.xtask";
pub(crate) const LABEL_VALUE: &str = "docker-build";
/// The label naming the run (its process id) that created a container.
pub(crate) const RUN_LABEL: &str = "org.plexichat.xtask.run";

/// The numeric user and group the server runs as: no name needs resolving in an image
/// with no /etc/passwd, and it is nobody's on the host (distroless's "nonroot").
pub(crate) const USER: &str = "65532:65532";
/// Where the binary, the baked-in profile and the database live in the image.
pub(crate) const BINARY: &str = "/usr/local/bin/plexichat";
pub(crate) const PROFILE: &str = "/etc/plexichat/profile.yaml";
pub(crate) const DATA: &str = "/data";

/// How long an image may take to report healthy: an emulated server starts in seconds,
/// a broken one never does.
pub(crate) const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);
/// Register and login hash a password with the profile's argon2 cost: seconds under
/// qemu-user emulation.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// One image, as the report gives it.
#[derive(Debug, Serialize)]
pub(crate) struct Image {
    pub arch: String,
    pub tags: Vec<String>,
    pub id: String,
    pub size_bytes: i64,
    /// `os/architecture[/variant]` as the engine records it.
    pub platform: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds the engine spent building the image (not compiling the binary).
    pub build_seconds: f64,
    pub binary: PathBuf,
    pub smoke: Option<SmokeResult>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SmokeResult {
    pub ok: bool,
    pub seconds: f64,
    pub steps: Vec<Step>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build_one(
    engine: &Engine,
    workspace: &Workspace,
    profile: &Profile,
    server: &ServerSettings,
    labels: &BTreeMap<String, String>,
    target: &Target,
    repository: &str,
    tag: &str,
    task: &Task,
) -> Result<Image> {
    let binary = target_binary(workspace, &profile.build, target, task)?;
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let profile_text = std::fs::read(&profile.path).with_context(|| format!("reading {}", profile.path.display()))?;
    let context = build_context(server, labels, &bytes, &profile_text);
    let arch_tag = format!("{repository}:{tag}-{}", target.arch);
    task.step(format!(
        "building {arch_tag} ({:.1} MB context)",
        context.len() as f64 / 1e6
    ));
    let started = Instant::now();
    let id = engine.block(build_image(&engine.docker, context, &arch_tag, &platform(target), task))?;
    let build_seconds = started.elapsed().as_secs_f64();
    let mut tags = vec![arch_tag];
    if !target.is_foreign() {
        engine
            .block(engine.docker.tag_image(
                &id,
                Some(TagImageOptionsBuilder::new().repo(repository).tag(tag).build()),
            ))
            .with_context(|| format!("tagging {id} as {repository}:{tag}"))?;
        tags.push(format!("{repository}:{tag}"));
    }
    let inspected = engine
        .block(engine.docker.inspect_image(&id))
        .with_context(|| format!("inspecting {id}"))?;
    let config = inspected.config.unwrap_or_default();
    let mut platform = format!(
        "{}/{}",
        inspected.os.unwrap_or_default(),
        inspected.architecture.unwrap_or_default()
    );
    if let Some(variant) = inspected.variant.filter(|v| !v.is_empty()) {
        platform.push_str(&format!("/{variant}"));
    }
    let expected = self::platform(target);
    if platform != expected && !platform.starts_with(&format!("{expected}/")) {
        bail!("the engine built a {platform} image, not {expected}: is binfmt/qemu-user registered?");
    }
    Ok(Image {
        arch: target.arch.to_string(),
        tags,
        id: inspected.id.unwrap_or(id),
        size_bytes: inspected.size.unwrap_or_default(),
        platform,
        user: config.user.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        build_seconds,
        binary,
        smoke: None,
    })
}
