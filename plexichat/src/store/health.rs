//! Whether the database takes writes. A database can answer `SELECT 1` while it refuses
//! every write (a full disk, an unwritable journal, a read-only file), so readiness must
//! also know how the last write went: [`WriteWatch`] wraps a store and remembers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::{Credentials, Store, StoreError, StoreResult};
use crate::model::{
    Channel, ChannelId, Message, MessageId, NewMessage, NodeHeartbeat, NodeRecord, Session, Timestamp, User, UserId,
};

/// The write the database refused last, while it keeps refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// What was being written, e.g. `insert_messages`.
    pub operation: &'static str,
    /// The database's own words.
    pub cause: String,
    pub since: Timestamp,
}

/// A store whose writes are watched: a write refused for the database's own state marks
/// writes as failing until one succeeds again (the membership heartbeat writes every
/// second, so recovery is seen without client traffic).
pub struct WriteWatch {
    inner: Arc<dyn Store>,
    failure: Mutex<Option<WriteFailure>>,
}

impl WriteWatch {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            failure: Mutex::new(None),
        }
    }

    fn observe<T>(&self, operation: &'static str, result: StoreResult<T>) -> StoreResult<T> {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(_) => {
                if let Some(ended) = failure.take() {
                    tracing::info!(
                        failing_since = %ended.since.to_rfc3339(),
                        "the database takes writes again"
                    );
                }
            }
            Err(StoreError::Unavailable(cause)) => {
                if failure.is_none() {
                    tracing::error!(operation, error = %cause, "the database refuses writes; /ready reports 503 until one succeeds");
                    *failure = Some(WriteFailure {
                        operation,
                        cause: cause.to_string(),
                        since: Timestamp::now(),
                    });
                }
            }
            // A taken name or a missing channel says nothing about the database's health.
            Err(_) => {}
        }
        result
    }
}

#[async_trait]
impl Store for WriteWatch {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn write_failure(&self) -> Option<WriteFailure> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn create_user(&self, username: &str, password_hash: &str, now: Timestamp) -> StoreResult<User> {
        let result = self.inner.create_user(username, password_hash, now).await;
        self.observe("create_user", result)
    }

    async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>> {
        self.inner.credentials(username).await
    }

    async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        let result = self.inner.create_session(token_hash, user_id, now, expires_at).await;
        self.observe("create_session", result)
    }

    async fn session(&self, token_hash: &[u8], now: Timestamp) -> StoreResult<Option<Session>> {
        self.inner.session(token_hash, now).await
    }

    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()> {
        let result = self.inner.delete_session(token_hash).await;
        self.observe("delete_session", result)
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        let result = self.inner.delete_expired_sessions(now).await;
        self.observe("delete_expired_sessions", result)
    }

    async fn create_channel(&self, name: &str, created_by: UserId, now: Timestamp) -> StoreResult<Channel> {
        let result = self.inner.create_channel(name, created_by, now).await;
        self.observe("create_channel", result)
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        self.inner.channels().await
    }

    async fn channel(&self, id: ChannelId) -> StoreResult<Option<Channel>> {
        self.inner.channel(id).await
    }

    async fn join_channel(&self, channel_id: ChannelId, user_id: UserId, now: Timestamp) -> StoreResult<()> {
        let result = self.inner.join_channel(channel_id, user_id, now).await;
        self.observe("join_channel", result)
    }

    async fn leave_channel(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<()> {
        let result = self.inner.leave_channel(channel_id, user_id).await;
        self.observe("leave_channel", result)
    }

    async fn is_member(&self, channel_id: ChannelId, user_id: UserId) -> StoreResult<bool> {
        self.inner.is_member(channel_id, user_id).await
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>> {
        let result = self.inner.insert_messages(messages).await;
        self.observe("insert_messages", result)
    }

    async fn messages(
        &self,
        channel_id: ChannelId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        self.inner.messages(channel_id, before, limit).await
    }

    async fn heartbeat(&self, node: &NodeHeartbeat) -> StoreResult<()> {
        let result = self.inner.heartbeat(node).await;
        self.observe("heartbeat", result)
    }

    async fn nodes(&self, lease: Duration) -> StoreResult<Vec<NodeRecord>> {
        self.inner.nodes(lease).await
    }
}
