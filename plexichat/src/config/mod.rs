//! Runtime settings: a YAML profile's `server` section, then `PLEXICHAT_*` environment
//! overrides, then command-line flags. Every mistake is reported with where it came from
//! (file or variable), the field's path and what to write instead.
//!
//! `settings` holds the types and their defaults, `load` reads a profile and the
//! environment into them, `validate` holds the rules the types cannot express, and
//! `error` the error all of them report.

mod error;
mod load;
mod settings;
mod validate;

pub use error::{ConfigError, Origin};
pub use load::Sources;
pub use settings::{
    AuthSettings, CacheSettings, ClusterSettings, CompressionSettings, DatabaseSettings, HttpSettings, Limits,
    MetricsSettings, RateLimitSettings, Settings, WebSocketSettings,
};

/// Profiles written to temporary files, for the tests of each part.
#[cfg(test)]
mod test_support {
    use std::io::Write;

    pub(super) fn profile(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    pub(super) fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }
}
