//! `cargo xtask dist`: a release for every target, read back with the tools a user would
//! trust (sha256sum, minisign, dpkg-deb, dpkg, tar, sh, skopeo, CycloneDX's own schema
//! validator, cargo-auditable's reader), installed through its install.sh, refused when
//! tampered with, made again byte for byte, and made without a target that fails to build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plexichat_e2e::{json_of, run_xtask, stderr_of};
use serde_json::Value;
use services::process::{self, cmd};
use xtask::provision::{self, Requirement};
use xtask::report::progress::Progress;

const TRIPLES: [&str; 3] = [
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "riscv64gc-unknown-linux-gnu",
];
const DEB_ARCHES: [&str; 3] = ["amd64", "arm64", "riscv64"];

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `program ARGS` in `dir`, which must succeed; its stdout.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = plexichat_e2e::run_or_fail(
        Command::new(program).args(args).current_dir(dir),
        &format!("{program} {args:?}"),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file of the release directory, by name.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}

/// Installs what reading a release back takes beyond the toolchain's own needs, as the
/// toolchain installs it (Debian's packages, as root): minisign, and skopeo, with which a
/// user pushes the OCI archive.
fn provision_readers() {
    let progress = Progress::new();
    let missing = provision::install_missing(&[Requirement::Minisign, Requirement::Skopeo], &progress);
    assert!(
        missing.is_empty(),
        "{:?}",
        missing.iter().map(|m| m.describe_gap()).collect::<Vec<_>>()
    );
}

/// A minisign key pair without a password, in `dir`: (secret, public).
fn signing_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (secret, public) = (dir.join("release.key"), dir.join("release.pub"));
    let sh = process::shell().unwrap();
    process::run(cmd!(sh, "minisign -G -W -s {secret} -p {public}")).expect("minisign makes a key");
    (secret, public)
}

fn dist(args: &[&str]) -> Output {
    let mut all = vec!["dist", "--profile", "release"];
    for triple in TRIPLES {
        all.extend(["--target", triple]);
    }
    all.extend(args);
    all.push("--json");
    run_xtask(&all)
}

#[test]
fn a_release_for_every_target_is_signed_installable_refuses_tampering_and_is_made_again_byte_for_byte() {
    provision_readers();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = signing_key(keys.path());
    let output = dist(&["--sign", secret.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let report = json_of(&output);
    let dir = PathBuf::from(report["dir"].as_str().expect("the release directory"));
    assert!(
        dir.ends_with(format!("dist/release/{}", version())),
        "{}",
        dir.display()
    );
    let files = files_of(&dir);
    let mut expected: Vec<String> = TRIPLES
        .iter()
        .map(|triple| format!("plexichat-{}-{triple}.tar.gz", version()))
        .chain(DEB_ARCHES.map(|arch| format!("plexichat_{}_{arch}.deb", version())))
        .chain(["install.sh", "evidence.json", "SHA256SUMS", "SHA256SUMS.minisig"].map(String::from))
        .chain([format!("plexichat-{}.oci.tar", version())])
        .collect();
    // Every artefact has its SBOM.
    let sboms: Vec<String> = expected
        .iter()
        .filter(|name| name.ends_with(".tar.gz") || name.ends_with(".deb") || name.ends_with(".oci.tar"))
        .map(|name| format!("{name}.cdx.json"))
        .collect();
    expected.extend(sboms);
    expected.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), expected);
    let listed: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["file"].as_str())
        .collect();
    assert_eq!(listed.len(), expected.len(), "{report}");

    // The checksums as sha256sum checks them, and their signature as minisign does.
    let sums = String::from_utf8(files["SHA256SUMS"].clone()).unwrap();
    assert_eq!(
        sums.lines().count(),
        expected.len() - 2,
        "every file but the sums and signature: {sums}"
    );
    run_in(&dir, "sha256sum", &["--check", "--strict", "SHA256SUMS"]);
    run_in(
        &dir,
        "minisign",
        &["-V", "-p", public.to_str().unwrap(), "-m", "SHA256SUMS"],
    );

    check_archives(&dir, &files);
    check_debs(&dir);
    check_oci_archive(&dir);
    check_evidence(&files, &sums);
    check_sboms(&dir, &files);
    check_install_sh(&dir);

    // The same binaries make the same release, signature included.
    let again = dist(&["--sign", secret.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr_of(&again));
    let remade = files_of(&dir);
    for (name, bytes) in &files {
        assert!(remade.get(name) == Some(bytes), "{name} differs the second time");
    }
    assert_eq!(remade.len(), files.len());

    a_target_that_fails_to_build_fails_only_its_own_artefacts(&dir);
}

