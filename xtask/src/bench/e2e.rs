//! `bench-compare --e2e`: whole servers under load rather than functions under criterion.
//!
//! Five servers take turns under the same load generator (plexichat's `load` example, a
//! second process on loopback): the baseline's release build and the working tree's, each
//! on SQLite and on PostgreSQL, and the working tree's static aarch64 build under
//! qemu-user; with `--vms`, also the working tree's server in a VM per guest architecture
//! (booted by the caller's [`GuestServer`]s). Each round runs every server once, in that
//! order, so the machine's drift
//! reaches every side alike; medians over the rounds are what is reported. Only the
//! baseline against the working tree gets a verdict, on each store for speed and for
//! footprint (each target's binary size, the SQLite server's peak memory): the other pairs are meant
//! to differ, and their ratios are what an engineer wants before choosing a store or an
//! edge box.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use services::process::{self, cmd};
use services::teardown::TempDir;
use services::{Durability, Postgres, ServerProcess};

use super::build::{self, Checkout};
use super::fanout::{CapacitySearch, FanoutLoad, FanoutReport, FanoutRun, FanoutSide, DEFAULT_START_RATE};
use super::{median, verdict, Measurement, Percentiles, Verdict};
use crate::cargo::artefact::target_binary;
use crate::provision::{self, Requirement};
use crate::report::error::UsageError;
use crate::report::progress::{Progress, Task};
use crate::report::Table;
use crate::system;
use crate::workspace::profile::{BuildSection, Profile};
use crate::workspace::targets::{self, Target};
use crate::workspace::Workspace;

/// The load every server gets.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Load {
    pub rounds: u32,
    pub seconds: u32,
    /// Concurrent posters.
    pub workers: u32,
    /// WebSockets subscribed to the posters' channel, timing each delivery.
    pub subscribers: u32,
}

/// The emulated side: the edge boxes PlexiChat ships to most are arm64.
const EMULATED_ARCH: &str = "aarch64";

/// One target's stripped server executable, on each side: what an edge box downloads
/// and keeps on its disk.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct BinarySizes {
    arch: &'static str,
    baseline: u64,
    current: u64,
}
/// A server under qemu-user starts far slower than a native one.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Store {
    Sqlite,
    Postgres,
}

/// The servers of a run, in the order each round runs them.
#[derive(Clone, Copy)]
enum Server {
    Baseline,
    Current,
    BaselinePostgres,
    CurrentPostgres,
    Emulated,
}

struct Scenario {
    name: String,
    runs: Runs,
    profile: PathBuf,
    store: Store,
}

/// Where a scenario's server runs.
enum Runs {
    /// A process on the host: the server, with the emulator in front of it when it is a
    /// foreign binary.
    Process(Vec<PathBuf>),
    /// A server booted afresh for each round somewhere else, e.g. a VM (`--vms`).
    Guest(Box<dyn GuestServer>),
}

/// A server this comparison cannot start as a process of its own (the PID 1 of a VM):
/// the command that asks for it supplies how it boots, the comparison when.
pub(crate) trait GuestServer {
    /// How the report names it, after `current · ` and before its store.
    fn name(&self) -> String;
    /// Its executable: what its size is read from.
    fn binary(&self) -> &Path;
    /// Boots it on `database` of `postgres` and waits until it answers.
    fn start(&self, postgres: &Postgres, database: &str) -> Result<Box<dyn RunningGuest>>;
}

/// A [`GuestServer`] booted: dropped without [`RunningGuest::stop`], it is killed.
pub(crate) trait RunningGuest {
    fn url(&self) -> String;
    fn stop(self: Box<Self>) -> Result<()>;
}

impl Scenario {
    /// The server's executable: what its size is read from.
    fn binary(&self) -> Result<&Path> {
        match &self.runs {
            Runs::Process(command) => command.last().map(PathBuf::as_path).context("a server command"),
            Runs::Guest(guest) => Ok(guest.binary()),
        }
    }
}

/// What the load generator prints (its `post` mode).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct LoadResult {
    pub messages: u64,
    pub failures: u64,
    pub messages_per_second: f64,
    pub latency_ms: Percentiles,
    pub deliveries: u64,
    pub deliveries_expected: u64,
    pub delivery_ms: Percentiles,
    /// The server's peak resident memory in the round (read from /proc, not from the load
    /// generator); under qemu-user, the emulator's with the guest program in it.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
}

