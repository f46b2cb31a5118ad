//! `cargo xtask cluster-local`: a verified cluster on loopback, and teardown that leaves
//! no process, database or temporary directory behind — after success, on SIGINT during
//! boot, and on SIGTERM while holding.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexichat_e2e::{binary, http_get, is_running, processes_mentioning, temp_dirs_of, workspace_root};
use serde_json::Value;

fn cluster_local(args: &[&str]) -> Child {
    Command::new(binary("xtask", "xtask").unwrap())
        .arg("cluster-local")
        .args(args)
        .current_dir(workspace_root())
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asserts that the run with `pid` left nothing: no process it started, no temp dir.
fn assert_nothing_left(pid: u32, node_pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let leftovers = || {
        let mut found: Vec<String> = node_pids
            .iter()
            .filter(|p| is_running(**p))
            .map(|p| format!("node pid {p}"))
            .collect();
        found.extend(processes_mentioning(&format!("xtask-postgres-{pid}-")));
        found.extend(processes_mentioning(&format!("xtask-nats-{pid}-")));
        found.extend(temp_dirs_of(pid).into_iter().map(|d| d.display().to_string()));
        found
    };
    while !leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(leftovers(), Vec::<String>::new(), "left behind by the run");
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn three_nodes_pass_every_check_and_are_torn_down() {
    let run = cluster_local(&["3", "--json"]);
    let pid = run.id();
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON document on stdout");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert!(node["url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{node}");
        assert!(node["pid"].as_u64().is_some() && node["node_id"].is_string(), "{node}");
    }
    assert!(report["database_url"].as_str().unwrap().starts_with("postgres://"));
    assert!(report["nats_url"].as_str().unwrap().starts_with("nats://127.0.0.1:"));
    let checks: Vec<(&str, &str)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [("membership", "ok"), ("delivery", "ok"), ("failover", "ok")],
        "{stderr}"
    );
    assert!(report["delivery_latency_ms"]["samples"].as_u64().unwrap() > 0);
    assert!(report["failover_detection_seconds"].as_f64().is_some());
    let node_pids: Vec<u32> = nodes.iter().map(|n| n["pid"].as_u64().unwrap() as u32).collect();
    assert_nothing_left(pid, &node_pids);
}

#[test]
fn sigint_during_boot_leaves_nothing_behind() {
    let mut run = cluster_local(&["3"]);
    let pid = run.id();
    let stderr = BufReader::new(run.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    // PostgreSQL is up and NATS is starting: the middle of the boot.
    assert!(
        lines.any(|line| line.contains("starting NATS")),
        "the boot never reached NATS"
    );
    signal(&run, "INT");
    let rest: Vec<String> = lines.collect();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_nothing_left(pid, &[]);
}

#[test]
fn hold_serves_until_sigterm_then_tears_down() {
    let mut run = cluster_local(&["2", "--hold", "--json"]);
    let pid = run.id();
    let stdout = BufReader::new(run.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .next()
        .expect("a cluster description on stdout");
    let description: Value = serde_json::from_str(&line).unwrap();
    let file = PathBuf::from(workspace_root()).join("target/xtask/cluster-local/cluster.json");
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, description);
    let mut node_pids = Vec::new();
    for node in description["nodes"].as_array().unwrap() {
        let addr = node["url"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        assert_eq!(http_get(addr, "/health").unwrap().0, 200, "{node}");
        node_pids.push(node["pid"].as_u64().unwrap() as u32);
    }
    signal(&run, "TERM");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is how a held cluster ends");
    assert!(!file.exists(), "cluster.json describes a cluster that is gone");
    assert_nothing_left(pid, &node_pids);
}
