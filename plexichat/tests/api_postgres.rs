//! The API.md contract suite against PostgreSQL: each test gets its own server,
//! started from Debian's binaries in a temporary directory.

#[path = "api/mod.rs"]
mod api;

const BACKEND: api::helpers::Backend = api::helpers::Backend::Postgres;
