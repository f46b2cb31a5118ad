//! `cargo xtask` driven as its users drive it: doctor's report, the cross-compile
//! matrix with its cache and smoke runs, and the errors for bad profiles and flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use plexichat_e2e::{
    binary, json_of, processes_mentioning, run_xtask, signal, stderr_of, temp_dirs_of, workspace_root,
};
use serde_json::Value;
use services::process::{self, cmd};

#[test]
fn doctor_reports_every_item_with_a_fix_for_each_gap() {
    let output = run_xtask(&["doctor", "--json"]);
    let report = json_of(&output);
    let checks = report["checks"].as_array().expect("checks");
    let items: Vec<&str> = checks.iter().map(|c| c["item"].as_str().unwrap()).collect();
    for expected in [
        "rust target aarch64-unknown-linux-gnu",
        "linker riscv64-linux-gnu-gcc",
        "qemu-aarch64-static",
        "binfmt qemu-riscv64",
        "qemu-system-x86_64",
        "qemu-system-riscv64",
        "guest kernel x86_64",
        "guest kernel aarch64",
        "guest kernel riscv64",
        "qemu-img (qemu-utils)",
        "mkfs.ext4 (e2fsprogs)",
        "kvm",
        "docker engine",
        "postgres (initdb, pg_ctl)",
        "nats-server",
    ] {
        assert!(items.contains(&expected), "{expected} missing from {items:?}");
    }
    for check in checks {
        let status = check["status"].as_str().unwrap();
        assert!(["found", "missing", "unusable"].contains(&status), "{check}");
        if status == "missing" {
            assert!(check["fix"]["kind"].is_string(), "a missing item needs a fix: {check}");
        }
    }
    let required_missing = checks.iter().any(|c| c["status"] == "missing" && c["required"] == true);
    assert_eq!(report["ok"], !required_missing);
    assert_eq!(output.status.code(), Some(if required_missing { 1 } else { 0 }));
}

/// ELF e_machine, and whether a program interpreter is named (dynamic linking).
fn elf_machine_and_interpreter(path: &Path) -> (u16, bool) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let offset = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let size = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
    let count = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    let interpreter = (0..count).any(|i| {
        let at = offset + i * size;
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == 3
    });
    (machine, interpreter)
}

/// Cargo's target directory, where build-native puts target/dist: CARGO_TARGET_DIR when
/// it is set (absolute), as for the cargo running these tests; else the workspace's.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| workspace_root().join("target"))
}

