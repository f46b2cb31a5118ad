//! The rules settings must keep that their types cannot express, each naming the fields
//! it reads so that the error can blame where they came from.

use std::time::Duration;

use super::{ConfigError, Origin, Settings};

/// The shortest URI limit accepted: a WebSocket URI with its token needs a few hundred bytes.
const MIN_URI_BYTES: usize = 1024;

/// A broken rule of `Settings::check`, before it is known where the values came from.
pub(super) struct Invalid {
    /// The fields the rule reads, the one reported first.
    pub(super) fields: &'static [&'static str],
    problem: String,
    fix: String,
}

impl Invalid {
    pub(super) fn into_error(self, origin: Origin) -> ConfigError {
        ConfigError {
            origin,
            field: format!("server.{}", self.fields.first().copied().unwrap_or("(settings)")),
            problem: self.problem,
            fix: self.fix,
        }
    }
}

impl Settings {
    /// Semantic checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|invalid| invalid.into_error(Origin::Defaults))
    }

    /// `validate`, naming every field a failed rule read: the value to blame may be any
    /// of them (a maximum from the environment below a minimum from the profile).
    pub(super) fn check(&self) -> Result<(), Invalid> {
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
                "use e.g. read_buffer_bytes: 512, outbound_queue: 256",
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{no_env, profile};
    use crate::config::HttpSettings;

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
}
