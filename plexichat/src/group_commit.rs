//! Posting a message: commit, publish, acknowledge, in groups.
//!
//! Posts to a channel are committed and published in one order, so subscribers see a
//! channel's messages in the order of their ids. Doing that one post at a time makes every
//! post pay its own transaction (its own fsync on SQLite, its own commit round trip on
//! PostgreSQL) while the others wait. Here the posts that arrive while a group is being
//! committed wait in a queue, and the next group takes them all: one transaction for the
//! group, then each message published in id order and acknowledged only after that commit.
//!
//! Channels share a fixed set of queues (striped by id), each drained by its own task:
//! bounded memory, and unrelated channels rarely wait for each other. The task, not the
//! request, owns a group once it is taken, so a client that hangs up mid-commit cancels
//! nothing for the others in its group.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::bus::{self, ClusterEvent, EventBus};
use crate::metrics::COMMIT_GROUPS_TOTAL;
use crate::model::{ChannelId, Message, NewMessage};
use crate::store::{Store, StoreError, StoreResult};

const STRIPES: usize = 64;
/// The most posts one transaction commits. A bound keeps a group's latency bounded under
/// a flood; 128 inserts are a few milliseconds of SQLite.
const MAX_GROUP: usize = 128;
/// Posts waiting per stripe before new ones wait to enqueue: back-pressure, not loss.
const QUEUE: usize = 4 * MAX_GROUP;

struct Pending {
    message: NewMessage,
    committed: oneshot::Sender<StoreResult<Message>>,
}

pub struct GroupCommit {
    stripes: Vec<mpsc::Sender<Pending>>,
    groups: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts one committing task per stripe on the current runtime; they end when this
    /// is dropped.
    pub fn start(store: Arc<dyn Store>, bus: Arc<dyn EventBus>) -> Self {
        let groups = Arc::new(AtomicU64::new(0));
        let stripes = (0..STRIPES)
            .map(|_| {
                let (queue, waiting) = mpsc::channel(QUEUE);
                tokio::spawn(commit_groups(waiting, store.clone(), bus.clone(), groups.clone()));
                queue
            })
            .collect();
        Self { stripes, groups }
    }