/// aarch64's linker replaced by one that fails: x86_64's artefacts are made, aarch64's
/// are not and are named in the report, and the run exits 1. cargo's aarch64 executable
/// in `deps/` is removed first, so that cargo links it again (it would find it fresh
/// otherwise). Its uplifted copy stays, and no command reads either: the tests running
/// beside this one use the servers the toolchain keeps by build key.
fn a_target_that_fails_to_build_fails_only_its_own_artefacts(dir: &Path) {
    let release = plexichat_e2e::target_dir().join(TRIPLES[1]).join("release");
    for entry in std::fs::read_dir(release.join("deps")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("plexichat-") && path.extension().is_none() {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let bin = tempfile::tempdir().unwrap();
    let linker = bin.path().join("aarch64-linux-gnu-gcc");
    std::fs::write(
        &linker,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'broken-gcc 1'; exit 0; fi\necho 'this linker is broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&linker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
    let output = Command::new(plexichat_e2e::binary("xtask", "xtask").unwrap())
        .args([
            "dist",
            "--profile",
            "release",
            "--target",
            TRIPLES[0],
            "--target",
            TRIPLES[1],
            "--json",
        ])
        .current_dir(plexichat_e2e::workspace_root())
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let report = json_of(&output);
    assert_eq!(report["ok"], false, "{report}");
    let failure = report["failures"][TRIPLES[1]].as_str().unwrap_or_default();
    assert!(failure.contains("cargo build failed"), "{report}");
    let files = files_of(dir);
    assert!(
        files.contains_key(&format!("plexichat-{}-{}.tar.gz", version(), TRIPLES[0])),
        "{:?}",
        files.keys()
    );
    assert!(
        !files
            .keys()
            .any(|name| name.contains("aarch64") || name.contains("arm64")),
        "{:?}",
        files.keys()
    );
}

/// Each archive: one directory holding the binary and what goes with it, entries dated at
/// the commit and owned by root; the host's binary runs and says its version.
fn check_archives(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for triple in TRIPLES {
        let stem = format!("plexichat-{}-{triple}", version());
        let bytes = &files[&format!("{stem}.tar.gz")];
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.mtime().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(name, ..)| name.as_str()).collect();
        let inside = |file: &str| format!("{stem}/{file}");
        assert_eq!(
            names,
            [
                format!("{stem}/"),
                inside("plexichat"),
                inside("README.md"),
                inside("LICENSE-MIT"),
                inside("LICENSE-APACHE"),
                inside("profile.yaml"),
                inside("plexichat.service"),
            ]
        );
        assert!(entries.iter().all(|(_, _, uid, _)| *uid == 0), "{entries:?}");
        assert_eq!(entries[1].1, 0o755, "the binary is executable");
        let dates: Vec<u64> = entries.iter().map(|(.., mtime)| *mtime).collect();
        assert!(dates.iter().all(|date| *date == dates[0] && *date > 0), "{dates:?}");
    }
    let work = tempfile::tempdir().unwrap();
    let host = format!("plexichat-{}-{}", version(), TRIPLES[0]);
    run_in(
        work.path(),
        "tar",
        &["-xzf", dir.join(format!("{host}.tar.gz")).to_str().unwrap()],
    );
    let printed = run_in(work.path(), &format!("./{host}/plexichat"), &["--version"]);
    assert!(printed.starts_with(&format!("plexichat {}", version())), "{printed}");
}

/// Each package's control fields, contents and conffile, read back by dpkg-deb; the
/// amd64 one unpacked by dpkg into a throwaway root with its own database (unpacked,
/// not configured: its maintainer scripts would run in that root, which has no shell).
fn check_debs(dir: &Path) {
    for arch in DEB_ARCHES {
        let deb = dir.join(format!("plexichat_{}_{arch}.deb", version()));
        let deb = deb.to_str().unwrap();
        let fields = run_in(
            dir,
            "dpkg-deb",
            &["--field", deb, "Package", "Version", "Architecture", "Depends"],
        );
        assert_eq!(
            fields,
            format!(
                "Package: plexichat\nVersion: {}\nArchitecture: {arch}\nDepends: adduser\n",
                version()
            )
        );
        let contents = run_in(dir, "dpkg-deb", &["--contents", deb]);
        for path in [
            "./usr/bin/plexichat",
            "./etc/plexichat/profile.yaml",
            "./lib/systemd/system/plexichat.service",
            "./usr/share/doc/plexichat/copyright",
        ] {
            assert!(
                contents
                    .lines()
                    .any(|line| line.ends_with(path) && line.contains("root/root")),
                "{path} in {contents}"
            );
        }
        let conffiles = run_in(dir, "dpkg-deb", &["--info", deb, "conffiles"]);
        assert_eq!(conffiles, "/etc/plexichat/profile.yaml\n");
        let postinst = run_in(dir, "dpkg-deb", &["--info", deb, "postinst"]);
        assert!(postinst.contains("adduser --system"), "{postinst}");
    }
    let root = tempfile::tempdir().unwrap();
    let database = root.path().join("var/lib/dpkg");
    std::fs::create_dir_all(database.join("info")).unwrap();
    std::fs::create_dir_all(database.join("updates")).unwrap();
    std::fs::write(database.join("status"), "").unwrap();
    let deb = dir.join(format!("plexichat_{}_amd64.deb", version()));
    let root_flag = format!("--root={}", root.path().display());
    run_in(dir, "dpkg", &[&root_flag, "--unpack", deb.to_str().unwrap()]);
    let status = std::fs::read_to_string(database.join("status")).unwrap();
    assert!(
        status.contains("Package: plexichat\nStatus: install ok unpacked"),
        "{status}"
    );
    assert!(
        status.contains("Conffiles:\n /etc/plexichat/profile.yaml newconffile"),
        "{status}"
    );
    let installed = root.path().join("usr/bin/plexichat");
    let printed = run_in(dir, installed.to_str().unwrap(), &["--version"]);
    assert!(printed.starts_with(&format!("plexichat {}", version())), "{printed}");
}

/// The OCI archive as skopeo reads it: an index tagged with the version over an image per
/// platform; the amd64 one copied into the Docker Engine by skopeo, run, healthy by its
/// own health check and answering /health.
fn check_oci_archive(dir: &Path) {
    let reference = format!(
        "oci-archive:{}:{}",
        dir.join(format!("plexichat-{}.oci.tar", version())).display(),
        version()
    );
    let index: Value = serde_json::from_str(&run_in(dir, "skopeo", &["inspect", "--raw", &reference])).unwrap();
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json", "{index}");
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64", "linux/riscv64"], "{index}");
    let config: Value = serde_json::from_str(&run_in(
        dir,
        "skopeo",
        &["inspect", "--override-arch", "arm64", "--config", &reference],
    ))
    .unwrap();
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");

    let image = Image(format!("plexichat-dist-test:{}", std::process::id()));
    run_in(
        dir,
        "skopeo",
        &[
            "copy",
            "--override-arch",
            "amd64",
            &reference,
            &format!("docker-daemon:{}", image.0),
        ],
    );
    let container = Container(
        run_in(
            dir,
            "docker",
            &["run", "--detach", "--publish", "127.0.0.1::8000", &image.0],
        )
        .trim()
        .to_string(),
    );
    let address = run_in(dir, "docker", &["port", &container.0, "8000/tcp"]);
    let address = address.lines().next().expect("a published port").trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let health = loop {
        let status = run_in(
            dir,
            "docker",
            &["inspect", "--format", "{{.State.Health.Status}}", &container.0],
        );
        if status.trim() == "healthy" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "never healthy: {status}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(health.trim(), "healthy");
    let (status, body) = plexichat_e2e::http_get(address.parse().unwrap(), "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
}

/// A container the test started, removed when the test ends however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "--force", &self.0]).output();
    }
}

/// An image the test loaded, removed when the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "--force", &self.0]).output();
    }
}

