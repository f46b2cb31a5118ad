//! Liveness, readiness, metrics and the API's own description.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::RouteState;
use crate::app::App;
use crate::error::ApiError;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How long /ready waits for the database before calling it unreachable.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
struct Health<'a> {
    status: &'static str,
    node_id: &'a str,
    version: &'static str,
}

/// /health's answer, the same for a server's life: rendered once, not per probe.
#[derive(Clone)]
pub(super) struct HealthBody(Bytes);

impl HealthBody {
    pub(super) fn render(app: &App) -> Self {
        let health = Health {
            status: "ok",
            node_id: &app.node_id,
            version: crate::version(),
        };
        // Serialising three strings cannot fail; an empty body would show if it did.
        Self(serde_json::to_vec(&health).map_or_else(|_| Bytes::new(), Bytes::from))
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, body = Health),
    (status = 503, description = "The request timed out", body = crate::error::ErrorBody),
))]
pub(super) async fn health(State(HealthBody(body)): State<HealthBody>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, JSON)], body)
}

impl FromRef<RouteState> for HealthBody {
    fn from_ref(state: &RouteState) -> Self {
        state.health.clone()
    }
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

/// The OpenAPI document, served as it was generated from the routes.
#[derive(Clone)]
pub(super) struct OpenApiJson(Bytes);

impl OpenApiJson {
    pub(super) fn render(document: &utoipa::openapi::OpenApi) -> Self {
        Self(document.to_json().map_or_else(|_| Bytes::new(), Bytes::from))
    }
}

impl FromRef<RouteState> for OpenApiJson {
    fn from_ref(state: &RouteState) -> Self {
        state.openapi.clone()
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", responses(
    (status = 200, description = "OpenAPI 3 document of every route", content_type = "application/json"),
    (status = 503, description = "The request timed out", body = crate::error::ErrorBody),
))]
pub(super) async fn openapi(State(OpenApiJson(document)): State<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, JSON)], document)
}
