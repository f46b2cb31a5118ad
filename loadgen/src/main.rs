//! A load generator for a running PlexiChat server, run as a second process.
//!
//! ```text
//! cargo run --release -p plexichat-load -- post --url http://127.0.0.1:8000 --workers 32 --seconds 10 --subscribers 4
//! cargo run --release -p plexichat-load -- idle-ws --url http://127.0.0.1:8000 --count 1000 --server-pid PID
//! cargo run --release -p plexichat-load -- fanout --url http://127.0.0.1:8000 --subscribers 1000 --rate 200 --seconds 10
//! ```
//! `post` reports messages/s and latency percentiles, and with `--subscribers` the
//! WebSocket delivery latency (post sent → message received); `idle-ws` opens subscribed,
//! idle WebSockets and reports the server's resident memory before and after; `fanout`
//! posts at a fixed rate to many subscribers and accounts for every delivery (see
//! [`fanout`]).
//! Both are bounded in time and count. Point them at a server running the bench
//! profile: the default rate limits would otherwise be what is measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

mod fanout;
mod ledger;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Post messages from concurrent workers for a fixed time.
    Post {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        #[arg(long, default_value_t = 32)]
        workers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// WebSockets subscribed to the channel that time each message's delivery.
        #[arg(long, default_value_t = 0)]
        subscribers: usize,
    },
    /// Post at a fixed rate (open loop) to many WebSocket subscribers of one channel and
    /// account for every delivery: latency p50/p99/max, missing, duplicate, out of order.
    Fanout {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Posts per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive connections the posts share.
        #[arg(long, default_value_t = 32)]
        post_connections: usize,
    },
    /// Hold idle, subscribed WebSocket connections.
    IdleWs {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long to hold them once all are open.
        #[arg(long, default_value_t = 3)]
        hold_seconds: u64,
        /// Server process whose VmRSS to report (Linux).
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let mode = Cli::parse().mode;
    // A socket each subscriber and poster, beyond the usual 1,024 descriptors.
    raise_open_file_limit()?;
    match mode {
        Mode::Post {
            url,
            workers,
            seconds,
            subscribers,
        } => post(&url, workers, Duration::from_secs(seconds), subscribers).await,
        Mode::Fanout {
            url,
            subscribers,
            rate,
            seconds,
            post_connections,
        } => {
            if !(rate > 0.0 && rate.is_finite()) || post_connections == 0 {
                bail!("--rate must be above 0 and --post-connections at least 1");
            }
            let settings = fanout::Settings {
                subscribers,
                rate,
                duration: Duration::from_secs(seconds),
                post_connections,
            };
            println!("{}", fanout::run(&url, &settings).await?);
            Ok(())
        }
        Mode::IdleWs {
            url,
            count,
            hold_seconds,
            server_pid,
        } => idle_ws(&url, count, Duration::from_secs(hold_seconds), server_pid).await,
    }
}

/// A fresh user with a fresh channel, so runs never collide.
struct Session {
    client: reqwest::Client,
    url: String,
    token: String,
    channel: i64,
}

