//! Runtime settings: a YAML profile's `server` section, then `PLEXICHAT_*` environment
//! overrides, then command-line flags. Every mistake is reported with where it came from
//! (file or variable), the field's path and what to write instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// Environment variables with a fixed meaning; anything else under `PLEXICHAT_` that
/// contains `__` is a path into the `server` section (`PLEXICHAT_RATE_LIMITS__ENABLED=false`).
const ENV_ALIASES: &[(&str, &[&str])] = &[
    ("PLEXICHAT_LISTEN", &["listen"]),
    ("PLEXICHAT_DATABASE_URL", &["database", "url"]),
    ("PLEXICHAT_NATS_URL", &["cluster", "nats_url"]),
    ("PLEXICHAT_NODE_ID", &["node_id"]),
];
/// The shortest URI limit accepted: a WebSocket URI with its token needs a few hundred bytes.
const MIN_URI_BYTES: usize = 1024;
/// Variables read elsewhere (the profile path, the log filter), not settings.
const ENV_NOT_SETTINGS: &[&str] = &["PLEXICHAT_CONFIG", "PLEXICHAT_LOG"];

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
    /// Per-connection read buffer; tungstenite's default of 128 KiB makes idle
    /// connections expensive.
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub max_message_bytes: usize,
    /// Frames queued for one slow client before it is disconnected.
    pub outbound_queue: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            read_buffer_bytes: 4096,
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

/// Where a bad value came from, so the message can point at it.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flag(String),
    Defaults,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "command-line flag {flag}"),
            Origin::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A setting that cannot be used, with enough detail to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: field `{field}`: {problem}\n  fix: {fix}")]
pub struct ConfigError {
    pub origin: Origin,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

/// Where each setting came from: a `PLEXICHAT_*` variable, the profile or the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    profile: Option<PathBuf>,
    /// Dotted paths (below `server`) of the values the profile sets.
    profile_fields: BTreeSet<String>,
    /// Dotted path set by each variable, and the variable.
    env: BTreeMap<String, String>,
}

impl Sources {
    /// Where the value behind the first of `fields` that was set came from. A field
    /// counts as set by a variable or profile that sets it, a value inside it (a rule on
    /// `rate_limits` is broken by `PLEXICHAT_RATE_LIMITS__API_BURST`) or a mapping
    /// around it (`PLEXICHAT_LISTEN__PORT` turns `listen` into a mapping).
    pub fn origin_of(&self, fields: &[&str]) -> Origin {
        let related = |set: &str, field: &str| {
            set == field
                || set.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
                || field.strip_prefix(set).is_some_and(|rest| rest.starts_with('.'))
        };
        let fields = fields.iter().map(|field| field.trim_start_matches("server."));
        for field in fields.clone() {
            if let Some((_, var)) = self.env.iter().find(|(set, _)| related(set, field)) {
                return Origin::Env(var.clone());
            }
        }
        match &self.profile {
            Some(path)
                if fields
                    .clone()
                    .any(|field| self.profile_fields.iter().any(|set| related(set, field))) =>
            {
                Origin::File(path.clone())
            }
            _ => Origin::Defaults,
        }
    }
}

/// A broken rule of `Settings::check`, before it is known where the values came from.
struct Invalid {
    /// The fields the rule reads, the one reported first.
    fields: &'static [&'static str],
    problem: String,
    fix: String,
}

impl Invalid {
    fn into_error(self, origin: Origin) -> ConfigError {
        ConfigError {
            origin,
            field: format!("server.{}", self.fields.first().copied().unwrap_or("(settings)")),
            problem: self.problem,
            fix: self.fix,
        }
    }
}

impl Settings {
    /// Reads a profile (or the defaults when `profile` is `None`) and applies the
    /// `PLEXICHAT_*` variables in `env`.
    pub fn load<I>(profile: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        Self::load_with_sources(profile, env).map(|(settings, _)| settings)
    }