/// evidence.json: every artefact with the checksum SHA256SUMS gives it, its binary's
/// build inputs, and a smoke run that passed on its architecture.
fn check_evidence(files: &BTreeMap<String, Vec<u8>>, sums: &str) {
    let evidence: Value = serde_json::from_slice(&files["evidence.json"]).unwrap();
    let artefacts = evidence["artefacts"].as_array().expect("artefacts");
    // An archive, a package and an OCI image per target.
    assert_eq!(artefacts.len(), 3 * TRIPLES.len(), "{evidence}");
    for artefact in artefacts {
        let file = artefact["file"].as_str().unwrap();
        let sum = artefact["sha256"].as_str().unwrap();
        assert!(sums.contains(&format!("{sum}  {file}\n")), "{file} {sum} in {sums}");
        let binary = &artefact["binary"];
        assert_eq!(binary["profile"], "release", "{artefact}");
        assert_eq!(binary["is_static"], true, "{artefact}");
        assert_eq!(binary["target"], artefact["target"], "{artefact}");
        assert!(
            binary["cache_key"].as_str().is_some_and(|key| key.len() == 64),
            "{artefact}"
        );
        assert_eq!(artefact["sbom"], format!("{file}.cdx.json"), "{artefact}");
        assert!(
            binary["embedded_crates"].as_u64().is_some_and(|n| n > 100),
            "{artefact}"
        );
        let smoke = &artefact["smoke"];
        assert_eq!(smoke["ok"], true, "{artefact}");
        let ran = match artefact["target"].as_str() {
            Some("x86_64-unknown-linux-gnu") => "natively",
            Some("aarch64-unknown-linux-gnu") => "under qemu-aarch64-static",
            _ => "under qemu-riscv64-static",
        };
        assert_eq!(smoke["ran"], ran, "{artefact}");
        let steps: Vec<&str> = smoke["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(steps, ["version", "health", "resolve", "sigterm"], "{artefact}");
    }
    // The archive, the package and the image of a target hold one binary.
    for triple in TRIPLES {
        let of_target: Vec<(&str, &Value)> = artefacts
            .iter()
            .filter(|a| a["target"] == triple)
            .map(|a| (a["kind"].as_str().unwrap(), &a["binary"]["sha256"]))
            .collect();
        let kinds: Vec<&str> = of_target.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, ["archive", "deb", "oci"], "{evidence}");
        assert!(of_target.iter().all(|(_, sum)| *sum == of_target[0].1), "{evidence}");
    }
    assert_ne!(artefacts[0]["binary"]["sha256"], artefacts[3]["binary"]["sha256"]);
    assert!(evidence["rustc"]
        .as_str()
        .is_some_and(|rustc| rustc.starts_with("rustc ")));
}

