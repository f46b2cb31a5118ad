//! The Compose rendering: `compose.yaml`, the `profile.yaml` every node mounts, and an
//! `.env` holding the database password (Compose reads it from the file's directory).
//!
//! Compose file format 2.4, which Debian's docker-compose (1.29) and today's `docker
//! compose` both run, and which has what a single-host deployment needs outside swarm
//! mode: health-gated `depends_on`, `cpus` and `mem_limit`, internal networks.
//! PostgreSQL is only on the `database` network and NATS only on `bus`, both internal;
//! the nodes are on those and on `clients`, where their ports are published. Cutting a
//! node from one dependency is disconnecting it from one network.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::{Deployment, DATABASE, NATS_PORT, POSTGRES_PORT, PROFILE_PATH};
use crate::docker::context::{HEALTH_INTERVAL, HEALTH_RETRIES, HEALTH_START_PERIOD, HEALTH_TIMEOUT};

pub(crate) const FILE: &str = "compose.yaml";
pub(crate) const PROFILE_FILE: &str = "profile.yaml";
pub(crate) const ENV_FILE: &str = ".env";
/// The networks, as the file names them (Compose prefixes them with the project).
pub(crate) const CLIENTS: &str = "clients";
pub(crate) const DATABASE_NETWORK: &str = "database";
pub(crate) const BUS: &str = "bus";
/// The service names, which are also the host names the nodes reach them by.
pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const NATS: &str = "nats";
/// The `.env` variables: the bundled database's password, an external one's URL.
const PASSWORD_VARIABLE: &str = "POSTGRES_PASSWORD";
const DATABASE_URL_VARIABLE: &str = "PLEXICHAT_DATABASE_URL";
/// The first node's published port; the others follow it.
const FIRST_PORT: u16 = 8001;

/// The variable holding the host port of node `index` (`0` asks the engine for a free one).
pub(crate) fn port_variable(index: usize) -> String {
    format!("PLEXICHAT_NODE_{index}_PORT")
}

/// The Compose file of `deployment`.
pub(crate) fn render(deployment: &Deployment) -> Result<String> {
    let mut services = Map::new();
    let mut volumes = Map::new();
    let mut networks = Map::new();
    networks.insert(CLIENTS.into(), json!({}));
    if deployment.external_database_url.is_none() {
        services.insert(POSTGRES.into(), postgres(deployment));
        volumes.insert("postgres-data".into(), json!({}));
        networks.insert(DATABASE_NETWORK.into(), json!({ "internal": true }));
    }
    if deployment.external_nats_url.is_none() {
        services.insert(NATS.into(), nats(deployment));
        networks.insert(BUS.into(), json!({ "internal": true }));
    }
    for index in 0..deployment.nodes {
        let name = Deployment::node_name(index);
        volumes.insert(format!("{name}-data"), json!({}));
        services.insert(name, node(deployment, index));
    }
    let file = json!({
        "version": "2.4",
        "services": services,
        "networks": networks,
        "volumes": volumes,
    });
    Ok(format!(
        "# PlexiChat: {} node(s){}{}, rendered by `cargo xtask deploy render`.\n\
         # Run it: docker compose up -d (or docker-compose up -d); the nodes answer on\n\
         # 127.0.0.1:{FIRST_PORT}… ({}=… moves one, PLEXICHAT_BIND=0.0.0.0 opens them).\n{}",
        deployment.nodes,
        if deployment.external_database_url.is_some() {
            ", an external PostgreSQL"
        } else {
            ", PostgreSQL"
        },
        if deployment.external_nats_url.is_some() {
            ", an external NATS"
        } else {
            ", NATS"
        },
        port_variable(0),
        serde_yaml::to_string(&file).context("writing the Compose file")?
    ))
}

