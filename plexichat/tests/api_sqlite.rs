//! The API.md contract suite against the embedded SQLite store.

#[path = "api/mod.rs"]
mod api;

const BACKEND: api::helpers::Backend = api::helpers::Backend::Sqlite;
