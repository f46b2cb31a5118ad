//! Everything a request handler may need, built once per server.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Passwords;
use crate::bus::{self, ClusterEvent, EventBus, InProcessBus, LocalEffects, NatsBus};
use crate::cache::Caches;
use crate::config::Settings;
use crate::error::ApiError;
use crate::group_commit::GroupCommit;
use crate::hub::Hub;
use crate::model::{ChannelId, Timestamp, UserId};
use crate::ratelimit::RateLimits;
use crate::startup::StartupError;
use crate::store::{self, Store};

pub struct App {
    pub settings: Settings,
    pub node_id: String,
    /// Distinguishes this run of the node from earlier ones with the same id.
    pub generation: i64,
    pub store: Arc<dyn Store>,
    pub caches: Arc<Caches>,
    pub hub: Arc<Hub>,
    pub bus: Arc<dyn EventBus>,
    /// Commits, publishes and acknowledges posts in groups, in order per channel.
    pub posts: GroupCommit,
    pub passwords: Passwords,
    pub rate_limits: RateLimits,
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
    /// Set while shutting down, so load balancers stop sending traffic.
    pub draining: AtomicBool,
    /// WebSocket connections and background loops, awaited on shutdown.
    pub tasks: TaskTracker,
}

impl App {
    pub async fn new(settings: Settings) -> anyhow::Result<Arc<Self>> {
        let store = store::connect(&settings.database)
            .await
            .map_err(|err| StartupError::database(&store::redact_url(&settings.database.url), err.as_ref()))?;
        let metrics = match settings.metrics.enabled {
            true => Some(crate::metrics::recorder(settings.metrics.upkeep_interval)?),
            false => None,
        };
        let caches = Arc::new(Caches::new(&settings.cache));
        let hub = Arc::new(Hub::new());
        let effects = Arc::new(LocalEffects {
            hub: hub.clone(),
            caches: caches.clone(),
        });
        let node_id = settings.node_id();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bus: Arc<dyn EventBus> = match &settings.cluster.nats_url {
            Some(url) => Arc::new(NatsBus::start(url, &node_id, effects, shutdown.clone(), &tasks).await?),
            None => Arc::new(InProcessBus::new(effects)),
        };
        let posts = GroupCommit::start(store.clone(), bus.clone());
        Ok(Arc::new(Self {
            node_id,
            generation: Timestamp::now().0,
            store,
            caches,
            hub,
            bus,
            posts,
            passwords: Passwords::new(&settings.auth)?,
            rate_limits: RateLimits::new(&settings.rate_limits),
            metrics,
            shutdown,
            draining: AtomicBool::new(false),
            tasks,
            settings,
        }))
    }

    /// Publishes on the bus; a failure is logged, never the caller's failure.
    pub async fn publish(&self, event: ClusterEvent) {
        bus::publish_best_effort(self.bus.as_ref(), event).await;
    }

    /// `NotFound` for a missing channel, `Forbidden` when `user` is not a member.
    pub async fn require_member(&self, channel: ChannelId, user: UserId) -> Result<(), ApiError> {
        self.caches
            .channel(channel, self.store.channel(channel))
            .await?
            .ok_or(ApiError::NotFound("no such channel"))?;
        let member = self
            .caches
            .membership(channel, user, self.store.is_member(channel, user))
            .await?;
        if member {
            Ok(())
        } else {
            Err(ApiError::Forbidden("not a member of this channel"))
        }
    }
}