/// Writes the Compose file, the nodes' profile and an `.env` (mode 0600) with the
/// secrets: a fresh database password, or the one `dir`'s `.env` already has (the
/// database volume was made with it); an external database's URL.
pub(crate) fn write(deployment: &Deployment, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(FILE), render(deployment)?)?;
    std::fs::write(dir.join(PROFILE_FILE), &deployment.server_profile)?;
    let env = dir.join(ENV_FILE);
    let kept = std::fs::read_to_string(&env).ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{PASSWORD_VARIABLE}=")).map(str::to_string))
    });
    let mut lines = Vec::new();
    if deployment.external_database_url.is_none() {
        let password = match kept {
            Some(password) => password,
            None => super::password()?,
        };
        lines.push(format!("{PASSWORD_VARIABLE}={password}"));
    }
    if let Some(url) = &deployment.external_database_url {
        lines.push(format!("{DATABASE_URL_VARIABLE}={url}"));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&env)
        .with_context(|| format!("writing {}", env.display()))?;
    file.write_all(
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
            .as_bytes(),
    )?;
    Ok(vec![FILE.into(), PROFILE_FILE.into(), ENV_FILE.into()])
}

fn postgres(deployment: &Deployment) -> Value {
    json!({
        "image": deployment.postgres_image,
        "environment": {
            "POSTGRES_USER": DATABASE,
            "POSTGRES_DB": DATABASE,
            "POSTGRES_PASSWORD": format!("${{{PASSWORD_VARIABLE}:?set {PASSWORD_VARIABLE} (the .env beside this file does)}}"),
        },
        "volumes": ["postgres-data:/var/lib/postgresql/data"],
        "networks": [DATABASE_NETWORK],
        "healthcheck": {
            "test": ["CMD", "pg_isready", "--host", "127.0.0.1", "--username", DATABASE, "--dbname", DATABASE],
            "interval": "2s",
            "timeout": "5s",
            "retries": 30,
        },
        "restart": "unless-stopped",
        "stop_grace_period": "30s",
        "cpus": 1.0,
        "mem_limit": "512m",
    })
}

fn nats(deployment: &Deployment) -> Value {
    // No health check: the official image has nothing to run one with.
    json!({
        "image": deployment.nats_image,
        "command": ["--port", NATS_PORT.to_string()],
        "networks": [BUS],
        "restart": "unless-stopped",
        "cpus": 0.5,
        "mem_limit": "128m",
    })
}

