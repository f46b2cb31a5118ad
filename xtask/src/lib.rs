//! The PlexiChat toolchain. One module per subcommand, each with a
//! `run(args) -> Result<Report>`; the pieces they share live once beside them, and the
//! services module is also used by the tests of the server and of the toolchain.

pub mod bench_compare;
pub mod build_native;
pub mod ci;
pub mod cluster;
pub mod cluster_local;
pub mod cpio;
pub mod docker_build;
pub mod doctor;
pub mod elf;
pub mod error;
pub mod http;
pub mod kernels;
pub mod kvm;
pub mod node;
pub mod profile;
pub mod progress;
pub mod qemu_cluster;
pub mod qemu_image;
pub mod qmp;
pub mod report;
pub mod services;
pub mod smoke;
pub mod system;
pub mod targets;
pub mod teardown;
pub mod workspace;
