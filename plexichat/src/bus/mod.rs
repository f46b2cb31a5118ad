//! Cluster events and the bus that carries them. Every node applies every event to its
//! own state (WebSocket subscribers, caches); a single node uses the in-process bus, a
//! cluster the NATS bus.

mod nats;

pub use self::nats::NatsBus;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cache::{Caches, TokenHash};
use crate::hub::Hub;
use crate::model::{ChannelId, Message, UserId};
use crate::protocol::ServerFrame;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    MessagePosted {
        message: Message,
    },
    Typing {
        channel_id: ChannelId,
        user_id: UserId,
        username: String,
    },
    /// A user joined or left: cached memberships and member counts are stale.
    MembershipChanged {
        channel_id: ChannelId,
        user_id: UserId,
        member: bool,
    },
    /// A token was logged out: it must stop working on every node at once.
    SessionRevoked {
        token_hash: TokenHash,
    },
}

impl ClusterEvent {
    /// The channel whose subscribers care, for buses that route by channel.
    pub fn channel_id(&self) -> Option<ChannelId> {
        match self {
            ClusterEvent::MessagePosted { message } => Some(message.channel_id),
            ClusterEvent::Typing { channel_id, .. } | ClusterEvent::MembershipChanged { channel_id, .. } => {
                Some(*channel_id)
            }
            ClusterEvent::SessionRevoked { .. } => None,
        }
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Hands the event to every node, this one included. Best effort: history in the
    /// database is the truth, and clients page back what they missed.
    async fn publish(&self, event: ClusterEvent) -> anyhow::Result<()>;
}

/// Publishes `event`, logging a failure rather than returning it: the database already
/// holds what matters, and clients page back what they missed.
pub async fn publish_best_effort(bus: &dyn EventBus, event: ClusterEvent) {
    if let Err(err) = bus.publish(event).await {
        tracing::warn!(error = %err, "fan-out failed; clients will page back");
    }
}

/// What one node does with an event, whichever bus brought it.
pub struct LocalEffects {
    pub hub: Arc<Hub>,
    pub caches: Arc<Caches>,
}

impl LocalEffects {
    pub fn apply(&self, event: &ClusterEvent) {
        match event {
            ClusterEvent::MessagePosted { message } => {
                let frame = ServerFrame::Message { message }.encode();
                self.hub.deliver(message.channel_id, &frame, None);
            }
            ClusterEvent::Typing {
                channel_id,
                user_id,
                username,
            } => {
                let frame = ServerFrame::Typing {
                    channel_id: *channel_id,
                    user_id: *user_id,
                    username,
                }
                .encode();
                self.hub.deliver(*channel_id, &frame, Some(*user_id));
            }
            ClusterEvent::MembershipChanged {
                channel_id,
                user_id,
                member,
            } => {
                self.caches.forget_membership(*channel_id, *user_id);
                if !member {
                    self.hub.unsubscribe_user(*channel_id, *user_id);
                }
            }
            ClusterEvent::SessionRevoked { token_hash } => {
                self.caches.forget_session(token_hash);
                self.hub.revoke_session(token_hash);
            }
        }
    }
}

/// The bus of a node that runs alone: publishing is applying.
pub struct InProcessBus {
    effects: Arc<LocalEffects>,
}

impl InProcessBus {
    pub fn new(effects: Arc<LocalEffects>) -> Self {
        Self { effects }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: ClusterEvent) -> anyhow::Result<()> {
        self.effects.apply(&event);
        Ok(())
    }
}
