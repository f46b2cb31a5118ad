//! Connections no client can pin down (header-read and idle timeouts, TCP keepalive, a
//! shutdown deadline) and the JSON body on errors made below the handlers (hyper's 400,
//! 414 and 431, the router's 405). Raw TCP, because HTTP clients would not misbehave.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::helpers::{assert_error, spawn_app_with, TestApp};

/// The timeout under test; the others are set far longer so that only it can act.
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(300);
/// How long a test waits for the server to act on a one-second timeout before calling
/// it not done at all: generous, since a loaded machine may run late.
const PATIENCE: Duration = Duration::from_secs(20);

/// How the server ended a connection, as its client sees it.
#[derive(Debug)]
enum Ended {
    /// Closed (end of stream, or reset) after this long.
    Closed(Duration),
    /// Still open when the test gave up.
    StillOpen,
}

/// Reads until the server closes `stream` (answering nothing) or `PATIENCE` runs out.
async fn wait_for_close(stream: &mut TcpStream, since: Instant) -> Ended {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
        Err(_) => Ended::StillOpen,
        Ok(Ok(0)) | Ok(Err(_)) => Ended::Closed(since.elapsed()),
        Ok(Ok(n)) => panic!("unexpected answer: {}", String::from_utf8_lossy(&buf[..n])),
    }
}

#[track_caller]
fn assert_closed_after(ended: Ended, timeout: Duration, what: &str) {
    match ended {
        // A timer never fires early, and the server's clock started after ours.
        Ended::Closed(after) => assert!(after >= timeout, "{what}: closed after {after:?}, before its timeout"),
        Ended::StillOpen => panic!("{what}: still open after {PATIENCE:?}"),
    }
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected_after_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = SHORT;
        s.http.idle_timeout = LONG;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // A byte now and then, never the end of the head.
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let ended = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Ended::Closed(started.elapsed()),
                Ok(n) => panic!("unexpected answer: {}", String::from_utf8_lossy(&buf[..n])),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"a").await.is_err() {
                    break Ended::Closed(started.elapsed());
                }
            }
            _ = tokio::time::sleep_until(deadline) => break Ended::StillOpen,
        }
    };
    assert_closed_after(ended, SHORT, "a trickled request head");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = SHORT;
        s.http.idle_timeout = LONG;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let ended = wait_for_close(&mut stream, Instant::now()).await;
    assert_closed_after(ended, SHORT, "a silent connection");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = LONG;
        s.http.idle_timeout = SHORT;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    let ended = wait_for_close(&mut stream, Instant::now()).await;
    assert_closed_after(ended, SHORT, "an idle keep-alive connection");
}

#[tokio::test]
async fn a_keep_alive_connection_serves_requests_within_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = SHORT;
        s.http.idle_timeout = LONG;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Each pause is longer than the header timeout: between requests only idle time counts.
    for _ in 0..2 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        tokio::time::sleep(SHORT * 2).await;
    }
}

