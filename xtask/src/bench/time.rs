//! Time mode, paired. A shared machine slows whichever side happens to run while something
//! else does, so the two sides never run apart: for each benchmark the baseline's and the
//! current side's executables take turns in short criterion slices (a short warm-up, a
//! short measurement), the order flipped every pair so a drift favours neither, and the
//! verdict comes from the pairs' ratios ([`super::paired`]). This is tango-bench's paired
//! benchmarking, done across two processes instead of inside one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use services::process::{self, cmd};

use super::build::Side;
use super::{paired, Measurement};
use crate::report::progress::Task;

/// One slice: long enough for criterion's timer to see many iterations, short enough that
/// a load coming and going rarely hits one half of a pair only.
const WARM_UP_SECONDS: &str = "0.2";
const MEASUREMENT_SECONDS: &str = "0.5";
/// Many short samples, so that some of them ran undisturbed; criterion's own analysis of
/// a slice is not used, so it resamples little.
const SAMPLES: &str = "30";
const CRITERION_RESAMPLES: &str = "1000";

/// A benchmark whose interval still spans the threshold after the pairs asked for gets
/// this many more, again while it does, up to `MAX_PAIRS_FACTOR` times the pairs asked
/// for. A change near the threshold, or a loaded machine, needs more pairs to be told from
/// noise; a clear case needs no more. More pairs only narrow the interval around the true
/// change, so asking for them cannot turn no change into a verdict.
const EXTRA_PAIRS: u32 = 8;
const MAX_PAIRS_FACTOR: u32 = 4;

/// Measures each benchmark in at least `pairs` pairs of slices, one benchmark at a time,
/// with more while its interval spans `threshold_pct`.
pub(crate) fn measure(
    baseline: &Side,
    current: &Side,
    ids: &[String],
    pairs: u32,
    threshold_pct: f64,
    criterion_home: &Path,
    task: &Task,
) -> Result<BTreeMap<String, Measurement>> {
    let mut results = BTreeMap::new();
    let most = pairs * MAX_PAIRS_FACTOR;
    for (index, id) in ids.iter().enumerate() {
        let mut base = Slices::new(baseline, id, criterion_home);
        let mut new = Slices::new(current, id, criterion_home);
        let mut wanted = pairs;
        let measurement = loop {
            for pair in base.times.len() as u32..wanted {
                task.step(format!(
                    "[{}/{}] {id}: pair {}/{wanted}",
                    index + 1,
                    ids.len(),
                    pair + 1
                ));
                if pair % 2 == 0 {
                    base.take()?;
                    new.take()?;
                } else {
                    new.take()?;
                    base.take()?;
                }
            }
            let measurement = paired::measurement(&base.times, &new.times);
            if wanted >= most || !paired::undecided(&measurement, threshold_pct / 100.0) {
                break measurement;
            }
            wanted = (wanted + EXTRA_PAIRS).min(most);
            task.detail(format!(
                "{id}: the interval spans the {threshold_pct}% threshold after {} pairs; up to {wanted}",
                base.times.len()
            ));
        };
        results.insert(id.clone(), measurement);
    }
    Ok(results)
}

/// One side's slices of one benchmark: their times, and where criterion keeps the latest
/// slice's samples (found once, after the first slice: criterion names its directories
/// after sanitised ids).
struct Slices<'a> {
    side: &'a Side,
    id: &'a str,
    home: PathBuf,
    samples: Option<PathBuf>,
    times: Vec<f64>,
}

impl<'a> Slices<'a> {
    fn new(side: &'a Side, id: &'a str, criterion_home: &Path) -> Self {
        Self {
            side,
            id,
            home: criterion_home.join(side.label),
            samples: None,
            times: Vec::new(),
        }
    }

    /// Runs one slice and keeps its time.
    fn take(&mut self) -> Result<()> {
        let (executable, id) = (&self.side.benches[self.id], self.id);
        let sh = process::shell_in(&self.side.root)?;
        let output = process::output(
            cmd!(
                sh,
                "{executable} --bench --noplot --exact {id} --warm-up-time {WARM_UP_SECONDS} --measurement-time {MEASUREMENT_SECONDS} --sample-size {SAMPLES} --nresamples {CRITERION_RESAMPLES}"
            )
            .env("CRITERION_HOME", &self.home),
        )
        .with_context(|| format!("running {}", executable.display()))?;
        if !output.status.success() {
            bail!(
                "the {} side's benchmark {id} failed ({}):\n{}",
                self.side.label,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let samples = match &self.samples {
            Some(samples) => samples,
            None => {
                let dir = benchmark_directories(&self.home)
                    .remove(id)
                    .with_context(|| format!("criterion wrote no results for {id} under {}", self.home.display()))?;
                self.samples.insert(dir.join("new").join("sample.json"))
            }
        };
        self.times.push(fastest_sample(samples)?);
        Ok(())
    }
}

/// The fastest sample's time per iteration (ns) in criterion's `sample.json`. Other work
/// on the machine only ever adds time, so the least disturbed sample is the best estimate
/// of the code's own (as BenchmarkTools.jl argues in "Robust benchmarking in noisy
/// environments").
fn fastest_sample(file: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let sample: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let numbers = |field: &str| -> Result<Vec<f64>> {
        sample[field]
            .as_array()
            .with_context(|| format!("no {field} in {}", file.display()))?
            .iter()
            .map(|value| {
                value
                    .as_f64()
                    .with_context(|| format!("a number in {}'s {field}", file.display()))
            })
            .collect()
    };
    numbers("times")?
        .iter()
        .zip(numbers("iters")?)
        .filter(|(_, iterations)| *iterations > 0.0)
        .map(|(nanoseconds, iterations)| nanoseconds / iterations)
        .min_by(f64::total_cmp)
        .with_context(|| format!("{}: criterion ran no iteration", file.display()))
}

/// Criterion's directory of each benchmark, by id (its directory names are sanitised ids,
/// so the id is read from the `benchmark.json` it keeps there).
fn benchmark_directories(home: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![home.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name == "benchmark.json")
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|name| name == "new")
            {
                let id = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .and_then(|value| value["full_id"].as_str().map(str::to_string));
                if let (Some(id), Some(bench_dir)) = (id, path.parent().and_then(Path::parent)) {
                    found.insert(id, bench_dir.to_path_buf());
                }
            }
        }
    }
    found
}
