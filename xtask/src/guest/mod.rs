//! Guest images: their definitions (qemu-images/<arch>.yaml), the pinned Debian kernels
//! and their modules, and the initramfs (a newc cpio) with the static server as /init.

pub(crate) mod cpio;
pub(crate) mod definition;
pub(crate) mod image;
pub(crate) mod initramfs;
pub(crate) mod kernel;
pub(crate) mod kernels;
pub(crate) mod modules;

pub(crate) use definition::{load_definition, load_file, Accelerator, ImageDefinition, Powerdown};
pub(crate) use kernel::KernelFormat;
pub(crate) use modules::ModuleEntry;
