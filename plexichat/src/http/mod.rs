//! The HTTP surface: routes (one module per resource), the OpenAPI document generated
//! from them, and the middleware stack every request passes through.

mod auth;
mod channels;
mod cluster;
mod edges;
mod extract;
mod messages;
mod request_metrics;
mod system;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::http::{Extensions, HeaderMap, StatusCode, Version};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Components, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::edges::Edges;
use crate::app::App;
use crate::config::Limits;
use crate::error::ApiError;

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

/// What the routes are given: the application, and the answers that stay the same for a
/// server's life, rendered once. They travel in the state rather than as request
/// extensions, which would be inserted into every request.
#[derive(Clone)]
pub(crate) struct RouteState {
    app: Arc<App>,
    health: system::HealthBody,
    openapi: system::OpenApiJson,
}

impl FromRef<RouteState> for Arc<App> {
    fn from_ref(state: &RouteState) -> Self {
        state.app.clone()
    }
}

/// Every route, documented and wired in one place.
fn routes() -> OpenApiRouter<RouteState> {
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
    let state = RouteState {
        health: system::HealthBody::render(&app),
        openapi: system::OpenApiJson::render(&openapi),
        app: app.clone(),
    };
    let enabled = settings.compression.enabled;
    let compression = CompressionLayer::new()
        .gzip(true)
        .quality(CompressionLevel::Precise(i32::from(settings.compression.level)))
        .compress_when(
            // Off in the predicate rather than by leaving the layer out, so the stack has
            // one type either way.
            (move |_: StatusCode, _: Version, _: &HeaderMap, _: &Extensions| enabled)
                .and(SizeAbove::new(settings.compression.min_size_bytes))
                .and(NotForContentType::const_new("text/event-stream")),
        );
    // One layer for the whole stack: each layer a router is given wraps every route again.
    let layers = ServiceBuilder::new()
        .layer(compression)
        .layer(Edges::layer(&settings.http));
    router
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(layers)
        .with_state(state)
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
