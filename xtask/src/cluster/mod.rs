//! What the cluster commands (`cluster-local`, `qemu-cluster`) share: the cluster
//! description other tools connect to, check results, `--hold`, and the verifier that
//! talks to the nodes as a client would. The services and server processes they start
//! come from the services crate, which the server's tests share.

pub(crate) mod canary;
pub(crate) mod dependencies;
pub(crate) mod engine;
pub(crate) mod outcome;
pub(crate) mod processes;
pub(crate) mod scenario_report;
mod socket;
mod verify;
pub(crate) mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use services::teardown::{self, Guard};

use crate::report::progress::Task;
use crate::report::Report;
use crate::workspace::Workspace;

pub(crate) use verify::{Percentiles, Verifier};

/// A node as the checks see it: a name and an HTTP address reachable from this host.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub addr: SocketAddr,
}

/// The cluster description: what other tools and people connect to.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub nodes: Vec<NodeDescription>,
    pub database_url: String,
    pub nats_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeDescription {
    pub node_id: String,
    pub url: String,
    pub arch: String,
    /// From launching the node to its first healthy answer.
    pub healthy_seconds: f64,
    /// The server process (cluster-local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The VM's QMP socket (qemu-cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qmp_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckResult {
    pub name: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub result: &'static str,
    pub detail: String,
    pub seconds: f64,
}

impl CheckResult {
    pub(crate) fn failed(&self) -> bool {
        self.result == "failed"
    }
}

/// Runs a check, timing it; an error is the check's failure, with its message.
pub(crate) fn timed(name: &'static str, check: impl FnOnce() -> Result<String>) -> CheckResult {
    let started = Instant::now();
    let (result, detail) = match check() {
        Ok(detail) => ("ok", detail),
        Err(err) => ("failed", format!("{err:#}")),
    };
    CheckResult {
        name,
        result,
        detail,
        seconds: started.elapsed().as_secs_f64(),
    }
}

pub(crate) fn skipped(name: &'static str, why: &str) -> CheckResult {
    CheckResult {
        name,
        result: "skipped",
        detail: why.into(),
        seconds: 0.0,
    }
}

/// The checks every cluster command makes first: membership, then cross-node delivery
/// (whose latency percentiles come back beside the results).
pub(crate) fn verify_basics(
    verifier: &Verifier,
    members: &[Member],
    task: &Task,
) -> (Vec<CheckResult>, Option<Percentiles>) {
    task.step("membership");
    let mut checks = vec![timed("membership", || verifier.membership(members))];
    task.step("cross-node delivery");
    let mut latencies = None;
    checks.push(timed("delivery", || {
        let (detail, percentiles) = verifier.delivery(members)?;
        latencies = Some(percentiles);
        Ok(detail)
    }));
    (checks, latencies)
}

/// Writes the description to `target/xtask/<command>/cluster.json`, prints it, and
/// waits for a signal; the signal handler tears the cluster down and exits 0.
pub(crate) fn hold(workspace: &Workspace, command: &str, description: &Description, report: &Report) -> Result<()> {
    let path: PathBuf = workspace.target_dir.join("xtask").join(command).join("cluster.json");
    std::fs::create_dir_all(path.parent().context("cluster.json has a parent")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(description)?)?;
    let written = path.clone();
    let _remove = Guard::new(move || {
        let _ = std::fs::remove_file(&written);
    });
    eprint!("{}", report.table);
    eprintln!(
        "cluster up; description in {}. Ctrl-C (or SIGTERM) tears it down.",
        path.display()
    );
    println!("{}", serde_json::to_string(description)?);
    teardown::exit_on_signal_with(0);
    loop {
        std::thread::park();
    }
}
