//! The production store: a PostgreSQL database shared by every node of a cluster.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::EmbeddedMigrations;
use crate::config::DatabaseSettings;

pub(super) const MIGRATIONS: EmbeddedMigrations =
    EmbeddedMigrations(&[(1, "initial", include_str!("../../migrations/postgres/0001_initial.sql"))]);

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects lazily: a node starts (and answers 503) while the database is down, and
    /// recovers on its own when it comes back. Migrations run on the first connection.
    pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let options = PgConnectOptions::from_str(&settings.url)
            .with_context(|| format!("database URL `{}`", redact(&settings.url)))?
            .application_name("plexichat");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(settings.min_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to {}", redact(&settings.url)))?;
        // Several nodes may start at once: sqlx takes an advisory lock around migrating.
        sqlx::migrate::Migrator::new(MIGRATIONS)
            .await?
            .run(&pool)
            .await
            .with_context(|| format!("migrating {}", redact(&settings.url)))?;
        Ok(Self { pool })
    }
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

// clock_timestamp(), not now(): now() is frozen at the start of the transaction.
super::sql::sql_store!(
    PostgresStore,
    sqlx::postgres::PgRow,
    "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
);

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
    }
}
