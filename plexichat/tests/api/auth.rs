//! Registration, login, logout and /api/v1/me: bodies, validation boundaries and tokens.

use std::time::{Duration, SystemTime};

use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::helpers::{assert_error, rfc3339, spawn_app, spawn_app_with, TestApp};

const PASSWORD: &str = "long-enough-password";

/// GET /api/v1/me with `authorization` sent verbatim (or no header at all).
async fn me_with_header(app: &TestApp, authorization: Option<&str>) -> (StatusCode, Value) {
    let mut request = app.client.get(app.url("/api/v1/me"));
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    app.send(request).await
}

async fn logout(app: &TestApp, token: &str) -> (StatusCode, Value) {
    app.call(Method::POST, "/api/v1/auth/logout", Some(token), None).await
}

#[track_caller]
fn assert_recent(time: SystemTime) {
    let now = SystemTime::now();
    let earliest = now - Duration::from_secs(60);
    assert!(
        (earliest..=now + Duration::from_secs(1)).contains(&time),
        "{time:?} is not around {now:?}"
    );
}

#[tokio::test]
async fn register_returns_the_new_user() {
    let app = spawn_app().await;
    let (status, user) = app.register("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert!(user["id"].as_i64().is_some(), "{user}");
    assert_eq!(user["username"], "alice");
    assert_recent(rfc3339(&user["created_at"]));
    let keys: Vec<&str> = user.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys.len(),
        3,
        "only id, username and created_at, never the password: {user}"
    );
}

#[tokio::test]
async fn register_gives_each_user_a_distinct_id() {
    let app = spawn_app().await;
    let (_, alice) = app.register("alice", PASSWORD).await;
    let (_, bob) = app.register("bob", PASSWORD).await;
    assert_ne!(alice["id"], bob["id"]);
}

#[tokio::test]
async fn register_refuses_a_taken_username_in_any_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("alice", PASSWORD).await.0, StatusCode::CREATED);
    for taken in ["alice", "ALICE", "Alice"] {
        let response = app.register(taken, "another-password").await;
        assert_error(&response, StatusCode::CONFLICT, "conflict");
    }
}

#[tokio::test]
async fn username_length_is_3_to_32_characters() {
    let app = spawn_app().await;
    for (length, ok) in [(2, false), (3, true), (32, true), (33, false)] {
        let name = "u".repeat(length);
        let response = app.register(&name, PASSWORD).await;
        if ok {
            assert_eq!(response.0, StatusCode::CREATED, "{length} chars: {}", response.1);
        } else {
            assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        }
    }
}

