//! Rate limits, the body size limit, gzip compression and the framework's own errors.

use std::io::Read;
use std::time::Duration;

use flate2::read::GzDecoder;
use reqwest::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::{assert_error, spawn_app, spawn_app_with, TestApp, TestUser};

/// A small body limit for the body-limit tests, so that bodies stay small too.
const BODY_LIMIT: usize = 2048;

/// A `{"name": "…"}` body of exactly `size` bytes.
fn channel_body_of(size: usize) -> String {
    let overhead = r#"{"name":""}"#.len();
    format!(r#"{{"name":"{}"}}"#, "n".repeat(size - overhead))
}

/// Asserts a 429 with API.md's error body and a `Retry-After` of whole seconds > 0.
async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .expect("429 without Retry-After")
        .to_str()
        .unwrap()
        .to_string();
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After `{retry_after}` is not whole seconds"));
    assert!(seconds > 0, "Retry-After: {retry_after}");
    let body: Value = response.json().await.expect("JSON error body");
    assert_error(
        &(StatusCode::TOO_MANY_REQUESTS, body),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
}

/// Sends `count` failed logins; returns the statuses.
async fn failed_logins(app: &TestApp, count: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(app.login("nobody", "wrong-password").await.0);
    }
    statuses
}

async fn get_me(app: &TestApp, user: &TestUser) -> reqwest::Response {
    let request = app.client.get(app.url("/api/v1/me")).bearer_auth(&user.token);
    request.send().await.expect("request sent")
}

/// POSTs a JSON body with `Transfer-Encoding: chunked` over a raw connection; returns
/// the response status and body text.
async fn post_chunked(app: &TestApp, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    let mut request = head.into_bytes();
    for chunk in body.chunks(256) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("request written");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("response read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, text)
}

/// An app where alice has posted about 2 KiB of messages; returns the history path.
async fn app_with_long_history(
    configure: impl FnOnce(&mut plexichat::config::Settings),
) -> (TestApp, TestUser, String) {
    let app = spawn_app_with(configure).await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    for n in 0..5 {
        app.say(&alice, channel, &format!("{n}: {}", "lorem ipsum ".repeat(40)))
            .await;
    }
    (app, alice, format!("/api/v1/channels/{channel}/messages"))
}

async fn get_with_gzip(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path)).header(ACCEPT_ENCODING, "gzip");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

#[tokio::test]
async fn the_31st_login_or_register_in_a_minute_is_rate_limited() {
    let app = spawn_app().await;
    let statuses = failed_logins(&app, 30).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    let body = json!({"username": "alice", "password": "long-enough-password"});
    for route in ["/api/v1/auth/login", "/api/v1/auth/register"] {
        let response = app.client.post(app.url(route)).json(&body).send().await.unwrap();
        assert_rate_limited(response).await;
    }
}

#[tokio::test]
async fn auth_rate_limit_can_be_turned_off() {
    let app = spawn_app_with(|settings| settings.rate_limits.enabled = false).await;
    let statuses = failed_logins(&app, 40).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
}

