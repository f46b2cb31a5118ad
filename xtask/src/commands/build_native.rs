//! `cargo xtask build-native`: the cross-compile matrix of a profile. Static binaries at
//! `target/dist/<triple>/plexichat`, a manifest beside them, a content-addressed cache
//! key per artefact so that unchanged inputs are neither rebuilt nor re-linked, and a
//! smoke run of every binary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::cargo::artefact::{self, Artefact, Manifest};
use crate::cargo::smoke::{Policy, Smoke};
use crate::provision::{self, Requirement};
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
    let mut failures = provision::install_per_target(&targets, Requirement::to_build, &progress);
    let toolchain = crate::cargo::rustc_version(&workspace.root)?;
    let revision = workspace.git_revision();
    let mut manifest = Manifest::load(&workspace);
    let mut built = Vec::new();

    // Builds run one after another (they share cargo's build lock and two cores); each
    // smoke run overlaps the next build.
    let buildable: Vec<&Target> = targets
        .iter()
        .copied()
        .filter(|t| !failures.contains_key(t.triple))
        .collect();
    // What each binary must say it is: the revision is compiled in.
    let build_version = workspace.build_version();
    std::thread::scope(|scope| {
        let mut smokes = Vec::new();
        for target in buildable {
            let task = progress.task(target.arch);
            let outcome = artefact::produce(&workspace, &profile, target, &toolchain, &manifest, &task);
            match outcome {
                Ok(mut artefact) => {
                    artefact.git_revision = revision.clone();
                    let (profile, version, manifest) = (&profile, &build_version, &manifest);
                    smokes.push(scope.spawn(move || {
                        artefact.smoke =
                            artefact::smoke(&artefact, target, profile, version, manifest, args.smoke, &task);
                        let verdict = if artefact.smoke.ok { "ok" } else { "smoke FAILED" };
                        task.finish(format!(
                            "{verdict} ({}{})",
                            if artefact.cache_hit { "cached" } else { "built" },
                            if artefact.smoke.cached { ", smoke cached" } else { "" }
                        ));
                        artefact
                    }));
                }
                Err(err) => {
                    task.finish(format!("FAILED: {}", first_line(&format!("{err:#}"))));
                    failures.insert(target.triple.to_string(), format!("{err:#}"));
                }
            }
        }
        for smoke in smokes {
            match smoke.join() {
                Ok(artefact) => built.push(artefact),
                Err(_) => {
                    failures.insert("smoke".into(), "a smoke run panicked".into());
                }
            }
        }
    });

    for artefact in &built {
        if artefact.smoke.ok {
            manifest.upsert(artefact.clone());
        } else {
            failures.insert(artefact.target.clone(), smoke_failure(&artefact.smoke));
        }
    }
    manifest.save(&workspace)?;

    Ok(BuildReport {
        ok: failures.is_empty(),
        profile: profile.name,
        manifest: Manifest::path(&workspace),
        artefacts: built,
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

fn smoke_failure(smoke: &Smoke) -> String {
    smoke
        .steps
        .iter()
        .filter(|step| !step.ok)
        .map(|step| format!("smoke {}: {}", step.name, step.detail))
        .collect::<Vec<_>>()
        .join("; ")
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

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}
