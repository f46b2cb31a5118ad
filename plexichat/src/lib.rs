//! PlexiChat: an async chat server (REST + WebSocket) on SQLite by default.
//!
//! The contract it keeps is API.md; [`Server`] runs it, [`config::Settings`] configures it.
// A unit-test build sees the dev-dependencies too; the plain library build is checked.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod allocator;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cache;
pub mod config;
mod connections;
pub mod error;
pub mod group_commit;
#[cfg(target_os = "linux")]
pub mod guest;
pub mod healthcheck;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod ratelimit;
mod server;
pub mod startup;
pub mod store;
pub mod ws;

pub use server::Server;

/// The build's version, as `/health` and the member list report it: the package version,
/// plus `+<git revision>` (`-dirty` for an uncommitted tree) when `cargo xtask` built it
/// and said which revision (`PLEXICHAT_BUILD_REVISION`), so that every node of a cluster
/// in the middle of an upgrade says which build it runs.
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| match option_env!("PLEXICHAT_BUILD_REVISION") {
            Some(revision) => format!("{}+{revision}", env!("CARGO_PKG_VERSION")),
            None => env!("CARGO_PKG_VERSION").to_string(),
        });
    &VERSION
}

// The binary's command line (src/main.rs): a dependency of the package, not of this library.
use clap as _;