    /// `load`, also telling where each setting came from, so that a setting the
    /// environment later refuses (a port in use) can be reported like a bad value.
    pub fn load_with_sources<I>(profile: Option<&Path>, env: I) -> Result<(Self, Sources), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut sources = Sources {
            profile: profile.map(Path::to_path_buf),
            ..Sources::default()
        };
        let mut server = match profile {
            Some(path) => read_profile(path)?,
            None => Value::Mapping(Default::default()),
        };
        leaf_paths(&server, "", &mut sources.profile_fields);
        for (var, value) in env {
            if let Some(path) = env_override_path(&var)? {
                let scalar = if ENV_ALIASES.iter().any(|(alias, _)| *alias == var) {
                    Value::String(value)
                } else {
                    serde_yaml::from_str(&value).unwrap_or(Value::String(value))
                };
                set_path(&mut server, &path, scalar);
                sources.env.insert(path.join("."), var);
            }
        }
        let settings: Settings = serde_path_to_error::deserialize(server).map_err(|err| {
            let field = err.path().to_string();
            let problem = err.into_inner().to_string();
            let fix = fix_for(&problem);
            ConfigError {
                origin: sources.origin_of(&[&field]),
                field: format!("server.{field}"),
                problem,
                fix,
            }
        })?;
        settings.check().map_err(|invalid| {
            let origin = sources.origin_of(invalid.fields);
            invalid.into_error(origin)
        })?;
        Ok((settings, sources))
    }

    /// Semantic checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|invalid| invalid.into_error(Origin::Defaults))
    }

    /// `validate`, naming every field a failed rule read: the value to blame may be any
    /// of them (a maximum from the environment below a minimum from the profile).
    fn check(&self) -> Result<(), Invalid> {
        let fail = |fields: &'static [&'static str], problem: String, fix: &str| {
            Err(Invalid {
                fields,
                problem,
                fix: fix.to_string(),
            })
        };
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return fail(
                &["database.url"],
                format!("unsupported database URL `{url}`"),
                "use sqlite://PATH or postgres://USER@HOST/DB",
            );
        }
        if self.database.max_connections == 0 || self.database.min_connections > self.database.max_connections {
            return fail(
                &["database.max_connections", "database.min_connections"],
                format!(
                    "max_connections {} must be at least 1 and at least min_connections {}",
                    self.database.max_connections, self.database.min_connections
                ),
                "raise max_connections or lower min_connections",
            );
        }
        if !(1..=9).contains(&self.compression.level) {
            return fail(
                &["compression.level"],
                format!("gzip level {} is out of range", self.compression.level),
                "use a level from 1 (fastest) to 9 (smallest)",
            );
        }
        if self.http.max_body_bytes < 1024 {
            return fail(
                &["http.max_body_bytes"],
                format!("{} bytes cannot hold a message", self.http.max_body_bytes),
                "use at least 1024",
            );
        }
        let http = &self.http;
        let timeouts: [(&'static [&'static str], Duration, &str); 4] = [
            (&["http.request_timeout"], http.request_timeout, "30s"),
            (&["http.header_read_timeout"], http.header_read_timeout, "10s"),
            (&["http.idle_timeout"], http.idle_timeout, "75s"),
            (&["http.shutdown_timeout"], http.shutdown_timeout, "30s"),
        ];
        for (fields, value, example) in timeouts {
            if value.is_zero() {
                return fail(fields, "must not be zero".into(), &format!("use e.g. {example}"));
            }
        }
        // TCP_KEEPIDLE counts whole seconds.
        if http.tcp_keepalive < Duration::from_secs(1) {
            return fail(
                &["http.tcp_keepalive"],
                format!("{} is under a second", humantime::format_duration(http.tcp_keepalive)),
                "use whole seconds, e.g. 60s",
            );
        }
        if http.max_uri_bytes < MIN_URI_BYTES {
            return fail(
                &["http.max_uri_bytes"],
                format!("{} bytes cannot hold the API's own URIs", http.max_uri_bytes),
                &format!("use at least {MIN_URI_BYTES}, e.g. 8192"),
            );
        }
        // A target over the head limit would be refused as 431 before our 414 could say
        // what is wrong.
        if http.max_header_bytes <= http.max_uri_bytes {
            return fail(
                &["http.max_header_bytes", "http.max_uri_bytes"],
                format!(
                    "{} bytes is not more than max_uri_bytes {}",
                    http.max_header_bytes, http.max_uri_bytes
                ),
                "make the head limit larger than the URI limit, e.g. max_uri_bytes: 8192, max_header_bytes: 65536",
            );
        }
        let rl = &self.rate_limits;
        if rl.enabled && (rl.auth_per_minute == 0 || rl.api_per_second == 0 || rl.api_burst == 0) {
            return fail(
                &["rate_limits"],
                "rates and burst must be at least 1 while rate limiting is enabled".into(),
                "raise them, or set rate_limits.enabled: false",
            );
        }
        if self.websocket.read_buffer_bytes == 0 || self.websocket.outbound_queue == 0 {
            return fail(
                &["websocket"],
                "read_buffer_bytes and outbound_queue must be at least 1".into(),
                "use e.g. read_buffer_bytes: 4096, outbound_queue: 256",
            );
        }
        let l = &self.limits;
        if l.username_min == 0 || l.username_min > l.username_max {
            return fail(
                &["limits.username_min", "limits.username_max"],
                format!("{}..{} is not a usable range", l.username_min, l.username_max),
                "keep 1 <= username_min <= username_max",
            );
        }
        if l.password_min == 0 || l.password_min > l.password_max {
            return fail(
                &["limits.password_min", "limits.password_max"],
                format!("{}..{} is not a usable range", l.password_min, l.password_max),
                "keep 1 <= password_min <= password_max",
            );
        }
        if l.channel_name_max == 0 || l.message_body_max == 0 {
            return fail(
                &["limits"],
                "channel_name_max and message_body_max must be at least 1".into(),
                "use e.g. 64 and 4000",
            );
        }
        let a = &self.auth;
        if argon2::Params::new(a.argon2_memory_kib, a.argon2_iterations, a.argon2_parallelism, None).is_err() {
            return fail(
                &[
                    "auth.argon2_memory_kib",
                    "auth.argon2_iterations",
                    "auth.argon2_parallelism",
                ],
                format!(
                    "argon2 rejects memory {} KiB, iterations {}, parallelism {}",
                    a.argon2_memory_kib, a.argon2_iterations, a.argon2_parallelism
                ),
                "memory must be at least 8 × parallelism KiB; iterations and parallelism at least 1",
            );
        }
        if self.cluster.lease <= self.cluster.heartbeat_interval {
            return fail(
                &["cluster.lease", "cluster.heartbeat_interval"],
                format!(
                    "lease {} is not longer than heartbeat_interval {}",
                    humantime::format_duration(self.cluster.lease),
                    humantime::format_duration(self.cluster.heartbeat_interval)
                ),
                "make the lease a few heartbeats long, e.g. heartbeat_interval: 1s, lease: 5s",
            );
        }
        if let Some(url) = &self.cluster.nats_url {
            let well_formed = ["nats://", "tls://"]
                .iter()
                .any(|scheme| url.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
            if !well_formed {
                return fail(
                    &["cluster.nats_url"],
                    format!("`{url}` is not a NATS URL"),
                    "use nats://HOST:PORT, e.g. nats://127.0.0.1:4222, or leave it unset for one node",
                );
            }
        }
        if self.node_id.as_deref().is_some_and(|id| id.is_empty() || id.len() > 64) {
            return fail(
                &["node_id"],
                "must be 1 to 64 characters".into(),
                "set a short name such as node-1",
            );
        }
        Ok(())
    }

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

