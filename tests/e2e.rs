//! The end-to-end tests, one module per area: the `plexichat` binary and `cargo xtask`
//! driven from outside, as a user would, against real QEMU, Docker, PostgreSQL and NATS.
//! Run one area with e.g. `cargo test -p plexichat-e2e --test e2e qemu_cluster::`.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

mod bench_compare;
mod ci;
mod cluster_local;
mod deploy;
mod dist;
mod docker_build;
mod qemu_cluster;
mod qemu_image;
mod qmp;
mod scenarios;
mod schemathesis;
mod server_cli;
mod toolchain;
mod upgrades;
