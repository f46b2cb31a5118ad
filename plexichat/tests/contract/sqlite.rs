//! The contract on SQLite, and a failing local disk.

const BACKEND: crate::api_backend::Backend = crate::api_backend::Backend::Sqlite;

#[path = "../api/mod.rs"]
mod api;

/// Only the embedded store has a disk of its own to fail.
#[path = "../api/failing_disk.rs"]
mod failing_disk;