/// Pinned, so that a new schema release shows up as a deliberate upgrade.
const CYCLONEDX_PYTHON_LIB: &str = "cyclonedx-python-lib[json-validation]==8.5.0";

/// Each artefact's SBOM: valid CycloneDX 1.5 by the schema (CycloneDX's own validator,
/// which also refuses a broken copy), about that very file, listing the crates its binary
/// says it carries (read back from the binary by cargo-auditable's own reader).
fn check_sboms(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let sboms: Vec<&String> = files.keys().filter(|name| name.ends_with(".cdx.json")).collect();
    assert_eq!(sboms.len(), 2 * TRIPLES.len() + 1, "{sboms:?}");
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("broken.cdx.json");
    let mut bom: Value = serde_json::from_slice(&files[sboms[0]]).unwrap();
    bom["components"][0]["scope"] = "sometimes".into();
    std::fs::write(&broken, bom.to_string()).unwrap();
    let mut paths: Vec<PathBuf> = sboms.iter().map(|name| dir.join(name)).collect();
    paths.push(broken.clone());
    let verdicts = validate_cyclonedx(&paths);
    for (path, verdict) in &verdicts {
        if *path == broken {
            assert!(verdict.contains("sometimes"), "a broken SBOM must fail: {verdict}");
        } else {
            assert_eq!(verdict, "valid", "{}", path.display());
        }
    }
    assert_eq!(verdicts.len(), paths.len());

    let sums = String::from_utf8(files["SHA256SUMS"].clone()).unwrap();
    let crates_of = |bom: &Value, triple: &str| -> Vec<(String, String)> {
        let mut crates: Vec<(String, String)> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["bom-ref"].as_str().unwrap().starts_with(&format!("{triple}/")))
            .map(|c| {
                (
                    c["name"].as_str().unwrap().into(),
                    c["version"].as_str().unwrap().into(),
                )
            })
            .collect();
        crates.sort();
        crates
    };
    for name in &sboms {
        let bom: Value = serde_json::from_slice(&files[*name]).unwrap();
        let subject = name.strip_suffix(".cdx.json").unwrap();
        let hash = bom["metadata"]["component"]["hashes"][0]["content"].as_str().unwrap();
        assert!(
            sums.contains(&format!("{hash}  {subject}\n")),
            "{name} is about {subject}"
        );
    }
    let oci: Value = serde_json::from_slice(&files[&format!("plexichat-{}.oci.tar.cdx.json", version())]).unwrap();
    for (triple, arch) in TRIPLES.iter().zip(DEB_ARCHES) {
        let stem = format!("plexichat-{}-{triple}", version());
        let archive: Value = serde_json::from_slice(&files[&format!("{stem}.tar.gz.cdx.json")]).unwrap();
        let deb: Value =
            serde_json::from_slice(&files[&format!("plexichat_{}_{arch}.deb.cdx.json", version())]).unwrap();
        let listed = crates_of(&archive, triple);
        assert_eq!(listed, crates_of(&deb, triple), "{triple}");
        assert_eq!(listed, crates_of(&oci, triple), "{triple}");
        assert!(listed.len() > 100, "{triple}: {listed:?}");

        // The binary from the archive, as a user unpacks it.
        let mut unpacked = tar::Archive::new(flate2::read::GzDecoder::new(&files[&format!("{stem}.tar.gz")][..]));
        unpacked.unpack(scratch.path()).unwrap();
        let binary = scratch.path().join(&stem).join("plexichat");
        let embedded = auditable_info::audit_info_from_file(&binary, Default::default())
            .unwrap_or_else(|err| panic!("{}: no cargo-auditable data: {err}", binary.display()));
        let mut carried: Vec<(String, String)> = embedded
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.to_string()))
            .collect();
        carried.sort();
        assert_eq!(carried, listed, "{triple}: the binary's own list is the SBOM's");
        let root: Vec<&str> = embedded
            .packages
            .iter()
            .filter(|p| p.root)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(root, ["plexichat"]);
    }
}

