//! What every request passes on its way in and out, as one tower service with a future of
//! its own: its target's and body's length checked, bounded by the request timeout,
//! counted and timed, a server error logged, and an error made by the framework given
//! API.md's JSON body.
//!
//! One service instead of a layer for each (tower-http's trace, timeout and body limit,
//! axum's `from_fn`): each layer a router is given wraps every route again in a box that
//! is cloned and called on every request, and `from_fn` boxes the rest of the stack once
//! more. On GET /health those layers took about half of the server's time per request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::request_metrics::{RequestMetrics, UNMATCHED};
use crate::config::HttpSettings;
use crate::error::error_response;

/// The limits the edges enforce, and the metrics they keep.
pub(super) struct Edges {
    metrics: RequestMetrics,
    max_uri_bytes: usize,
    max_body_bytes: usize,
    request_timeout: Duration,
}

impl Edges {
    pub(super) fn layer(settings: &HttpSettings) -> EdgesLayer {
        EdgesLayer(Arc::new(Self {
            metrics: RequestMetrics::default(),
            max_uri_bytes: settings.max_uri_bytes,
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout,
        }))
    }

    /// The answer to a request refused before any handler sees it.
    fn refuse(&self, request: &Request) -> Option<Response> {
        uri_too_long(request.uri(), self.max_uri_bytes)
            .or_else(|| body_too_long(request.headers(), self.max_body_bytes))
    }

    /// Counts the request and logs a failed one, as tower-http's trace layer did: server
    /// errors at error level, everything else at debug.
    fn finished(&self, method: &Method, route: Option<&MatchedPath>, status: StatusCode, started: Instant) {
        let took = started.elapsed();
        let route = route.map_or(UNMATCHED, MatchedPath::as_str);
        self.metrics.record(method, route, status, took);
        let latency_ms = took.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(%method, route, status = status.as_u16(), latency_ms, "request failed");
        } else {
            tracing::debug!(%method, route, status = status.as_u16(), latency_ms, "request finished");
        }
    }
}

#[derive(Clone)]
pub(super) struct EdgesLayer(Arc<Edges>);

impl<S> Layer<S> for EdgesLayer {
    type Service = EdgesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgesService {
            inner,
            edges: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct EdgesService<S> {
    inner: S,
    edges: Arc<Edges>,
}

impl<S> Service<Request> for EdgesService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let stage = match self.edges.refuse(&request) {
            Some(refused) => Stage::Refused {
                response: Some(refused),
            },
            None => {
                // Handlers' own log lines are nested in it, when debug logging is on.
                let span = tracing::debug_span!("request", %method, uri = %request.uri(), version = ?request.version());
                let request = limit_body(request, self.edges.max_body_bytes);
                Stage::Handling {
                    response: self.inner.call(request).instrument(span),
                    timer: None,
                }
            }
        };
        EdgesFuture {
            stage,
            started,
            method,
            route,
            edges: self.edges.clone(),
        }
    }
}

pin_project! {
    pub(super) struct EdgesFuture<F> {
        #[pin]
        stage: Stage<F>,
        started: Instant,
        method: Method,
        route: Option<MatchedPath>,
        edges: Arc<Edges>,
    }
}

pin_project! {
    #[project = StageProjection]
    enum Stage<F> {
        Refused { response: Option<Response> },
        Handling {
            #[pin]
            response: tracing::instrument::Instrumented<F>,
            // Armed when the handler first has to wait: most cheap routes answer in
            // their first poll and never touch the timer wheel.
            timer: Option<Pin<Box<Sleep>>>,
        },
    }
}

impl<F> Future for EdgesFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.stage.project() {
            StageProjection::Refused { response } => response.take().expect("EdgesFuture polled after completion"),
            StageProjection::Handling { response, timer } => match response.poll(cx) {
                Poll::Ready(Ok(response)) => with_json_error_body(response),
                Poll::Pending => {
                    let timer = timer.get_or_insert_with(|| {
                        let left = this.edges.request_timeout.saturating_sub(this.started.elapsed());
                        Box::pin(tokio::time::sleep(left))
                    });
                    ready!(timer.as_mut().poll(cx));
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "request timed out".into())
                }
            },
        };
        this.edges
            .finished(this.method, this.route.as_ref(), response.status(), *this.started);
        Poll::Ready(Ok(response))
    }
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

/// Refuses a body whose declared length is over the limit before anything reads it.
fn body_too_long(headers: &HeaderMap, max_bytes: usize) -> Option<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    (declared > max_bytes as u64).then(body_over_limit)
}

