//! `cargo xtask bench-compare` against a fixture: a tiny workspace in a temporary git
//! repository with a baseline commit and a commit that does more of the same work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use plexichat_e2e::{binary, json_of, run_xtask, workspace_root};
use serde_json::Value;
use services::process::{self, cmd};

/// `{package}`: cargo names build outputs by package, not by the workspace's path, so two
/// fixtures with different sources in the one shared target directory need two names.
const MANIFEST: &str = r#"[package]
name = "{package}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
name = "spin"

[dev-dependencies]
criterion = { version = "0.5", default-features = false }

[[bench]]
name = "spin"
harness = false

[workspace]
"#;

const BENCH: &str = r#"use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn spin(c: &mut Criterion) {
    c.bench_function("spin/work", |b| b.iter(|| spin::spin(black_box(spin::WORK))));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = spin
}
criterion_main!(benches);
"#;

fn lib(work: u64) -> String {
    format!(
        "pub const WORK: u64 = {work};\n\n\
         #[inline(never)]\n\
         pub fn spin(n: u64) -> u64 {{\n    \
             let mut x = 0u64;\n    \
             for i in 0..n {{\n        \
                 x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));\n    \
             }}\n    \
             x\n\
         }}\n"
    )
}

/// A git repository whose HEAD does more work than HEAD~1.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// HEAD does twice the work of HEAD~1.
    fn new() -> Self {
        Self::slower_by(20_000, 40_000)
    }

    /// HEAD~1 spins `baseline` times per iteration, HEAD `head` times.
    fn slower_by(baseline: u64, head: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("benches")).unwrap();
        let manifest = MANIFEST.replace("{package}", &format!("spin-{baseline}-{head}"));
        std::fs::write(root.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(root.join("benches/spin.rs"), BENCH).unwrap();
        // The workspace's lock pins criterion and its dependencies: no resolution, and
        // the crates are already in cargo's cache.
        std::fs::copy(workspace_root().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
        let fixture = Self { dir };
        fixture.git(&["init", "--quiet", "--initial-branch=main"]);
        fixture.commit(baseline, "baseline");
        fixture.commit(head, "more work");
        fixture
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn commit(&self, work: u64, message: &str) {
        std::fs::write(self.root().join("src/lib.rs"), lib(work)).unwrap();
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "-m", message]);
    }

    fn git(&self, args: &[&str]) -> String {
        let sh = process::shell_in(self.root()).expect("a shell in the fixture");
        let output = process::output(cmd!(
            sh,
            "git -c user.name=fixture -c user.email=fixture@example.invalid {args...}"
        ))
        .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `cargo xtask bench-compare ARGS --json` run inside the fixture.
    fn compare(&self, args: &[&str]) -> Output {
        let output = Command::new(binary("xtask", "xtask").expect("xtask builds"))
            .arg("bench-compare")
            .args(args)
            .arg("--json")
            .current_dir(self.root())
            // Shared by every fixture and run: criterion is compiled once.
            .env("CARGO_TARGET_DIR", fixture_target_dir())
            .env_remove("CI")
            .output()
            .expect("xtask runs");
        // Whatever the outcome, the baseline's worktree is gone.
        let worktrees = self.git(&["worktree", "list"]);
        assert_eq!(worktrees.lines().count(), 1, "a worktree was left behind:\n{worktrees}");
        output
    }
}

fn fixture_target_dir() -> PathBuf {
    workspace_root().join("target").join("bench-compare-fixture")
}

fn verdict_of(report: &Value, id: &str) -> String {
    report["benches"]
        .as_array()
        .expect("benches")
        .iter()
        .find(|bench| bench["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {report}"))["verdict"]
        .as_str()
        .expect("a verdict")
        .to_string()
}

