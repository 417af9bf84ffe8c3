//! Reads filtered by event type or stream category use the indexes of migration 0004:
//! the planner's own EXPLAIN of `read_all.sql` names them when the filter is selective
//! (1% of the log here; for a large share, walking the primary key is cheaper).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use serde_json::json;
use sqlx::{Connection, Row};
use tidings::{EventAppender, EventReader, ExpectedVersion, Filter, ReadAll};
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_schema, store_in};

/// The plan PostgreSQL picks for `read_all.sql` with these parameters.
async fn plan(conn: &mut sqlx::PgConnection, types: &[&str], categories: &[&str]) -> String {
    // The query file, verbatim: no input reaches this text.
    let sql = format!("EXPLAIN {}", include_str!("../sql/queries/read_all.sql"));
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(0i64)
        .bind(types)
        .bind(None::<String>)
        .bind(100i64)
        .bind(categories)
        .bind(i64::MAX)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn type_and_category_filters_use_their_indexes() {
    let Some(url) = database("type_and_category_filters_use_their_indexes").await else {
        return;
    };
    let schema = fresh_schema();
    let store = store_in(&url, &schema).await;
    // 20,000 events in 200 streams of 100 categories; one type in a hundred is "Rare".
    for batch in 0..200 {
        let events = (0..100)
            .map(|i| {
                let t = if i == 0 { "Rare" } else { "Common" };
                event(t, json!({ "i": i }))
            })
            .collect();
        store
            .append(
                &stream(&format!("cat{}-{batch}", batch % 100)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    }
    let rare = store
        .read_all(ReadAll::new(0, 1000).filter(Filter::all().event_type("Rare")))
        .await
        .unwrap();
    assert_eq!(rare.len(), 200);
    let cat3 = store
        .read_all(ReadAll::new(0, 10_000).filter(Filter::all().category("cat3")))
        .await
        .unwrap();
    assert_eq!(cat3.len(), 200);
    assert!(cat3.iter().all(|e| e.stream.as_str().starts_with("cat3-")));

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // The schema name is a fresh identifier this test made.
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("ANALYZE tidings_events")
        .execute(&mut conn)
        .await
        .unwrap();
    let by_type = plan(&mut conn, &["Rare"], &[]).await;
    assert!(by_type.contains("tidings_events_type"), "{by_type}");
    let by_category = plan(&mut conn, &[], &["cat3"]).await;
    assert!(
        by_category.contains("tidings_events_category"),
        "{by_category}"
    );
    println!("type filter:\n{by_type}\n\ncategory filter:\n{by_category}");
    let _ = conn.close().await;
    store.drop_schema().await.unwrap();
}
