//! Writers announce their commits only while some session listens (migration 0008): a
//! claim says whether a listener's key was held when it was taken. A handle that follows
//! the log takes the key before it reads the horizon, so it misses nothing that was not
//! announced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sqlx::Connection;
use tidings::{EventAppender, EventSubscriber, ExpectedVersion, Filter, Start};
use tidings_postgres::PgStore;
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_schema, store_in};

/// A guard against hangs, not a speed assertion.
const STALL: Duration = Duration::from_secs(60);

/// The stream of the next event `sees` delivers.
async fn next_stream<S>(sees: &mut S) -> String
where
    S: futures::Stream<Item = tidings::store::EventStreamItem> + Unpin,
{
    tokio::time::timeout(STALL, sees.next())
        .await
        .expect("the subscription stalled")
        .expect("the subscription ended")
        .expect("the subscription failed")
        .stream
        .as_str()
        .to_owned()
}

/// Waits until a session holds the listener's key of the store's schema, and answers
/// how many do.
async fn wait_for_a_listener(store: &PgStore) -> i64 {
    for _ in 0..6000 {
        if listeners(store).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listeners(store).await
}

/// Whether a claim taken now finds a listener (in a transaction rolled back after).
async fn claim_listened(store: &PgStore) -> bool {
    let mut conn = store.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let listened: bool = sqlx::query_scalar("SELECT listened FROM tidings_claim(1, false)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    listened
}

/// How many sessions hold the listener's key of the store's schema.
async fn listeners(store: &PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted
           AND (classid::bigint << 32) + objid::bigint = tidings_listen_key()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_announced_while_some_session_listens() {
    let Some(url) = database("appends_are_announced_while_some_session_listens").await else {
        return;
    };
    let schema = fresh_schema();
    let writer = store_in(&url, &schema).await;
    writer
        .append(
            &stream("quiet"),
            ExpectedVersion::NoStream,
            vec![event("Quiet", json!(0))],
        )
        .await
        .unwrap();
    assert_eq!(listeners(&writer).await, 0);
    assert!(!claim_listened(&writer).await, "a claim found a listener");

    // Another handle follows the log: its listener takes the key, and a subscription
    // from the start sees the append that was never announced.
    let reader = store_in(&url, &schema).await;
    let mut sees = Box::pin(reader.subscribe_all(Start::Beginning, Filter::all()));
    assert_eq!(next_stream(&mut sees).await, "quiet");
    assert_eq!(
        wait_for_a_listener(&writer).await,
        1,
        "the listener holds no key"
    );
    assert!(claim_listened(&writer).await, "a claim found no listener");

    // The writer's appends now reach the other handle through notifications.
    writer
        .append(
            &stream("heard"),
            ExpectedVersion::NoStream,
            vec![event("Heard", json!(1))],
        )
        .await
        .unwrap();
    assert_eq!(next_stream(&mut sees).await, "heard");

    // A listener whose session ends gives its key back with it.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted
           AND (classid::bigint << 32) + objid::bigint = $1",
    )
    .bind(
        sqlx::query_scalar::<_, i64>("SELECT tidings_listen_key()")
            .fetch_one(writer.pool())
            .await
            .unwrap(),
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // The listener reconnects and takes the key again, and hears appends as before.
    writer
        .append(
            &stream("after"),
            ExpectedVersion::NoStream,
            vec![event("After", json!(2))],
        )
        .await
        .unwrap();
    assert_eq!(next_stream(&mut sees).await, "after");
    assert_eq!(
        wait_for_a_listener(&writer).await,
        1,
        "the listener did not take its key again"
    );
    drop(sees);
    writer.drop_schema().await.unwrap();
}
