//! Prometheus metrics: the names we export, the process-wide recorder and its upkeep.

use std::sync::Mutex;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "http_request_duration_seconds";
pub const MESSAGES_POSTED_TOTAL: &str = "plexichat_messages_posted_total";
pub const COMMIT_GROUPS_TOTAL: &str = "plexichat_commit_groups_total";
pub const WS_CONNECTIONS: &str = "plexichat_websocket_connections";
pub const WS_CONNECTIONS_TOTAL: &str = "plexichat_websocket_connections_total";
pub const FANOUT_DELIVERIES_TOTAL: &str = "plexichat_fanout_deliveries_total";
pub const FANOUT_DROPPED_TOTAL: &str = "plexichat_fanout_slow_consumers_total";
pub const CACHE_HITS_TOTAL: &str = "plexichat_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "plexichat_cache_misses_total";
pub const DB_QUERY_SECONDS: &str = "plexichat_db_query_duration_seconds";
pub const RATE_LIMITED_TOTAL: &str = "plexichat_rate_limited_total";
pub const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "plexichat_http_connections_closed_by_server_total";

/// Latency buckets from 0.5 ms to 10 s, for every `*_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// The process-wide recorder (the `metrics` facade allows only one), installed on first
/// use. Its upkeep runs on a plain thread so it outlives any one tokio runtime: without
/// upkeep the exporter's histograms grow without bound.
pub fn recorder(upkeep_interval: Duration) -> anyhow::Result<PrometheusHandle> {
    // Held across check and install: two servers starting at once in one process
    // (tests do) must not both try to install.
    let mut installed = RECORDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(upkeep_interval);
            upkeep.run_upkeep();
        })?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by method, route and status");
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency by method and route"
    );
    describe_counter!(MESSAGES_POSTED_TOTAL, "Messages accepted (committed) by this node");
    describe_counter!(
        COMMIT_GROUPS_TOTAL,
        "Transactions that committed posted messages; messages posted per group is the ratio"
    );
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections");
    describe_counter!(WS_CONNECTIONS_TOTAL, "WebSocket connections accepted");
    describe_counter!(FANOUT_DELIVERIES_TOTAL, "Frames handed to local WebSocket subscribers");
    describe_counter!(FANOUT_DROPPED_TOTAL, "Subscribers disconnected for falling behind");
    describe_counter!(CACHE_HITS_TOTAL, "L1 cache hits by cache");
    describe_counter!(CACHE_MISSES_TOTAL, "L1 cache misses by cache");
    describe_histogram!(DB_QUERY_SECONDS, Unit::Seconds, "Database query latency by operation");
    describe_counter!(RATE_LIMITED_TOTAL, "Requests refused by a rate limit");
    describe_counter!(
        HTTP_CONNECTIONS_CLOSED_TOTAL,
        "HTTP connections the server closed, by reason: header_timeout, idle_timeout, shutdown_deadline"
    );
}
