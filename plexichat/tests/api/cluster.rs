//! Several nodes as one server, on PostgreSQL (a SQLite file belongs to one process):
//! shared membership, cross-node fan-out through NATS, logout everywhere (sockets
//! included), a lost node marked down, and fan-out surviving a NATS restart.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::api::helpers::{spawn_cluster, TestApp};
use super::api::websocket::WsClient;

/// Polls `check` until it holds or `within` has passed; returns whether it held.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_statuses(app: &TestApp, token: &str) -> Vec<(String, String)> {
    let (status, nodes) = app.get("/api/v1/cluster/nodes", token).await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_node_lists_every_node_up() {
    let cluster = spawn_cluster(3).await;
    let alice = cluster.nodes[0].user("alice").await;
    let expected: Vec<(String, String)> = (0..3).map(|i| (format!("node-{i}"), "up".to_string())).collect();
    for node in &cluster.nodes {
        let listed = eventually(Duration::from_secs(5), || async {
            node_statuses(node, &alice.token).await == expected
        })
        .await;
        assert!(listed, "{:?}", node_statuses(node, &alice.token).await);
    }
}

#[tokio::test]
async fn a_message_posted_on_one_node_reaches_subscribers_on_every_node_once() {
    let cluster = spawn_cluster(3).await;
    let (first, second, third) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let alice = first.user("alice").await;
    // Accounts and tokens live in the shared database: any node accepts them.
    let bob = second.user("bob").await;
    let general = first.channel(&alice, "general").await;
    second.join(&bob, general).await;
    let mut sockets = Vec::new();
    for (node, user) in [(first, &alice), (second, &bob), (third, &bob)] {
        let mut socket = WsClient::connect(node, &user.token).await;
        socket.subscribe(general).await;
        sockets.push(socket);
    }
    let posted = third.say(&bob, general, "hello from node-2").await;
    assert_eq!(posted["node_id"], "node-2");
    for socket in &mut sockets {
        socket.expect_message(&posted).await;
    }
    for socket in &mut sockets {
        socket.expect_silence().await;
    }
}

#[tokio::test]
async fn messages_accepted_by_one_node_arrive_in_its_order_on_another() {
    let cluster = spawn_cluster(2).await;
    let alice = cluster.nodes[0].user("alice").await;
    let general = cluster.nodes[0].channel(&alice, "general").await;
    let mut socket = WsClient::connect(&cluster.nodes[1], &alice.token).await;
    socket.subscribe(general).await;
    // Concurrent posts: the node's accepted order is the order of their ids.
    let bodies: Vec<String> = (0..20).map(|n| format!("message {n}")).collect();
    let posts = bodies.iter().map(|body| cluster.nodes[0].say(&alice, general, body));
    let posted: Vec<Value> = futures_util::future::join_all(posts).await;
    let mut received = Vec::new();
    for _ in 0..posted.len() {
        let frame = socket.next_json().await;
        received.push(frame["message"]["id"].as_i64().unwrap());
    }
    let mut sorted = received.clone();
    sorted.sort();
    assert_eq!(received, sorted, "delivered out of the accepted order");
    socket.expect_silence().await;
}

