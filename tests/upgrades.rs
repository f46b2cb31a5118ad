//! Rolling upgrades (`--from REF [--to REF] --scenario rolling-upgrade`): a cluster started
//! on the previous commit rolled onto the working tree loses nothing and its old and new
//! nodes interoperate; an upgrade whose migration breaks the old nodes still running is
//! caught and exits 1; a revision that does not exist exits 2 naming it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plexichat_e2e::{target_dir, workspace_root, xtask};
use serde_json::Value;
use services::process::{self, cmd};

use crate::scenarios::{assert_holds_on, checks_of, report_of, run_scenario, INTEROP, PROCESSES, VMS};

#[test]
fn a_rolling_upgrade_from_the_previous_commit_loses_nothing() {
    // HEAD~1 is the previous commit: a clone without history cannot run this test.
    let report = assert_holds_on(PROCESSES, "3", "rolling-upgrade", "40s", &["--from", "HEAD~1"]);
    let versions = report["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{report:#}");
    for version in versions {
        // The nodes started on the earlier build and ended on the working tree's.
        assert_ne!(version["before"], version["after"], "{report:#}");
        let after = version["after"].as_str().unwrap();
        assert!(after.starts_with(&format!("{}+", env!("CARGO_PKG_VERSION"))), "{after}");
    }
    // Each node was out only while its upgrade ran: every window closes.
    for window in report["windows"].as_array().unwrap() {
        assert_eq!(window["fault"], "upgrade");
        assert!(window["healed_s"].is_number(), "{window}");
    }
    assert_old_and_new_interoperated(&report);
}

/// After the first and the second of three upgrades, old and new builds served side by
/// side and delivered each other's messages.
fn assert_old_and_new_interoperated(report: &Value) {
    assert!(checks_of(report).contains(&(INTEROP.into(), "ok".into())), "{report:#}");
    let probes = report["interop"].as_array().unwrap();
    assert_eq!(probes.len(), 2, "{report:#}");
    for probe in probes {
        assert_eq!(probe["ok"], true, "{probe}");
        assert_ne!(probe["versions"][0], probe["versions"][1], "{probe}");
    }
}