/// Each of `paths` checked by CycloneDX's Python library against the 1.5 JSON schema:
/// "valid", or the validator's complaint.
fn validate_cyclonedx(paths: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let venv = plexichat_e2e::python_venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[CYCLONEDX_PYTHON_LIB],
        "a release's SBOMs cannot be checked against the CycloneDX schema",
    );
    let script = r#"
import json, sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
validator = JsonStrictValidator(SchemaVersion.V1_5)
for path in sys.argv[1:]:
    error = validator.validate_str(open(path).read())
    print(json.dumps([path, "valid" if error is None else str(error)]))
"#;
    let output = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (path, verdict): (PathBuf, String) = serde_json::from_str(line).unwrap();
            (path, verdict)
        })
        .collect()
}

/// install.sh from a local archive into a prefix, the unit rewritten for it; then the
/// same archive with one byte changed, refused before anything is installed.
fn check_install_sh(dir: &Path) {
    let prefix = tempfile::tempdir().unwrap();
    let units = prefix.path().join("units");
    let archive = dir.join(format!("plexichat-{}-{}.tar.gz", version(), TRIPLES[0]));
    let install = |archive: &Path, prefix: &Path| {
        Command::new("sh")
            .arg(dir.join("install.sh"))
            .args(["--archive", archive.to_str().unwrap()])
            .args(["--prefix", prefix.to_str().unwrap()])
            .args(["--arch", "x86_64", "--systemd", "--no-user"])
            .args(["--unit-dir", units.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = install(&archive, prefix.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    let binary = prefix.path().join("bin/plexichat");
    let printed = run_in(prefix.path(), binary.to_str().unwrap(), &["--version"]);
    assert!(printed.starts_with(&format!("plexichat {}", version())), "{printed}");
    assert!(prefix.path().join("etc/plexichat/profile.yaml").is_file());
    let unit = std::fs::read_to_string(units.join("plexichat.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} serve --config {}/etc/plexichat/profile.yaml",
            binary.display(),
            prefix.path().display()
        )),
        "{unit}"
    );

    // A tampered copy under the released name, beside the released SHA256SUMS.
    let tampered_dir = tempfile::tempdir().unwrap();
    let tampered = tampered_dir.path().join(archive.file_name().unwrap());
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&tampered, bytes).unwrap();
    std::fs::copy(dir.join("SHA256SUMS"), tampered_dir.path().join("SHA256SUMS")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let output = install(&tampered, elsewhere.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("checksum mismatch"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        std::fs::read_dir(elsewhere.path()).unwrap().next().is_none(),
        "nothing is installed from a refused archive"
    );
}

#[test]
fn bad_input_exits_2_with_the_fix_before_anything_is_built() {
    let output = run_xtask(&["dist", "--target", "mips"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("--target"), "{}", stderr_of(&output));

    let profile = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(profile.path(), "server:\n  listen: 127.0.0.1:8000\n").unwrap();
    let output = run_xtask(&["dist", "--profile", profile.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(profile.path().to_str().unwrap())
            && stderr.contains("field `build`")
            && stderr.contains("fix:"),
        "{stderr}"
    );

    let output = run_xtask(&["dist", "--sign", "/nonexistent/release.key"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("/nonexistent/release.key") && stderr.contains("minisign -G -W"),
        "{stderr}"
    );
}
