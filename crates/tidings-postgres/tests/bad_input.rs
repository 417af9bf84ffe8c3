//! Refused appends leave every table exactly as it was, down to the position counter.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use serde_json::json;
use tidings::{EventAppender, ExpectedVersion, Payload, StoreError};
use tidings_postgres::PgStore;
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_store};

/// Everything in the store's tables, as text (the test's own SQL, on the store's schema).
async fn tables(store: &PgStore) -> Vec<String> {
    let q = "SELECT 'position ' || tidings_next() \
             UNION ALL (SELECT 'stream ' || s::text FROM tidings_streams s ORDER BY name) \
             UNION ALL (SELECT 'event ' || e::text FROM tidings_events e ORDER BY position)";
    sqlx::query_scalar(q)
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("dump tables: {e}"))
}

#[tokio::test]
async fn refused_appends_change_no_table() {
    let Some(url) = database("refused_appends_change_no_table").await else {
        return;
    };
    let store = fresh_store(&url).await;
    let s = stream("order-1");
    let first = vec![event("A", json!({"n": 1})), event("A", json!({"n": 2}))];
    store
        .append(&s, ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap_or_else(|e| panic!("first append: {e}"));
    let before = tables(&store).await;
    assert_eq!(before.len(), 1 + 1 + 2, "{before:#?}");

    let mut no_data = event("A", json!(1));
    no_data.data = Payload::null();
    let mut nul_source = event("A", json!(1));
    nul_source.source = "svc\0".to_owned();
    let mut nul_meta = event("A", json!(1));
    nul_meta
        .metadata
        .extra
        .insert("k".to_owned(), "v\0".to_owned());
    let new_stream = stream("order-2");
    let refused: Vec<(
        &str,
        &tidings::StreamId,
        ExpectedVersion,
        Vec<tidings::Event>,
    )> = vec![
        ("empty", &s, ExpectedVersion::Any, vec![]),
        (
            "null data",
            &s,
            ExpectedVersion::Any,
            vec![event("A", json!(1)), no_data],
        ),
        ("NUL in source", &s, ExpectedVersion::Any, vec![nul_source]),
        (
            "NUL in metadata",
            &new_stream,
            ExpectedVersion::Any,
            vec![nul_meta],
        ),
        (
            "wrong version",
            &s,
            ExpectedVersion::Exact(0),
            vec![event("A", json!(1))],
        ),
        (
            "stream missing",
            &new_stream,
            ExpectedVersion::StreamExists,
            vec![event("A", json!(1))],
        ),
        (
            "id elsewhere",
            &new_stream,
            ExpectedVersion::Any,
            first[..1].to_vec(),
        ),
        (
            "mixed ids",
            &s,
            ExpectedVersion::Any,
            vec![first[1].clone(), event("A", json!("new"))],
        ),
        (
            "subset at another version",
            &s,
            ExpectedVersion::NoStream,
            first[1..].to_vec(),
        ),
    ];
    for (what, stream, expected, events) in refused {
        let r = store.append(stream, expected, events).await;
        assert!(r.is_err(), "{what}: accepted: {r:?}");
        assert!(
            !matches!(r, Err(StoreError::Busy(_) | StoreError::Closed)),
            "{what}: {r:?}"
        );
        assert_eq!(tables(&store).await, before, "{what} changed the tables");
    }

    // The idempotent repeat writes nothing either, and the next append continues the
    // positions without a gap.
    let again = store.append(&s, ExpectedVersion::Any, first).await;
    assert!(matches!(again, Ok(r) if r.first_position == 0), "{again:?}");
    assert_eq!(
        tables(&store).await,
        before,
        "the repeat changed the tables"
    );
    let next = store
        .append(
            &new_stream,
            ExpectedVersion::NoStream,
            vec![event("B", json!(1))],
        )
        .await
        .unwrap_or_else(|e| panic!("next append: {e}"));
    assert_eq!((next.first_revision, next.position), (0, 2));

    store
        .drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema: {e}"));
}
