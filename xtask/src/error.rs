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
}
