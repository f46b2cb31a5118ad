//! `cargo xtask`'s command line, run as its users run it.
//!
//! Beside what it checks, this test makes `cargo test --workspace` build the `xtask`
//! executable with the test build's own feature resolution: the e2e tests run that very
//! binary, and a separate `cargo build -p xtask` would compile it and half its
//! dependencies a second time.
#![allow(unused_crate_dependencies)]

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("xtask runs")
}

#[test]
fn help_has_an_example_for_every_subcommand() {
    let output = xtask(&["--help"]);
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(subcommands.contains(&"qemu-cluster"), "{help}");
    for subcommand in subcommands {
        let output = xtask(&[subcommand, "--help"]);
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains(&format!("Example: cargo xtask {subcommand}")), "{help}");
        assert!(help.contains("--json"), "{help}");
    }
}
