//! `fanout`: many subscribers on one channel, posts at a fixed rate (open loop), and every
//! delivery accounted for.
//!
//! Open loop: the posts go out on a clock, not when the previous one is answered, so a
//! server that falls behind shows as latency (and, once every post connection is busy, as
//! posts it could not be sent: `saturated`) instead of quietly slowing the load down.
//! Each body is `SEQ SENT_US` on the run's one clock; each subscriber keeps a [`Ledger`],
//! and the report says how many acknowledged posts went missing, arrived twice or out of
//! order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::ledger::{quantile_ms, sorted_latencies, Ledger, Tally};
use crate::{subscribe, Session, Socket};

/// Sockets opened at once while setting up: enough to be quick, few enough not to look
/// like a flood to the server's accept queue.
const CONNECT_CONCURRENCY: usize = 64;
/// The drain ends when no delivery came for this long…
const DRAIN_IDLE: Duration = Duration::from_secs(5);
/// …or at the latest after this.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub(crate) struct Settings {
    pub(crate) subscribers: usize,
    /// Posts per second.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    /// Keep-alive connections the posts share; a post waits for none of them.
    pub(crate) post_connections: usize,
}

/// The part of a server frame a subscriber reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    message: Option<FrameMessage<'a>>,
}

#[derive(Deserialize)]
struct FrameMessage<'a> {
    id: i64,
    body: &'a str,
}

/// `SEQ SENT_US` from a message frame of this run.
fn parse_delivery(text: &str) -> Option<(usize, i64, Duration)> {
    let frame: Frame = serde_json::from_str(text).ok()?;
    let message = frame.message.filter(|_| frame.kind == "message")?;
    let (seq, sent) = message.body.split_once(' ')?;
    Some((seq.parse().ok()?, message.id, Duration::from_micros(sent.parse().ok()?)))
}

pub(crate) async fn run(url: &str, settings: &Settings) -> Result<Value> {
    let session = Arc::new(Session::open(url).await?);
    let posts = (settings.rate * settings.duration.as_secs_f64()).round() as usize;
    let sockets: Vec<Socket> = futures_util::stream::iter(0..settings.subscribers)
        .map(|_| subscribe(&session))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
        .with_context(|| format!("opening {} subscribed WebSockets", settings.subscribers))?;

    let clock = Instant::now();
    let deliveries = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let reader = Reader {
                ledger: Ledger::new(posts),
                deliveries: deliveries.clone(),
                closed: closed.clone(),
            };
            tokio::spawn(reader.read(socket, clock, stopped.clone()))
        })
        .collect();

    let posting = post_at_rate(&session, settings, posts, clock).await;

    // Fan-out trails the posts: wait, bounded, for what is still in flight.
    let accepted = posting.acknowledged.iter().filter(|&&acked| acked).count() as u64;
    let drain_started = Instant::now();
    let (mut last_count, mut last_change) = (0, Instant::now());
    loop {
        let open = settings.subscribers as u64 - closed.load(Ordering::Relaxed);
        let count = deliveries.load(Ordering::Relaxed);
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if count >= accepted * open || last_change.elapsed() > DRAIN_IDLE || drain_started.elapsed() > DRAIN_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut ledgers = Vec::with_capacity(readers.len());
    for reader in readers {
        ledgers.push(reader.await?);
    }

    let tally = Tally::of(&ledgers, &posting.acknowledged);
    let latencies = sorted_latencies(&ledgers);
    let window = posting.window.as_secs_f64();
    Ok(json!({
        "mode": "fanout",
        "subscribers": settings.subscribers,
        "offered_rate": settings.rate,
        "achieved_rate": accepted as f64 / window,
        "seconds": window,
        "posts_sent": posting.sent,
        "posts_unsent": posts as u64 - posting.sent,
        "posts_accepted": accepted,
        "post_failures": posting.failures,
        // A post that found every connection busy was not sent: the server is behind.
        "saturated": posting.sent < posts as u64,
        "deliveries": tally.deliveries,
        "deliveries_expected": tally.expected,
        "delivery_ms": {
            "p50": quantile_ms(&latencies, 0.50),
            "p99": quantile_ms(&latencies, 0.99),
            "max": quantile_ms(&latencies, 1.0),
        },
        "missing": tally.missing,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "unexpected_frames": tally.strangers,
        "sockets_closed": closed.load(Ordering::Relaxed),
        // The guarantees: a socket the server closed for falling behind breaks none of them.
        "clean": tally.is_clean(),
    }))
}

struct Reader {
    ledger: Ledger,
    deliveries: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

impl Reader {
    async fn read(mut self, mut socket: Socket, clock: Instant, mut stopped: watch::Receiver<bool>) -> Ledger {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                frame = socket.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Some((seq, id, sent)) = parse_delivery(&text) {
                            self.ledger.record(seq, id, clock.elapsed().saturating_sub(sent));
                            self.deliveries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    // The server closed it (1013 for a subscriber that fell behind) or it broke.
                    _ => {
                        self.closed.fetch_add(1, Ordering::Relaxed);
                        self.ledger.close();
                        break;
                    }
                },
            }
        }
        self.ledger
    }
}

struct Posting {
    /// By sequence number: whether the server answered 201.
    acknowledged: Vec<bool>,
    sent: u64,
    failures: u64,
    /// From the first post to the last answer.
    window: Duration,
}

/// Sends `posts` posts, one each 1/rate seconds; a post whose turn comes while every
/// connection is busy is not sent (and counted), so the rate never bends to the server.
async fn post_at_rate(session: &Arc<Session>, settings: &Settings, posts: usize, clock: Instant) -> Posting {
    let acknowledged: Arc<Vec<AtomicBool>> = Arc::new((0..posts).map(|_| AtomicBool::new(false)).collect());
    let failures = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(Semaphore::new(settings.post_connections));
    let endpoint = Arc::new(format!("{}/api/v1/channels/{}/messages", session.url, session.channel));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    // A tick the runtime was late for is caught up at once: the offered rate holds over the run.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0;
    for seq in 0..posts {
        ticks.tick().await;
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        sent += 1;
        let (session, endpoint, acknowledged, failures) = (
            session.clone(),
            endpoint.clone(),
            acknowledged.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            let body = format!("{seq} {}", clock.elapsed().as_micros());
            let response = session
                .client
                .post(endpoint.as_str())
                .bearer_auth(&session.token)
                .json(&json!({ "body": body }))
                .send()
                .await;
            match response {
                Ok(response) if response.status() == 201 => acknowledged[seq].store(true, Ordering::Relaxed),
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    // Every post answered: all the connections are free again.
    let all = u32::try_from(settings.post_connections).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
    Posting {
        acknowledged: acknowledged.iter().map(|acked| acked.load(Ordering::Relaxed)).collect(),
        sent,
        failures: failures.load(Ordering::Relaxed),
        window: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_of_the_run_is_read_and_others_are_not() {
        let frame = r#"{"type":"message","message":{"id":42,"channel_id":1,"author_id":1,"author":"a","body":"7 1500","created_at":"x","node_id":"n"}}"#;
        assert_eq!(parse_delivery(frame), Some((7, 42, Duration::from_micros(1500))));
        assert_eq!(parse_delivery(r#"{"type":"subscribed","channel_id":1}"#), None);
        let foreign = r#"{"type":"message","message":{"id":1,"body":"hello there"}}"#;
        assert_eq!(parse_delivery(foreign), None);
        assert_eq!(parse_delivery("not json"), None);
    }
}
