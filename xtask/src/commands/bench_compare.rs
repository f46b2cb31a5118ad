//! `cargo xtask bench-compare`: the criterion benches of a baseline (a git ref, built in
//! a worktree under target/) against the working tree, with a verdict per benchmark and
//! exit status 1 when any regressed beyond the threshold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::bench::build::Checkout;
use crate::bench::fanout::FanoutLoad;
use crate::bench::{
    baseline, build, different_compilers, e2e, format_value, instructions, short, time, verdict, Checkouts,
    Measurement, Mode, Verdict, DEFAULT_THRESHOLD_PCT,
};
use crate::qemu;
use crate::report::error::UsageError;
use crate::report::progress::{Progress, Task};
use crate::report::verdicts::{self, Recorded};
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::targets;
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// The git ref to compare against [default: the merge-base with main, else HEAD~1].
    #[arg(long, value_name = "REF")]
    baseline: Option<String>,
    /// time: criterion slices of both sides taking turns, judged by their paired ratios;
    /// instructions: callgrind's counts, deterministic on a busy machine [default:
    /// instructions when CI is set, else time].
    #[arg(long, value_enum, conflicts_with = "e2e")]
    mode: Option<Mode>,
    /// The change (in %) a benchmark may show before it counts [default: 2, 10 with --e2e].
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
    /// Only benchmarks whose id (group/function/value) matches this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "e2e")]
    filter: Option<String>,
    /// Time mode: pairs of slices (baseline and current, back to back) per benchmark.
    #[arg(long, default_value_t = 16, conflicts_with = "e2e", value_parser = clap::value_parser!(u32).range(2..))]
    pairs: u32,
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
    /// --e2e: also post at this fixed rate (posts/s, open loop) to --fanout-subscribers
    /// WebSockets on the baseline's and the working tree's SQLite servers, each round:
    /// delivery p50/p99/max, and any post missing, doubled or out of order (exit 1).
    #[arg(long, value_name = "RATE", requires = "e2e", value_parser = positive_number)]
    fanout: Option<f64>,
    /// --e2e: subscribers of the fan-out runs and the capacity search.
    #[arg(long, default_value_t = 1000, requires = "e2e", value_parser = clap::value_parser!(u32).range(1..))]
    fanout_subscribers: u32,
    /// --e2e: find each side's highest post rate whose delivery p99 stays within this many
    /// milliseconds (doubling from --fanout, or 100 posts/s, then bisecting to 10 %).
    #[arg(long, value_name = "P99_MS", requires = "e2e", value_parser = positive_number)]
    capacity: Option<f64>,
    /// --e2e: also run the working tree's server in an x86_64 VM and an aarch64 VM (as
    /// qemu-cluster boots them: TCG here), on the host's PostgreSQL, under the same load
    /// each round, reported as ratios to the native server on PostgreSQL.
    #[arg(long, requires = "e2e")]
    vms: bool,
    /// --e2e: the most runs the capacity search makes per side.
    #[arg(long, default_value_t = 8, requires = "capacity", value_parser = clap::value_parser!(u32).range(1..))]
    capacity_steps: u32,
}

/// A rate or a latency bound: a finite number above 0.
fn positive_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number above 0, e.g. 200")),
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
    /// Instructions mode, regressed: the differential flame graph of the two sides' profiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    flamegraph: Option<PathBuf>,
}

/// What a comparison found: criterion's benches or, with `--e2e`, whole servers.
#[derive(Serialize)]
#[serde(untagged)]
pub enum BenchOutcome {
    Benches(CompareReport),
    E2e(E2eReport),
}

#[derive(Serialize)]
pub struct CompareReport {
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
    /// The working tree's target directory: where its verdict is recorded.
    #[serde(skip)]
    target_dir: PathBuf,
}

#[derive(Serialize)]
struct SideReport {
    reference: String,
    commit: String,
}

#[derive(Serialize)]
pub struct E2eReport {
    ok: bool,
    /// Always `e2e`: tells this document from a benches one.
    kind: &'static str,
    baseline: SideReport,
    current: SideReport,
    report: e2e::Comparison,
    seconds: f64,
    /// The working tree's target directory: where its verdict is recorded.
    #[serde(skip)]
    target_dir: PathBuf,
}

