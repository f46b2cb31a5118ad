//! The embedded store on a failing disk: SQLite on a small tmpfs that the test mounts and
//! fills, a write-ahead log that cannot be written, a shared-memory file that cannot be
//! written. API.md's promise holds throughout: every post is either 201 and stored (and
//! delivered) or 503 and neither, `/ready` says so while writes fail, the node keeps
//! answering, and it recovers by itself when the disk does.
//!
//! Mounting a tmpfs needs root (CI runs as root); without it these tests fail, loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use services::process::{self, cmd};

use super::api::helpers::{assert_error, spawn_app_on, spawn_app_on_tmpfs, TestApp, TestUser, Tmpfs};
use super::api::websocket::WsClient;

/// How long the node may take to notice that the disk recovered (it heartbeats every
/// second, and a successful write ends the failure).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Sets or clears the immutable attribute: even root cannot write an immutable file.
fn set_immutable(path: &Path, immutable: bool) {
    let flag = if immutable { "+i" } else { "-i" };
    let sh = process::shell().expect("a current directory");
    if let Err(err) = process::run(cmd!(sh, "chattr {flag} {path}")) {
        panic!("chattr {flag} {} (e2fsprogs) failed: {err:#}", path.display());
    }
}

/// Clears the immutable attribute again when a test ends, pass or fail.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: PathBuf) -> Self {
        set_immutable(&path, true);
        Self(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let path = &self.0;
        if let Ok(sh) = process::shell() {
            let _ = process::run(cmd!(sh, "chattr -i {path}"));
        }
    }
}

/// A server whose database is alone on a tmpfs of `size`; rate limits off, since the
/// tests post in bursts.
async fn app_on_tmpfs(size: &str) -> TestApp {
    spawn_app_on_tmpfs(size, |settings| {
        settings.rate_limits.enabled = false;
        settings.http.request_timeout = Duration::from_secs(5);
    })
    .await
}

/// What the posts of a test got: the acknowledged ones by id, and how many were refused.
#[derive(Default)]
struct Outcomes {
    acknowledged: BTreeMap<i64, String>,
    refused: usize,
}

