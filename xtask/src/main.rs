//! `cargo xtask`: the command line of the PlexiChat toolchain (the library beside it).
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use services::teardown;
use xtask::commands::{
    bench_compare, build_native, ci, cluster_local, deploy, dist, docker_build, doctor, qemu_cluster, qemu_image,
};
use xtask::report::error::UsageError;
use xtask::report::{Outcome, Report};

/// The PlexiChat toolchain: provision the host, cross-compile, benchmark, containerise
/// and emulate PlexiChat.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    // Run through cargo's alias, so usage lines must say `cargo xtask`, not the binary.
    bin_name = "cargo xtask",
    version,
    about,
    after_help = "Example: cargo xtask doctor --fix"
)]
struct Cli {
    /// Print one JSON report on stdout (human output still goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What this host has and lacks to build, run and emulate PlexiChat.
    #[command(after_help = "Example: cargo xtask doctor --fix --json")]
    Doctor(doctor::Args),
    /// Static plexichat binaries for x86_64, aarch64 and riscv64 Linux, smoke-tested.
    #[command(after_help = "Example: cargo xtask build-native --target aarch64")]
    BuildNative(build_native::Args),
    /// Criterion benches of a baseline git ref against the working tree, with a verdict
    /// per bench; exit 1 on a regression.
    #[command(after_help = "Example: cargo xtask bench-compare --baseline main --mode instructions")]
    BenchCompare(bench_compare::Args),
    /// N server processes on loopback sharing PostgreSQL and NATS, verified as one server.
    #[command(after_help = "Example: cargo xtask cluster-local 3 --hold")]
    ClusterLocal(cluster_local::Args),
    /// Guest images (kernel + initramfs with the static server as /init) per architecture.
    #[command(after_help = "Example: cargo xtask qemu-image --arch x86_64 --json")]
    QemuImage(qemu_image::Args),
    /// N nodes in QEMU VMs sharing PostgreSQL and NATS, verified and failed over QMP.
    #[command(after_help = "Example: cargo xtask qemu-cluster 3 --arch mixed")]
    QemuCluster(qemu_cluster::Args),
    /// Images per architecture from the static binaries, through the Docker Engine API.
    #[command(
        after_help = "Example: cargo xtask docker-build --arch all --smoke --export target/plexichat-images.tar"
    )]
    DockerBuild(docker_build::Args),
    /// A release: per target an archive and a Debian package, install.sh, SHA256SUMS
    /// (signed with --sign) and evidence.json, from smoke-tested binaries.
    #[command(after_help = "Example: cargo xtask dist --target x86_64 --target aarch64 --sign release.key")]
    Dist(dist::Args),
    /// Deployment files from a profile: Compose and Kubernetes, with bundled or managed
    /// PostgreSQL and NATS.
    #[command(after_help = "Example: cargo xtask deploy render --nodes 3 --format all --out deploy/")]
    Deploy(deploy::Args),
    /// Runs a pipeline from workflows/ (default: ci): steps with their needs, timeouts,
    /// conditions and matrices, in CI log groups; exit 1 if a step failed.
    #[command(after_help = "Example: cargo xtask ci --only fmt --only clippy")]
    Ci(ci::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    teardown::install_signal_handler();
    let json = cli.json;
    match cli.command {
        Command::Doctor(args) => finish(doctor::run(args), json),
        Command::BuildNative(args) => finish(build_native::run(args), json),
        Command::BenchCompare(args) => finish(bench_compare::run(args), json),
        Command::ClusterLocal(args) => finish(cluster_local::run(args), json),
        Command::QemuImage(args) => finish(qemu_image::run(args), json),
        Command::QemuCluster(args) => finish(qemu_cluster::run(args), json),
        Command::DockerBuild(args) => finish(docker_build::run(args), json),
        Command::Ci(args) => finish(ci::run(args), json),
        Command::Dist(args) => finish(dist::run(args), json),
        Command::Deploy(args) => finish(deploy::run(args), json),
    }
}

/// Renders what the command did, or says why it could not; the exit status follows.
fn finish(result: anyhow::Result<impl Outcome>, json: bool) -> ExitCode {
    if teardown::interrupted() {
        // The signal handler is tearing down and exits with 130 when it is done.
        loop {
            std::thread::park();
        }
    }
    match result {
        Ok(outcome) => render(&outcome, json),
        Err(err) => {
            teardown::run_all();
            eprintln!("error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The table and summary on stderr, the document on stdout with --json.
fn render(outcome: &impl Outcome, json: bool) -> ExitCode {
    let report = Report::of(outcome);
    eprint!("{}", report.table);
    if let Some(summary) = &report.summary {
        eprintln!("{summary}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json).unwrap_or_default());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_cli_is_consistent_and_its_usage_says_cargo_xtask() {
        Cli::command().debug_assert();
        let usage = Cli::command().render_usage().to_string();
        assert!(usage.starts_with("Usage: cargo xtask "), "{usage}");
        let mut cli = Cli::command();
        cli.build();
        let doctor = cli
            .find_subcommand_mut("doctor")
            .expect("doctor")
            .render_usage()
            .to_string();
        assert!(doctor.contains("cargo xtask doctor"), "{doctor}");
    }
}
