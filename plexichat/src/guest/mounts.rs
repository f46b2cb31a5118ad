//! The filesystems a server needs that an initramfs does not have: the kernel starts
//! /init with nothing mounted besides the initramfs itself.

use std::io;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::console::say;

struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

/// /proc before anything else: the command line is read from it.
const MOUNTS: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC),
        data: "",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC),
        data: "",
    },
    // devtmpfs makes device nodes appear as drivers register them (eth0's module, the
    // RTC, input devices), so no udev is needed.
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    // The SQLite database lives here; like the whole VM it is gone at power-off.
    Mount {
        target: "/data",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
];

/// Mounts every filesystem, reporting each failure on the console and going on: a server
/// without /sys still serves, and a missing /proc is reported where it matters.
pub(super) fn mount_all() {
    for mount in MOUNTS {
        match mount_one(mount) {
            Ok(()) => {}
            // Already mounted, e.g. by a kernel with CONFIG_DEVTMPFS_MOUNT.
            Err(err) if err.raw_os_error() == Some(Errno::EBUSY as i32) => {}
            Err(err) => say(format_args!("cannot mount {} on {}: {err}", mount.fstype, mount.target)),
        }
    }
}

fn mount_one(mount: &Mount) -> io::Result<()> {
    std::fs::create_dir_all(mount.target)?;
    // The filesystem type doubles as the source, which these filesystems ignore.
    nix::mount::mount(
        Some(mount.fstype),
        mount.target,
        Some(mount.fstype),
        mount.flags,
        Some(mount.data),
    )?;
    Ok(())
}
