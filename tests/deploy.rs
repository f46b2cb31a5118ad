//! `deploy render`: the Compose project passes `docker-compose config` (and a broken one
//! does not), the Kubernetes objects pass their schemas under kubernetes-validate (and a
//! broken one does not), with bundled and with managed PostgreSQL and NATS.

use std::path::Path;
use std::process::{Command, Output};

use plexichat_e2e::{json_of, stderr_of, strings_at, xtask};

/// Pinned, with the Kubernetes version the objects are checked against: the oldest
/// release still maintained when this was written.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const KUBERNETES_VERSION: &str = "1.32.0";

fn render(out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = xtask("deploy", &["render", "--nodes", "3", "--check", "--json", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    json_of(&output)
}

fn kubernetes_validate(file: &Path) -> Output {
    let venv = plexichat_e2e::python_venv(
        &plexichat_e2e::target_dir(),
        &[KUBERNETES_VALIDATE],
        "the rendered Kubernetes objects would go unchecked",
    );
    Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .unwrap()
}

fn compose_config(dir: &Path) -> Output {
    Command::new("docker-compose")
        .args(["config", "--quiet"])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    copy
}

/// A copy of `dir` whose `file` has `from` replaced by `to`, which must occur.
fn broken_copy(dir: &Path, file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let copy = copy_of(dir);
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(copy.path().join(file), text.replacen(from, to, 1)).unwrap();
    copy
}

#[test]
fn rendered_deployments_pass_their_validators_and_broken_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = dir.path().join("bundled");
    let report = render(&bundled, &[]);
    assert_eq!(report["compose_check"]["ok"], true, "{report}");
    let names = strings_at(&report["files"], "name");
    assert_eq!(names, ["compose.yaml", "profile.yaml", ".env", "kubernetes.yaml"]);

    let validated = kubernetes_validate(&bundled.join("kubernetes.yaml"));
    let said = String::from_utf8_lossy(&validated.stdout).to_string() + &stderr_of(&validated);
    assert!(validated.status.success(), "{said}");
    for object in [
        "statefulset/plexichat ",
        "poddisruptionbudget/plexichat ",
        "networkpolicy/plexichat ",
        "statefulset/plexichat-postgres ",
        "statefulset/plexichat-nats ",
    ] {
        assert!(
            said.contains(&format!("passed for resource {object}")),
            "{object} unchecked:\n{said}"
        );
    }

    // The checks can fail: a field of the wrong type, a condition Compose does not know.
    let broken = broken_copy(&bundled, "kubernetes.yaml", "replicas: 3", "replicas: three");
    let refused = kubernetes_validate(&broken.path().join("kubernetes.yaml"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("spec.replicas"));
    let broken = broken_copy(
        &bundled,
        "compose.yaml",
        "condition: service_healthy",
        "condition: service_sleepy",
    );
    assert!(!compose_config(broken.path()).status.success());
    // Without the .env there is no password, and Compose says so rather than start.
    let without_env = copy_of(&bundled);
    std::fs::remove_file(without_env.path().join(".env")).unwrap();
    let refused = compose_config(without_env.path());
    assert!(
        !refused.status.success() && stderr_of(&refused).contains("POSTGRES_PASSWORD"),
        "{}",
        stderr_of(&refused)
    );

    let managed = dir.path().join("managed");
    render(
        &managed,
        &[
            "--database-url",
            "postgres://chat:pw@db.example.com:6432/chat",
            "--nats-url",
            "nats://bus.example.com:4333",
        ],
    );
    assert!(kubernetes_validate(&managed.join("kubernetes.yaml")).status.success());
    let compose = std::fs::read_to_string(managed.join("compose.yaml")).unwrap();
    assert!(
        !compose.contains("image: postgres") && !compose.contains("image: nats"),
        "{compose}"
    );
}

#[test]
fn bad_flags_exit_2_naming_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [("--database-url", "mysql://db/chat"), ("--nodes", "0")] {
        let output = xtask("deploy", &["render", flag, value, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
        let said = stderr_of(&output);
        assert!(said.contains(flag) && said.contains("fix:"), "{said}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
}