#[derive(Serialize)]
struct ScenarioReport {
    name: String,
    store: Store,
    /// The server's executable (stripped, as the release profile builds it).
    binary_bytes: u64,
    /// Medians over the rounds.
    messages_per_second: f64,
    peak_rss_mib: Option<f64>,
    latency_ms: Percentiles,
    delivery_ms: Percentiles,
    deliveries: u64,
    deliveries_expected: u64,
    failures: u64,
    rounds: Vec<LoadResult>,
}

#[derive(Serialize)]
struct ComparisonReport {
    name: String,
    of: String,
    against: String,
    /// Messages per second, `of` over `against` (medians).
    throughput_ratio: f64,
    /// The rise in time per message (+3 = 3 % slower), and its range over the rounds.
    change_pct: f64,
    interval_pct: [f64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
}

/// The working tree's footprint against the baseline's, judged like its speed: what an
/// edge box pays in disk and memory for a change.
#[derive(Serialize)]
struct FootprintReport {
    name: String,
    unit: &'static str,
    baseline: f64,
    current: f64,
    change_pct: f64,
    /// A size is exact (the change twice); memory spans the rounds' changes.
    interval_pct: [f64; 2],
    verdict: Verdict,
}

/// What whole servers did under the same load: the `report` of `--e2e`'s document, and
/// the table and summary printed from it.
#[derive(Serialize)]
pub(crate) struct Comparison {
    load: Load,
    threshold_pct: f64,
    servers: Vec<ScenarioReport>,
    /// The working tree against the baseline first: the only pair with a verdict.
    comparisons: Vec<ComparisonReport>,
    footprint: Vec<FootprintReport>,
    /// With `--fanout` or `--capacity`: many subscribers, posts at fixed rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    fanout: Option<FanoutReport>,
}

impl Comparison {
    /// Pairs the servers, given in `compare`'s order (see [`Server`]), and each target's
    /// binaries.
    fn of(load: Load, threshold_pct: f64, servers: Vec<ScenarioReport>, sizes: &[BinarySizes]) -> Self {
        let server = |which: Server| &servers[which as usize];
        let comparisons = vec![
            pair(
                "working tree against baseline",
                server(Server::Current),
                server(Server::Baseline),
                Some(threshold_pct),
            ),
            pair(
                "working tree against baseline on PostgreSQL",
                server(Server::CurrentPostgres),
                server(Server::BaselinePostgres),
                Some(threshold_pct),
            ),
            pair(
                "PostgreSQL against SQLite",
                server(Server::CurrentPostgres),
                server(Server::Current),
                None,
            ),
            pair(
                "emulated against native",
                server(Server::Emulated),
                server(Server::Current),
                None,
            ),
        ];
        // Any server after the emulated one is a VM (`--vms`), each against the native
        // server on the same store.
        let guests = servers[Server::Emulated as usize + 1..].iter().map(|guest| {
            let name = format!("{} against native", guest.name);
            pair(&name, guest, server(Server::CurrentPostgres), None)
        });
        let comparisons = comparisons.into_iter().chain(guests).collect();
        let footprint = footprint(server(Server::Current), server(Server::Baseline), sizes, threshold_pct);
        Self {
            load,
            threshold_pct,
            servers,
            comparisons,
            footprint,
            fanout: None,
        }
    }

    /// Whether the working tree regressed, or either side broke a delivery guarantee.
    pub(crate) fn regressed(&self) -> bool {
        self.comparisons
            .iter()
            .filter_map(|comparison| comparison.verdict)
            .chain(self.footprint.iter().map(|figure| figure.verdict))
            .any(|verdict| verdict == Verdict::Regressed)
            || self.fanout.as_ref().is_some_and(FanoutReport::violated)
    }

    pub(crate) fn table(&self) -> Table {
        let mut table = Table::new(&[
            "server",
            "messages/s",
            "post p50",
            "post p99",
            "delivery p50",
            "delivery p99",
            "delivered",
            "binary",
            "peak RSS",
        ]);
        for report in &self.servers {
            table.row(vec![
                report.name.clone(),
                format!("{:.0}", report.messages_per_second),
                millis(report.latency_ms.p50),
                millis(report.latency_ms.p99),
                millis(report.delivery_ms.p50),
                millis(report.delivery_ms.p99),
                format!("{}/{}", report.deliveries, report.deliveries_expected),
                format!("{:.1} MiB", report.binary_bytes as f64 / MIB),
                report
                    .peak_rss_mib
                    .map_or_else(|| "-".to_string(), |mib| format!("{mib:.1} MiB")),
            ]);
        }
        table
    }

