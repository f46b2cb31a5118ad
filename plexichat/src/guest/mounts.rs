//! The filesystems a server needs that an initramfs does not have: the kernel starts
//! /init with nothing mounted besides the initramfs itself.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use libc::c_ulong;

use super::console::say;

struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: c_ulong,
    data: &'static str,
}

/// /proc before anything else: the command line is read from it.
const MOUNTS: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    // devtmpfs makes device nodes appear as drivers register them (eth0's module, the
    // RTC, input devices), so no udev is needed.
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    // The SQLite database lives here; like the whole VM it is gone at power-off.
    Mount {
        target: "/data",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
];

/// Mounts every filesystem, reporting each failure on the console and going on: a server
/// without /sys still serves, and a missing /proc is reported where it matters.
pub fn mount_all() {
    for mount in MOUNTS {
        match mount_one(mount) {
            Ok(()) => {}
            // Already mounted, e.g. by a kernel with CONFIG_DEVTMPFS_MOUNT.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => say(format_args!("cannot mount {} on {}: {err}", mount.fstype, mount.target)),
        }
    }
}

fn mount_one(mount: &Mount) -> io::Result<()> {
    let target = Path::new(mount.target);
    std::fs::create_dir_all(target)?;
    let source = CString::new(mount.fstype)?;
    let target = CString::new(target.as_os_str().as_bytes())?;
    let data = CString::new(mount.data)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; the kernel
    // copies them and keeps no reference. `source` doubles as the filesystem type.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            mount.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
