//! /health, /ready, /metrics, the OpenAPI document, cluster membership and graceful shutdown.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::net::TcpStream;

use super::helpers::{assert_error, rfc3339, spawn_app, spawn_app_with, TestApp};

/// Every route of API.md's Operations table, as method and path template.
const DOCUMENTED_ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("post", "/api/v1/channels"),
    ("get", "/api/v1/channels"),
    ("get", "/api/v1/channels/{id}"),
    ("post", "/api/v1/channels/{id}/join"),
    ("post", "/api/v1/channels/{id}/leave"),
    ("post", "/api/v1/channels/{id}/messages"),
    ("get", "/api/v1/channels/{id}/messages"),
    ("get", "/api/v1/cluster/nodes"),
    ("get", "/api/v1/ws"),
];

async fn metrics_text(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The label sets of every sample of `name` in a Prometheus text exposition.
fn samples(text: &str, name: &str) -> Vec<HashMap<String, String>> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let labels = &rest[..rest.rfind('}').expect("closing brace")];
            labels
                .split("\",")
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(key, value)| (key.to_string(), value.trim_end_matches('"').to_string()))
                .collect()
        })
        .collect()
}

#[track_caller]
fn assert_has_metric(text: &str, name: &str) {
    assert!(
        text.lines()
            .any(|line| line.starts_with(name) && !line.starts_with('#')),
        "/metrics has no `{name}` sample"
    );
}

#[tokio::test]
async fn health_names_the_node_and_version() {
    let app = spawn_app().await;
    let (status, body) = app.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node_id"], "test-node");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn ready_when_the_database_answers() {
    let app = spawn_app().await;
    let response = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(response, (StatusCode::OK, json!({"status": "ready"})));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    let path = format!("/api/v1/channels/{channel}");
    assert_eq!(app.get(&path, &alice.token).await.0, StatusCode::OK);
    let text = metrics_text(&app).await;
    let requests = samples(&text, "http_requests_total");
    let expected = HashMap::from([
        ("method".to_string(), "GET".to_string()),
        ("route".to_string(), "/api/v1/channels/{id}".to_string()),
        ("status".to_string(), "200".to_string()),
    ]);
    assert!(requests.contains(&expected), "no {expected:?} in {requests:?}");
    assert!(
        requests.iter().all(|labels| labels.get("route") != Some(&path)),
        "a raw path became a route label: {requests:?}"
    );
}

#[tokio::test]
async fn metrics_time_requests_in_a_histogram() {
    let app = spawn_app().await;
    app.call(Method::GET, "/health", None, None).await;
    let text = metrics_text(&app).await;
    let buckets = samples(&text, "http_request_duration_seconds_bucket");
    assert!(
        buckets
            .iter()
            .any(|labels| labels.get("route").is_some_and(|r| r == "/health") && labels.contains_key("le")),
        "no /health bucket in {buckets:?}"
    );
}

#[tokio::test]
async fn metrics_include_the_servers_own_counters() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, "general").await;
    app.say(&alice, channel, "counted").await;
    app.say(&alice, channel, "counted again").await;
    let text = metrics_text(&app).await;
    for name in [
        "plexichat_messages_posted_total",
        "plexichat_cache_hits_total",
        "plexichat_cache_misses_total",
        "plexichat_db_query_duration_seconds_bucket",
    ] {
        assert_has_metric(&text, name);
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = spawn_app_with(|settings| settings.metrics.enabled = false).await;
    let response = app.call(Method::GET, "/metrics", None, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn openapi_documents_every_route_of_the_contract() {
    let app = spawn_app().await;
    let (status, document) = app.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3: {}",
        document["openapi"]
    );
    let missing: Vec<String> = DOCUMENTED_ROUTES
        .iter()
        .filter(|(method, path)| document["paths"][path][method].is_null())
        .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
        .collect();
    assert!(missing.is_empty(), "OpenAPI document lacks {missing:?}");
}

#[tokio::test]
async fn cluster_nodes_lists_this_node_as_up() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let (status, nodes) = app.get("/api/v1/cluster/nodes", &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["node_id"] == "test-node")
        .unwrap_or_else(|| panic!("this node is not listed: {nodes}"));
    assert_eq!(node["status"], "up");
    assert_eq!(node["addr"], app.addr.to_string());
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    let last_seen = rfc3339(&node["last_seen"]);
    assert!(last_seen <= SystemTime::now() + Duration::from_secs(1), "{node}");
}

#[tokio::test]
async fn cluster_nodes_needs_a_token() {
    let app = spawn_app().await;
    let response = app.call(Method::GET, "/api/v1/cluster/nodes", None, None).await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn shutdown_is_clean_and_closes_the_port() {
    let app = spawn_app().await;
    let addr = app.addr;
    assert_eq!(app.call(Method::GET, "/health", None, None).await.0, StatusCode::OK);
    let stopped = tokio::time::timeout(Duration::from_secs(15), app.shutdown())
        .await
        .expect("shutdown finishes");
    stopped.expect("shutdown is clean");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts connections"
    );
}