/// The `server` section of a profile file. Other sections (`build`, …) belong to the
/// toolchain and are not the server's business, but an unknown top-level key is a typo.
fn read_profile(path: &Path) -> Result<Value, ConfigError> {
    let origin = Origin::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        origin: origin.clone(),
        field: "(file)".into(),
        problem: format!("cannot read the profile: {err}"),
        fix: "pass an existing profile, e.g. --config profiles/dev.yaml".into(),
    })?;
    let document: Value = serde_yaml::from_str(&text).map_err(|err| ConfigError {
        origin: origin.clone(),
        field: "(document)".into(),
        problem: format!("not valid YAML: {err}"),
        fix: "correct the YAML syntax at the position given".into(),
    })?;
    let mut top = match document {
        Value::Mapping(map) => map,
        Value::Null => Default::default(),
        _ => {
            return Err(ConfigError {
                origin,
                field: "(document)".into(),
                problem: "a profile must be a mapping".into(),
                fix: "start the file with `server:`".into(),
            })
        }
    };
    for key in top.keys() {
        let name = key.as_str().unwrap_or_default();
        if !PROFILE_SECTIONS.contains(&name) {
            return Err(ConfigError {
                origin,
                field: format!("{key:?}"),
                problem: format!("unknown section `{name}`"),
                fix: format!("use one of: {}", PROFILE_SECTIONS.join(", ")),
            });
        }
    }
    Ok(top
        .remove("server")
        .filter(|server| !server.is_null())
        .unwrap_or_else(|| Value::Mapping(Default::default())))
}

