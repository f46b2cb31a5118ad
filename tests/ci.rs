//! `cargo xtask ci` against fixture workflows whose steps are small shell commands
//! (`true`, `false`, `echo`, `sleep`), and the dry run of the shipped workflows/ci.yaml.

use std::path::Path;
use std::process::{Command, Output};

use plexichat_e2e::{assert_sigint_leaves_nothing, binary, json_of, processes_mentioning, stderr_of, workspace_root};
use serde_json::Value;

fn workflow_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// `cargo xtask ci ARGS`, with `CI=true` or without `CI` at all (whatever the test
/// runner's own environment says).
fn xtask_ci(args: &[&str], ci: bool) -> Output {
    let mut command = Command::new(binary("xtask", "xtask").unwrap());
    command.arg("ci").args(args).current_dir(workspace_root());
    if ci {
        command.env("CI", "true");
    } else {
        command.env_remove("CI");
    }
    command.output().unwrap()
}

fn run_workflow(file: &Path, args: &[&str], ci: bool) -> Output {
    let mut all = vec!["--workflow", file.to_str().unwrap(), "--json"];
    all.extend(args);
    xtask_ci(&all, ci)
}

/// Each reported step as (id, status, detail).
fn statuses(report: &Value) -> Vec<(String, String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            (
                step["id"].as_str().unwrap().to_string(),
                step["status"].as_str().unwrap().to_string(),
                step["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn row(id: &str, status: &str, detail: &str) -> (String, String, String) {
    (id.into(), status.into(), detail.into())
}

/// A `sleep` whose command line no other test's process has.
fn unique_sleep(seconds: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sleep {seconds}.{}{nanos}", std::process::id())
}

#[test]
fn the_shipped_workflow_plans_every_step_after_what_it_needs() {
    let output = xtask_ci(&["--dry-run", "--json"], false);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let report = json_of(&output);
    assert_eq!(report["path"], "workflows/ci.yaml");
    let steps = report["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|step| step["id"].as_str().unwrap()).collect();
    for expected in [
        "fmt",
        "clippy",
        "tests",
        "build-native (x86_64)",
        "build-native (aarch64)",
        "build-native (riscv64)",
        "qemu-cluster (aarch64)",
        "docker-build (riscv64)",
        "bench-compare",
    ] {
        assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
    }
    for (place, step) in steps.iter().enumerate() {
        assert_eq!(step["status"], "planned");
        for need in step["needs"].as_array().unwrap() {
            let needed = ids.iter().position(|id| need == id).unwrap();
            assert!(needed < place, "{} is planned before {need}", step["id"]);
        }
    }
    let boot = steps
        .iter()
        .find(|step| step["id"] == "qemu-cluster (aarch64)")
        .unwrap();
    assert_eq!(boot["needs"], serde_json::json!(["build-native (aarch64)"]));
    assert_eq!(boot["run"], "cargo xtask qemu-cluster 1 --arch aarch64");
}

#[test]
fn dry_run_lists_the_steps_in_dependency_order_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let file = workflow_file(&format!(
        "steps:\n  deploy:\n    needs: [build]\n    run: {touch}\n  build:\n    matrix:\n      arch: [x86_64, aarch64]\n    run: {touch}\n  lint:\n    run: {touch}\n"
    ));
    let output = xtask_ci(&["--workflow", file.path().to_str().unwrap(), "--dry-run"], false);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let order: Vec<&str> = ["build (x86_64)", "build (aarch64)", "deploy", "lint"]
        .into_iter()
        .filter(|id| stderr.contains(&format!("  {id}  ")))
        .collect();
    assert_eq!(order.len(), 4, "{stderr}");
    let positions: Vec<usize> = order
        .iter()
        .map(|id| stderr.find(&format!("  {id}  ")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{stderr}");
    assert!(!marker.exists(), "a dry run ran a step");
}

#[test]
fn a_failing_step_blocks_what_needs_it_and_the_run_exits_1() {
    let file = workflow_file(
        "steps:\n  compile:\n    run: echo compiling; exit 3\n  test:\n    needs: [compile]\n    run: echo test-ran\n  package:\n    needs: [test]\n    run: echo package-ran\n  lint:\n    run: echo linted\n",
    );
    let output = run_workflow(file.path(), &[], false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let report = json_of(&output);
    assert_eq!(
        statuses(&report),
        [
            row("compile", "failed", "exited with status 3"),
            row("test", "blocked", "needs `compile`, which failed"),
            row("package", "blocked", "needs `compile`, which failed"),
            row("lint", "passed", ""),
        ]
    );
    assert_eq!(report["steps"][0]["exit_code"], 3);
    assert_eq!(report["ok"], false);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("::group::compile\n$ echo compiling; exit 3\ncompiling\n::endgroup::"),
        "{stderr}"
    );
    assert!(
        stderr.contains("linted") && !stderr.contains("test-ran") && !stderr.contains("package-ran"),
        "{stderr}"
    );
    let table = stderr
        .lines()
        .find(|line| line.starts_with("step "))
        .unwrap_or_default();
    assert!(table.contains("status") && table.contains("seconds"), "{stderr}");
    assert!(stderr.contains("--only 'compile'"), "{stderr}");
}

#[test]
fn a_step_over_its_timeout_is_killed_with_everything_it_started() {
    let sleep = unique_sleep(31);
    // Ignoring SIGTERM (and so do its children): only the SIGKILL after the grace stops it.
    let file = workflow_file(&format!(
        "steps:\n  slow:\n    timeout: 1s\n    run: trap '' TERM; {sleep} & {sleep}\n  after:\n    needs: [slow]\n    run: 'true'\n"
    ));
    let output = run_workflow(file.path(), &[], false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        statuses(&json_of(&output)),
        [
            row(
                "slow",
                "timed_out",
                "over its timeout of 1s: its process group was stopped"
            ),
            row("after", "blocked", "needs `slow`, which timed out"),
        ]
    );
    assert_eq!(
        processes_mentioning(&sleep),
        Vec::<String>::new(),
        "the step outlived its timeout"
    );
}

#[test]
fn a_missing_prerequisite_skips_without_ci_and_fails_with_ci_or_when_required() {
    let steps = "steps:\n  emulate:\n    requires:\n      programs: [no-such-emulator-xtask-test]\n    run: echo emulated\n  after:\n    needs: [emulate]\n    run: echo after\n  bench:\n    if: {env: XTASK_CI_TEST_NEVER_SET}\n    run: echo benched\n";
    let missing = "missing no-such-emulator-xtask-test (not on PATH)";
    let not_set = "condition: XTASK_CI_TEST_NEVER_SET is not set";

    let file = workflow_file(steps);
    let output = run_workflow(file.path(), &[], false);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        statuses(&json_of(&output)),
        [
            row("emulate", "skipped", missing),
            row("after", "skipped", "needs `emulate`, which was skipped"),
            row("bench", "skipped", not_set),
        ]
    );

    let output = run_workflow(file.path(), &[], true);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        statuses(&json_of(&output)),
        [
            row("emulate", "failed", &format!("{missing} (required because CI is set)")),
            row("after", "blocked", "needs `emulate`, which failed"),
            // A condition is the workflow's choice, never a failure.
            row("bench", "skipped", not_set),
        ]
    );
    assert!(
        stderr_of(&output).contains("cargo xtask doctor --fix"),
        "{}",
        stderr_of(&output)
    );

    let required = workflow_file(&steps.replace(
        "    run: echo emulated\n",
        "    run: echo emulated\n    required: true\n",
    ));
    let output = run_workflow(required.path(), &[], false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        statuses(&json_of(&output))[0],
        row("emulate", "failed", &format!("{missing} (the step is required)"))
    );
}

#[test]
fn matrix_entries_need_their_own_architecture_and_only_selects_them() {
    let file = workflow_file(
        "steps:\n  build:\n    matrix:\n      arch: [x86_64, aarch64, riscv64]\n    run: echo built-${{ matrix.arch }}; test ${{ matrix.arch }} != riscv64\n  boot:\n    needs: [build]\n    matrix:\n      arch: [x86_64, aarch64, riscv64]\n    run: echo booted-${{ matrix.arch }}\n",
    );
    let output = run_workflow(file.path(), &[], false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        statuses(&json_of(&output)),
        [
            row("build (x86_64)", "passed", ""),
            row("build (aarch64)", "passed", ""),
            row("build (riscv64)", "failed", "exited with status 1"),
            row("boot (x86_64)", "passed", ""),
            row("boot (aarch64)", "passed", ""),
            row("boot (riscv64)", "blocked", "needs `build (riscv64)`, which failed"),
        ]
    );
    assert!(stderr_of(&output).contains("booted-aarch64"));

    let output = run_workflow(
        file.path(),
        &["--only", "build (aarch64)", "--only", "boot (aarch64)"],
        false,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let report = json_of(&output);
    assert_eq!(
        statuses(&report),
        [
            row("build (aarch64)", "passed", ""),
            row("boot (aarch64)", "passed", "")
        ]
    );
    assert_eq!(report["steps"][1]["needs"], serde_json::json!(["build (aarch64)"]));
    assert_eq!(report["steps"][1]["matrix"], serde_json::json!({"arch": "aarch64"}));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("built-aarch64") && !stderr.contains("built-x86_64"),
        "{stderr}"
    );
}

#[test]
fn a_bad_workflow_exits_2_naming_the_file_the_step_the_field_and_a_fix() {
    for (text, field, problem) in [
        (
            "steps:\n  a:\n    run: 'true'\n    needs: [b]\n  b:\n    run: 'true'\n    needs: [a]\n",
            "steps.a.needs",
            "a → b → a",
        ),
        (
            "steps:\n  a:\n    run: 'true'\n  b:\n    run: 'true'\n    needs: [lint]\n",
            "steps.b.needs[0]",
            "unknown step `lint`",
        ),
        (
            "steps:\n  a:\n    run: 'true'\n    timout: 5m\n",
            "steps.a.timout",
            "`timeout`",
        ),
        (
            "steps:\n  a:\n    run: 'true'\n  b:\n    run: 'true'\n    needs: a\n",
            "steps.b.needs",
            "expected a sequence",
        ),
        (
            "steps:\n  a:\n    run: 'true'\n    timeout: five minutes\n",
            "steps.a.timeout",
            "90s, 10m or 1h30m",
        ),
        (
            "steps:\n  a:\n    run: 'true'\n    matrix: {}\n",
            "steps.a.matrix",
            "an empty matrix",
        ),
        (
            "steps:\n  a:\n    run: echo ${{ matrix.arch }}\n",
            "steps.a.run",
            "names no axis",
        ),
    ] {
        let file = workflow_file(text);
        let output = run_workflow(file.path(), &[], false);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{text}\n{stderr}");
        assert!(stderr.contains(file.path().to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(&format!("field `{field}`")), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(stderr.contains("fix: "), "{stderr}");
        assert!(output.stdout.is_empty(), "{text}");
    }
}

#[test]
fn an_unknown_only_step_or_workflow_exits_2_listing_what_exists() {
    let file = workflow_file(
        "steps:\n  fmt:\n    run: 'true'\n  build:\n    run: 'true'\n    matrix:\n      arch: [x86_64]\n",
    );
    let output = run_workflow(file.path(), &["--only", "lint"], false);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("--only `lint`"), "{stderr}");
    assert!(
        stderr.contains("fix: use one of fmt, build, or one matrix entry such as `build (x86_64)`"),
        "{stderr}"
    );

    let output = xtask_ci(&["--workflow", "no-such-workflow"], false);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("workflows/no-such-workflow.yaml"), "{stderr}");
    assert!(stderr.contains("fix: use one of ci"), "{stderr}");
}

#[test]
fn sigint_during_a_step_stops_it_and_exits_130() {
    let sleep = unique_sleep(33);
    // The marker is the step's own output (its script spells it differently), so the
    // signal arrives while the step runs.
    let file = workflow_file(&format!(
        "steps:\n  slow:\n    run: echo slow-$((1 + 1))-started; {sleep}\n  after:\n    run: echo after-ran\n"
    ));
    assert_sigint_leaves_nothing("ci", &["--workflow", file.path().to_str().unwrap()], "slow-2-started");
    assert_eq!(
        processes_mentioning(&sleep),
        Vec::<String>::new(),
        "the step outlived the run"
    );
}
