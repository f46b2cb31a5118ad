//! The toolchain's QMP client against a real QEMU: capabilities negotiated, every
//! command it uses answered, and the events it waits for observed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use services::process::ProcessGuard;
use services::teardown::TempDir;
use xtask::provision::Requirement;
use xtask::qemu::qmp::{self, Qmp, VmEvent};
use xtask::report::progress::Progress;
use xtask::workspace::targets::by_arch;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn qmp_controls_a_real_qemu_and_sees_its_events() {
    xtask::provision::provision(
        &[Requirement::QemuSystem(by_arch("x86_64").expect("x86_64 is a target"))],
        &Progress::new(),
    )
    .expect("qemu-system-x86_64 is installed or installable");
    let dir = TempDir::new("qmp-test").unwrap();
    let socket = dir.path().join("qmp.sock");
    // No kernel and no disk: the firmware runs and finds nothing to boot, which is
    // all a QMP conversation needs.
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "64",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let process = ProcessGuard::new(child);
    let qmp = Qmp::connect(qmp::runtime().unwrap(), &socket).expect("QMP negotiates");

    assert_eq!(qmp.status().unwrap(), "running");
    let at = Instant::now();
    qmp.stop().unwrap();
    qmp.wait_for(at, WAIT, |e| *e == VmEvent::Stop).unwrap();
    assert_eq!(qmp.status().unwrap(), "paused");

    let at = Instant::now();
    qmp.cont().unwrap();
    qmp.wait_for(at, WAIT, |e| *e == VmEvent::Resume).unwrap();
    assert_eq!(qmp.status().unwrap(), "running");

    let at = Instant::now();
    qmp.system_reset().unwrap();
    qmp.wait_for(
        at,
        WAIT,
        |e| matches!(e, VmEvent::Reset { guest: false, reason } if reason == "host-qmp-system-reset"),
    )
    .unwrap();

    let at = Instant::now();
    qmp.system_powerdown().unwrap();
    qmp.wait_for(at, WAIT, |e| *e == VmEvent::Powerdown).unwrap();

    let at = Instant::now();
    qmp.quit().unwrap();
    qmp.wait_for(
        at,
        WAIT,
        |e| matches!(e, VmEvent::Shutdown { guest: false, reason } if reason == "host-qmp-quit"),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while !matches!(process.child().try_wait(), Ok(Some(_))) {
        assert!(Instant::now() < deadline, "QEMU still runs after quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    while !qmp.closed() {
        assert!(Instant::now() < deadline, "the QMP socket stays open after QEMU exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<String> = qmp.events().iter().map(|e| e.name().to_string()).collect();
    for expected in ["STOP", "RESUME", "RESET", "POWERDOWN", "SHUTDOWN"] {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
}
