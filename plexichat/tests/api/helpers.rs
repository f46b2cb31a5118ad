//! `spawn_app()` and a thin client for the API, shared by every test module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use plexichat::config::{AuthSettings, DatabaseSettings, Settings};
use plexichat::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use services::{Durability, Nats, Postgres};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::api_backend::Backend;

pub(crate) struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    postgres: Option<Postgres>,
    /// The tmpfs holding a SQLite database, for tests that fill or break its disk.
    disk: Option<Tmpfs>,
    _dir: tempfile::TempDir,
}

/// Settings every test starts from: a fresh database file, a free port, cheap hashing.
pub(crate) fn test_settings(dir: &std::path::Path) -> Settings {
    let defaults = Settings::default();
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some("test-node".into()),
        database: DatabaseSettings {
            url: format!("sqlite://{}", dir.join("test.db").display()),
            ..defaults.database.clone()
        },
        auth: AuthSettings {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            ..defaults.auth.clone()
        },
        ..defaults
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Where the PostgreSQL template (an initdb'd data directory) is kept between runs.
fn postgres_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("services")
}

/// Spawns a server after `configure` has adjusted the test settings.
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(dir.path());
    let postgres = match super::BACKEND {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let postgres = start_postgres().await;
            settings.database.url = postgres.url("postgres");
            Some(postgres)
        }
    };
    configure(&mut settings);
    start(settings, dir, postgres).await
}

/// Spawns a SQLite server whose database lives alone on a fresh tmpfs of `size`.
pub(crate) async fn spawn_app_on_tmpfs(size: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(Tmpfs::mount(size), configure).await
}

/// Spawns a SQLite server whose database (`test.db`) lives on `disk`.
pub(crate) async fn spawn_app_on(disk: Tmpfs, configure: impl FnOnce(&mut Settings)) -> TestApp {
    assert_eq!(
        super::BACKEND,
        Backend::Sqlite,
        "only SQLite keeps its database on a local disk"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(disk.dir.path());
    configure(&mut settings);
    let mut app = start(settings, dir, None).await;
    app.disk = Some(disk);
    app
}

async fn start_postgres() -> Postgres {
    tokio::task::spawn_blocking(|| Postgres::start(&postgres_cache(), Durability::Fast))
        .await
        .expect("postgres start-up task")
        .expect("PostgreSQL starts (fix: cargo xtask doctor --fix)")
}

async fn start(settings: Settings, dir: tempfile::TempDir, postgres: Option<Postgres>) -> TestApp {
    settings.validate().expect("test settings are valid");
    let server = Server::bind(settings).await.expect("server binds");
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(server.run_until(async move { stopped.cancelled().await }));
    TestApp {
        addr,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop,
        server: Some(server),
        postgres,
        disk: None,
        _dir: dir,
    }
}

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted on drop (which
/// also discards whatever immutable file a test left there).
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = format!("size={size},mode=0700");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|err| {
            panic!(
                "mounting a {size} tmpfs for the failing-disk tests: {err} \
                 (fix: run the tests as root, as CI does)"
            )
        });
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn free_bytes(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(self.dir.path()).expect("statvfs of the tmpfs");
        stats.blocks_available() as u64 * stats.fragment_size() as u64
    }
}

