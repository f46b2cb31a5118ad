//! `cargo xtask build-native`: the cross-compile matrix of a profile. Static binaries at
//! `target/dist/<triple>/plexichat`, a manifest beside them, a content-addressed cache
//! key per artefact so that unchanged inputs are neither rebuilt nor re-linked, and a
//! smoke run of every binary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::cargo::artefact::{Artefact, Manifest};
use crate::cargo::matrix::{self, first_line, Built};
use crate::cargo::smoke::{Policy, Smoke};
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::targets::{self, Target};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Profile: NAME for profiles/NAME.yaml, or a path to a profile file.
    #[arg(long, default_value = "release")]
    profile: String,
    /// x86_64, aarch64, riscv64, all, or a target triple; repeatable.
    /// Default: the profile's build.targets.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// auto: reuse a passing smoke result recorded for the same binary and the same
    /// inputs; always: run the smoke afresh.
    #[arg(long, value_enum, default_value_t = Policy::Auto)]
    smoke: Policy,
}

#[derive(Serialize)]
pub struct BuildReport {
    ok: bool,
    profile: String,
    manifest: PathBuf,
    artefacts: Vec<Artefact>,
    failures: BTreeMap<String, String>,
    /// Every target asked for, in matrix order: a row each, built or not.
    #[serde(skip)]
    targets: Vec<&'static Target>,
}

pub fn run(args: Args) -> Result<BuildReport> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let targets = if args.targets.is_empty() {
        profile.targets.clone()
    } else {
        targets::from_flags(&args.targets)?
    };
    let progress = Progress::new();
    let Built { artefacts, failures } = matrix::build(&workspace, &profile, &targets, args.smoke, &progress)?;
    Ok(BuildReport {
        ok: failures.is_empty(),
        profile: profile.name,
        manifest: Manifest::path(&workspace),
        artefacts,
        failures,
        targets,
    })
}

impl Outcome for BuildReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["target", "result", "cache", "build s", "size", "static", "smoke"]);
        for target in &self.targets {
            if let Some(artefact) = self.artefacts.iter().find(|a| a.target == target.triple) {
                table.row(vec![
                    target.triple.into(),
                    if artefact.smoke.ok { "ok" } else { "FAILED" }.into(),
                    if artefact.cache_hit { "hit" } else { "miss" }.into(),
                    format!("{:.1}", artefact.seconds),
                    format!("{:.2} MB", artefact.bytes as f64 / 1e6),
                    if artefact.is_static { "yes" } else { "NO" }.into(),
                    smoke_column(&artefact.smoke),
                ]);
            } else {
                let error = self
                    .failures
                    .get(target.triple)
                    .map(|e| first_line(e))
                    .unwrap_or_default();
                table.row(vec![
                    target.triple.into(),
                    "FAILED".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    error,
                ]);
            }
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let mut summary = format!("artefacts and manifest: {}", self.manifest.display());
        for (target, error) in &self.failures {
            summary.push_str(&format!("\n{target}: {error}"));
        }
        Some(summary)
    }
}

/// Each step's verdict, after "cached" when the result was reused rather than run.
fn smoke_column(smoke: &Smoke) -> String {
    let steps = smoke
        .steps
        .iter()
        .map(|s| format!("{}:{}", s.name, if s.ok { "ok" } else { "FAIL" }))
        .collect::<Vec<_>>()
        .join(" ");
    if smoke.cached {
        format!("cached {steps}")
    } else {
        steps
    }
}
