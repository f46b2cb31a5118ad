//! The kernel modules an image carries: the ones its definition asks for plus
//! everything they depend on, dependencies first. Debian's package has no modules.dep
//! (depmod runs at install time), so dependencies come from each module's `.modinfo`
//! section; modules built into the kernel (modules.builtin) need no file and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::error::UsageError;
use crate::system::elf;

/// One module of the image, in load order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub name: String,
    /// Built into the kernel: nothing to load.
    pub built_in: bool,
    /// Named in the definition (else pulled in as a dependency).
    pub requested: bool,
    pub depends: Vec<String>,
}

/// A module to put in the initramfs: its entry and its uncompressed bytes.
pub(crate) struct Module {
    pub entry: ModuleEntry,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("entry", &self.entry)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// What the kernel package says about one module name.
pub(crate) enum Found {
    Module { data: Vec<u8>, depends: Vec<String> },
    BuiltIn,
    Missing,
}

/// `lib/modules/<version>` of an unpacked kernel package.
pub(crate) struct ModuleTree {
    pub version: String,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// Module names use `_`; file names may use `-` for the same module.
pub(crate) fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    /// Indexes the modules of the package unpacked at `root` (lib/modules, or
    /// usr/lib/modules since trixie's merged /usr).
    pub(crate) fn scan(root: &Path) -> Result<Self> {
        let dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|dir| root.join(dir))
            .find(|dir| dir.is_dir())
            .context("the kernel package has no lib/modules directory")?;
        let versions: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        let tree = match versions.as_slice() {
            [one] => one.clone(),
            _ => bail!(
                "expected one kernel version under {}, found {}",
                dir.display(),
                versions.len()
            ),
        };
        let version = tree
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        let mut pending = vec![tree.join("kernel")];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(name) = module_name(&path) {
                    files.insert(name, path);
                }
            }
        }
        let builtin_list = tree.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_list)
            .with_context(|| format!("reading {}", builtin_list.display()))?
            .lines()
            .filter_map(|line| module_name(Path::new(line.trim())))
            .collect();
        Ok(Self {
            version,
            files,
            builtin,
        })
    }

    pub(crate) fn find(&self, name: &str) -> Result<Found> {
        let name = normalise(name);
        if let Some(path) = self.files.get(&name) {
            let data = uncompressed(path)?;
            let depends = depends(&data).with_context(|| format!("reading the .modinfo of {}", path.display()))?;
            return Ok(Found::Module { data, depends });
        }
        if self.builtin.contains(&name) {
            return Ok(Found::BuiltIn);
        }
        Ok(Found::Missing)
    }
}

/// `virtio-rng.ko.xz` → `virtio_rng`; None for anything that is not a module.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    Some(normalise(stem))
}

/// The module file's bytes, decompressed: the guest's init loads plain `.ko` files.
fn uncompressed(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|err| anyhow::anyhow!("unpacking {}: {err}", path.display()))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("unpacking {}", path.display()))?;
    } else if name.ends_with(".zst") {
        bail!(
            "{} is zstd-compressed, which this toolchain does not unpack yet",
            path.display()
        );
    } else {
        out = raw;
    }
    Ok(out)
}

/// The modules a module needs loaded first, from the `depends=` of its `.modinfo`.
pub(crate) fn depends(module: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf::section(module, ".modinfo")?.context("no .modinfo section: not a kernel module")?;
    Ok(modinfo_value(modinfo, "depends")
        .map(|list| list.split(',').filter(|name| !name.is_empty()).map(normalise).collect())
        .unwrap_or_default())
}

/// One `key=value` of a `.modinfo` section (NUL-separated strings).
pub(crate) fn modinfo_value<'a>(modinfo: &'a [u8], key: &str) -> Option<&'a str> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|item| std::str::from_utf8(item).ok())
        .find_map(|item| item.strip_prefix(key)?.strip_prefix('='))
}

/// The requested modules and their dependencies, each after what it depends on.
/// `definition` and the `modules[i]` field are named when a requested module is
/// neither in the package nor built in.
pub(crate) fn resolve(
    definition: &Path,
    requested: &[String],
    mut lookup: impl FnMut(&str) -> Result<Found>,
) -> Result<Vec<Module>> {
    let mut ordered = Vec::new();
    let mut done = BTreeSet::new();
    for (index, name) in requested.iter().enumerate() {
        let name = normalise(name);
        let mut path = Vec::new();
        visit(&name, true, &mut path, &mut done, &mut ordered, &mut lookup).map_err(|err| {
            match err.downcast_ref::<Unknown>() {
                Some(Unknown(missing)) if *missing == name => UsageError::at(
                    definition.display(),
                    &format!("modules[{index}]"),
                    format!("`{name}` is neither a module of the kernel package nor built into it"),
                    "check the name (e.g. virtio_net) against the package's lib/modules, or drop it",
                )
                .into(),
                _ => err,
            }
        })?;
    }
    Ok(ordered)
}

#[derive(Debug, thiserror::Error)]
#[error("module `{0}` is neither in the kernel package nor built in")]
struct Unknown(String);