    /// One line per pair of servers: the ratio, the change and, for the baseline pair, the
    /// verdict; then one per footprint figure.
    pub(crate) fn summary(&self) -> String {
        let speed = self.comparisons.iter().map(|c| {
            let verdict = c.verdict.map(|v| format!(" → {}", v.label())).unwrap_or_default();
            format!(
                "{}: ×{:.2} messages/s, {:+.1}% per message [{:+.1}%, {:+.1}%]{verdict}",
                c.name, c.throughput_ratio, c.change_pct, c.interval_pct[0], c.interval_pct[1]
            )
        });
        let footprint = self.footprint.iter().map(|f| {
            // Sizes in bytes read better as MiB; memory is in MiB already.
            let scale = if f.unit == "bytes" { MIB } else { 1.0 };
            format!(
                "{}: {:.1} → {:.1} MiB, {:+.1}% [{:+.1}%, {:+.1}%] → {}",
                f.name,
                f.baseline / scale,
                f.current / scale,
                f.change_pct,
                f.interval_pct[0],
                f.interval_pct[1],
                f.verdict.label()
            )
        });
        let fanout = self.fanout.iter().flat_map(FanoutReport::summary);
        speed.chain(footprint).chain(fanout).collect::<Vec<_>>().join("\n")
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The working tree's binary sizes (one per target) and peak memory against the
/// baseline's, each with the speed comparison's verdict rule and threshold.
fn footprint(
    current: &ScenarioReport,
    baseline: &ScenarioReport,
    sizes: &[BinarySizes],
    threshold_pct: f64,
) -> Vec<FootprintReport> {
    let judged = |name, unit, (b, c): (f64, f64), interval: (f64, f64)| {
        let measurement = Measurement {
            baseline: b,
            current: c,
            change: c / b - 1.0,
            interval: Some(interval),
        };
        FootprintReport {
            name,
            unit,
            baseline: b,
            current: c,
            change_pct: measurement.change * 100.0,
            interval_pct: [interval.0 * 100.0, interval.1 * 100.0],
            verdict: verdict(&measurement, threshold_pct),
        }
    };
    let mut figures: Vec<FootprintReport> = sizes
        .iter()
        .map(|size| {
            let (b, c) = (size.baseline as f64, size.current as f64);
            // A size is exact: its interval is the change itself.
            let change = c / b - 1.0;
            judged(
                format!("binary size ({}), working tree against baseline", size.arch),
                "bytes",
                (b, c),
                (change, change),
            )
        })
        .collect();
    let per_round: Vec<f64> = current
        .rounds
        .iter()
        .zip(&baseline.rounds)
        .filter_map(|(c, b)| Some(c.peak_rss_mib? / b.peak_rss_mib? - 1.0))
        .collect();
    if let (Some(b), Some(c), false) = (baseline.peak_rss_mib, current.peak_rss_mib, per_round.is_empty()) {
        figures.push(judged(
            "peak RSS, working tree against baseline".into(),
            "MiB",
            (b, c),
            span(&per_round),
        ));
    }
    figures
}

/// The baseline's checkout and the working tree's.
pub(crate) struct Sides<'a> {
    pub baseline: Checkout<'a>,
    pub current: Checkout<'a>,
    /// The working tree is the baseline commit, unchanged: its build serves both sides.
    pub same_sources: bool,
}

pub(crate) fn compare(
    sides: &Sides,
    load: Load,
    fanout: Option<FanoutLoad>,
    guests: Vec<Box<dyn GuestServer>>,
    threshold_pct: f64,
    progress: &Progress,
    task: &Task,
) -> Result<Comparison> {
    let emulated = buildable_targets(progress)?;
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), "bench")?;
    // Both sides' servers are built the same way, as build-native builds them.
    let current = build::server(&sides.current, &profile.build, targets::host()?, task)?;
    let baseline = if sides.same_sources {
        task.step("the working tree is the baseline commit, unchanged: one build serves both sides");
        current.clone()
    } else {
        build::server(&sides.baseline, &profile.build, targets::host()?, task)?
    };
    let (base_rustc, current_rustc) = (
        build::compiler(sides.baseline.root),
        build::compiler(sides.current.root),
    );
    if base_rustc != current_rustc {
        return Err(super::different_compilers(&base_rustc, &current_rustc).into());
    }
    let generator = build::load_generator(&sides.current, task)?;
    let foreign = target_binary(&workspace, &profile.build, emulated, task)?;
    let sizes = binary_sizes(
        sides,
        &workspace,
        &profile.build,
        [&current, &baseline, &foreign],
        emulated,
        task,
    )?;
    let profile_of = |root: &Path| root.join("profiles").join("bench.yaml");
    // In `Server`'s order, then the VMs.
    let mut scenarios = vec![
        Scenario {
            name: "baseline · native · SQLite".into(),
            runs: Runs::Process(vec![baseline.clone()]),
            profile: profile_of(sides.baseline.root),
            store: Store::Sqlite,
        },
        Scenario {
            name: "current · native · SQLite".into(),
            runs: Runs::Process(vec![current.clone()]),
            profile: profile_of(sides.current.root),
            store: Store::Sqlite,
        },
        Scenario {
            name: "baseline · native · PostgreSQL".into(),
            runs: Runs::Process(vec![baseline.clone()]),
            profile: profile_of(sides.baseline.root),
            store: Store::Postgres,
        },
        Scenario {
            name: "current · native · PostgreSQL".into(),
            runs: Runs::Process(vec![current.clone()]),
            profile: profile_of(sides.current.root),
            store: Store::Postgres,
        },
        Scenario {
            name: format!("current · {} qemu-user · SQLite", emulated.arch),
            runs: Runs::Process(vec![PathBuf::from(emulated.qemu_user()), foreign]),
            profile: profile_of(sides.current.root),
            store: Store::Sqlite,
        },
    ];
    for guest in guests {
        scenarios.push(Scenario {
            name: format!("current · {} · PostgreSQL", guest.name()),
            runs: Runs::Guest(guest),
            profile: profile_of(sides.current.root),
            store: Store::Postgres,
        });
    }