impl Outcomes {
    /// Posts `body`; a 201 must carry a new id, anything else must be API.md's 503.
    async fn post(&mut self, app: &TestApp, user: &TestUser, channel: i64, body: String) {
        let response = app
            .post(
                &format!("/api/v1/channels/{channel}/messages"),
                &user.token,
                json!({ "body": body }),
            )
            .await;
        if response.0 == StatusCode::CREATED {
            let id = response.1["id"].as_i64().expect("a 201 carries the message id");
            assert_eq!(response.1["body"], body.as_str(), "201 body: {}", response.1);
            let earlier = self.acknowledged.insert(id, body);
            assert!(earlier.is_none(), "id {id} was acknowledged twice");
        } else {
            assert_error(&response, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            self.refused += 1;
        }
    }
}

async fn ready_status(app: &TestApp) -> (StatusCode, Value) {
    app.call(Method::GET, "/ready", None, None).await
}

/// Waits until `/ready` answers 200, failing the test after `RECOVERY_TIMEOUT`.
async fn wait_until_ready(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let (status, body) = ready_status(app).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not become ready again after the disk recovered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of `channel`, paged back from the newest, by id.
async fn stored(app: &TestApp, user: &TestUser, channel: i64) -> BTreeMap<i64, String> {
    let mut stored = BTreeMap::new();
    let mut before = String::new();
    loop {
        let (status, page) = app
            .get(
                &format!("/api/v1/channels/{channel}/messages?limit=200{before}"),
                &user.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "history: {page}");
        let page = page.as_array().expect("a page is an array").clone();
        let Some(oldest) = page.last() else { return stored };
        before = format!("&before={}", oldest["id"]);
        for message in page {
            let body = message["body"].as_str().expect("body").to_string();
            stored.insert(message["id"].as_i64().expect("id"), body);
        }
    }
}

/// The ids of the message frames `socket` receives until the one with `last_id`.
async fn delivered_until(socket: &mut WsClient, last_id: i64) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    loop {
        let frame = socket.next_json().await;
        assert_eq!(frame["type"], "message", "unexpected frame: {frame}");
        let id = frame["message"]["id"].as_i64().expect("message id");
        assert!(ids.insert(id), "message {id} was delivered twice");
        if id == last_id {
            return ids;
        }
    }
}

/// After the disk recovered: one more post is acknowledged, and then history holds
/// exactly the acknowledged messages and subscribers got exactly those.
async fn assert_nothing_acknowledged_was_lost(
    app: &TestApp,
    alice: &TestUser,
    channel: i64,
    socket: &mut WsClient,
    mut outcomes: Outcomes,
) {
    wait_until_ready(app).await;
    let refused_before = outcomes.refused;
    outcomes
        .post(app, alice, channel, "after the disk recovered".into())
        .await;
    assert_eq!(
        outcomes.refused, refused_before,
        "a post after recovery must be acknowledged"
    );
    let last_id = *outcomes.acknowledged.keys().next_back().expect("acknowledged");

    assert_eq!(
        stored(app, alice, channel).await,
        outcomes.acknowledged,
        "history must hold exactly the acknowledged messages"
    );
    let delivered = delivered_until(socket, last_id).await;
    let acknowledged: BTreeSet<i64> = outcomes.acknowledged.keys().copied().collect();
    assert_eq!(
        delivered, acknowledged,
        "subscribers must get exactly the acknowledged messages"
    );
}

#[tokio::test]
async fn a_full_disk_refuses_posts_with_503_and_loses_no_acknowledged_one() {
    let app = app_on_tmpfs("2m").await;
    let disk = app.disk();
    let alice = app.user("alice").await;
    let general = app.channel(&alice, "general").await;
    let mut socket = WsClient::connect(&app, &alice.token).await;
    socket.subscribe(general).await;

    // Leave room for a few dozen posts, then send far more than fit.
    let filler = disk.fill_leaving(160 * 1024);
    let mut outcomes = Outcomes::default();
    for index in 0..300 {
        let body = format!("{index:04} {}", "x".repeat(3_895));
        outcomes.post(&app, &alice, general, body).await;
    }
    assert!(
        outcomes.refused > 0,
        "the disk never filled: every post was acknowledged"
    );
    assert!(
        !outcomes.acknowledged.is_empty(),
        "no post fitted before the disk filled"
    );

    let (status, body) = ready_status(&app).await;
    assert_error(&(status, body), StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "the node must keep answering on a full disk");
    // Other writes are refused the same way, not with a 500.
    let refused_login = app.login(&alice.username, &alice.password).await;
    assert_error(&refused_login, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let refused_channel = app
        .post("/api/v1/channels", &alice.token, json!({"name": "full"}))
        .await;
    assert_error(&refused_channel, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        !disk.path("test.db-shm").exists(),
        "the WAL index must not live in a memory-mapped file, whose faults kill the process"
    );

    std::fs::remove_file(&filler).expect("freeing the disk");
    assert_nothing_acknowledged_was_lost(&app, &alice, general, &mut socket, outcomes).await;
}

#[tokio::test]
async fn a_write_ahead_log_made_immutable_loses_no_acknowledged_post() {
    let app = app_on_tmpfs("16m").await;
    let disk = app.disk();
    let alice = app.user("alice").await;
    let general = app.channel(&alice, "general").await;
    let mut socket = WsClient::connect(&app, &alice.token).await;
    socket.subscribe(general).await;
    let mut outcomes = Outcomes::default();
    outcomes.post(&app, &alice, general, "before".into()).await;
    assert_eq!(outcomes.refused, 0, "the first post must be acknowledged");

    let wal = disk.path("test.db-wal");
    assert!(wal.exists(), "the store journals to a write-ahead log");
    // Whether a write to the already open log still succeeds is the kernel's business;
    // what counts is that each post is either acknowledged and kept, or refused.
    let frozen = Immutable::set(wal);
    for index in 0..20 {
        outcomes
            .post(&app, &alice, general, format!("while frozen {index}"))
            .await;
    }
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "the node must keep answering");
    if outcomes.refused > 0 {
        let (status, body) = ready_status(&app).await;
        assert_error(&(status, body), StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }

    drop(frozen);
    assert_nothing_acknowledged_was_lost(&app, &alice, general, &mut socket, outcomes).await;
}

#[tokio::test]
async fn a_shared_memory_file_that_cannot_be_written_does_not_kill_the_node() {
    let disk = Tmpfs::mount("16m");
    // As a crashed run may leave it behind, and then made unwritable: SQLite's usual
    // shared-memory index would be mapped from this file and fault.
    let shm = disk.path("test.db-shm");
    std::fs::write(&shm, b"").expect("creating the -shm file");
    let _frozen = Immutable::set(shm);
    let app = spawn_app_on(disk, |settings| settings.rate_limits.enabled = false).await;
    let alice = app.user("alice").await;
    let general = app.channel(&alice, "general").await;
    let mut socket = WsClient::connect(&app, &alice.token).await;
    socket.subscribe(general).await;
    let mut outcomes = Outcomes::default();
    for index in 0..200 {
        outcomes.post(&app, &alice, general, format!("message {index}")).await;
    }
    assert_eq!(outcomes.refused, 0, "the -shm file is not needed to take writes");
    assert_nothing_acknowledged_was_lost(&app, &alice, general, &mut socket, outcomes).await;
}
