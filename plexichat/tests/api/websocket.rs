//! The WebSocket protocol of API.md: upgrade auth, frames both ways, live fan-out of
//! posted messages, typing, bad frames, graceful close and paging back after a reconnect,
//! and the close codes: 1008 when the token is revoked or expires, 1009 for a frame over
//! the size limit.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use super::helpers::{assert_error, spawn_app, spawn_app_with, TestApp, TestUser};

/// The longest any single expected frame may take to arrive.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a socket must stay quiet for a negative check.
const SILENCE: Duration = Duration::from_millis(250);

/// A test client for `/api/v1/ws`: JSON text frames in and out, every wait bounded.
pub(crate) struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub(crate) async fn connect(app: &TestApp, token: &str) -> Self {
        let (socket, response) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(app.ws_url(token)))
            .await
            .expect("WebSocket handshake timed out")
            .expect("WebSocket handshake succeeds");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self { socket }
    }

    async fn send(&mut self, message: Message) {
        tokio::time::timeout(FRAME_TIMEOUT, self.socket.send(message))
            .await
            .expect("send timed out")
            .expect("frame sent");
    }

    pub(crate) async fn send_json(&mut self, frame: Value) {
        self.send(Message::text(frame.to_string())).await;
    }

    /// The next data or close frame; ping/pong control frames are skipped.
    /// `None` when the stream ends.
    async fn next_frame(&mut self) -> Option<Result<Message, WsError>> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    }

    /// Whether a message frame with `id` arrives within `window`; other frames are skipped.
    #[allow(dead_code)] // used by the cluster tests, which run on PostgreSQL only
    pub(crate) async fn receives_message_within(&mut self, window: Duration, id: i64) -> bool {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout_at(deadline, self.next_frame()).await {
            let frame: Value = serde_json::from_str(&text).unwrap_or_default();
            if frame["type"] == "message" && frame["message"]["id"] == id {
                return true;
            }
        }
        false
    }

    /// The next text frame, parsed; fails on anything else or after `FRAME_TIMEOUT`.
    pub(crate) async fn next_json(&mut self) -> Value {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, self.next_frame())
            .await
            .expect("no frame arrived in time");
        match frame {
            Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|err| panic!("server frame is not JSON ({err}): {}", text.as_str())),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts that no frame arrives (and the socket does not close) for a short while.
    pub(crate) async fn expect_silence(&mut self) {
        if let Ok(frame) = tokio::time::timeout(SILENCE, self.next_frame()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    pub(crate) async fn subscribe(&mut self, channel: i64) {
        self.send_json(json!({"type": "subscribe", "channel_id": channel}))
            .await;
        assert_eq!(
            self.next_json().await,
            json!({"type": "subscribed", "channel_id": channel})
        );
    }

    async fn unsubscribe(&mut self, channel: i64) {
        self.send_json(json!({"type": "unsubscribe", "channel_id": channel}))
            .await;
        assert_eq!(
            self.next_json().await,
            json!({"type": "unsubscribed", "channel_id": channel})
        );
    }

    /// Asserts the socket is open and answering: a ping gets its pong.
    async fn assert_alive(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        assert_eq!(self.next_json().await, json!({"type": "pong"}));
    }

    /// The next frame must be the live copy of `posted`, the 201 body of a post.
    pub(crate) async fn expect_message(&mut self, posted: &Value) {
        assert_eq!(self.next_json().await, json!({"type": "message", "message": posted}));
    }

    /// Asserts that the next frame (within `window`) is a close frame with `code` and
    /// `reason`, and that nothing but the end of the stream follows it.
    pub(crate) async fn expect_close_within(&mut self, window: Duration, code: CloseCode, reason: &str) {
        let frame = tokio::time::timeout(window, self.next_frame())
            .await
            .unwrap_or_else(|_| panic!("no close frame within {window:?}"));
        match frame {
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(close.code, code, "close frame: {close:?}");
                assert_eq!(close.reason.as_str(), reason, "close frame: {close:?}");
            }
            other => panic!("expected a close frame with {code}, got {other:?}"),
        }
        let after = tokio::time::timeout(FRAME_TIMEOUT, self.next_frame())
            .await
            .expect("the socket did not end after the close frame");
        assert!(
            !matches!(after, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "a frame arrived after the close frame: {after:?}"
        );
    }

    pub(crate) async fn expect_close(&mut self, code: CloseCode, reason: &str) {
        self.expect_close_within(FRAME_TIMEOUT, code, reason).await;
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.socket.close(None)).await;
    }
}

