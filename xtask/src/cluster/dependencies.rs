//! The services a cluster shares — PostgreSQL and NATS on this host — as fault targets for
//! every backend: NATS killed and started again on its port, PostgreSQL frozen, thawed or
//! restarted, a message deleted behind the cluster's back; and each node's own relays to
//! them, the fault points that cut one node from one service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use services::process::{self, Signal};
use services::{Durability, Nats, Postgres, Relay};

use crate::report::progress::Task;
use crate::scenario::{Service, Store};

/// The database the nodes use, and the one the toolchain administers it from.
const CLUSTER_DATABASE: &str = "postgres";
const ADMIN_DATABASE: &str = "template1";

/// The database that keeps snapshot `tag` of the cluster's.
fn snapshot_database(tag: &str) -> String {
    format!("snapshot_{tag}")
}

/// What a fault does to a shared service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceAction {
    Kill,
    Start,
    Restart,
    Freeze,
    Thaw,
}

pub(crate) struct SharedServices {
    nats: Option<NatsService>,
    postgres: Option<Postgres>,
}

struct NatsService {
    server: Option<Nats>,
    program: PathBuf,
    port: u16,
    url: String,
}

/// A node's way to the shared services: one relay per service, on this host's loopback.
pub(crate) struct DependencyRelays {
    pub nats: Option<Relay>,
    pub postgres: Option<Relay>,
}

impl SharedServices {
    /// What a cluster on `store` shares: a durable PostgreSQL (from the template cached in
    /// `cache_dir`) and NATS; a single SQLite node on its own disk needs neither.
    pub(crate) fn start_for(store: Store, cache_dir: &Path, task: &Task) -> Result<Self> {
        match store {
            Store::Postgres => {
                task.step("starting PostgreSQL and NATS");
                Self::new(
                    Some(Postgres::start(cache_dir, Durability::Durable)?),
                    Some(Nats::start()?),
                )
            }
            Store::Sqlite => Self::new(None, None),
        }
    }

    pub(crate) fn new(postgres: Option<Postgres>, nats: Option<Nats>) -> Result<Self> {
        let nats = match nats {
            Some(server) => Some(NatsService {
                program: services::host::which("nats-server").context("nats-server is not on PATH")?,
                port: server.port(),
                url: server.url(),
                server: Some(server),
            }),
            None => None,
        };
        Ok(Self { nats, postgres })
    }

    /// New relays for one node, to every service the cluster runs.
    pub(crate) fn relays(&self) -> Result<DependencyRelays> {
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(DependencyRelays {
            nats: self
                .nats
                .as_ref()
                .map(|nats| Relay::start(loopback(nats.port)))
                .transpose()?,
            postgres: self
                .postgres
                .as_ref()
                .map(|postgres| Relay::start(loopback(postgres.port())))
                .transpose()?,
        })
    }

    /// The URLs the cluster description gives: PostgreSQL's and NATS's own.
    pub(crate) fn urls(&self) -> (String, String) {
        (
            self.postgres.as_ref().map(|p| p.url("postgres")).unwrap_or_default(),
            self.nats.as_ref().map(|nats| nats.url.clone()).unwrap_or_default(),
        )
    }

