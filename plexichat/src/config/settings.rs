//! The settings types, one per section of a profile's `server`, and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// This node's name in a cluster; defaults to the host name.
    pub node_id: Option<String>,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub compression: CompressionSettings,
    pub cache: CacheSettings,
    pub rate_limits: RateLimitSettings,
    pub websocket: WebSocketSettings,
    pub metrics: MetricsSettings,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub cluster: ClusterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            node_id: None,
            database: DatabaseSettings::default(),
            http: HttpSettings::default(),
            compression: CompressionSettings::default(),
            cache: CacheSettings::default(),
            rate_limits: RateLimitSettings::default(),
            websocket: WebSocketSettings::default(),
            metrics: MetricsSettings::default(),
            auth: AuthSettings::default(),
            limits: Limits::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created if missing) or, with a PostgreSQL build, `postgres://…`.
    pub url: String,
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
    /// SQLite: how long a write waits for another writer's lock before giving up (503).
    #[serde(with = "duration")]
    pub busy_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://plexichat.db".into(),
            max_connections: 8,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(3),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Once a request's first byte (or, on a new connection, the connection itself) has
    /// arrived, the rest of its head must follow within this; else the connection is closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long, and
    /// so is one whose client stops reading a response.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Idle time before TCP keepalive probes start; a peer that has vanished is noticed
    /// about a minute after that even while a request or WebSocket waits on it.
    #[serde(with = "duration")]
    pub tcp_keepalive: Duration,
    /// After SIGTERM, how long in-flight requests and WebSockets get to finish before
    /// what is left is dropped.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Longest request target (path and query) answered; longer ones get 414.
    pub max_uri_bytes: usize,
    /// Largest request head (request line and header fields); larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            // Longer than the 60 s idle timeout of common load balancers, so that they,
            // not we, close a shared connection and never send on one we just closed.
            idle_timeout: Duration::from_secs(75),
            tcp_keepalive: Duration::from_secs(60),
            // As long as the request timeout: every request in flight gets to finish.
            shutdown_timeout: Duration::from_secs(30),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// Responses smaller than this are sent as they are.
    pub min_size_bytes: u16,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub level: u8,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size_bytes: 1024,
            level: 6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Entries per cache (sessions, channels, memberships); 0 turns caching off.
    pub max_entries: u64,
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Login and register attempts per minute per client address.
    pub auth_per_minute: u32,
    /// Authenticated requests per second per user.
    pub api_per_second: u32,
    pub api_burst: u32,
    /// How often idle limiter state is dropped.
    #[serde(with = "duration")]
    pub prune_interval: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_per_minute: 30,
            api_per_second: 50,
            api_burst: 100,
            prune_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Per-connection read buffer, allocated for the connection's life; tungstenite's
    /// default of 128 KiB makes idle connections expensive. Clients send small frames (a
    /// subscribe is under 60 bytes); a bigger one is read in several reads, the buffer
    /// growing to hold it.
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub max_message_bytes: usize,
    /// Frames queued for one slow client before it is disconnected.
    pub outbound_queue: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            read_buffer_bytes: 512,
            write_buffer_bytes: 4096,
            max_message_bytes: 64 * 1024,
            outbound_queue: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub enabled: bool,
    #[serde(with = "duration")]
    pub upkeep_interval: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            upkeep_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    #[serde(with = "duration")]
    pub token_ttl: Duration,
    /// argon2id cost; the defaults are OWASP's minimum for argon2id.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(24 * 3600),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub username_min: usize,
    pub username_max: usize,
    pub password_min: usize,
    pub password_max: usize,
    pub channel_name_max: usize,
    pub message_body_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            username_min: 3,
            username_max: 32,
            password_min: 8,
            password_max: 128,
            channel_name_max: 64,
            message_body_max: 4000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub nats_url: Option<String>,
    /// How often this node refreshes its membership row.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A node whose row is older than this is reported down.
    #[serde(with = "duration")]
    pub lease: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            nats_url: None,
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// The node id, or the host name when none was configured.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "plexichat".into())
        })
    }
}

/// Durations in profiles are written as people say them: `500ms`, `30s`, `1h`.
mod duration {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|err| {
            D::Error::custom(format!(
                "`{text}` is not a duration ({err}); expected e.g. 500ms, 30s, 5m"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{no_env, profile};

    #[test]
    fn defaults_match_the_api_contract() {
        let settings = Settings::load(None, no_env()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(settings.database.url, "sqlite://plexichat.db");
        assert_eq!(settings.http.max_body_bytes, 65536);
        assert_eq!(settings.rate_limits.auth_per_minute, 30);
        assert_eq!(
            (settings.rate_limits.api_per_second, settings.rate_limits.api_burst),
            (50, 100)
        );
        assert_eq!((settings.limits.username_min, settings.limits.username_max), (3, 32));
        assert_eq!(settings.limits.message_body_max, 4000);
    }

    #[test]
    fn bad_duration_says_what_a_duration_looks_like() {
        let file = profile("server:\n  http:\n    request_timeout: soon\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.field, "server.http.request_timeout");
        assert!(err.problem.contains("e.g. 500ms"), "{err}");
    }
}
