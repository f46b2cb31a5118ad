//! `cargo xtask bench-compare`: the criterion benches of a baseline (a git ref, built in
//! a worktree under target/) against the working tree, with a verdict per benchmark and
//! exit status 1 when any regressed beyond the threshold.

mod baseline;
mod build;
mod e2e;
mod instructions;
mod time;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use self::build::Checkout;
use crate::error::UsageError;
use crate::progress::Progress;
use crate::report::{Report, Table};

#[derive(clap::Args)]
pub struct Args {
    /// The git ref to compare against [default: the merge-base with main, else HEAD~1].
    #[arg(long, value_name = "REF")]
    baseline: Option<String>,
    /// time: criterion's statistics; instructions: callgrind's counts, deterministic on a
    /// busy machine [default: instructions when CI is set, else time].
    #[arg(long, value_enum, conflicts_with = "e2e")]
    mode: Option<Mode>,
    /// The change (in %) a benchmark may show before it counts [default: 5 in time mode,
    /// 2 in instructions mode, 10 with --e2e].
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
    /// Only benchmarks whose id (group/function/value) matches this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "e2e")]
    filter: Option<String>,
    /// Instead of the benches: whole release servers under a load generator on loopback,
    /// baseline against working tree, PostgreSQL against SQLite, aarch64 under qemu-user
    /// against native (messages/s, post and WebSocket delivery p50/p99).
    #[arg(long)]
    e2e: bool,
    /// --e2e: rounds; each runs every server once, in turn.
    #[arg(long, default_value_t = 3, requires = "e2e", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// --e2e: seconds of load per server and round.
    #[arg(long, default_value_t = 5, requires = "e2e", value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// --e2e: concurrent posters.
    #[arg(long, default_value_t = 16, requires = "e2e", value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// --e2e: WebSocket subscribers timing each message's delivery.
    #[arg(long, default_value_t = 4, requires = "e2e")]
    subscribers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Time,
    Instructions,
}

impl Mode {
    fn default_threshold(self) -> f64 {
        match self {
            Mode::Time => 5.0,
            Mode::Instructions => 2.0,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Mode::Time => "ns",
            Mode::Instructions => "instructions",
        }
    }
}

/// One benchmark on both sides; `change` and `interval` are relative (0.03 = +3 %).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub baseline: f64,
    pub current: f64,
    pub change: f64,
    /// Time: criterion's bootstrap confidence interval of the change in the mean.
    /// Instructions: the lowest and highest change any pair of runs shows.
    pub interval: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    NoChange,
    Regressed,
    /// Only on one side: nothing to compare.
    New,
    Removed,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::NoChange => "no change",
            Verdict::Regressed => "REGRESSED",
            Verdict::New => "new",
            Verdict::Removed => "removed",
        }
    }
}

/// Regressed only when the whole interval lies above the threshold, improved only when
/// it lies below minus the threshold: a single mean never decides.
pub fn verdict(measurement: &Measurement, threshold_pct: f64) -> Verdict {
    let threshold = threshold_pct / 100.0;
    let (lower, upper) = measurement.interval.unwrap_or((measurement.change, measurement.change));
    if lower > threshold {
        Verdict::Regressed
    } else if upper < -threshold {
        Verdict::Improved
    } else {
        Verdict::NoChange
    }
}

#[derive(Serialize)]
struct BenchReport {
    id: String,
    unit: &'static str,
    baseline: Option<f64>,
    current: Option<f64>,
    change_pct: Option<f64>,
    interval_pct: Option<[f64; 2]>,
    verdict: Verdict,
}

