//! `cargo xtask`: the PlexiChat toolchain. Subcommands arrive with the issues that
//! define them; this is the command line they hang from.

use clap::Parser;

/// The PlexiChat toolchain: cross-compile, benchmark, containerise and emulate PlexiChat.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, after_help = "Example: cargo xtask --help")]
struct Cli {}

fn main() {
    Cli::parse();
}
