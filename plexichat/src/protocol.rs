//! The frames of API.md's WebSocket protocol: what a client sends, what the server sends,
//! and their JSON encoding. Shared by the connections (`ws`) and the bus, which encodes a
//! message's frame once for every subscriber.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::{ChannelId, Message};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
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

    pub fn error(err: &ApiError, channel_id: Option<ChannelId>) -> Utf8Bytes {
        ServerFrame::Error {
            code: err.code(),
            message: err.to_string(),
            channel_id,
        }
        .encode()
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
