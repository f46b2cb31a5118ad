//! A profile's targets built and smoke-tested, as build-native does it and as a release
//! needs it: each target's artefact from the cache or built, its smoke run overlapping
//! the next build, the passing ones recorded in the manifest, and every failure kept by
//! target so that one broken target fails only itself.

use std::collections::BTreeMap;

use anyhow::Result;

use super::artefact::{self, Artefact, Manifest};
use super::smoke::{Policy, Smoke};
use crate::provision::{self, Requirement};
use crate::report::progress::Progress;
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// What a build of the matrix left: the artefacts built (smoke passed or not) and, by
/// target triple, why a target has none that passed.
pub(crate) struct Built {
    pub artefacts: Vec<Artefact>,
    pub failures: BTreeMap<String, String>,
}

impl Built {
    /// The artefacts whose smoke run passed: what may be shipped.
    pub(crate) fn passed(&self) -> impl Iterator<Item = &Artefact> {
        self.artefacts.iter().filter(|artefact| artefact.smoke.ok)
    }
}

/// Provisions, builds and smoke-tests `targets` with `profile`; the manifest records each
/// artefact that passed its smoke run.
pub(crate) fn build(
    workspace: &Workspace,
    profile: &Profile,
    targets: &[&'static Target],
    smoke: Policy,
    progress: &Progress,
) -> Result<Built> {
    let mut failures = provision::install_per_target(targets, Requirement::to_build, progress);
    let toolchain = super::rustc_version(&workspace.root)?;
    let revision = workspace.git_revision();
    let mut manifest = Manifest::load(workspace);
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
            let outcome = artefact::produce(workspace, profile, target, &toolchain, &manifest, &task);
            match outcome {
                Ok(mut artefact) => {
                    artefact.git_revision = revision.clone();
                    let (version, manifest) = (&build_version, &manifest);
                    smokes.push(scope.spawn(move || {
                        artefact.smoke = artefact::smoke(&artefact, target, profile, version, manifest, smoke, &task);
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
    manifest.save(workspace)?;
    Ok(Built {
        artefacts: built,
        failures,
    })
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

/// The first line of an error chain, for a table cell.
pub(crate) fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}
