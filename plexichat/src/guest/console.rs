//! One-line markers on the VM's console, which the toolchain reads from the serial port
//! to follow a boot (`plexichat-guest: serving on …`).

use std::fmt::Display;
use std::io::Write as _;

/// Every guest line starts with this, so a transcript can be searched without knowing
/// the server's log format.
pub(super) const MARKER: &str = "plexichat-guest:";

/// Writes one marker line to stderr (the kernel's /dev/console for PID 1).
///
/// The line is written in one call so it does not interleave with log lines from other
/// threads, and a failed write is ignored: PID 1 must not die because the console did.
pub(super) fn say(message: impl Display) {
    let line = format!("{MARKER} {message}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