#[derive(Serialize)]
struct CompareReport {
    ok: bool,
    mode: Mode,
    threshold_pct: f64,
    baseline: SideReport,
    current: SideReport,
    rustc: String,
    benches: Vec<BenchReport>,
    regressed: usize,
    improved: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct SideReport {
    reference: String,
    commit: String,
}

/// Threshold of an end-to-end comparison: whole servers on a shared machine are noisier
/// than criterion's functions.
const E2E_THRESHOLD_PCT: f64 = 10.0;

pub fn run(args: Args) -> Result<Report> {
    let started = Instant::now();
    let mode = args.mode.unwrap_or(if std::env::var_os("CI").is_some() {
        Mode::Instructions
    } else {
        Mode::Time
    });
    let threshold = args.threshold.unwrap_or(if args.e2e {
        E2E_THRESHOLD_PCT
    } else {
        mode.default_threshold()
    });
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(UsageError(format!(
            "--threshold {threshold}: not a percentage\n  fix: pass a number ≥ 0, e.g. --threshold 3"
        ))
        .into());
    }
    if !args.e2e && mode == Mode::Instructions {
        instructions::require_valgrind()?;
    }
    let checkouts = Checkouts::prepare(args.baseline.as_deref())?;
    let progress = Progress::new();
    let task = progress.task("bench");
    task.step(format!(
        "baseline {} = {}",
        checkouts.reference,
        short(&checkouts.commit)
    ));
    let worktree = baseline::Worktree::add(&checkouts.repo, &checkouts.run_dir.join("baseline"), &checkouts.commit)?;
    let sides = e2e::Sides {
        // The baseline builds in a target directory of its own, kept between runs: its
        // dependencies are compiled once, and the working tree's build stays as it was.
        baseline: Checkout {
            label: "baseline",
            root: &worktree.path.join(&checkouts.relative_root),
            target_dir: &checkouts.target_dir.join("xtask").join("bench-compare").join("target"),
            bin_dir: checkouts.run_dir.join("baseline-bin"),
            fresh_checkout: true,
        },
        current: Checkout {
            label: "current",
            root: &checkouts.root,
            target_dir: &checkouts.target_dir,
            bin_dir: checkouts.run_dir.join("current-bin"),
            fresh_checkout: false,
        },
        same_sources: baseline::working_tree_is(&checkouts.repo, &checkouts.commit),
    };
    let sides_report = [
        SideReport {
            reference: checkouts.reference.clone(),
            commit: checkouts.commit.clone(),
        },
        SideReport {
            reference: "working tree".into(),
            commit: baseline::working_tree_revision(&checkouts.repo),
        },
    ];
    if args.e2e {
        let load = e2e::Load {
            rounds: args.rounds,
            seconds: args.seconds,
            workers: args.workers,
            subscribers: args.subscribers,
        };
        let outcome = e2e::compare(&sides, load, threshold, &progress, &task)?;
        drop(worktree);
        task.finish(format!("{} rounds of {} s per server", load.rounds, load.seconds));
        let [baseline, current] = sides_report;
        let json = serde_json::json!({
            "ok": outcome.ok,
            "kind": "e2e",
            "baseline": baseline,
            "current": current,
            "report": outcome.json,
            "seconds": started.elapsed().as_secs_f64(),
        });
        return Ok(Report::new(outcome.ok, outcome.table, &json).with_summary(outcome.summary));
    }

    let base_side = build::benches(&sides.baseline, args.filter.as_deref(), &task)?;
    let current_side = build::benches(&sides.current, args.filter.as_deref(), &task)?;
    if base_side.rustc != current_side.rustc {
        return Err(different_compilers(&base_side.rustc, &current_side.rustc).into());
    }
    let shared: Vec<String> = current_side
        .benches
        .keys()
        .filter(|id| base_side.benches.contains_key(*id))
        .cloned()
        .collect();
    if current_side.benches.is_empty() {
        return Err(UsageError(format!(
            "no benchmark matches{}\n  fix: drop --filter or widen it; `cargo bench -- --list` lists them",
            args.filter
                .as_deref()
                .map(|f| format!(" --filter {f}"))
                .unwrap_or_default()
        ))
        .into());
    }
    let run_dir = &checkouts.run_dir;
    let measured = match mode {
        Mode::Time => time::measure(&base_side, &current_side, &shared, &run_dir.join("criterion"), &task)?,
        Mode::Instructions => {
            instructions::measure(&base_side, &current_side, &shared, &run_dir.join("callgrind"), &task)?
        }
    };
    drop(worktree);

    let mut ids: Vec<&String> = current_side.benches.keys().chain(base_side.benches.keys()).collect();
    ids.sort();
    ids.dedup();
    let benches: Vec<BenchReport> = ids
        .into_iter()
        .map(|id| {
            let measurement = measured.get(id);
            let verdict = match measurement {
                Some(m) => verdict(m, threshold),
                None if current_side.benches.contains_key(id) => Verdict::New,
                None => Verdict::Removed,
            };
            BenchReport {
                id: id.clone(),
                unit: mode.unit(),
                baseline: measurement.map(|m| m.baseline),
                current: measurement.map(|m| m.current),
                change_pct: measurement.map(|m| m.change * 100.0),
                interval_pct: measurement
                    .and_then(|m| m.interval)
                    .map(|(l, u)| [l * 100.0, u * 100.0]),
                verdict,
            }
        })
        .collect();
    let regressed = benches.iter().filter(|b| b.verdict == Verdict::Regressed).count();
    let improved = benches.iter().filter(|b| b.verdict == Verdict::Improved).count();
    task.finish(format!("{} benchmarks compared", measured.len()));

