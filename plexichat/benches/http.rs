//! A request through the whole axum stack in process (no network): routing, tracing,
//! metrics, timeout, body limit, compression, the bearer-token extractor, the caches and
//! the SQLite store, as `tower::ServiceExt::oneshot` drives the router.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use plexichat::app::App;
use plexichat::config::{AuthSettings, DatabaseSettings, RateLimitSettings, Settings};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tower::ServiceExt;

struct Fixture {
    runtime: Runtime,
    router: Router,
    token: String,
    channel: i64,
    _dir: tempfile::TempDir,
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).expect("a valid request"))
        .await
        .expect("the router is infallible");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("a body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn fixture() -> Fixture {
    // One thread: the work of an iteration happens on the thread that measures it (and
    // SQLite's own), so instruction counts barely vary from run to run.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let defaults = Settings::default();
    let settings = Settings {
        node_id: Some("bench".into()),
        database: DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            ..defaults.database.clone()
        },
        // Measured here: the stack, not password hashing or the limiter.
        auth: AuthSettings {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            ..defaults.auth.clone()
        },
        rate_limits: RateLimitSettings {
            enabled: false,
            ..defaults.rate_limits.clone()
        },
        ..defaults
    };
    let (router, token, channel) = runtime.block_on(async {
        let app: Arc<App> = App::new(settings).await.expect("the app starts");
        let router = plexichat::http::router(app);
        let credentials = json!({"username": "bench", "password": "correct horse battery"});
        let (status, _) = call(
            &router,
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(credentials.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "register");
        let (_, login) = call(&router, Method::POST, "/api/v1/auth/login", None, Some(credentials)).await;
        let token = login["token"].as_str().expect("a token").to_string();
        let (_, channel) = call(
            &router,
            Method::POST,
            "/api/v1/channels",
            Some(&token),
            Some(json!({"name": "bench"})),
        )
        .await;
        let channel = channel["id"].as_i64().expect("a channel id");
        for n in 0..100 {
            let body = json!({"body": format!("message {n}: the quick brown fox jumps over the lazy dog")});
            let uri = format!("/api/v1/channels/{channel}/messages");
            let (status, _) = call(&router, Method::POST, &uri, Some(&token), Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "post");
        }
        (router, token, channel)
    });
    Fixture {
        runtime,
        router,
        token,
        channel,
        _dir: dir,
    }
}

fn http(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("http");
    group.bench_function("health", |b| {
        b.iter(|| {
            fx.runtime
                .block_on(call(&fx.router, Method::GET, "/health", None, None))
        })
    });
    let page = format!("/api/v1/channels/{}/messages?limit=20", fx.channel);
    group.bench_function("page_20_messages", |b| {
        b.iter(|| {
            let (status, _) = fx
                .runtime
                .block_on(call(&fx.router, Method::GET, &page, Some(&fx.token), None));
            assert_eq!(status, StatusCode::OK);
        })
    });
    let post = format!("/api/v1/channels/{}/messages", fx.channel);
    group.bench_function("post_message", |b| {
        b.iter(|| {
            let body = json!({"body": "the quick brown fox jumps over the lazy dog"});
            let (status, _) = fx
                .runtime
                .block_on(call(&fx.router, Method::POST, &post, Some(&fx.token), Some(body)));
            assert_eq!(status, StatusCode::CREATED);
        })
    });
    // 64 clients posting to one channel at once: the posts wait for the channel's turn,
    // and group commit makes them share transactions.
    group.bench_function("post_64_messages_at_once", |b| {
        b.iter(|| {
            let posts = (0..64).map(|_| {
                let body = json!({"body": "the quick brown fox jumps over the lazy dog"});
                call(&fx.router, Method::POST, &post, Some(&fx.token), Some(body))
            });
            for (status, _) in fx.runtime.block_on(futures_util::future::join_all(posts)) {
                assert_eq!(status, StatusCode::CREATED);
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = http
}
criterion_main!(benches);
