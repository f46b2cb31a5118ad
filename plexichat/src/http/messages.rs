//! Posting messages and paging through a channel's history.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::app::App;
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::metrics::MESSAGES_POSTED_TOTAL;
use crate::model::{validate_message_body, ChannelId, Message, MessageId, NewMessage, Timestamp};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

#[derive(Deserialize, ToSchema)]
pub(super) struct PostMessage {
    body: String,
}

// `ApiQuery` is our own extractor, so utoipa cannot tell these are query parameters:
// without `parameter_in` it would document them as required path parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Only messages with a smaller id (older), for paging back.
    before: Option<MessageId>,
    /// How many messages, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
}

/// Post a message. 201 means it is committed: it will never be lost.
#[utoipa::path(post, path = "/api/v1/channels/{id}/messages", tag = "messages", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Channel id")), request_body = PostMessage, responses(
    (status = 201, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
    (status = 503, body = ErrorBody),
))]
pub(super) async fn post(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    ApiPath(channel_id): ApiPath<ChannelId>,
    ApiJson(posted): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    app.require_member(channel_id, auth.user.id).await?;
    let body = validate_message_body(&posted.body, &app.settings.limits)?;
    let message = app
        .posts
        .post(NewMessage {
            channel_id,
            author_id: auth.user.id,
            author: auth.user.username,
            body: body.to_string(),
            created_at: Timestamp::now(),
            node_id: app.node_id.clone(),
        })
        .await?;
    metrics::counter!(MESSAGES_POSTED_TOTAL).increment(1);
    Ok((StatusCode::CREATED, Json(message)))
}

/// A page of history, newest first.
#[utoipa::path(get, path = "/api/v1/channels/{id}/messages", tag = "messages", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Channel id"), PageQuery), responses(
    (status = 200, body = [Message]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody),
))]
pub(super) async fn page(
    State(app): State<Arc<App>>,
    auth: AuthUser,
    ApiPath(channel_id): ApiPath<ChannelId>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Message>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit must be 1 to {MAX_PAGE}")));
    }
    app.require_member(channel_id, auth.user.id).await?;
    Ok(Json(app.store.messages(channel_id, query.before, limit).await?))
}