    task.step("starting PostgreSQL");
    let postgres = Postgres::start(&sides.current.target_dir.join("xtask/cache"), Durability::Durable)?;
    let mut results: Vec<Vec<LoadResult>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=load.rounds {
        for (index, scenario) in scenarios.iter().enumerate() {
            task.step(format!("round {round}/{}: {}", load.rounds, scenario.name));
            let database = match scenario.store {
                Store::Sqlite => None,
                Store::Postgres => {
                    let name = format!("e2e_{round}_{index}");
                    postgres.create_database(&name)?;
                    Some(name)
                }
            };
            let result = run_once(
                scenario,
                database.as_deref().map(|name| (&postgres, name)),
                &generator,
                load,
            )
            .with_context(|| format!("{} (round {round})", scenario.name))?;
            task.detail(format!(
                "{}: {:.0} messages/s, delivery p99 {}",
                scenario.name,
                result.messages_per_second,
                millis(result.delivery_ms.p99)
            ));
            results[index].push(result);
        }
    }

    let reports: Vec<ScenarioReport> = scenarios
        .iter()
        .zip(results)
        .map(|(scenario, rounds)| summarise(scenario, rounds))
        .collect::<Result<_>>()?;
    let mut comparison = Comparison::of(load, threshold_pct, reports, &sizes);
    if let Some(fanout) = fanout {
        let on_sqlite = [
            &scenarios[Server::Baseline as usize],
            &scenarios[Server::Current as usize],
        ];
        comparison.fanout = Some(fan_out(&on_sqlite, &generator, load, fanout, task)?);
    }
    Ok(comparison)
}

/// The fan-out runs on the baseline's and the working tree's SQLite servers, taking turns
/// as the rounds do: first `--rounds` at the fixed rate, then the capacity search, one
/// step of each side's after the other.
fn fan_out(
    sides: &[&Scenario; 2],
    generator: &Path,
    load: Load,
    fanout: FanoutLoad,
    task: &Task,
) -> Result<FanoutReport> {
    let run = |scenario: &Scenario, rate: f64, label: &str| -> Result<FanoutRun> {
        task.step(format!(
            "{label}: {} at {rate} posts/s to {} subscribers",
            scenario.name, fanout.subscribers
        ));
        let result = fanout_once(scenario, generator, load.seconds, fanout.subscribers, rate)
            .with_context(|| format!("{} fan-out at {rate} posts/s ({label})", scenario.name))?;
        task.detail(format!(
            "{}: {rate} posts/s, delivery p99 {}, {} broken, {} closed{}",
            scenario.name,
            millis(result.delivery_ms.p99),
            result.violations(),
            result.sockets_closed,
            if result.saturated { ", saturated" } else { "" },
        ));
        Ok(result)
    };
    let mut rounds: [Vec<FanoutRun>; 2] = Default::default();
    if let Some(rate) = fanout.rate {
        for round in 1..=load.rounds {
            for (side, scenario) in sides.iter().enumerate() {
                rounds[side].push(run(scenario, rate, &format!("fan-out round {round}/{}", load.rounds))?);
            }
        }
    }
    let mut searches = fanout.capacity_p99_ms.map(|bound| {
        let start = fanout.rate.unwrap_or(DEFAULT_START_RATE);
        [0, 1].map(|_| CapacitySearch::new(start, bound, fanout.capacity_steps))
    });
    if let Some(searches) = &mut searches {
        let mut step = 1;
        while searches.iter().any(|search| search.next_rate().is_some()) {
            for (search, scenario) in searches.iter_mut().zip(sides) {
                if let Some(rate) = search.next_rate() {
                    search.record(&run(scenario, rate, &format!("capacity step {step}"))?);
                }
            }
            step += 1;
        }
    }
    let searched = match searches {
        Some([baseline, current]) => [Some(baseline), Some(current)],
        None => [None, None],
    };
    let fanned: Vec<FanoutSide> = sides
        .iter()
        .zip(rounds)
        .zip(searched)
        .map(|((scenario, rounds), search)| FanoutSide::new(scenario.name.clone(), rounds, search))
        .collect();
    Ok(FanoutReport {
        load: fanout,
        sides: fanned,
    })
}

