//! Channels: creating, listing, fetching, joining and leaving, and who may do it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::helpers::{assert_error, rfc3339, spawn_app, TestApp, TestUser};

async fn create(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.post("/api/v1/channels", &user.token, body).await
}

async fn fetch(app: &TestApp, user: &TestUser, channel: i64) -> Value {
    let (status, body) = app.get(&format!("/api/v1/channels/{channel}"), &user.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn leave(app: &TestApp, user: &TestUser, channel: i64) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/channels/{channel}/leave"), &user.token, Value::Null)
        .await
}

async fn post_message(app: &TestApp, user: &TestUser, channel: i64) -> (StatusCode, Value) {
    let path = format!("/api/v1/channels/{channel}/messages");
    app.post(&path, &user.token, json!({"body": "hi"})).await
}

#[tokio::test]
async fn create_returns_the_channel_with_its_creator_as_only_member() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let (status, channel) = create(&app, &alice, json!({"name": "general"})).await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    assert!(channel["id"].as_i64().is_some(), "{channel}");
    assert_eq!(channel["name"], "general");
    assert_eq!(channel["created_by"], alice.id);
    rfc3339(&channel["created_at"]);
    assert_eq!(channel["member_count"], 1);
}

#[tokio::test]
async fn creator_can_post_at_once() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    assert_eq!(post_message(&app, &alice, channel).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn create_refuses_a_taken_name() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.channel(&alice, "general").await;
    let response = create(&app, &bob, json!({"name": "general"})).await;
    assert_error(&response, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn channel_name_is_1_to_64_characters_not_blank() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for name in [String::new(), "   ".into(), " \t\n ".into(), "c".repeat(65)] {
        let response = create(&app, &alice, json!({"name": name})).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    for name in ["c".repeat(64), "ü".repeat(64), "x".into()] {
        let (status, body) = create(&app, &alice, json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{} chars: {body}", name.chars().count());
    }
}

#[tokio::test]
async fn create_with_missing_or_mistyped_name_is_a_bad_request() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for body in [
        json!({}),
        json!({"name": 5}),
        json!({"name": null}),
        json!({"name": ["a"]}),
        json!("general"),
    ] {
        let response = create(&app, &alice, body).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn list_returns_every_channel_ordered_by_id() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let zeta = app.channel(&alice, "zeta").await;
    let beta = app.channel(&bob, "beta").await;
    let alpha = app.channel(&alice, "alpha").await;
    let (status, list) = app.get("/api/v1/channels", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert_eq!(ids, [zeta, beta, alpha]);
    assert_eq!(names, ["zeta", "beta", "alpha"]);
}

#[tokio::test]
async fn list_is_empty_before_any_channel_exists() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    assert_eq!(
        app.get("/api/v1/channels", &alice.token).await,
        (StatusCode::OK, json!([]))
    );
}

#[tokio::test]
async fn get_returns_the_channel_as_created() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (_, created) = create(&app, &alice, json!({"name": "general"})).await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(fetch(&app, &bob, id).await, created);
}

#[tokio::test]
async fn get_unknown_channel_is_not_found() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let response = app.get("/api/v1/channels/999999", &alice.token).await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn non_numeric_channel_id_is_a_bad_request() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for path in [
        "/api/v1/channels/abc",
        "/api/v1/channels/1.5",
        "/api/v1/channels/99999999999999999999",
    ] {
        let response = app.get(path, &alice.token).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let response = app.post("/api/v1/channels/abc/join", &alice.token, Value::Null).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn join_is_idempotent_and_counts_a_member_once() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let channel = app.channel(&alice, "general").await;
    assert_eq!(fetch(&app, &bob, channel).await["member_count"], 1);
    app.join(&bob, channel).await;
    app.join(&bob, channel).await;
    app.join(&alice, channel).await;
    assert_eq!(fetch(&app, &bob, channel).await["member_count"], 2);
    let (_, list) = app.get("/api/v1/channels", &bob.token).await;
    assert_eq!(list[0]["member_count"], 2, "{list}");
    assert_eq!(post_message(&app, &bob, channel).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn join_unknown_channel_is_not_found() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let response = app
        .post("/api/v1/channels/999999/join", &alice.token, Value::Null)
        .await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn leave_ends_membership() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let channel = app.channel(&alice, "general").await;
    app.join(&bob, channel).await;
    assert_eq!(post_message(&app, &bob, channel).await.0, StatusCode::CREATED);
    assert_eq!(fetch(&app, &alice, channel).await["member_count"], 2);
    let (status, body) = leave(&app, &bob, channel).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_error(
        &post_message(&app, &bob, channel).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(fetch(&app, &alice, channel).await["member_count"], 1);
}

#[tokio::test]
async fn rejoining_after_leaving_restores_membership() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    assert_eq!(leave(&app, &alice, channel).await.0, StatusCode::NO_CONTENT);
    app.join(&alice, channel).await;
    assert_eq!(post_message(&app, &alice, channel).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn leave_unknown_channel_is_not_found() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    assert_error(&leave(&app, &alice, 999999).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn every_channel_route_needs_a_token() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let id = app.channel(&alice, "general").await;
    let routes = [
        (Method::GET, "/api/v1/channels".to_string()),
        (Method::POST, "/api/v1/channels".to_string()),
        (Method::GET, format!("/api/v1/channels/{id}")),
        (Method::POST, format!("/api/v1/channels/{id}/join")),
        (Method::POST, format!("/api/v1/channels/{id}/leave")),
        (Method::GET, format!("/api/v1/channels/{id}/messages")),
        (Method::POST, format!("/api/v1/channels/{id}/messages")),
    ];
    for (method, path) in routes {
        let body = (method == Method::POST).then(|| json!({"name": "x", "body": "x"}));
        let response = app.call(method.clone(), &path, None, body).await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}
