//! The filesystems a server needs that an initramfs does not have: the kernel starts
//! /init with nothing mounted besides the initramfs itself.

use std::io;
use std::path::Path;

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
];

/// Where the SQLite database lives.
pub(super) const DATA: &str = "/data";
const DATA_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOATIME);

/// What /data is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Data {
    /// A disk of the VM's own (ext4, formatted by the toolchain): the data outlives the VM.
    Disk(String),
    /// No disk attached: the data is gone at power-off, like the rest of the VM.
    Tmpfs,
}

/// Mounts the VM's data disk on /data — the first virtio disk, so call this once the
/// block driver is loaded — or a tmpfs when the VM has no disk. A disk that is attached
/// but cannot be mounted is an error: serving from a tmpfs instead would quietly give up
/// the durability the disk was attached for.
pub(super) fn mount_data() -> io::Result<Data> {
    std::fs::create_dir_all(DATA)?;
    let Some(disk) = first_virtio_disk(Path::new("/sys/block")) else {
        nix::mount::mount(Some("tmpfs"), DATA, Some("tmpfs"), DATA_FLAGS, Some("mode=0755"))?;
        return Ok(Data::Tmpfs);
    };
    let device = format!("/dev/{disk}");
    nix::mount::mount(Some(device.as_str()), DATA, Some("ext4"), DATA_FLAGS, None::<&str>)
        .map_err(|err| io::Error::other(format!("{device} on {DATA} as ext4: {err}")))?;
    Ok(Data::Disk(device))
}

/// Before power-off: what the server wrote reaches the disk, and the filesystem is left
/// clean. Best effort: a file still open keeps /data busy, and sync has already run.
pub(super) fn release_data() {
    nix::unistd::sync();
    let _ = nix::mount::umount(DATA);
}

/// The first `vd*` entry of `/sys/block` in name order (virtio disks: vda, vdb, …).
fn first_virtio_disk(sys_block: &Path) -> Option<String> {
    let mut disks: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("vd"))
        .collect();
    disks.sort();
    disks.into_iter().next()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_virtio_disk_is_the_data_disk() {
        let sys_block = tempfile::tempdir().unwrap();
        assert_eq!(first_virtio_disk(sys_block.path()), None);
        for name in ["sr0", "vdb", "vda", "loop0"] {
            std::fs::create_dir(sys_block.path().join(name)).unwrap();
        }
        assert_eq!(first_virtio_disk(sys_block.path()).as_deref(), Some("vda"));
    }
}
