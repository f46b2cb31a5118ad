//! `cargo xtask docker-build` against the real Docker engine: images for the host and a
//! foreign architecture, checked as the engine records them (size, user, labels,
//! platform), smoke-run, exported, and no container left behind — also after Ctrl-C.
//! The engine is asked directly over its socket, not through the toolchain's own code.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use plexichat_e2e::{signal, spawn_xtask, stderr_of, strings_at};
use serde_json::Value;

/// The engine's socket, as DOCKER_HOST names it (the default socket otherwise).
fn socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// One Engine API call: the status and the JSON body.
fn engine(method: &str, path: &str) -> std::io::Result<(u16, Value)> {
    let mut stream = UnixStream::connect(socket())?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // HTTP/1.0: the engine answers without chunking and closes the connection.
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Whether the engine answers. Without one the tests cannot run: a failure under CI,
/// a note otherwise.
fn engine_available() -> bool {
    match engine("GET", "/_ping") {
        Ok(_) => true,
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!(
                "the Docker engine at {} is unreachable: {err}; CI needs it",
                socket().display()
            )
        }
        Err(err) => {
            eprintln!(
                "skipped: the Docker engine at {} is unreachable: {err}",
                socket().display()
            );
            false
        }
    }
}

/// Containers carrying docker-build's label for the run with `pid`.
fn containers_of(pid: u32) -> Vec<Value> {
    let filters = format!(r#"{{"label":["org.plexichat.xtask.run={pid}"]}}"#);
    let encoded: String = filters
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, list) = engine("GET", &format!("/containers/json?all=1&filters={encoded}")).expect("engine");
    assert_eq!(status, 200, "{list}");
    list.as_array().cloned().unwrap_or_default()
}

fn remove_images(tags: &[String]) {
    for tag in tags {
        let _ = engine("DELETE", &format!("/images/{tag}?force=1"));
    }
}

/// The file `name` inside a tar archive.
fn tar_member(tar: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("an entry");
        if *entry.path_bytes() == *name.as_bytes() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("the entry's data");
            return Some(data);
        }
    }
    None
}

#[test]
fn an_unreachable_engine_exits_2_naming_the_fix() {
    let output = std::process::Command::new(plexichat_e2e::binary("xtask", "xtask").unwrap())
        .args(["docker-build", "--smoke"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .current_dir(plexichat_e2e::workspace_root())
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/docker.sock"), "{stderr}");
    assert!(
        stderr.contains("fix:") && stderr.contains("DOCKER_HOST") && stderr.contains("doctor --fix"),
        "{stderr}"
    );
}

#[test]
fn images_for_the_host_and_a_foreign_arch_build_run_and_export() {
    if !engine_available() {
        return;
    }
    let host = std::env::consts::ARCH;
    let foreign = if host == "aarch64" { "x86_64" } else { "aarch64" };
    let docker_arch = |arch: &str| match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Docker name for {other}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("images.tar");
    let tag = format!("plexichat-e2e:t{}", std::process::id());
    let run = spawn_xtask(
        "docker-build",
        &[
            "--arch",
            host,
            "--arch",
            foreign,
            "--tag",
            &tag,
            "--smoke",
            "--export",
            archive.to_str().unwrap(),
            "--json",
        ],
    );
    let pid = run.id();
    let output = run.wait_with_output().unwrap();
    let tags = [format!("{tag}-{host}"), format!("{tag}-{foreign}"), tag.clone()];
    let stderr = stderr_of(&output);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("stdout is not JSON ({err}); stderr:\n{stderr}"));
    let result = std::panic::catch_unwind(|| {
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert_eq!(report["ok"], true, "{report:#}");
        let images = report["images"].as_array().expect("images");
        assert_eq!(images.len(), 2, "{report:#}");
        for image in images {
            let smoke = &image["smoke"];
            assert_eq!(smoke["ok"], true, "{smoke:#}");
            let steps = strings_at(&smoke["steps"], "name");
            assert_eq!(steps, ["start", "healthy", "health", "round trip", "removed"]);
        }

        let version = env!("CARGO_PKG_VERSION");
        for arch in [host, foreign] {
            let name = format!("{tag}-{arch}");
            let (status, inspected) = engine("GET", &format!("/images/{name}/json")).unwrap();
            assert_eq!(status, 200, "{name} is not in the engine: {inspected}");
            assert_eq!(inspected["Os"], "linux");
            assert_eq!(inspected["Architecture"], docker_arch(arch), "{name}");
            let size = inspected["Size"].as_i64().unwrap();
            // A static server and a profile: more than a few MB, far less than a distro.
            assert!((3_000_000..40_000_000).contains(&size), "{name}: {size} bytes");
            let config = &inspected["Config"];
            let user = config["User"].as_str().unwrap();
            let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric user");
            assert_ne!(uid, 0, "{name} runs as root");
            let labels = &config["Labels"];
            assert_eq!(labels["org.opencontainers.image.version"], version, "{labels:#}");
            assert_eq!(labels["org.plexichat.profile"], "release", "{labels:#}");
            for key in ["revision", "created", "source"] {
                let value = labels[format!("org.opencontainers.image.{key}")]
                    .as_str()
                    .unwrap_or_default();
                assert!(!value.is_empty(), "{name} lacks the {key} label: {labels:#}");
            }
            // The health check runs the binary itself: a scratch image has no shell.
            assert_eq!(config["Healthcheck"]["Test"][0], "CMD", "{config:#}");
            assert!(config["ExposedPorts"].get("8000/tcp").is_some(), "{config:#}");
            assert!(config["Volumes"].get("/data").is_some(), "{config:#}");
        }
        // The host's image also answers to the bare tag; the foreign one does not.
        let (_, host_image) = engine("GET", &format!("/images/{tag}/json")).unwrap();
        let repo_tags = host_image["RepoTags"].to_string();
        assert!(repo_tags.contains(&format!("{tag}-{host}")), "{repo_tags}");
        assert!(!repo_tags.contains(&format!("{tag}-{foreign}")), "{repo_tags}");

        assert_eq!(containers_of(pid), Vec::<Value>::new(), "containers left behind");

        let tar = std::fs::read(&archive).expect("the export was written");
        let manifest = tar_member(&tar, "manifest.json").expect("a docker-archive has manifest.json");
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        let exported = manifest.to_string();
        for name in &tags {
            assert!(
                exported.contains(&format!("\"{name}\"")),
                "{name} not exported: {exported}"
            );
        }
    });
    remove_images(&tags);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn ctrl_c_during_a_smoke_run_removes_its_container() {
    if !engine_available() {
        return;
    }
    let tag = format!("plexichat-e2e:i{}", std::process::id());
    let host = std::env::consts::ARCH;
    let mut run = spawn_xtask("docker-build", &["--tag", &tag, "--smoke"]);
    let pid = run.id();
    let stderr = BufReader::new(run.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    let started = lines.any(|line| line.contains("start: container"));
    let during = containers_of(pid).len();
    signal(&run, "INT");
    let rest: Vec<String> = lines.collect();
    let status = run.wait().unwrap();
    remove_images(&[format!("{tag}-{host}"), tag.clone()]);
    assert!(started, "the smoke run never started: {rest:?}");
    assert_eq!(during, 1, "the smoke container was not there or not labelled");
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_eq!(
        containers_of(pid),
        Vec::<Value>::new(),
        "the smoke container outlived Ctrl-C"
    );
}