/// Asserts an API.md error frame: `{"type":"error","code":code,"message":str}`.
#[track_caller]
fn assert_error_frame(frame: &Value, code: &str) {
    assert_eq!(frame["type"], "error", "frame: {frame}");
    assert_eq!(frame["code"], code, "frame: {frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message missing: {frame}"
    );
}

/// Attempts a WebSocket handshake at `url` that must be refused; returns the
/// HTTP status and JSON body of the refusal.
async fn refused_handshake(url: &str) -> (StatusCode, Value) {
    let result = tokio::time::timeout(FRAME_TIMEOUT, connect_async(url))
        .await
        .expect("handshake timed out");
    match result {
        Err(WsError::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = response.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice(body)
                .unwrap_or_else(|err| panic!("{status}: body is not JSON ({err}): {}", String::from_utf8_lossy(body)));
            (status, body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("handshake at {url} succeeded; expected a refusal"),
    }
}

/// One page of a channel's history, newest first.
async fn history(app: &TestApp, user: &TestUser, channel: i64, query: &str) -> Vec<Value> {
    let path = format!("/api/v1/channels/{channel}/messages?{query}");
    let (status, body) = app.get(&path, &user.token).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body.as_array().expect("a page is an array").clone()
}

/// An app with `owner`, who created channel `general`, and `member`, who joined it.
async fn app_with_channel() -> (TestApp, TestUser, TestUser, i64) {
    let app = spawn_app().await;
    let owner = app.user("owner").await;
    let member = app.user("member").await;
    let channel = app.channel(&owner, "general").await;
    app.join(&member, channel).await;
    (app, owner, member, channel)
}

#[tokio::test]
async fn upgrade_without_a_token_is_401() {
    let app = spawn_app().await;
    let refusal = refused_handshake(&format!("ws://{}/api/v1/ws", app.addr)).await;
    assert_error(&refusal, StatusCode::UNAUTHORIZED, "unauthorized");
    let refusal = refused_handshake(&app.ws_url("")).await;
    assert_error(&refusal, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn upgrade_with_an_unknown_token_is_401() {
    let app = spawn_app().await;
    let refusal = refused_handshake(&app.ws_url("not-a-real-token")).await;
    assert_error(&refusal, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn plain_get_without_upgrade_headers_is_400() {
    let app = spawn_app().await;
    let user = app.user("ann").await;
    let path = format!("/api/v1/ws?token={}", user.token);
    let response = app.call(reqwest::Method::GET, &path, None, None).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn ping_gets_pong() {
    let app = spawn_app().await;
    let user = app.user("ann").await;
    let mut ws = WsClient::connect(&app, &user.token).await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
    ws.expect_silence().await;
}

#[tokio::test]
async fn members_can_subscribe() {
    let (app, _owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.send_json(json!({"type": "subscribe", "channel_id": channel})).await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "subscribed", "channel_id": channel})
    );
}

#[tokio::test]
async fn subscribing_without_membership_is_forbidden_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let owner = app.user("owner").await;
    let outsider = app.user("outsider").await;
    let channel = app.channel(&owner, "private").await;
    let mut ws = WsClient::connect(&app, &outsider.token).await;
    ws.send_json(json!({"type": "subscribe", "channel_id": channel})).await;
    assert_error_frame(&ws.next_json().await, "forbidden");
    ws.assert_alive().await;
    // The refused subscription must not deliver anything either.
    app.say(&owner, channel, "members only").await;
    ws.expect_silence().await;
}

#[tokio::test]
async fn subscribing_to_an_unknown_channel_is_not_found() {
    let app = spawn_app().await;
    let user = app.user("ann").await;
    let mut ws = WsClient::connect(&app, &user.token).await;
    ws.send_json(json!({"type": "subscribe", "channel_id": 987_654})).await;
    assert_error_frame(&ws.next_json().await, "not_found");
    ws.assert_alive().await;
}

#[tokio::test]
async fn a_posted_message_arrives_once_with_the_fields_of_the_201_response() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(channel).await;
    let posted = app.say(&owner, channel, "hello over the wire").await;
    ws.expect_message(&posted).await;
    ws.expect_silence().await;
}

#[tokio::test]
async fn the_posters_own_socket_gets_its_message_too() {
    let (app, owner, _member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &owner.token).await;
    ws.subscribe(channel).await;
    let posted = app.say(&owner, channel, "echo").await;
    ws.expect_message(&posted).await;
    ws.expect_silence().await;
}

#[tokio::test]
async fn every_subscribed_socket_gets_each_message_exactly_once() {
    let (app, owner, member, channel) = app_with_channel().await;
    let third = app.user("third").await;
    app.join(&third, channel).await;
    let mut sockets = vec![
        WsClient::connect(&app, &owner.token).await,
        WsClient::connect(&app, &member.token).await,
        WsClient::connect(&app, &third.token).await,
    ];
    for ws in &mut sockets {
        ws.subscribe(channel).await;
    }
    let first = app.say(&member, channel, "one").await;
    let second = app.say(&third, channel, "two").await;
    for ws in &mut sockets {
        ws.expect_message(&first).await;
        ws.expect_message(&second).await;
    }
    for ws in &mut sockets {
        ws.expect_silence().await;
    }
}

#[tokio::test]
async fn two_sockets_of_one_user_each_get_the_message_once() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut laptop = WsClient::connect(&app, &member.token).await;
    let mut phone = WsClient::connect(&app, &member.token).await;
    laptop.subscribe(channel).await;
    phone.subscribe(channel).await;
    let posted = app.say(&owner, channel, "to every device").await;
    laptop.expect_message(&posted).await;
    phone.expect_message(&posted).await;
    laptop.expect_silence().await;
    phone.expect_silence().await;
}

#[tokio::test]
async fn messages_from_one_poster_arrive_in_post_order() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(channel).await;
    let mut posted = Vec::new();
    for n in 0..20 {
        posted.push(app.say(&owner, channel, &format!("message {n}")).await);
    }
    let mut received = Vec::new();
    for _ in 0..posted.len() {
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "message", "frame: {frame}");
        received.push(frame["message"].clone());
    }
    ws.expect_silence().await;
    assert_eq!(received, posted);
    let ids: Vec<i64> = received.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids not increasing: {ids:?}"
    );
}

