//! The HTTP surface: routes (one module per resource), the OpenAPI document generated
//! from them, and the middleware stack every request passes through.

mod auth;
mod channels;
mod cluster;
mod extract;
mod messages;
mod request_metrics;
mod system;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Components, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::config::Limits;
use crate::error::{error_response, ApiError};

#[derive(OpenApi)]
#[openapi(
    info(title = "PlexiChat", description = "Chat over REST and WebSocket; see API.md."),
    modifiers(&BearerToken),
    components(schemas(crate::error::ErrorBody, crate::model::Message)),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The OpenAPI document, served as it was generated from the routes.
#[derive(Clone)]
pub(crate) struct OpenApiJson(Arc<str>);

/// Every route, documented and wired in one place.
fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::ready))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(channels::create, channels::list))
        .routes(routes!(channels::get))
        .routes(routes!(channels::join))
        .routes(routes!(channels::leave))
        .routes(routes!(messages::post, messages::page))
        .routes(routes!(cluster::nodes))
        .routes(routes!(crate::ws::upgrade))
}

/// The OpenAPI document of every route, stating `limits`.
pub fn openapi(limits: &Limits) -> utoipa::openapi::OpenApi {
    let mut document = routes().split_for_parts().1;
    state_limits(&mut document, limits);
    document
}

pub fn router(app: Arc<App>) -> Router {
    let settings = &app.settings;
    let (router, mut openapi) = routes().split_for_parts();
    state_limits(&mut openapi, &settings.limits);
    let openapi = OpenApiJson(openapi.to_json().unwrap_or_default().into());
    let compression = CompressionLayer::new()
        .gzip(true)
        .quality(CompressionLevel::Precise(i32::from(settings.compression.level)))
        .compress_when(
            SizeAbove::new(settings.compression.min_size_bytes).and(NotForContentType::const_new("text/event-stream")),
        );
    let router = router
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(Extension(openapi))
        // The body limit below is the one limit; axum's own default would be a second.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(settings.http.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.http.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::new(Edges {
                metrics: request_metrics::RequestMetrics::default(),
                max_uri_bytes: settings.http.max_uri_bytes,
            }),
            edges,
        ));
    let router = if settings.compression.enabled {
        router.layer(compression)
    } else {
        router
    };
    router.layer(TraceLayer::new_for_http()).with_state(app)
}

/// Writes the value limits into the request schemas. They come from the profile, not
/// from attributes, so that the document a node serves states the limits it enforces.
fn state_limits(document: &mut utoipa::openapi::OpenApi, limits: &Limits) {
    let Some(components) = document.components.as_mut() else {
        return;
    };
    if let Some(username) = property(components, "Registration", "username") {
        username.min_length = Some(limits.username_min);
        username.max_length = Some(limits.username_max);
        username.pattern = Some("^[A-Za-z0-9_.-]+$".into());
        username.description = Some(format!(
            "{} to {} characters: letters A-Z and a-z, digits, '_', '.' and '-'",
            limits.username_min, limits.username_max
        ));
    }
    if let Some(password) = property(components, "Registration", "password") {
        password.min_length = Some(limits.password_min);
        password.max_length = Some(limits.password_max);
        password.description = Some(format!("{} to {} characters", limits.password_min, limits.password_max));
    }
    for (schema, field, max) in [
        ("NewChannel", "name", limits.channel_name_max),
        ("PostMessage", "body", limits.message_body_max),
    ] {
        if let Some(text) = property(components, schema, field) {
            text.min_length = Some(1);
            text.pattern = Some(trimmed_length_pattern(max));
            text.description = Some(format!(
                "1 to {max} characters after trimming surrounding white space; stored trimmed"
            ));
        }
    }
}

/// The string property `field` of the object schema `schema`.
fn property<'a>(components: &'a mut Components, schema: &str, field: &str) -> Option<&'a mut Object> {
    let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
        return None;
    };
    match object.properties.get_mut(field) {
        Some(RefOr::T(Schema::Object(property))) => Some(property),
        _ => None,
    }
}

/// The white space Rust's `str::trim` removes (Unicode White_Space), as a regex class body.
/// Spelled out rather than `\s`, whose meaning differs between regex dialects (Python's
/// includes U+001C–U+001F, which `trim` keeps).
const TRIMMED: &str = r"\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A pattern matching exactly the strings that are 1 to `max` characters long after
/// trimming. `maxLength` cannot say this: the limit applies after trimming, so a padded
/// string longer than `max` is accepted, and a document stating `maxLength` would make
/// clients (and schemathesis) believe it is refused.
fn trimmed_length_pattern(max: usize) -> String {
    let space = format!("[{TRIMMED}]");
    let solid = format!("[^{TRIMMED}]");
    match max {
        0 | 1 => format!("^{space}*{solid}{space}*$"),
        _ => format!("^{space}*{solid}(?:[\\s\\S]{{0,{}}}{solid})?{space}*$", max - 2),
    }
}

/// What every request passes on its way in and out, in one middleware (each `from_fn`
/// layer boxes the rest of the stack again on every request): counted and timed, its
/// target's length checked, and an error made by the framework or a layer given the JSON
/// body of API.md.
struct Edges {
    metrics: request_metrics::RequestMetrics,
    max_uri_bytes: usize,
}

async fn edges(State(edges): State<Arc<Edges>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = match uri_too_long(request.uri(), edges.max_uri_bytes) {
        Some(refused) => refused,
        None => with_json_error_body(next.run(request).await),
    };
    edges
        .metrics
        .record(&method, route.as_ref(), response.status(), started);
    response
}

/// Refuses request targets over the configured length with 414. hyper's own limit is
/// 64 KiB and sits behind its head-size limit, so without this a long URI would be told
/// its headers are too large.
fn uri_too_long(uri: &Uri, max_bytes: usize) -> Option<Response> {
    let length = uri.scheme_str().map_or(0, |scheme| scheme.len() + "://".len())
        + uri.authority().map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |target| target.as_str().len());
    (length > max_bytes).then(|| {
        error_response(
            StatusCode::URI_TOO_LONG,
            format!("request target is {length} bytes long; the limit is {max_bytes}"),
        )
    })
}

/// Gives errors made by the framework and its layers (405, 413, timeouts, bad upgrades)
/// the same JSON body as ours.
fn with_json_error_body(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body is too large".to_string(),
        StatusCode::SERVICE_UNAVAILABLE => "request timed out".to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut rebuilt = error_response(status, message);
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = response.headers().get(&name) {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt.into_response()
}
