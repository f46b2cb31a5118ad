//! The API.md contract suite against the embedded SQLite store.

#[path = "api/mod.rs"]
mod api;

const BACKEND: api::helpers::Backend = api::helpers::Backend::Sqlite;

/// Only the embedded store has a disk of its own to fail.
#[path = "api/failing_disk.rs"]
mod failing_disk;
