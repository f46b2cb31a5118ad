//! Liveness, readiness, metrics and the API's own description.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::OpenApiJson;
use crate::app::App;
use crate::error::ApiError;

/// How long /ready waits for the database before calling it unreachable.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    status: &'static str,
    node_id: String,
    version: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, body = Health),
    (status = 503, description = "The request timed out", body = crate::error::ErrorBody),
))]
pub(super) async fn health(State(app): State<Arc<App>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node_id: app.node_id.clone(),
        version: crate::version(),
    })
}

#[derive(Serialize, ToSchema)]
pub(super) struct Ready {
    status: &'static str,
}

/// Readiness: the database answers, takes writes, and the node is not draining.
#[utoipa::path(get, path = "/ready", tag = "system", responses(
    (status = 200, body = Ready),
    (status = 500, description = "The database failed unexpectedly", body = crate::error::ErrorBody),
    (status = 503, description = "Database unreachable or refusing writes, or node draining", body = crate::error::ErrorBody),
))]
pub(super) async fn ready(State(app): State<Arc<App>>) -> Result<Json<Ready>, ApiError> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("node is draining".into()));
    }
    if let Some(failure) = app.store.write_failure() {
        return Err(ApiError::Unavailable(format!(
            "the database refuses writes since {} ({}: {})",
            failure.since.to_rfc3339(),
            failure.operation,
            failure.cause
        )));
    }
    match tokio::time::timeout(READY_PROBE_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(Json(Ready { status: "ready" })),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(ApiError::Unavailable("database did not answer in time".into())),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "system", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain"),
    (status = 404, description = "Metrics are turned off in this profile", body = crate::error::ErrorBody),
    (status = 503, description = "The request timed out", body = crate::error::ErrorBody),
))]
pub(super) async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, ApiError> {
    let handle = app.metrics.as_ref().ok_or(ApiError::NotFound("metrics are disabled"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", responses(
    (status = 200, description = "OpenAPI 3 document of every route", content_type = "application/json"),
    (status = 503, description = "The request timed out", body = crate::error::ErrorBody),
))]
pub(super) async fn openapi(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.to_string())
}
