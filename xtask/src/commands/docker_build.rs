//! `cargo xtask docker-build`: one image per architecture from build-native's static
//! binaries, built through the Docker Engine API (bollard; never the `docker` CLI), from
//! a build context assembled in memory. `--smoke` runs each image and talks to it as a
//! client would; `--export` writes the images to a docker-archive for hosts without a
//! registry.
//!
//! Everything the run creates in the engine besides the images it means to keep — the
//! smoke containers — carries the labels `org.plexichat.xtask=docker-build` and
//! `org.plexichat.xtask.run=<pid>`. A cleanup pass removes this run's containers at the
//! end (also after an error, a panic or Ctrl-C, through a teardown guard) and, at the
//! start, any left behind by runs whose process is gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;
use services::teardown::Guard;

use crate::docker::context::{image_labels, ServerSettings};
use crate::docker::engine::{
    export_images, on_fresh_runtime, prune_untagged, remove_containers, remove_leftovers, Engine,
};
use crate::docker::smoke::smoke_image;
use crate::docker::{build_one, Image};
use crate::provision::{self, Requirement};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::targets::{self, Target};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// x86_64, aarch64, riscv64 or all; repeatable. Default: this host's architecture.
    #[arg(long = "arch", value_name = "ARCH")]
    arches: Vec<String>,
    /// Profile: NAME for profiles/NAME.yaml, or a path. Its build section makes the
    /// binary; its server section is baked into the image.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Image name and tag, NAME[:TAG]; each image is tagged NAME:TAG-ARCH, and the host's
    /// also NAME:TAG. Default: plexichat:<server version>.
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<String>,
    /// Run each image (foreign ones through binfmt qemu-user), wait for it to be healthy
    /// and do a register → login → post round trip against it.
    #[arg(long)]
    smoke: bool,
    /// Also write the images to FILE, a docker-archive tar (`docker load -i FILE`).
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct DockerReport {
    ok: bool,
    profile: String,
    engine: String,
    api_version: String,
    images: Vec<Image>,
    export: Option<PathBuf>,
    failures: BTreeMap<String, String>,
    /// Every architecture asked for, in matrix order: a row each, built or not.
    #[serde(skip)]
    targets: Vec<&'static Target>,
    /// The host's image, `NAME:TAG`, for the summary's `docker run`.
    #[serde(skip)]
    reference: String,
}

pub fn run(args: Args) -> Result<DockerReport> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let targets = chosen_targets(&args.arches)?;
    let (repository, tag) = split_tag(args.tag.as_deref(), &workspace.server_version)?;
    let server = ServerSettings::of(&profile)?;
    let progress = Progress::new();

    let engine = Engine::connect()?;
    let engine_task = progress.task("engine");
    engine_task.finish(format!("{} (API {})", engine.version, engine.api_version));
    let removed = engine.block(remove_leftovers(engine.docker.clone()));
    if removed > 0 {
        progress
            .task("cleanup")
            .finish(format!("removed {removed} container(s) left by earlier runs"));
    }
    // This run's containers go however it ends.
    let _cleanup = Guard::new(move || {
        on_fresh_runtime(|docker| async move { remove_containers(&docker, Some(std::process::id())).await });
    });

    let mut failures = provision::install_per_target(&targets, Requirement::to_build, &progress);
    if args.smoke {
        // A foreign image runs only where the kernel hands its binaries to qemu-user, with
        // the F flag so that it works inside containers.
        let binfmt = |target: &'static Target| match target.is_foreign() {
            true => vec![Requirement::Binfmt(target)],
            false => Vec::new(),
        };
        failures.extend(provision::install_per_target(&targets, binfmt, &progress));
    }
    let labels = image_labels(&workspace, &profile, SystemTime::now());
    let mut images = Vec::new();
    let buildable: Vec<&Target> = targets
        .iter()
        .copied()
        .filter(|t| !failures.contains_key(t.triple))
        .collect();
    for target in buildable {
        let task = progress.task(target.arch);
        let outcome = build_one(
            &engine,
            &workspace,
            &profile,
            &server,
            &labels,
            target,
            &repository,
            &tag,
            &task,
        );
        match outcome {
            Ok(mut image) => {
                task.finish(format!(
                    "{} ({:.1} MB)",
                    image.tags.join(", "),
                    image.size_bytes as f64 / 1e6
                ));
                if args.smoke {
                    let smoke_task = progress.task(&format!("{}-smoke", target.arch));
                    let smoke = smoke_image(&engine, &image, target, &server, &smoke_task);
                    smoke_task.finish(format!(
                        "{} in {:.1} s",
                        if smoke.ok { "ok" } else { "FAILED" },
                        smoke.seconds
                    ));
                    if !smoke.ok {
                        let failed = smoke
                            .steps
                            .iter()
                            .find(|s| !s.ok)
                            .map(|s| format!("{}: {}", s.name, s.detail));
                        failures.insert(
                            target.triple.to_string(),
                            format!("smoke: {}", failed.unwrap_or_default()),
                        );
                    }
                    image.smoke = Some(smoke);
                }
                images.push(image);
            }
            Err(err) => {
                task.finish(format!("FAILED: {}", first_line(&format!("{err:#}"))));
                failures.insert(target.triple.to_string(), format!("{err:#}"));
            }
        }
    }

    let export = match (&args.export, images.is_empty()) {
        (Some(file), false) => {
            let task = progress.task("export");
            let names: Vec<String> = images.iter().flat_map(|i| i.tags.clone()).collect();
            match engine.block(export_images(&engine.docker, &names, file)) {
                Ok(bytes) => {
                    task.finish(format!("{} ({:.1} MB)", file.display(), bytes as f64 / 1e6));
                    Some(file.clone())
                }
                Err(err) => {
                    task.finish(format!("FAILED: {err:#}"));
                    failures.insert("export".into(), format!("{err:#}"));
                    None
                }
            }
        }
        _ => None,
    };
    // Images a rebuild untagged are ours and of no further use.
    engine.block(prune_untagged(&engine.docker));

    Ok(DockerReport {
        ok: failures.is_empty(),
        profile: profile.name,
        engine: engine.version.clone(),
        api_version: engine.api_version.clone(),
        images,
        export,
        failures,
        targets,
        reference: format!("{repository}:{tag}"),
    })
}

