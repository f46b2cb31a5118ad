//! The PlexiChat toolchain, in two layers. `commands/` holds one module per subcommand
//! (its clap `Args` and `run`); they never import each other. Below them, the core they
//! share, one folder per job, never importing a command:
//!
//! - `provision`: what a host needs, typed, each requirement with a probe and a fix;
//! - `cargo`: the cargo driver, build-native's artefacts and cache, ELF checks, smoke runs;
//! - `guest`: guest image definitions, kernels, modules, the initramfs;
//! - `qemu`: QMP, VMs and their fault checks;
//! - `docker`: the Docker Engine, build contexts, container smoke runs;
//! - `deploy`: deployments rendered from a profile (Compose, Kubernetes);
//! - `cluster`: the cluster description, its checks and the verifier;
//! - `bench`: baselines in worktrees, criterion and callgrind measurements, e2e load;
//! - `pipeline`: workflows as data and their runner;
//! - `release`: a release's files (archives, Debian packages, installer, checksums,
//!   signature, evidence), each the same bytes from the same binaries;
//! - `scenario`: fault scenarios as data, planned into schedules (seeded when random);
//! - `history`: what a scenario's clients saw, recorded, and the checker's verdict on it;
//! - `workspace`: the workspace, its targets and profiles;
//! - `report`: reports, progress, usage errors, verdicts kept for a release's evidence;
//! - `system`: facts about the host (programs, root, locks, KVM, hashes), reproducible
//!   tar and gzip, and a small loopback HTTP client.
//!
//! Beside them, the services crate (`services`, shared with the server's tests) holds
//! PostgreSQL, NATS, server processes, the teardown that stops them, and the one process
//! runner: short-lived commands through xshell, long-running children under a guard.
// A unit-test build sees the dev-dependencies too; the plain library build is checked.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub(crate) mod bench;
pub(crate) mod cargo;
pub(crate) mod cluster;
pub mod commands;
pub(crate) mod deploy;
pub(crate) mod docker;
pub(crate) mod guest;
pub(crate) mod history;
pub(crate) mod pipeline;
pub mod provision;
pub mod qemu;
pub(crate) mod release;
pub mod report;
pub(crate) mod scenario;
pub mod system;
pub mod workspace;

#[cfg(test)]
mod layers;