    /// How many transactions have committed posts: posts per group is what grouping saves.
    pub fn groups_committed(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    /// Commits `message`, publishes it, and returns it with its id: committed when this
    /// returns `Ok`, and never reported committed when it returns an error.
    pub async fn post(&self, message: NewMessage) -> StoreResult<Message> {
        let (committed, outcome) = oneshot::channel();
        let stripe = &self.stripes[stripe_of(message.channel_id)];
        stripe
            .send(Pending { message, committed })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stripe_of(channel: ChannelId) -> usize {
    channel.rem_euclid(STRIPES as i64) as usize
}

/// Only while the runtime shuts down: the task went away with posts in its queue, none
/// of them committed.
fn stopped() -> StoreError {
    StoreError::Unavailable(Arc::new(sqlx::Error::PoolClosed))
}

/// Takes every post waiting on one stripe, commits them in one transaction, then
/// publishes and acknowledges each in id order; until the queue closes.
async fn commit_groups(
    mut waiting: mpsc::Receiver<Pending>,
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    groups: Arc<AtomicU64>,
) {
    // Grown to the largest group seen rather than reserved: 64 idle stripes cost nothing.
    let mut group = Vec::new();
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (messages, replies): (Vec<NewMessage>, Vec<_>) = group
            .drain(..)
            .map(|pending: Pending| (pending.message, pending.committed))
            .unzip();
        match store.insert_messages(&messages).await {
            Ok(committed) => {
                groups.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(COMMIT_GROUPS_TOTAL).increment(1);
                for (reply, message) in replies.into_iter().zip(committed) {
                    let event = ClusterEvent::MessagePosted {
                        message: message.clone(),
                    };
                    bus::publish_best_effort(bus.as_ref(), event).await;
                    // The client may have hung up; its message is committed all the same.
                    let _ = reply.send(Ok(message));
                }
            }
            // The transaction was rolled back as a whole: none of the group was stored,
            // and every post in it hears why.
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config::DatabaseSettings;
    use crate::model::{Timestamp, UserId};
    use crate::store::SqliteStore;

    /// A bus that records what it is given, and holds each publish until the test lets it
    /// through: while it holds one, the posts behind it can only queue.
    struct HeldBus {
        published: Mutex<Vec<Message>>,
        let_through: Semaphore,
    }

    #[async_trait]
    impl EventBus for HeldBus {
        async fn publish(&self, event: ClusterEvent) -> anyhow::Result<()> {
            self.let_through.acquire().await?.forget();
            if let ClusterEvent::MessagePosted { message } = event {
                self.published.lock().unwrap().push(message);
            }
            Ok(())
        }
    }

    struct Fixture {
        posts: Arc<GroupCommit>,
        bus: Arc<HeldBus>,
        store: Arc<dyn Store>,
        channel: ChannelId,
        author: UserId,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings = DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("posts.db").display()),
            ..DatabaseSettings::default()
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&settings).await.unwrap());
        let author = store.create_user("poster", "-", Timestamp::now()).await.unwrap();
        let channel = store
            .create_channel("groups", author.id, Timestamp::now())
            .await
            .unwrap();
        let bus = Arc::new(HeldBus {
            published: Mutex::new(Vec::new()),
            let_through: Semaphore::new(0),
        });
        Fixture {
            posts: Arc::new(GroupCommit::start(store.clone(), bus.clone())),
            bus,
            store,
            channel: channel.id,
            author: author.id,
            _dir: dir,
        }
    }

    fn message(channel_id: ChannelId, author_id: UserId, n: usize) -> NewMessage {
        NewMessage {
            channel_id,
            author_id,
            author: "poster".into(),
            body: format!("message {n}"),
            created_at: Timestamp::now(),
            node_id: "test".into(),
        }
    }

    impl Fixture {
        fn post(&self, channel: ChannelId, n: usize) -> tokio::task::JoinHandle<StoreResult<Message>> {
            let posts = self.posts.clone();
            let message = message(channel, self.author, n);
            tokio::spawn(async move { posts.post(message).await })
        }

        /// Posts once and waits until that post's group committed: the bus then holds it at
        /// its publish, and every post after it can only queue.
        async fn first_post_held(&self) -> tokio::task::JoinHandle<StoreResult<Message>> {
            let first = self.post(self.channel, 0);
            while self.posts.groups_committed() < 1 {
                tokio::task::yield_now().await;
            }
            first
        }

        /// Waits until `n` posts wait in `channel`'s queue.
        async fn queued(&self, channel: ChannelId, n: usize) {
            let queue = &self.posts.stripes[stripe_of(channel)];
            while queue.max_capacity() - queue.capacity() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn posts_that_wait_are_committed_together_and_published_in_id_order() {
        let fx = fixture().await;
        // The first post commits alone and is held at its publish...
        let first = fx.first_post_held().await;
        // ...so the fifty behind it queue, and the next group takes them all.
        let rest: Vec<_> = (1..=50).map(|n| fx.post(fx.channel, n)).collect();
        fx.queued(fx.channel, 50).await;
        fx.bus.let_through.add_permits(51);
        let mut acknowledged = vec![first.await.unwrap().unwrap()];
        for post in rest {
            acknowledged.push(post.await.unwrap().unwrap());
        }
        assert_eq!(
            fx.posts.groups_committed(),
            2,
            "one group for the first post, one for the fifty"
        );
        // Published in id order, each exactly once, and each acknowledged as published.
        let published = fx.bus.published.lock().unwrap().clone();
        let ids: Vec<_> = published.iter().map(|message| message.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted, "published out of order or twice");
        acknowledged.sort_by_key(|message| message.id);
        assert_eq!(acknowledged, published);
        // And committed: the history holds all 51.
        let history = fx.store.messages(fx.channel, None, 100).await.unwrap();
        assert_eq!(history.len(), 51);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_fails_to_commit_stores_none_of_its_posts_and_acknowledges_none() {
        let fx = fixture().await;
        let first = fx.first_post_held().await;
        // A good post and one to a channel that does not exist (sharing its stripe) wait
        // for the same group, whose transaction the foreign key then fails.
        let good = fx.post(fx.channel, 1);
        fx.queued(fx.channel, 1).await;
        let missing_channel = fx.channel + STRIPES as i64;
        let bad = fx.post(missing_channel, 2);
        fx.queued(fx.channel, 2).await;
        fx.bus.let_through.add_permits(3);
        first.await.unwrap().unwrap();
        assert!(matches!(good.await.unwrap(), Err(StoreError::NotFound)));
        assert!(matches!(bad.await.unwrap(), Err(StoreError::NotFound)));
        let history = fx.store.messages(fx.channel, None, 100).await.unwrap();
        assert_eq!(history.len(), 1, "only the first post was committed: {history:?}");
        assert_eq!(
            fx.bus.published.lock().unwrap().len(),
            1,
            "nothing of the failed group published"
        );
    }
}
