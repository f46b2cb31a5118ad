//! The API.md contract suite, in one test binary: every test of `api/` runs against the
//! embedded SQLite store (`sqlite::…`, each test a fresh database file) and against
//! PostgreSQL (`postgres::…`, each test its own server, started from Debian's binaries in
//! a temporary directory). What only one store can show sits beside its copy of the suite.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]
// On purpose: the suite's files are compiled once per store, each copy reading its own
// `BACKEND`.
#![allow(clippy::duplicate_mod)]

#[path = "contract/sqlite.rs"]
mod sqlite;

#[path = "contract/postgres.rs"]
mod postgres;

/// Which store a copy of the suite runs against.
mod api_backend {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Backend {
        Sqlite,
        Postgres,
    }
}
