//! `cargo xtask cluster-local N`: N PlexiChat processes on loopback sharing an ephemeral
//! PostgreSQL and NATS, verified as one server — membership, cross-node WebSocket
//! delivery (with its latency), and failover with no acknowledged message lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::build_native;
use crate::http;
use crate::node::ServerProcess;
use crate::profile::Profile;
use crate::progress::Progress;
use crate::report::{Report, Table};
use crate::services::{Durability, Nats, Postgres};
use crate::teardown::{self, Guard, TempDir};
use crate::workspace::Workspace;

const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Posts from every node in turn, for the delivery latency figures.
const DELIVERY_ROUNDS: usize = 20;
/// The bounded load that runs while a node is killed.
const FAILOVER_POSTS: usize = 300;

#[derive(clap::Args)]
pub struct Args {
    /// How many server processes.
    #[arg(default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// Profile: NAME for profiles/NAME.yaml, or a path; its server section configures every node.
    #[arg(long, default_value = "dev")]
    profile: String,
    /// Stay up after verifying, until SIGINT or SIGTERM.
    #[arg(long)]
    hold: bool,
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
    pub arch: &'static str,
    pub pid: u32,
    pub healthy_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub result: &'static str,
    pub detail: String,
    pub seconds: f64,
}

#[derive(Serialize)]
struct ClusterReport<'a> {
    ok: bool,
    #[serde(flatten)]
    description: &'a Description,
    checks: &'a [CheckResult],
    delivery_latency_ms: Option<Percentiles>,
    failover_detection_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
    samples: usize,
}

struct Node {
    id: String,
    server: ServerProcess,
    _dir: TempDir,
}

pub fn run(args: Args) -> Result<Report> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let progress = Progress::new();

    let task = progress.task("build");
    let binary = build_native::host_binary(&workspace, &profile.build, &task)?;
    task.finish("plexichat is up to date");

    let task = progress.task("services");
    task.step("starting PostgreSQL");
    let postgres = Postgres::start(&workspace.target_dir.join("xtask/cache"), Durability::Durable)?;
    task.step("starting NATS");
    let nats = Nats::start()?;
    let database_url = postgres.url("postgres");
    task.finish(format!("PostgreSQL on {}, NATS on {}", postgres.port(), nats.port()));

    let mut nodes = Vec::new();
    for index in 0..usize::from(args.nodes) {
        let id = format!("node-{index}");
        let task = progress.task(&id);
        task.step("starting");
        let dir = TempDir::new(&format!("cluster-{id}"))?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&profile.path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
                "--nats-url",
                &nats.url(),
            ])
            .args(["--node-id", &id])
            .current_dir(dir.path());
        let server = ServerProcess::start(command, NODE_START_TIMEOUT)?;
        wait_healthy(&server)?;
        task.finish(format!(
            "healthy at {} after {:.2} s",
            server.url(),
            server.started_in.as_secs_f64()
        ));
        nodes.push(Node { id, server, _dir: dir });
    }
    let description = Description {
        nodes: nodes
            .iter()
            .map(|node| NodeDescription {
                node_id: node.id.clone(),
                url: node.server.url(),
                arch: std::env::consts::ARCH,
                pid: node.server.pid(),
                healthy_seconds: node.server.started_in.as_secs_f64(),
            })
            .collect(),
        database_url,
        nats_url: nats.url(),
    };

    let lease = profile.cluster_lease();
    let verifier = Verifier::new(&nodes)?;
    let mut checks = Vec::new();
    let task = progress.task("verify");
    task.step("membership");
    checks.push(timed("membership", || verifier.membership(&nodes)));
    task.step("cross-node delivery");
    let mut latencies = None;
    checks.push(timed("delivery", || {
        let (detail, percentiles) = verifier.delivery(&nodes)?;
        latencies = Some(percentiles);
        Ok(detail)
    }));
    let mut detection = None;
    if args.hold {
        checks.push(skipped("failover", "not run with --hold: every node stays up for you"));
    } else if nodes.len() < 2 {
        checks.push(skipped("failover", "needs at least 2 nodes"));
    } else {
        task.step("failover: killing a node under load");
        checks.push(timed("failover", || {
            let (detail, seconds) = verifier.failover(&nodes, lease)?;
            detection = Some(seconds);
            Ok(detail)
        }));
    }
    let ok = checks.iter().all(|check| check.result != "failed");
    task.finish(if ok { "every check held" } else { "a check FAILED" });

    let report = cluster_report(ok, &description, &checks, latencies, detection);
    if args.hold {
        hold(&workspace, &description, &report)?;
    }
    Ok(report)
}

