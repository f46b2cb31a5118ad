//! A scenario's workload: posters and WebSocket subscribers on every node and a sampler of
//! membership, each a thread recording what it saw into the history, until stopped.
//!
//! Each post carries a key in its body (`n<node>-p<poster>-<seq>`), so that a message
//! found stored or delivered is traced to its attempt even when its answer was lost.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::socket::{is_timeout, open_subscribed};
use super::Member;
use crate::history::{self, Delivery, Event, FinalState, Membership, Post, Recorder, Stored};
use crate::scenario;
use crate::system::http;

/// A post without an answer after this is recorded as unanswered.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every node is asked whom it lists as up.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(250);
/// A subscriber whose socket broke tries again this often.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
/// How long a read may block before a subscriber looks at the stop flag.
const READ_POLL: Duration = Duration::from_millis(100);

/// The channel and credentials every client of the workload uses.
#[derive(Clone)]
pub struct Client {
    pub token: String,
    pub channel: i64,
}

/// The workload's threads, recording until [`Running::stop`].
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops every poster, subscriber and sampler and waits for them.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn start(
    members: &[Member],
    client: &Client,
    workload: &scenario::Workload,
    recorder: &Arc<Recorder>,
) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let sockets = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::new();
    let interval = Duration::from_secs_f64(f64::from(workload.posters_per_node) / workload.posts_per_second);
    for (index, member) in members.iter().enumerate() {
        for subscriber in 0..workload.subscribers_per_node {
            let (member, client, recorder, stop, sockets) = (
                member.clone(),
                client.clone(),
                Arc::clone(recorder),
                Arc::clone(&stop),
                Arc::clone(&sockets),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("subscriber {}-{subscriber}", member.id))
                    .spawn(move || subscribe(&member, &client, &recorder, &stop, &sockets))
                    .context("starting a subscriber")?,
            );
        }
        for poster in 0..workload.posters_per_node {
            let (member, client, recorder, stop) =
                (member.clone(), client.clone(), Arc::clone(recorder), Arc::clone(&stop));
            let prefix = format!("n{}-p{poster}", index + 1);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("poster {prefix}"))
                    .spawn(move || post_until_stopped(&member, &client, &prefix, interval, &recorder, &stop))
                    .context("starting a poster")?,
            );
        }
        let (member, client, recorder, stop) =
            (member.clone(), client.clone(), Arc::clone(recorder), Arc::clone(&stop));
        threads.push(
            std::thread::Builder::new()
                .name(format!("membership {}", member.id))
                .spawn(move || sample_membership(&member, &client, &recorder, &stop))
                .context("starting a membership sampler")?,
        );
    }
    Ok(Running { stop, threads })
}

fn record(recorder: &Recorder, event: Event) {
    if let Err(err) = recorder.record(&event) {
        eprintln!("history: {err:#}");
    }
}

fn post_until_stopped(
    member: &Member,
    client: &Client,
    prefix: &str,
    interval: Duration,
    recorder: &Recorder,
    stop: &AtomicBool,
) {
    let path = format!("/api/v1/channels/{}/messages", client.channel);
    let mut next = Instant::now();
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("{prefix}-{seq}");
        let body = json!({"body": history::body_with_key(&key, "scenario load")});
        let sent_ms = recorder.now_ms();
        let answer = http::request_within(
            POST_TIMEOUT,
            member.addr,
            "POST",
            &path,
            Some(&client.token),
            Some(&body),
        );
        let answered_ms = recorder.now_ms();
        let (status, id, error) = match answer {
            Ok((status, reply)) => (
                Some(status),
                reply["id"].as_i64().filter(|_| status == 201),
                (status != 201).then(|| reply.to_string()),
            ),
            Err(err) => (None, None, Some(format!("{err:#}"))),
        };
        record(
            recorder,
            Event::Post(Post {
                node: member.id.clone(),
                key,
                sent_ms,
                answered_ms,
                status,
                id,
                error,
            }),
        );
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind (a slow answer): carry on from now rather than bursting.
            next = now;
        }
    }
}

/// Subscribes and records every message until stopped; a broken socket is opened again
/// as a new socket (a new number), since it may have missed messages meanwhile.
fn subscribe(member: &Member, client: &Client, recorder: &Recorder, stop: &AtomicBool, sockets: &AtomicU32) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut socket) = open_subscribed(member, &client.token, client.channel, POST_TIMEOUT, READ_POLL) else {
            std::thread::sleep(RECONNECT_EVERY);
            continue;
        };
        let number = sockets.fetch_add(1, Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            match socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    let message = &frame["message"];
                    if let Some(id) = message["id"].as_i64() {
                        record(
                            recorder,
                            Event::Delivery(Delivery {
                                socket: number,
                                node: member.id.clone(),
                                id,
                                key: history::key_of_body(message["body"].as_str().unwrap_or_default()),
                                origin: message["node_id"].as_str().unwrap_or_default().to_string(),
                                received_ms: recorder.now_ms(),
                            }),
                        );
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
                Err(_) => break,
            }
        }
        let _ = socket.close(None);
    }
}

fn sample_membership(member: &Member, client: &Client, recorder: &Recorder, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let at_ms = recorder.now_ms();
        let listing = http::request_within(
            MEMBERSHIP_EVERY * 4,
            member.addr,
            "GET",
            "/api/v1/cluster/nodes",
            Some(&client.token),
            None,
        );
        if let Ok((200, nodes)) = listing {
            let up = nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter(|node| node["status"] == "up")
                .filter_map(|node| node["node_id"].as_str().map(str::to_string))
                .collect();
            record(
                recorder,
                Event::Membership(Membership {
                    observer: member.id.clone(),
                    at_ms,
                    up,
                }),
            );
        }
        std::thread::sleep(MEMBERSHIP_EVERY);
    }
}

/// Every message of the channel as each node lists it, and the nodes that could not
/// list it, with why (a broken promise the checker cannot see for itself).
pub(crate) struct Listing {
    pub state: FinalState,
    pub unreadable: Vec<(String, String)>,
}

/// Every message of the channel as each node lists it, paged back from the newest.
pub(crate) fn final_state(members: &[Member], client: &Client) -> Listing {
    let mut listing = Listing {
        state: FinalState::new(),
        unreadable: Vec::new(),
    };
    for member in members {
        match stored_on(member, client) {
            Ok(stored) => {
                listing.state.insert(member.id.clone(), stored);
            }
            Err(err) => listing.unreadable.push((member.id.clone(), format!("{err:#}"))),
        }
    }
    listing
}

/// The channel's messages as `member` lists them.
fn stored_on(member: &Member, client: &Client) -> Result<Vec<Stored>> {
    let mut stored = Vec::new();
    let mut before = String::new();
    loop {
        let path = format!("/api/v1/channels/{}/messages?limit=200{before}", client.channel);
        let (status, page) = http::request(member.addr, "GET", &path, Some(&client.token), None)?;
        if status != 200 {
            anyhow::bail!("paging the channel's messages answered {status}: {page}");
        }
        let page = page.as_array().context("a page of messages")?;
        let Some(oldest) = page.last().and_then(|m| m["id"].as_i64()) else {
            break;
        };
        stored.extend(page.iter().filter_map(|message| {
            Some(Stored {
                id: message["id"].as_i64()?,
                key: history::key_of_body(message["body"].as_str().unwrap_or_default()),
                origin: message["node_id"].as_str().unwrap_or_default().to_string(),
            })
        }));
        before = format!("&before={oldest}");
    }
    Ok(stored)
}