#[tokio::test]
async fn unsubscribing_stops_delivery_to_that_socket_only() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut leaving = WsClient::connect(&app, &member.token).await;
    let mut staying = WsClient::connect(&app, &member.token).await;
    leaving.subscribe(channel).await;
    staying.subscribe(channel).await;
    leaving.unsubscribe(channel).await;
    let posted = app.say(&owner, channel, "after unsubscribe").await;
    staying.expect_message(&posted).await;
    leaving.expect_silence().await;
    leaving.assert_alive().await;
}

#[tokio::test]
async fn a_socket_that_never_subscribed_receives_nothing() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    app.say(&owner, channel, "nobody is listening").await;
    ws.expect_silence().await;
}

#[tokio::test]
async fn a_subscription_to_one_channel_does_not_deliver_another() {
    let (app, owner, member, general) = app_with_channel().await;
    let random = app.channel(&owner, "random").await;
    app.join(&member, random).await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(general).await;
    app.say(&owner, random, "elsewhere").await;
    let here = app.say(&owner, general, "here").await;
    // Posts are delivered in order, so a leaked `random` message would come first.
    ws.expect_message(&here).await;
    ws.expect_silence().await;
}

#[tokio::test]
async fn typing_reaches_other_subscribers_but_not_the_typist() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut typist = WsClient::connect(&app, &owner.token).await;
    let mut watcher = WsClient::connect(&app, &member.token).await;
    typist.subscribe(channel).await;
    watcher.subscribe(channel).await;
    typist.send_json(json!({"type": "typing", "channel_id": channel})).await;
    assert_eq!(
        watcher.next_json().await,
        json!({"type": "typing", "channel_id": channel, "user_id": owner.id, "username": owner.username})
    );
    typist.expect_silence().await;
    watcher.expect_silence().await;
}

