//! The `plexichat` binary as its users run it: flags, profiles, exit codes, defaults
//! and shutdown on SIGTERM.

use std::process::Command;
use std::time::Duration;

use plexichat_e2e::{binary, http_get, start_server, workspace_root};

fn plexichat(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("plexichat", "plexichat").unwrap())
        .args(args)
        .current_dir(dir)
        .env_remove("PLEXICHAT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let output = plexichat(dir.path(), &["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("plexichat {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_profile_exits_2_naming_file_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("broken.yaml");
    std::fs::write(&profile, "server:\n  rate_limits:\n    api_per_secnd: 5\n").unwrap();
    let output = plexichat(dir.path(), &["serve", "--config", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    assert!(stderr.contains("server.rate_limits.api_per_secnd"), "{stderr}");
    assert!(stderr.contains("fix:") && stderr.contains("api_per_second"), "{stderr}");
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = plexichat(dir.path(), &["--database-url", "mysql://db/chat"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(stderr.contains("sqlite://"), "{stderr}");
}

#[test]
fn a_bad_environment_value_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary("plexichat", "plexichat").unwrap())
        .current_dir(dir.path())
        .env("PLEXICHAT_COMPRESSION__LEVEL", "42")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("PLEXICHAT_COMPRESSION__LEVEL"), "{stderr}");
    assert!(stderr.contains("server.compression.level"), "{stderr}");
}

#[test]
fn shipped_profiles_start_a_server() {
    for profile in ["dev", "production", "bench"] {
        let dir = tempfile::tempdir().unwrap();
        let path = workspace_root().join(format!("profiles/{profile}.yaml"));
        let database = format!("sqlite://{}", dir.path().join("p.db").display());
        let args = [
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ];
        let server = start_server(dir.path(), &args).unwrap();
        let (status, body) = http_get(server.addr, "/ready").unwrap();
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "ready"})),
            "profile {profile}"
        );
        server.terminate(Duration::from_secs(20)).unwrap();
    }
}

#[test]
fn default_serve_creates_and_migrates_plexichat_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--listen", "127.0.0.1:0", "--node-id", "e2e"]).unwrap();
    let (status, health) = http_get(server.addr, "/health").unwrap();
    assert_eq!(status, 200);
    assert_eq!(health["node_id"], "e2e");
    assert!(dir.path().join("plexichat.db").is_file(), "no ./plexichat.db");
    let (status, _) = http_get(server.addr, "/ready").unwrap();
    assert_eq!(status, 200, "the database must be migrated and answering");
    server.terminate(Duration::from_secs(20)).unwrap();
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--listen", "127.0.0.1:0"]).unwrap();
    assert_eq!(http_get(server.addr, "/health").unwrap().0, 200);
    // terminate() returns once the process exited 0; its last words are still readable.
    server.terminate(Duration::from_secs(20)).unwrap();
    server.wait_for_log("shutting down", Duration::from_secs(10)).unwrap();
    server.wait_for_log("stopped", Duration::from_secs(10)).unwrap();
    assert!(
        http_get(server.addr, "/health").is_err(),
        "the port must be closed after exit"
    );
}

#[test]
fn a_closed_log_pipe_does_not_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--listen", "127.0.0.1:0"]).unwrap();
    // Whoever read the logs went away: every later log line meets a closed pipe.
    server.close_log();
    assert_eq!(http_get(server.addr, "/health").unwrap().0, 200);
    server
        .terminate(Duration::from_secs(20))
        .expect("a clean exit despite the closed log pipe");
}