#[test]
fn an_upgrade_from_a_revision_that_does_not_exist_exits_2_naming_it() {
    let (code, _, stderr) = run_scenario("3", "rolling-upgrade", &["--from", "no-such-revision"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--from no-such-revision"), "{stderr}");
    // And an upgrade needs a cluster started on an earlier build.
    let (code, _, stderr) = run_scenario("3", "rolling-upgrade", &["--dry-run"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("pass --from REF"), "{stderr}");
}

#[test]
fn a_revision_whose_server_does_not_build_exits_2_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let clone = scratch.path().join("repo");
    let sh = process::shell().unwrap();
    let origin = workspace_root();
    process::run(cmd!(sh, "git clone --quiet {origin} {clone}")).unwrap();
    let lib = clone.join("plexichat/src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        format!("{text}\ncompile_error!(\"this revision does not build\");\n"),
    )
    .unwrap();
    let sh = process::shell_in(&clone).unwrap();
    process::run(cmd!(
        sh,
        "git -c user.name=fixture -c user.email=fixture@plexichat.invalid commit --quiet -am 'does not build'"
    ))
    .unwrap();
    let args = [
        "3",
        "--scenario",
        "rolling-upgrade",
        "--from",
        "HEAD",
        "--profile",
        "release",
    ];
    let mut xtask = xtask(PROCESSES, &args);
    xtask.current_dir(&clone).env("CARGO_TARGET_DIR", target_dir());
    let (code, _, stderr) = report_of(xtask.spawn().expect("xtask starts"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--from HEAD") && stderr.contains("does not build") && stderr.contains("fix:"),
        "{stderr}"
    );
}

/// A throwaway commit on top of HEAD, in a clone of the workspace at `clone`: the server
/// renames `messages.node_id` to `origin_node` in a new migration, and reads and writes
/// the new name. The server it builds works; an earlier server still running beside it
/// writes a column that is gone.
fn commit_a_migration_that_breaks_the_old_server(clone: &Path) {
    let sh = process::shell().unwrap();
    let origin = workspace_root();
    process::run(cmd!(sh, "git clone --quiet {origin} {clone}")).unwrap();
    let edit = |file: &str, from: &str, to: &str| {
        let path = clone.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        // The fixture must keep up with the server: an edit that no longer applies fails here.
        assert_eq!(text.matches(from).count(), 1, "{file} no longer has `{from}` once");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    for store in ["postgres", "sqlite"] {
        std::fs::write(
            clone.join(format!("plexichat/migrations/{store}/0002_origin_node.sql")),
            "ALTER TABLE messages RENAME COLUMN node_id TO origin_node;\n",
        )
        .unwrap();
        let initial = format!("(1, \"initial\", include_str!(\"../../migrations/{store}/0001_initial.sql\"))");
        edit(
            &format!("plexichat/src/store/{store}.rs"),
            &initial,
            &format!(
                "{initial},\n    (2, \"origin_node\", include_str!(\"../../migrations/{store}/0002_origin_node.sql\"))"
            ),
        );
    }
    let sql = "plexichat/src/store/sql.rs";
    edit(
        sql,
        "m.created_at, m.node_id\"",
        "m.created_at, m.origin_node AS node_id\"",
    );
    edit(
        sql,
        "INSERT INTO messages (channel_id, author_id, body, created_at, node_id)",
        "INSERT INTO messages (channel_id, author_id, body, created_at, origin_node)",
    );
    let sh = process::shell_in(clone).unwrap();
    process::run(cmd!(sh, "git add --all")).unwrap();
    process::run(cmd!(
        sh,
        "git -c user.name=fixture -c user.email=fixture@plexichat.invalid commit --quiet -m 'messages.node_id renamed to origin_node'"
    ))
    .unwrap();
}

/// The clone holding the breaking commit, made once per test process and shared by the
/// tests that roll onto it: `target/xtask/fixtures/broken-migration`.
fn broken_migration_clone() -> &'static Path {
    static CLONE: OnceLock<PathBuf> = OnceLock::new();
    CLONE.get_or_init(|| {
        let clone = target_dir().join("xtask/fixtures/broken-migration");
        let _ = std::fs::remove_dir_all(&clone);
        commit_a_migration_that_breaks_the_old_server(&clone);
        clone
    })
}

/// Runs `COMMAND ARGS --json` in the fixture's clone, building both revisions into the
/// test build's target directory: from the workspace's previous commit (HEAD~2 there,
/// built by the rolling upgrade above too) to the breaking one.
fn roll_onto_the_broken_migration(command: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = args.to_vec();
    all.extend(["--from", "HEAD~2", "--to", "HEAD", "--profile", "release", "--json"]);
    let mut xtask = xtask(command, &all);
    xtask
        .current_dir(broken_migration_clone())
        .env("CARGO_TARGET_DIR", target_dir());
    report_of(xtask.spawn().expect("xtask starts"))
}

/// Whether a violation names one of the nodes still on the old build when the first one
/// (node-0) applied the migration.
fn blames_an_old_node(violation: &Value) -> bool {
    let message = violation["message"].as_str().unwrap_or_default();
    message.contains("node-1") || message.contains("node-2")
}

#[test]
fn a_migration_that_breaks_the_old_nodes_fails_the_rolling_upgrade() {
    let (code, report, stderr) =
        roll_onto_the_broken_migration(PROCESSES, &["3", "--scenario", "rolling-upgrade", "--duration", "30s"]);
    assert_eq!(code, Some(1), "{stderr}\n{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let violations = report["violations"].as_array().unwrap();
    assert!(violations.iter().any(blames_an_old_node), "{report:#}");
}

#[test]
fn a_canary_that_breaks_the_old_nodes_is_rolled_back_and_the_restored_cluster_serves() {
    let (code, report, stderr) = roll_onto_the_broken_migration(VMS, &["3", "--canary", "--duration", "20s"]);
    // The upgrade must not ship: exit 1, though the rollback worked.
    assert_eq!(code, Some(1), "{stderr}\n{report:#}");
    // Exit 1 is also what an error ends with: only a report says the verdict was reached.
    assert!(
        report.is_object(),
        "no report, so the run failed rather than judged:\n{stderr}"
    );
    let canary = &report["canary"];
    assert_eq!(canary["ok"], false, "{report:#}");
    assert!(
        canary["violations"].as_array().unwrap().iter().any(blames_an_old_node),
        "{report:#}"
    );
    assert!(report["rolled_back"].is_string(), "{report:#}");
    // Every VM was saved and loaded, with its memory.
    let vms = report["snapshot"]["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3, "{report:#}");
    for vm in vms {
        assert!(vm["vm_state_mib"].as_f64().unwrap() > 0.0, "{vm}");
        assert!(vm["load_seconds"].is_number(), "{vm}");
    }
    assert!(report["snapshot"]["database_load_seconds"].is_number(), "{report:#}");
    // Put back, the cluster runs the old build everywhere again and passes every check.
    let restored = &report["restored"];
    assert_eq!(restored["ok"], true, "{report:#}");
    assert!(restored["posts"]["ok"].as_u64().unwrap() > 0, "{report:#}");
    for version in restored["versions"].as_array().unwrap() {
        assert_eq!(version["before"], version["after"], "{report:#}");
        assert_eq!(version["before"], canary["versions"][1]["before"], "{report:#}");
    }
}
