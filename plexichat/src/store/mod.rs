//! Persistence behind one interface, so handlers never know which database they use.

mod health;
mod postgres;
mod sql;
mod sqlite;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

pub use self::health::{WriteFailure, WriteWatch};
pub(crate) use self::postgres::redact as redact_url;
pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;
use crate::config::DatabaseSettings;
use crate::model::{
    Channel, ChannelId, Message, MessageId, NewMessage, NodeHeartbeat, NodeRecord, Session, Timestamp, User, UserId,
};

// Clone, so that every post of a group committed together hears why the group failed:
// sqlx's errors are shared rather than copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; the request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A unique name is taken.
    #[error("already exists")]
    Conflict,
    /// A referenced row does not exist.
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Other(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(Arc::new(err)),
            sqlx::Error::Database(db) if refuses_service(db.as_ref()) => StoreError::Unavailable(Arc::new(err)),
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Other(Arc::new(err)),
        }
    }
}

/// Whether the database refused because of its own state (a full disk, an I/O error, a
/// read-only or locked file, a lost connection) rather than because of what was asked:
/// worth retrying later, and a reason to report the node not ready.
fn refuses_service(err: &dyn sqlx::error::DatabaseError) -> bool {
    if err.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLite reports extended codes (SQLITE_IOERR_WRITE is 778); the low byte is the
        // primary one.
        let primary = err
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff);
        return matches!(
            primary,
            Some(
                sqlite_codes::BUSY
                    | sqlite_codes::LOCKED
                    | sqlite_codes::NOMEM
                    | sqlite_codes::READONLY
                    | sqlite_codes::IOERR
                    | sqlite_codes::FULL
                    | sqlite_codes::CANTOPEN
                    | sqlite_codes::PROTOCOL
            )
        );
    }
    // PostgreSQL's SQLSTATE classes: connection exceptions (08), insufficient resources
    // such as a full disk (53), system and I/O errors (58), shutdowns (57P0x), and a
    // read-only transaction (25006) on a standby.
    err.code().is_some_and(|code| {
        ["08", "53", "58", "57P0", "25006"]
            .iter()
            .any(|class| code.starts_with(class))
    })
}

/// SQLite's primary result codes that mean "not now" rather than "not this".
mod sqlite_codes {
    pub(super) const BUSY: i32 = 5;
    pub(super) const LOCKED: i32 = 6;
    pub(super) const NOMEM: i32 = 7;
    pub(super) const READONLY: i32 = 8;
    pub(super) const IOERR: i32 = 10;
    pub(super) const FULL: i32 = 13;
    pub(super) const CANTOPEN: i32 = 14;
    pub(super) const PROTOCOL: i32 = 15;
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user's login record: who they are and their password hash.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// The write the database refused last, while writes keep failing; `None` when the
    /// last write went through (or nothing watches writes).
    fn write_failure(&self) -> Option<WriteFailure> {
        None
    }

    /// Fails with `Conflict` when the name is taken (case-insensitively).
    async fn create_user(&self, username: &str, password_hash: &str, now: Timestamp) -> StoreResult<User>;
    async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>>;

    async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()>;
    /// The session's user, if the token exists and has not expired at `now`.
    async fn session(&self, token_hash: &[u8], now: Timestamp) -> StoreResult<Option<Session>>;
    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()>;
    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64>;

    /// Creates the channel with its creator as the first member.
    async fn create_channel(&self, name: &str, created_by: UserId, now: Timestamp) -> StoreResult<Channel>;
    async fn channels(&self) -> StoreResult<Vec<Channel>>;
    async fn channel(&self, id: ChannelId) -> StoreResult<Option<Channel>>;
    /// Idempotent; `NotFound` when the channel does not exist.
    async fn join_channel(&self, channel_id: ChannelId, user_id: UserId, now: Timestamp) -> StoreResult<()>;
    async fn leave_channel(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<()>;
    async fn is_member(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<bool>;

    /// Commits `messages` in one transaction, all or none, and returns them with their
    /// ids in the same order; returns once they are committed.
    async fn insert_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>>;
    /// Newest first, ids below `before` when given.
    async fn messages(&self, channel_id: ChannelId, before: Option<MessageId>, limit: u32)
        -> StoreResult<Vec<Message>>;

    /// Inserts or refreshes this node's membership row, stamped with the database's clock.
    async fn heartbeat(&self, node: &NodeHeartbeat) -> StoreResult<()>;
    /// Every node that has joined, up if its last heartbeat is within `lease` by the
    /// database's clock.
    async fn nodes(&self, lease: Duration) -> StoreResult<Vec<NodeRecord>>;
}

/// Opens the store a database URL names, migrated to the current schema, its writes
/// watched for readiness.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Arc<dyn Store>> {
    let url = settings.url.as_str();
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(settings).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PostgresStore::connect(settings).await?)
    } else {
        anyhow::bail!("database URL `{url}`: use sqlite://PATH or postgres://USER@HOST/DB")
    };
    Ok(Arc::new(WriteWatch::new(store)))
}

/// Migrations compiled into the binary, so a deployed server needs no files beside it.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Records how long a query took, labelled by what it did.
pub(crate) struct QueryTimer {
    operation: &'static str,
    started: Instant,
}

impl QueryTimer {
    pub(crate) fn start(operation: &'static str) -> Self {
        Self {
            operation,
            started: Instant::now(),
        }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics::histogram!(crate::metrics::DB_QUERY_SECONDS, "operation" => self.operation)
            .record(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::EmbeddedMigrations;

    /// `NNNN_description.sql` → (version, description, contents), sorted by version.
    fn files(dir: &str) -> Vec<(i64, String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
        let mut found: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
            .map(|entry| {
                let path = entry.expect("a directory entry").path();
                let name = path.file_stem().and_then(|n| n.to_str()).expect("a UTF-8 file name");
                let (version, description) = name
                    .split_once('_')
                    .unwrap_or_else(|| panic!("{} is not NNNN_description.sql", path.display()));
                let version = version.parse().expect("a numeric version");
                let text = std::fs::read_to_string(&path).expect("reading a migration");
                (version, description.to_string(), text)
            })
            .collect();
        found.sort();
        found
    }

    fn embedded(migrations: &EmbeddedMigrations) -> Vec<(i64, String, String)> {
        migrations
            .0
            .iter()
            .map(|(version, description, sql)| (*version, description.to_string(), sql.to_string()))
            .collect()
    }

    /// A migration file that the binary does not embed would never run: every file in
    /// migrations/<backend>/ must be in the store's list, in order, and nothing else.
    #[test]
    fn the_embedded_migrations_are_exactly_the_files() {
        assert_eq!(embedded(&super::sqlite::MIGRATIONS), files("sqlite"));
        assert_eq!(embedded(&super::postgres::MIGRATIONS), files("postgres"));
    }
}