impl Session {
    async fn open(url: &str) -> Result<Self> {
        // Bounded even against a server that stops answering.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let name = format!("load{}", std::process::id() ^ rand_suffix());
        let credentials = json!({"username": name, "password": "load-test-password"});
        let registered = client
            .post(format!("{url}/api/v1/auth/register"))
            .json(&credentials)
            .send()
            .await?;
        if registered.status() != 201 {
            bail!("register failed: {} {}", registered.status(), registered.text().await?);
        }
        let login: Value = client
            .post(format!("{url}/api/v1/auth/login"))
            .json(&credentials)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = login["token"].as_str().context("login returned no token")?.to_string();
        let channel: Value = client
            .post(format!("{url}/api/v1/channels"))
            .bearer_auth(&token)
            .json(&json!({"name": name}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Self {
            client,
            url: url.to_string(),
            token,
            channel: channel["id"].as_i64().context("channel has no id")?,
        })
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

async fn post(url: &str, workers: usize, duration: Duration, subscribers: usize) -> Result<()> {
    let session = std::sync::Arc::new(Session::open(url).await?);
    // One clock for posters and subscribers: a body carries its send time on it.
    let clock = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut listeners = Vec::new();
    for _ in 0..subscribers {
        let mut socket = subscribe(&session).await?;
        let mut stopped = stopped.clone();
        let delivered = delivered.clone();
        listeners.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    frame = socket.next() => match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(sent) = sent_at(&text) {
                                latencies.push(clock.elapsed().saturating_sub(sent));
                                delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            latencies
        }));
    }

    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for worker in 0..workers {
        let session = session.clone();
        handles.push(tokio::spawn(async move {
            let endpoint = format!("{}/api/v1/channels/{}/messages", session.url, session.channel);
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let body = format!("{} worker {worker} message {n}", clock.elapsed().as_micros());
                let response = session
                    .client
                    .post(&endpoint)
                    .bearer_auth(&session.token)
                    .json(&json!({ "body": body }))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 201 => latencies.push(sent.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for handle in handles {
        let (worker_latencies, worker_failures) = handle.await?;
        latencies.extend(worker_latencies);
        failures += worker_failures;
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Fan-out is best effort: wait a bounded time for what is still in flight.
    let expected = latencies.len() * subscribers;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(std::sync::atomic::Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut deliveries = Vec::new();
    for listener in listeners {
        deliveries.extend(listener.await?);
    }

    let report = json!({
        "mode": "post",
        "workers": workers,
        "subscribers": subscribers,
        "seconds": elapsed,
        "messages": latencies.len(),
        "failures": failures,
        "messages_per_second": latencies.len() as f64 / elapsed,
        "latency_ms": percentiles_ms(&latencies),
        "deliveries": deliveries.len(),
        "deliveries_expected": expected,
        "delivery_ms": percentiles_ms(&deliveries),
    });
    println!("{report}");
    Ok(())
}

/// The send time a load message's body starts with (microseconds on the run's clock).
fn sent_at(frame: &str) -> Option<Duration> {
    let frame: Value = serde_json::from_str(frame).ok()?;
    if frame["type"] != "message" {
        return None;
    }
    let micros = frame["message"]["body"].as_str()?.split(' ').next()?.parse().ok()?;
    Some(Duration::from_micros(micros))
}

fn percentiles_ms(samples: &[Duration]) -> Value {
    let mut micros: Vec<u32> = samples.iter().copied().map(ledger::micros).collect();
    micros.sort_unstable();
    json!({"p50": ledger::quantile_ms(&micros, 0.50), "p99": ledger::quantile_ms(&micros, 0.99)})
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket of the session's user, subscribed to its channel.
async fn subscribe(session: &Session) -> Result<Socket> {
    let ws_url = format!(
        "{}/api/v1/ws?token={}",
        session.url.replacen("http", "ws", 1),
        session.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .context("opening a WebSocket")?;
    let subscribe = json!({"type": "subscribe", "channel_id": session.channel}).to_string();
    socket.send(WsMessage::text(subscribe)).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .context("no reply to subscribe")?;
    match reply {
        Some(Ok(WsMessage::Text(text))) if text.contains("subscribed") => Ok(socket),
        other => bail!("unexpected reply to subscribe: {other:?}"),
    }
}

async fn idle_ws(url: &str, count: usize, hold: Duration, server_pid: Option<u32>) -> Result<()> {
    let session = Session::open(url).await?;
    let before = server_pid.map(resident_kib).transpose()?;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(subscribe(&session).await?);
    }
    // Let the server settle before reading its memory.
    tokio::time::sleep(hold).await;
    let during = server_pid.map(resident_kib).transpose()?;
    // Check every socket still works: one message must reach all of them.
    let posted = session
        .client
        .post(format!("{}/api/v1/channels/{}/messages", session.url, session.channel))
        .bearer_auth(&session.token)
        .json(&json!({"body": "are you all there?"}))
        .send()
        .await?;
    if posted.status() != 201 {
        bail!("post failed: {}", posted.status());
    }
    let mut received = 0;
    for socket in &mut sockets {
        if let Ok(Some(Ok(WsMessage::Text(_)))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            received += 1;
        }
    }
    let report = json!({
        "mode": "idle-ws",
        "connections": sockets.len(),
        "received_broadcast": received,
        "server_rss_kib_before": before,
        "server_rss_kib_with_connections": during,
        "kib_per_connection": before.zip(during).map(|(b, d)| (d as f64 - b as f64) / count as f64),
    });
    println!("{report}");
    Ok(())
}

fn raise_open_file_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-file limit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-file limit")
}

fn resident_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}