/// Threshold of an end-to-end comparison: whole servers on a shared machine are noisier
/// than criterion's functions.
const E2E_THRESHOLD_PCT: f64 = 10.0;

pub fn run(args: Args) -> Result<BenchOutcome> {
    let outcome = compare(args)?;
    outcome.record()?;
    Ok(outcome)
}

fn compare(args: Args) -> Result<BenchOutcome> {
    let started = Instant::now();
    let mode = args.mode.unwrap_or(if std::env::var_os("CI").is_some() {
        Mode::Instructions
    } else {
        Mode::Time
    });
    let threshold = args.threshold.unwrap_or(if args.e2e {
        E2E_THRESHOLD_PCT
    } else {
        DEFAULT_THRESHOLD_PCT
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
    let checkouts = Checkouts::prepare("--baseline", args.baseline.as_deref())?;
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
            target_dir: &checkouts.baseline_target_dir(),
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
        let fanout = (args.fanout.is_some() || args.capacity.is_some()).then_some(FanoutLoad {
            subscribers: args.fanout_subscribers,
            rate: args.fanout,
            capacity_p99_ms: args.capacity,
            capacity_steps: args.capacity_steps,
        });
        let guests = if args.vms {
            let workspace = Workspace::discover()?;
            let profile = Profile::load(&workspace.profiles_dir(), "bench")?;
            qemu::guests::prepare(&workspace, &profile, &progress, &task)?
        } else {
            Vec::new()
        };
        let comparison = e2e::compare(&sides, load, fanout, guests, threshold, &progress, &task)?;
        drop(worktree);
        task.finish(format!("{} rounds of {} s per server", load.rounds, load.seconds));
        let [baseline, current] = sides_report;
        return Ok(BenchOutcome::E2e(E2eReport {
            ok: !comparison.regressed(),
            kind: "e2e",
            baseline,
            current,
            report: comparison,
            seconds: started.elapsed().as_secs_f64(),
            target_dir: checkouts.target_dir.clone(),
        }));
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
        Mode::Time => time::measure(
            &base_side,
            &current_side,
            &shared,
            args.pairs,
            threshold,
            &run_dir.join("criterion"),
            &task,
        )?,
        Mode::Instructions => {
            instructions::measure(&base_side, &current_side, &shared, &run_dir.join("callgrind"), &task)?
        }
    };
    let flamegraphs = match mode {
        Mode::Instructions => draw_flamegraphs(&checkouts, &base_side, &current_side, &measured, threshold, &task),
        Mode::Time => BTreeMap::new(),
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
                flamegraph: flamegraphs.get(id).cloned(),
            }
        })
        .collect();
    let regressed = benches.iter().filter(|b| b.verdict == Verdict::Regressed).count();
    let improved = benches.iter().filter(|b| b.verdict == Verdict::Improved).count();
    task.finish(format!("{} benchmarks compared", measured.len()));

    let [baseline, current] = sides_report;
    Ok(BenchOutcome::Benches(CompareReport {
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
        target_dir: checkouts.target_dir.clone(),
    }))
}

/// The differential flame graphs of the benchmarks whose counts regressed. A graph that
/// cannot be drawn is reported and left out: the verdict stands without its picture.
fn draw_flamegraphs(
    checkouts: &Checkouts,
    baseline: &build::Side,
    current: &build::Side,
    measured: &BTreeMap<String, Measurement>,
    threshold: f64,
    task: &Task,
) -> BTreeMap<String, PathBuf> {
    let regressed: Vec<&str> = measured
        .iter()
        .filter(|(_, m)| verdict(m, threshold) == Verdict::Regressed)
        .map(|(id, _)| id.as_str())
        .collect();
    if regressed.is_empty() {
        return BTreeMap::new();
    }
    let versus = format!("{} ({}) → working tree", checkouts.reference, short(&checkouts.commit));
    instructions::flamegraphs(
        baseline,
        current,
        &versus,
        &regressed,
        &checkouts.run_dir.join("profiles"),
        &checkouts.flamegraph_dir(),
        task,
    )
    .unwrap_or_else(|error| {
        eprintln!("warning: no flame graph of the regressed benchmarks: {error:#}");
        BTreeMap::new()
    })
}

