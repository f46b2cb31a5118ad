//! Extractors whose rejections are API errors: a malformed request is always a 400
//! with our error body, never axum's plain-text 4xx.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. The Content-Type is not insisted on, so `curl -d` works as people expect.
pub(super) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        // The edges (edges.rs) hold the body to the profile's limit: read it without
        // axum's own default limit, which would be a second one.
        let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .map_err(|err| match over_the_limit(&err) {
                true => ApiError::PayloadTooLarge,
                false => ApiError::InvalidRequest(format!("cannot read the request body: {err}")),
            })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::InvalidRequest(format!("body is not valid JSON: {err}")))?;
        // serde would read a struct from an array too; every body here is an object.
        if !json.is_object() {
            return Err(ApiError::InvalidRequest("body must be a JSON object".into()));
        }
        serde_path_to_error::deserialize(json)
            .map(Self)
            .map_err(|err| ApiError::InvalidRequest(format!("invalid field `{}`: {}", err.path(), err.inner())))
    }
}

/// Whether reading a body failed because it passed the edges' limit.
fn over_the_limit(err: &axum::Error) -> bool {
    std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |err| err.source())
        .any(|err| err.is::<http_body_util::LengthLimitError>())
}

/// Path parameters, e.g. a channel id that must be a number.
pub(super) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
    }
}

/// Query parameters.
pub(super) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
    }
}

/// The client's address, for per-address limits. Requests that did not come over a
/// socket (in-process benchmarks) share the unspecified address.
pub(super) struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip());
        Ok(Self(addr))
    }
}
