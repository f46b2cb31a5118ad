//! Kernel modules the VM needs (virtio network, evdev, the power button): distribution
//! kernels build them as modules, and there is no modprobe in the image, so init loads the
//! files the image builder listed, in the dependency order it worked out.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;

use super::console::say;

/// One module path per line; written by the image builder.
pub(super) const LIST: &str = "/etc/plexichat/modules";

/// `finit_module` flag from <linux/module.h>: the kernel decompresses the file itself
/// (`.ko.xz`, `.ko.zst`). Neither nix's ModuleInitFlags nor libc names it yet.
const MODULE_INIT_COMPRESSED_FILE: ModuleInitFlags = ModuleInitFlags::from_bits_retain(4);

/// The module paths in a list file: one per line; blank lines and `#` comments are skipped.
pub(super) fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// How loading went, for one console line.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Loaded {
    pub loaded: usize,
    pub already: usize,
    pub failed: usize,
}

/// Loads every module in the list file. A module that fails is reported and the rest are
/// still tried: a missing power button must not cost the VM its network.
pub(super) fn load_listed(list: &Path) -> Loaded {
    let mut outcome = Loaded::default();
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        // No list: a kernel with everything built in.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return outcome,
        Err(err) => {
            say(format_args!("cannot read the module list {}: {err}", list.display()));
            return outcome;
        }
    };
    for path in parse_list(&text) {
        match load(&path) {
            Ok(()) => outcome.loaded += 1,
            Err(err) if err.raw_os_error() == Some(Errno::EEXIST as i32) => outcome.already += 1,
            Err(err) => {
                outcome.failed += 1;
                say(format_args!("cannot load kernel module {}: {err}", path.display()));
            }
        }
    }
    outcome
}

fn load(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let compressed = path
        .extension()
        .is_some_and(|ext| ext == "xz" || ext == "zst" || ext == "gz");
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        ModuleInitFlags::empty()
    };
    nix::kmod::finit_module(&file, c"", flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_blanks_and_comments() {
        let list = "/lib/modules/virtio_ring.ko\n\n# network\n  /lib/modules/virtio_net.ko  \r\n/lib/modules/evdev.ko";
        assert_eq!(
            parse_list(list),
            [
                PathBuf::from("/lib/modules/virtio_ring.ko"),
                PathBuf::from("/lib/modules/virtio_net.ko"),
                PathBuf::from("/lib/modules/evdev.ko"),
            ]
        );
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_listed(&dir.path().join("modules")), Loaded::default());
    }

    #[test]
    fn a_missing_module_is_counted_and_the_rest_are_tried() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules");
        let missing = dir.path().join("missing.ko");
        std::fs::write(&list, format!("{}\n{}\n", missing.display(), missing.display())).unwrap();
        assert_eq!(
            load_listed(&list),
            Loaded {
                loaded: 0,
                already: 0,
                failed: 2
            }
        );
    }
}
