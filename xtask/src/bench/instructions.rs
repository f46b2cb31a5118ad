//! Instructions mode: each benchmark run in criterion's test mode (one iteration) under
//! callgrind, counting the instructions of every thread between the benchmark's entry
//! into criterion's `Bencher::iter*` and criterion's report that it passed: the routine
//! (and any worker thread it wakes, e.g. SQLite's), without the set-up around it or the
//! process start. A single-threaded routine counts the same on every run whatever the
//! machine's load; one that hands work to other threads varies a little with their
//! interleaving, so each side runs a few times and the verdict uses the spread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use services::process::{self, cmd};

use super::build::Side;
use super::flamegraph::{self, Folded};
use super::Measurement;
use crate::report::error::UsageError;
use crate::report::progress::Task;

/// Callgrind dumps its counters on entering these, cutting the run into parts: the part
/// between the two is the benchmark's. `Bencher::iter*` covers iter, iter_batched,
/// iter_with_setup, iter_custom …; test_pass is what criterion calls once the routine ran.
const ENTER: &str = "criterion::bencher::Bencher*::iter*";
const LEAVE: &str = "*criterion::report::Report>::test_pass";

/// Runs per side and benchmark.
pub(crate) const RUNS: usize = 3;

/// The fix when valgrind is missing: exit 2 with it.
pub(crate) fn require_valgrind() -> Result<(), UsageError> {
    match crate::system::which("valgrind") {
        Some(_) => Ok(()),
        None => Err(UsageError(
            "--mode instructions needs valgrind (callgrind counts the instructions), and it is not on PATH\n  fix: cargo xtask doctor --fix (it runs apt-get install valgrind as root), or use --mode time"
                .into(),
        )),
    }
}

pub(crate) fn measure(
    baseline: &Side,
    current: &Side,
    ids: &[String],
    out_dir: &Path,
    task: &Task,
) -> Result<BTreeMap<String, Measurement>> {
    std::fs::create_dir_all(out_dir)?;
    let mut results = BTreeMap::new();
    for (index, id) in ids.iter().enumerate() {
        task.step(format!(
            "[{}/{}] {id}: both sides under callgrind",
            index + 1,
            ids.len()
        ));
        let (mut base, mut new) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let (b, n) = on_both_sides(baseline, current, |side| {
                count(side, id, &out_dir.join(format!("{}-{index}-{run}", side.label)))
            })?;
            base.push(b as f64);
            new.push(n as f64);
        }
        results.insert(id.clone(), compare(&mut base, &mut new));
    }
    Ok(results)
}

/// `run` on both sides at once: callgrind's counts do not depend on what else the machine
/// does, so the two runs need not take turns.
fn on_both_sides<T: Send>(baseline: &Side, current: &Side, run: impl Fn(&Side) -> Result<T> + Sync) -> Result<(T, T)> {
    std::thread::scope(|scope| {
        let before = scope.spawn(|| run(baseline));
        let after = run(current);
        let before = before
            .join()
            .unwrap_or_else(|_| bail!("the baseline's callgrind run panicked"));
        Ok((before?, after?))
    })
}

/// The change of the medians, and the widest change the runs allow as its interval.
fn compare(base: &mut [f64], new: &mut [f64]) -> Measurement {
    base.sort_by(f64::total_cmp);
    new.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    let (b, n) = (median(base), median(new));
    let ratio = |n: f64, b: f64| if b > 0.0 { n / b - 1.0 } else { 0.0 };
    Measurement {
        baseline: b,
        current: n,
        change: ratio(n, b),
        interval: Some((ratio(new[0], base[base.len() - 1]), ratio(new[new.len() - 1], base[0]))),
    }
}

/// Instructions (all threads) executed by one iteration of benchmark `id` on `side`.
fn count(side: &Side, id: &str, out_dir: &Path) -> Result<u64> {
    let window = benchmark_window(side, id, out_dir, &[])?;
    Ok(window.iter().map(|part| part.instructions).sum())
}

/// The stacks of one iteration of benchmark `id` on `side` and the instructions run in each.
fn profile(side: &Side, id: &str, out_dir: &Path) -> Result<Folded> {
    let contexts = [
        format!("--separate-callers={}", flamegraph::CALLER_DEPTH),
        "--compress-strings=no".to_string(),
    ];
    let mut stacks = Folded::default();
    for part in benchmark_window(side, id, out_dir, &contexts)? {
        stacks.add_dump(&part.text).with_context(|| {
            format!(
                "reading callgrind's part {} of {id} on the {} side",
                part.number, side.label
            )
        })?;
    }
    Ok(stacks)
}

/// Draws, for each benchmark in `ids`, the differential flame graph of one profiled run per
/// side into `svg_dir`, and returns where each went. `versus` names the two sides in titles.
pub(crate) fn flamegraphs(
    baseline: &Side,
    current: &Side,
    versus: &str,
    ids: &[&str],
    out_dir: &Path,
    svg_dir: &Path,
    task: &Task,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut drawn = BTreeMap::new();
    for (index, id) in ids.iter().enumerate() {
        task.step(format!(
            "[{}/{}] {id}: profiling both sides for a flame graph",
            index + 1,
            ids.len()
        ));
        let (before, after) = on_both_sides(baseline, current, |side| {
            profile(side, id, &out_dir.join(format!("{}-{index}", side.label)))
        })?;
        let path = svg_dir.join(format!("{}.svg", file_stem(id)));
        let title = format!("{id}: {versus}");
        flamegraph::write_differential(&before, &after, &title, &path)?;
        drawn.insert(id.to_string(), path);
    }
    Ok(drawn)
}

