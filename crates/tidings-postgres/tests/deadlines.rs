//! Appends never wait forever: a session holding the claim gate makes appends fail
//! with a typed timeout (503 through the server, `/ready` not ready), and a retry with
//! the same event ids after the lock is released writes the events exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::Connection;
use tidings::{EventAppender, EventReader, ExpectedVersion, ReadStream, StoreError};
use tidings_postgres::PgStore;
use tidings_server::{AppState, ServerConfig, router};
use tidings_testkit::conformance::{event, stream};
use tower::ServiceExt;

use common::{database, fresh_schema};

/// A store whose appends give up on a lock after 300 ms.
async fn impatient_store(url: &str, schema: &str) -> PgStore {
    PgStore::builder(url)
        .schema(schema)
        .lock_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Another session holding the claim gate (migration 0007), as
/// `BEGIN; SELECT pg_advisory_xact_lock(tidings_gate_key())` in psql: appends wait for it
/// to claim positions.
async fn hold_claim_gate(url: &str, schema: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    // The schema is a fresh generated identifier, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(tidings_gate_key())")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut conn: sqlx::PgConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_append_behind_a_held_lock_times_out_and_its_retry_writes_once() {
    let Some(url) =
        database("an_append_behind_a_held_lock_times_out_and_its_retry_writes_once").await
    else {
        return;
    };
    let schema = fresh_schema();
    let store = impatient_store(&url, &schema).await;
    let s = stream("deadline-1");
    let first = event("Opened", json!({"n": 1}));
    store
        .append(&s, ExpectedVersion::NoStream, vec![first])
        .await
        .unwrap();

    let held = hold_claim_gate(&url, &schema).await;
    let second = event("Deposited", json!({"n": 2}));
    let timed_out = store
        .append(&s, ExpectedVersion::Exact(0), vec![second.clone()])
        .await;
    match &timed_out {
        Err(StoreError::Timeout {
            after,
            outcome_unknown,
            ..
        }) => {
            assert_eq!(*after, Duration::from_millis(300));
            assert!(!outcome_unknown, "a rolled-back append writes nothing");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let message = timed_out.unwrap_err().to_string();
    assert!(message.contains("same event ids is safe"), "{message}");
    // A new stream takes the full transaction: it times out the same way.
    let other = store
        .append(
            &stream("deadline-2"),
            ExpectedVersion::NoStream,
            vec![event("Opened", json!({}))],
        )
        .await;
    assert!(
        matches!(other, Err(StoreError::Timeout { .. })),
        "{other:?}"
    );

    release(held).await;
    let retried = store
        .append(&s, ExpectedVersion::Exact(0), vec![second.clone()])
        .await
        .unwrap();
    assert_eq!(retried.first_revision, 1);
    // Retrying once more answers the recorded append instead of writing it again.
    let again = store
        .append(&s, ExpectedVersion::Exact(0), vec![second.clone()])
        .await
        .unwrap();
    assert_eq!(again, retried);
    let events = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(events.len(), 2, "the retried event is stored once");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_id == second.event_id)
            .count(),
        1
    );
    store.clone().drop_schema().await.unwrap();
}

async fn call(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("expected-version", "0")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_server_answers_a_stalled_append_503_and_is_not_ready_until_appends_flow() {
    let Some(url) =
        database("the_server_answers_a_stalled_append_503_and_is_not_ready_until_appends_flow")
            .await
    else {
        return;
    };
    let schema = fresh_schema();
    let store = impatient_store(&url, &schema).await;
    let app = router(AppState::new(store.clone(), ServerConfig::default()));
    let s = stream("deadline-http");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("Opened", json!({}))],
        )
        .await
        .unwrap();
    let path = format!("/streams/{}", s.as_str());
    let id = uuid::Uuid::new_v4();
    let body = json!({"eventId": id, "eventType": "Deposited", "data": {"amount": 5}});

    let held = hold_claim_gate(&url, &schema).await;
    let (status, headers, text) = call(&app, post(&path, &body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "application/problem+json"
    );
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:append-timeout");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("outcome"), "{detail}");
    assert!(detail.contains("same event ids is safe"), "{detail}");

    let (status, _, text) = call(&app, get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("appends-stalled"), "{text}");
    let (_, _, metrics) = call(&app, get("/metrics")).await;
    assert!(
        metrics.contains("tidings_append_timeouts_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tidings_appends_stalled "), "{metrics}");

    release(held).await;
    let (status, _, text) = call(&app, post(&path, &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (status, _, text) = call(&app, post(&path, &body)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a repeated retry answers the same append: {text}"
    );
    let (status, _, text) = call(&app, get("/ready")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.event_id == id).count(), 1);
    assert_eq!(events.len(), 2);
    store.clone().drop_schema().await.unwrap();
}

#[tokio::test]
async fn the_server_deadline_answers_while_the_append_keeps_running() {
    let Some(url) = database("the_server_deadline_answers_while_the_append_keeps_running").await
    else {
        return;
    };
    // The store waits for the lock longer than the server waits for the store: the
    // server answers at its own deadline, counts the append as stalled while it still
    // waits, and the append completes once the lock is released.
    let schema = fresh_schema();
    let store = PgStore::builder(&url)
        .schema(&schema)
        .lock_timeout(Duration::from_secs(600))
        .connect()
        .await
        .unwrap();
    let config = ServerConfig {
        append_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let app = router(AppState::new(store.clone(), config));
    let s = stream("deadline-server");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("Opened", json!({}))],
        )
        .await
        .unwrap();
    let path = format!("/streams/{}", s.as_str());
    let id = uuid::Uuid::new_v4();
    let body = json!({"eventId": id, "eventType": "Deposited", "data": {}});

    let held = hold_claim_gate(&url, &schema).await;
    let (status, headers, text) = call(&app, post(&path, &body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:append-timeout");
    assert_eq!(problem["outcomeUnknown"], true);
    // Still waiting on the lock, past the deadline: stalled.
    let (_, _, metrics) = call(&app, get("/metrics")).await;
    assert!(metrics.contains("tidings_appends_stalled 1"), "{metrics}");
    let (status, _, text) = call(&app, get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");

    release(held).await;
    // The retry is decided after the original: it answers the recorded append.
    let (status, _, text) = call(&app, post(&path, &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    // The original's task ends just after its answer: wait (boundedly) for it to leave.
    ready_soon(&app).await;
    let events = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.event_id == id).count(), 1);
    store.clone().drop_schema().await.unwrap();
}

/// Waits (up to a generous bound, so a broken server fails instead of hanging) until
/// `/ready` answers 200.
async fn ready_soon(app: &axum::Router) {
    let mut last = String::new();
    for _ in 0..500 {
        let (status, _, text) = call(app, get("/ready")).await;
        if status == StatusCode::OK {
            return;
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server stayed not ready: {last}");
}