    let mut table = Table::new(&["bench", "baseline", "current", "change", "interval", "verdict"]);
    for bench in &benches {
        let value = |v: Option<f64>| v.map_or("-".to_string(), |v| format_value(mode, v));
        table.row(vec![
            bench.id.clone(),
            value(bench.baseline),
            value(bench.current),
            bench.change_pct.map_or("-".into(), |c| format!("{c:+.2}%")),
            bench
                .interval_pct
                .map_or("-".into(), |[l, u]| format!("[{l:+.2}%, {u:+.2}%]")),
            bench.verdict.label().into(),
        ]);
    }
    let [baseline, current] = sides_report;
    let report = CompareReport {
        ok: regressed == 0,
        mode,
        threshold_pct: threshold,
        baseline,
        current,
        rustc: current_side.rustc.clone(),
        benches,
        regressed,
        improved,
        seconds: started.elapsed().as_secs_f64(),
    };
    let summary = format!(
        "{} mode, threshold {threshold}%: {regressed} regressed, {improved} improved, against {} ({}) in {:.0}s",
        match mode {
            Mode::Time => "time",
            Mode::Instructions => "instructions",
        },
        report.baseline.reference,
        short(&report.baseline.commit),
        report.seconds,
    );
    Ok(Report::new(report.ok, table, &report).with_summary(summary))
}

/// Where the comparison runs: the repository, the working tree's workspace, the baseline
/// commit, and a directory of this run's own, removed when it ends.
struct Checkouts {
    reference: String,
    commit: String,
    repo: PathBuf,
    root: PathBuf,
    /// The workspace's place inside the repository, the same in the baseline's checkout.
    relative_root: PathBuf,
    target_dir: PathBuf,
    run_dir: PathBuf,
    _run_dir_guard: crate::teardown::Guard,
}

impl Checkouts {
    fn prepare(baseline: Option<&str>) -> Result<Self> {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let repo = baseline::git(&cwd, &["rev-parse", "--show-toplevel"])
            .map(PathBuf::from)
            .ok_or_else(|| {
                UsageError(format!(
                    "{} is not in a git repository: bench-compare checks the baseline out of git\n  fix: run it inside the workspace's clone",
                    cwd.display()
                ))
            })?;
        let (reference, commit) = match baseline {
            Some(reference) => (reference.to_string(), baseline::resolve(&repo, reference)?),
            None => baseline::default_reference(&repo)?,
        };
        let metadata = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .current_dir(&cwd)
            .exec()
            .context("reading the workspace with cargo metadata")?;
        let root = metadata.workspace_root.into_std_path_buf();
        let target_dir = metadata.target_directory.into_std_path_buf();
        let relative_root = root.strip_prefix(&repo).unwrap_or(Path::new("")).to_path_buf();
        // Per run: two runs at once (tests, a developer and CI) never share a worktree.
        let run_dir = target_dir
            .join("xtask")
            .join("bench-compare")
            .join(format!("run-{}", std::process::id()));
        let owned = run_dir.clone();
        let guard = crate::teardown::Guard::new(move || {
            let _ = std::fs::remove_dir_all(&owned);
        });
        Ok(Self {
            reference,
            commit,
            repo,
            root,
            relative_root,
            target_dir,
            run_dir,
            _run_dir_guard: guard,
        })
    }
}

fn different_compilers(baseline: &str, current: &str) -> UsageError {
    UsageError(format!(
        "the two sides would build with different compilers ({baseline} against {current}): a comparison would measure the compiler\n  fix: pin one toolchain (rust-toolchain.toml) on both sides"
    ))
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

fn format_value(mode: Mode, value: f64) -> String {
    match mode {
        Mode::Instructions => format!("{value:.0}"),
        Mode::Time if value >= 1e9 => format!("{:.3} s", value / 1e9),
        Mode::Time if value >= 1e6 => format!("{:.3} ms", value / 1e6),
        Mode::Time if value >= 1e3 => format!("{:.3} µs", value / 1e3),
        Mode::Time => format!("{value:.1} ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_interval(change: f64, lower: f64, upper: f64) -> Measurement {
        Measurement {
            baseline: 100.0,
            current: 100.0 * (1.0 + change),
            change,
            interval: Some((lower, upper)),
        }
    }

    #[test]
    fn only_a_whole_interval_beyond_the_threshold_decides() {
        assert_eq!(verdict(&with_interval(0.10, 0.07, 0.13), 5.0), Verdict::Regressed);
        // The mean is well above the threshold, the interval is not: noise, not a verdict.
        assert_eq!(verdict(&with_interval(0.10, 0.01, 0.19), 5.0), Verdict::NoChange);
        assert_eq!(verdict(&with_interval(-0.10, -0.13, -0.07), 5.0), Verdict::Improved);
        assert_eq!(verdict(&with_interval(0.0, -0.02, 0.02), 5.0), Verdict::NoChange);
    }

    #[test]
    fn an_exact_count_is_judged_by_its_change() {
        let count = |change: f64| Measurement {
            baseline: 1000.0,
            current: 1000.0 * (1.0 + change),
            change,
            interval: None,
        };
        assert_eq!(verdict(&count(0.03), 2.0), Verdict::Regressed);
        assert_eq!(verdict(&count(0.01), 2.0), Verdict::NoChange);
        assert_eq!(verdict(&count(-0.05), 2.0), Verdict::Improved);
    }
}
