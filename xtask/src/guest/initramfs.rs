//! The guest's initramfs: the static server as /init, the modules its init loads and
//! the list saying in which order, in a stored gzip. The guest mounts /proc, /sys and /dev
//! itself; the directories are here so that it need not create them.

use std::io::Write;

use anyhow::Result;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::guest::cpio::CpioWriter;
use crate::guest::modules::Module;

/// Where the modules go, and the list of them in load order (one absolute path a line).
pub(crate) const MODULES_DIR: &str = "/lib/modules";
pub(crate) const MODULES_LIST: &str = "/etc/plexichat/modules";

const DIRS: [&str; 10] = [
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/data",
    "/etc",
    "/etc/plexichat",
    "/lib",
    "/lib/modules",
    "/run",
];

/// The uncompressed archive.
pub(crate) fn archive(server: &[u8], modules: &[Module]) -> Result<Vec<u8>> {
    let mut cpio = CpioWriter::new(Vec::new());
    for dir in DIRS {
        let mode = if dir == "/tmp" { 0o1777 } else { 0o755 };
        cpio.dir(dir, mode)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.char_device("/dev/console", 0o600, 5, 1)?;
    cpio.file("/init", 0o755, server)?;
    let mut list = String::new();
    for module in modules.iter().filter(|m| !m.entry.built_in) {
        let path = format!("{MODULES_DIR}/{}.ko", module.entry.name);
        cpio.file(&path, 0o644, &module.data)?;
        list.push_str(&path);
        list.push('\n');
    }
    cpio.file(MODULES_LIST, 0o644, list.as_bytes())?;
    Ok(cpio.finish()?)
}

/// The archive in gzip's format but stored, not compressed, padded with NULs to a
/// multiple of 4 bytes so that another archive (a per-VM overlay) can be appended: the
/// kernel skips NULs between archives.
///
/// Stored because an emulated guest inflates slowly: three x86_64 VMs under TCG took
/// ×1.15 a bare init's time to answer with the image deflated (6.6 MB) and ×1.08 with it
/// stored (16 MB), which the kernel unpacks at the speed of a copy. It stays gzip, not a
/// bare cpio, so that tools that `zcat` an initramfs still read it.
pub(crate) fn gzip(archive: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::none());
    encoder.write_all(archive)?;
    let mut bytes = encoder.finish()?;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cpio;
    use crate::guest::modules::ModuleEntry;

    fn module(name: &str, built_in: bool) -> Module {
        Module {
            entry: ModuleEntry {
                name: name.into(),
                built_in,
                requested: true,
                depends: Vec::new(),
            },
            data: if built_in { Vec::new() } else { name.as_bytes().to_vec() },
        }
    }

    #[test]
    fn init_modules_and_their_order_are_in_the_archive() {
        let modules = [
            module("failover", false),
            module("button", true),
            module("net_failover", false),
        ];
        let entries = cpio::read(&archive(b"\x7fELF server", &modules).unwrap()).unwrap();
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let init = find("init");
        assert!(init.is_file() && init.mode & 0o777 == 0o755);
        assert_eq!(init.data, b"\x7fELF server");
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert!(find("data").is_dir() && find("lib/modules").is_dir());
        assert_eq!(find("lib/modules/failover.ko").data, b"failover");
        assert!(!entries.iter().any(|e| e.name.contains("button")));
        assert_eq!(
            String::from_utf8(find("etc/plexichat/modules").data.clone()).unwrap(),
            "/lib/modules/failover.ko\n/lib/modules/net_failover.ko\n"
        );
        // Parents come before what they hold.
        let position = |name: &str| entries.iter().position(|e| e.name == name).unwrap();
        assert!(position("lib") < position("lib/modules"));
        assert!(position("lib/modules") < position("lib/modules/failover.ko"));
    }

    #[test]
    fn the_gzip_is_padded_for_appending() {
        let bytes = gzip(b"0123456789").unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).unwrap();
        assert_eq!(out, b"0123456789");
    }
}