#[tokio::test]
async fn websockets_are_not_cut_by_the_http_timeouts() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = SHORT;
        s.http.idle_timeout = SHORT;
    })
    .await;
    let user = app.user("alice").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url(&user.token))
        .await
        .expect("WebSocket handshake");
    tokio::time::sleep(SHORT * 3).await;
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("socket still open");
    let reply = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a reply")
        .expect("socket still open")
        .expect("a frame");
    assert_eq!(reply.into_text().unwrap().as_str(), r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn a_half_sent_request_head_does_not_block_shutdown_past_the_deadline() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = LONG;
        s.http.shutdown_timeout = SHORT;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Served: the server has the connection before it is told to stop.
    assert_eq!(
        app.call(reqwest::Method::GET, "/health", None, None).await.0,
        StatusCode::OK
    );
    let stopped = tokio::time::timeout(PATIENCE, app.shutdown())
        .await
        .unwrap_or_else(|_| panic!("shutdown still waiting after {PATIENCE:?} on a half-sent request"));
    stopped.expect("shutdown is clean");
    assert!(
        matches!(wait_for_close(&mut stream, Instant::now()).await, Ended::Closed(_)),
        "the half-sent connection was left open"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn accepted_sockets_have_tcp_keepalive() {
    let app = spawn_app_with(|s| s.http.tcp_keepalive = Duration::from_secs(7)).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Answered: the server has accepted and set up its side.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    let (keepalive, idle) =
        server_side_keepalive(app.addr, stream.local_addr().unwrap()).expect("the server's socket of this connection");
    assert!(keepalive, "SO_KEEPALIVE is off on the server's socket");
    assert_eq!(idle, Duration::from_secs(7), "TCP_KEEPIDLE is not the configured one");
}

/// SO_KEEPALIVE and TCP_KEEPIDLE of the server's socket for the connection `server`–`client`,
/// found among this process's descriptors (the server runs inside the test process).
#[cfg(target_os = "linux")]
fn server_side_keepalive(server: SocketAddr, client: SocketAddr) -> Option<(bool, Duration)> {
    use std::os::fd::{BorrowedFd, RawFd};
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(fd) = entry.ok()?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: the descriptor is only queried (getsockname, getpeername, getsockopt),
        // which is harmless on any descriptor, open, closed or reused meanwhile; a match
        // on both addresses is the server's socket, which stays open while `client` is.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let addresses = (socket.local_addr(), socket.peer_addr());
        let (Ok(local), Ok(peer)) = addresses else {
            continue;
        };
        if local.as_socket() == Some(server) && peer.as_socket() == Some(client) {
            return Some((socket.keepalive().ok()?, socket.tcp_keepalive_time().ok()?));
        }
    }
    None
}

#[tokio::test]
async fn a_malformed_request_is_a_json_400() {
    let app = spawn_app_with(|_| {}).await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
        b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let response = exchange(&app, request).await;
        response.assert_error(400, "invalid_request");
    }
}

#[tokio::test]
async fn a_uri_over_the_limit_is_a_json_414() {
    let app = spawn_app_with(|s| s.http.max_uri_bytes = 2048).await;
    let request = format!(
        "GET /health?pad={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(2048)
    );
    exchange(&app, request.as_bytes())
        .await
        .assert_error(414, "uri_too_long");
    let request = format!(
        "GET /health?pad={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(1900)
    );
    assert_eq!(exchange(&app, request.as_bytes()).await.status, 200, "under the limit");
    // The default limit is 8 KiB.
    let app = spawn_app_with(|_| {}).await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    exchange(&app, request.as_bytes())
        .await
        .assert_error(414, "uri_too_long");
}

#[tokio::test]
async fn hypers_own_414_gets_the_json_body_too() {
    // A head limit over hyper's fixed 64 KiB URI limit lets hyper answer by itself.
    let app = spawn_app_with(|s| {
        s.http.max_uri_bytes = 128 * 1024;
        s.http.max_header_bytes = 256 * 1024;
    })
    .await;
    let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    exchange(&app, request.as_bytes())
        .await
        .assert_error(414, "uri_too_long");
}

#[tokio::test]
async fn a_head_over_the_limit_is_a_json_431() {
    let app = spawn_app_with(|s| s.http.max_header_bytes = 16 * 1024).await;
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    exchange(&app, huge.as_bytes())
        .await
        .assert_error(431, "headers_too_large");
    let many: String = (0..150).map(|n| format!("X-Field-{n}: a\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    exchange(&app, many.as_bytes())
        .await
        .assert_error(431, "headers_too_large");
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let app = spawn_app_with(|_| {}).await;
    let response = exchange(
        &app,
        b"DELETE /api/v1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    response.assert_error(405, "method_not_allowed");
    let allow = response.header("allow").expect("405 without Allow");
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow}");
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{self:?}: {text}");
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "{self:?}");
        let json: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{status}: body is not JSON ({err}): {text:?}"));
        let status = StatusCode::from_u16(status).unwrap();
        assert_error(&(status, json), status, code);
    }
}

/// Sends `request` as it is on a new connection; reads one response.
async fn exchange(app: &TestApp, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request).await.expect("request written");
    read_response(&mut stream).await
}

/// Reads one response with a `content-length` body.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(response) = parse_response(&bytes) {
                return response;
            }
            let n = stream.read(&mut buf).await.expect("response read");
            assert!(
                n > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("a response in time")
}

fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let body = bytes.get(end + 4..end + 4 + length)?.to_vec();
    Some(RawResponse { status, headers, body })
}
