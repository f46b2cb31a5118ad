//! Fan-out across nodes through NATS. Each event goes to a subject of its own channel
//! (`plexichat.v1.channel.<id>`; session revocations to `plexichat.v1.sessions`), so
//! subscribers and monitoring can pick channels; every node subscribes to all of them
//! and applies what arrives, its own events included: a node never applies an event on
//! publishing, so each is applied exactly once. The client reconnects by itself after
//! NATS restarts and renews its subscription.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClusterEvent, EventBus, LocalEffects};

const SUBJECTS: &str = "plexichat.v1.>";
/// How often the client asks NATS for a PONG; after two unanswered it connects again. A
/// connection that died without a word — a partition, a VM put back to a snapshot, whose
/// TCP state went back in time — is found within three intervals, not at the default
/// minute's pace, and the node's fan-out resumes.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects (retrying in the background if NATS is not up yet) and starts applying
    /// events until `shutdown`.
    pub async fn start(
        url: &str,
        node_id: &str,
        effects: Arc<LocalEffects>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let client = async_nats::ConnectOptions::new()
            .name(format!("plexichat {node_id}"))
            .retry_on_initial_connect()
            .ping_interval(PING_INTERVAL)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS"),
                }
            })
            .connect(url)
            .await
            .with_context(|| format!("NATS URL `{url}`"))?;
        let mut subscriber = client.subscribe(SUBJECTS).await.context("subscribing to NATS")?;
        tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                match serde_json::from_slice::<ClusterEvent>(&message.payload) {
                    Ok(event) => effects.apply(&event),
                    Err(err) => tracing::warn!(subject = %message.subject, error = %err, "ignoring a malformed event"),
                }
            }
        });
        Ok(Self { client })
    }
}

/// The subject an event travels on.
pub(super) fn subject(event: &ClusterEvent) -> String {
    match event.channel_id() {
        Some(channel) => format!("plexichat.v1.channel.{channel}"),
        None => "plexichat.v1.sessions".into(),
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: ClusterEvent) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(&event)?;
        self.client.publish(subject(&event), payload.into()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_events_have_a_subject_per_channel() {
        let typing = ClusterEvent::Typing {
            channel_id: 42,
            user_id: 1,
            username: "ann".into(),
        };
        assert_eq!(subject(&typing), "plexichat.v1.channel.42");
        let revoked = ClusterEvent::SessionRevoked { token_hash: [0; 32] };
        assert_eq!(subject(&revoked), "plexichat.v1.sessions");
    }
}
