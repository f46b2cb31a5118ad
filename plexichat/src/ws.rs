//! The WebSocket protocol of API.md: frames both ways and one task per connection.
//! All writes to a socket happen in its task, so frames from the hub, replies and the
//! closing frame never interleave.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::AuthUser;
use crate::bus::ClusterEvent;
use crate::error::ApiError;
use crate::hub::{ConnectionId, Subscriber};
use crate::metrics::{WS_CONNECTIONS, WS_CONNECTIONS_TOTAL};
use crate::model::{ChannelId, Message};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { channel_id: ChannelId },
    Unsubscribe { channel_id: ChannelId },
    Typing { channel_id: ChannelId },
    Ping,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Subscribed {
        channel_id: ChannelId,
    },
    Unsubscribed {
        channel_id: ChannelId,
    },
    Typing {
        channel_id: ChannelId,
        user_id: i64,
        username: &'a str,
    },
    Message {
        message: &'a Message,
    },
    Pong,
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel_id: Option<ChannelId>,
    },
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_default().into()
    }

    fn error(err: &ApiError, channel_id: Option<ChannelId>) -> Utf8Bytes {
        ServerFrame::Error {
            code: err.code(),
            message: err.to_string(),
            channel_id,
        }
        .encode()
    }
}

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
    let auth = AuthUser::from_token(&app, &token).await?;
    let upgrade = upgrade.map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
    let settings = &app.settings.websocket;
    let upgrade = upgrade
        .read_buffer_size(settings.read_buffer_bytes)
        .write_buffer_size(settings.write_buffer_bytes)
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes);
    let tasks = app.tasks.clone();
    Ok(upgrade.on_upgrade(move |socket| tasks.track_future(Connection::new(app, auth).run(socket))))
}

struct Connection {
    app: Arc<App>,
    auth: AuthUser,
    id: ConnectionId,
    subscribed: HashSet<ChannelId>,
    too_slow: CancellationToken,
}

impl Connection {
    fn new(app: Arc<App>, auth: AuthUser) -> Self {
        let id = app.hub.next_connection_id();
        Self {
            app,
            auth,
            id,
            subscribed: HashSet::new(),
            too_slow: CancellationToken::new(),
        }
    }

    async fn run(mut self, socket: WebSocket) {
        metrics::counter!(WS_CONNECTIONS_TOTAL).increment(1);
        metrics::gauge!(WS_CONNECTIONS).increment(1.0);
        let (outbox, mut inbox) = mpsc::channel(self.app.settings.websocket.outbound_queue);
        let (mut sink, mut stream) = socket.split();
        let shutdown = self.app.shutdown.clone();
        let close = loop {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => break Some((close_code::AWAY, "server shutting down")),
                _ = self.too_slow.cancelled() => {
                    break Some((close_code::AGAIN, "too slow: reconnect and page back what you missed"))
                }
                Some(frame) = inbox.recv() => sink.send(WsMessage::Text(frame)).await,
                incoming = stream.next() => match incoming {
                    Some(Ok(WsMessage::Text(text))) => match self.handle(&text, &outbox).await {
                        Some(reply) => sink.send(WsMessage::Text(reply)).await,
                        None => Ok(()),
                    },
                    Some(Ok(WsMessage::Binary(_))) => {
                        let err = ApiError::InvalidRequest("binary frames are not supported; send JSON text".into());
                        sink.send(WsMessage::Text(ServerFrame::error(&err, None))).await
                    }
                    // Pings are answered by the protocol layer.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Ok(()),
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break None,
                },
            };
            if sent.is_err() {
                break None;
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = sink.send(WsMessage::Close(Some(frame))).await;
        }
        for channel in &self.subscribed {
            self.app.hub.unsubscribe(*channel, self.id);
        }
        metrics::gauge!(WS_CONNECTIONS).decrement(1.0);
    }

    /// Answers one client frame; `None` when there is nothing to answer.
    async fn handle(&mut self, text: &str, outbox: &mpsc::Sender<Utf8Bytes>) -> Option<Utf8Bytes> {
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
    fn client_frames_parse_and_unknown_ones_do_not() {
        assert!(matches!(
            serde_json::from_str(r#"{"type":"subscribe","channel_id":3}"#),
            Ok(ClientFrame::Subscribe { channel_id: 3 })
        ));
        assert!(matches!(
            serde_json::from_str(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"subscribe","channel_id":"x"}"#).is_err());
    }

    #[test]
    fn server_frames_match_the_contract() {
        assert_eq!(ServerFrame::Pong.encode().as_str(), r#"{"type":"pong"}"#);
        assert_eq!(
            ServerFrame::Subscribed { channel_id: 4 }.encode().as_str(),
            r#"{"type":"subscribed","channel_id":4}"#
        );
        let typing = ServerFrame::Typing {
            channel_id: 4,
            user_id: 9,
            username: "ann",
        };
        assert_eq!(
            typing.encode().as_str(),
            r#"{"type":"typing","channel_id":4,"user_id":9,"username":"ann"}"#
        );
    }
}
