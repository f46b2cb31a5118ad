//! `cargo xtask qemu-image` driven as its users drive it: the x86_64 image is built from
//! the Debian kernel package and the static server, read back here with a cpio reader
//! of the test's own, reused when nothing changed, and booted far enough to run /init;
//! a broken image definition exits 2 naming the file and the field.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plexichat_e2e::{json_of, run_xtask, stderr_of, workspace_root};
use serde_json::Value;
use xtask::provision::Requirement;
use xtask::report::progress::Progress;
use xtask::workspace::targets::by_arch;

/// The x86_64 image, built (or reused) by the toolchain; its report.
fn x86_64_image() -> Value {
    let output = run_xtask(&["qemu-image", "--arch", "x86_64", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let report = json_of(&output);
    assert_eq!(report["ok"], true, "{report}");
    report["images"][0].clone()
}

/// A newc entry: name, mode, (rdev major, minor), contents.
struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Reads a gzipped newc archive the way the kernel does: 110-byte ASCII headers,
/// names and bodies padded to 4 bytes, up to TRAILER!!!.
fn read_initramfs(path: &Path) -> Vec<Entry> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let align = |n: usize| (n + 3) & !3;
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let header = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
        assert_eq!(&header[..6], "070701", "newc magic at offset {at}");
        let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
        let (mode, size, rdev, name_len) = (field(1), field(6) as usize, (field(9), field(10)), field(11) as usize);
        let name = std::str::from_utf8(&bytes[at + 110..at + 110 + name_len - 1])
            .unwrap()
            .to_string();
        let body = align(at + 110 + name_len);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(Entry {
            name,
            mode,
            rdev,
            data: bytes[body..body + size].to_vec(),
        });
        at = align(body + size);
    }
}

#[test]
fn the_x86_64_image_holds_the_server_as_init_and_its_modules_in_load_order_and_is_cached() {
    let image = x86_64_image();
    assert_eq!(image["arch"], "x86_64");
    assert_eq!(image["kernel_format"], "pvh-vmlinux");
    let dir = workspace_root().join("target/xtask/qemu-images/x86_64");
    let kernel = PathBuf::from(image["kernel"].as_str().unwrap());
    let initramfs = PathBuf::from(image["initramfs"].as_str().unwrap());
    assert_eq!(
        (kernel.as_path(), initramfs.as_path()),
        (dir.join("kernel").as_path(), dir.join("initramfs.cpio.gz").as_path())
    );
    assert!(dir.join("image.json").is_file());

    // The kernel is an x86-64 ELF vmlinux (booted as PVH), not the bzImage.
    let kernel_bytes = std::fs::read(&kernel).unwrap();
    assert_eq!(&kernel_bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([kernel_bytes[18], kernel_bytes[19]]), 62);

    let entries = read_initramfs(&initramfs);
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the initramfs"))
    };
    let init = find("init");
    assert_eq!(init.mode, 0o100_755);
    assert_eq!(&init.data[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([init.data[18], init.data[19]]),
        62,
        "an x86-64 server"
    );
    assert_eq!(init.data.len() as u64, image["binary_bytes"].as_u64().unwrap());
    let console = find("dev/console");
    assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
    for dir in ["proc", "sys", "tmp", "data", "etc/plexichat", "lib/modules"] {
        assert_eq!(find(dir).mode & 0o170_000, 0o040_000, "{dir} is a directory");
    }

    // Every module that is not built in is in the archive, listed in the same order.
    let modules: Vec<&str> = image["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["built_in"] == false)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let listed = String::from_utf8(find("etc/plexichat/modules").data.clone()).unwrap();
    let expected: Vec<String> = modules.iter().map(|m| format!("/lib/modules/{m}.ko")).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), expected);
    for module in &modules {
        let file = find(&format!("lib/modules/{module}.ko"));
        assert_eq!(&file.data[..4], b"\x7fELF", "{module} is an uncompressed module");
    }
    let position = |name: &str| {
        modules
            .iter()
            .position(|m| *m == name)
            .unwrap_or_else(|| panic!("{name} not in {modules:?}"))
    };
    // virtio_net needs net_failover, which needs failover: dependencies load first.
    assert!(position("failover") < position("net_failover"));
    assert!(position("net_failover") < position("virtio_net"));
    assert!(position("virtio_ring") < position("virtio_pci"));

    let again = x86_64_image();
    assert_eq!(again["cache_hit"], true, "an unchanged image must not be rebuilt");
    assert_eq!(again["seconds"], 0.0);
    assert_eq!(again["cache_key"], image["cache_key"]);
    assert_eq!(again["initramfs_bytes"], image["initramfs_bytes"]);
}