/// A benchmark id (`http/page_20_messages`) as a file name.
fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Runs benchmark `id` on `side` once under callgrind (with `extra` options) and returns
/// the dumps of its window: from the first entry into `Bencher::iter*` to `test_pass`.
fn benchmark_window(side: &Side, id: &str, out_dir: &Path, extra: &[String]) -> Result<Vec<Part>> {
    std::fs::create_dir_all(out_dir)?;
    let executable = &side.benches[id];
    let out_file = out_dir.join("callgrind.out");
    let out_file = format!("--callgrind-out-file={}", out_file.display());
    let (enter, leave) = (format!("--dump-before={ENTER}"), format!("--dump-before={LEAVE}"));
    let sh = process::shell_in(&side.root)?;
    let valgrind = cmd!(
        sh,
        "valgrind --tool=callgrind {out_file} {enter} {leave} --dump-instr=no {extra...} {executable} --bench --test --exact {id}"
    );
    let output =
        process::output(valgrind.env("CRITERION_HOME", out_dir.join("criterion"))).context("running valgrind")?;
    if !output.status.success() {
        bail!(
            "the {} side's benchmark {id} failed under callgrind ({}):\n{}",
            side.label,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(out_dir)?.flatten() {
        let path = entry.path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("callgrind.out"))
        {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            parts.push(Part::parse(text).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    let _ = std::fs::remove_dir_all(out_dir);
    window(parts).with_context(|| {
        format!(
            "callgrind saw no call of criterion's Bencher::iter* then test_pass in {id} on the {} side: is it a criterion benchmark?",
            side.label
        )
    })
}

/// One dump of callgrind's counters: what ran since the previous dump, and what ended it.
#[derive(Debug, PartialEq)]
struct Part {
    number: u64,
    trigger: String,
    instructions: u64,
    /// The whole dump, for a profile's stacks.
    text: String,
}

impl Part {
    fn parse(text: String) -> Option<Self> {
        let field = |prefix: &str| text.lines().find_map(|line| line.strip_prefix(prefix)).map(str::trim);
        Some(Self {
            number: field("part:")?.parse().ok()?,
            trigger: field("desc: Trigger:").unwrap_or("").to_string(),
            instructions: field("totals:")
                .or_else(|| field("summary:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?,
            text,
        })
    }
}

/// The parts after the first entry into `Bencher::iter*`, up to the one `test_pass` ends.
fn window(mut parts: Vec<Part>) -> Option<Vec<Part>> {
    parts.sort_by_key(|part| part.number);
    let start = parts.iter().position(|part| part.trigger.contains("Bencher"))? + 1;
    let end = start
        + parts[start..]
            .iter()
            .position(|part| part.trigger.contains("test_pass"))?;
    parts.truncate(end + 1);
    Some(parts.split_off(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u64, trigger: &str, instructions: u64) -> Part {
        Part {
            number,
            trigger: trigger.into(),
            instructions,
            text: String::new(),
        }
    }

    fn instructions(window: Option<Vec<Part>>) -> Option<u64> {
        window.map(|parts| parts.iter().map(|part| part.instructions).sum())
    }

    #[test]
    fn the_window_runs_from_the_first_iter_to_test_pass() {
        let parts = vec![
            part(3, "Program termination", 900),
            part(1, "--dump-before=criterion::bencher::Bencher<M>::iter_batched", 5_000),
            part(2, "--dump-before=criterion::bencher::Bencher<M>::iter", 40),
            part(
                4,
                "--dump-before=<criterion::report::Reports as criterion::report::Report>::test_pass",
                60,
            ),
        ];
        // Part 3 (the end of the program) is numbered before 4 only in this made-up list.
        assert_eq!(instructions(window(parts)), Some(40 + 900 + 60));
        assert_eq!(window(vec![part(1, "Program termination", 10)]), None);
        let unfinished = vec![
            part(1, "--dump-before=criterion::bencher::Bencher<M>::iter", 5),
            part(2, "Program termination", 10),
        ];
        assert_eq!(window(unfinished), None, "no test_pass: the routine never finished");
    }

    #[test]
    fn a_dump_is_parsed() {
        let text = "# callgrind format\nversion: 1\npart: 2\n\ndesc: Trigger: --dump-before=x::test_pass\n\nevents: Ir\nsummary: 4509\n\nfn=(1) f\n0 4509\n\ntotals: 4509\n";
        let parsed = Part::parse(text.to_string()).unwrap();
        assert_eq!(
            (parsed.number, parsed.trigger.as_str(), parsed.instructions),
            (2, "--dump-before=x::test_pass", 4509)
        );
    }

    #[test]
    fn the_interval_spans_every_pair_of_runs() {
        let m = compare(&mut [100.0, 102.0, 98.0], &mut [110.0, 111.0, 109.0]);
        assert_eq!((m.baseline, m.current), (100.0, 110.0));
        let (lower, upper) = m.interval.unwrap();
        assert!((lower - (109.0 / 102.0 - 1.0)).abs() < 1e-12);
        assert!((upper - (111.0 / 98.0 - 1.0)).abs() < 1e-12);
    }
}