/// Compares HEAD with HEAD~1, asserts it regressed by more than `least` percent, and
/// returns the report.
fn assert_regressed(fixture: &Fixture, mode: &str, least: f64) -> Value {
    let output = fixture.compare(&["--baseline", "HEAD~1", "--mode", mode]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let report = json_of(&output);
    assert_eq!(report["mode"], mode);
    assert_eq!(verdict_of(&report, "spin/work"), "regressed", "{report}");
    let change = report["benches"][0]["change_pct"].as_f64().expect("a change");
    assert!(change > least, "{change:+.1}%: {report}");
    assert!(stderr.contains("spin/work") && stderr.contains("REGRESSED"), "{stderr}");
    report
}

#[test]
fn a_slower_commit_is_regressed_in_instructions_mode_with_a_flame_graph_of_why() {
    // A count doubles with the work.
    let report = assert_regressed(&Fixture::new(), "instructions", 90.0);
    let path = report["benches"][0]["flamegraph"]
        .as_str()
        .unwrap_or_else(|| panic!("a regressed count names its flame graph: {report}"));
    let svg = std::fs::read_to_string(path).expect("the flame graph is written");
    // The frame of the function that does twice the work is there, and red: more
    // instructions in the working tree than in the baseline.
    let frame = svg
        .split("<title>")
        .find(|frame| frame.starts_with("spin::spin ("))
        .unwrap_or_else(|| panic!("no frame of spin::spin in {path}"));
    let rgb = frame.split_once("fill=\"rgb(").expect("a filled frame").1;
    let channels: Vec<u32> = rgb
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(
        channels[0] > channels[1] && channels[0] > channels[2],
        "spin::spin is not red: {frame}"
    );
}

/// Both cores kept busy while it lives: what a build beside a benchmark run does to it.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..100_000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_five_percent_slower_commit_is_regressed_in_time_mode_beside_a_cpu_hog() {
    let fixture = Fixture::slower_by(20_000, 21_000);
    let _hog = CpuHog::start();
    assert_regressed(&fixture, "time", 2.0);
}

