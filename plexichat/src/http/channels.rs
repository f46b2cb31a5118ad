//! Channels and membership.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath};
use crate::app::App;
use crate::auth::AuthUser;
use crate::bus::ClusterEvent;
use crate::error::{ApiError, ErrorBody};
use crate::model::{validate_channel_name, Channel, ChannelId, Timestamp};
use crate::store::StoreError;

#[derive(Deserialize, ToSchema)]
pub(super) struct NewChannel {
    name: String,
}

/// Create a channel; its creator is its first member.
#[utoipa::path(post, path = "/api/v1/channels", tag = "channels", security(("bearer" = [])),
    request_body = NewChannel, responses(
    (status = 201, body = Channel),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
    (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn create(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    ApiJson(new): ApiJson<NewChannel>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    let name = validate_channel_name(&new.name, &app.settings.limits)?;
    let channel = app
        .store
        .create_channel(name, auth.user.id, Timestamp::now())
        .await
        .map_err(|err| match err {
            StoreError::Conflict => ApiError::Conflict("channel name is taken"),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(channel)))
}

/// Every channel, ordered by id.
#[utoipa::path(get, path = "/api/v1/channels", tag = "channels", security(("bearer" = [])), responses(
    (status = 200, body = [Channel]), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn list(State(app): State<Arc<App>>, _auth: AuthUser) -> Result<Json<Vec<Channel>>, ApiError> {
    Ok(Json(app.store.channels().await?))
}

/// One channel.
#[utoipa::path(get, path = "/api/v1/channels/{id}", tag = "channels", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Channel id")), responses(
    (status = 200, body = Channel), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
    (status = 503, body = ErrorBody),
))]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    _auth: AuthUser,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<Json<Channel>, ApiError> {
    let channel = app.caches.channel(id, app.store.channel(id)).await?;
    channel.map(Json).ok_or(ApiError::NotFound("no such channel"))
}

/// Become a member (idempotent).
#[utoipa::path(post, path = "/api/v1/channels/{id}/join", tag = "channels", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Channel id")), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
    (status = 503, body = ErrorBody),
))]
pub(super) async fn join(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<StatusCode, ApiError> {
    app.store
        .join_channel(id, auth.user.id, Timestamp::now())
        .await
        .map_err(|err| match err {
            StoreError::NotFound => ApiError::NotFound("no such channel"),
            other => other.into(),
        })?;
    membership_changed(&app, id, &auth, true).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop being a member; live delivery to this user's sockets stops too.
#[utoipa::path(post, path = "/api/v1/channels/{id}/leave", tag = "channels", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Channel id")), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
    (status = 503, body = ErrorBody),
))]
pub(super) async fn leave(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<StatusCode, ApiError> {
    app.store
        .leave_channel(id, auth.user.id)
        .await
        .map_err(|err| match err {
            StoreError::NotFound => ApiError::NotFound("no such channel"),
            other => other.into(),
        })?;
    membership_changed(&app, id, &auth, false).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn membership_changed(app: &App, channel_id: ChannelId, auth: &AuthUser, member: bool) {
    // Applied here at once, so this user's next request sees it whatever the bus does.
    let event = ClusterEvent::MembershipChanged {
        channel_id,
        user_id: auth.user.id,
        member,
    };
    app.caches.forget_membership(channel_id, auth.user.id);
    app.publish(event).await;
}
