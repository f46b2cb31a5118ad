//! `cargo xtask cluster-local`: a verified cluster on loopback, and teardown that leaves
//! no process, database or temporary directory behind — after success, on SIGINT during
//! boot, and on SIGTERM while holding.

use std::path::PathBuf;
use std::process::Child;

use plexichat_e2e::{
    assert_nothing_left, assert_sigint_leaves_nothing, held_description, http_get, signal, spawn_xtask, workspace_root,
};
use serde_json::Value;

/// The release profile: its static build is the one the other e2e tests (bench-compare,
/// docker-build, qemu) use, so these tests compile no server of their own.
const PROFILE: [&str; 2] = ["--profile", "release"];

fn cluster_local(args: &[&str]) -> Child {
    spawn_xtask("cluster-local", &[args, &PROFILE[..]].concat())
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
    // PostgreSQL is up and NATS is starting: the middle of the boot.
    assert_sigint_leaves_nothing("cluster-local", &["3", PROFILE[0], PROFILE[1]], "starting NATS");
}

#[test]
fn hold_serves_until_sigterm_then_tears_down() {
    let mut run = cluster_local(&["2", "--hold", "--json"]);
    let pid = run.id();
    let description = held_description(&mut run);
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
