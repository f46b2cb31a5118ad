//! A workflow file (`workflows/NAME.yaml`): its schema, read with the path of every
//! field so that a mistake names the file, the step and the field, and the checks that
//! serde cannot make (step names, unknown `needs`, empty matrices and conditions).

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::report::error::UsageError;

/// What a step may take when its file does not say.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const EXAMPLE: &str = "workflows/ci.yaml";

#[derive(Debug)]
pub(crate) struct Workflow {
    /// The file's stem: `ci` for workflows/ci.yaml.
    pub name: String,
    /// The path as people see it in messages: relative to the workspace when inside it.
    pub place: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    #[allow(dead_code)] // documentation for people; read so that it is allowed
    description: Option<String>,
    steps: Ordered<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    /// The key of the step in `steps`.
    #[serde(skip)]
    pub id: String,
    /// What passing proves, for people reading the file or the dry run.
    pub description: Option<String>,
    /// A shell script, run with `sh -ec` in the workspace root.
    pub run: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default = "default_timeout", deserialize_with = "timeout")]
    pub timeout: Duration,
    /// Axes whose every combination is an entry of its own, e.g. `arch: [x86_64, aarch64]`.
    pub matrix: Option<Ordered<Vec<String>>>,
    #[serde(rename = "if")]
    pub condition: Option<Condition>,
    #[serde(default)]
    pub requires: Requires,
    /// A missing prerequisite fails the step even when `CI` is not set.
    #[serde(default)]
    pub required: bool,
}

/// When a step is meant to run at all; a step whose condition does not hold is skipped,
/// which is never a failure. Every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Condition {
    /// The environment variable is set and not empty.
    pub env: Option<String>,
    /// The git ref (branch, tag or commit) exists in the repository.
    pub git_ref: Option<String>,
}

/// What a step cannot run without. Missing, the step is skipped, or fails when `CI` is
/// set or the step is `required`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Requires {
    /// Programs on PATH; `${{ matrix.NAME }}` is replaced as in `run`.
    #[serde(default)]
    pub programs: Vec<String>,
    /// The Docker Engine answers on its socket (DOCKER_HOST or /var/run/docker.sock).
    #[serde(default)]
    pub docker: bool,
}

impl Step {
    /// The matrix axes, in file order; empty without a matrix.
    pub(crate) fn axes(&self) -> &[(String, Vec<String>)] {
        self.matrix.as_ref().map_or(&[], |matrix| &matrix.0)
    }
}

impl Workflow {
    /// The workflow `--workflow NAME` names: workflows/NAME.yaml, or a path (it contains a
    /// `/` or ends in `.yaml` or `.yml`).
    pub(crate) fn load(root: &Path, name: &str) -> Result<Self, UsageError> {
        let (path, place, text) = crate::workspace::read_named_yaml(root, &workflows_dir(root), "workflow", name)?;
        Self::parse(&path, place, &text)
    }

    fn parse(path: &Path, place: String, text: &str) -> Result<Self, UsageError> {
        let document = serde_yaml::Deserializer::from_str(text);
        let file: WorkflowFile =
            serde_path_to_error::deserialize(document).map_err(|err| UsageError::yaml(&place, err, EXAMPLE))?;
        let steps = file.steps.0.into_iter().map(|(id, step)| Step { id, ..step }).collect();
        let workflow = Self {
            name: path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("workflow")
                .to_string(),
            place,
            steps,
        };
        workflow.validate()?;
        Ok(workflow)
    }

    /// A workflow read from `text` as if it were workflows/test.yaml.
    #[cfg(test)]
    pub(crate) fn from_text(text: &str) -> Result<Self, UsageError> {
        Self::parse(Path::new("workflows/test.yaml"), "workflows/test.yaml".into(), text)
    }

