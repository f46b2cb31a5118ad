//! The embedded default: one SQLite file, WAL journal, a small connection pool.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::EmbeddedMigrations;
use crate::config::DatabaseSettings;

const MIGRATIONS: EmbeddedMigrations =
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
            // With WAL, NORMAL loses no committed transaction on a process crash.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        // Every connection to `:memory:` would be a database of its own.
        let max_connections = if settings.url.contains(":memory:") {
            1
        } else {
            settings.max_connections
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .min_connections(settings.min_connections.min(max_connections))
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