/// Depth first: a module's dependencies are placed before it. `path` is the chain being
/// visited, for naming a cycle.
fn visit(
    name: &str,
    requested: bool,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
    ordered: &mut Vec<Module>,
    lookup: &mut impl FnMut(&str) -> Result<Found>,
) -> Result<()> {
    if done.contains(name) {
        if requested {
            if let Some(module) = ordered.iter_mut().find(|m| m.entry.name == name) {
                module.entry.requested = true;
            }
        }
        return Ok(());
    }
    if let Some(start) = path.iter().position(|visiting| visiting == name) {
        let mut cycle = path[start..].to_vec();
        cycle.push(name.to_string());
        bail!(
            "the kernel package's modules depend on each other in a cycle: {}",
            cycle.join(" → ")
        );
    }
    let (data, depends, built_in) = match lookup(name)? {
        Found::Module { data, depends } => (data, depends, false),
        Found::BuiltIn => (Vec::new(), Vec::new(), true),
        Found::Missing if path.is_empty() => return Err(Unknown(name.to_string()).into()),
        Found::Missing => bail!(
            "`{}` depends on `{name}`, which is neither in the kernel package nor built in",
            path[path.len() - 1]
        ),
    };
    path.push(name.to_string());
    for dependency in &depends {
        visit(dependency, false, path, done, ordered, lookup)?;
    }
    path.pop();
    done.insert(name.to_string());
    ordered.push(Module {
        entry: ModuleEntry {
            name: name.to_string(),
            built_in,
            requested,
            depends,
        },
        data,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(table: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Result<Found> + 'a {
        move |name| {
            Ok(match table.iter().find(|(n, _)| *n == name) {
                Some((_, "builtin")) => Found::BuiltIn,
                Some((_, deps)) => Found::Module {
                    data: name.as_bytes().to_vec(),
                    depends: deps.split(',').filter(|d| !d.is_empty()).map(str::to_string).collect(),
                },
                None => Found::Missing,
            })
        }
    }

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.entry.name.as_str()).collect()
    }

    const X86: &[(&str, &str)] = &[
        ("virtio_ring", ""),
        ("virtio", ""),
        ("virtio_pci_legacy_dev", ""),
        ("virtio_pci_modern_dev", ""),
        (
            "virtio_pci",
            "virtio_pci_legacy_dev,virtio_pci_modern_dev,virtio,virtio_ring",
        ),
        ("failover", ""),
        ("net_failover", "failover"),
        ("virtio_net", "net_failover,virtio,virtio_ring"),
        ("evdev", ""),
        ("button", "builtin"),
    ];

    fn requested(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn dependencies_come_first_each_once() {
        let modules = resolve(
            Path::new("x.yaml"),
            &requested(&["virtio_pci", "virtio-net", "evdev", "button"]),
            lookup(X86),
        )
        .unwrap();
        assert_eq!(
            names(&modules),
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "evdev",
                "button"
            ]
        );
        let button = modules.last().unwrap();
        assert!(button.entry.built_in && button.entry.requested && button.data.is_empty());
        assert!(!modules[0].entry.requested && modules[4].entry.requested);
    }

    #[test]
    fn a_dependency_asked_for_later_is_marked_requested() {
        let modules = resolve(
            Path::new("x.yaml"),
            &requested(&["net_failover", "failover"]),
            lookup(X86),
        )
        .unwrap();
        assert_eq!(names(&modules), ["failover", "net_failover"]);
        assert!(modules.iter().all(|m| m.entry.requested));
    }

    #[test]
    fn an_unknown_requested_module_names_the_field() {
        let err = resolve(
            Path::new("qemu-images/x.yaml"),
            &requested(&["evdev", "virtio_nett"]),
            lookup(X86),
        )
        .unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
        let message = err.to_string();
        assert!(
            message.contains("qemu-images/x.yaml") && message.contains("modules[1]"),
            "{message}"
        );
        assert!(message.contains("virtio_nett"), "{message}");
    }

    #[test]
    fn a_missing_dependency_names_who_needs_it() {
        let table = [("virtio_net", "net_failover"), ("net_failover", "failover")];
        let err = resolve(Path::new("x.yaml"), &requested(&["virtio_net"]), lookup(&table)).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_none());
        let message = err.to_string();
        assert!(message.contains("`net_failover` depends on `failover`"), "{message}");
    }

    #[test]
    fn a_cycle_is_reported_with_its_path() {
        let table = [("a", "b"), ("b", "c"), ("c", "a")];
        let err = resolve(Path::new("x.yaml"), &requested(&["a"]), lookup(&table)).unwrap_err();
        assert!(err.to_string().contains("a → b → c → a"), "{err}");
    }

    #[test]
    fn depends_is_read_from_the_modinfo_strings() {
        let modinfo = b"license=GPL\0depends=net_failover,virtio-ring\0retpoline=Y\0name=virtio_net\0";
        assert_eq!(modinfo_value(modinfo, "depends"), Some("net_failover,virtio-ring"));
        assert_eq!(modinfo_value(modinfo, "name"), Some("virtio_net"));
        assert_eq!(modinfo_value(modinfo, "nam"), None);
        assert_eq!(modinfo_value(b"depends=\0", "depends"), Some(""));
        assert!(depends(b"not an ELF module").is_err());
    }

    #[test]
    fn module_file_names_are_normalised() {
        assert_eq!(
            module_name(Path::new("kernel/drivers/char/hw_random/virtio-rng.ko.xz")).as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name(Path::new("a/evdev.ko")).as_deref(), Some("evdev"));
        assert_eq!(module_name(Path::new("modules.order")), None);
    }
}
