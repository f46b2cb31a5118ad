//! The Docker Engine, through bollard: connecting at a negotiated API version, building,
//! and removing, pruning and exporting what docker-build made.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, PruneImagesOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::{LABEL, LABEL_VALUE, RUN_LABEL};
use crate::report::error::UsageError;
use crate::report::progress::Task;

/// A connection to the engine, at the API version both sides speak.
pub(crate) struct Engine {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) docker: Docker,
    pub(crate) version: String,
    pub(crate) api_version: String,
}

impl Engine {
    /// Connects as DOCKER_HOST says (the local socket by default); an engine that cannot
    /// be reached is the user's to fix (exit 2), and the message says how.
    pub(crate) fn connect() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |err: &dyn std::fmt::Display| {
            UsageError(format!(
                "cannot reach the Docker engine at {host}: {err}\n  fix: start the engine (`systemctl start docker`, or `dockerd &` as root); `cargo xtask doctor --fix` installs it if it is missing; or set DOCKER_HOST to the engine's socket, e.g. unix:///var/run/docker.sock"
            ))
        };
        let connected = runtime.block_on(async {
            let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
            let version = docker.version().await?;
            Ok::<_, bollard::errors::Error>((docker, version))
        });
        let (docker, version) = connected.map_err(|err| unreachable(&err))?;
        let api_version = docker.client_version().to_string();
        Ok(Self {
            runtime,
            docker,
            version: version.version.unwrap_or_else(|| "?".into()),
            api_version,
        })
    }

    pub(crate) fn block<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Runs `work` with a connection of its own on a runtime of its own, on a thread of its
/// own: teardown runs from Drop, from the signal handler, or while the main runtime is
/// busy, and must depend on none of them.
pub(crate) fn on_fresh_runtime<F, Fut>(work: F)
where
    F: FnOnce(Docker) -> Fut + Send + 'static,
    Fut: Future<Output = usize>,
{
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let docker = Docker::connect_with_defaults().ok()?.negotiate_version().await.ok()?;
            Some(work(docker).await)
        })
    });
    let _ = thread.join();
}

/// Streams the build's output through `task`; the image id, or the daemon's error.
pub(crate) async fn build_image(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    platform: &str,
    task: &Task,
) -> Result<String> {
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .platform(platform)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut id = None;
    let mut last_lines = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bail!(
                    "the engine failed to build {tag}: {error}\n  last output: {}",
                    last_lines.join(" | ")
                )
            }
            Err(err) => return Err(err).with_context(|| format!("building {tag}")),
        };
        if let Some(detail) = info.error_detail {
            bail!(
                "the engine failed to build {tag}: {}",
                detail.message.unwrap_or_default()
            );
        }
        if let Some(text) = &info.stream {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if line.starts_with("Step ") {
                    task.step(line.to_string());
                } else {
                    task.detail(line.to_string());
                }
                if let Some(built) = line.strip_prefix("Successfully built ") {
                    id = Some(built.trim().to_string());
                }
                last_lines.push(line.to_string());
                if last_lines.len() > 3 {
                    last_lines.remove(0);
                }
            }
        }
        if let Some(aux) = info.aux.and_then(|aux| aux.id) {
            id = Some(aux);
        }
    }
    id.with_context(|| format!("the engine finished building {tag} without naming an image"))
}

/// The last lines the container wrote, for a failure's message.
pub(crate) async fn container_logs(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail("5").build();
    let mut logs = docker.logs(id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&chunk.to_string());
    }
    text.trim().replace('\n', " | ")
}

pub(crate) async fn remove_container(docker: &Docker, id: &str) -> bool {
    let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    docker.remove_container(id, Some(options)).await.is_ok()
}

/// Removes our labelled containers: those of run `pid`, or with `None` all of them.
/// Returns how many went.
pub(crate) async fn remove_containers(docker: &Docker, pid: Option<u32>) -> usize {
    let mut label_filters = vec![format!("{LABEL}={LABEL_VALUE}")];
    if let Some(pid) = pid {
        label_filters.push(format!("{RUN_LABEL}={pid}"));
    }
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([("label", label_filters)]))
        .build();
    let Ok(containers) = docker.list_containers(Some(options)).await else {
        return 0;
    };
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        if remove_container(docker, &id).await {
            removed += 1;
        }
    }
    removed
}

/// Removes containers that runs no longer alive left behind (killed with SIGKILL, say):
/// a concurrent run's containers stay.
pub(crate) async fn remove_leftovers(docker: Docker) -> usize {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([("label", vec![format!("{LABEL}={LABEL_VALUE}")])]))
        .build();
    let Ok(containers) = docker.list_containers(Some(options)).await else {
        return 0;
    };
    let mut removed = 0;
    for container in containers {
        let owner = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(RUN_LABEL))
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if let (false, Some(id)) = (alive, container.id) {
            if remove_container(&docker, &id).await {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes our images that a rebuild left without a tag.
pub(crate) async fn prune_untagged(docker: &Docker) {
    let options = PruneImagesOptionsBuilder::new()
        .filters(&HashMap::from([
            ("label", vec![format!("{LABEL}={LABEL_VALUE}")]),
            ("dangling", vec!["true".to_string()]),
        ]))
        .build();
    let _ = docker.prune_images(Some(options)).await;
}

/// Writes the images named to `file` as a docker-archive; returns its size.
pub(crate) async fn export_images(docker: &Docker, names: &[String], file: &Path) -> Result<u64> {
    use std::io::Write;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = file.with_extension("partial");
    let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stream = docker.export_images(&names);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("exporting the images")?;
        out.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(bytes)
}
