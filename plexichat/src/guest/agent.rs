//! The toolchain's agent inside the VM, as qemu-guest-agent is QEMU's: a line protocol on
//! a virtio-serial port that QEMU connects to a socket on the host. It makes the faults
//! that only the guest can make: filling the data disk's filesystem, and freeing it.
//! A VM without the port (anything the toolchain did not launch) has no agent.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::console::say;

/// The port's name, as the host gives it (`virtserialport,name=…`).
pub(super) const PORT_NAME: &str = "org.plexichat.agent.0";
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// Ports register shortly after virtio_console loads.
const SCAN_FOR: Duration = Duration::from_secs(10);
/// The file that fills the disk; only the agent writes or removes it.
const FILLER: &str = ".plexichat-agent-filler";
/// With no host connected, a read returns at once with nothing: poll at this pace.
const IDLE: Duration = Duration::from_millis(200);

/// Serves the agent's port from a thread of its own, if the VM has one.
pub(super) fn serve(data: &'static str) {
    let spawned = std::thread::Builder::new().name("agent".into()).spawn(move || {
        if let Some(device) = find_port(Path::new(PORTS_DIR), SCAN_FOR) {
            if let Err(err) = serve_port(&device, Path::new(data)) {
                say(format_args!("the agent on {} stopped: {err}", device.display()));
            }
        }
    });
    if let Err(err) = spawned {
        say(format_args!("cannot start the agent: {err}"));
    }
}

/// The device of the port named [`PORT_NAME`], looked for until `within` has passed.
fn find_port(ports: &Path, within: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + within;
    loop {
        let found = std::fs::read_dir(ports).ok().and_then(|entries| {
            entries.flatten().find_map(|entry| {
                let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
                (name.trim() == PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
            })
        });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn serve_port(device: &Path, data: &Path) -> io::Result<()> {
    let port = File::options().read(true).write(true).open(device)?;
    let mut reader = BufReader::new(port.try_clone()?);
    let mut writer = port;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            std::thread::sleep(IDLE);
            continue;
        }
        let reply = answer(line.trim(), data);
        writeln!(writer, "{reply}")?;
    }
}

/// The reply to one request: `ok …` or `error …`, on one line.
pub(super) fn answer(request: &str, data: &Path) -> String {
    let outcome = match request {
        "ping" => Ok("pong".to_string()),
        "fill-disk" => fill(&data.join(FILLER)).map(|kib| format!("{} filled ({kib} KiB written)", data.display())),
        "free-disk" => free(&data.join(FILLER)).map(|()| format!("{} freed", data.display())),
        other => Err(io::Error::other(format!(
            "unknown request `{other}` (ping, fill-disk, free-disk)"
        ))),
    };
    match outcome {
        Ok(detail) => {
            say(format_args!("agent: {detail}"));
            format!("ok {detail}")
        }
        Err(err) => format!("error {err}"),
    }
}

/// Writes to `filler` until the filesystem refuses: the disk is full. Returns KiB written.
fn fill(filler: &Path) -> io::Result<u64> {
    let mut file = File::options().create(true).append(true).open(filler)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(err) => return Err(err),
        }
    }
    // Allocated for real, so that nothing the server writes next finds room.
    let _ = file.sync_all();
    Ok(written / 1024)
}

fn free(filler: &Path) -> io::Result<()> {
    match std::fs::remove_file(filler) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name() {
        let ports = tempfile::tempdir().unwrap();
        for (device, name) in [("vport0p0", "org.qemu.guest_agent.0"), ("vport1p1", PORT_NAME)] {
            std::fs::create_dir(ports.path().join(device)).unwrap();
            std::fs::write(ports.path().join(device).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_port(ports.path(), Duration::ZERO),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        std::fs::remove_dir_all(ports.path().join("vport1p1")).unwrap();
        assert_eq!(find_port(ports.path(), Duration::ZERO), None);
    }

    #[test]
    fn requests_are_answered_on_one_line() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(answer("ping", data.path()), "ok pong");
        assert!(answer("format c:", data.path()).starts_with("error unknown request"));
        assert!(
            answer("free-disk", data.path()).starts_with("ok "),
            "freeing nothing is fine"
        );
    }
}