#[test]
fn the_x86_64_image_boots_under_tcg_and_runs_init() {
    xtask::provision::provision(
        &[Requirement::QemuSystem(by_arch("x86_64").expect("x86_64 is a target"))],
        &Progress::new(),
    )
    .expect("qemu-system-x86_64 is installed or installable");
    let image = x86_64_image();
    // No `quiet`: the kernel then says when it hands over to /init.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(["-kernel", image["kernel"].as_str().unwrap()])
        .args(["-initrd", image["initramfs"].as_str().unwrap()])
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, console) = mpsc::channel();
    let stdout = qemu.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    let mut ran_init = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match console.recv_timeout(left) {
            Ok(line) => {
                ran_init = line.contains("Run /init as init process");
                seen.push(line);
                if ran_init {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(
        ran_init,
        "the kernel never ran /init; console:\n{}",
        seen[seen.len().saturating_sub(40)..].join("\n")
    );
    assert!(
        !seen
            .iter()
            .any(|line| line.contains("Kernel panic") || line.contains("Unable to mount root")),
        "{}",
        seen.join("\n")
    );
}

/// The x86_64 definition with `edit` applied, in a temporary file.
fn broken_definition(edit: impl FnOnce(String) -> String) -> tempfile::NamedTempFile {
    let original = std::fs::read_to_string(workspace_root().join("qemu-images/x86_64.yaml")).unwrap();
    let edited = edit(original.clone());
    assert_ne!(edited, original, "the edit changed nothing");
    let file = tempfile::Builder::new()
        .prefix("broken-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), edited).unwrap();
    file
}

fn assert_exit_2_naming(definition: &Path, field: &str) {
    let output = run_xtask(&["qemu-image", "--definition", definition.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(definition.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains(&format!("`{field}`")), "{field}: {stderr}");
    assert!(stderr.contains("fix:"), "{stderr}");
}

#[test]
fn a_broken_image_definition_exits_2_naming_file_and_field() {
    let unknown_field = broken_definition(|text| text.replace("  vcpus: 1\n", "  vcpus: 1\n  cores: 2\n"));
    assert_exit_2_naming(unknown_field.path(), "qemu.cores");
    let no_memory = broken_definition(|text| text.replace("memory_mib: 256", "memory_mib: 0"));
    assert_exit_2_naming(no_memory.path(), "qemu.memory_mib");
    let bad_accelerator = broken_definition(|text| text.replace("[kvm, tcg]", "[kvm, xen]"));
    assert_exit_2_naming(bad_accelerator.path(), "qemu.accelerators[1]");
    let metapackage =
        broken_definition(|text| text.replace("linux-image-6.1.0-50-cloud-amd64", "linux-image-cloud-amd64"));
    assert_exit_2_naming(metapackage.path(), "kernel.package");

    let output = run_xtask(&["qemu-image", "--arch", "sparc64"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("--arch"), "{}", stderr_of(&output));
}

#[test]
fn a_module_the_kernel_package_lacks_exits_2_naming_its_entry() {
    let definition = broken_definition(|text| {
        let modules = text
            .lines()
            .find(|line| line.starts_with("modules:"))
            .expect("the definition lists its modules");
        text.replace(modules, "modules: [virtio_net, no_such_module]")
    });
    assert_exit_2_naming(definition.path(), "modules[1]");
    assert!(
        !workspace_root()
            .join("target/xtask/qemu-images")
            .join(definition.path().file_stem().unwrap())
            .join("image.json")
            .exists(),
        "no image is recorded for a broken definition"
    );
}
