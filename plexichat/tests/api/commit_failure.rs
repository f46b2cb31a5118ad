//! PostgreSQL refusing a write at COMMIT, after the statement itself succeeded and
//! returned its row: a deferred constraint trigger raises `disk_full` at commit time, as
//! a database that runs out of space while committing would. The post must not be
//! acknowledged, stored or delivered; it is API.md's 503, and the node recovers when the
//! database does.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection as _;

use super::api::helpers::{assert_error, spawn_app_with};
use super::api::websocket::WsClient;

const REFUSE_AT_COMMIT: &str = "
    CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
    END $$;
    CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON messages
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
";

#[tokio::test]
async fn a_commit_that_fails_after_the_insert_returned_is_503_not_201() {
    let mut database_url = String::new();
    let app = spawn_app_with(|settings| database_url = settings.database.url.clone()).await;
    let alice = app.user("alice").await;
    let general = app.channel(&alice, "general").await;
    let mut socket = WsClient::connect(&app, &alice.token).await;
    socket.subscribe(general).await;
    let kept = app.say(&alice, general, "before").await;
    socket.expect_message(&kept).await;

    let mut database = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connecting to the test's database");
    sqlx::raw_sql(REFUSE_AT_COMMIT)
        .execute(&mut database)
        .await
        .expect("installing the trigger");

    let path = format!("/api/v1/channels/{general}/messages");
    let refused = app
        .post(&path, &alice.token, json!({"body": "refused at commit"}))
        .await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let ready = app.call(Method::GET, "/ready", None, None).await;
    assert_error(&ready, StatusCode::SERVICE_UNAVAILABLE, "unavailable");

    sqlx::raw_sql("DROP TRIGGER refuse_at_commit ON messages")
        .execute(&mut database)
        .await
        .expect("dropping the trigger");
    let after = app.say(&alice, general, "after").await;
    // The refused post was never published: the next frame is the next acknowledged one.
    socket.expect_message(&after).await;

    let (status, history) = app.get(&format!("{path}?limit=200"), &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let bodies: Vec<&str> = history
        .as_array()
        .expect("a page")
        .iter()
        .map(|message| message["body"].as_str().expect("body"))
        .collect();
    assert_eq!(bodies, ["after", "before"], "the refused post must not be stored");
    // Writes go through again, so readiness comes back (at the latest with a heartbeat).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.call(Method::GET, "/ready", None, None).await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not become ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