impl Outcome for DockerReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["arch", "result", "tags", "size", "platform", "user", "build s", "smoke"]);
        for target in &self.targets {
            match self.images.iter().find(|i| i.arch == target.arch) {
                Some(image) => table.row(vec![
                    target.arch.into(),
                    if self.failures.contains_key(target.triple) {
                        "FAILED"
                    } else {
                        "ok"
                    }
                    .into(),
                    image.tags.join(" "),
                    format!("{:.2} MB", image.size_bytes as f64 / 1e6),
                    image.platform.clone(),
                    image.user.clone(),
                    format!("{:.1}", image.build_seconds),
                    match &image.smoke {
                        None => "-".into(),
                        Some(smoke) => format!("{} ({:.1} s)", if smoke.ok { "ok" } else { "FAILED" }, smoke.seconds),
                    },
                ]),
                None => table.row(vec![
                    target.arch.into(),
                    "FAILED".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    self.failures
                        .get(target.triple)
                        .map(|e| first_line(e))
                        .unwrap_or_default(),
                ]),
            }
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let mut summary = match &self.export {
            Some(file) => format!(
                "images exported to {} (load with `docker load -i FILE`)",
                file.display()
            ),
            None => format!("run one: docker run --rm -p 8000:8000 {}", self.reference),
        };
        for (what, error) in &self.failures {
            summary.push_str(&format!("\n{what}: {error}"));
        }
        Some(summary)
    }
}

/// `--arch` values in matrix order, de-duplicated; the host's architecture by default.
fn chosen_targets(names: &[String]) -> Result<Vec<&'static Target>, UsageError> {
    if names.is_empty() {
        return Ok(targets::TARGETS.iter().filter(|t| !t.is_foreign()).collect());
    }
    let mut chosen = Vec::new();
    for name in names {
        chosen.extend(
            targets::parse(name).map_err(|problem| {
                UsageError(format!("--arch: {problem}\n  fix: use x86_64, aarch64, riscv64 or all"))
            })?,
        );
    }
    Ok(targets::TARGETS.iter().filter(|t| chosen.contains(t)).collect())
}

/// `NAME[:TAG]` → (NAME, TAG), the tag defaulting to `version`. A colon before the last
/// `/` belongs to a registry's port, not to the tag.
fn split_tag(given: Option<&str>, version: &str) -> Result<(String, String), UsageError> {
    let given = given.unwrap_or("plexichat");
    let (name, tag) = match given.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (given, version),
    };
    let valid_tag = !tag.is_empty()
        && tag.len() <= 100
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !tag.starts_with(['.', '-']);
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    if !valid_tag || !valid_name {
        return Err(UsageError(format!(
            "--tag `{given}`: not a valid image reference\n  fix: use NAME[:TAG], e.g. plexichat:dev or registry.local:5000/plexichat:1.0 (lower-case name; tag of letters, digits, _ . -)"
        )));
    }
    Ok((name.to_string(), tag.to_string()))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_default_to_the_version_and_keep_registry_ports() {
        assert_eq!(split_tag(None, "0.1.0").unwrap(), ("plexichat".into(), "0.1.0".into()));
        assert_eq!(
            split_tag(Some("chat:dev"), "0.1.0").unwrap(),
            ("chat".into(), "dev".into())
        );
        assert_eq!(
            split_tag(Some("registry.local:5000/chat"), "0.1.0").unwrap(),
            ("registry.local:5000/chat".into(), "0.1.0".into())
        );
        assert!(split_tag(Some("Chat:dev"), "0.1.0").is_err());
        assert!(split_tag(Some("chat:"), "0.1.0").is_err());
    }

    #[test]
    fn unknown_arches_are_usage_errors() {
        let err = chosen_targets(&["mips".into()]).unwrap_err().to_string();
        assert!(err.contains("--arch") && err.contains("riscv64"), "{err}");
        let arches: Vec<&str> = chosen_targets(&["riscv64".into(), "x86_64".into()])
            .unwrap()
            .iter()
            .map(|t| t.arch)
            .collect();
        assert_eq!(arches, ["x86_64", "riscv64"]);
    }
}