/// A body without a declared length (chunked) fails the handler's read once it passes the
/// limit, which axum's extractors answer with 413. A request without a body is left as
/// it is: wrapping it would cost an allocation for nothing.
fn limit_body(request: Request, max_bytes: usize) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    request.map(|body| Body::new(http_body_util::Limited::new(body, max_bytes)))
}

fn body_over_limit() -> Response {
    error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large".into())
}

/// Gives errors made by the framework (405, 413 from a body over the limit, bad upgrades)
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
    let mut rebuilt = match status {
        StatusCode::PAYLOAD_TOO_LARGE => body_over_limit(),
        _ => error_response(status, status.canonical_reason().unwrap_or("error").to_lowercase()),
    };
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = response.headers().get(&name) {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt.into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::to_bytes;
    use tower::ServiceExt as _;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn edges() -> Arc<Edges> {
        Arc::new(Edges {
            metrics: RequestMetrics::default(),
            max_uri_bytes: 64,
            max_body_bytes: 16,
            request_timeout: TIMEOUT,
        })
    }

    /// The edges around a handler that answers `status` after `delay` (never, for
    /// `None`), and how many requests reached it.
    fn service(
        delay: Option<Duration>,
        status: StatusCode,
    ) -> (
        EdgesService<impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone>,
        Arc<AtomicUsize>,
    ) {
        let reached = Arc::new(AtomicUsize::new(0));
        let inner = tower::service_fn({
            let reached = reached.clone();
            move |request: Request| {
                reached.fetch_add(1, Ordering::SeqCst);
                async move {
                    match delay {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => std::future::pending().await,
                    }
                    let body = to_bytes(request.into_body(), usize::MAX).await;
                    let text = match body {
                        Ok(bytes) => format!("read {} bytes", bytes.len()),
                        Err(_) => return Ok::<_, Infallible>(StatusCode::PAYLOAD_TOO_LARGE.into_response()),
                    };
                    Ok((status, text).into_response())
                }
            }
        });
        (EdgesLayer(edges()).layer(inner), reached)
    }

    fn get(uri: &str) -> Request {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    async fn json_error(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).expect("a JSON error body"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_answers_in_time_is_passed_through() {
        let (service, reached) = service(Some(TIMEOUT / 2), StatusCode::OK);
        let response = service.oneshot(get("/fine")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_the_request_timeout_is_answered_503() {
        let (service, _) = service(None, StatusCode::OK);
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(TIMEOUT * 2, service.oneshot(get("/stuck")))
            .await
            .expect("no answer after twice the request timeout");
        let (status, body) = json_error(answer.unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["message"], "request timed out", "{body}");
        assert!(started.elapsed() >= TIMEOUT);
    }

    #[tokio::test]
    async fn a_long_target_is_refused_before_the_handler() {
        let (service, reached) = service(Some(Duration::ZERO), StatusCode::OK);
        let uri = format!("/{}", "x".repeat(64));
        let (status, body) = json_error(service.oneshot(get(&uri)).await.unwrap()).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_refused_before_the_handler() {
        let (service, reached) = service(Some(Duration::ZERO), StatusCode::OK);
        let request = Request::post("/upload")
            .header(header::CONTENT_LENGTH, "17")
            .body(Body::from("x".repeat(17)))
            .unwrap();
        let (status, body) = json_error(service.oneshot(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_undeclared_body_over_the_limit_fails_its_read() {
        let (service, reached) = service(Some(Duration::ZERO), StatusCode::OK);
        let chunks = futures_util::stream::iter(["x".repeat(10), "x".repeat(10)].map(Ok::<_, Infallible>));
        let request = Request::post("/upload").body(Body::from_stream(chunks)).unwrap();
        let (status, body) = json_error(service.oneshot(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"]["message"], "request body is too large", "{body}");
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_reaches_the_handler_whole() {
        let (service, _) = service(Some(Duration::ZERO), StatusCode::OK);
        let request = Request::post("/upload").body(Body::from("x".repeat(16))).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(&text[..], b"read 16 bytes");
    }

    #[tokio::test]
    async fn a_plain_text_error_from_the_framework_gets_the_json_body() {
        let (service, _) = service(Some(Duration::ZERO), StatusCode::METHOD_NOT_ALLOWED);
        let (status, body) = json_error(service.oneshot(get("/only-post")).await.unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["message"], "method not allowed", "{body}");
    }
}