/// Top-level keys a profile may have; the server reads only `server`.
pub const PROFILE_SECTIONS: &[&str] = &["description", "server", "build"];

fn env_override_path(var: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(rest) = var.strip_prefix("PLEXICHAT_") else {
        return Ok(None);
    };
    if let Some((_, path)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == var) {
        return Ok(Some(path.iter().map(|s| s.to_string()).collect()));
    }
    if ENV_NOT_SETTINGS.contains(&var) {
        return Ok(None);
    }
    if rest.contains("__") {
        return Ok(Some(
            rest.to_ascii_lowercase().split("__").map(str::to_string).collect(),
        ));
    }
    let known: Vec<&str> = ENV_ALIASES
        .iter()
        .map(|(alias, _)| *alias)
        .chain(ENV_NOT_SETTINGS.iter().copied())
        .collect();
    Err(ConfigError {
        origin: Origin::Env(var.to_string()),
        field: "(variable)".into(),
        problem: format!("unknown variable {var}"),
        fix: format!(
            "use one of {} or a path such as PLEXICHAT_RATE_LIMITS__ENABLED, or unset it",
            known.join(", ")
        ),
    })
}

/// Collects the dotted paths of the scalar (and sequence) values under `node`.
fn leaf_paths(node: &Value, prefix: &str, into: &mut BTreeSet<String>) {
    match node {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key.as_str().map_or_else(|| format!("{key:?}"), str::to_string);
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(value, &path, into);
            }
        }
        _ if !prefix.is_empty() => {
            into.insert(prefix.to_string());
        }
        _ => {}
    }
}

fn set_path(root: &mut Value, path: &[String], leaf: Value) {
    let mut node = root;
    for key in path {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        node = map.entry(Value::String(key.clone())).or_insert(Value::Null);
    }
    *node = leaf;
}

/// serde's messages already say what is expected; this turns them into an instruction.
fn fix_for(problem: &str) -> String {
    let expected = problem
        .split_once("expected ")
        .map(|(_, rest)| rest.trim_start_matches("one of "));
    match expected {
        Some(expected) if problem.starts_with("unknown field") => format!("remove it, or use one of {expected}"),
        Some(expected) if problem.starts_with("unknown variant") => format!("use one of {expected}"),
        Some(expected) => format!("give {expected}"),
        None => "see profiles/dev.yaml for a valid example".into(),
    }
}

/// Durations in profiles are written as people say them: `500ms`, `30s`, `1h`.
mod duration {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
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
    use std::io::Write;

    use super::*;

