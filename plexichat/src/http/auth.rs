//! Registration, login, logout and the current user.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, ClientAddr};
use crate::app::App;
use crate::auth::{new_token, token_hash, AuthUser};
use crate::bus::ClusterEvent;
use crate::error::{ApiError, ErrorBody};
use crate::model::{validate_password, validate_username, Timestamp, User};
use crate::store::StoreError;

/// A new account. The document states the profile's limits on both fields (see
/// `http::state_limits`).
#[derive(Deserialize, ToSchema)]
pub(super) struct Registration {
    username: String,
    password: String,
}

/// Any strings: an account made under older, looser limits must still be able to log in.
#[derive(Deserialize, ToSchema)]
pub(super) struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct LoginResponse {
    token: String,
    #[schema(value_type = String, format = DateTime)]
    expires_at: Timestamp,
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Registration, responses(
    (status = 201, body = User),
    (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
    (status = 503, body = ErrorBody),
))]
pub(super) async fn register(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    ApiJson(credentials): ApiJson<Registration>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    app.rate_limits.check_auth(client)?;
    let limits = &app.settings.limits;
    validate_username(&credentials.username, limits)?;
    validate_password(&credentials.password, limits)?;
    let hash = app.passwords.hash(credentials.password).await?;
    let user = app
        .store
        .create_user(&credentials.username, &hash, Timestamp::now())
        .await
        .map_err(|err| match err {
            StoreError::Conflict => ApiError::Conflict("username is taken"),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Exchange a username and password for a session token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials, responses(
    (status = 200, body = LoginResponse),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 429, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn login(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    ApiJson(credentials): ApiJson<Credentials>,
) -> Result<Json<LoginResponse>, ApiError> {
    app.rate_limits.check_auth(client)?;
    let found = app.store.credentials(&credentials.username).await?;
    let (user, stored_hash) = match found {
        Some(found) => (Some(found.user), Some(found.password_hash)),
        None => (None, None),
    };
    let verified = app.passwords.verify(credentials.password, stored_hash).await?;
    let user = user
        .filter(|_| verified)
        .ok_or(ApiError::Unauthorized("wrong username or password"))?;
    let token = new_token();
    let now = Timestamp::now();
    let expires_at = now.plus(app.settings.auth.token_ttl);
    app.store
        .create_session(&token_hash(&token), user.id, now, expires_at)
        .await?;
    Ok(Json(LoginResponse { token, expires_at }))
}

/// Revoke the token used for this request, on every node.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn logout(State(app): State<Arc<App>>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    app.store.delete_session(&auth.token_hash).await?;
    // Forget it and close its sockets here at once, whatever becomes of the event on
    // its way to other nodes.
    app.caches.forget_session(&auth.token_hash);
    app.hub.revoke_session(&auth.token_hash);
    app.publish(ClusterEvent::SessionRevoked {
        token_hash: auth.token_hash,
    })
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The user the token belongs to.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = User), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn me(auth: AuthUser) -> Json<User> {
    Json(auth.user)
}
