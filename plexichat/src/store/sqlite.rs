//! The embedded default: one SQLite file, WAL journal, a small connection pool.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::EmbeddedMigrations;
use crate::config::DatabaseSettings;

pub(super) const MIGRATIONS: EmbeddedMigrations =
    EmbeddedMigrations(&[(1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql"))]);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let options = SqliteConnectOptions::from_str(&settings.url)
            .with_context(|| format!("database URL `{}`", settings.url))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A 201 is never lost: each commit reaches the disk before it is acknowledged.
            // NORMAL syncs the WAL only at checkpoints, which survives a process crash but
            // not a power cut: on a VM whose power was cut (`qemu-cluster 1 --scenario
            // power-cut`) it lost 399 of 1,702 acknowledged posts, and handed their ids out
            // again after the reboot.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true)
            // WAL's index normally lives in `<db>-shm`, mapped into memory by every
            // connection: when that file cannot be grown or written (a full disk, an
            // immutable file), touching the mapping kills the process with SIGBUS. In
            // exclusive locking mode, set before WAL is first used, SQLite keeps the index
            // on the heap and never maps that file. The price: the file belongs to one
            // connection of one process (others are refused as "database is locked").
            .locking_mode(SqliteLockingMode::Exclusive);
        // One connection, held for the server's life (see the locking mode above); SQLite
        // takes one writer at a time anyway. `:memory:` needs one too: every connection
        // to it would be a database of its own.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", settings.url))?;
        sqlx::migrate::Migrator::new(MIGRATIONS)
            .await?
            .run(&pool)
            .await
            .with_context(|| format!("migrating {}", settings.url))?;
        Ok(Self { pool })
    }
}

// julianday('now') has millisecond resolution (unixepoch() only whole seconds before 3.42).
super::sql::sql_store!(
    SqliteStore,
    sqlx::sqlite::SqliteRow,
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
);
