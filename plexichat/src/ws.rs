//! The WebSocket protocol of API.md: frames both ways and one task per connection.
//! All writes to a socket happen in its task, so frames from the hub, replies and the
//! closing frame never interleave. A connection lives no longer than its session token:
//! it closes when the token is logged out (on any node) or expires.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::{token_hash, AuthUser};
use crate::bus::ClusterEvent;
use crate::error::ApiError;
use crate::hub::{ConnectionId, QueuedFrame, SessionWatch, Subscriber};
use crate::metrics::{WS_CONNECTIONS, WS_CONNECTIONS_TOTAL};
use crate::model::{ChannelId, Timestamp};
use crate::protocol::{ClientFrame, ServerFrame};

/// How long a closing connection waits for the client to acknowledge the close frame
/// (and, before that, for the frame to be written at all to a client that reads slowly).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most queued frames one flush carries, so a socket under a flood still looks at its
/// endings and its client between flushes.
const MAX_FRAMES_PER_FLUSH: usize = 64;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WsQuery {
    /// A session token from /api/v1/auth/login.
    token: Option<String>,
}

/// Open a WebSocket (authenticated by `?token=`).
#[utoipa::path(get, path = "/api/v1/ws", tag = "realtime", params(WsQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol of API.md"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::error::ErrorBody),
        (status = 401, description = "Missing, unknown or expired token", body = crate::error::ErrorBody),
        (status = 429, description = "Over the user's request rate", body = crate::error::ErrorBody),
        (status = 500, body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable or request timed out", body = crate::error::ErrorBody),
    ))]
pub async fn upgrade(
    State(app): State<Arc<App>>,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = query
        .token
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized("missing ?token="))?;
    // Watched before the token is checked: a logout that lands between the check and
    // the upgrade still reaches this connection.
    let session = app.hub.watch_session(token_hash(&token));
    let auth = AuthUser::from_token(&app, &token).await?;
    let upgrade = upgrade.map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
    let settings = &app.settings.websocket;
    let upgrade = upgrade
        .read_buffer_size(settings.read_buffer_bytes)
        .write_buffer_size(settings.write_buffer_bytes)
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes);
    let tasks = app.tasks.clone();
    Ok(upgrade.on_upgrade(move |socket| tasks.track_future(Connection::new(app, auth, session).run(socket))))
}

/// Why the server ends a connection; API.md gives each its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    ShuttingDown,
    Revoked,
    Expired,
    TooSlow,
    TooBig { limit: usize },
}

impl Ending {
    fn close_frame(self) -> CloseFrame {
        let (code, reason): (u16, Utf8Bytes) = match self {
            Ending::ShuttingDown => (close_code::AWAY, "server shutting down".into()),
            Ending::Revoked => (close_code::POLICY, "session revoked".into()),
            Ending::Expired => (close_code::POLICY, "session expired".into()),
            Ending::TooSlow => (
                close_code::AGAIN,
                "too slow: reconnect and page back what you missed".into(),
            ),
            Ending::TooBig { limit } => (
                close_code::SIZE,
                format!("message too big: the limit is {limit} bytes").into(),
            ),
        };
        CloseFrame { code, reason }
    }
}

/// Whether a read failed because a frame or message is over the configured limit.
fn is_too_big(err: &axum::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|inner| matches!(inner, tungstenite::Error::Capacity(_)))
}

/// The monotonic instant at which a session that ends at `expires_at` (wall clock) ends;
/// `None` when it is too far away to represent, i.e. never in practice.
fn expiry_deadline(expires_at: Timestamp, now: Timestamp) -> Option<Instant> {
    let left = u64::try_from(expires_at.0.saturating_sub(now.0)).unwrap_or(0);
    Instant::now().checked_add(Duration::from_millis(left))
}

type WsSink = futures_util::stream::SplitSink<WebSocket, WsMessage>;
type WsStream = futures_util::stream::SplitStream<WebSocket>;

struct Connection {
    app: Arc<App>,
    auth: AuthUser,
    id: ConnectionId,
    /// Keeps this connection registered under its token until it ends.
    session: SessionWatch,
    expires: Option<Instant>,
    subscribed: HashSet<ChannelId>,
    too_slow: CancellationToken,
}

