//! The L1 cache of hot reads (session token → user, channel, membership), with hit and
//! miss counters. Entries expire after the configured TTL; writes invalidate what they
//! change, on every node, through the event bus.

use std::future::Future;
use std::hash::Hash;

use moka::sync::Cache;

use crate::config::CacheSettings;
use crate::metrics::{CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL};
use crate::model::{Channel, ChannelId, Session, UserId};
use crate::store::StoreResult;

pub type TokenHash = [u8; 32];

pub struct Caches {
    sessions: Cache<TokenHash, Session>,
    channels: Cache<ChannelId, Channel>,
    memberships: Cache<(ChannelId, UserId), bool>,
}

impl Caches {
    pub fn new(settings: &CacheSettings) -> Self {
        fn build<K, V>(settings: &CacheSettings) -> Cache<K, V>
        where
            K: Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build()
        }
        Self {
            sessions: build(settings),
            channels: build(settings),
            memberships: build(settings),
        }
    }

    pub async fn session<F>(&self, token: TokenHash, load: F) -> StoreResult<Option<Session>>
    where
        F: Future<Output = StoreResult<Option<Session>>>,
    {
        cached(&self.sessions, "session", token, load).await
    }

    pub async fn channel<F>(&self, id: ChannelId, load: F) -> StoreResult<Option<Channel>>
    where
        F: Future<Output = StoreResult<Option<Channel>>>,
    {
        cached(&self.channels, "channel", id, load).await
    }

    pub async fn membership<F>(&self, channel: ChannelId, user: UserId, load: F) -> StoreResult<bool>
    where
        F: Future<Output = StoreResult<bool>>,
    {
        let found = cached(&self.memberships, "membership", (channel, user), async {
            load.await.map(Some)
        })
        .await?;
        Ok(found.unwrap_or(false))
    }

    pub fn forget_session(&self, token: &TokenHash) {
        self.sessions.invalidate(token);
    }

    pub fn forget_channel(&self, id: ChannelId) {
        self.channels.invalidate(&id);
    }

    pub fn forget_membership(&self, channel: ChannelId, user: UserId) {
        self.memberships.invalidate(&(channel, user));
        self.channels.invalidate(&channel);
    }
}

/// Looks `key` up, loading and remembering it on a miss. Absent rows are not
/// remembered: a user who registers or a channel that is created must be seen at once.
async fn cached<K, V, F>(cache: &Cache<K, V>, name: &'static str, key: K, load: F) -> StoreResult<Option<V>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Future<Output = StoreResult<Option<V>>>,
{
    if let Some(value) = cache.get(&key) {
        metrics::counter!(CACHE_HITS_TOTAL, "cache" => name).increment(1);
        return Ok(Some(value));
    }
    metrics::counter!(CACHE_MISSES_TOTAL, "cache" => name).increment(1);
    let value = load.await?;
    if let Some(value) = &value {
        cache.insert(key, value.clone());
    }
    Ok(value)
}
