//! An ephemeral PostgreSQL server for local clusters and tests: Debian's own binaries,
//! in a temporary directory on a free loopback port, stopped and removed when dropped
//! (and on Ctrl-C, through the teardown registry).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::{self, free_port, postgres_bin_dir};
use crate::process::{self, cmd, ProcessGuard, Signal};
use crate::teardown::TempDir;
use crate::START_TIMEOUT;

/// How a PostgreSQL server trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit reaches the disk: what a cluster's "no acknowledged message lost"
    /// checks rely on.
    Durable,
    /// fsync off: for tests that never crash the database.
    Fast,
}

pub struct Postgres {
    process: ProcessGuard,
    port: u16,
    bin: PathBuf,
    durability: Durability,
    owner: Option<(u32, u32)>,
    dir: TempDir,
}

impl Postgres {
    /// Starts a server whose data directory is a copy of an initdb'd template kept in
    /// `cache_dir` (made on first use: initdb is the slow part of starting).
    pub fn start(cache_dir: &Path, durability: Durability) -> Result<Self> {
        host::install_if_missing("postgresql", || postgres_bin_dir().is_some())?;
        let bin = postgres_bin_dir().context("PostgreSQL's binaries are missing after installing it")?;
        let template = template(&bin, cache_dir)?;
        let dir = TempDir::new("postgres")?;
        let data = dir.path().join("data");
        let sh = process::shell()?;
        process::run(cmd!(sh, "cp -a {template} {data}"))?;
        let owner = server_user()?;
        if let Some((uid, gid)) = owner {
            chown_tree(dir.path(), uid, gid)?;
        }
        let port = free_port()?;
        let process = spawn(&bin, dir.path(), port, durability, owner)?;
        let postgres = Self {
            process,
            port,
            bin,
            durability,
            owner,
            dir,
        };
        postgres.wait_ready()?;
        Ok(postgres)
    }

    /// Stops the server (a fast shutdown: sessions are ended, a checkpoint is written) and
    /// starts it again on the same data and port, as an administrator's restart does.
    pub fn restart(&mut self) -> Result<()> {
        process::stop(&mut self.process.child(), Signal::SIGINT);
        self.process = spawn(&self.bin, self.dir.path(), self.port, self.durability, self.owner)?;
        self.wait_ready()
    }

