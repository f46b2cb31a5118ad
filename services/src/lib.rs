//! The services that the toolchain (`cargo xtask`) and the server's own tests both start:
//! ephemeral PostgreSQL and NATS, `plexichat serve` processes, and the teardown that
//! stops them all on success, error, panic and Ctrl-C. A crate of its own so that the
//! server's tests need none of the toolchain's heavier dependencies (Docker, QMP,
//! progress bars, kernel decompressors).
//!
//! - `process`: the one way a process is run: short-lived commands through xshell,
//!   long-running children owned by a guard, signals to them and their process groups;
//! - `teardown`: the registry of guards, the signal handler, temporary directories;
//! - `host`: facts about this host the services need, and installing what they lack;
//! - `postgres`, `nats`: the ephemeral servers;
//! - `server`: a `plexichat serve` process;
//! - `relay`: a TCP relay that can be cut, slowed and reset: a node's fault point.
// A unit-test build sees the dev-dependencies too; the plain library build is checked.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod host;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod relay;
pub mod server;
pub mod teardown;

use std::time::Duration;

pub use host::free_port;
pub use nats::Nats;
pub use postgres::{thaw, Durability, Postgres};
pub use relay::Relay;
pub use server::ServerProcess;

/// How long PostgreSQL and NATS may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
