//! Deployments beyond one machine, rendered from a profile: a Compose file (PostgreSQL,
//! NATS and N nodes, each dependency on a network of its own so that a node can be cut
//! from one of them) and Kubernetes manifests (a StatefulSet of nodes with stable ids,
//! its ConfigMap, Secret, Service, PodDisruptionBudget and NetworkPolicy, PostgreSQL and
//! NATS bundled or external). Both read the same [`Deployment`]; `docker-cluster` runs
//! the Compose one on the local engine.

pub(crate) mod compose;
pub(crate) mod kubernetes;

use std::time::Duration;

use anyhow::{Context, Result};

use crate::docker::context::ServerSettings;
use crate::workspace::profile::Profile;

/// The official images the files name by default; `docker-cluster` builds images of
/// these names from Debian's packages where no registry can be reached.
pub(crate) const POSTGRES_IMAGE: &str = "postgres:15";
pub(crate) const NATS_IMAGE: &str = "nats:2.9";
/// The database and its owner.
pub(crate) const DATABASE: &str = "plexichat";
pub(crate) const NATS_PORT: u16 = 4222;
pub(crate) const POSTGRES_PORT: u16 = 5432;
/// The node's profile inside its container (the image's own path, covered by a mount).
pub(crate) const PROFILE_PATH: &str = crate::docker::PROFILE;
/// Beyond the server's own drain (`http.shutdown_timeout`): the time to close the
/// database pool and the bus connection before the orchestrator kills it.
const TERMINATION_MARGIN: Duration = Duration::from_secs(10);

/// What both renderings are made from.
pub(crate) struct Deployment {
    pub nodes: usize,
    pub server_image: String,
    pub postgres_image: String,
    pub nats_image: String,
    /// The profile's `server` section as each node reads it (YAML, `server:` at the top).
    pub server_profile: String,
    /// The port the server listens on inside its container.
    pub port: u16,
    /// How long a node may take to stop: its drain and the margin after it.
    pub termination_grace: Duration,
    /// A managed PostgreSQL or NATS instead of the bundled ones (Kubernetes).
    pub external_database_url: Option<String>,
    pub external_nats_url: Option<String>,
}

impl Deployment {
    /// `nodes` nodes of `server_image` configured by `profile`'s server section.
    pub(crate) fn of(profile: &Profile, nodes: usize, server_image: String) -> Result<Self> {
        let server = ServerSettings::of(profile)?;
        let section = profile.server_section().cloned().unwrap_or_default();
        let mut document = serde_yaml::Mapping::new();
        document.insert("server".into(), section);
        let server_profile = format!(
            "# The server section of {} (cargo xtask deploy render).\n{}",
            profile
                .path
                .file_name()
                .map_or_else(|| profile.name.clone(), |name| name.to_string_lossy().into_owned()),
            serde_yaml::to_string(&document).context("the profile's server section")?
        );
        Ok(Self {
            nodes,
            server_image,
            postgres_image: POSTGRES_IMAGE.into(),
            nats_image: NATS_IMAGE.into(),
            server_profile,
            port: server.port,
            termination_grace: profile.server_duration(&["http", "shutdown_timeout"], Duration::from_secs(30))
                + TERMINATION_MARGIN,
            external_database_url: None,
            external_nats_url: None,
        })
    }

    /// The name of node `index`: its service, container host name and node id.
    pub(crate) fn node_name(index: usize) -> String {
        format!("node-{index}")
    }
}

/// A fresh database password: 128 random bits, hex, so that it needs no quoting in a URL,
/// a YAML file or an `.env` line.
pub(crate) fn password() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(crate::system::hex(&bytes))
}
