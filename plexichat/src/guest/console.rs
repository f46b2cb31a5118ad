//! One-line markers on the VM's console, which the toolchain reads from the serial port
//! to follow a boot (`plexichat-guest: serving on …`).

use std::fmt::Display;
use std::io::Write as _;
use std::time::Duration;

use nix::time::ClockId;

/// Every guest line starts with this, so a transcript can be searched without knowing
/// the server's log format.
pub(super) const MARKER: &str = "plexichat-guest:";

/// Writes one marker line to stderr (the kernel's /dev/console for PID 1), stamped with
/// the seconds since the kernel started, as the kernel stamps its own lines: a slow step
/// of the boot shows between two lines of the same clock.
///
/// The line is written in one call so it does not interleave with log lines from other
/// threads, and a failed write is ignored: PID 1 must not die because the console did.
pub(super) fn say(message: impl Display) {
    let line = stamped(uptime(), message);
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The time since boot (`CLOCK_BOOTTIME`, the kernel's printk clock counts the same).
fn uptime() -> Option<Duration> {
    let now = nix::time::clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    Some(Duration::from(now))
}

fn stamped(uptime: Option<Duration>, message: impl Display) -> String {
    match uptime {
        Some(uptime) => format!(
            "{MARKER} [{:>4}.{:03}] {message}\n",
            uptime.as_secs(),
            uptime.subsec_millis()
        ),
        None => format!("{MARKER} {message}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_carries_the_seconds_since_boot() {
        assert_eq!(
            stamped(Some(Duration::from_millis(2_803)), "serving on 0.0.0.0:8000"),
            "plexichat-guest: [   2.803] serving on 0.0.0.0:8000\n"
        );
        assert_eq!(stamped(None, "x"), "plexichat-guest: x\n");
        assert!(uptime().is_some_and(|uptime| uptime > Duration::ZERO));
    }
}