    /// Does `action` to `service`; the answer says what was done, for the report.
    pub(crate) fn act(&mut self, service: Option<Service>, action: ServiceAction) -> Result<String> {
        match (service, action) {
            (Some(Service::Nats), ServiceAction::Kill) => {
                let nats = self.nats.as_mut().context("the cluster runs no NATS")?;
                drop(nats.server.take());
                Ok(format!("NATS on port {} killed", nats.port))
            }
            (Some(Service::Nats), ServiceAction::Start | ServiceAction::Restart) => {
                let nats = self.nats.as_mut().context("the cluster runs no NATS")?;
                drop(nats.server.take());
                nats.server = Some(Nats::start_on(&nats.program, nats.port)?);
                Ok(format!("NATS started again on port {}", nats.port))
            }
            (Some(Service::Nats), ServiceAction::Freeze | ServiceAction::Thaw) => {
                let nats = self.nats.as_ref().context("the cluster runs no NATS")?;
                let pid = nats.server.as_ref().map(Nats::pid).context("NATS is not running")?;
                let signal = if action == ServiceAction::Freeze {
                    Signal::SIGSTOP
                } else {
                    Signal::SIGCONT
                };
                process::signal(pid, signal);
                Ok(format!("NATS {signal}"))
            }
            (Some(Service::Postgres), ServiceAction::Freeze) => {
                self.postgres()?.freeze()?;
                Ok("PostgreSQL frozen".into())
            }
            (Some(Service::Postgres), ServiceAction::Thaw) => {
                services::thaw(self.postgres()?.pid())?;
                Ok("PostgreSQL thawed".into())
            }
            (Some(Service::Postgres), ServiceAction::Restart | ServiceAction::Kill | ServiceAction::Start) => {
                let postgres = self.postgres.as_mut().context("the cluster runs no PostgreSQL")?;
                postgres.restart()?;
                Ok(format!("PostgreSQL restarted on port {}", postgres.port()))
            }
            (None, _) => bail!("the step names no service"),
        }
    }

    /// Keeps the cluster's database as it is now as snapshot `tag` (a copy of it as a
    /// template), for [`Self::restore_database`]; how long that took. `None` on SQLite,
    /// whose stores are on the nodes' own disks.
    ///
    /// The nodes' sessions are ended (a template may have none): call it while they stand
    /// still; they reconnect by themselves when they run again.
    pub(crate) fn save_database(&self, tag: &str) -> Result<Option<Duration>> {
        let Some(postgres) = &self.postgres else {
            return Ok(None);
        };
        let started = Instant::now();
        postgres.execute(
            ADMIN_DATABASE,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{CLUSTER_DATABASE}'"
            ),
        )?;
        postgres.execute(
            ADMIN_DATABASE,
            &format!(
                "CREATE DATABASE \"{}\" TEMPLATE {CLUSTER_DATABASE}",
                snapshot_database(tag)
            ),
        )?;
        Ok(Some(started.elapsed()))
    }

    /// Puts the cluster's database back to snapshot `tag`, ending the nodes' sessions.
    pub(crate) fn restore_database(&self, tag: &str) -> Result<Option<Duration>> {
        let Some(postgres) = &self.postgres else {
            return Ok(None);
        };
        let started = Instant::now();
        postgres.execute(
            ADMIN_DATABASE,
            &format!("DROP DATABASE {CLUSTER_DATABASE} WITH (FORCE)"),
        )?;
        postgres.execute(
            ADMIN_DATABASE,
            &format!(
                "CREATE DATABASE {CLUSTER_DATABASE} TEMPLATE \"{}\"",
                snapshot_database(tag)
            ),
        )?;
        Ok(Some(started.elapsed()))
    }

    /// Deletes message `id` from PostgreSQL: the checker's own test.
    pub(crate) fn drop_message(&self, id: i64) -> Result<String> {
        let postgres = self.postgres().context("drop-acknowledged needs PostgreSQL")?;
        postgres.execute(CLUSTER_DATABASE, &format!("DELETE FROM messages WHERE id = {id}"))?;
        Ok(format!("message {id} deleted from PostgreSQL"))
    }

    fn postgres(&self) -> Result<&Postgres> {
        self.postgres.as_ref().context("the cluster runs no PostgreSQL")
    }
}

impl DependencyRelays {
    /// The relay to `service`.
    pub(crate) fn to(&self, service: Option<Service>) -> Result<&Relay> {
        match service {
            Some(Service::Nats) => self.nats.as_ref().context("the node does not use NATS"),
            Some(Service::Postgres) => self.postgres.as_ref().context("the node does not use PostgreSQL"),
            None => bail!("cut-from names no dependency"),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Relay> {
        self.nats.iter().chain(&self.postgres)
    }
}
