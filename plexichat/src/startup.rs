//! Why a node could not start when the fault lies in its surroundings (a port in use, a
//! database path it cannot write, a file that is not a database), not in the code: each
//! names the setting to change and how, so the binary can report it like a bad setting.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The listening socket could not be bound.
    // The cause is part of the message and deliberately not a `#[source]`: printed as a
    // chain, it would appear twice.
    #[error("cannot listen on {addr}: {cause}")]
    Listen { addr: SocketAddr, cause: std::io::Error },
    /// The database could not be opened, created or migrated.
    #[error("{problem}")]
    Database { problem: String, fix: String },
}

impl StartupError {
    pub fn listen(addr: SocketAddr, cause: std::io::Error) -> Self {
        Self::Listen { addr, cause }
    }

    /// Explains a failure to open the database at `url` (already redacted of passwords).
    pub fn database(url: &str, err: &(dyn Error + 'static)) -> Self {
        let problem = chain_once(err);
        // SQLite reports extended codes; the primary code is the low byte.
        let sqlite_code = sources(err)
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .and_then(|sqlx| match sqlx {
                sqlx::Error::Database(db) => db.code()?.parse::<i32>().ok(),
                _ => None,
            })
            .map(|code| code & 0xff);
        let fix = match (sqlite_path(url), sqlite_code) {
            // SQLITE_NOTADB: the file exists and holds something else.
            (Some(path), Some(26)) => format!(
                "{} is not a SQLite database: point the URL at a PlexiChat database or at a file that does \
                 not exist yet (it is created), or move that file aside",
                path.display()
            ),
            // SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM: the path cannot be created or written.
            (Some(path), Some(14 | 8 | 3)) => cannot_write_fix(&path),
            // SQLITE_FULL
            (Some(_), Some(13)) => "the disk is full: free space, or point the URL at another disk".into(),
            (Some(_), _) => {
                "check that the database file and its directory are readable and writable by this user".into()
            }
            (None, _) => format!("check that PostgreSQL at {url} is running and accepts this user and database"),
        };
        Self::Database { problem, fix }
    }

    /// The setting to change, as `ConfigError` names fields.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Listen { .. } => "server.listen",
            Self::Database { .. } => "server.database.url",
        }
    }

    /// What to do about it.
    pub fn fix(&self) -> String {
        match self {
            Self::Listen { addr, cause } => match cause.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "stop whatever listens on port {}, or choose another address (port 0 picks a free one)",
                    addr.port()
                ),
                std::io::ErrorKind::PermissionDenied => {
                    "choose a port above 1023, or grant the binary CAP_NET_BIND_SERVICE".into()
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "choose an address of this machine, e.g. 127.0.0.1:8000 or 0.0.0.0:8000".into()
                }
                _ => "choose another address, e.g. 127.0.0.1:8000".into(),
            },
            Self::Database { fix, .. } => fix.clone(),
        }
    }
}

/// The file behind a `sqlite:` URL, or `None` for other databases and in-memory ones.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Says which part of `path` is in the way: as root, only a missing directory or a
/// non-directory on the way (or a read-only file system) stops SQLite from writing.
fn cannot_write_fix(path: &Path) -> String {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let blocker = dir
        .ancestors()
        .find(|ancestor| std::fs::metadata(ancestor).is_ok_and(|meta| !meta.is_dir()));
    match blocker {
        Some(file) => format!(
            "{} is a file, not a directory: point the URL at a path in a writable directory",
            file.display()
        ),
        None if !dir.exists() => format!(
            "create the directory {} (mkdir -p), or point the URL at a path in a writable directory",
            dir.display()
        ),
        None => format!(
            "make {} and {} writable by this user, or point the URL at a path in a writable directory",
            dir.display(),
            path.display()
        ),
    }
}

/// `err` and its sources, outermost first.
fn sources<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&err| err.source())
}

/// The messages of `err` and its sources joined by ": ", leaving out a source whose
/// message the one before already quoted: sqlx, for one, prints its cause and also
/// returns it as the source, so `{:#}` says everything twice.
pub fn chain_once(err: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    for cause in sources(err) {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("the cause")]
    struct Inner;

    #[test]
    fn a_quoted_cause_is_said_once() {
        assert_eq!(chain_once(&Quoting(Inner)), "outer: the cause");
        let wrapped = anyhow::Error::new(Inner).context("opening x");
        assert_eq!(chain_once(wrapped.as_ref()), "opening x: the cause");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://a/b.db?mode=rwc"), Some(PathBuf::from("a/b.db")));
        assert_eq!(sqlite_path("sqlite:c.db"), Some(PathBuf::from("c.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn a_file_on_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let fix = cannot_write_fix(&file.join("sub/chat.db"));
        assert!(fix.starts_with(&format!("{} is a file", file.display())), "{fix}");
        let fix = cannot_write_fix(&dir.path().join("missing/chat.db"));
        assert!(fix.starts_with("create the directory"), "{fix}");
    }
}
