//! The served OpenAPI document against the server behind it: schemathesis, with every
//! check, generates requests from the document and asserts that the answers match it
//! (statuses, bodies, headers), that what the document calls invalid is refused and what
//! it calls valid is accepted. Installed from PyPI into the target directory on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use plexichat_e2e::{start_server, ServerProcess};
use serde_json::{json, Value};

/// Pinned, so that a new release's new checks show up as a deliberate upgrade.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Test cases per operation and phase: enough to reach every status and limit, few
/// enough to finish in seconds on a busy two-core machine.
const MAX_EXAMPLES: &str = "40";

#[test]
fn the_served_openapi_document_holds_under_schemathesis() {
    let schemathesis = install_schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("schemathesis.yaml");
    // Rate limits would turn thousands of generated requests into 429s; cheap hashing
    // keeps the hundreds of registrations fast.
    std::fs::write(
        &profile,
        "server:\n  rate_limits:\n    enabled: false\n  auth:\n    argon2_memory_kib: 256\n    argon2_iterations: 1\n",
    )
    .unwrap();
    let database = format!("sqlite://{}", dir.path().join("chat.db").display());
    let args = [
        "--config",
        profile.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database,
    ];
    let server = start_server(dir.path(), &args).unwrap();
    let fixture = Fixture::create(&server);
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, fixture.config()).unwrap();

    let started = Instant::now();
    let output = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&config)
        .args(["run", "--checks", "all", "--max-examples", MAX_EXAMPLES, "--no-color"])
        .args(["--request-timeout", "10"])
        .args(["-H", &format!("Authorization: Bearer {}", fixture.token)])
        .arg(format!("{}/api/v1/openapi.json", server.url()))
        // Its example database and reports land here, not in the workspace.
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    eprintln!("schemathesis took {:.1?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis failed:\n{}",
        both_streams(&output)
    );

    // The run must have been authenticated throughout, or it tested only 401s.
    let (status, me) = call(&server, "GET", "/api/v1/me", Some(&fixture.token), None);
    assert_eq!(status, 200, "the run's token stopped working: {me}");
    server
        .terminate(Duration::from_secs(20))
        .expect("the server survives the run and exits cleanly");
}

/// What the run needs in the database: a user, its tokens and channels it belongs to.
struct Fixture {
    /// Sent with every request.
    token: String,
    /// Only for logout, which revokes the token it is sent with.
    logout_token: String,
    /// The channel the operations on `{id}` use, so they reach past the 404.
    channel: i64,
    /// The channel `leave` uses: leaving `channel` would turn every later post into a 403.
    leave_channel: i64,
}

impl Fixture {
    fn create(server: &ServerProcess) -> Self {
        let credentials = json!({"username": "schemathesis", "password": "schemathesis-password"});
        let (status, body) = call(server, "POST", "/api/v1/auth/register", None, Some(&credentials));
        assert_eq!(status, 201, "register: {body}");
        let login = || {
            let (status, body) = call(server, "POST", "/api/v1/auth/login", None, Some(&credentials));
            assert_eq!(status, 200, "login: {body}");
            body["token"].as_str().expect("a token").to_string()
        };
        let (token, logout_token) = (login(), login());
        let channel = |name: &str| {
            let (status, body) = call(
                server,
                "POST",
                "/api/v1/channels",
                Some(&token),
                Some(&json!({"name": name})),
            );
            assert_eq!(status, 201, "create channel {name}: {body}");
            body["id"].as_i64().expect("a channel id")
        };
        Self {
            channel: channel("general"),
            leave_channel: channel("leaving"),
            token,
            logout_token,
        }
    }

    fn config(&self) -> String {
        format!(
            r#"
[dictionaries.channel]
values = [{channel}]
[dictionaries.leave_channel]
values = [{leave_channel}]

# Mostly the fixture's channel, sometimes generated ids (unknown ones, 404).
[parameters]
"path.id" = {{ dictionary = "channel", probability = 0.8 }}

# A run that only saw 401s, 404s or refused patterns tested little: fail it.
[warnings]
fail-on = ["missing_auth", "missing_test_data", "unsupported_regex", "validation_mismatch", "unresolvable_reference"]

[[operations]]
include-path = "/api/v1/auth/logout"
headers = {{ Authorization = "Bearer {logout_token}" }}

[[operations]]
include-path = "/api/v1/channels/{{id}}/leave"
parameters = {{ "path.id" = {{ dictionary = "leave_channel", probability = 0.8 }} }}

# schemathesis speaks HTTP, not WebSocket: it can only see the upgrade refused (the
# WebSocket tests cover the rest), so a run where every token it made up was refused
# says nothing about authentication.
[[operations]]
include-path = "/api/v1/ws"
warnings = false
"#,
            channel = self.channel,
            leave_channel = self.leave_channel,
            logout_token = self.logout_token,
        )
    }
}

fn call(server: &ServerProcess, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    xtask::system::http::request(server.addr, method, path, token, body)
        .unwrap_or_else(|err| panic!("{method} {path}: {err:#}"))
}

fn both_streams(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `schemathesis` executable, from PyPI into a virtual environment of the tests'.
fn install_schemathesis() -> PathBuf {
    let venv = plexichat_e2e::python_venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[&format!("schemathesis=={SCHEMATHESIS_VERSION}")],
        "the OpenAPI contract cannot be checked without schemathesis",
    );
    venv.join("bin/schemathesis")
}