fn cluster_report(
    ok: bool,
    description: &Description,
    checks: &[CheckResult],
    latencies: Option<Percentiles>,
    detection: Option<f64>,
) -> Report {
    let mut table = Table::new(&["item", "result", "detail"]);
    for node in &description.nodes {
        table.row(vec![
            node.node_id.clone(),
            format!("healthy in {:.2} s", node.healthy_seconds),
            format!("{} (pid {})", node.url, node.pid),
        ]);
    }
    for check in checks {
        table.row(vec![check.name.into(), check.result.into(), check.detail.clone()]);
    }
    let json = ClusterReport {
        ok,
        description,
        checks,
        delivery_latency_ms: latencies,
        failover_detection_seconds: detection,
    };
    Report::new(ok, table, &json)
}

/// Writes the description where tools find it, prints it, and waits for a signal; the
/// signal handler tears the cluster down and exits 0.
fn hold(workspace: &Workspace, description: &Description, report: &Report) -> Result<()> {
    let path: PathBuf = workspace.target_dir.join("xtask/cluster-local/cluster.json");
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

fn wait_healthy(server: &ServerProcess) -> Result<()> {
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    loop {
        if let Ok((200, _)) = http::request(server.addr, "GET", "/ready", None, None) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not become ready", server.url());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn timed(name: &'static str, check: impl FnOnce() -> Result<String>) -> CheckResult {
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

fn skipped(name: &'static str, why: &str) -> CheckResult {
    CheckResult {
        name,
        result: "skipped",
        detail: why.into(),
        seconds: 0.0,
    }
}

/// A user and channel of its own, through which the checks talk to the cluster.
struct Verifier {
    token: String,
    channel: i64,
}

impl Verifier {
    fn new(nodes: &[Node]) -> Result<Self> {
        let first = nodes[0].server.addr;
        let name = format!("verifier{}", std::process::id());
        let credentials = json!({"username": name, "password": "cluster-local-check"});
        let (status, body) = http::request(first, "POST", "/api/v1/auth/register", None, Some(&credentials))?;
        if status != 201 {
            bail!("register failed: {status} {body}");
        }
        let (_, login) = http::request(first, "POST", "/api/v1/auth/login", None, Some(&credentials))?;
        let token = login["token"].as_str().context("login gave no token")?.to_string();
        let (status, channel) = http::request(
            first,
            "POST",
            "/api/v1/channels",
            Some(&token),
            Some(&json!({"name": name})),
        )?;
        if status != 201 {
            bail!("creating the check channel failed: {status} {channel}");
        }
        Ok(Self {
            token,
            channel: channel["id"].as_i64().context("channel id")?,
        })
    }

    fn post(&self, node: &Node, body: &str) -> Result<i64> {
        let path = format!("/api/v1/channels/{}/messages", self.channel);
        let (status, message) = http::request(
            node.server.addr,
            "POST",
            &path,
            Some(&self.token),
            Some(&json!({"body": body})),
        )?;
        if status != 201 {
            bail!("post on {} answered {status}: {message}", node.id);
        }
        message["id"].as_i64().context("message id")
    }

    fn statuses(&self, node: &Node) -> Result<BTreeMap<String, String>> {
        let (status, nodes) = http::request(
            node.server.addr,
            "GET",
            "/api/v1/cluster/nodes",
            Some(&self.token),
            None,
        )?;
        if status != 200 {
            bail!("cluster/nodes on {} answered {status}", node.id);
        }
        Ok(nodes
            .as_array()
            .context("a list of nodes")?
            .iter()
            .map(|n| {
                (
                    n["node_id"].as_str().unwrap_or_default().into(),
                    n["status"].as_str().unwrap_or_default().into(),
                )
            })
            .collect())
    }

    /// Every node lists every node as up.
    fn membership(&self, nodes: &[Node]) -> Result<String> {
        let expected: BTreeMap<String, String> = nodes.iter().map(|n| (n.id.clone(), "up".into())).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in nodes {
            loop {
                let listed = self.statuses(node)?;
                if expected.iter().all(|(id, status)| listed.get(id) == Some(status)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} lists {listed:?}", node.id);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(format!("{} of {} nodes up on every node", nodes.len(), nodes.len()))
    }

    /// A message posted on each node reaches a subscriber on every node, exactly once.
    fn delivery(&self, nodes: &[Node]) -> Result<(String, Percentiles)> {
        let mut listeners = Listeners::open(nodes, &self.token, self.channel)?;
        let mut cross_node = Vec::new();
        for round in 0..DELIVERY_ROUNDS {
            for (poster, node) in nodes.iter().enumerate() {
                let sent = Instant::now();
                let id = self.post(node, &format!("delivery check {round} from {}", node.id))?;
                let receipts = listeners.await_message(id)?;
                for (listener, received) in receipts {
                    if listener != poster || nodes.len() == 1 {
                        cross_node.push(received.duration_since(sent));
                    }
                }
            }
        }
        let duplicates = listeners.close();
        if duplicates > 0 {
            bail!("{duplicates} message frames were delivered more than once");
        }
        let percentiles = percentiles(&mut cross_node);
        Ok((
            format!(
                "{} posts each reached all {} nodes once; post→delivery p50 {:.2} ms, p99 {:.2} ms",
                DELIVERY_ROUNDS * nodes.len(),
                nodes.len(),
                percentiles.p50,
                percentiles.p99
            ),
            percentiles,
        ))
    }

    /// Kills the last node under a bounded load; it must be reported down within the
    /// lease, the others must keep serving, and every acknowledged post must be in history.
    fn failover(&self, nodes: &[Node], lease: Duration) -> Result<(String, f64)> {
        let (victim, survivors) = nodes.split_last().context("at least two nodes")?;
        let mut acknowledged = BTreeSet::new();
        let mut refused_by_survivors = 0;
        let mut killed_at = None;
        for n in 0..FAILOVER_POSTS {
            if n == FAILOVER_POSTS / 3 {
                victim.server.kill()?;
                killed_at = Some(Instant::now());
            }
            let node = &nodes[n % nodes.len()];
            match self.post(node, &format!("failover load {n}")) {
                Ok(id) => {
                    acknowledged.insert(id);
                }
                Err(_) if killed_at.is_some() && node.id == victim.id => {}
                Err(_) => refused_by_survivors += 1,
            }
        }
        let killed_at = killed_at.context("the victim was killed")?;
        // Heartbeats stop at the kill: the node is down once its last one is a lease old.
        let deadline = killed_at + lease * 3;
        let detected = loop {
            if self
                .statuses(&survivors[0])?
                .get(&victim.id)
                .is_some_and(|s| s == "down")
            {
                break killed_at.elapsed();
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not reported down within {:?} of being killed",
                    victim.id,
                    lease * 3
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if refused_by_survivors > 0 {
            bail!("surviving nodes refused {refused_by_survivors} posts");
        }
        let stored = self.history(&survivors[0])?;
        let lost: Vec<&i64> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
        if !lost.is_empty() {
            bail!(
                "{} acknowledged messages are missing from history: {lost:?}",
                lost.len()
            );
        }
        let detail = format!(
            "{} killed under load; reported down after {:.2} s (lease {:?}); {} posts acknowledged, 0 lost",
            victim.id,
            detected.as_secs_f64(),
            lease,
            acknowledged.len()
        );
        Ok((detail, detected.as_secs_f64()))
    }

    /// Every message id in the check channel, paged back from the newest.
    fn history(&self, node: &Node) -> Result<BTreeSet<i64>> {
        let mut ids = BTreeSet::new();
        let mut before = String::new();
        loop {
            let path = format!("/api/v1/channels/{}/messages?limit=200{before}", self.channel);
            let (status, page) = http::request(node.server.addr, "GET", &path, Some(&self.token), None)?;
            if status != 200 {
                bail!("paging history on {} answered {status}", node.id);
            }
            let page: Vec<i64> = page
                .as_array()
                .context("a page")?
                .iter()
                .filter_map(|m| m["id"].as_i64())
                .collect();
            match page.last() {
                Some(oldest) => before = format!("&before={oldest}"),
                None => return Ok(ids),
            }
            ids.extend(page);
        }
    }
}

/// One subscribed WebSocket per node, each read by a thread that stamps arrivals.
struct Listeners {
    arrivals: mpsc::Receiver<(usize, i64, Instant)>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    count: usize,
    /// Frames for a message already received everywhere: deliveries beyond the first.
    duplicates: usize,
}

impl Listeners {
    fn open(nodes: &[Node], token: &str, channel: i64) -> Result<Self> {
        let (sender, arrivals) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let url = format!("ws://{}/api/v1/ws?token={token}", node.server.addr);
            let (mut socket, _) = tungstenite::connect(&url).with_context(|| format!("WebSocket to {}", node.id))?;
            if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_mut() {
                stream.set_read_timeout(Some(Duration::from_millis(100)))?;
            }
            socket.send(tungstenite::Message::text(
                json!({"type": "subscribe", "channel_id": channel}).to_string(),
            ))?;
            await_subscribed(&mut socket).with_context(|| format!("subscribing on {}", node.id))?;
            let (sender, stop) = (sender.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match socket.read() {
                        Ok(tungstenite::Message::Text(text)) => {
                            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                            if let Some(id) = frame["message"]["id"].as_i64() {
                                let _ = sender.send((index, id, Instant::now()));
                            }
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(err))
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                let _ = socket.close(None);
            }));
        }
        Ok(Self {
            arrivals,
            stop,
            threads,
            count: nodes.len(),
            duplicates: 0,
        })
    }

    /// When each listener received message `id`. Messages are awaited one at a time, so
    /// a frame for any other message is a duplicate of one already counted.
    fn await_message(&mut self, id: i64) -> Result<Vec<(usize, Instant)>> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut receipts: Vec<(usize, Instant)> = Vec::new();
        while receipts.len() < self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.arrivals.recv_timeout(left) {
                Ok((listener, got, at)) if got == id => {
                    if receipts.iter().any(|(seen, _)| *seen == listener) {
                        bail!("listener {listener} received message {id} twice");
                    }
                    receipts.push((listener, at));
                }
                Ok(_) => self.duplicates += 1,
                Err(_) => bail!(
                    "message {id} reached {} of {} nodes within {DELIVERY_TIMEOUT:?}",
                    receipts.len(),
                    self.count
                ),
            }
        }
        Ok(receipts)
    }

    /// Stops the readers; returns how many duplicate frames arrived in all.
    fn close(mut self) -> usize {
        // A duplicate of the last message would arrive about now.
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.duplicates + self.arrivals.try_iter().count()
    }
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// Reads until the server confirms the subscription: only then does a post count as
/// one the socket must see.
fn await_subscribed(socket: &mut Socket) -> Result<()> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while Instant::now() < deadline {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                match frame["type"].as_str() {
                    Some("subscribed") => return Ok(()),
                    Some("error") => bail!("the server refused: {frame}"),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err.into()),
        }
    }
    bail!("no subscription confirmed within {DELIVERY_TIMEOUT:?}")
}

fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort();
    let at = |p: f64| {
        let index = ((samples.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len().saturating_sub(1));
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&mut samples);
        assert_eq!((p.p50, p.p99, p.samples), (50.0, 99.0, 100));
        let p = percentiles(&mut []);
        assert_eq!((p.p50, p.samples), (0.0, 0));
    }
}