#[test]
fn a_revision_compared_with_itself_in_time_mode_beside_a_cpu_hog_has_no_verdict() {
    let fixture = Fixture::new();
    let _hog = CpuHog::start();
    let output = fixture.compare(&["--baseline", "HEAD", "--mode", "time"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report = json_of(&output);
    assert_eq!(verdict_of(&report, "spin/work"), "no_change", "{report}");
    // The pairs' interval is what held the verdict back: it spans no change.
    let interval = &report["benches"][0]["interval_pct"];
    let (lower, upper) = (interval[0].as_f64().unwrap(), interval[1].as_f64().unwrap());
    assert!(lower <= 2.0 && upper >= -2.0 && lower <= upper, "{report}");
}

#[test]
fn a_revision_compared_with_itself_has_no_regression() {
    let fixture = Fixture::new();
    let output = fixture.compare(&["--baseline", "HEAD", "--mode", "instructions"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_eq!(verdict_of(&report, "spin/work"), "no_change", "{report}");
    assert_eq!(report["regressed"], 0);
    assert!(
        report["benches"][0].get("flamegraph").is_none(),
        "no regression, no picture: {report}"
    );
}

#[test]
fn a_bad_ref_exits_2_naming_it() {
    let output = run_xtask(&["bench-compare", "--baseline", "no-such-ref-anywhere"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-ref-anywhere") && stderr.contains("fix:"),
        "{stderr}"
    );
}

#[test]
fn instructions_mode_without_valgrind_exits_2_with_the_fix() {
    let output = Command::new(binary("xtask", "xtask").expect("xtask builds"))
        .args(["bench-compare", "--mode", "instructions"])
        .current_dir(workspace_root())
        .env("PATH", "")
        .output()
        .expect("xtask runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install valgrind"), "{stderr}");
}

#[test]
fn e2e_puts_both_builds_both_stores_an_emulated_server_and_two_vms_under_the_same_load() {
    // The checkout against its own commit (in CI a clean clone: one build serves both
    // sides): the same binary on both sides, so any verdict but "no change" is noise. Each
    // post waits for its fsync (synchronous=FULL), which a shared disk makes noisy: two
    // rounds (the fewest that give a verdict, which needs every round to agree) and a wide
    // threshold keep it out.
    let output = run_xtask(&[
        "bench-compare",
        "--e2e",
        "--baseline",
        "HEAD",
        "--rounds",
        "2",
        "--seconds",
        "2",
        "--threshold",
        "50",
        // A small fan-out beside it, and a two-step capacity search: the runs, their
        // accounting and the search end to end; the figures are for real runs to give.
        "--fanout",
        "20",
        "--fanout-subscribers",
        "20",
        "--capacity",
        "500",
        "--capacity-steps",
        "2",
        // The working tree's server in an x86_64 and an aarch64 VM, booted for each round.
        "--vms",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report = json_of(&output);
    assert_eq!(report["kind"], "e2e");
    let fanout = &report["report"]["fanout"];
    let sides = fanout["sides"].as_array().expect("fan-out sides");
    assert_eq!(sides.len(), 2, "{fanout}");
    for side in sides {
        let rounds = side["rounds"].as_array().expect("fan-out rounds");
        assert_eq!(rounds.len(), 2, "{side}");
        for run in rounds {
            // 20 posts/s for 2 s to 20 subscribers: a light load every delivery survives.
            assert_eq!(run["offered_rate"], 20.0, "{run}");
            assert_eq!(run["posts_accepted"], 40, "{run}");
            assert_eq!(run["deliveries"], 800, "{run}");
            assert_eq!(run["deliveries_expected"], 800, "{run}");
            assert!(run["delivery_ms"]["p99"].as_f64() > Some(0.0), "{run}");
        }
        assert_eq!(side["violations"], 0, "{side}");
        // 20 then 40 posts/s, both far within a 500 ms p99.
        let steps = side["capacity"]["steps"].as_array().expect("capacity steps");
        let rates: Vec<f64> = steps.iter().filter_map(|s| s["rate"].as_f64()).collect();
        assert_eq!(rates, [20.0, 40.0], "{side}");
        assert_eq!(side["capacity"]["highest_kept_up"], 40.0, "{side}");
    }
    let servers = report["report"]["servers"].as_array().expect("servers");
    let names: Vec<&str> = servers.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "baseline · native · SQLite",
            "current · native · SQLite",
            "baseline · native · PostgreSQL",
            "current · native · PostgreSQL",
            "current · aarch64 qemu-user · SQLite",
            "current · x86_64 VM (TCG) · PostgreSQL",
            "current · aarch64 VM (TCG) · PostgreSQL",
        ]
    );
    for server in servers {
        let rate = server["messages_per_second"].as_f64().expect("a rate");
        assert!(rate > 0.0 && server["failures"] == 0, "{server}");
        let (delivered, expected) = (
            server["deliveries"].as_u64().expect("deliveries"),
            server["deliveries_expected"].as_u64().expect("expected deliveries"),
        );
        // Fan-out is best effort (a slow socket's queue may overflow), but nearly all arrive.
        assert!(expected > 0 && delivered * 10 >= expected * 9, "{server}");
        let (p50, p99) = (
            server["delivery_ms"]["p50"].as_f64().expect("delivery p50"),
            server["delivery_ms"]["p99"].as_f64().expect("delivery p99"),
        );
        assert!(0.0 < p50 && p50 <= p99, "{server}");
        // A static server is megabytes on disk and in memory, never nothing.
        assert!(server["binary_bytes"].as_u64() > Some(1 << 20), "{server}");
        // A VM's server has no figure of its own: QEMU's memory is the guest's whole RAM.
        if server["name"].as_str().is_some_and(|name| name.contains(" VM ")) {
            assert!(server["peak_rss_mib"].is_null(), "{server}");
        } else {
            assert!(server["peak_rss_mib"].as_f64() > Some(1.0), "{server}");
        }
    }
    // One build on both sides: the same size to the byte, and the same memory within reason.
    let footprint = report["report"]["footprint"].as_array().expect("footprint");
    let figures: Vec<(&str, &str)> = footprint
        .iter()
        .map(|f| (f["unit"].as_str().unwrap(), f["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        figures,
        [
            ("bytes", "no_change"),
            ("bytes", "no_change"),
            ("bytes", "no_change"),
            ("MiB", "no_change")
        ],
        "{report}"
    );
    for (size, arch) in footprint.iter().zip(["x86_64", "aarch64", "riscv64"]) {
        assert_eq!(size["change_pct"], 0.0, "{report}");
        assert!(size["current"].as_f64() > Some(f64::from(1 << 20)), "{report}");
        assert!(
            size["name"].as_str().is_some_and(|name| name.contains(arch)),
            "{report}"
        );
    }
    let comparisons = report["report"]["comparisons"].as_array().expect("comparisons");
    assert_eq!(comparisons.len(), 6, "{report}");
    // Both stores: the same build against itself.
    assert_eq!(comparisons[0]["verdict"], "no_change", "{report}");
    assert_eq!(comparisons[1]["verdict"], "no_change", "{report}");
    assert!(comparisons[2..]
        .iter()
        .all(|c| c["verdict"].is_null() && c["throughput_ratio"].as_f64() > Some(0.0)));
    assert!(
        stderr.contains("delivery p99")
            && stderr.contains("emulated against native")
            && stderr.contains("current · aarch64 VM (TCG) · PostgreSQL against native: ×")
            && stderr.contains("peak RSS, working tree against baseline")
            && stderr.contains("fan-out delivery p99, working tree against baseline")
            && stderr.contains("capacity, working tree against baseline: ×"),
        "{stderr}"
    );
    assert_eq!(
        plexichat_e2e::processes_mentioning("bench-e2e"),
        Vec::<String>::new(),
        "a server or a VM outlived the run"
    );
}