impl BenchOutcome {
    /// Keeps the verdict for a release's evidence (`report::verdicts`): the working
    /// tree's speed on this host, against the baseline named in each line.
    fn record(&self) -> Result<()> {
        let (baseline, current, target_dir, what) = match self {
            BenchOutcome::Benches(report) => (
                &report.baseline,
                &report.current,
                &report.target_dir,
                format!("{:?} mode", report.mode),
            ),
            BenchOutcome::E2e(report) => (
                &report.baseline,
                &report.current,
                &report.target_dir,
                "whole servers (--e2e)".into(),
            ),
        };
        let mut checks = vec![format!("{what} against {} ({})", baseline.reference, baseline.commit)];
        checks.extend(
            self.summary()
                .iter()
                .flat_map(|summary| summary.lines().map(str::to_string)),
        );
        verdicts::record(
            target_dir,
            &Recorded {
                command: "bench-compare".into(),
                arch: targets::host()?.arch.into(),
                revision: current.commit.clone(),
                binary_sha256: None,
                ok: self.ok(),
                checks,
                at: verdicts::now(),
            },
        )
    }
}

impl Outcome for BenchOutcome {
    fn ok(&self) -> bool {
        match self {
            BenchOutcome::Benches(report) => report.ok(),
            BenchOutcome::E2e(report) => report.ok(),
        }
    }

    fn table(&self) -> Table {
        match self {
            BenchOutcome::Benches(report) => report.table(),
            BenchOutcome::E2e(report) => report.table(),
        }
    }

    fn summary(&self) -> Option<String> {
        match self {
            BenchOutcome::Benches(report) => report.summary(),
            BenchOutcome::E2e(report) => report.summary(),
        }
    }
}

impl Outcome for E2eReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        self.report.table()
    }

    fn summary(&self) -> Option<String> {
        Some(self.report.summary())
    }
}

impl Outcome for CompareReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["bench", "baseline", "current", "change", "interval", "verdict"]);
        for bench in &self.benches {
            let value = |v: Option<f64>| v.map_or("-".to_string(), |v| format_value(self.mode, v));
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
        table
    }

    fn summary(&self) -> Option<String> {
        let mut summary = format!(
            "{} mode, threshold {}%: {} regressed, {} improved, against {} ({}) in {:.0}s",
            match self.mode {
                Mode::Time => "time",
                Mode::Instructions => "instructions",
            },
            self.threshold_pct,
            self.regressed,
            self.improved,
            self.baseline.reference,
            short(&self.baseline.commit),
            self.seconds,
        );
        for bench in &self.benches {
            if let Some(path) = &bench.flamegraph {
                summary.push_str(&format!(
                    "\nwhy {} is slower, as a flame graph: {}",
                    bench.id,
                    path.display()
                ));
            }
        }
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(reference: &str) -> SideReport {
        SideReport {
            reference: reference.into(),
            commit: "0123456789abcdef".into(),
        }
    }

    /// The two kinds of document stay as they were: no tag from the enum around them.
    #[test]
    fn documents_are_untagged() {
        let benches = BenchOutcome::Benches(CompareReport {
            ok: true,
            mode: Mode::Instructions,
            threshold_pct: 2.0,
            baseline: side("main"),
            current: side("working tree"),
            rustc: "rustc 1.85.0".into(),
            benches: Vec::new(),
            regressed: 0,
            improved: 0,
            seconds: 1.0,
            target_dir: PathBuf::from("target"),
        });
        let json = serde_json::to_value(&benches).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "baseline",
                "benches",
                "current",
                "improved",
                "mode",
                "ok",
                "regressed",
                "rustc",
                "seconds",
                "threshold_pct"
            ]
        );
        let e2e = BenchOutcome::E2e(E2eReport {
            ok: false,
            kind: "e2e",
            baseline: side("main"),
            current: side("working tree"),
            report: e2e::regressed_comparison(),
            seconds: 2.0,
            target_dir: PathBuf::from("target"),
        });
        let json = serde_json::to_value(&e2e).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["baseline", "current", "kind", "ok", "report", "seconds"]);
        assert_eq!(json["kind"], "e2e");
        assert!(!e2e.ok());
        assert_eq!(e2e.table().to_string(), e2e::regressed_comparison().table().to_string());
        assert_eq!(json["report"]["servers"].as_array().map(Vec::len), Some(5));
    }
}
