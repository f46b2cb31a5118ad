//! A server's life: bind, run the background loops, serve, and shut down gracefully
//! (stop accepting, say goodbye on every WebSocket, finish in-flight requests, and drop
//! what is left at the shutdown deadline).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Settings;
use crate::connections::{self, Connections};
use crate::model::{NodeHeartbeat, Timestamp};
use crate::startup::StartupError;

/// How often expired sessions are deleted.
const SESSION_SWEEP_INTERVAL: Duration = Duration::from_secs(300);

pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
}

impl Server {
    /// Opens the database and binds the listening socket (port 0 picks a free port).
    pub async fn bind(settings: Settings) -> anyhow::Result<Self> {
        let listen = settings.listen;
        connections::raise_open_file_limit();
        let app = App::new(settings).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|cause| StartupError::listen(listen, cause))?;
        Ok(Self { app, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.app.settings.listen)
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { app, listener } = self;
        let addr = listener.local_addr()?;
        let heartbeat = NodeHeartbeat {
            node_id: app.node_id.clone(),
            generation: app.generation,
            addr: addr.to_string(),
            version: crate::version().to_string(),
        };
        // Joined before the first request is served: a node that answers is listed.
        app.store
            .heartbeat(&heartbeat)
            .await
            .context("joining the cluster (first membership heartbeat)")?;
        spawn_background_loops(&app, heartbeat);
        tracing::info!(node_id = %app.node_id, "plexichat listening on http://{addr}");
        let connections = Connections::new(crate::http::router(app.clone()), &app.settings.http);
        connections.accept_until(listener, shutdown).await;
        tracing::info!("shutting down: draining connections");
        let deadline = tokio::time::Instant::now() + app.settings.http.shutdown_timeout;
        app.draining.store(true, Ordering::Relaxed);
        // WebSockets close (1001) while in-flight requests finish.
        app.shutdown.cancel();
        connections.drain(deadline).await;
        app.tasks.close();
        if tokio::time::timeout_at(deadline, app.tasks.wait()).await.is_err() {
            tracing::warn!(
                "some WebSockets or background loops did not stop within {}",
                humantime::format_duration(app.settings.http.shutdown_timeout)
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn spawn_background_loops(app: &Arc<App>, heartbeat: NodeHeartbeat) {
    let settings = &app.settings;
    every(app, settings.cluster.heartbeat_interval, {
        move |app| {
            let node = heartbeat.clone();
            async move {
                if let Err(err) = app.store.heartbeat(&node).await {
                    tracing::warn!(error = %err, "membership heartbeat failed");
                }
            }
        }
    });
    every(app, settings.rate_limits.prune_interval, |app| async move {
        app.rate_limits.prune()
    });
    every(app, SESSION_SWEEP_INTERVAL, |app| async move {
        match app.store.delete_expired_sessions(Timestamp::now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired sessions deleted"),
            Err(err) => tracing::warn!(error = %err, "session sweep failed"),
        }
    });
}

/// Runs `tick` every `period`, the first one period from now, until shutdown.
fn every<F, Fut>(app: &Arc<App>, period: Duration, tick: F)
where
    F: Fn(Arc<App>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let app = app.clone();
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = interval.tick() => tick(app.clone()).await,
            }
        }
    });
}
