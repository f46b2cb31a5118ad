//! The subcommands of `cargo xtask`, one module each: its clap `Args` and its `run`.
//! Commands sit over the core modules beside this folder and never import each other.

pub mod bench_compare;
pub mod build_native;
pub mod ci;
pub mod cluster_local;
pub mod deploy;
pub mod dist;
pub mod docker_build;
pub mod doctor;
pub mod qemu_cluster;
pub mod qemu_image;
