//! `--smoke`: each image run as a container, awaited until Docker calls it healthy, and
//! talked to as a client would; removed however the run ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HealthStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use services::teardown::Guard;

use super::context::{platform, ServerSettings};
use super::engine::{container_logs, on_fresh_runtime, remove_container, Engine};
use super::{Image, SmokeResult, DATA, HEALTHY_TIMEOUT, LABEL, LABEL_VALUE, REQUEST_TIMEOUT, RUN_LABEL};
use crate::cargo::smoke::Step;
use crate::report::progress::Task;
use crate::system::http;
use crate::workspace::targets::Target;

use crate::cluster::{Member, Verifier};

/// Runs `image` in a labelled container with its port published on loopback, waits for
/// Docker to call it healthy, talks to it as a client, and removes it.
pub(crate) fn smoke_image(
    engine: &Engine,
    image: &Image,
    target: &Target,
    server: &ServerSettings,
    task: &Task,
) -> SmokeResult {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut record = |name: &str, result: Result<String>| {
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|err| format!("{err:#}"));
        task.step(format!(
            "{name}: {}",
            if ok {
                detail.clone()
            } else {
                format!("FAILED: {detail}")
            }
        ));
        steps.push(Step {
            name: name.into(),
            ok,
            detail,
        });
        ok
    };
    let container = match start_container(engine, image, target, server) {
        Ok(container) => container,
        Err(err) => {
            record("start", Err(err));
            return SmokeResult {
                ok: false,
                seconds: started.elapsed().as_secs_f64(),
                steps,
            };
        }
    };
    record(
        "start",
        Ok(format!("container {}", &container.id[..12.min(container.id.len())])),
    );
    let healthy = record("healthy", wait_healthy(engine, &container.id, started));
    if healthy {
        let address = published_port(engine, &container.id, server.port);
        match address {
            Ok(addr) => {
                if record("health", get_health(addr)) {
                    record("round trip", round_trip(addr));
                }
            }
            Err(err) => {
                record("port", Err(err));
            }
        }
    }
    if steps.iter().any(|s| !s.ok) {
        if let Some(last) = steps.last_mut() {
            let logs = engine.block(container_logs(&engine.docker, &container.id));
            if !logs.is_empty() {
                last.detail.push_str(&format!("\n  container log: {logs}"));
            }
        }
    }
    drop(container);
    let ok = steps.iter().all(|s| s.ok);
    if ok {
        steps.push(Step {
            name: "removed".into(),
            ok: true,
            detail: "container and its volume removed".into(),
        });
    }
    SmokeResult {
        ok,
        seconds: started.elapsed().as_secs_f64(),
        steps,
    }
}

/// A running smoke container, removed (with its anonymous /data volume) when dropped.
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) _guard: Guard,
}

pub(crate) fn start_container(
    engine: &Engine,
    image: &Image,
    target: &Target,
    server: &ServerSettings,
) -> Result<Container> {
    let pid = std::process::id();
    let name = format!("plexichat-smoke-{}-{pid}", target.arch);
    let port = format!("{}/tcp", server.port);
    let mut env = Vec::new();
    if !server.sqlite {
        // The image alone is under test: no database server is at hand.
        env.push(format!("PLEXICHAT_DATABASE_URL=sqlite://{DATA}/plexichat.db"));
    }
    let body = ContainerCreateBody {
        image: Some(image.id.clone()),
        env: Some(env),
        labels: Some(HashMap::from([
            (LABEL.to_string(), LABEL_VALUE.to_string()),
            (RUN_LABEL.to_string(), pid.to_string()),
        ])),
        exposed_ports: Some(vec![port.clone()]),
        host_config: Some(HostConfig {
            // An empty host port: the engine picks a free one, no race with other runs.
            port_bindings: Some(HashMap::from([(
                port,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new()
        .name(&name)
        .platform(&platform(target))
        .build();
    let created = engine
        .block(engine.docker.create_container(Some(options), body))
        .with_context(|| format!("creating container {name}"))?;
    let id = created.id;
    let owned = id.clone();
    let guard = Guard::new(move || {
        on_fresh_runtime(move |docker| async move { usize::from(remove_container(&docker, &owned).await) });
    });
    let container = Container { id, _guard: guard };
    engine
        .block(engine.docker.start_container(&container.id, None))
        .with_context(|| format!("starting container {name}"))?;
    Ok(container)
}

/// Waits for the engine's HEALTHCHECK verdict; fails at once if the container exits or
/// is called unhealthy.
pub(crate) fn wait_healthy(engine: &Engine, id: &str, started: Instant) -> Result<String> {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let inspected = engine.block(engine.docker.inspect_container(id, None))?;
        let state = inspected.state.unwrap_or_default();
        if state.running != Some(true) {
            bail!(
                "the container stopped (exit code {}, {})",
                state.exit_code.unwrap_or_default(),
                state
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "no error given".into())
            );
        }
        let health = state.health.unwrap_or_default();
        match health.status {
            Some(HealthStatusEnum::HEALTHY) => {
                return Ok(format!("healthy after {:.1} s", started.elapsed().as_secs_f64()));
            }
            Some(HealthStatusEnum::UNHEALTHY) => {
                let last = health
                    .log
                    .and_then(|log| log.last().and_then(|result| result.output.clone()))
                    .unwrap_or_default();
                bail!("the engine calls it unhealthy: {}", last.trim());
            }
            Some(HealthStatusEnum::NONE) | None => bail!("the image has no HEALTHCHECK"),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("not healthy within {HEALTHY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The loopback address the engine published the server's port on.
pub(crate) fn published_port(engine: &Engine, id: &str, port: u16) -> Result<SocketAddr> {
    let inspected = engine.block(engine.docker.inspect_container(id, None))?;
    let host_port = inspected
        .network_settings
        .and_then(|settings| settings.ports)
        .and_then(|ports| ports.get(&format!("{port}/tcp")).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
        .context("the engine published no port")?;
    let host_port: u16 = host_port.parse().context("the engine published a non-numeric port")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], host_port)))
}

pub(crate) fn get_health(addr: SocketAddr) -> Result<String> {
    let (status, body) = http::request_within(REQUEST_TIMEOUT, addr, "GET", "/health", None, None)?;
    if status != 200 {
        bail!("/health answered {status}: {body}");
    }
    Ok(format!("/health on {addr}: {status}"))
}

/// register → login → create a channel → post → read it back, as the cluster checks do.
pub(crate) fn round_trip(addr: SocketAddr) -> Result<String> {
    let container = Member {
        id: "the container".into(),
        addr,
    };
    let client = Verifier::new(&container)?;
    let posted = client.post(&container, "hello from the image")?;
    client.assert_in_history(&container, &[posted].into())?;
    Ok("register, login, channel, post, history: ok".into())
}
