//! Helpers for driving the workspace's binaries from outside, as a user would.
// A unit-test build sees the dev-dependencies too; the plain library build is checked.
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use services::process::{self, Signal};
pub use services::ServerProcess;

/// What a run printed on stderr, for assertions and their messages.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The string `field` of each object in the JSON array `array` (a panic naming the field
/// when `array` is not an array or an object lacks it): a report's names, ids, faults.
pub fn strings_at<'a>(array: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .map(|object| {
            object[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string `{field}` in {object}"))
        })
        .collect()
}

/// The one JSON document a `--json` run printed on stdout; a panic quoting both streams
/// when stdout is anything else.
pub fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON document ({err}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            stderr_of(output)
        )
    })
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// The path of `bin` (of `package`) as the README's test command builds it, built first
/// if needed, once per test process: tests must run the binary of the source they test.
///
/// It is built by the test command itself (`cargo test --workspace --all-targets --no-run`),
/// a no-op when that command is what runs the tests: `plexichat`'s and `xtask`'s own
/// integration tests make it build their executables. `cargo build -p PACKAGE` would
/// resolve the package's features alone, differently from the whole workspace's test
/// build, and compile the binary and most of its dependencies a second time.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*built {
        let output = process::cargo()
            .args(["test", "--workspace", "--all-targets", "--no-run", "--quiet"])
            .current_dir(workspace_root())
            .output()
            .context("running cargo test --no-run")?;
        if !output.status.success() {
            bail!(
                "cargo test --workspace --all-targets --no-run failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        *built = true;
    }
    // This test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let path = profile_dir.join(bin);
    if !path.is_file() {
        bail!(
            "{} is not built: is `{bin}` a binary of the package {package}?",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `plexichat serve ARGS` in `dir` through the toolchain's own server runner.
pub fn start_server(dir: &Path, args: &[&str]) -> Result<ServerProcess> {
    let mut command = Command::new(binary("plexichat", "plexichat")?);
    command.arg("serve").args(args).current_dir(dir);
    ServerProcess::start(command, Duration::from_secs(30))
}

/// GET `path`: the status and the JSON body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, serde_json::Value)> {
    xtask::system::http::request(addr, "GET", path, None, None)
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// Entries of the temporary directory that a toolchain run with `pid` made.
pub fn temp_dirs_of(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("xtask-") && name.contains(&format!("-{pid}-"))
        })
        .collect()
}

pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| !status.contains("State:\tZ"))
}

/// Starts `cargo xtask SUBCOMMAND ARGS` as CI would (no terminal, `CI` set), with
/// stdout and stderr piped.
pub fn spawn_xtask(subcommand: &str, args: &[&str]) -> Child {
    xtask(subcommand, args).spawn().expect("xtask starts")
}

/// `cargo xtask SUBCOMMAND ARGS` in the workspace, as CI would run it (no terminal, `CI`
/// set), with stdout and stderr piped: to adjust before spawning.
pub fn xtask(subcommand: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary("xtask", "xtask").expect("xtask builds"));
    command
        .arg(subcommand)
        .args(args)
        .current_dir(workspace_root())
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The target directory the README's test command builds into.
pub fn target_dir() -> PathBuf {
    let xtask = binary("xtask", "xtask").expect("xtask builds");
    // <target>/<profile>/xtask
    xtask
        .parent()
        .and_then(Path::parent)
        .expect("a binary sits in <target>/<profile>/")
        .to_path_buf()
}

/// The cluster description a `--hold` run prints on stdout (its first line), once the
/// cluster is up.
pub fn held_description(run: &mut Child) -> serde_json::Value {
    let stdout = BufReader::new(run.stdout.take().expect("stdout is piped"));
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .next()
        .expect("a cluster description on stdout");
    serde_json::from_str(&line).expect("the description is JSON")
}

/// Sends the signal `name` (INT, TERM, …) to `child`.
pub fn signal(child: &Child, name: &str) {
    let signal: Signal = format!("SIG{name}").parse().expect("a signal's name");
    assert!(process::signal(child.id(), signal), "kill -{name} {}", child.id());
}

/// Asserts that the toolchain run with `pid` left nothing behind: none of `pids`, no
/// PostgreSQL, NATS or QEMU it started (each names the run's temporary directory on its
/// command line), no temporary directory.
pub fn assert_nothing_left(pid: u32, pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let leftovers = || {
        let mut found: Vec<String> = pids
            .iter()
            .filter(|p| is_running(**p))
            .map(|p| format!("pid {p}"))
            .collect();
        for service in ["postgres", "nats", "qemu-cluster"] {
            found.extend(processes_mentioning(&format!("xtask-{service}-{pid}-")));
        }
        found.extend(temp_dirs_of(pid).into_iter().map(|d| d.display().to_string()));
        found
    };
    while !leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(leftovers(), Vec::<String>::new(), "left behind by the run");
}

/// Runs `cargo xtask ARGS` to completion.
pub fn run_xtask(args: &[&str]) -> Output {
    Command::new(binary("xtask", "xtask").expect("xtask builds"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("xtask runs")
}

/// Starts `cargo xtask SUBCOMMAND ARGS`, sends SIGINT once it logs a line containing
/// `marker`, and asserts that it exits 130 leaving nothing behind.
pub fn assert_sigint_leaves_nothing(subcommand: &str, args: &[&str], marker: &str) {
    let mut run = spawn_xtask(subcommand, args);
    let pid = run.id();
    let stderr = BufReader::new(run.stderr.take().expect("stderr is piped"));
    let mut lines = stderr.lines().map_while(Result::ok);
    assert!(
        lines.any(|line| line.contains(marker)),
        "the run never logged {marker:?}"
    );
    signal(&run, "INT");
    let rest: Vec<String> = lines.collect();
    let status = run.wait().expect("xtask exits");
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_nothing_left(pid, &[]);
}

/// A Python virtual environment under `dir` holding `requirements` (pip's syntax, each
/// pinned), made with `python3 -m venv` and pip from PyPI unless one with exactly these
/// requirements is there. Without python3 this fails, with or without `CI`: what
/// `purpose` says would otherwise pass unchecked.
pub fn python_venv(dir: &Path, requirements: &[&str], purpose: &str) -> PathBuf {
    let name = requirements.join("+").replace(['=', '[', ']', '<', '>', ',', ' '], "_");
    let venv = dir.join(format!("venv-{name}"));
    // Written last: a venv without it is a half-made one (an interrupted install).
    let done = venv.join("installed");
    if std::fs::read_to_string(&done).is_ok_and(|listed| listed == requirements.join("\n")) {
        return venv;
    }
    let python = Command::new("python3").arg("--version").output();
    if !python.as_ref().is_ok_and(|output| output.status.success()) {
        panic!(
            "python3 is missing{}: {purpose}.\n\
             fix: install python3 with venv and pip (Debian: apt-get install python3 python3-venv)",
            if std::env::var_os("CI").is_some() {
                " on this CI runner"
            } else {
                ""
            }
        );
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).unwrap_or_else(|err| panic!("removing {}: {err}", venv.display()));
    }
    run_or_fail(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating a Python virtual environment (Debian: apt-get install python3-venv)",
    );
    run_or_fail(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(requirements),
        &format!("installing {} from PyPI (is PyPI reachable?)", requirements.join(" ")),
    );
    std::fs::write(&done, requirements.join("\n")).unwrap_or_else(|err| panic!("writing {}: {err}", done.display()));
    venv
}

/// Runs `command`, which must succeed (else the panic says `what`, with both streams);
/// its output.
#[track_caller]
pub fn run_or_fail(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr_of(&output)
    );
    output
}
