//! Connecting, running out of connections, and closing: each failure is a clear, typed
//! error rather than a hang or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use serde_json::json;
use tidings::{EventAppender, EventReader, ExpectedVersion, StoreError};
use tidings_postgres::{PgStore, PgStoreError};
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_schema};

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error() {
    // Port 1 on the loopback: nothing listens there. The pool retries refused connections
    // until its acquire timeout, then gives up.
    let r = PgStore::builder("postgres://postgres@127.0.0.1:1/test")
        .acquire_timeout(Duration::from_millis(500))
        .connect()
        .await;
    assert!(matches!(r, Err(PgStoreError::Connect(_))), "{r:?}");
    let r = PgStore::connect("mysql://nope").await;
    assert!(matches!(r, Err(PgStoreError::InvalidUrl(_))), "{r:?}");
    let r = PgStore::builder("postgres://postgres@127.0.0.1:1/test")
        .schema("Robert'); DROP TABLE students;--")
        .connect()
        .await;
    assert!(
        matches!(r, Err(PgStoreError::InvalidSchema { .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn no_free_connection_is_busy_and_a_closed_store_is_closed() {
    let Some(url) = database("no_free_connection_is_busy_and_a_closed_store_is_closed").await
    else {
        return;
    };
    let schema = fresh_schema();
    let store = PgStore::builder(&url)
        .schema(&schema)
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let s = stream("busy-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("A", json!(1))])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));

    let held = store
        .pool()
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    let r = store.read_stream(&s, Default::default()).await;
    assert!(matches!(r, Err(StoreError::Busy(_))), "read: {r:?}");
    // Appends run on connections of their own (which carry the lock and statement
    // timeouts), so reads exhausting the pool do not hold them up.
    let r = store
        .append(&s, ExpectedVersion::Exact(0), vec![event("A", json!(2))])
        .await;
    assert!(r.is_ok(), "append beside an exhausted read pool: {r:?}");
    drop(held);
    assert_eq!(store.stream_version(&s).await, Ok(Some(1)));

    let cleanup = PgStore::builder(&url)
        .schema(&schema)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect for cleanup: {e}"));
    store.close().await;
    let r = store
        .append(&s, ExpectedVersion::Exact(1), vec![event("A", json!(3))])
        .await;
    assert_eq!(r, Err(StoreError::Closed));
    assert_eq!(store.head().await, Err(StoreError::Closed));
    cleanup
        .drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema: {e}"));
}
