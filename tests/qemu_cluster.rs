//! `cargo xtask qemu-cluster`: PlexiChat clusters in real QEMU VMs (TCG here), verified
//! and failed over QMP, torn down without a trace — after success and on SIGINT during
//! boot.

use plexichat_e2e::{
    assert_nothing_left, assert_sigint_leaves_nothing, held_description, http_get, signal, spawn_xtask,
};
use serde_json::Value;
use services::process::{self, cmd};

fn checks_of(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["result"].as_str().unwrap().into()))
        .collect()
}

/// Every check a cluster of two or more VMs makes, each passed.
fn all_ok() -> Vec<(String, String)> {
    ["membership", "delivery", "pause", "reset", "quit", "powerdown"]
        .iter()
        .map(|name| (name.to_string(), "ok".to_string()))
        .collect()
}

/// Runs `qemu-cluster ARGS --json` to the end: it must exit 0 and leave nothing behind.
/// Its report and what it said on stderr.
fn run_cluster(args: &[&str]) -> (Value, String) {
    let run = spawn_xtask("qemu-cluster", &[args, &["--json"]].concat());
    let pid = run.id();
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON document on stdout");
    assert_nothing_left(pid, &[]);
    (report, stderr)
}

#[test]
fn three_x86_64_vms_pass_every_check_and_are_torn_down() {
    let (report, stderr) = run_cluster(&["3"]);
    assert_eq!(checks_of(&report), all_ok(), "{stderr}");
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3);
    for vm in vms {
        assert_eq!(vm["arch"], "x86_64", "{vm}");
        assert!(["tcg", "kvm"].contains(&vm["accelerator"].as_str().unwrap()), "{vm}");
        assert!(vm["launch_to_healthy_seconds"].as_f64().unwrap() > 0.0, "{vm}");
        assert!(vm["rss_mib"].as_f64().unwrap() > 0.0, "{vm}");
    }
    // The victim of the failover checks was quit over QMP; the others were running.
    let statuses: Vec<&str> = vms.iter().map(|vm| vm["qmp_status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["running", "running", "exited (host-qmp-quit)"], "{stderr}");
    for node in report["nodes"].as_array().unwrap() {
        assert!(node["url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{node}");
        assert!(node["qmp_socket"].is_string(), "{node}");
    }
}

#[test]
fn aarch64_and_riscv64_guests_boot_serve_fail_over_and_power_off() {
    let (report, stderr) = run_cluster(&["2", "--arch", "aarch64,riscv64"]);
    assert_eq!(checks_of(&report), all_ok(), "{stderr}");
    let vms = report["vms"].as_array().unwrap();
    let arches: Vec<&str> = vms.iter().map(|vm| vm["arch"].as_str().unwrap()).collect();
    assert_eq!(arches, ["aarch64", "riscv64"]);
    for vm in vms {
        assert_eq!(vm["accelerator"], "tcg", "a foreign guest never gets KVM: {vm}");
    }
}

/// A QMP client that is not the toolchain's: a few lines of Python's standard library, as a
/// user would write them. It stops and continues the VM, printing the status each time.
const FOREIGN_QMP_CLIENT: &str = r#"
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(30)
sock.connect(sys.argv[1])
stream = sock.makefile("rw")
json.loads(stream.readline())  # the greeting
def execute(command):
    stream.write(json.dumps({"execute": command}) + "\n")
    stream.flush()
    while True:
        reply = json.loads(stream.readline())
        if "event" not in reply:
            return reply["return"]
execute("qmp_capabilities")
for command in ["query-status", "stop", "query-status", "cont", "query-status"]:
    reply = execute(command)
    if command == "query-status":
        print(reply["status"])
"#;

#[test]
fn a_foreign_qmp_client_drives_a_held_vm() {
    let mut run = spawn_xtask("qemu-cluster", &["1", "--hold", "--json"]);
    let pid = run.id();
    let description = held_description(&mut run);
    let node = &description["nodes"][0];
    let socket = node["qmp_socket"].as_str().expect("a QMP socket for users");
    let sh = process::shell().unwrap();
    let output = process::output(cmd!(sh, "python3 -c {FOREIGN_QMP_CLIENT} {socket}")).unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(said.lines().collect::<Vec<_>>(), ["running", "paused", "running"]);
    // The VM still serves, and the toolchain still holds its own monitor.
    let addr = node["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    signal(&run, "TERM");
    assert_eq!(run.wait().unwrap().code(), Some(0));
    assert_nothing_left(pid, &[]);
}

#[test]
fn sigint_during_boot_leaves_nothing_behind() {
    // QEMU is running and the guests are booting.
    assert_sigint_leaves_nothing("qemu-cluster", &["3"], "booting x86_64");
}

#[test]
fn an_unknown_architecture_is_a_usage_error() {
    let output = spawn_xtask("qemu-cluster", &["2", "--arch", "x86_64,sparc"])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--arch") && stderr.contains("sparc"), "{stderr}");
}
