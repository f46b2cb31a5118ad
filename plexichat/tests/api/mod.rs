//! Black-box tests of API.md: each test spawns the real server on port 0 with a fresh
//! database (of the backend the including test target names) and talks to it over
//! loopback. `api_sqlite.rs` and `api_postgres.rs` each run the whole suite.

pub mod helpers;

mod auth;
mod channels;
mod connections;
mod limits;
mod messages;
mod system;
pub(crate) mod websocket;
