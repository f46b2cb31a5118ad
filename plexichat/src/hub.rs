//! This node's WebSocket connections: by channel, the last hop of fan-out (a frame is
//! encoded once and the same bytes are queued for every subscriber); and by session
//! token, so that a logout on any node ends the sockets opened with that token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::cache::TokenHash;
use crate::metrics::{FANOUT_DELIVERIES_TOTAL, FANOUT_DROPPED_TOTAL};
use crate::model::{ChannelId, UserId};

pub type ConnectionId = u64;

/// A frame as it waits in a connection's queue: one allocation shared by every
/// subscriber. A pointer rather than the bytes' own handle (four words), because each
/// queue allocates its first block of 32 slots up front: an idle connection pays for
/// the slot size 32 times.
pub type QueuedFrame = Arc<Utf8Bytes>;

/// One WebSocket connection as the hub sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub user_id: UserId,
    pub outbox: mpsc::Sender<QueuedFrame>,
    /// Cancelled when the connection's queue overflows: a client that cannot keep up is
    /// disconnected (and pages back what it missed) rather than silently losing frames.
    pub too_slow: CancellationToken,
}

#[derive(Default)]
pub struct Hub {
    channels: RwLock<HashMap<ChannelId, HashMap<ConnectionId, Subscriber>>>,
    /// Each open connection's revocation signal, by the token it was opened with.
    sessions: Mutex<HashMap<TokenHash, HashMap<ConnectionId, CancellationToken>>>,
    next_connection: AtomicU64,
}

/// A connection's claim on its session token: `revoked` is cancelled when the token is
/// logged out. Dropping it (when the connection ends, or its upgrade fails) forgets it.
pub struct SessionWatch {
    hub: Arc<Hub>,
    token: TokenHash,
    connection: ConnectionId,
    revoked: CancellationToken,
}

impl SessionWatch {
    pub fn connection_id(&self) -> ConnectionId {
        self.connection
    }

    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        let mut sessions = self.hub.lock_sessions();
        if let Some(connections) = sessions.get_mut(&self.token) {
            connections.remove(&self.connection);
            if connections.is_empty() {
                sessions.remove(&self.token);
            }
        }
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Allocates a connection id and watches `token` for it. Call it before checking the
    /// token: a logout between the check and the watch would otherwise go unseen.
    pub fn watch_session(self: &Arc<Self>, token: TokenHash) -> SessionWatch {
        let connection = self.next_connection_id();
        let revoked = CancellationToken::new();
        self.lock_sessions()
            .entry(token)
            .or_default()
            .insert(connection, revoked.clone());
        SessionWatch {
            hub: self.clone(),
            token,
            connection,
            revoked,
        }
    }

    /// Signals every connection opened with `token` to close. Returns how many there were.
    pub fn revoke_session(&self, token: &TokenHash) -> usize {
        let connections = self.lock_sessions().remove(token).unwrap_or_default();
        for revoked in connections.values() {
            revoked.cancel();
        }
        connections.len()
    }

    pub fn subscribe(&self, channel: ChannelId, connection: ConnectionId, subscriber: Subscriber) {
        self.write().entry(channel).or_default().insert(connection, subscriber);
    }

    pub fn unsubscribe(&self, channel: ChannelId, connection: ConnectionId) {
        let mut channels = self.write();
        if let Some(subscribers) = channels.get_mut(&channel) {
            subscribers.remove(&connection);
            if subscribers.is_empty() {
                channels.remove(&channel);
            }
        }
    }

    /// Drops every subscription `user` holds on `channel`, e.g. after leaving it.
    pub fn unsubscribe_user(&self, channel: ChannelId, user: UserId) {
        let mut channels = self.write();
        if let Some(subscribers) = channels.get_mut(&channel) {
            subscribers.retain(|_, subscriber| subscriber.user_id != user);
            if subscribers.is_empty() {
                channels.remove(&channel);
            }
        }
    }

    pub fn is_subscribed(&self, channel: ChannelId, connection: ConnectionId) -> bool {
        self.read()
            .get(&channel)
            .is_some_and(|subscribers| subscribers.contains_key(&connection))
    }

    pub fn subscriber_count(&self, channel: ChannelId) -> usize {
        self.read().get(&channel).map_or(0, HashMap::len)
    }

