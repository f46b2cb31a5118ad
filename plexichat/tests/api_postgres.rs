//! The API.md contract suite against PostgreSQL: each test gets its own server,
//! started from Debian's binaries in a temporary directory.

#[path = "api/mod.rs"]
mod api;

const BACKEND: api::helpers::Backend = api::helpers::Backend::Postgres;

/// Clusters share a PostgreSQL database; a SQLite file belongs to one process.
#[path = "api/cluster.rs"]
mod cluster;

/// A commit refused after the statement returned its row: PostgreSQL lets a test make
/// that happen (a deferred constraint trigger), SQLite does not.
#[path = "api/commit_failure.rs"]
mod commit_failure;