impl Tmpfs {
    /// Fills the disk with a file until at most `room` bytes are left; returns the file,
    /// whose removal frees the disk again.
    pub(crate) fn fill_leaving(&self, room: u64) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path("filler");
        let mut file = std::fs::File::create(&filler).expect("creating the filler file");
        let chunk = vec![0u8; 64 * 1024];
        while self.free_bytes() > room {
            let size = (self.free_bytes() - room).min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..size]).is_err() {
                break; // full
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still closing its files must not leave the mount behind.
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

/// Nodes sharing one database and one NATS server, as a cluster does.
#[allow(dead_code)] // only the PostgreSQL copy of the suite runs clusters
pub(crate) struct Cluster {
    pub nodes: Vec<TestApp>,
    pub nats: Option<Nats>,
    pub lease: Duration,
    database_url: String,
    _postgres: Option<Postgres>,
    _dir: tempfile::TempDir,
}

/// Starts `size` nodes named node-0, node-1, … with a short membership lease.
#[allow(dead_code)] // only the PostgreSQL copy of the suite runs clusters
pub(crate) async fn spawn_cluster(size: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let (postgres, database_url) = match super::BACKEND {
        // Several nodes may share one SQLite file, as long as they share one machine.
        Backend::Sqlite => (None, format!("sqlite://{}", dir.path().join("cluster.db").display())),
        Backend::Postgres => {
            let postgres = start_postgres().await;
            let url = postgres.url("postgres");
            (Some(postgres), url)
        }
    };
    let nats = tokio::task::spawn_blocking(Nats::start)
        .await
        .expect("nats start-up task")
        .expect("nats-server starts (fix: cargo xtask doctor --fix)");
    let mut cluster = Cluster {
        nodes: Vec::new(),
        nats: Some(nats),
        lease: Duration::from_secs(1),
        database_url,
        _postgres: postgres,
        _dir: dir,
    };
    for index in 0..size {
        let node = cluster.start_node(&format!("node-{index}")).await;
        cluster.nodes.push(node);
    }
    cluster
}

#[allow(dead_code)] // only the PostgreSQL copy of the suite runs clusters
impl Cluster {
    /// Starts a node with `node_id` on the cluster's database and NATS.
    pub(crate) async fn start_node(&self, node_id: &str) -> TestApp {
        let node_dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(node_dir.path());
        settings.database.url = self.database_url.clone();
        settings.cluster.nats_url = self.nats.as_ref().map(Nats::url);
        settings.cluster.heartbeat_interval = Duration::from_millis(200);
        settings.cluster.lease = self.lease;
        settings.node_id = Some(node_id.into());
        start(settings, node_dir, None).await
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub(crate) struct TestUser {
    pub id: i64,
    pub username: String,
    pub password: String,
    pub token: String,
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The tmpfs under a server from `spawn_app_on_tmpfs`.
    pub(crate) fn disk(&self) -> &Tmpfs {
        self.disk.as_ref().expect("the app was spawned on a tmpfs")
    }

    /// Makes the database refuse service until the returned outage is ended: SQLite's
    /// disk is filled (the app must have been spawned on a tmpfs); PostgreSQL's processes
    /// are frozen.
    pub(crate) async fn database_outage(&self) -> Outage {
        match &self.postgres {
            Some(postgres) => {
                postgres.freeze().expect("freezing postgres");
                Outage::Frozen(postgres.pid())
            }
            None => Outage::DiskFull(self.disk().fill_leaving(0)),
        }
    }

    pub(crate) fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/api/v1/ws?token={}", self.addr, token)
    }

    /// Sends a request; `body` is JSON when given. Returns status and parsed JSON
    /// (`Value::Null` for an empty body).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body read");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                panic!(
                    "{status}: body is not JSON ({err}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub(crate) async fn register(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({"username": username, "password": password});
        self.call(Method::POST, "/api/v1/auth/register", None, Some(body)).await
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({"username": username, "password": password});
        self.call(Method::POST, "/api/v1/auth/login", None, Some(body)).await
    }

    /// Registers and logs in `username` with a valid password.
    pub(crate) async fn user(&self, username: &str) -> TestUser {
        let password = format!("{username}-password");
        let (status, registered) = self.register(username, &password).await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {registered}");
        let (status, login) = self.login(username, &password).await;
        assert_eq!(status, StatusCode::OK, "login {username}: {login}");
        TestUser {
            id: registered["id"].as_i64().unwrap(),
            username: username.to_string(),
            password,
            token: login["token"].as_str().unwrap().to_string(),
        }
    }

    /// Creates a channel owned by `owner`; returns its id.
    pub(crate) async fn channel(&self, owner: &TestUser, name: &str) -> i64 {
        let (status, channel) = self.post("/api/v1/channels", &owner.token, json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "create channel {name}: {channel}");
        channel["id"].as_i64().unwrap()
    }

    pub(crate) async fn join(&self, user: &TestUser, channel: i64) {
        let (status, body) = self
            .post(&format!("/api/v1/channels/{channel}/join"), &user.token, Value::Null)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "join {channel}: {body}");
    }

    /// Posts a message; returns the created message.
    pub(crate) async fn say(&self, user: &TestUser, channel: i64, body: &str) -> Value {
        let (status, message) = self
            .post(
                &format!("/api/v1/channels/{channel}/messages"),
                &user.token,
                json!({"body": body}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "post to {channel}: {message}");
        message
    }

    /// Stops the server gracefully and waits for it.
    pub(crate) async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.take().expect("running").await?
    }
}

pub(crate) enum Outage {
    DiskFull(PathBuf),
    Frozen(u32),
}

impl Outage {
    pub(crate) async fn end(self) {
        match self {
            Outage::DiskFull(filler) => std::fs::remove_file(filler).expect("freeing the disk"),
            Outage::Frozen(group) => services::thaw(group).expect("thawing postgres"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Asserts API.md's error body with the given status and code.
#[track_caller]
pub(crate) fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (actual, body) = response;
    assert_eq!(*actual, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message missing: {body}"
    );
}

impl TestApp {
    /// Sends a prepared request (for raw bodies or unusual headers); returns status and
    /// parsed JSON like `call` does.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body read");
        if bytes.is_empty() {
            return (status, Value::Null);
        }
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!(
                "{status}: body is not JSON ({err}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    /// POSTs `body` exactly as given, JSON or not.
    pub(crate) async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }
}

/// Parses an RFC 3339 UTC time from a JSON string, failing the test when it is not one.
#[track_caller]
pub(crate) fn rfc3339(value: &Value) -> std::time::SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("`{text}` is not RFC 3339 UTC: {err}"))
}