    /// Queues `frame` for the channel's subscribers, except those of `skip_user`.
    /// Returns how many it was queued for.
    pub fn deliver(&self, channel: ChannelId, frame: &Utf8Bytes, skip_user: Option<UserId>) -> usize {
        let channels = self.read();
        let Some(subscribers) = channels.get(&channel) else {
            return 0;
        };
        let frame = Arc::new(frame.clone());
        let mut delivered = 0;
        for subscriber in subscribers.values() {
            if Some(subscriber.user_id) == skip_user {
                continue;
            }
            match subscriber.outbox.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(_)) => {
                    metrics::counter!(FANOUT_DROPPED_TOTAL).increment(1);
                    subscriber.too_slow.cancel();
                }
                // The connection is closing; it removes itself.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        metrics::counter!(FANOUT_DELIVERIES_TOTAL).increment(delivered as u64);
        delivered
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChannelId, HashMap<ConnectionId, Subscriber>>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // update is one HashMap call), so a poisoned lock is still usable.
        self.channels.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, HashMap<ConnectionId, CancellationToken>>> {
        // As for `channels`: every update is one HashMap call, so poison is harmless.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ChannelId, HashMap<ConnectionId, Subscriber>>> {
        self.channels.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(user_id: UserId, capacity: usize) -> (Subscriber, mpsc::Receiver<QueuedFrame>) {
        let (outbox, inbox) = mpsc::channel(capacity);
        let subscriber = Subscriber {
            user_id,
            outbox,
            too_slow: CancellationToken::new(),
        };
        (subscriber, inbox)
    }

    #[test]
    fn delivers_to_each_subscriber_of_the_channel_once() {
        let hub = Hub::new();
        let (a, mut a_inbox) = subscriber(1, 8);
        let (b, mut b_inbox) = subscriber(2, 8);
        let (other, mut other_inbox) = subscriber(3, 8);
        hub.subscribe(10, 1, a);
        hub.subscribe(10, 2, b);
        hub.subscribe(11, 3, other);
        assert_eq!(hub.deliver(10, &"hello".into(), None), 2);
        assert_eq!(a_inbox.try_recv().unwrap().as_str(), "hello");
        assert_eq!(b_inbox.try_recv().unwrap().as_str(), "hello");
        assert!(a_inbox.try_recv().is_err());
        assert!(other_inbox.try_recv().is_err());
    }

    #[test]
    fn skips_the_sender_and_forgets_unsubscribed() {
        let hub = Hub::new();
        let (a, mut a_inbox) = subscriber(1, 8);
        let (b, mut b_inbox) = subscriber(2, 8);
        hub.subscribe(10, 1, a);
        hub.subscribe(10, 2, b);
        assert_eq!(hub.deliver(10, &"typing".into(), Some(1)), 1);
        assert!(a_inbox.try_recv().is_err());
        assert!(b_inbox.try_recv().is_ok());
        hub.unsubscribe_user(10, 2);
        hub.unsubscribe(10, 1);
        assert_eq!(hub.subscriber_count(10), 0);
        assert_eq!(hub.deliver(10, &"x".into(), None), 0);
    }

    #[test]
    fn revoking_a_session_signals_its_connections_only() {
        let hub = Arc::new(Hub::new());
        let laptop = hub.watch_session([1; 32]);
        let phone = hub.watch_session([1; 32]);
        let other = hub.watch_session([2; 32]);
        assert_ne!(laptop.connection_id(), phone.connection_id());
        assert_eq!(hub.revoke_session(&[1; 32]), 2);
        assert!(laptop.revoked().is_cancelled() && phone.revoked().is_cancelled());
        assert!(!other.revoked().is_cancelled());
        assert_eq!(hub.revoke_session(&[1; 32]), 0, "a revoked session is forgotten");
    }

    #[test]
    fn a_dropped_watch_is_forgotten() {
        let hub = Arc::new(Hub::new());
        let gone = hub.watch_session([1; 32]);
        let kept = hub.watch_session([1; 32]);
        drop(gone);
        assert_eq!(hub.revoke_session(&[1; 32]), 1);
        assert!(kept.revoked().is_cancelled());
        drop(kept);
        assert!(hub.lock_sessions().is_empty());
    }

    #[test]
    fn a_full_queue_marks_the_subscriber_too_slow() {
        let hub = Hub::new();
        let (slow, _inbox) = subscriber(1, 1);
        let too_slow = slow.too_slow.clone();
        hub.subscribe(10, 1, slow);
        assert_eq!(hub.deliver(10, &"1".into(), None), 1);
        assert!(!too_slow.is_cancelled());
        assert_eq!(hub.deliver(10, &"2".into(), None), 0);
        assert!(too_slow.is_cancelled());
    }
}
