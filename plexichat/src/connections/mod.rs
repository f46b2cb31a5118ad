//! Accepting, timing and closing HTTP connections, so that no client can pin the server:
//! every socket gets TCP keepalive, every connection a header-read and an idle timeout,
//! running out of descriptors slows accepting down instead of spinning, and shutdown has
//! a deadline after which what is left is dropped.

mod connection;
mod error_head;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::connection::{Expired, Timeouts};
use crate::config::HttpSettings;
use crate::metrics::HTTP_CONNECTIONS_CLOSED_TOTAL;

/// How long accepting pauses after a failure that is not the peer's (no descriptors left):
/// retrying at once would only spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per kind of trouble per this period, with a count of the rest:
/// under attack or descriptor exhaustion these happen thousands of times a second.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Once keepalive probing starts, a probe this often, and the connection is dropped after
/// this many go unanswered: a vanished peer is noticed about a minute after it went quiet.
#[cfg(target_os = "linux")]
const KEEPALIVE_PROBE_INTERVAL: Duration = Duration::from_secs(10);
#[cfg(target_os = "linux")]
const KEEPALIVE_PROBES: u32 = 6;

/// What every connection task shares.
struct Shared {
    http: http1::Builder,
    timeouts: Timeouts,
    /// Cancelled when shutdown begins: idle connections close, busy ones finish first.
    graceful: CancellationToken,
    /// Cancelled at the shutdown deadline: whatever is still open is dropped.
    abort: CancellationToken,
    header_timeouts: Throttle,
}

impl Shared {
    fn expired(&self, why: Expired, remote: SocketAddr) {
        match why {
            Expired::HeaderTimeout => {
                metrics::counter!(HTTP_CONNECTIONS_CLOSED_TOTAL, "reason" => "header_timeout").increment(1);
                if let Some(count) = self.header_timeouts.hit() {
                    tracing::warn!(
                        %remote,
                        count,
                        "shed {count} connection(s) whose request head did not arrive within {} (slow or stalled clients)",
                        humantime::format_duration(self.timeouts.header_read),
                    );
                }
            }
            // Ordinary keep-alive housekeeping, not a sign of trouble.
            Expired::IdleTimeout => {
                metrics::counter!(HTTP_CONNECTIONS_CLOSED_TOTAL, "reason" => "idle_timeout").increment(1);
                tracing::debug!(%remote, "closing idle connection");
            }
        }
    }
}

/// The server's HTTP connections: accepted by [`Connections::accept_until`], closed by
/// [`Connections::drain`].
pub(crate) struct Connections {
    router: Router,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    keepalive: TcpKeepalive,
    accept_errors: Throttle,
}

impl Connections {
    pub(crate) fn new(router: Router, settings: &HttpSettings) -> Self {
        let mut http = http1::Builder::new();
        http.max_header_size(settings.max_header_bytes)
            // Our own timers replace it (see connection.rs); left on, hyper would also
            // cut idle keep-alive connections after it.
            .header_read_timeout(None);
        let keepalive = TcpKeepalive::new().with_time(settings.tcp_keepalive);
        #[cfg(target_os = "linux")]
        let keepalive = keepalive
            .with_interval(KEEPALIVE_PROBE_INTERVAL.min(settings.tcp_keepalive))
            .with_retries(KEEPALIVE_PROBES);
        Self {
            router,
            shared: Arc::new(Shared {
                http,
                timeouts: Timeouts {
                    header_read: settings.header_read_timeout,
                    idle: settings.idle_timeout,
                },
                graceful: CancellationToken::new(),
                abort: CancellationToken::new(),
                header_timeouts: Throttle::default(),
            }),
            tasks: TaskTracker::new(),
            keepalive,
            accept_errors: Throttle::default(),
        }
    }

