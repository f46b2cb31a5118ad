//! A configuration error: where the bad value came from, its field and what to write instead.

use std::fmt;
use std::path::PathBuf;

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