#[tokio::test]
async fn username_accepts_letters_digits_underscore_dot_and_dash() {
    let app = spawn_app().await;
    let (status, body) = app.register("Az09_.-x", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn username_with_other_characters_is_refused() {
    let app = spawn_app().await;
    for name in [
        "has space",
        "semi;colon",
        "émile",
        "slash/x",
        "at@x",
        "tab\tx",
        "new\nline",
    ] {
        let response = app.register(name, PASSWORD).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
}

#[tokio::test]
async fn password_length_is_8_to_128_characters() {
    let app = spawn_app().await;
    for (i, (length, ok)) in [(7, false), (8, true), (128, true), (129, false)]
        .into_iter()
        .enumerate()
    {
        let response = app.register(&format!("user{i}"), &"p".repeat(length)).await;
        if ok {
            assert_eq!(response.0, StatusCode::CREATED, "{length} chars: {}", response.1);
        } else {
            assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        }
    }
}

#[tokio::test]
async fn password_length_counts_characters_not_bytes() {
    let app = spawn_app().await;
    let (status, body) = app.register("accented", &"é".repeat(8)).await;
    assert_eq!(status, StatusCode::CREATED, "8 two-byte chars: {body}");
    let response = app.register("accented2", &"é".repeat(129)).await;
    assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn register_with_missing_or_mistyped_fields_is_a_bad_request() {
    let app = spawn_app().await;
    for body in [
        json!({"username": "alice"}),
        json!({"password": PASSWORD}),
        json!({"username": 5, "password": PASSWORD}),
        json!({"username": "alice", "password": null}),
    ] {
        let response = app.call(Method::POST, "/api/v1/auth/register", None, Some(body)).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn login_returns_a_token_that_expires_in_the_future() {
    let app = spawn_app().await;
    app.register("alice", PASSWORD).await;
    let (status, login) = app.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert!(login["token"].as_str().is_some_and(|t| !t.is_empty()), "{login}");
    assert!(rfc3339(&login["expires_at"]) > SystemTime::now(), "{login}");
}

#[tokio::test]
async fn each_login_gets_a_fresh_token() {
    let app = spawn_app().await;
    app.register("alice", PASSWORD).await;
    let (_, first) = app.login("alice", PASSWORD).await;
    let (_, second) = app.login("alice", PASSWORD).await;
    assert_ne!(first["token"], second["token"]);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_indistinguishable() {
    let app = spawn_app().await;
    app.register("alice", PASSWORD).await;
    let wrong_password = app.login("alice", "not-the-password").await;
    let unknown_user = app.login("nobody", PASSWORD).await;
    assert_error(&wrong_password, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(wrong_password, unknown_user);
}

#[tokio::test]
async fn me_returns_the_tokens_user() {
    let app = spawn_app().await;
    let (_, registered) = app.register("alice", PASSWORD).await;
    let (_, login) = app.login("alice", PASSWORD).await;
    let (status, me) = app.get("/api/v1/me", login["token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me, registered);
}

#[tokio::test]
async fn me_tells_users_apart() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    assert_eq!(app.get("/api/v1/me", &alice.token).await.1["id"], alice.id);
    assert_eq!(app.get("/api/v1/me", &bob.token).await.1["id"], bob.id);
}

#[tokio::test]
async fn me_without_a_valid_bearer_token_is_unauthorized() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let basic = format!("Basic {}", alice.token);
    let glued = format!("Bearer{}", alice.token);
    let unknown = format!("Bearer {}", "0".repeat(64));
    for header in [
        None,
        Some(basic.as_str()),
        Some("Bearer "),
        Some("Bearer"),
        Some(glued.as_str()),
        Some(unknown.as_str()),
    ] {
        let response = me_with_header(&app, header).await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[tokio::test]
async fn logout_revokes_the_token_everywhere() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    assert_eq!(app.get("/api/v1/me", &alice.token).await.0, StatusCode::OK);
    let (status, body) = logout(&app, &alice.token).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for path in ["/api/v1/me", "/api/v1/channels", "/api/v1/cluster/nodes"] {
        let response = app.get(path, &alice.token).await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let response = app
        .post("/api/v1/channels", &alice.token, json!({"name": "after-logout"}))
        .await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn expired_token_is_unauthorized() {
    let app = spawn_app_with(|settings| settings.auth.token_ttl = Duration::from_secs(1)).await;
    app.register("alice", PASSWORD).await;
    let (_, login) = app.login("alice", PASSWORD).await;
    let token = login["token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/me", token).await.0, StatusCode::OK);
    let expires_at = rfc3339(&login["expires_at"]);
    let until_expired = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(until_expired + Duration::from_millis(50)).await;
    let response = app.get("/api/v1/me", token).await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn logout_twice_is_unauthorized() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    assert_eq!(logout(&app, &alice.token).await.0, StatusCode::NO_CONTENT);
    let response = logout(&app, &alice.token).await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn logout_leaves_the_users_other_sessions_working() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let (_, other) = app.login("alice", &alice.password).await;
    let other_token = other["token"].as_str().unwrap();
    assert_eq!(logout(&app, &alice.token).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/me", other_token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn logout_without_a_token_is_unauthorized() {
    let app = spawn_app().await;
    let response = app.call(Method::POST, "/api/v1/auth/logout", None, None).await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
}