#[test]
fn build_native_makes_a_static_aarch64_binary_that_runs_and_caches_it() {
    let first = run_xtask(&["build-native", "--target", "aarch64", "--json"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr_of(&first));
    let report = json_of(&first);
    let artefact = &report["artefacts"][0];
    assert_eq!(artefact["target"], "aarch64-unknown-linux-gnu");
    assert_eq!(artefact["is_static"], true);
    let steps: Vec<(&str, bool)> = artefact["smoke"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("version", true),
            ("health", true),
            ("resolve", true),
            ("sigterm", true)
        ]
    );

    // Checked here independently of the tool: machine, static, and it runs.
    let path = Path::new(artefact["path"].as_str().unwrap());
    assert_eq!(path, target_dir().join("dist/aarch64-unknown-linux-gnu/plexichat"));
    assert_eq!(elf_machine_and_interpreter(path), (183, false));
    let sh = process::shell().unwrap();
    // The toolchain compiles the revision in: `0.1.0+<commit>`, `-dirty` for an edited tree.
    sh.change_dir(workspace_root());
    let commit = process::read(cmd!(sh, "git rev-parse --short=12 HEAD")).unwrap();
    let printed = process::read(cmd!(sh, "qemu-aarch64-static {path} --version")).unwrap();
    assert!(
        printed.starts_with(&format!("plexichat {}+{commit}", env!("CARGO_PKG_VERSION"))),
        "{printed}"
    );

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(target_dir().join("dist/manifest.json")).unwrap()).unwrap();
    let listed = manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"] == artefact["target"])
        .unwrap();
    for field in [
        "path",
        "sha256",
        "bytes",
        "profile",
        "git_revision",
        "cache_key",
        "seconds",
        "cache_hit",
    ] {
        assert!(!listed[field].is_null(), "manifest lacks {field}: {listed}");
    }

    let second = run_xtask(&["build-native", "--target", "aarch64", "--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr_of(&second));
    let again = &json_of(&second)["artefacts"][0];
    assert_eq!(again["cache_hit"], true, "an unchanged input must not be rebuilt");
    assert_eq!(again["seconds"], 0.0);
    assert_eq!(again["sha256"], artefact["sha256"]);
    assert_eq!(again["cache_key"], artefact["cache_key"]);
    // The same binary with the same inputs passed its smoke run already: the result stands.
    assert_eq!(again["smoke"]["cached"], true, "{}", again["smoke"]);
    assert_eq!(again["smoke"]["ok"], true);
    assert_eq!(again["smoke"]["steps"], artefact["smoke"]["steps"]);
    assert!(!stderr_of(&second).contains("smoke health"), "{}", stderr_of(&second));

    let forced = run_xtask(&["build-native", "--target", "aarch64", "--smoke", "always", "--json"]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr_of(&forced));
    let fresh = &json_of(&forced)["artefacts"][0];
    assert_eq!(fresh["cache_hit"], true);
    assert_eq!(fresh["smoke"]["cached"], false, "{}", fresh["smoke"]);
    assert_eq!(fresh["smoke"]["ok"], true);
    assert!(
        stderr_of(&forced).contains("smoke health: ok"),
        "{}",
        stderr_of(&forced)
    );
}

fn profile_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn a_profile_with_an_unknown_field_exits_2_naming_it() {
    let profile = profile_file("build:\n  targets: [x86_64]\n  optimise: true\n");
    let output = run_xtask(&["build-native", "--profile", profile.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains(profile.path().to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("build.optimise"), "{stderr}");
    assert!(stderr.contains("fix:") && stderr.contains("`targets`"), "{stderr}");
}

#[test]
fn a_profile_with_an_unknown_target_exits_2_listing_the_allowed_ones() {
    let profile = profile_file("build:\n  targets: [x86_64, sparc64]\n");
    let output = run_xtask(&["build-native", "--profile", profile.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("build.targets[1]") && stderr.contains("sparc64"),
        "{stderr}"
    );
    assert!(stderr.contains("riscv64gc-unknown-linux-gnu"), "{stderr}");
}

#[test]
fn an_unknown_target_flag_or_profile_exits_2() {
    let output = run_xtask(&["build-native", "--target", "mips"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("--target"), "{}", stderr_of(&output));
    let output = run_xtask(&["build-native", "--profile", "no-such-profile"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("no-such-profile") && stderr.contains("release"),
        "{stderr}"
    );
}

#[test]
fn sigint_during_a_smoke_run_leaves_no_process_or_temp_dir() {
    use std::io::BufRead;

    // Build first, so the interrupted run goes straight to its smoke run.
    let built = run_xtask(&["build-native", "--target", "aarch64"]);
    assert_eq!(built.status.code(), Some(0), "{}", stderr_of(&built));
    // `always`: the smoke result of the build above would be reused otherwise.
    let mut run = Command::new(binary("xtask", "xtask").unwrap())
        .args(["build-native", "--target", "aarch64", "--smoke", "always"])
        .current_dir(workspace_root())
        .env("CI", "true")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    let marker = format!("xtask-smoke-{pid}-");
    let stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    // The server is being started under qemu-user once the version step is through.
    assert!(
        lines.any(|line| line.contains("smoke version: ok")),
        "the smoke run never started"
    );
    signal(&run, "INT");
    let rest: Vec<String> = lines.collect();
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "expected the interrupted exit status; stderr:\n{}",
        rest.join("\n")
    );
    assert!(rest.iter().any(|line| line.contains("tearing down")), "{rest:?}");
    assert_eq!(
        processes_mentioning(&marker),
        Vec::<String>::new(),
        "a smoke server outlived the run"
    );
    assert_eq!(
        temp_dirs_of(pid),
        Vec::<std::path::PathBuf>::new(),
        "temporary directories left"
    );
}