    /// Runs `sql` in `database` through psql; its output when it succeeds.
    pub fn execute(&self, database: &str, sql: &str) -> Result<String> {
        let (psql, port) = (self.bin.join("psql"), self.port.to_string());
        let sh = process::shell()?;
        let output = process::output(cmd!(
            sh,
            "{psql} -h 127.0.0.1 -p {port} -U postgres -d {database} -v ON_ERROR_STOP=1 -At -c {sql}"
        ))?;
        if !output.status.success() {
            bail!("psql: {sql}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the `postgres` superuser (trust authentication on loopback).
    pub fn url(&self, database: &str) -> String {
        self.url_via("127.0.0.1", database)
    }

    /// The URL as seen from elsewhere, e.g. a VM that reaches this host as `host`.
    pub fn url_via(&self, host: &str, database: &str) -> String {
        format!("postgres://postgres@{host}:{}/{database}", self.port)
    }

    pub fn create_database(&self, name: &str) -> Result<String> {
        let (createdb, port) = (self.bin.join("createdb"), self.port.to_string());
        let sh = process::shell()?;
        process::run(cmd!(sh, "{createdb} -h 127.0.0.1 -p {port} -U postgres {name}"))?;
        Ok(self.url(name))
    }

    pub fn pid(&self) -> u32 {
        self.process.child().id()
    }

    /// Stops every PostgreSQL process (SIGSTOP): connections stay open but nothing
    /// answers, as when a database host hangs or is cut off. `thaw` undoes it.
    pub fn freeze(&self) -> Result<()> {
        let family = process_family(self.pid());
        signal_each(&family, Signal::SIGSTOP);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let (pg_isready, port) = (self.bin.join("pg_isready"), self.port.to_string());
        let sh = process::shell()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.child().try_wait() {
                bail!("postgres exited during start-up: {status}");
            }
            let ready = process::read(cmd!(sh, "{pg_isready} -q -h 127.0.0.1 -p {port}")).is_some();
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts the postmaster on the data directory under `dir`, owned by a guard that stops it
/// and every process it started.
fn spawn(bin: &Path, dir: &Path, port: u16, durability: Durability, owner: Option<(u32, u32)>) -> Result<ProcessGuard> {
    // The server runs until the guard stops it: a child of ours, not a command.
    let mut command = Command::new(bin.join("postgres"));
    command
        .current_dir(dir)
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ])
        .arg("-k")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if durability == Durability::Fast {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    process::as_user(&mut command, owner);
    let child = command.spawn().context("starting postgres")?;
    Ok(ProcessGuard::with_teardown(child, |postmaster| {
        let family = process_family(postmaster.id());
        // A frozen server must run again to obey; SIGQUIT is PostgreSQL's immediate
        // shutdown, which also stops the backends. Whatever remains is killed.
        signal_each(&family, Signal::SIGCONT);
        process::stop(postmaster, Signal::SIGQUIT);
        signal_each(&family, Signal::SIGKILL);
    }))
}

/// Continues the server whose postmaster is `pid`, frozen by [`Postgres::freeze`].
pub fn thaw(pid: u32) -> Result<()> {
    signal_each(&process_family(pid), Signal::SIGCONT);
    Ok(())
}

/// `pid` and its children. PostgreSQL's backends each lead a session of their own, so
/// signalling the postmaster's process group would not reach them.
fn process_family(pid: u32) -> Vec<u32> {
    let mut family = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the parenthesised command name: state, then the parent's pid.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            family.push(child);
        }
    }
    family
}

fn signal_each(pids: &[u32], signal: Signal) {
    for pid in pids {
        process::signal(*pid, signal);
    }
}

/// The initdb'd data directory copied by every server; made once per PostgreSQL version.
fn template(bin: &Path, cache_dir: &Path) -> Result<PathBuf> {
    // One initdb per process at a time; other processes are kept apart by the rename below.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|v| v.to_str())
        .unwrap_or("pg");
    let template = cache_dir.join(format!("postgres-{version}-template"));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    std::fs::create_dir_all(cache_dir)?;
    // initdb runs as the server's user, who may not be able to reach the workspace (a
    // clone in a private directory): it writes into a staging directory under the
    // system's temporary directory, and the result is copied into the cache.
    let staging = TempDir::new("postgres-initdb")?;
    let owner = server_user()?;
    if let Some((uid, gid)) = owner {
        chown_tree(staging.path(), uid, gid)?;
    }
    let fresh = staging.path().join("data");
    let initdb = bin.join("initdb");
    let sh = process::shell_in(staging.path())?;
    process::run_as(
        cmd!(
            sh,
            "{initdb} -D {fresh} -U postgres --auth=trust -E UTF8 --locale=C --no-sync"
        ),
        owner,
    )
    .context("initdb")?;
    // Copy under a scratch name, then rename: a concurrent run never sees half a template.
    let scratch = cache_dir.join(format!("postgres-{version}-template.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    process::run(cmd!(sh, "cp -a {fresh} {scratch}"))?;
    match std::fs::rename(&scratch, &template) {
        Ok(()) => Ok(template),
        // Another process finished first; its template is as good as ours.
        Err(_) if template.join("PG_VERSION").is_file() => {
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(template)
        }
        Err(err) => Err(err).context("keeping the postgres template"),
    }
}

/// PostgreSQL refuses to run as root: as root, it runs as Debian's `postgres` user.
fn server_user() -> Result<Option<(u32, u32)>> {
    if !host::is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let entry = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .context("running as root needs the `postgres` user (fix: apt-get install postgresql)")?;
    let fields: Vec<&str> = entry.split(':').collect();
    Ok(Some((fields[2].parse()?, fields[3].parse()?)))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let sh = process::shell()?;
    let owner = format!("{uid}:{gid}");
    process::run(cmd!(sh, "chown -R {owner} {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/cache")
    }

    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| !status.contains("State:\tZ"))
    }

    #[test]
    fn postgres_starts_serves_a_new_database_and_goes_away() {
        let postgres = Postgres::start(&cache(), Durability::Fast).unwrap();
        let url = postgres.create_database("unit_test").unwrap();
        assert!(url.ends_with("/unit_test"), "{url}");
        let pid = postgres.pid();
        assert!(running(pid));
        drop(postgres);
        assert!(!running(pid), "postgres outlived its guard");
    }

    #[test]
    fn a_restarted_postgres_keeps_its_port_and_its_data() {
        let mut postgres = Postgres::start(&cache(), Durability::Durable).unwrap();
        postgres
            .execute("postgres", "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
            .unwrap();
        let (port, before) = (postgres.port(), postgres.pid());
        postgres.restart().unwrap();
        assert_ne!(postgres.pid(), before, "a new postmaster");
        assert!(!running(before), "the old postmaster is gone");
        assert_eq!(postgres.port(), port);
        assert_eq!(postgres.execute("postgres", "SELECT n FROM kept").unwrap(), "7");
        let err = postgres.execute("postgres", "SELECT * FROM missing").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_frozen_postgres_is_torn_down_with_all_its_processes() {
        let postgres = Postgres::start(&cache(), Durability::Fast).unwrap();
        postgres.create_database("frozen").unwrap();
        let family = process_family(postgres.pid());
        assert!(family.len() > 1, "the postmaster has background processes: {family:?}");
        postgres.freeze().unwrap();
        // Stopped, or gone, or a zombie: a backend that was exiting as we looked cannot be
        // reaped while its frozen parent is stopped.
        let stopped = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_or(true, |s| s.contains("State:\tT") || s.contains("State:\tZ"))
        };
        // Signals are delivered asynchronously: allow the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !family.iter().all(stopped) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(family.iter().all(stopped), "every process is frozen");
        drop(postgres);
        let survivors: Vec<&u32> = family.iter().filter(|pid| running(**pid)).collect();
        assert!(survivors.is_empty(), "left behind: {survivors:?}");
    }
}
