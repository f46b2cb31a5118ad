//! A VM's data disk: a qcow2 image over a file in the run's directory, holding an ext4
//! filesystem that the toolchain makes (mkfs.ext4 from e2fsprogs) and the guest's init
//! mounts on /data. It outlives the VM: a node restarted after a crash or a power cut
//! boots from the same disk, as an edge box does.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use services::process::{self, cmd};

use crate::system::sbin_program;

/// The id the disk's `-drive` has on the QEMU command line.
pub const DRIVE_ID: &str = "data";
/// The name of its qcow2 node, which snapshots are saved to and loaded from.
pub const NODE_NAME: &str = "data-disk";

pub struct DataDisk {
    pub path: PathBuf,
    pub mebibytes: u32,
}

impl DataDisk {
    /// Formats an ext4 filesystem of `mebibytes` into a new qcow2 image at `path`.
    pub fn create(path: &Path, mebibytes: u32) -> Result<Self> {
        let raw = path.with_extension("raw");
        let size = format!("{mebibytes}M");
        let mkfs = sbin_program("mkfs.ext4").context("mkfs.ext4 is missing (fix: apt-get install e2fsprogs)")?;
        let sh = process::shell()?;
        // Inode tables and the journal initialised now, not lazily by the guest's kernel in
        // the background, where TCG makes it slow and it would compete with the server.
        process::run(cmd!(
            sh,
            "{mkfs} -q -F -L plexichat-data -m 0 -E lazy_itable_init=0,lazy_journal_init=0 {raw} {size}"
        ))
        .with_context(|| format!("formatting {}", raw.display()))?;
        let converted = process::run(cmd!(sh, "qemu-img convert -q -f raw -O qcow2 {raw} {path}"))
            .with_context(|| format!("making {} (qemu-img is in qemu-utils)", path.display()));
        let _ = std::fs::remove_file(&raw);
        converted?;
        Ok(Self {
            path: path.to_path_buf(),
            mebibytes,
        })
    }

    /// The QEMU arguments that attach the disk as `device` (e.g. virtio-blk-pci). Write
    /// and read errors go to the guest, as a failing disk's would, instead of pausing
    /// the VM (QEMU's default on a full host disk).
    pub fn qemu_args(&self, device: &str) -> [String; 4] {
        [
            "-drive".into(),
            format!(
                "file={},if=none,id={DRIVE_ID},node-name={NODE_NAME},format=qcow2,cache=writeback,werror=report,rerror=report",
                self.path.display()
            ),
            "-device".into(),
            format!("{device},drive={DRIVE_ID}"),
        ]
    }
}

impl DataDisk {
    /// How many bytes snapshot `tag` holds of the VM's memory and device state, as
    /// `qemu-img info` reads the image (shared: the VM may be running on it).
    pub fn snapshot_bytes(&self, tag: &str) -> Result<u64> {
        let sh = process::shell()?;
        let path = &self.path;
        let output = process::output(cmd!(sh, "qemu-img info --force-share --output=json {path}"))?;
        if !output.status.success() {
            bail!(
                "qemu-img info {}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let info: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading qemu-img info of {}", path.display()))?;
        info["snapshots"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|snapshot| snapshot["name"] == tag)
            .and_then(|snapshot| snapshot["vm-state-size"].as_u64())
            .with_context(|| format!("{} has no snapshot {tag}", path.display()))
    }

    /// The image file's size: the disk's blocks and its snapshots together.
    pub fn file_bytes(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?
            .len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_a_qcow2_image_of_an_ext4_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DataDisk::create(&dir.path().join("node-0.qcow2"), 16).unwrap();
        let sh = process::shell().unwrap();
        let path = &disk.path;
        let info = process::output(cmd!(sh, "qemu-img info --output=json {path}")).unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], 16 * 1024 * 1024);
        // The filesystem inside, read back through a raw copy.
        let raw = dir.path().join("back.raw");
        process::run(cmd!(sh, "qemu-img convert -f qcow2 -O raw {path} {raw}")).unwrap();
        let dumpe2fs = sbin_program("dumpe2fs").unwrap();
        let header = process::output(cmd!(sh, "{dumpe2fs} -h {raw}")).unwrap();
        let header = String::from_utf8_lossy(&header.stdout);
        assert!(header.contains("plexichat-data"), "{header}");
        assert!(
            !dir.path().join("node-0.raw").exists(),
            "the raw intermediate is removed"
        );
    }
}
