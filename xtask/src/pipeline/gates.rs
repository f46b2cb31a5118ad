//! Whether an entry may run on this host: its condition (`if`), then its prerequisites
//! (`requires`), each checked cheaply and for real: a program on PATH, the Docker Engine
//! answering, a git ref resolving.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use super::plan::Entry;
use super::workflow::Condition;
use crate::system::which;
use crate::workspace::git;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Run,
    /// Not run, and not a failure: the condition does not hold, or a prerequisite is
    /// missing where nothing requires it.
    Skip(String),
    /// Not run, and a failure: a prerequisite is missing where CI or the step requires it.
    Fail(String),
}

pub(crate) struct Host {
    root: PathBuf,
    /// Whether `CI` is set: then a missing prerequisite is a failure, never a quiet skip.
    pub ci: bool,
    /// Asked once per run: several entries may need the engine, and a hung socket costs
    /// seconds each time.
    docker: OnceCell<Result<String, String>>,
}

impl Host {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            ci: std::env::var_os("CI").is_some(),
            docker: OnceCell::new(),
        }
    }

    pub(crate) fn gate(&self, entry: &Entry) -> Gate {
        if let Some(unmet) = entry
            .step
            .condition
            .as_ref()
            .and_then(|condition| self.unmet(condition))
        {
            return Gate::Skip(format!("condition: {unmet}"));
        }
        let missing = self.missing(entry);
        if missing.is_empty() {
            return Gate::Run;
        }
        let missing = format!("missing {}", missing.join("; "));
        if entry.step.required {
            Gate::Fail(format!("{missing} (the step is required)"))
        } else if self.ci {
            Gate::Fail(format!("{missing} (required because CI is set)"))
        } else {
            Gate::Skip(missing)
        }
    }

    /// Why the condition does not hold, if it does not.
    fn unmet(&self, condition: &Condition) -> Option<String> {
        if let Some(name) = &condition.env {
            if std::env::var_os(name).is_none_or(|value| value.is_empty()) {
                return Some(format!("{name} is not set"));
            }
        }
        if let Some(reference) = &condition.git_ref {
            if !self.git_ref_exists(reference) {
                return Some(format!("git ref `{reference}` does not exist here"));
            }
        }
        None
    }

    fn missing(&self, entry: &Entry) -> Vec<String> {
        let mut missing: Vec<String> = entry
            .programs
            .iter()
            .filter(|program| which(program).is_none())
            .map(|program| format!("{program} (not on PATH)"))
            .collect();
        if entry.step.requires.docker {
            let engine = self
                .docker
                .get_or_init(|| crate::provision::docker_engine_version().map_err(|err| format!("{err:#}")));
            if let Err(err) = engine {
                missing.push(format!("the Docker Engine ({err})"));
            }
        }
        missing
    }

    fn git_ref_exists(&self, reference: &str) -> bool {
        git(
            &self.root,
            &["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")],
        )
        .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::plan;
    use crate::pipeline::workflow::Workflow;

    fn gates(text: &str, ci: bool) -> Vec<Gate> {
        let workflow = Workflow::from_text(text).unwrap();
        let entries = plan::plan(&workflow).unwrap();
        let host = Host {
            ci,
            ..Host::new(Path::new(env!("CARGO_MANIFEST_DIR")))
        };
        entries.iter().map(|entry| host.gate(entry)).collect()
    }

    #[test]
    fn a_missing_program_skips_unless_ci_or_the_step_requires_it() {
        let text = "steps:\n  a:\n    run: 'true'\n    requires:\n      programs: [sh, no-such-program-xtask-ci]\n  b:\n    run: 'true'\n    required: true\n    requires:\n      programs: [no-such-program-xtask-ci]\n  c:\n    run: 'true'\n    requires:\n      programs: [sh]\n";
        let missing = "missing no-such-program-xtask-ci (not on PATH)";
        assert_eq!(
            gates(text, false),
            [
                Gate::Skip(missing.into()),
                Gate::Fail(format!("{missing} (the step is required)")),
                Gate::Run
            ]
        );
        assert_eq!(
            gates(text, true)[0],
            Gate::Fail(format!("{missing} (required because CI is set)"))
        );
    }

    #[test]
    fn an_unmet_condition_skips_even_in_ci() {
        // PATH is set wherever these tests run; the variable below is set nowhere.
        let text = "steps:\n  a:\n    run: 'true'\n    if: {env: PATH}\n  b:\n    run: 'true'\n    if: {env: XTASK_CI_TEST_UNSET_VARIABLE}\n  c:\n    run: 'true'\n    if: {git_ref: HEAD}\n  d:\n    run: 'true'\n    if: {git_ref: no-such-ref-xtask-ci}\n";
        assert_eq!(
            gates(text, true),
            [
                Gate::Run,
                Gate::Skip("condition: XTASK_CI_TEST_UNSET_VARIABLE is not set".into()),
                Gate::Run,
                Gate::Skip("condition: git ref `no-such-ref-xtask-ci` does not exist here".into()),
            ]
        );
    }
}
