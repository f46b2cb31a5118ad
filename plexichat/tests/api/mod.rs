//! Black-box tests of API.md: each test spawns the real server on port 0 with a fresh
//! database (of the backend the including module names) and talks to it over loopback.
//! `contract.rs` includes this suite twice, once per store.

/// The store this copy of the suite runs against.
use super::BACKEND;

pub(super) mod helpers;

mod auth;
mod channels;
mod connections;
mod limits;
mod messages;
mod system;
pub(crate) mod websocket;
