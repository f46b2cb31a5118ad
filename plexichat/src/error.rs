//! The one error type every route returns, rendered as API.md's error body.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Invalid;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error(transparent)]
    ValidationFailed(#[from] Invalid),
    #[error("too many requests; retry after {} s", retry_after_secs(*.0))]
    RateLimited(Duration),
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected environment failure: logged in full, reported vaguely.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ValidationFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        code_for_status(self.status())
    }
}

/// API.md's code for each status; also used to give framework-made errors our body.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ if status.is_client_error() => "invalid_request",
        _ => "internal",
    }
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// `{"error": {"code": …, "message": …}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(status: StatusCode, message: String) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code_for_status(status).to_string(),
                message,
            },
        }
    }
}

pub fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorBody::new(status, message))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = ?err, "request failed");
        }
        let mut response = error_response(self.status(), self.to_string());
        if let ApiError::RateLimited(wait) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(source) => {
                tracing::error!(error = %source, "database unavailable");
                ApiError::Unavailable("database unavailable".into())
            }
            StoreError::Conflict => ApiError::Conflict("already exists"),
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Other(source) => ApiError::Internal(source.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn statuses_made_below_the_handlers_have_their_documented_codes() {
        assert_eq!(code_for_status(StatusCode::METHOD_NOT_ALLOWED), "method_not_allowed");
        assert_eq!(code_for_status(StatusCode::URI_TOO_LONG), "uri_too_long");
        assert_eq!(
            code_for_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            "headers_too_large"
        );
    }

    #[test]
    fn every_variant_maps_to_a_documented_code() {
        let cases = [
            (ApiError::InvalidRequest("x".into()), "invalid_request"),
            (ApiError::Unauthorized("x"), "unauthorized"),
            (ApiError::Forbidden("x"), "forbidden"),
            (ApiError::NotFound("x"), "not_found"),
            (ApiError::Conflict("x"), "conflict"),
            (ApiError::PayloadTooLarge, "payload_too_large"),
            (ApiError::ValidationFailed(Invalid("x".into())), "validation_failed"),
            (ApiError::RateLimited(Duration::from_secs(1)), "rate_limited"),
            (ApiError::Unavailable("x".into()), "unavailable"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }
}
