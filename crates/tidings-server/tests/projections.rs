//! `GET /projections` and `GET /projections/{name}`: the built-in read models follow
//! appends, a blue/green rebuild is served after a restart, an unknown name is a 404.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use common::{TestServer, http};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings::projection::builtin::{self, EventTypes};
use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};

async fn append(store: &InMemoryStore, stream: &str, event_type: &str, n: usize) {
    let enricher = Enricher::new("test");
    let events = (0..n)
        .map(|_| {
            enricher
                .enrich(NewEvent::new(event_type, json!({})))
                .unwrap()
        })
        .collect();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
}

async fn get(s: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = http().get(s.url(path)).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Polls `path` until `done` holds for its body (the runner catches up in the
/// background); fails after many tries.
async fn until(s: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1_000 {
        let (status, body) = get(s, path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{path} never got there");
}

#[tokio::test]
async fn built_in_read_models_follow_the_log_and_serve_a_rebuilt_version_after_a_restart() {
    let store = InMemoryStore::new();
    append(&store, "order-1", "OrderCreated", 1).await;
    append(&store, "order-2", "OrderCreated", 1).await;
    append(&store, "user-9", "UserRegistered", 1).await;
    let server = TestServer::start_with(store.clone(), Default::default()).await;

    let types = until(&server, "/projections/event-types", |b| {
        b["model"]["OrderCreated"]["events"] == 2
    })
    .await;
    assert_eq!(types["version"], 1);
    assert_eq!(types["model"]["UserRegistered"]["events"], 1);
    let categories = until(&server, "/projections/categories", |b| {
        b["model"]["order"]["streams"] == 2
    })
    .await;
    assert_eq!(categories["model"]["user"]["events"], 1);

    // Live: an append reaches the served model.
    let r = http()
        .post(server.url("/streams/order-3"))
        .json(&json!({ "eventType": "OrderCreated", "data": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    until(&server, "/projections/event-types", |b| {
        b["model"]["OrderCreated"]["events"] == 3
    })
    .await;

    let (status, list) = get(&server, "/projections").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["event-types", "categories"]);

    let r = http()
        .get(server.url("/projections/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:projection-not-found");
    server.stop().await.unwrap();

    // Rebuilt while the server is down; the next server serves version 2.
    let mut runner = builtin::open::<_, EventTypes>(store.clone()).await.unwrap();
    let report = runner.rebuild().await.unwrap();
    assert_eq!(report.to_version, 2);
    drop(runner);
    let server = TestServer::start_with(store.clone(), Default::default()).await;
    let (status, types) = get(&server, "/projections/event-types").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(types["version"], 2);
    assert_eq!(types["model"]["OrderCreated"]["events"], 3);
    server.stop().await.unwrap();
}