#[tokio::test]
async fn logout_on_one_node_revokes_the_token_on_every_node() {
    let cluster = spawn_cluster(3).await;
    let alice = cluster.nodes[0].user("alice").await;
    // Each node has the session in its cache now.
    for node in &cluster.nodes {
        assert_eq!(node.get("/api/v1/me", &alice.token).await.0, StatusCode::OK);
    }
    let (status, _) = cluster.nodes[1]
        .post("/api/v1/auth/logout", &alice.token, Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for node in &cluster.nodes {
        let revoked = eventually(Duration::from_secs(3), || async {
            node.get("/api/v1/me", &alice.token).await.0 == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(revoked, "the token still works on {}", node.addr);
    }
}

#[tokio::test]
async fn logout_on_one_node_closes_the_tokens_sockets_on_another_with_1008() {
    let cluster = spawn_cluster(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let general = a.channel(&alice, "general").await;
    a.join(&bob, general).await;
    let mut alices = WsClient::connect(a, &alice.token).await;
    let mut bobs = WsClient::connect(a, &bob.token).await;
    alices.subscribe(general).await;
    bobs.subscribe(general).await;

    let (status, body) = b.post("/api/v1/auth/logout", &alice.token, Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logout: {body}");
    // Posted through node B after the logout: NATS keeps one publisher's events in order,
    // so node A learns of the revocation first and this message must not reach alice.
    let posted = b.say(&bob, general, "after alice left").await;
    alices.expect_close(CloseCode::Policy, "session revoked").await;
    bobs.expect_message(&posted).await;
}

#[tokio::test]
async fn a_lost_node_is_marked_down_within_the_lease_while_the_others_serve() {
    let mut cluster = spawn_cluster(3).await;
    let alice = cluster.nodes[0].user("alice").await;
    let general = cluster.nodes[0].channel(&alice, "general").await;
    let lost = cluster.nodes.pop().unwrap();
    lost.shutdown().await.unwrap();
    let lease = cluster.lease;
    let survivor = &cluster.nodes[0];
    let marked_down = eventually(lease * 3, || async {
        node_statuses(survivor, &alice.token)
            .await
            .contains(&("node-2".into(), "down".into()))
    })
    .await;
    assert!(marked_down, "{:?}", node_statuses(survivor, &alice.token).await);
    let statuses = node_statuses(survivor, &alice.token).await;
    assert!(statuses.contains(&("node-0".into(), "up".into())) && statuses.contains(&("node-1".into(), "up".into())));
    let posted = cluster.nodes[1].say(&alice, general, "still here").await;
    let (_, history) = survivor
        .get(&format!("/api/v1/channels/{general}/messages"), &alice.token)
        .await;
    assert_eq!(history[0]["id"], posted["id"]);
}

#[tokio::test]
async fn fan_out_resumes_after_nats_restarts() {
    let mut cluster = spawn_cluster(2).await;
    let alice = cluster.nodes[0].user("alice").await;
    let general = cluster.nodes[0].channel(&alice, "general").await;
    let mut socket = WsClient::connect(&cluster.nodes[1], &alice.token).await;
    socket.subscribe(general).await;

    let nats = cluster.nats.take().unwrap();
    let port = nats.port();
    drop(nats);
    // Without NATS a post is still accepted: history is the truth.
    let during = cluster.nodes[0].say(&alice, general, "while NATS is down").await;
    let program = services::host::which("nats-server").unwrap();
    cluster.nats = Some(
        tokio::task::spawn_blocking(move || services::Nats::start_on(&program, port))
            .await
            .unwrap()
            .unwrap(),
    );

    // Once both nodes have reconnected and resubscribed, posts flow again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut delivered = false;
    while !delivered && Instant::now() < deadline {
        let posted = cluster.nodes[0].say(&alice, general, "after the restart").await;
        delivered = socket
            .receives_message_within(Duration::from_millis(500), posted["id"].as_i64().unwrap())
            .await;
    }
    assert!(delivered, "no delivery within 20 s of NATS restarting");
    let (_, history) = cluster.nodes[1]
        .get(&format!("/api/v1/channels/{general}/messages?limit=200"), &alice.token)
        .await;
    let ids: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.contains(&during["id"].as_i64().unwrap()),
        "the message posted during the outage is in history"
    );
}

#[tokio::test]
async fn a_restarted_node_rejoins_as_a_new_generation() {
    let mut cluster = spawn_cluster(2).await;
    let alice = cluster.nodes[0].user("alice").await;
    let generation_of = |nodes: &Value, id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .map(|n| n["generation"].as_i64().unwrap())
    };
    let (_, before) = cluster.nodes[0].get("/api/v1/cluster/nodes", &alice.token).await;
    let first = generation_of(&before, "node-1").expect("node-1 is listed");

    cluster.nodes.pop().unwrap().shutdown().await.unwrap();
    let restarted = cluster.start_node("node-1").await;
    let rejoined = eventually(Duration::from_secs(5), || async {
        let (_, nodes) = cluster.nodes[0].get("/api/v1/cluster/nodes", &alice.token).await;
        generation_of(&nodes, "node-1").is_some_and(|generation| generation > first)
    })
    .await;
    assert!(rejoined, "node-1 must come back under a new generation");
    assert!(node_statuses(&cluster.nodes[0], &alice.token)
        .await
        .contains(&("node-1".into(), "up".into())));
    assert_eq!(
        restarted.get("/api/v1/me", &alice.token).await.0,
        StatusCode::OK,
        "sessions outlive nodes"
    );
}