#[tokio::test]
async fn typing_in_a_channel_without_membership_is_forbidden() {
    let (app, owner, _member, channel) = app_with_channel().await;
    let outsider = app.user("outsider").await;
    let mut watcher = WsClient::connect(&app, &owner.token).await;
    watcher.subscribe(channel).await;
    let mut ws = WsClient::connect(&app, &outsider.token).await;
    ws.send_json(json!({"type": "typing", "channel_id": channel})).await;
    assert_error_frame(&ws.next_json().await, "forbidden");
    watcher.expect_silence().await;
    ws.assert_alive().await;
}

#[tokio::test]
async fn leaving_a_channel_stops_live_delivery_to_the_leaver() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut leaver = WsClient::connect(&app, &member.token).await;
    let mut watcher = WsClient::connect(&app, &owner.token).await;
    leaver.subscribe(channel).await;
    watcher.subscribe(channel).await;
    let (status, body) = app
        .post(&format!("/api/v1/channels/{channel}/leave"), &member.token, Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "leave: {body}");
    let posted = app.say(&owner, channel, "after leaving").await;
    watcher.expect_message(&posted).await;
    leaver.expect_silence().await;
    // Nor can the leaver subscribe again.
    leaver
        .send_json(json!({"type": "subscribe", "channel_id": channel}))
        .await;
    assert_error_frame(&leaver.next_json().await, "forbidden");
}