    /// Accepts and serves connections until `shutdown` completes; then stops listening.
    pub(crate) async fn accept_until(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => self.start(stream, remote),
                Err(err) => {
                    if let Some(pause) = self.accept_failed(&err) {
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
    }

    fn start(&self, stream: TcpStream, remote: SocketAddr) {
        // Without keepalive a peer that vanished (power loss, a NAT that forgot us) keeps
        // its socket open for as long as no timer of ours runs: during a WebSocket, forever.
        if let Err(err) = SockRef::from(&stream).set_tcp_keepalive(&self.keepalive) {
            // The peer may already be gone; serving will find out.
            tracing::debug!(%remote, error = %err, "cannot enable TCP keepalive");
        }
        // Each response and each flush of WebSocket frames is one write of a whole message:
        // Nagle's algorithm would hold it back until the peer acknowledged the previous one,
        // which a peer delaying its ACKs does up to 40 ms later (seen as 40-50 ms delivery
        // tails at 2 posts a second).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %err, "cannot disable Nagle's algorithm");
        }
        let router = self.router.clone();
        let shared = self.shared.clone();
        self.tasks.spawn(connection::serve(stream, remote, router, shared));
    }

    /// Logs an accept failure; returns how long to pause before accepting again.
    fn accept_failed(&self, err: &io::Error) -> Option<Duration> {
        // The peer gave up before we got to it: nothing wrong here.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
        ) {
            return None;
        }
        if let Some(count) = self.accept_errors.hit() {
            if out_of_descriptors(err) {
                tracing::error!(
                    error = %err,
                    count,
                    open_file_limit = open_file_limit(),
                    "out of file descriptors: {count} connection(s) could not be accepted; \
                     raise the open-file limit (LimitNOFILE, ulimit -n) or lower http.idle_timeout",
                );
            } else {
                tracing::warn!(error = %err, count, "{count} connection(s) could not be accepted");
            }
        }
        Some(ACCEPT_BACKOFF)
    }

    /// Closes every connection: idle ones at once, busy ones when their request is
    /// answered, and drops what is left at `deadline`.
    pub(crate) async fn drain(self, deadline: Instant) {
        self.shared.graceful.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_ok() {
            return;
        }
        let open = self.tasks.len();
        metrics::counter!(HTTP_CONNECTIONS_CLOSED_TOTAL, "reason" => "shutdown_deadline").increment(open as u64);
        tracing::warn!(
            open,
            "shutdown deadline reached: dropping {open} connection(s) that are still open"
        );
        self.shared.abort.cancel();
        self.tasks.wait().await;
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is a
/// descriptor, and the usual soft limit of 1024 is far below what a server may hold.
pub(crate) fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!("open-file limit raised from {soft} to {hard}"),
                Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit from {soft} to {hard}"),
            },
            Ok((soft, _)) => tracing::debug!("open-file limit {soft} is already the hard limit"),
            Err(err) => tracing::warn!(error = %err, "cannot read the open-file limit"),
        }
    }
}

fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    None
}

fn out_of_descriptors(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        err.raw_os_error()
            .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

/// Lets one event of a kind through per [`LOG_EVERY`] and counts the others.
#[derive(Default)]
struct Throttle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    /// `Some(events since the last report, this one included)` when it is time to report.
    fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.count += 1;
        let now = Instant::now();
        if state.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_reports_the_first_event_then_counts_the_rest() {
        let throttle = Throttle::default();
        assert_eq!(throttle.hit(), Some(1));
        assert_eq!(throttle.hit(), None);
        assert_eq!(throttle.hit(), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(throttle.hit(), Some(3));
    }

    #[test]
    fn descriptor_exhaustion_is_told_from_other_accept_errors() {
        #[cfg(unix)]
        {
            assert!(out_of_descriptors(&io::Error::from_raw_os_error(
                nix::errno::Errno::EMFILE as i32
            )));
            assert!(out_of_descriptors(&io::Error::from_raw_os_error(
                nix::errno::Errno::ENFILE as i32
            )));
        }
        assert!(!out_of_descriptors(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    }
}
