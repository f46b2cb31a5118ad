//! Posting messages and paging through history: validation, membership and paging.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::helpers::{assert_error, rfc3339, spawn_app, TestApp, TestUser};

fn messages_path(channel: i64) -> String {
    format!("/api/v1/channels/{channel}/messages")
}

async fn post(app: &TestApp, user: &TestUser, channel: i64, body: Value) -> (StatusCode, Value) {
    app.post(&messages_path(channel), &user.token, body).await
}

/// GET history with `query` appended as it is (e.g. `?limit=10`).
async fn history(app: &TestApp, user: &TestUser, channel: i64, query: &str) -> (StatusCode, Value) {
    app.get(&format!("{}{query}", messages_path(channel)), &user.token)
        .await
}

/// A page's message ids, failing the test unless the request succeeded.
async fn page_ids(app: &TestApp, user: &TestUser, channel: i64, query: &str) -> Vec<i64> {
    let (status, page) = history(app, user, channel, query).await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page.as_array()
        .unwrap_or_else(|| panic!("not an array: {page}"))
        .iter()
        .map(|message| message["id"].as_i64().unwrap())
        .collect()
}

/// Posts `count` messages numbered from 0; returns their ids in posting order.
async fn say_many(app: &TestApp, user: &TestUser, channel: i64, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        ids.push(
            app.say(user, channel, &format!("message {n}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    ids
}

/// An app with alice, who owns `general`.
async fn alice_in_general() -> (TestApp, TestUser, i64) {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    (app, alice, channel)
}

#[tokio::test]
async fn post_returns_the_stored_message() {
    let (app, alice, channel) = alice_in_general().await;
    let (status, message) = post(&app, &alice, channel, json!({"body": "hello"})).await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert!(message["id"].as_i64().is_some(), "{message}");
    assert_eq!(message["channel_id"], channel);
    assert_eq!(message["author_id"], alice.id);
    assert_eq!(message["author"], "alice");
    assert_eq!(message["body"], "hello");
    assert_eq!(message["node_id"], "test-node");
    rfc3339(&message["created_at"]);
    assert_eq!(history(&app, &alice, channel, "").await.1, json!([message]));
}

#[tokio::test]
async fn post_trims_the_body() {
    let (app, alice, channel) = alice_in_general().await;
    let message = app.say(&alice, channel, " \n\thello there \t\n").await;
    assert_eq!(message["body"], "hello there");
}

#[tokio::test]
async fn post_by_a_non_member_is_forbidden() {
    let (app, _alice, channel) = alice_in_general().await;
    let bob = app.user("bob").await;
    let response = post(&app, &bob, channel, json!({"body": "let me in"})).await;
    assert_error(&response, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn post_to_an_unknown_channel_is_not_found() {
    let (app, alice, _channel) = alice_in_general().await;
    let response = post(&app, &alice, 999999, json!({"body": "hello"})).await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn empty_blank_or_too_long_body_is_refused() {
    let (app, alice, channel) = alice_in_general().await;
    for body in [String::new(), " \n\t ".into(), "m".repeat(4001), "é".repeat(4001)] {
        let response = post(&app, &alice, channel, json!({"body": body})).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    assert!(page_ids(&app, &alice, channel, "").await.is_empty());
}

#[tokio::test]
async fn body_of_4000_characters_is_accepted_whatever_their_byte_length() {
    let (app, alice, channel) = alice_in_general().await;
    for body in [
        "m".repeat(4000),
        "é".repeat(4000),
        "😀".repeat(4000),
        format!("  {}  ", "m".repeat(4000)),
    ] {
        let message = app.say(&alice, channel, &body).await;
        assert_eq!(message["body"].as_str().unwrap(), body.trim());
    }
}

#[tokio::test]
async fn malformed_or_mistyped_body_is_a_bad_request() {
    let (app, alice, channel) = alice_in_general().await;
    let path = messages_path(channel);
    for raw in [
        r#"{"body": "unterminated"#,
        "{}",
        r#"{"body": 5}"#,
        r#"{"body": null}"#,
        r#"{"text": "hi"}"#,
        "",
        "hello",
    ] {
        let response = app.post_raw(&path, Some(&alice.token), raw).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert!(page_ids(&app, &alice, channel, "").await.is_empty());
}

#[tokio::test]
async fn history_is_newest_first() {
    let (app, alice, channel) = alice_in_general().await;
    let mut posted = say_many(&app, &alice, channel, 5).await;
    posted.reverse();
    assert_eq!(page_ids(&app, &alice, channel, "").await, posted);
}

#[tokio::test]
async fn history_returns_50_messages_by_default() {
    let (app, alice, channel) = alice_in_general().await;
    let posted = say_many(&app, &alice, channel, 55).await;
    let newest_50: Vec<i64> = posted.iter().rev().take(50).copied().collect();
    assert_eq!(page_ids(&app, &alice, channel, "").await, newest_50);
}

#[tokio::test]
async fn limit_caps_the_page_from_1_to_200() {
    let (app, alice, channel) = alice_in_general().await;
    let posted = say_many(&app, &alice, channel, 3).await;
    assert_eq!(page_ids(&app, &alice, channel, "?limit=1").await, [posted[2]]);
    assert_eq!(page_ids(&app, &alice, channel, "?limit=200").await.len(), 3);
}

#[tokio::test]
async fn bad_paging_parameters_are_a_bad_request() {
    let (app, alice, channel) = alice_in_general().await;
    for query in [
        "?limit=0",
        "?limit=201",
        "?limit=-1",
        "?limit=abc",
        "?limit=",
        "?limit=99999999999",
        "?before=abc",
        "?before=99999999999999999999",
        "?before=1.5",
    ] {
        let response = history(&app, &alice, channel, query).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn before_pages_back_without_gaps_or_duplicates() {
    let (app, alice, channel) = alice_in_general().await;
    let posted = say_many(&app, &alice, channel, 25).await;
    let mut seen = Vec::new();
    let mut query = "?limit=10".to_string();
    let mut page_sizes = Vec::new();
    loop {
        let page = page_ids(&app, &alice, channel, &query).await;
        if page.is_empty() {
            break;
        }
        assert!(page_sizes.len() < 5, "paging does not end: {seen:?}");
        page_sizes.push(page.len());
        query = format!("?limit=10&before={}", page.last().unwrap());
        seen.extend(page);
    }
    assert_eq!(page_sizes, [10, 10, 5]);
    let newest_first: Vec<i64> = posted.into_iter().rev().collect();
    assert_eq!(seen, newest_first);
}

#[tokio::test]
async fn before_the_oldest_message_is_an_empty_page() {
    let (app, alice, channel) = alice_in_general().await;
    let posted = say_many(&app, &alice, channel, 2).await;
    let query = format!("?before={}", posted[0]);
    assert!(page_ids(&app, &alice, channel, &query).await.is_empty());
}

#[tokio::test]
async fn history_of_a_channel_you_are_not_in_is_forbidden() {
    let (app, alice, channel) = alice_in_general().await;
    app.say(&alice, channel, "alice's secret").await;
    let bob = app.user("bob").await;
    let response = history(&app, &bob, channel, "").await;
    assert_error(&response, StatusCode::FORBIDDEN, "forbidden");
    assert!(!response.1.to_string().contains("secret"), "{}", response.1);
}

#[tokio::test]
async fn history_after_leaving_is_forbidden() {
    let (app, _alice, channel) = alice_in_general().await;
    let bob = app.user("bob").await;
    app.join(&bob, channel).await;
    app.say(&bob, channel, "hello").await;
    let path = format!("/api/v1/channels/{channel}/leave");
    assert_eq!(app.post(&path, &bob.token, Value::Null).await.0, StatusCode::NO_CONTENT);
    let response = history(&app, &bob, channel, "").await;
    assert_error(&response, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn history_of_an_unknown_channel_is_not_found() {
    let (app, alice, _channel) = alice_in_general().await;
    let response = history(&app, &alice, 999999, "").await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn history_holds_only_its_own_channels_messages() {
    let (app, alice, general) = alice_in_general().await;
    let bob = app.user("bob").await;
    let private = app.channel(&bob, "private").await;
    let alices = say_many(&app, &alice, general, 3).await;
    let bobs = app.say(&bob, private, "bob's secret").await;
    let before_everything = format!("?before={}", i64::MAX);
    let seen_by_alice = page_ids(&app, &alice, general, &before_everything).await;
    assert_eq!(seen_by_alice, alices.into_iter().rev().collect::<Vec<_>>());
    assert_eq!(page_ids(&app, &bob, private, "").await, [bobs["id"].as_i64().unwrap()]);
}

#[tokio::test]
async fn members_see_each_others_messages_with_the_right_author() {
    let (app, alice, channel) = alice_in_general().await;
    let bob = app.user("bob").await;
    app.join(&bob, channel).await;
    app.say(&alice, channel, "hi bob").await;
    app.say(&bob, channel, "hi alice").await;
    let (_, page) = history(&app, &bob, channel, "").await;
    let authors: Vec<(&Value, &Value)> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (&m["author"], &m["author_id"]))
        .collect();
    assert_eq!(
        authors,
        [(&json!("bob"), &json!(bob.id)), (&json!("alice"), &json!(alice.id))]
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_writes_recover_when_it_returns() {
    let configure = |settings: &mut plexichat::config::Settings| {
        // How long a write waits before the node gives up on the database.
        settings.database.busy_timeout = std::time::Duration::from_millis(100);
        settings.database.acquire_timeout = std::time::Duration::from_millis(500);
        settings.http.request_timeout = std::time::Duration::from_secs(2);
    };
    // SQLite's outage is a full disk: its database needs a disk of its own.
    let app = match super::BACKEND {
        super::helpers::Backend::Sqlite => super::helpers::spawn_app_on_tmpfs("8m", configure).await,
        super::helpers::Backend::Postgres => super::helpers::spawn_app_with(configure).await,
    };
    let alice = app.user("alice").await;
    let general = app.channel(&alice, "general").await;

    let outage = app.database_outage().await;
    let refused = post(&app, &alice, general, json!({"body": "during the outage"})).await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // A frozen PostgreSQL answers nothing; SQLite on a full disk still serves reads but
    // refused the write: either way the node is not ready while writes fail.
    let ready = app.call(reqwest::Method::GET, "/ready", None, None).await;
    assert_error(&ready, StatusCode::SERVICE_UNAVAILABLE, "unavailable");

    outage.end().await;
    let (status, message) = post(&app, &alice, general, json!({"body": "after"})).await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(
        app.call(reqwest::Method::GET, "/ready", None, None).await.0,
        StatusCode::OK
    );
    let bodies: Vec<Value> = history(&app, &alice, general, "").await.1.as_array().unwrap().clone();
    let texts: Vec<&str> = bodies.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert!(texts.contains(&"after"), "{texts:?}");
    assert!(!texts.contains(&"during the outage") || texts.len() == 2, "{texts:?}");
}
