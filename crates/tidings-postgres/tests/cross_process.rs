//! Two handles with separate pools and listeners on one schema, as two processes would
//! be: each sees the other's appends live, also after its listener connection is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tidings::{EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter, Start};
use tidings_postgres::PgStore;
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_schema};

/// A guard against hangs, not a speed assertion.
const STALL: Duration = Duration::from_secs(60);

async fn handle(url: &str, schema: &str, name: &str) -> PgStore {
    PgStore::builder(url)
        .schema(schema)
        .max_connections(4)
        .application_name(name)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

async fn next_position<S>(sub: &mut S, what: &str) -> u64
where
    S: futures::Stream<Item = tidings::store::EventStreamItem> + Unpin,
{
    match tokio::time::timeout(STALL, sub.next()).await {
        Ok(Some(Ok(e))) => e.position,
        Ok(Some(Err(e))) => panic!("{what}: subscription failed: {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing arrived within {STALL:?}"),
    }
}

/// Backend pids of the listening connection of the handle named `name`.
async fn listener_pids(store: &PgStore, name: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("{name}:listener"))
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("find b's listener: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_on_one_schema_see_each_others_appends_live() {
    let Some(url) = database("handles_on_one_schema_see_each_others_appends_live").await else {
        return;
    };
    let schema = fresh_schema();
    // Names unique to this run, so parallel runs never kill each other's listeners.
    let run = &schema[schema.len() - 12..];
    let b_name = format!("xproc-b-{run}");
    let a = handle(&url, &schema, &format!("xproc-a-{run}")).await;
    let b = handle(&url, &schema, &b_name).await;

    let mut b_sees = Box::pin(b.subscribe_all(Start::Beginning, Filter::all()));
    let mut a_sees = Box::pin(a.subscribe_stream(&stream("from-b"), Start::Beginning));

    for i in 0..5u64 {
        a.append(
            &stream("from-a"),
            ExpectedVersion::Any,
            vec![event("A", json!({ "i": i }))],
        )
        .await
        .unwrap_or_else(|e| panic!("append via a: {e}"));
        assert_eq!(next_position(&mut b_sees, "b sees a's append").await, i);
    }
    b.append(
        &stream("from-b"),
        ExpectedVersion::NoStream,
        vec![event("B", json!(1))],
    )
    .await
    .unwrap_or_else(|e| panic!("append via b: {e}"));
    assert_eq!(next_position(&mut a_sees, "a sees b's append").await, 5);
    assert_eq!(next_position(&mut b_sees, "b sees its own append").await, 5);

    // A conflict across handles is still a typed conflict naming the version.
    let r = a
        .append(
            &stream("from-b"),
            ExpectedVersion::NoStream,
            vec![event("A", json!(2))],
        )
        .await;
    assert!(
        matches!(
            r,
            Err(tidings::StoreError::WrongExpectedVersion {
                actual: Some(0),
                ..
            })
        ),
        "{r:?}"
    );

    // Kill b's listening connection: b must reconnect and, whether a's next appends are
    // announced before or after that, deliver them.
    let old_pid = listener_pids(&a, &b_name).await;
    assert_eq!(old_pid.len(), 1, "b has exactly one listener connection");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old_pid[0])
        .fetch_one(a.pool())
        .await
        .unwrap_or_else(|e| panic!("terminate b's listener: {e}"));
    assert!(killed);
    for i in 0..3u64 {
        a.append(
            &stream("from-a"),
            ExpectedVersion::Any,
            vec![event("A", json!({ "late": i }))],
        )
        .await
        .unwrap_or_else(|e| panic!("append via a after the kill: {e}"));
    }
    for p in 6..9 {
        assert_eq!(next_position(&mut b_sees, "b after reconnect").await, p);
    }
    assert_eq!(b.head().await.ok().flatten(), Some(8));
    // b learns of a's appends only through its listener, so it has reconnected; its new
    // connection must be live for the next append too.
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let pids = listener_pids(&a, &b_name).await;
        if pids.len() == 1 && pids != old_pid {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never reconnected: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.append(
        &stream("from-a"),
        ExpectedVersion::Any,
        vec![event("A", json!("last"))],
    )
    .await
    .unwrap_or_else(|e| panic!("last append via a: {e}"));
    assert_eq!(
        next_position(&mut b_sees, "b on its new connection").await,
        9
    );

    drop((b_sees, a_sees, b));
    a.drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema {schema}: {e}"));
}
