//! Errors that are the user's to fix (a bad flag, profile or setting): exit status 2.

/// Says what is wrong, where (file and field, or flag) and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn at(
        place: impl std::fmt::Display,
        field: &str,
        problem: impl std::fmt::Display,
        fix: impl std::fmt::Display,
    ) -> Self {
        Self(format!("{place}: field `{field}`: {problem}\n  fix: {fix}"))
    }

    /// A YAML file that does not fit its schema: the field's path, serde's words for
    /// the problem, and as the fix what serde expected there (else a missing field to
    /// add, else the example file to compare with).
    pub fn yaml(
        place: impl std::fmt::Display,
        err: serde_path_to_error::Error<serde_yaml::Error>,
        example: &str,
    ) -> Self {
        let field = err.path().to_string();
        let message = err.into_inner().to_string();
        // serde_yaml starts its messages with the path it knows (the field's, or that of
        // the mapping holding an unknown key), said once already.
        let problem = match message.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') && field.starts_with(path) => rest,
            _ => &message,
        };
        // …and ends them with the location, which belongs to the problem only.
        let without_location = problem.split(" at line ").next().unwrap_or(problem);
        let fix = if let Some((_, expected)) = without_location.split_once("expected ") {
            format!("use {expected}")
        } else if let Some((_, missing)) = without_location.split_once("missing field ") {
            format!("add {missing} (see {example} for a valid example)")
        } else {
            format!("see {example} for a valid example")
        };
        Self::at(place, &field, problem, fix)
    }
}
