//! Benchmark comparison: a baseline git ref checked out in a worktree against the working
//! tree, measured by criterion's statistics or callgrind's instruction counts, or as whole
//! servers under load (e2e); a verdict per benchmark that a single mean never decides.

pub(crate) mod baseline;
pub(crate) mod build;
pub(crate) mod e2e;
pub(crate) mod fanout;
mod flamegraph;
pub(crate) mod instructions;
mod paired;
pub(crate) mod revision;
pub(crate) mod time;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::report::error::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    Time,
    Instructions,
}

impl Mode {
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Mode::Time => "ns",
            Mode::Instructions => "instructions",
        }
    }
}

/// The change (in %) a benchmark may show before it counts, in either mode: paired time
/// slices and instruction counts are both steady enough for 2 %.
pub(crate) const DEFAULT_THRESHOLD_PCT: f64 = 2.0;

/// One benchmark on both sides; `change` and `interval` are relative (0.03 = +3 %).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measurement {
    pub baseline: f64,
    pub current: f64,
    pub change: f64,
    /// Time: a bootstrap confidence interval of the median change over the pairs of slices.
    /// Instructions: the lowest and highest change any pair of runs shows.
    pub interval: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Improved,
    NoChange,
    Regressed,
    /// Only on one side: nothing to compare.
    New,
    Removed,
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
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
pub(crate) fn verdict(measurement: &Measurement, threshold_pct: f64) -> Verdict {
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

/// The middle value, or the mean of the middle two; `None` of nothing.
/// Latency percentiles in milliseconds, as the load generator reports them (`max` only in
/// its fan-out mode).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, Serialize)]
pub(crate) struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// Where the comparison runs: the repository, the working tree's workspace, the baseline
/// commit, and a directory of this run's own, removed when it ends.
pub(crate) struct Checkouts {
    pub reference: String,
    pub commit: String,
    pub repo: PathBuf,
    pub root: PathBuf,
    /// The workspace's place inside the repository, the same in the baseline's checkout.
    pub relative_root: PathBuf,
    pub target_dir: PathBuf,
    pub run_dir: PathBuf,
    _run_dir_guard: services::teardown::Guard,
}

impl Checkouts {
    /// For the commit `baseline` names (given with `flag`), or the default baseline.
    pub(crate) fn prepare(flag: &str, baseline: Option<&str>) -> Result<Self> {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let repo = crate::workspace::git(&cwd, &["rev-parse", "--show-toplevel"])
            .map(PathBuf::from)
            .ok_or_else(|| {
                UsageError(format!(
                    "{} is not in a git repository: bench-compare checks the baseline out of git\n  fix: run it inside the workspace's clone",
                    cwd.display()
                ))
            })?;
        let (reference, commit) = match baseline {
            Some(reference) => (reference.to_string(), baseline::resolve(&repo, flag, reference)?),
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
        // Per run: two runs at once (tests, a developer and CI) never share a worktree, nor
        // two revisions checked out by one run (`--from` and `--to`).
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run_dir = target_dir
            .join("xtask")
            .join("bench-compare")
            .join(format!("run-{}-{run}", std::process::id()));
        let owned = run_dir.clone();
        let guard = services::teardown::Guard::new(move || {
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

impl Checkouts {
    /// Where the baseline (and any earlier revision) builds: a target directory of its own,
    /// kept between runs, so that switching revisions does not rebuild the working tree's.
    pub(crate) fn baseline_target_dir(&self) -> PathBuf {
        self.target_dir.join("xtask").join("bench-compare").join("target")
    }

    /// Where the differential flame graphs of regressed benchmarks go: kept after the run,
    /// each benchmark's replacing the one its previous regression drew.
    pub(crate) fn flamegraph_dir(&self) -> PathBuf {
        self.target_dir.join("xtask").join("bench-compare").join("flamegraphs")
    }
}

pub(crate) fn different_compilers(baseline: &str, current: &str) -> UsageError {
    UsageError(format!(
        "the two sides would build with different compilers ({baseline} against {current}): a comparison would measure the compiler\n  fix: pin one toolchain (rust-toolchain.toml) on both sides"
    ))
}

pub(crate) fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

pub(crate) fn format_value(mode: Mode, value: f64) -> String {
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

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

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
