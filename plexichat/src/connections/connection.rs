//! One HTTP/1.1 connection: the phase it is in, the timers that phase allows, and the
//! service that hands its requests to the router.
//!
//! hyper's own `header_read_timeout` starts when hyper begins waiting for a head, so it
//! also cuts keep-alive connections that are merely idle: one timer cannot be both a short
//! header timeout and a longer idle timeout. We keep the phase ourselves instead (as Go's
//! net/http does): waiting for the first byte is idle time, from the first byte on the
//! head has `header_read_timeout` to arrive.

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::error_head::ConnIo;
use super::Shared;

#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No byte of a request yet: since the connection was accepted (`fresh`) or since the
    /// previous response went out.
    Waiting { since: Instant, fresh: bool },
    /// Part of a request head has arrived; the rest is due within the header timeout.
    Head { since: Instant },
    /// A request is with the router, whose request timeout bounds it.
    Handling,
    /// The response is complete but may still be on its way out; `since` is the last
    /// time the client took some of it.
    Sending { since: Instant },
    /// Switched to another protocol (a WebSocket), which keeps its own time.
    Upgraded,
}

/// Why a connection was closed by its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// A request head (or, on a new connection, any request at all) did not arrive in time.
    HeaderTimeout,
    /// Nothing happened between requests, or the client stopped reading a response.
    IdleTimeout,
}

/// A connection's phase, moved on by its IO (bytes read, written, flushed), by its service
/// (request in, response out) and read by its driver (timers, shutdown). Every one of
/// those runs inside the driver's poll of the connection, so the driver reads the phase
/// after each poll and needs no wake-up to follow it.
pub(super) struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                fresh: true,
            }),
        })
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `next` to the phase.
    fn advance(&self, next: impl FnOnce(Phase) -> Option<Phase>) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(next) = next(*phase) {
            *phase = next;
        }
    }

    pub(super) fn bytes_read(&self) {
        self.advance(|phase| match phase {
            Phase::Waiting { .. } => Some(Phase::Head { since: Instant::now() }),
            _ => None,
        });
    }

    pub(super) fn bytes_written(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Sending { since } = &mut *phase {
            // Only pushes the deadline later: the driver's timer need not move.
            *since = Instant::now();
        }
    }

    /// Everything hyper had to write was written: a finished response is now delivered.
    pub(super) fn flushed(&self) {
        self.advance(|phase| match phase {
            Phase::Sending { .. } => Some(Phase::Waiting {
                since: Instant::now(),
                fresh: false,
            }),
            _ => None,
        });
    }

    fn request_started(&self) {
        self.advance(|phase| (phase != Phase::Upgraded).then_some(Phase::Handling));
    }

    fn response_finished(&self) {
        self.advance(|phase| match phase {
            Phase::Handling => Some(Phase::Sending { since: Instant::now() }),
            _ => None,
        });
    }

    fn upgraded(&self) {
        self.advance(|_| Some(Phase::Upgraded));
    }

    /// Whether hyper may write now on its own: no request is being answered, so anything
    /// it writes is its automatic answer to a request it could not parse.
    pub(super) fn between_requests(&self) -> bool {
        matches!(self.phase(), Phase::Waiting { .. } | Phase::Head { .. })
    }

    fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Expired)> {
        match self.phase() {
            Phase::Waiting { since, fresh: true } => Some((since + timeouts.header_read, Expired::HeaderTimeout)),
            Phase::Waiting { since, fresh: false } => Some((since + timeouts.idle, Expired::IdleTimeout)),
            Phase::Head { since } => Some((since + timeouts.header_read, Expired::HeaderTimeout)),
            Phase::Sending { since } => Some((since + timeouts.idle, Expired::IdleTimeout)),
            Phase::Handling | Phase::Upgraded => None,
        }
    }
}