#[tokio::test]
async fn api_rate_limit_is_per_user_with_a_burst() {
    let app = spawn_app_with(|settings| {
        settings.rate_limits.api_per_second = 1;
        settings.rate_limits.api_burst = 3;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..3 {
        assert_eq!(get_me(&app, &alice).await.status(), StatusCode::OK);
    }
    assert_rate_limited(get_me(&app, &alice).await).await;
    assert_eq!(
        get_me(&app, &bob).await.status(),
        StatusCode::OK,
        "bob has his own budget"
    );
}

#[tokio::test]
async fn body_over_the_default_64_kib_is_refused() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let body = channel_body_of(64 * 1024 + 1);
    let response = app.post_raw("/api/v1/channels", Some(&alice.token), body).await;
    assert_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn body_over_the_configured_limit_is_refused() {
    let app = spawn_app_with(|settings| settings.http.max_body_bytes = BODY_LIMIT).await;
    let alice = app.user("alice").await;
    let response = app
        .post_raw("/api/v1/channels", Some(&alice.token), channel_body_of(BODY_LIMIT + 1))
        .await;
    assert_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn body_at_the_limit_is_read_and_validated() {
    let app = spawn_app_with(|settings| settings.http.max_body_bytes = BODY_LIMIT).await;
    let alice = app.user("alice").await;
    for size in [BODY_LIMIT - 1, BODY_LIMIT] {
        let response = app
            .post_raw("/api/v1/channels", Some(&alice.token), channel_body_of(size))
            .await;
        // The name is far too long: refused for what it says, not for its size.
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused() {
    let app = spawn_app_with(|settings| settings.http.max_body_bytes = BODY_LIMIT).await;
    let alice = app.user("alice").await;
    let body = channel_body_of(BODY_LIMIT + 512);
    let (status, text) = post_chunked(&app, "/api/v1/channels", &alice.token, body.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(r#""code":"payload_too_large""#), "{text}");
}

#[tokio::test]
async fn chunked_body_under_the_limit_is_accepted() {
    let app = spawn_app_with(|settings| settings.http.max_body_bytes = BODY_LIMIT).await;
    let alice = app.user("alice").await;
    let body = json!({"name": "chunked"}).to_string();
    let (status, text) = post_chunked(&app, "/api/v1/channels", &alice.token, body.as_bytes()).await;
    assert_eq!(status, 201, "{text}");
}

#[tokio::test]
async fn large_response_is_gzipped_when_the_client_accepts_it() {
    let (app, alice, path) = app_with_long_history(|_| {}).await;
    let (status, plain) = app.get(&path, &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        plain.to_string().len() >= 1024,
        "test response too small to be compressed"
    );
    let response = get_with_gzip(&app, &path, Some(&alice.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let compressed = response.bytes().await.unwrap();
    let mut decoded = String::new();
    GzDecoder::new(&compressed[..])
        .read_to_string(&mut decoded)
        .expect("valid gzip");
    let decoded: Value = serde_json::from_str(&decoded).expect("gzip holds JSON");
    assert_eq!(decoded, plain);
}

#[tokio::test]
async fn small_response_is_not_compressed() {
    let app = spawn_app().await;
    let response = get_with_gzip(&app, "/health", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    let body: Value = response.json().await.expect("plain JSON");
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn nothing_is_compressed_without_accept_encoding() {
    let (app, alice, path) = app_with_long_history(|_| {}).await;
    let response = app
        .client
        .get(app.url(&path))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    let body: Value = response.json().await.expect("plain JSON");
    assert_eq!(body.as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn compression_threshold_is_configurable() {
    let app = spawn_app_with(|settings| settings.compression.min_size_bytes = 16).await;
    let response = get_with_gzip(&app, "/health", None).await;
    assert_eq!(
        response.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let (app, alice, path) = app_with_long_history(|settings| settings.compression.enabled = false).await;
    let response = get_with_gzip(&app, &path, Some(&alice.token)).await;
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn unknown_route_is_a_json_not_found() {
    let app = spawn_app().await;
    for path in ["/nope", "/api/v1/nope", "/api/v2/channels", "/api/v1/channels/1/nope"] {
        let response = app.call(Method::GET, path, None, None).await;
        assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/api/v1/channels"),
        (Method::GET, "/api/v1/auth/login"),
        (Method::PUT, "/api/v1/me"),
    ] {
        let request = app.client.request(method, app.url(path));
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(response.headers().contains_key(ALLOW), "405 without Allow for {path}");
        let body: Value = response.json().await.expect("JSON error body");
        assert!(body["error"]["code"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn body_that_is_not_json_is_a_bad_request() {
    let app = spawn_app().await;
    let response = app.post_raw("/api/v1/auth/register", None, "hello").await;
    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    let alice = app.user("alice").await;
    for body in ["hello", "", "{\"name\": \"trailing\"} garbage", "\u{0}\u{1}"] {
        let response = app.post_raw("/api/v1/channels", Some(&alice.token), body).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn body_that_is_json_but_not_an_object_is_a_bad_request() {
    let app = spawn_app().await;
    for body in [r#"["alice", "alice-password"]"#, "42", "null", r#""alice""#] {
        let response = app.post_raw("/api/v1/auth/register", None, body).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, _) = app.login("alice", "alice-password").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the array body must not have registered anyone"
    );
}
