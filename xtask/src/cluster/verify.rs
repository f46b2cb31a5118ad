//! The checks a cluster must pass, made as a client would make them: a user and a
//! channel of the verifier's own, WebSocket subscribers on every node, posts, history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::socket::{is_timeout, open_subscribed};
use super::Member;
use crate::system::http;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Posts from every node in turn, for the delivery latency figures.
const DELIVERY_ROUNDS: usize = 20;
/// The bounded load that runs while a node fails.
const FAILOVER_POSTS: usize = 300;
/// How long every node may take to list every other one as up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub samples: usize,
}

/// What a bounded load saw while one node was made to fail.
pub struct LoadOutcome {
    pub acknowledged: BTreeSet<i64>,
    /// Posts the nodes that did not fail refused: there must be none.
    pub refused_by_survivors: usize,
    /// When the failure was made.
    pub failed_at: Instant,
}

/// A node as another node lists it in /api/v1/cluster/nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub status: String,
    pub generation: i64,
}

/// A user and channel of its own, through which the checks talk to the cluster.
pub struct Verifier {
    token: String,
    channel: i64,
}

impl Verifier {
    pub fn new(first: &Member) -> Result<Self> {
        let name = format!("verifier{}", std::process::id());
        let credentials = json!({"username": name, "password": "cluster-check"});
        let (status, body) = http::request(first.addr, "POST", "/api/v1/auth/register", None, Some(&credentials))?;
        if status != 201 {
            bail!("register failed: {status} {body}");
        }
        let (_, login) = http::request(first.addr, "POST", "/api/v1/auth/login", None, Some(&credentials))?;
        let token = login["token"].as_str().context("login gave no token")?.to_string();
        let (status, channel) = http::request(
            first.addr,
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

    /// A channel of its own for a scenario's workload (whose checker reads every message of
    /// the channel), and the verifier's credentials to use it.
    pub fn new_channel(&self, member: &Member, name: &str) -> Result<super::workload::Client> {
        let (status, channel) = http::request(
            member.addr,
            "POST",
            "/api/v1/channels",
            Some(&self.token),
            Some(&json!({"name": name})),
        )?;
        if status != 201 {
            bail!("creating the channel {name} failed: {status} {channel}");
        }
        Ok(super::workload::Client {
            token: self.token.clone(),
            channel: channel["id"].as_i64().context("channel id")?,
        })
    }

    /// Posts a message through `member`; its id once acknowledged.
    pub fn post(&self, member: &Member, body: &str) -> Result<i64> {
        let path = format!("/api/v1/channels/{}/messages", self.channel);
        let (status, message) = http::request(
            member.addr,
            "POST",
            &path,
            Some(&self.token),
            Some(&json!({"body": body})),
        )?;
        if status != 201 {
            bail!("post on {} answered {status}: {message}", member.id);
        }
        message["id"].as_i64().context("message id")
    }

    /// The cluster as `observer` lists it, by node id.
    pub fn listing(&self, observer: &Member) -> Result<BTreeMap<String, Listed>> {
        let (status, nodes) = http::request(observer.addr, "GET", "/api/v1/cluster/nodes", Some(&self.token), None)?;
        if status != 200 {
            bail!("cluster/nodes on {} answered {status}", observer.id);
        }
        Ok(nodes
            .as_array()
            .context("a list of nodes")?
            .iter()
            .map(|n| {
                (
                    n["node_id"].as_str().unwrap_or_default().into(),
                    Listed {
                        status: n["status"].as_str().unwrap_or_default().into(),
                        generation: n["generation"].as_i64().unwrap_or_default(),
                    },
                )
            })
            .collect())
    }

    /// Waits until `observer` lists `node` as `status` (and, if given, with a generation
    /// other than `not_generation`); returns how long after `since` that was seen.
    pub fn await_listed(
        &self,
        observer: &Member,
        node: &str,
        status: &str,
        not_generation: Option<i64>,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let listed = self.listing(observer)?;
            if let Some(entry) = listed.get(node) {
                if entry.status == status && not_generation != Some(entry.generation) {
                    return Ok(since.elapsed());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not list {node} as {status} within {timeout:?}; it lists {:?}",
                    observer.id,
                    listed.get(node)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node lists every node as up, within [`MEMBERSHIP_TIMEOUT`]. A node that
    /// cannot answer yet (a 503 while it reaches its database again) is asked again.
    pub fn membership(&self, members: &[Member]) -> Result<String> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        for observer in members {
            loop {
                let seen = match self.listing(observer) {
                    Ok(listed) => {
                        let all_up = members
                            .iter()
                            .all(|m| listed.get(&m.id).is_some_and(|entry| entry.status == "up"));
                        if all_up {
                            break;
                        }
                        format!("{} lists {listed:?}", observer.id)
                    }
                    Err(err) => format!("{err:#}"),
                };
                if Instant::now() > deadline {
                    bail!("after {MEMBERSHIP_TIMEOUT:?}: {seen}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(format!("{} of {} nodes up on every node", members.len(), members.len()))
    }

    /// Waits until a message posted on each node reaches a subscriber on every node (after
    /// a restore, nodes find their stale connections dead and connect again first);
    /// returns how long that took.
    pub fn await_delivery(&self, members: &[Member], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let mut listeners = Listeners::open(members, &self.token, self.channel)?;
        for member in members {
            loop {
                let id = self.post(member, &format!("delivery probe from {}", member.id))?;
                match listeners.await_message(id) {
                    Ok(_) => break,
                    Err(err) if started.elapsed() > timeout => {
                        return Err(err.context(format!("no delivery within {timeout:?}")));
                    }
                    Err(_) => {}
                }
            }
        }
        listeners.close();
        Ok(started.elapsed())
    }

    /// A message posted on each node reaches a subscriber on every node, exactly once.
    pub fn delivery(&self, members: &[Member]) -> Result<(String, Percentiles)> {
        let mut listeners = Listeners::open(members, &self.token, self.channel)?;
        let mut cross_node = Vec::new();
        for round in 0..DELIVERY_ROUNDS {
            for (poster, member) in members.iter().enumerate() {
                let sent = Instant::now();
                let id = self.post(member, &format!("delivery check {round} from {}", member.id))?;
                let receipts = listeners.await_message(id)?;
                for (listener, received) in receipts {
                    if listener != poster || members.len() == 1 {
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
                DELIVERY_ROUNDS * members.len(),
                members.len(),
                percentiles.p50,
                percentiles.p99
            ),
            percentiles,
        ))
    }

    /// Posts a bounded load round-robin over `members`, making `victim` fail (with
    /// `fail`) a third of the way in. Posts to the victim after that may fail; posts
    /// to any other node must not.
    pub fn load_while_failing(
        &self,
        members: &[Member],
        victim: &Member,
        fail: impl FnOnce() -> Result<()>,
    ) -> Result<LoadOutcome> {
        let mut fail = Some(fail);
        let mut outcome = LoadOutcome {
            acknowledged: BTreeSet::new(),
            refused_by_survivors: 0,
            failed_at: Instant::now(),
        };
        for n in 0..FAILOVER_POSTS {
            if n == FAILOVER_POSTS / 3 {
                if let Some(fail) = fail.take() {
                    fail()?;
                    outcome.failed_at = Instant::now();
                }
            }
            let member = &members[n % members.len()];
            match self.post(member, &format!("failover load {n}")) {
                Ok(id) => {
                    outcome.acknowledged.insert(id);
                }
                Err(_) if fail.is_none() && member.id == victim.id => {}
                Err(_) => outcome.refused_by_survivors += 1,
            }
        }
        Ok(outcome)
    }

    /// Makes the last member fail under load (`how` says how, for the report); it must
    /// be listed down within three leases, the others must keep serving, and every
    /// acknowledged post must be in history. Returns the detail and the detection time.
    pub fn failover(
        &self,
        members: &[Member],
        lease: Duration,
        how: &str,
        fail: impl FnOnce() -> Result<()>,
    ) -> Result<(String, f64)> {
        let (victim, survivors) = members.split_last().context("at least two nodes")?;
        let outcome = self.load_while_failing(members, victim, fail)?;
        // Heartbeats stop with the node: it is down once its last one is a lease old.
        let detected = self.await_listed(&survivors[0], &victim.id, "down", None, outcome.failed_at, lease * 3)?;
        if outcome.refused_by_survivors > 0 {
            bail!("surviving nodes refused {} posts", outcome.refused_by_survivors);
        }
        self.assert_in_history(&survivors[0], &outcome.acknowledged)?;
        let detail = format!(
            "{} {how} under load; listed down after {:.2} s (lease {:?}); {} posts acknowledged, 0 lost",
            victim.id,
            detected.as_secs_f64(),
            lease,
            outcome.acknowledged.len()
        );
        Ok((detail, detected.as_secs_f64()))
    }

    /// Every id in `acknowledged` can be paged back through `member`.
    pub fn assert_in_history(&self, member: &Member, acknowledged: &BTreeSet<i64>) -> Result<()> {
        let stored = self.history(member)?;
        let lost: Vec<&i64> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
        if !lost.is_empty() {
            bail!(
                "{} acknowledged messages are missing from history: {lost:?}",
                lost.len()
            );
        }
        Ok(())
    }

    /// Every message id in the check channel, paged back from the newest.
    fn history(&self, member: &Member) -> Result<BTreeSet<i64>> {
        let mut ids = BTreeSet::new();
        let mut before = String::new();
        loop {
            let path = format!("/api/v1/channels/{}/messages?limit=200{before}", self.channel);
            let (status, page) = http::request(member.addr, "GET", &path, Some(&self.token), None)?;
            if status != 200 {
                bail!("paging history on {} answered {status}", member.id);
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
    fn open(members: &[Member], token: &str, channel: i64) -> Result<Self> {
        let (sender, arrivals) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let mut socket = open_subscribed(member, token, channel, DELIVERY_TIMEOUT, Duration::from_millis(100))?;
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
                        Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
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
            count: members.len(),
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