impl Connection {
    fn new(app: Arc<App>, auth: AuthUser, session: SessionWatch) -> Self {
        Self {
            app,
            id: session.connection_id(),
            session,
            expires: expiry_deadline(auth.expires_at, Timestamp::now()),
            auth,
            subscribed: HashSet::new(),
            too_slow: CancellationToken::new(),
        }
    }

    /// The ending that has already come, if any; checked before each frame is sent, so
    /// that nothing follows a revocation even when the reply was being prepared.
    fn ended(&self) -> Option<Ending> {
        if self.app.shutdown.is_cancelled() {
            Some(Ending::ShuttingDown)
        } else if self.session.revoked().is_cancelled() {
            Some(Ending::Revoked)
        } else if self.expires.is_some_and(|deadline| deadline <= Instant::now()) {
            Some(Ending::Expired)
        } else if self.too_slow.is_cancelled() {
            Some(Ending::TooSlow)
        } else {
            None
        }
    }

    async fn run(mut self, socket: WebSocket) {
        metrics::counter!(WS_CONNECTIONS_TOTAL).increment(1);
        metrics::gauge!(WS_CONNECTIONS).increment(1.0);
        let (outbox, mut inbox) = mpsc::channel::<QueuedFrame>(self.app.settings.websocket.outbound_queue);
        let (mut sink, mut stream) = socket.split();
        // The endings are waited for by futures made once: made afresh on every turn of
        // the loop, each would register with its token and unregister again per frame.
        let shutdown = self.app.shutdown.clone().cancelled_owned();
        let revoked = self.session.revoked().clone().cancelled_owned();
        let too_slow = self.too_slow.clone().cancelled_owned();
        let expires = self.expires;
        let expired = async move {
            match expires {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(shutdown, revoked, too_slow, expired);
        let ending = loop {
            let outgoing = tokio::select! {
                // Endings first: once one has come, no frame may be sent.
                biased;
                _ = &mut shutdown => break Some(Ending::ShuttingDown),
                _ = &mut revoked => break Some(Ending::Revoked),
                _ = &mut expired => break Some(Ending::Expired),
                _ = &mut too_slow => break Some(Ending::TooSlow),
                Some(frame) = inbox.recv() => Some(Utf8Bytes::clone(&frame)),
                incoming = stream.next() => match incoming {
                    // Boxed: the answer's future (a database query among them) is big, and
                    // held in this task's state it would be paid by every idle connection.
                    Some(Ok(WsMessage::Text(text))) => Box::pin(self.handle(&text, &outbox)).await,
                    Some(Ok(WsMessage::Binary(_))) => {
                        let err = ApiError::InvalidRequest("binary frames are not supported; send JSON text".into());
                        Some(ServerFrame::error(&err, None))
                    }
                    // Pings are answered by the protocol layer.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => None,
                    Some(Ok(WsMessage::Close(_))) | None => break None,
                    Some(Err(err)) if is_too_big(&err) => {
                        break Some(Ending::TooBig { limit: self.app.settings.websocket.max_message_bytes })
                    }
                    Some(Err(_)) => break None,
                },
            };
            let Some(frame) = outgoing else { continue };
            if let Some(ending) = self.ended() {
                break Some(ending);
            }
            if sink.feed(WsMessage::Text(frame)).await.is_err() {
                break None;
            }
            // The frames queued meanwhile go out with it in one flush: a burst costs one
            // write to the socket rather than one per frame.
            let mut queued = 1;
            while queued < MAX_FRAMES_PER_FLUSH {
                let Ok(frame) = inbox.try_recv() else { break };
                if self.ended().is_some() || sink.feed(WsMessage::Text(Utf8Bytes::clone(&frame))).await.is_err() {
                    break;
                }
                queued += 1;
            }
            if let Some(ending) = self.ended() {
                break Some(ending);
            }
            if sink.flush().await.is_err() {
                break None;
            }
        };
        if let Some(ending) = ending {
            Box::pin(self.close(ending, sink, stream)).await;
        }
        for channel in &self.subscribed {
            self.app.hub.unsubscribe(*channel, self.id);
        }
        metrics::gauge!(WS_CONNECTIONS).decrement(1.0);
    }

    /// Sends the closing frame of `ending` and waits, bounded, for the client's answer.
    /// Boxed by its caller, like [`Self::handle`]: only a closing connection pays for it.
    async fn close(&self, ending: Ending, mut sink: WsSink, mut stream: WsStream) {
        {
            tracing::debug!(
                connection = self.id,
                user_id = self.auth.user.id,
                ?ending,
                "closing a WebSocket"
            );
            let closing = async {
                sink.send(WsMessage::Close(Some(ending.close_frame()))).await?;
                // After a frame over the limit the stream may be mid-frame and cannot be
                // read on: tungstenite would buffer the rest of the oversized frame. The
                // reset that dropping unread data causes does not discard the close frame
                // the client has already received.
                if !matches!(ending, Ending::TooBig { .. }) {
                    // Read up to the client's reply, so the TCP connection ends with a FIN
                    // rather than a reset that could discard the close frame.
                    while let Some(Ok(message)) = stream.next().await {
                        if matches!(message, WsMessage::Close(_)) {
                            break;
                        }
                    }
                }
                Ok::<_, axum::Error>(())
            };
            // A client that reads or answers nothing does not hold the connection open.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
    }

    /// Answers one client frame; `None` when there is nothing to answer.
    async fn handle(&mut self, text: &str, outbox: &mpsc::Sender<QueuedFrame>) -> Option<Utf8Bytes> {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(err) => {
                return Some(ServerFrame::error(
                    &ApiError::InvalidRequest(format!("bad frame: {err}")),
                    None,
                ))
            }
        };
        let user = &self.auth.user;
        match frame {
            ClientFrame::Ping => Some(ServerFrame::Pong.encode()),
            ClientFrame::Subscribe { channel_id } => {
                if let Err(err) = self.app.require_member(channel_id, user.id).await {
                    return Some(ServerFrame::error(&err, Some(channel_id)));
                }
                let subscriber = Subscriber {
                    user_id: user.id,
                    outbox: outbox.clone(),
                    too_slow: self.too_slow.clone(),
                };
                self.app.hub.subscribe(channel_id, self.id, subscriber);
                self.subscribed.insert(channel_id);
                Some(ServerFrame::Subscribed { channel_id }.encode())
            }
            ClientFrame::Unsubscribe { channel_id } => {
                self.app.hub.unsubscribe(channel_id, self.id);
                self.subscribed.remove(&channel_id);
                Some(ServerFrame::Unsubscribed { channel_id }.encode())
            }
            ClientFrame::Typing { channel_id } => {
                if let Err(err) = self.app.require_member(channel_id, user.id).await {
                    return Some(ServerFrame::error(&err, Some(channel_id)));
                }
                self.app
                    .publish(ClusterEvent::Typing {
                        channel_id,
                        user_id: user.id,
                        username: user.username.clone(),
                    })
                    .await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_close_with_the_codes_of_the_contract() {
        let code = |ending: Ending| ending.close_frame().code;
        assert_eq!(code(Ending::ShuttingDown), 1001);
        assert_eq!(code(Ending::Revoked), 1008);
        assert_eq!(code(Ending::Expired), 1008);
        assert_eq!(code(Ending::TooBig { limit: 10 }), 1009);
        assert_eq!(code(Ending::TooSlow), 1013);
        assert_eq!(Ending::Revoked.close_frame().reason.as_str(), "session revoked");
        assert_eq!(Ending::Expired.close_frame().reason.as_str(), "session expired");
        // A close reason must fit a control frame (123 bytes) even with the largest limit.
        let reason = Ending::TooBig { limit: usize::MAX }.close_frame().reason;
        assert!(reason.as_str().len() <= 123, "{}", reason.as_str());
    }

    #[test]
    fn the_capacity_error_is_recognised_through_axum() {
        let too_big =
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { size: 11, max_size: 10 });
        assert!(is_too_big(&axum::Error::new(too_big)));
        assert!(!is_too_big(&axum::Error::new(tungstenite::Error::ConnectionClosed)));
    }

    #[test]
    fn the_expiry_deadline_follows_the_session() {
        let now = Timestamp(1_000_000);
        let before = Instant::now();
        let soon = expiry_deadline(Timestamp(1_002_000), now).unwrap();
        assert!(soon >= before + Duration::from_secs(2));
        assert!(soon <= Instant::now() + Duration::from_secs(2));
        let past = expiry_deadline(Timestamp(0), now).unwrap();
        assert!(past <= Instant::now());
        // Far-future expiry must not panic.
        let _ = expiry_deadline(Timestamp(i64::MAX), Timestamp(i64::MIN));
    }
}