fn node(deployment: &Deployment, index: usize) -> Value {
    let name = Deployment::node_name(index);
    let port = deployment.port;
    let database_url = match deployment.external_database_url {
        Some(_) => format!("${{{DATABASE_URL_VARIABLE}}}"),
        None => format!("postgres://{DATABASE}:${{{PASSWORD_VARIABLE}}}@{POSTGRES}:{POSTGRES_PORT}/{DATABASE}"),
    };
    let nats_url = deployment
        .external_nats_url
        .clone()
        .unwrap_or_else(|| format!("nats://{NATS}:{NATS_PORT}"));
    let mut networks = vec![CLIENTS];
    let mut depends_on = Map::new();
    if deployment.external_database_url.is_none() {
        networks.push(DATABASE_NETWORK);
        depends_on.insert(POSTGRES.into(), json!({ "condition": "service_healthy" }));
    }
    if deployment.external_nats_url.is_none() {
        networks.push(BUS);
        // The nodes reconnect by themselves: NATS need only be started.
        depends_on.insert(NATS.into(), json!({ "condition": "service_started" }));
    }
    let mut service = json!({
        "image": deployment.server_image,
        "hostname": name,
        "environment": {
            "PLEXICHAT_CONFIG": PROFILE_PATH,
            "PLEXICHAT_LISTEN": format!("0.0.0.0:{port}"),
            "PLEXICHAT_NODE_ID": name,
            "PLEXICHAT_DATABASE_URL": database_url,
            "PLEXICHAT_NATS_URL": nats_url,
        },
        "volumes": [
            format!("./{PROFILE_FILE}:{PROFILE_PATH}:ro"),
            format!("{name}-data:{}", crate::docker::DATA),
        ],
        "ports": [format!(
            "${{PLEXICHAT_BIND:-127.0.0.1}}:${{{}:-{}}}:{port}",
            port_variable(index),
            FIRST_PORT as usize + index
        )],
        "networks": networks,
        "healthcheck": {
            "test": ["CMD", crate::docker::BINARY, "healthcheck", "--url", format!("http://127.0.0.1:{port}/health")],
            "interval": humantime::format_duration(HEALTH_INTERVAL).to_string(),
            "timeout": humantime::format_duration(HEALTH_TIMEOUT).to_string(),
            "start_period": humantime::format_duration(HEALTH_START_PERIOD).to_string(),
            "retries": HEALTH_RETRIES,
        },
        "restart": "unless-stopped",
        "stop_grace_period": format!("{}s", deployment.termination_grace.as_secs()),
        "cpus": 1.0,
        "mem_limit": "256m",
    });
    if !depends_on.is_empty() {
        service["depends_on"] = depends_on.into();
    }
    service
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn deployment(nodes: usize) -> Deployment {
        Deployment {
            nodes,
            server_image: "plexichat:0.1.0".into(),
            postgres_image: super::super::POSTGRES_IMAGE.into(),
            nats_image: super::super::NATS_IMAGE.into(),
            server_profile: "server:\n  listen: 0.0.0.0:8000\n".into(),
            port: 8000,
            termination_grace: std::time::Duration::from_secs(40),
            external_database_url: None,
            external_nats_url: None,
        }
    }

    #[test]
    fn each_dependency_is_on_its_own_internal_network_and_the_nodes_on_all() {
        let text = render(&deployment(3)).unwrap();
        let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let networks = |service: &str| -> Vec<String> {
            serde_yaml::from_value(file["services"][service]["networks"].clone()).unwrap()
        };
        assert_eq!(networks(POSTGRES), [DATABASE_NETWORK]);
        assert_eq!(networks(NATS), [BUS]);
        assert_eq!(networks("node-2"), [CLIENTS, DATABASE_NETWORK, BUS]);
        assert_eq!(file["networks"][BUS]["internal"], true);
        assert_eq!(file["networks"][CLIENTS].as_mapping().map(|m| m.len()), Some(0));
        let node = &file["services"]["node-1"];
        assert_eq!(node["environment"]["PLEXICHAT_NODE_ID"], "node-1");
        assert_eq!(
            node["ports"][0],
            "${PLEXICHAT_BIND:-127.0.0.1}:${PLEXICHAT_NODE_1_PORT:-8002}:8000"
        );
        assert_eq!(node["depends_on"][POSTGRES]["condition"], "service_healthy");
        assert_eq!(node["stop_grace_period"], "40s");
        assert!(file["services"]["node-3"].is_null());
        assert!(file["volumes"]["node-2-data"].is_mapping());
    }

    #[test]
    fn an_external_database_and_bus_replace_the_bundled_ones() {
        let mut external = deployment(2);
        external.external_database_url = Some("postgres://chat:pw@db.example.com:6432/chat".into());
        external.external_nats_url = Some("nats://bus.example.com:4333".into());
        let file: serde_yaml::Value = serde_yaml::from_str(&render(&external).unwrap()).unwrap();
        assert!(file["services"][POSTGRES].is_null() && file["services"][NATS].is_null());
        assert!(file["networks"][BUS].is_null() && file["volumes"]["postgres-data"].is_null());
        let node = &file["services"]["node-0"];
        assert_eq!(
            node["environment"]["PLEXICHAT_DATABASE_URL"],
            "${PLEXICHAT_DATABASE_URL}"
        );
        assert_eq!(node["environment"]["PLEXICHAT_NATS_URL"], "nats://bus.example.com:4333");
        assert!(node["depends_on"].is_null());

        let dir = tempfile::tempdir().unwrap();
        write(&external, dir.path()).unwrap();
        let env = std::fs::read_to_string(dir.path().join(ENV_FILE)).unwrap();
        assert_eq!(
            env,
            "PLEXICHAT_DATABASE_URL=postgres://chat:pw@db.example.com:6432/chat\n"
        );
    }

    #[test]
    fn a_second_render_keeps_the_password_the_database_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        write(&deployment(1), dir.path()).unwrap();
        let first = std::fs::read_to_string(dir.path().join(ENV_FILE)).unwrap();
        assert!(
            first.starts_with("POSTGRES_PASSWORD=") && first.len() == "POSTGRES_PASSWORD=\n".len() + 32,
            "{first}"
        );
        write(&deployment(3), dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(ENV_FILE)).unwrap(), first);
        let mode = std::fs::metadata(dir.path().join(ENV_FILE)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }
}
