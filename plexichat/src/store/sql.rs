//! The queries of both SQL stores, written once. SQLite and PostgreSQL accept the same
//! text here (`$N` parameters, `lower()` for case-insensitive names, `ON CONFLICT`,
//! BIGINT times); `sql_store!` implements [`Store`](super::Store) for each pool type, so
//! each backend keeps only its connection set-up and migrations.

pub(super) const CHANNEL_COLUMNS: &str = "c.id, c.name, c.created_by, c.created_at,
    (SELECT COUNT(*) FROM memberships m WHERE m.channel_id = c.id) AS member_count";

pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.channel_id, m.author_id, u.username, m.body, m.created_at, m.node_id";

/// `sql_store!(StoreType, RowType, NOW)`: `StoreType` has a `pool` field of the matching
/// pool; `NOW` is the dialect's expression for the database's clock in Unix milliseconds,
/// the one clock all nodes share for membership leases.
macro_rules! sql_store {
    ($store:ident, $row:ty, $now_millis:literal) => {
        use async_trait::async_trait;
        use sqlx::Row;

        use super::sql::{CHANNEL_COLUMNS, MESSAGE_COLUMNS};
        use super::{Credentials, QueryTimer, Store, StoreError, StoreResult};
        use crate::model::{
            Channel, ChannelId, Message, MessageId, NewMessage, NodeHeartbeat, NodeRecord, Session, Timestamp, User,
            UserId,
        };

/// The one row of an `INSERT … RETURNING`, read with `fetch_all`: `fetch_one` hands back
/// the first row before the statement has finished, and so before its commit. A commit
/// that fails after that (a full disk, an I/O error, a deferred constraint) went unseen,
/// and a write that was rolled back was acknowledged with 201.
fn inserted<T>(rows: Vec<T>) -> Result<T, sqlx::Error> {
    rows.into_iter().next().ok_or(sqlx::Error::RowNotFound)
}

fn user_from(row: &$row) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

fn channel_from(row: &$row) -> Result<Channel, sqlx::Error> {
    Ok(Channel {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
        member_count: row.try_get("member_count")?,
    })
}

fn message_from(row: &$row) -> Result<Message, sqlx::Error> {
    Ok(Message {
        id: row.try_get("id")?,
        channel_id: row.try_get("channel_id")?,
        author_id: row.try_get("author_id")?,
        author: row.try_get("username")?,
        body: row.try_get("body")?,
        created_at: Timestamp(row.try_get("created_at")?),
        node_id: row.try_get("node_id")?,
    })
}

fn node_from(row: &$row) -> Result<NodeRecord, sqlx::Error> {
    Ok(NodeRecord {
        heartbeat: NodeHeartbeat {
            node_id: row.try_get("node_id")?,
            generation: row.try_get("generation")?,
            addr: row.try_get("addr")?,
            version: row.try_get("version")?,
        },
        last_seen: Timestamp(row.try_get("last_seen")?),
        up: row.try_get("up")?,
    })
}

impl $store {
    /// Runs `work` in a transaction of its own, committed when `work` succeeds. A connection
    /// whose transaction failed is closed rather than pooled again: when COMMIT fails (a
    /// full disk, an I/O error), SQLite can leave the transaction open, and the rollback
    /// sqlx then sends can fail too; back in the pool, that connection would nest every
    /// later transaction inside the dead one as a savepoint, whose commit only reaches
    /// memory: a 201 for a message that is never stored.
    async fn in_transaction<T>(
        &self,
        work: impl for<'c> AsyncFnOnce(&mut sqlx::Transaction<'c, <$row as sqlx::Row>::Database>) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut *connection).await?;
            let value = work(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        if result.is_err() {
            connection.close_on_drop();
        }
        result
    }
}

#[async_trait]
impl Store for $store {
    async fn ping(&self) -> StoreResult<()> {
        let _timer = QueryTimer::start("ping");
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, username: &str, password_hash: &str, now: Timestamp) -> StoreResult<User> {
        let _timer = QueryTimer::start("create_user");
        let rows = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3)
             RETURNING id, username, created_at",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(user_from(&inserted(rows)?)?)
    }

    async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>> {
        let _timer = QueryTimer::start("credentials");
        let row = sqlx::query("SELECT id, username, created_at, password_hash FROM users WHERE lower(username) = lower($1)")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        let credentials = |row: $row| -> Result<Credentials, sqlx::Error> {
            Ok(Credentials {
                user: user_from(&row)?,
                password_hash: row.try_get("password_hash")?,
            })
        };
        Ok(row.map(credentials).transpose()?)
    }

    async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        let _timer = QueryTimer::start("create_session");
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id)
            .bind(now.0)
            .bind(expires_at.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session(&self, token_hash: &[u8], now: Timestamp) -> StoreResult<Option<Session>> {
        let _timer = QueryTimer::start("session");
        let row = sqlx::query(
            "SELECT u.id, u.username, u.created_at, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        let session = |row: $row| -> Result<Session, sqlx::Error> {
            Ok(Session {
                user: user_from(&row)?,
                expires_at: Timestamp(row.try_get("expires_at")?),
            })
        };
        Ok(row.map(session).transpose()?)
    }

    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()> {
        let _timer = QueryTimer::start("delete_session");
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        let _timer = QueryTimer::start("delete_expired_sessions");
        let result = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now.0)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn create_channel(&self, name: &str, created_by: UserId, now: Timestamp) -> StoreResult<Channel> {
        let _timer = QueryTimer::start("create_channel");
        let id = self
            .in_transaction(async |tx| {
                let id: ChannelId = sqlx::query_scalar(
                    "INSERT INTO channels (name, created_by, created_at) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(name)
                .bind(created_by)
                .bind(now.0)
                .fetch_all(&mut **tx)
                .await
                .and_then(inserted)?;
                sqlx::query("INSERT INTO memberships (channel_id, user_id, joined_at) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(created_by)
                    .bind(now.0)
                    .execute(&mut **tx)
                    .await?;
                Ok(id)
            })
            .await?;
        Ok(Channel {
            id,
            name: name.to_string(),
            created_by,
            created_at: now,
            member_count: 1,
        })
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        let _timer = QueryTimer::start("channels");
        let rows = sqlx::query(&format!("SELECT {CHANNEL_COLUMNS} FROM channels c ORDER BY c.id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(channel_from).collect::<Result<_, _>>()?)
    }

    async fn channel(&self, id: ChannelId) -> StoreResult<Option<Channel>> {
        let _timer = QueryTimer::start("channel");
        let row = sqlx::query(&format!("SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(channel_from).transpose()?)
    }

    async fn join_channel(&self, channel_id: ChannelId, user_id: UserId, now: Timestamp) -> StoreResult<()> {
        let _timer = QueryTimer::start("join_channel");
        // Joining twice is a no-op; a missing channel still fails its foreign key.
        sqlx::query(
            "INSERT INTO memberships (channel_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
            .bind(channel_id)
            .bind(user_id)
            .bind(now.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn leave_channel(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<()> {
        let _timer = QueryTimer::start("leave_channel");
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM channels WHERE id = $1")
            .bind(channel_id)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM memberships WHERE channel_id = $1 AND user_id = $2")
            .bind(channel_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn is_member(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<bool> {
        let _timer = QueryTimer::start("is_member");
        let found: Option<i64> = sqlx::query_scalar("SELECT channel_id FROM memberships WHERE channel_id = $1 AND user_id = $2")
            .bind(channel_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>> {
        let _timer = QueryTimer::start("insert_messages");
        // One transaction for the whole group: one commit however many messages, and
        // none of them stored if any insert or the commit fails.
        let committed = self
            .in_transaction(async |tx| {
                let mut committed = Vec::with_capacity(messages.len());
                for message in messages {
                    let id: MessageId = sqlx::query_scalar(
                        "INSERT INTO messages (channel_id, author_id, body, created_at, node_id) VALUES ($1, $2, $3, $4, $5)
                         RETURNING id",
                    )
                    .bind(message.channel_id)
                    .bind(message.author_id)
                    .bind(&message.body)
                    .bind(message.created_at.0)
                    .bind(&message.node_id)
                    .fetch_all(&mut **tx)
                    .await
                    .and_then(inserted)?;
                    committed.push(Message {
                        id,
                        channel_id: message.channel_id,
                        author_id: message.author_id,
                        author: message.author.clone(),
                        body: message.body.clone(),
                        created_at: message.created_at,
                        node_id: message.node_id.clone(),
                    });
                }
                Ok(committed)
            })
            .await?;
        Ok(committed)
    }

    async fn messages(
        &self,
        channel_id: ChannelId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let _timer = QueryTimer::start("messages");
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
             WHERE m.channel_id = $1 AND m.id < $2 ORDER BY m.id DESC LIMIT $3"
        ))
        .bind(channel_id)
        .bind(before.unwrap_or(MessageId::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_from).collect::<Result<_, _>>()?)
    }

    async fn heartbeat(&self, node: &NodeHeartbeat) -> StoreResult<()> {
        let _timer = QueryTimer::start("heartbeat");
        sqlx::query(concat!(
            "INSERT INTO nodes (node_id, generation, addr, version, last_seen) VALUES ($1, $2, $3, $4, ",
            $now_millis,
            ")
             ON CONFLICT (node_id) DO UPDATE SET generation = excluded.generation, addr = excluded.addr,
                 version = excluded.version, last_seen = excluded.last_seen"
        ))
        .bind(&node.node_id)
        .bind(node.generation)
        .bind(&node.addr)
        .bind(&node.version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn nodes(&self, lease: std::time::Duration) -> StoreResult<Vec<NodeRecord>> {
        let _timer = QueryTimer::start("nodes");
        let lease_millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(concat!(
            "SELECT node_id, generation, addr, version, last_seen, last_seen + $1 >= ",
            $now_millis,
            " AS up FROM nodes ORDER BY node_id"
        ))
        .bind(lease_millis)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(node_from).collect::<Result<_, _>>()?)
    }
}
    };
}

pub(super) use sql_store;