    pub(crate) fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.id == id)
    }

    pub(crate) fn step_ids(&self) -> String {
        let ids: Vec<&str> = self.steps.iter().map(|step| step.id.as_str()).collect();
        ids.join(", ")
    }

    /// A mistake in this file: `field` is the path from the top, e.g. `steps.tests.needs[0]`.
    pub(crate) fn error(&self, field: &str, problem: impl fmt::Display, fix: impl fmt::Display) -> UsageError {
        UsageError::at(&self.place, field, problem, fix)
    }

    /// What serde cannot check; cycles in `needs` are found while planning.
    fn validate(&self) -> Result<(), UsageError> {
        if self.steps.is_empty() {
            return Err(self.error(
                "steps",
                "no steps",
                "add one, e.g. `fmt: {run: cargo fmt --all --check}`",
            ));
        }
        for step in &self.steps {
            self.validate_step(step)?;
        }
        Ok(())
    }

    fn validate_step(&self, step: &Step) -> Result<(), UsageError> {
        let at = |field: &str| format!("steps.{}{field}", step.id);
        if !is_name(&step.id, &['-', '_']) {
            return Err(self.error(
                &at(""),
                format!("`{}` is not a step name", step.id),
                "name steps with letters, digits, `-` and `_` (matrix entries add their values in parentheses)",
            ));
        }
        if step.run.trim().is_empty() {
            return Err(self.error(
                &at(".run"),
                "an empty script",
                "give the command to run, e.g. `run: cargo test`",
            ));
        }
        for (index, need) in step.needs.iter().enumerate() {
            if self.step(need).is_none() {
                return Err(self.error(
                    &at(&format!(".needs[{index}]")),
                    format!("unknown step `{need}`"),
                    format!("use one of the steps of this file: {}", self.step_ids()),
                ));
            }
        }
        if let Some(matrix) = &step.matrix {
            if matrix.0.is_empty() {
                return Err(self.error(
                    &at(".matrix"),
                    "an empty matrix",
                    "give at least one axis, e.g. `matrix: {arch: [x86_64, aarch64]}`, or remove `matrix`",
                ));
            }
        }
        for (axis, values) in step.axes() {
            let field = at(&format!(".matrix.{axis}"));
            if !is_name(axis, &['_']) {
                return Err(self.error(
                    &field,
                    format!("`{axis}` is not an axis name"),
                    "name axes with letters, digits and `_`, e.g. `arch`",
                ));
            }
            if values.is_empty() {
                return Err(self.error(&field, "no values", "list at least one, e.g. [x86_64]"));
            }
            for (index, value) in values.iter().enumerate() {
                if value.is_empty() || value.contains([',', '(', ')']) {
                    return Err(self.error(
                        &format!("{field}[{index}]"),
                        format!("`{value}` cannot name a matrix entry"),
                        "use a non-empty value without `,`, `(` or `)`",
                    ));
                }
                if values[..index].contains(value) {
                    return Err(self.error(
                        &format!("{field}[{index}]"),
                        format!("`{value}` is listed twice"),
                        "list each value once",
                    ));
                }
            }
        }
        if let Some(condition) = &step.condition {
            if condition.env.is_none() && condition.git_ref.is_none() {
                return Err(self.error(
                    &at(".if"),
                    "an empty condition",
                    "give `env: NAME` (set and not empty) or `git_ref: REF` (exists), or remove `if`",
                ));
            }
        }
        for (index, program) in step.requires.programs.iter().enumerate() {
            if program.trim().is_empty() || program.contains('/') {
                return Err(self.error(
                    &at(&format!(".requires.programs[{index}]")),
                    format!("`{program}` is not a program name"),
                    "name a program found on PATH, e.g. valgrind",
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn workflows_dir(root: &Path) -> PathBuf {
    root.join("workflows")
}

fn is_name(text: &str, punctuation: &[char]) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || punctuation.contains(&c))
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// A YAML mapping in file order, refusing a key given twice: serde's own maps sort or
/// hash their keys, and the order of steps and axes is the order runs and ids follow.
#[derive(Debug, Default)]
pub(crate) struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for InOrder<V> {
            type Value = Ordered<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(seen, _)| *seen == key) {
                        return Err(de::Error::custom(format!(
                            "`{key}` is given twice, expected each key once"
                        )));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }

        deserializer.deserialize_map(InOrder(PhantomData))
    }
}

const DURATION_EXPECTED: &str = "a duration above zero such as 90s, 10m or 1h30m";

/// A step's timeout: humantime's notation, as the profiles' durations.
fn timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Timeout;

    impl Visitor<'_> for Timeout {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(DURATION_EXPECTED)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            match humantime::parse_duration(text) {
                Ok(duration) if !duration.is_zero() => Ok(duration),
                _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
            }
        }
    }

    deserializer.deserialize_str(Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workflow, UsageError> {
        Workflow::from_text(text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn steps_keep_file_order_and_defaults() {
        let workflow = parse(
            "steps:\n  zeta:\n    run: 'true'\n  alpha:\n    run: echo\n    needs: [zeta]\n    timeout: 90s\n    matrix:\n      os: [a]\n      arch: [x, y]\n",
        )
        .unwrap();
        let ids: Vec<&str> = workflow.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["zeta", "alpha"]);
        assert_eq!(workflow.steps[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(workflow.steps[1].timeout, Duration::from_secs(90));
        let axes: Vec<&str> = workflow.steps[1].axes().iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(axes, ["os", "arch"]);
        assert_eq!(workflow.name, "test");
    }

    #[test]
    fn an_unknown_field_names_the_step_and_the_allowed_fields() {
        let err = error("steps:\n  fmt:\n    run: 'true'\n    timout: 5m\n");
        assert!(
            err.starts_with("workflows/test.yaml: field `steps.fmt.timout`"),
            "{err}"
        );
        assert!(err.contains("fix: use one of") && err.contains("`timeout`"), "{err}");
        let fix = err.lines().last().unwrap();
        assert!(!fix.contains("at line"), "the location belongs to the problem: {err}");
    }

    #[test]
    fn a_bad_timeout_says_what_a_duration_looks_like() {
        for timeout in ["five minutes", "0s", "30", "[5m]"] {
            let err = error(&format!("steps:\n  fmt:\n    run: 'true'\n    timeout: {timeout}\n"));
            assert!(err.contains("field `steps.fmt.timeout`"), "{err}");
            assert!(err.contains("fix: use a duration above zero such as 90s"), "{err}");
        }
    }

    #[test]
    fn a_wrong_type_names_the_expected_one() {
        let err = error("steps:\n  tests:\n    run: 'true'\n    needs: fmt\n");
        assert!(err.contains("field `steps.tests.needs`"), "{err}");
        assert!(err.contains("fix: use a sequence"), "{err}");
    }

    #[test]
    fn a_missing_run_says_to_add_it() {
        let err = error("steps:\n  fmt:\n    timeout: 5m\n");
        assert!(
            err.contains("field `steps.fmt`") && err.contains("missing field `run`"),
            "{err}"
        );
        assert!(err.contains("fix: add `run`"), "{err}");
    }

    #[test]
    fn a_step_defined_twice_is_refused() {
        let err = error("steps:\n  fmt:\n    run: 'true'\n  fmt:\n    run: 'false'\n");
        assert!(err.contains("`fmt` is given twice"), "{err}");
    }

    #[test]
    fn an_unknown_need_lists_the_steps() {
        let err = error("steps:\n  fmt:\n    run: 'true'\n  tests:\n    run: 'true'\n    needs: [fmt, lint]\n");
        assert!(
            err.contains("field `steps.tests.needs[1]`: unknown step `lint`"),
            "{err}"
        );
        assert!(
            err.contains("fix: use one of the steps of this file: fmt, tests"),
            "{err}"
        );
    }

    #[test]
    fn empty_matrices_axes_and_conditions_are_refused() {
        let err = error("steps:\n  build:\n    run: 'true'\n    matrix: {}\n");
        assert!(err.contains("field `steps.build.matrix`: an empty matrix"), "{err}");
        let err = error("steps:\n  build:\n    run: 'true'\n    matrix:\n      arch: []\n");
        assert!(err.contains("field `steps.build.matrix.arch`: no values"), "{err}");
        let err = error("steps:\n  build:\n    run: 'true'\n    matrix:\n      arch: [x, x]\n");
        assert!(err.contains("field `steps.build.matrix.arch[1]`"), "{err}");
        let err = error("steps:\n  bench:\n    run: 'true'\n    if: {}\n");
        assert!(err.contains("field `steps.bench.if`: an empty condition"), "{err}");
        let err = error("steps:\n  bench:\n    run: 'true'\n    if: {branch: main}\n");
        assert!(
            err.contains("field `steps.bench.if.branch`") && err.contains("`git_ref`"),
            "{err}"
        );
    }

    #[test]
    fn step_names_must_not_look_like_matrix_entries() {
        let err = error("steps:\n  'build (x86_64)':\n    run: 'true'\n");
        assert!(err.contains("is not a step name"), "{err}");
    }

    #[test]
    fn a_workflow_without_steps_is_refused() {
        assert!(error("steps: {}\n").contains("field `steps`: no steps"));
        assert!(error("description: nothing\n").contains("missing field `steps`"));
    }
}