#[tokio::test]
async fn bad_frames_get_invalid_request_and_the_socket_stays_open() {
    let (app, _owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    let bad_frames = [
        Message::text("this is not json"),
        Message::text("[1, 2, 3]"),
        Message::text(r#"{"channel_id": 1}"#),
        Message::text(r#"{"type": "shout", "channel_id": 1}"#),
        Message::text(r#"{"type": "subscribe"}"#),
        Message::text(format!(r#"{{"type": "subscribe", "channel_id": "{channel}"}}"#)),
        Message::text(r#"{"type": "typing", "channel_id": null}"#),
        Message::text(r#"{"type": "unsubscribe", "channel_id": 1.5}"#),
        Message::binary(br#"{"type": "ping"}"#.to_vec()),
    ];
    for frame in bad_frames {
        let sent = format!("{frame:?}");
        ws.send(frame).await;
        let reply = ws.next_json().await;
        assert_eq!(reply["code"], "invalid_request", "reply to {sent}: {reply}");
        assert_error_frame(&reply, "invalid_request");
        ws.assert_alive().await;
    }
    // And the socket still works for real traffic.
    ws.subscribe(channel).await;
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_going_away() {
    let (app, _owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(channel).await;
    let shutdown = tokio::spawn(app.shutdown());
    let frame = tokio::time::timeout(FRAME_TIMEOUT, ws.next_frame())
        .await
        .expect("no close frame in time");
    match frame {
        Some(Ok(Message::Close(Some(close)))) => {
            assert_eq!(close.code, CloseCode::Away, "close frame: {close:?}")
        }
        other => panic!("expected a Close frame with 1001, got {other:?}"),
    }
    ws.close().await;
    let stopped = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown did not complete")
        .expect("shutdown task did not panic");
    stopped.expect("server stopped cleanly");
}

#[tokio::test]
async fn a_reconnecting_client_pages_back_what_it_missed() {
    let (app, owner, member, channel) = app_with_channel().await;
    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(channel).await;
    let seen = app.say(&owner, channel, "seen live").await;
    ws.expect_message(&seen).await;
    ws.close().await;

    let mut missed = Vec::new();
    for n in 0..3 {
        missed.push(app.say(&owner, channel, &format!("missed {n}")).await);
    }

    let mut ws = WsClient::connect(&app, &member.token).await;
    ws.subscribe(channel).await;
    // Nothing is replayed on the socket; history comes from paging.
    ws.expect_silence().await;
    let newest = history(&app, &member, channel, "limit=2").await;
    assert_eq!(newest, [missed[2].clone(), missed[1].clone()]);
    let before = newest[1]["id"].as_i64().unwrap();
    let older = history(&app, &member, channel, &format!("limit=2&before={before}")).await;
    assert_eq!(older, [missed[0].clone(), seen.clone()]);

    // Live delivery resumes on the new socket.
    let live = app.say(&owner, channel, "welcome back").await;
    ws.expect_message(&live).await;
}

#[tokio::test]
async fn logout_closes_the_sockets_of_that_token_with_1008_and_no_frame_follows() {
    let (app, owner, member, channel) = app_with_channel().await;
    // A second session of the same user must be unaffected.
    let (status, other_login) = app.login(&member.username, &member.password).await;
    assert_eq!(status, StatusCode::OK, "{other_login}");
    let other_token = other_login["token"].as_str().unwrap();
    let mut laptop = WsClient::connect(&app, &member.token).await;
    let mut phone = WsClient::connect(&app, &member.token).await;
    let mut other_session = WsClient::connect(&app, other_token).await;
    for ws in [&mut laptop, &mut phone, &mut other_session] {
        ws.subscribe(channel).await;
    }

    let (status, body) = app
        .call(reqwest::Method::POST, "/api/v1/auth/logout", Some(&member.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logout: {body}");
    // Neither a pong nor a message may reach a socket whose token is gone.
    laptop.send_json(json!({"type": "ping"})).await;
    let posted = app.say(&owner, channel, "after logout").await;
    laptop.expect_close(CloseCode::Policy, "session revoked").await;
    phone.expect_close(CloseCode::Policy, "session revoked").await;

    other_session.expect_message(&posted).await;
    other_session.assert_alive().await;
}

#[tokio::test]
async fn a_socket_closes_with_1008_when_its_token_expires() {
    let ttl = Duration::from_secs(3);
    let app = spawn_app_with(|settings| settings.auth.token_ttl = ttl).await;
    let owner = app.user("owner").await;
    let channel = app.channel(&owner, "general").await;
    let mut ws = WsClient::connect(&app, &owner.token).await;
    ws.subscribe(channel).await;
    ws.assert_alive().await;
    // Bounded by the lifetime plus the usual allowance, never waited out by a sleep.
    ws.expect_close_within(ttl + FRAME_TIMEOUT, CloseCode::Policy, "session expired")
        .await;
    assert_eq!(
        app.get("/api/v1/me", &owner.token).await.0,
        StatusCode::UNAUTHORIZED,
        "the token itself has expired too"
    );
}

/// The close reason a client gets for a frame over `limit` bytes.
fn too_big_reason(limit: usize) -> String {
    format!("message too big: the limit is {limit} bytes")
}

#[tokio::test]
async fn a_frame_over_the_size_limit_gets_a_close_frame_with_1009() {
    let limit = plexichat::config::WebSocketSettings::default().max_message_bytes;
    let app = spawn_app().await;
    let user = app.user("ann").await;
    let mut ws = WsClient::connect(&app, &user.token).await;
    ws.assert_alive().await;
    // The server stops reading mid-frame, so the send may fail once it has hung up; what
    // matters is what the client reads.
    let oversized = Message::text("x".repeat(limit + 1));
    let _ = tokio::time::timeout(FRAME_TIMEOUT, ws.socket.send(oversized)).await;
    ws.expect_close(CloseCode::Size, &too_big_reason(limit)).await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_in_small_fragments_gets_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let limit = 2048;
    let app = spawn_app_with(|settings| settings.websocket.max_message_bytes = limit).await;
    let user = app.user("ann").await;
    let mut ws = WsClient::connect(&app, &user.token).await;
    // Each fragment is within the limit; the message they make is not.
    let fragment = "x".repeat(limit / 2 + 1);
    let first = Frame::message(fragment.clone(), OpCode::Data(Data::Text), false);
    let last = Frame::message(fragment, OpCode::Data(Data::Continue), true);
    let _ = tokio::time::timeout(FRAME_TIMEOUT, ws.socket.send(Message::Frame(first))).await;
    let _ = tokio::time::timeout(FRAME_TIMEOUT, ws.socket.send(Message::Frame(last))).await;
    ws.expect_close(CloseCode::Size, &too_big_reason(limit)).await;
}