/// Serves one accepted connection until it ends, its timers expire or shutdown drops it.
pub(super) async fn serve(stream: TcpStream, remote: SocketAddr, router: Router, shared: Arc<Shared>) {
    let activity = Activity::new();
    let io = TokioIo::new(ConnIo::new(stream, activity.clone()));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| handle(router.clone(), activity.clone(), remote, request))
    };
    let mut connection = pin!(shared.http.serve_connection(io, service).with_upgrades());
    let mut abort = pin!(shared.abort.clone().cancelled_owned());
    let mut graceful = pin!(shared.graceful.clone().cancelled_owned());
    // Armed no later than the phase's deadline, and moved only when a phase brings its
    // deadline earlier; a deadline that moved later is found when the timer fires. Each
    // request moves the phase four times: re-arming (or waking) on each would cost more
    // than a cheap route itself.
    let mut armed = activity.deadline(&shared.timeouts).map(|(at, _)| at);
    let mut timer = pin!(tokio::time::sleep_until(armed.unwrap_or_else(far_future)));
    let mut draining = false;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            if abort.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Aborted);
            }
            if !draining && graceful.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Draining);
            }
            // The poll above is what moves the phase: follow it.
            if let Some((at, _)) = activity.deadline(&shared.timeouts) {
                if armed.is_none_or(|armed| at < armed) {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
            }
            if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::TimerFired);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => {
                if let Err(err) = result {
                    tracing::debug!(%remote, error = %err, "connection ended with an error");
                }
                return;
            }
            // Counted and logged by the drain that cancelled it.
            Event::Aborted => return,
            Event::Draining => {
                draining = true;
                // Nothing of a request has arrived: nothing is lost by closing now.
                if matches!(activity.phase(), Phase::Waiting { .. }) {
                    return;
                }
                // hyper finishes the request in progress, then closes.
                connection.as_mut().graceful_shutdown();
            }
            Event::TimerFired => {
                // The phase may have moved on since the timer was armed.
                if let Some((at, why)) = activity.deadline(&shared.timeouts) {
                    if at <= Instant::now() {
                        shared.expired(why, remote);
                        return;
                    }
                }
                // Later, or none while a request is handled: the next poll arms it again.
                armed = None;
            }
        }
    }
}

/// What woke a connection's driver.
enum Event {
    Ended(Result<(), hyper::Error>),
    Aborted,
    Draining,
    TimerFired,
}

/// A deadline that never comes in practice, for a timer not yet armed.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The router, with the client's address for the rate limiter and the phase kept.
async fn handle(
    router: Router,
    activity: Arc<Activity>,
    remote: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<TrackedBody>, Infallible> {
    activity.request_started();
    request.extensions_mut().insert(ConnectInfo(remote));
    let response = router.oneshot(request.map(Body::new)).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        activity.upgraded();
    }
    Ok(response.map(|body| TrackedBody {
        body,
        _finished: ResponseFinished(activity),
    }))
}

/// Tells the connection when hyper is done with a response body (sent to the end, or
/// given up), which is when its bytes start their way out.
struct ResponseFinished(Arc<Activity>);

impl Drop for ResponseFinished {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

pub(super) struct TrackedBody {
    body: Body,
    _finished: ResponseFinished,
}

impl hyper::body::Body for TrackedBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(2),
        idle: Duration::from_secs(60),
    };

    fn why(activity: &Activity) -> Option<Expired> {
        activity.deadline(&TIMEOUTS).map(|(_, why)| why)
    }

    #[tokio::test(start_paused = true)]
    async fn phases_follow_a_keep_alive_exchange() {
        let activity = Activity::new();
        assert_eq!(
            why(&activity),
            Some(Expired::HeaderTimeout),
            "a new connection must send"
        );
        activity.bytes_read();
        assert!(activity.between_requests());
        activity.request_started();
        assert_eq!(why(&activity), None, "the request timeout bounds a handler");
        assert!(!activity.between_requests());
        activity.response_finished();
        assert_eq!(why(&activity), Some(Expired::IdleTimeout), "a client must read");
        assert!(!activity.between_requests(), "the response is still being written");
        activity.flushed();
        assert_eq!(why(&activity), Some(Expired::IdleTimeout));
        let (idle_until, _) = activity.deadline(&TIMEOUTS).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.bytes_read();
        let (head_until, why_now) = activity.deadline(&TIMEOUTS).unwrap();
        assert_eq!(why_now, Expired::HeaderTimeout);
        assert!(
            head_until < idle_until,
            "the first byte starts the shorter header timer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_timer() {
        let activity = Activity::new();
        activity.request_started();
        activity.upgraded();
        activity.response_finished();
        activity.flushed();
        activity.bytes_read();
        assert_eq!(why(&activity), None);
        assert!(!activity.between_requests());
    }
}
