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
    assert_eq!(body["version"], plexichat::version());
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

async fn openapi_document(app: &TestApp) -> serde_json::Value {
    let (status, document) = app.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    document
}

/// The property `field` of the request schema `schema`.
#[track_caller]
fn schema_property<'a>(document: &'a serde_json::Value, schema: &str, field: &str) -> &'a serde_json::Value {
    let property = &document["components"]["schemas"][schema]["properties"][field];
    assert!(property.is_object(), "no {schema}.{field} in the document");
    property
}

/// The request schema an operation's JSON body refers to.
#[track_caller]
fn body_schema_name(document: &serde_json::Value, method: &str, path: &str) -> String {
    let reference = &document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    let name = reference.as_str().and_then(|r| r.strip_prefix("#/components/schemas/"));
    name.unwrap_or_else(|| panic!("{method} {path} has no JSON body schema: {reference}"))
        .to_string()
}

#[track_caller]
fn assert_lengths(property: &serde_json::Value, min: u64, max: u64) {
    assert_eq!(property["minLength"], min, "{property}");
    assert_eq!(property["maxLength"], max, "{property}");
}

/// The property's pattern, compiled: JSON Schema patterns match anywhere unless anchored.
#[track_caller]
fn pattern_of(property: &serde_json::Value) -> regex::Regex {
    let pattern = property["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("no pattern: {property}"));
    regex::Regex::new(pattern).unwrap_or_else(|err| panic!("pattern {pattern:?}: {err}"))
}

/// A text field limited to 1..=`max` characters after trimming: its pattern must accept
/// exactly what the server accepts, since `maxLength` cannot say "after trimming".
#[track_caller]
fn assert_trimmed_limit(property: &serde_json::Value, max: usize) {
    let pattern = pattern_of(property);
    let longest = "x".repeat(max);
    for accepted in [
        "x".to_string(),
        longest.clone(),
        format!(" \n{longest}\t\u{3000}"),
        "a b".into(),
    ] {
        assert!(
            pattern.is_match(&accepted),
            "{pattern} refuses {} chars",
            accepted.chars().count()
        );
    }
    for refused in [
        String::new(),
        " \t\n".into(),
        "\u{a0}".into(),
        format!("{longest}y"),
        format!(" {longest}y "),
    ] {
        assert!(!pattern.is_match(&refused), "{pattern} accepts {refused:?}");
    }
}

#[tokio::test]
async fn openapi_pages_with_optional_query_parameters() {
    let app = spawn_app().await;
    let document = openapi_document(&app).await;
    let parameters = document["paths"]["/api/v1/channels/{id}/messages"]["get"]["parameters"]
        .as_array()
        .expect("the paging operation has parameters");
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` parameter in {parameters:?}"))
    };
    for name in ["before", "limit"] {
        assert_eq!(parameter(name)["in"], "query", "{}", parameter(name));
        assert_ne!(parameter(name)["required"], true, "{}", parameter(name));
    }
    let limit = &parameter("limit")["schema"];
    assert_eq!(
        (&limit["type"], &limit["minimum"], &limit["maximum"]),
        (&json!("integer"), &json!(1), &json!(200))
    );
    assert_eq!(parameter("id")["in"], "path");
}

#[tokio::test]
async fn openapi_states_the_contracts_limits() {
    let app = spawn_app().await;
    let document = openapi_document(&app).await;
    let registration = body_schema_name(&document, "post", "/api/v1/auth/register");
    let username = schema_property(&document, &registration, "username");
    assert_lengths(username, 3, 32);
    let pattern = pattern_of(username);
    assert!(
        pattern.is_match("a_b.c-D9") && !pattern.is_match("a b") && !pattern.is_match("émile"),
        "{pattern}"
    );
    assert_lengths(schema_property(&document, &registration, "password"), 8, 128);
    let channel = body_schema_name(&document, "post", "/api/v1/channels");
    assert_trimmed_limit(schema_property(&document, &channel, "name"), 64);
    let message = body_schema_name(&document, "post", "/api/v1/channels/{id}/messages");
    assert_trimmed_limit(schema_property(&document, &message, "body"), 4000);
    // Logging in must keep working for accounts made under other limits.
    let login = body_schema_name(&document, "post", "/api/v1/auth/login");
    assert!(schema_property(&document, &login, "username")["maxLength"].is_null());
}

#[tokio::test]
async fn openapi_states_the_limits_the_profile_configures() {
    let app = spawn_app_with(|settings| {
        settings.limits.username_min = 5;
        settings.limits.username_max = 12;
        settings.limits.password_min = 12;
        settings.limits.password_max = 40;
        settings.limits.channel_name_max = 10;
        settings.limits.message_body_max = 280;
    })
    .await;
    let document = openapi_document(&app).await;
    let registration = body_schema_name(&document, "post", "/api/v1/auth/register");
    assert_lengths(schema_property(&document, &registration, "username"), 5, 12);
    assert_lengths(schema_property(&document, &registration, "password"), 12, 40);
    let channel = body_schema_name(&document, "post", "/api/v1/channels");
    assert_trimmed_limit(schema_property(&document, &channel, "name"), 10);
    let message = body_schema_name(&document, "post", "/api/v1/channels/{id}/messages");
    assert_trimmed_limit(schema_property(&document, &message, "body"), 280);
    // What the document promises, the server keeps.
    let alice = app.user("alice").await;
    let channel = app.channel(&alice, " ten-chars! ").await;
    let path = format!("/api/v1/channels/{channel}/messages");
    let (status, _) = app.post(&path, &alice.token, json!({"body": "m".repeat(280)})).await;
    assert_eq!(status, StatusCode::CREATED);
    let response = app.post(&path, &alice.token, json!({"body": "m".repeat(281)})).await;
    assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn openapi_documents_every_status_with_the_error_body() {
    let app = spawn_app().await;
    let document = openapi_document(&app).await;
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let responses = &operation["responses"];
            let authenticated = operation["security"].is_array();
            let with_id = path.contains("{id}");
            let with_body = !operation["requestBody"].is_null();
            // Every route runs under the request timeout (503); the rest follow from
            // what the route takes.
            let expected = [
                ("503", true),
                ("401", authenticated),
                ("429", authenticated),
                ("500", authenticated),
                ("400", with_id || with_body),
                ("404", with_id),
                ("413", with_body),
            ];
            for (status, applies) in expected {
                if applies && responses[status].is_null() {
                    missing.push(format!("{} {path}: {status}", method.to_uppercase()));
                }
            }
            for (status, response) in responses.as_object().expect("responses") {
                let is_error = status.starts_with('4') || status.starts_with('5');
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if is_error && schema != "#/components/schemas/ErrorBody" {
                    missing.push(format!(
                        "{} {path}: {status} without the error body",
                        method.to_uppercase()
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:#?}");
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
    assert_eq!(node["version"], plexichat::version());
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