/// Installs what building every target and emulating aarch64 needs (cross linkers,
/// qemu-user) as `doctor --fix` would, and returns the emulated side's target.
fn buildable_targets(progress: &Progress) -> Result<&'static Target> {
    let all: Vec<&'static Target> = targets::TARGETS.iter().collect();
    let lacking = provision::install_per_target(&all, Requirement::to_build, progress);
    if let Some((triple, lacking)) = lacking.iter().next() {
        return Err(UsageError(format!(
            "--e2e compares the server's size on every target and runs the {EMULATED_ARCH} one under qemu-user, and for {triple} this host is {lacking}\n  fix: cargo xtask doctor --fix (as root)",
        ))
        .into());
    }
    targets::by_arch(EMULATED_ARCH).context("aarch64 is one of the toolchain's targets")
}

/// Each target's server on both sides. The host's and the emulated target's current
/// builds are the ones under load; the others are built here, the working tree's through
/// build-native's cache as the emulated one is, the baseline's in its checkout.
fn binary_sizes(
    sides: &Sides,
    workspace: &Workspace,
    build: &BuildSection,
    [current_host, baseline_host, current_emulated]: [&Path; 3],
    emulated: &Target,
    task: &Task,
) -> Result<Vec<BinarySizes>> {
    let host = targets::host()?;
    let length = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.len())
            .with_context(|| format!("reading {}", path.display()))
    };
    targets::TARGETS
        .iter()
        .map(|target| {
            let current = if target == host {
                current_host.to_path_buf()
            } else if target == emulated {
                current_emulated.to_path_buf()
            } else {
                target_binary(workspace, build, target, task)?
            };
            let baseline = if sides.same_sources {
                current.clone()
            } else if target == host {
                baseline_host.to_path_buf()
            } else {
                build::server(&sides.baseline, build, target, task)?
            };
            Ok(BinarySizes {
                arch: target.arch,
                baseline: length(&baseline)?,
                current: length(&current)?,
            })
        })
        .collect()
}

/// A scenario's server on a fresh store, stopped by [`Serving::stop`] (or, on an error,
/// by its drop).
enum Serving {
    Process {
        server: ServerProcess,
        /// The SQLite file and the server's working directory.
        _dir: TempDir,
    },
    Guest(Box<dyn RunningGuest>),
}

