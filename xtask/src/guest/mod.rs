//! Guest images: their definitions (qemu-images/<arch>.yaml), the pinned Debian kernels
//! and their modules, and the initramfs (a newc cpio) with the static server as /init.

pub mod cpio;
pub mod definition;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod kernels;
pub mod modules;

pub use definition::{load_definition, load_file, Accelerator, ImageDefinition, KernelSection, Powerdown, QemuSection};
pub use kernel::KernelFormat;
pub use modules::ModuleEntry;
