//! The contract on PostgreSQL, clusters, and a commit refused at COMMIT.

const BACKEND: crate::api_backend::Backend = crate::api_backend::Backend::Postgres;

#[path = "../api/mod.rs"]
mod api;

/// Clusters share a PostgreSQL database; a SQLite file belongs to one process.
#[path = "../api/cluster.rs"]
mod cluster;

/// A commit refused after the statement returned its row: PostgreSQL lets a test make
/// that happen (a deferred constraint trigger), SQLite does not.
#[path = "../api/commit_failure.rs"]
mod commit_failure;