impl Serving {
    /// Starts `scenario`'s server on SQLite, or on a database of a PostgreSQL server.
    fn start(scenario: &Scenario, database: Option<(&Postgres, &str)>) -> Result<Self> {
        let command = match &scenario.runs {
            Runs::Process(command) => command,
            Runs::Guest(guest) => {
                let (postgres, name) = database.context("a VM's server runs on PostgreSQL")?;
                return Ok(Self::Guest(guest.start(postgres, name)?));
            }
        };
        let dir = TempDir::new("bench-e2e").context("creating the server's directory")?;
        let database_url = match database {
            Some((postgres, name)) => postgres.url(name),
            None => format!("sqlite://{}", dir.path().join("plexichat.db").display()),
        };
        let (program, prefix) = command.split_last().context("a server command")?;
        // The server runs until the load run is over: a child of ours, not a command.
        let mut command = match prefix.first() {
            Some(emulator) => {
                let mut command = Command::new(emulator);
                command.arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&scenario.profile)
            .args(["--listen", "127.0.0.1:0", "--database-url", &database_url])
            .args(["--node-id", "bench-e2e"])
            .current_dir(dir.path());
        let server = ServerProcess::start(command, SERVER_START_TIMEOUT)?;
        Ok(Self::Process { server, _dir: dir })
    }

    fn url(&self) -> String {
        match self {
            Self::Process { server, .. } => server.url(),
            Self::Guest(guest) => guest.url(),
        }
    }

    /// Stops the server; returns its peak resident memory (MiB), read just before. A VM's
    /// has none: QEMU's own memory holds the guest's whole RAM, not the server's.
    fn stop(self) -> Result<Option<f64>> {
        match self {
            Self::Process { server, _dir } => {
                let peak_rss_mib = system::status_kib(server.pid(), "VmHWM:").map(|kib| kib / 1024.0);
                server.terminate(Duration::from_secs(30))?;
                Ok(peak_rss_mib)
            }
            Self::Guest(guest) => {
                guest.stop()?;
                Ok(None)
            }
        }
    }
}

/// Runs the load generator and reads the one JSON document it prints.
fn generate<T: DeserializeOwned>(command: process::Cmd<'_>) -> Result<T> {
    let output = process::output(command).context("running the load generator")?;
    if !output.status.success() {
        bail!(
            "the load generator failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "reading the load generator's report: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// One server, fresh store (SQLite, or a new PostgreSQL database), one load run; the
/// server is stopped before this returns.
fn run_once(
    scenario: &Scenario,
    database: Option<(&Postgres, &str)>,
    generator: &Path,
    load: Load,
) -> Result<LoadResult> {
    let serving = Serving::start(scenario, database)?;
    let (url, workers, seconds, subscribers) = (
        serving.url(),
        load.workers.to_string(),
        load.seconds.to_string(),
        load.subscribers.to_string(),
    );
    let sh = process::shell()?;
    let generated = generate::<LoadResult>(cmd!(
        sh,
        "{generator} post --url {url} --workers {workers} --seconds {seconds} --subscribers {subscribers}"
    ));
    let peak_rss_mib = serving.stop()?;
    let mut result = generated?;
    if result.messages == 0 {
        bail!("not one message was acknowledged in {} s", load.seconds);
    }
    result.peak_rss_mib = peak_rss_mib;
    Ok(result)
}

/// One server on SQLite, fresh store, one fixed-rate fan-out run.
fn fanout_once(scenario: &Scenario, generator: &Path, seconds: u32, subscribers: u32, rate: f64) -> Result<FanoutRun> {
    let serving = Serving::start(scenario, None)?;
    let (url, seconds, subscribers, rate) = (
        serving.url(),
        seconds.to_string(),
        subscribers.to_string(),
        rate.to_string(),
    );
    let sh = process::shell()?;
    let generated = generate(cmd!(
        sh,
        "{generator} fanout --url {url} --subscribers {subscribers} --rate {rate} --seconds {seconds}"
    ));
    serving.stop()?;
    generated
}

fn summarise(scenario: &Scenario, rounds: Vec<LoadResult>) -> Result<ScenarioReport> {
    let median_of = |value: &dyn Fn(&LoadResult) -> Option<f64>| median(rounds.iter().filter_map(value).collect());
    let binary = scenario.binary()?;
    Ok(ScenarioReport {
        name: scenario.name.clone(),
        store: scenario.store,
        binary_bytes: std::fs::metadata(binary)
            .with_context(|| format!("reading {}", binary.display()))?
            .len(),
        messages_per_second: median_of(&|r| Some(r.messages_per_second)).unwrap_or(0.0),
        peak_rss_mib: median_of(&|r| r.peak_rss_mib),
        latency_ms: Percentiles {
            p50: median_of(&|r| r.latency_ms.p50),
            p99: median_of(&|r| r.latency_ms.p99),
            max: None,
        },
        delivery_ms: Percentiles {
            p50: median_of(&|r| r.delivery_ms.p50),
            p99: median_of(&|r| r.delivery_ms.p99),
            max: None,
        },
        deliveries: rounds.iter().map(|r| r.deliveries).sum(),
        deliveries_expected: rounds.iter().map(|r| r.deliveries_expected).sum(),
        failures: rounds.iter().map(|r| r.failures).sum(),
        rounds,
    })
}

/// The lowest and the highest of the rounds' changes: the interval a verdict reads.
fn span(changes: &[f64]) -> (f64, f64) {
    changes
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lowest, highest), &change| {
            (lowest.min(change), highest.max(change))
        })
}

/// `of` against `against` in time per message (the inverse of throughput, so a positive
/// change is a slowdown, as in the criterion comparison); the interval spans the rounds,
/// each round's pair having run back to back.
fn pair(name: &str, of: &ScenarioReport, against: &ScenarioReport, threshold_pct: Option<f64>) -> ComparisonReport {
    let per_round: Vec<f64> = of
        .rounds
        .iter()
        .zip(&against.rounds)
        .map(|(of, against)| against.messages_per_second / of.messages_per_second - 1.0)
        .collect();
    let change = against.messages_per_second / of.messages_per_second - 1.0;
    let (lowest, highest) = span(&per_round);
    let measurement = Measurement {
        baseline: against.messages_per_second,
        current: of.messages_per_second,
        change,
        interval: Some((lowest, highest)),
    };
    ComparisonReport {
        name: name.to_string(),
        of: of.name.clone(),
        against: against.name.clone(),
        throughput_ratio: of.messages_per_second / against.messages_per_second,
        change_pct: change * 100.0,
        interval_pct: [lowest * 100.0, highest * 100.0],
        // One round's change is a point, not an interval: a verdict needs the rounds to agree.
        verdict: threshold_pct
            .filter(|_| per_round.len() >= 2)
            .map(|threshold| verdict(&measurement, threshold)),
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or("-".into(), |ms| format!("{ms:.2} ms"))
}

/// A server's report with one round per rate, for tests.
#[cfg(test)]
fn scenario(rates: &[f64]) -> ScenarioReport {
    let rounds: Vec<LoadResult> = rates
        .iter()
        .map(|&rate| LoadResult {
            messages: 1,
            failures: 0,
            messages_per_second: rate,
            latency_ms: Percentiles::default(),
            deliveries: 0,
            deliveries_expected: 0,
            delivery_ms: Percentiles::default(),
            peak_rss_mib: Some(10.0),
        })
        .collect();
    ScenarioReport {
        name: "s".into(),
        store: Store::Sqlite,
        binary_bytes: 8 << 20,
        messages_per_second: median(rates.to_vec()).unwrap(),
        peak_rss_mib: Some(10.0),
        latency_ms: Percentiles::default(),
        delivery_ms: Percentiles::default(),
        deliveries: 0,
        deliveries_expected: 0,
        failures: 0,
        rounds,
    }
}

/// Four servers under one load, the working tree a fifth slower than the baseline, for tests.
#[cfg(test)]
pub(crate) fn regressed_comparison() -> Comparison {
    let load = Load {
        rounds: 3,
        seconds: 1,
        workers: 1,
        subscribers: 1,
    };
    let servers = vec![
        scenario(&[1000.0, 1010.0, 990.0]),
        scenario(&[800.0, 820.0, 790.0]),
        scenario(&[700.0, 700.0, 700.0]),
        scenario(&[690.0, 700.0, 710.0]),
        scenario(&[100.0, 100.0, 100.0]),
    ];
    let sizes = ["x86_64", "aarch64", "riscv64"].map(|arch| BinarySizes {
        arch,
        baseline: 8 << 20,
        current: 8 << 20,
    });
    Comparison::of(load, 10.0, servers, &sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throughput_drop_in_every_round_is_a_regression() {
        let baseline = scenario(&[1000.0, 1010.0, 990.0]);
        let slower = scenario(&[800.0, 820.0, 790.0]);
        let comparison = pair("t", &slower, &baseline, Some(10.0));
        assert_eq!(comparison.verdict, Some(Verdict::Regressed));
        assert!(comparison.change_pct > 20.0 && comparison.throughput_ratio < 0.85);
    }

    #[test]
    fn each_vm_is_compared_with_the_native_server_on_postgresql_without_a_verdict() {
        let load = regressed_comparison().load;
        let mut servers: Vec<ScenarioReport> = [1000.0, 1000.0, 700.0, 700.0, 100.0, 70.0, 35.0]
            .iter()
            .map(|&rate| scenario(&[rate, rate, rate]))
            .collect();
        servers[5].name = "current · x86_64 VM (TCG) · PostgreSQL".into();
        servers[6].name = "current · aarch64 VM (TCG) · PostgreSQL".into();
        let comparison = Comparison::of(load, 10.0, servers, &[]);
        let vms = &comparison.comparisons[4..];
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].name, "current · x86_64 VM (TCG) · PostgreSQL against native");
        assert!((vms[0].throughput_ratio - 0.1).abs() < 1e-9 && (vms[1].throughput_ratio - 0.05).abs() < 1e-9);
        assert!(vms.iter().all(|vm| vm.verdict.is_none()), "a VM is meant to be slower");
        assert!(!comparison.regressed());
    }

    #[test]
    fn a_single_round_gives_no_verdict_however_far_apart() {
        let baseline = scenario(&[1000.0]);
        let slower = scenario(&[700.0]);
        let comparison = pair("t", &slower, &baseline, Some(10.0));
        assert_eq!(comparison.verdict, None);
        assert!(comparison.change_pct > 40.0);
    }

    #[test]
    fn one_slow_round_is_noise_not_a_verdict() {
        let baseline = scenario(&[1000.0, 1000.0, 1000.0]);
        let noisy = scenario(&[700.0, 1010.0, 995.0]);
        assert_eq!(
            pair("t", &noisy, &baseline, Some(10.0)).verdict,
            Some(Verdict::NoChange)
        );
    }

    #[test]
    fn the_table_and_summary_are_read_from_the_comparison() {
        let comparison = regressed_comparison();
        assert!(comparison.regressed());
        assert_eq!(comparison.table().to_string().lines().count(), 2 + 5);
        let summary = comparison.summary();
        let lines: Vec<&str> = summary.lines().collect();
        // Four pairs of servers, then a binary size per target and peak RSS.
        assert_eq!(lines.len(), 8, "{summary}");
        assert!(
            lines[1].starts_with("working tree against baseline on PostgreSQL")
                && lines[4].starts_with("binary size (x86_64)")
                && lines[6].starts_with("binary size (riscv64)")
                && lines[7].starts_with("peak RSS"),
            "{summary}"
        );
        assert!(
            lines[0].starts_with("working tree against baseline: ×0.80"),
            "{summary}"
        );
        assert!(lines[0].ends_with("→ REGRESSED"), "{summary}");
        // 700 against 690–710 messages/s: within the threshold on PostgreSQL.
        assert!(lines[1].ends_with("→ no change"), "{summary}");
        assert!(
            !lines[2].contains('→') && !lines[3].contains('→'),
            "only the baseline pairs get a verdict: {summary}"
        );
    }

    /// The baseline's report and the working tree's, whose riscv64 binary (the baseline's
    /// is 8 MiB) and per-round peak memory are given.
    fn footprints(binary_bytes: u64, peak_rss_mib: &[f64]) -> Vec<FootprintReport> {
        let baseline = scenario(&[1000.0, 1000.0, 1000.0]);
        let mut current = scenario(&[1000.0, 1000.0, 1000.0]);
        for (round, mib) in current.rounds.iter_mut().zip(peak_rss_mib) {
            round.peak_rss_mib = Some(*mib);
        }
        current.peak_rss_mib = median(peak_rss_mib.to_vec());
        let sizes = [BinarySizes {
            arch: "riscv64",
            baseline: 8 << 20,
            current: binary_bytes,
        }];
        footprint(&current, &baseline, &sizes, 10.0)
    }

    fn verdicts(figures: &[FootprintReport]) -> Vec<(&str, Verdict)> {
        figures.iter().map(|f| (f.unit, f.verdict)).collect()
    }

    #[test]
    fn a_binary_a_fifth_bigger_is_a_regression_and_a_same_sized_one_is_not() {
        let grown = footprints((8 << 20) * 6 / 5, &[10.0, 10.0, 10.0]);
        assert_eq!(
            verdicts(&grown),
            [("bytes", Verdict::Regressed), ("MiB", Verdict::NoChange)]
        );
        assert!((grown[0].change_pct - 20.0).abs() < 1e-3, "{}", grown[0].change_pct);
        let same = footprints(8 << 20, &[10.0, 10.0, 10.0]);
        assert_eq!(
            verdicts(&same),
            [("bytes", Verdict::NoChange), ("MiB", Verdict::NoChange)]
        );
    }

    #[test]
    fn peak_memory_up_in_every_round_is_a_regression_and_in_one_round_is_noise() {
        let every = footprints(8 << 20, &[12.0, 12.5, 12.2]);
        assert_eq!(verdicts(&every)[1], ("MiB", Verdict::Regressed));
        let once = footprints(8 << 20, &[14.0, 10.1, 9.9]);
        assert_eq!(verdicts(&once)[1], ("MiB", Verdict::NoChange));
    }

    #[test]
    fn a_footprint_regression_alone_fails_the_comparison() {
        let mut comparison = regressed_comparison();
        comparison.comparisons[0].verdict = Some(Verdict::NoChange);
        assert!(!comparison.regressed());
        comparison.footprint = footprints(16 << 20, &[10.0, 10.0, 10.0]);
        assert!(comparison.regressed());
    }
}
