//! The `plexichat` binary as its users run it: flags, profiles, exit codes, defaults
//! and shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `plexichat ARGS` with `env`, expecting it to refuse to start. One that serves
/// instead is killed after a while and fails the test rather than hanging it.
fn refused_start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let within = Duration::from_secs(30);
    let mut child = Command::new(binary("plexichat", "plexichat").unwrap())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env_remove("PLEXICHAT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?} instead of refusing to start:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A start-up refused by the machine: exit 2, one `error:` line naming each of `names`,
/// a `fix:` line, and `cause` said once (not once per layer of the error chain).
#[track_caller]
fn assert_refused_start(output: &std::process::Output, names: &[&str], cause: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    for name in names {
        assert!(
            errors[0].contains(name),
            "the error line does not name {name:?}:\n{stderr}"
        );
    }
    assert!(!errors[0].contains("built-in defaults"), "{stderr}");
    assert_eq!(stderr.matches(cause).count(), 1, "the cause {cause:?} once:\n{stderr}");
    let fixes: Vec<&str> = stderr
        .lines()
        .filter(|line| line.trim_start().starts_with("fix:"))
        .collect();
    assert_eq!(fixes.len(), 1, "one fix line expected:\n{stderr}");
    fixes[0].to_string()
}

#[test]
fn a_port_in_use_exits_2_naming_the_address_and_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let database = format!("sqlite://{}", dir.path().join("chat.db").display());
    let output = refused_start(dir.path(), &["--listen", &addr, "--database-url", &database], &[]);
    let fix = assert_refused_start(&output, &[&addr, "--listen", "server.listen"], "already in use");
    assert!(fix.contains("port 0"), "{fix}");
}

#[test]
fn an_unwritable_database_directory_exits_2_naming_the_path_and_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: unwritable even for root (CI runs as root).
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let url = format!("sqlite://{}", blocker.join("chat.db").display());
    let output = refused_start(dir.path(), &["--listen", "127.0.0.1:0", "--database-url", &url], &[]);
    let fix = assert_refused_start(
        &output,
        &[&url, "--database-url", "server.database.url"],
        "unable to open database file",
    );
    assert!(fix.contains(&format!("{} is a file", blocker.display())), "{fix}");
}

#[test]
fn a_file_that_is_not_a_database_exits_2_naming_the_variable_and_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let notes = "shopping list: milk, eggs, and a great deal more than a database header\n".repeat(20);
    std::fs::write(&path, &notes).unwrap();
    let url = format!("sqlite://{}", path.display());
    let output = refused_start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("PLEXICHAT_DATABASE_URL", &url)],
    );
    let fix = assert_refused_start(
        &output,
        &[
            &url,
            "environment variable PLEXICHAT_DATABASE_URL",
            "server.database.url",
        ],
        "file is not a database",
    );
    assert!(fix.contains(&path.display().to_string()), "{fix}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        notes,
        "the file must be left as it was"
    );
}

#[test]
fn a_rule_broken_by_an_environment_variable_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    // The rule reads both limits and reports username_min; the variable set the maximum.
    let output = refused_start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("PLEXICHAT_LIMITS__USERNAME_MAX", "2")],
    );
    assert_refused_start(
        &output,
        &[
            "environment variable PLEXICHAT_LIMITS__USERNAME_MAX",
            "server.limits.username_min",
        ],
        "is not a usable range",
    );
}

#[test]
fn an_invalid_log_filter_exits_2_naming_plexichat_log() {
    let dir = tempfile::tempdir().unwrap();
    let output = refused_start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("PLEXICHAT_LOG", "info,sqlx=loud")],
    );
    let fix = assert_refused_start(&output, &["PLEXICHAT_LOG", "info,sqlx=loud"], "is not a log filter");
    assert!(fix.contains("info"), "{fix}");
    assert!(
        !dir.path().join("plexichat.db").exists(),
        "refused before opening the database"
    );
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