    fn profile(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

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
    fn profile_values_and_durations_are_read() {
        let file = profile("server:\n  http:\n    request_timeout: 1500ms\n  cache:\n    ttl: 2m\n");
        let settings = Settings::load(Some(file.path()), no_env()).unwrap();
        assert_eq!(settings.http.request_timeout, Duration::from_millis(1500));
        assert_eq!(settings.cache.ttl, Duration::from_secs(120));
        assert_eq!(settings.cache.max_entries, CacheSettings::default().max_entries);
    }

    #[test]
    fn connection_timeouts_and_head_limits_are_read_and_checked() {
        let defaults = HttpSettings::default();
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(75));
        assert_eq!(defaults.shutdown_timeout, Duration::from_secs(30));
        let file = profile(
            "server:\n  http:\n    header_read_timeout: 2s\n    idle_timeout: 5s\n    \
             tcp_keepalive: 30s\n    shutdown_timeout: 3s\n    max_uri_bytes: 2048\n    max_header_bytes: 16384\n",
        );
        let http = Settings::load(Some(file.path()), no_env()).unwrap().http;
        assert_eq!(http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(http.idle_timeout, Duration::from_secs(5));
        assert_eq!(http.tcp_keepalive, Duration::from_secs(30));
        assert_eq!(http.shutdown_timeout, Duration::from_secs(3));
        assert_eq!((http.max_uri_bytes, http.max_header_bytes), (2048, 16384));
        for (variable, value, field) in [
            ("PLEXICHAT_HTTP__IDLE_TIMEOUT", "0s", "server.http.idle_timeout"),
            ("PLEXICHAT_HTTP__TCP_KEEPALIVE", "500ms", "server.http.tcp_keepalive"),
            ("PLEXICHAT_HTTP__MAX_URI_BYTES", "100", "server.http.max_uri_bytes"),
            (
                "PLEXICHAT_HTTP__MAX_HEADER_BYTES",
                "4096",
                "server.http.max_header_bytes",
            ),
        ] {
            let err = Settings::load(None, [(variable.to_string(), value.to_string())]).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert_eq!(err.origin, Origin::Env(variable.into()), "{err}");
        }
    }

    #[test]
    fn unknown_field_names_file_field_and_choices() {
        let file = profile("server:\n  cache:\n    ttl_seconds: 5\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.origin, Origin::File(file.path().to_path_buf()));
        assert_eq!(err.field, "server.cache.ttl_seconds");
        assert!(err.problem.contains("unknown field `ttl_seconds`"), "{err}");
        assert!(err.fix.contains("`ttl`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let file = profile("server:\n  rate_limits:\n    api_per_second: lots\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.field, "server.rate_limits.api_per_second");
        assert!(err.to_string().contains("fix:"), "{err}");
    }

    #[test]
    fn bad_duration_says_what_a_duration_looks_like() {
        let file = profile("server:\n  http:\n    request_timeout: soon\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.field, "server.http.request_timeout");
        assert!(err.problem.contains("e.g. 500ms"), "{err}");
    }

    #[test]
    fn unknown_section_is_rejected_but_build_is_not_ours_to_check() {
        let file = profile("build:\n  targets: [anything]\nserver:\n  listen: 127.0.0.1:9000\n");
        assert_eq!(Settings::load(Some(file.path()), no_env()).unwrap().listen.port(), 9000);
        let file = profile("sever:\n  listen: 127.0.0.1:9000\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert!(err.problem.contains("unknown section `sever`"), "{err}");
        assert!(err.fix.contains("server"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let file = profile("server:\n  compression:\n    level: 12\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.field, "server.compression.level");
        assert_eq!(err.origin, Origin::File(file.path().to_path_buf()));
        let file = profile("server:\n  database:\n    url: mysql://x\n");
        assert_eq!(
            Settings::load(Some(file.path()), no_env()).unwrap_err().field,
            "server.database.url"
        );
    }

    #[test]
    fn environment_overrides_the_profile() {
        let file = profile("server:\n  listen: 127.0.0.1:9000\n  rate_limits:\n    enabled: true\n");
        let env = [
            ("PLEXICHAT_LISTEN", "127.0.0.1:9100"),
            ("PLEXICHAT_NODE_ID", "7"),
            ("PLEXICHAT_RATE_LIMITS__ENABLED", "false"),
            ("PLEXICHAT_CACHE__TTL", "3s"),
            ("HOME", "/ignored"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = Settings::load(Some(file.path()), env).unwrap();
        assert_eq!(settings.listen.port(), 9100);
        assert_eq!(settings.node_id.as_deref(), Some("7"));
        assert!(!settings.rate_limits.enabled);
        assert_eq!(settings.cache.ttl, Duration::from_secs(3));
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let env = [("PLEXICHAT_COMPRESSION__LEVEL".to_string(), "0".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert_eq!(err.origin, Origin::Env("PLEXICHAT_COMPRESSION__LEVEL".into()));
        let env = [("PLEXICHAT_LISTEN".to_string(), "nowhere".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert_eq!(err.origin, Origin::Env("PLEXICHAT_LISTEN".into()));
        assert_eq!(err.field, "server.listen");
        let env = [("PLEXICHAT_LISTN".to_string(), "x".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert!(err.problem.contains("unknown variable PLEXICHAT_LISTN"), "{err}");
    }

    #[test]
    fn a_rule_broken_by_a_variable_names_the_variable_not_the_defaults() {
        let cases = [
            // The rule is reported on a parent, a sibling or the mapping around the value.
            ("PLEXICHAT_RATE_LIMITS__API_BURST", "0"),
            ("PLEXICHAT_LIMITS__USERNAME_MAX", "2"),
            ("PLEXICHAT_CLUSTER__HEARTBEAT_INTERVAL", "10s"),
            ("PLEXICHAT_DATABASE__MIN_CONNECTIONS", "50"),
            ("PLEXICHAT_AUTH__ARGON2_PARALLELISM", "0"),
            ("PLEXICHAT_LISTEN__PORT", "80"),
        ];
        for (var, value) in cases {
            let err = Settings::load(None, [(var.to_string(), value.to_string())]).unwrap_err();
            assert_eq!(err.origin, Origin::Env(var.into()), "{err}");
        }
    }

    #[test]
    fn sources_tell_variables_profile_and_defaults_apart() {
        let file = profile("server:\n  listen: 127.0.0.1:9000\n  limits:\n    username_max: 2\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.origin, Origin::File(file.path().to_path_buf()), "{err}");
        let file = profile("server:\n  listen: 127.0.0.1:9000\n");
        let env = [("PLEXICHAT_DATABASE_URL".to_string(), "sqlite://x.db".to_string())];
        let (_, sources) = Settings::load_with_sources(Some(file.path()), env).unwrap();
        assert_eq!(
            sources.origin_of(&["server.listen"]),
            Origin::File(file.path().to_path_buf())
        );
        assert_eq!(
            sources.origin_of(&["server.database.url"]),
            Origin::Env("PLEXICHAT_DATABASE_URL".into())
        );
        assert_eq!(sources.origin_of(&["server.node_id"]), Origin::Defaults);
    }

    #[test]
    fn a_nats_url_must_name_a_nats_server() {
        for bad in ["localhost:4222", "http://nats:4222", "nats://"] {
            let env = [("PLEXICHAT_NATS_URL".to_string(), bad.to_string())];
            let err = Settings::load(None, env).unwrap_err();
            assert_eq!(err.field, "server.cluster.nats_url", "{bad}");
            assert_eq!(err.origin, Origin::Env("PLEXICHAT_NATS_URL".into()));
        }
        let env = [("PLEXICHAT_NATS_URL".to_string(), "nats://127.0.0.1:4222".to_string())];
        assert!(Settings::load(None, env).is_ok());
    }

    #[test]
    fn shipped_profiles_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                Settings::load(Some(&path), no_env()).unwrap_or_else(|err| panic!("{err}"));
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "expected dev, production and bench profiles in {}",
            dir.display()
        );
    }
}
