//! Positions claimed as advisory locks (decisions 0020, 0022), tested for real: several
//! OS processes (this test binary, run again as writers) append to one schema while
//! sessions of the test's own claim positions by hand and hold them — one commits its
//! events late, one rolls back, one dies with its claim — and a live subscriber in this
//! process must see every committed event exactly once, in position order, each stream by
//! revision.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sqlx::Connection;
use tidings::{
    EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter, ReadAll, Start,
};
use tidings_testkit::conformance::{event, stream};
use uuid::Uuid;

use common::{database, fresh_schema, live_claims, store_in};

/// Set in the writer processes: `<url> <schema> <writer number>`.
const CHILD_VAR: &str = "TIDINGS_PG_WRITER_CHILD";
const WRITERS: usize = 4;
const APPENDS: usize = 60;
/// A guard against hangs, not a speed assertion.
const STALL: Duration = Duration::from_secs(60);

/// The writer process: a store handle of its own, lone appends to its own streams and to
/// one stream all writers share (`Any`, so some race each other). Passes at once when
/// not run as a writer.
#[test]
fn writer_process() {
    let Ok(args) = std::env::var(CHILD_VAR) else {
        return;
    };
    let mut args = args.split(' ');
    let (Some(url), Some(schema), Some(w)) = (args.next(), args.next(), args.next()) else {
        panic!("{CHILD_VAR} must be '<url> <schema> <writer>'");
    };
    common::runtime().block_on(async {
        let store = store_in(url, schema).await;
        for i in 0..APPENDS {
            let (s, expected) = match i % 3 {
                0 => (stream("shared-1"), ExpectedVersion::Any),
                1 => (stream(&format!("w{w}-{i}")), ExpectedVersion::NoStream),
                _ => (stream(&format!("w{w}-a")), ExpectedVersion::Any),
            };
            let e = event("Written", json!({"writer": w, "i": i}));
            store
                .append(&s, expected, vec![e])
                .await
                .unwrap_or_else(|e| panic!("writer {w}, append {i}: {e}"));
        }
        store.close().await;
    });
}

/// Opens a transaction on `conn` and claims one position in it by hand, as an append
/// does (claim.sql); answers it. The claim lasts until the transaction ends.
async fn claim_by_hand(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query_scalar("SELECT first_position FROM tidings_claim(1, false)")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

async fn session(url: &str, schema: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    // The schema is a fresh generated identifier, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Claims a position, then in the same transaction writes an event there (a new stream
/// and its row), and holds the transaction open for `hold` before committing.
async fn slow_append(url: String, schema: String, id: Uuid, hold: Duration) {
    let mut conn = session(&url, &schema).await;
    let lo = claim_by_hand(&mut conn).await;
    let name = format!("held-{lo}");
    sqlx::query(
        "INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
         VALUES ($1, 0, $2, 0)",
    )
    .bind(&name)
    .bind(lo)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tidings_events (position, stream, revision, event_id, event_type,
             event_version, occurred_at, source, data, recorded_at)
         VALUES ($1, $2, 0, $3, 'Held', '1.0', 0, 'test', '{}', 0)",
    )
    .bind(lo)
    .bind(&name)
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    tokio::time::sleep(hold).await;
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(format!("tidings:{schema}"))
        .bind(lo.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Claims a position, holds it, then rolls back (a refused append): a gap.
async fn refused_append(url: String, schema: String, hold: Duration) {
    let mut conn = session(&url, &schema).await;
    claim_by_hand(&mut conn).await;
    tokio::time::sleep(hold).await;
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
}

/// Claims a position, holds it, and dies: the backend ends inside its transaction.
async fn dead_append(url: String, schema: String, hold: Duration) {
    let mut conn = session(&url, &schema).await;
    claim_by_hand(&mut conn).await;
    tokio::time::sleep(hold).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_and_held_claims_lose_no_event_for_a_live_subscriber() {
    let Some(url) = database("processes_and_held_claims_lose_no_event_for_a_live_subscriber").await
    else {
        return;
    };
    let schema = fresh_schema();
    let store = store_in(&url, &schema).await;
    let mut sub = Box::pin(store.subscribe_all(Start::Beginning, Filter::all()));

    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for w in 0..WRITERS {
        children.push(
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "writer_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_VAR, format!("{url} {schema} {w}"))
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let held_ids: Vec<Uuid> = (0..3).map(|i| event("Held", json!(i)).event_id).collect();
    let mut sessions = Vec::new();
    for (i, id) in held_ids.iter().enumerate() {
        let hold = Duration::from_millis(300 + 400 * i as u64);
        sessions.push(tokio::spawn(slow_append(
            url.clone(),
            schema.clone(),
            *id,
            hold,
        )));
        sessions.push(tokio::spawn(refused_append(
            url.clone(),
            schema.clone(),
            hold,
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sessions.push(tokio::spawn(dead_append(
        url.clone(),
        schema.clone(),
        Duration::from_millis(500),
    )));

    let expected = WRITERS * APPENDS + held_ids.len();
    let mut seen: Vec<tidings::RecordedEvent> = Vec::with_capacity(expected);
    let mut ids = HashSet::new();
    while seen.len() < expected {
        let e = match tokio::time::timeout(STALL, sub.next()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!(
                "subscription stalled for {STALL:?} after {} of {expected} events",
                seen.len()
            ),
        };
        assert!(
            ids.insert(e.event_id),
            "event {} delivered twice",
            e.event_id
        );
        if let Some(last) = seen.last() {
            assert!(
                e.position > last.position,
                "position {} delivered after {}",
                e.position,
                last.position
            );
        }
        seen.push(e);
    }
    for child in &mut children {
        let status = child.wait().await.unwrap();
        assert!(status.success(), "a writer process failed: {status}");
    }
    for s in sessions {
        s.await.unwrap();
    }

    for id in &held_ids {
        assert!(ids.contains(id), "the held transaction's event was missed");
    }
    let mut revisions: HashMap<&str, u64> = HashMap::new();
    for e in &seen {
        let next = revisions.entry(e.stream.as_str()).or_insert(0);
        assert_eq!(
            e.revision, *next,
            "stream {} out of revision order",
            e.stream
        );
        *next += 1;
    }
    assert_eq!(
        revisions.get("shared-1").copied(),
        Some((WRITERS * APPENDS.div_ceil(3)) as u64),
        "every writer's appends to the shared stream"
    );
    let all = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    assert_eq!(all, seen, "read_all and the subscription agree");
    // Every claim ended with its transaction or its backend.
    let settled = async {
        loop {
            if live_claims(&store).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(STALL, settled)
        .await
        .unwrap_or_else(|_| panic!("a claim outlived its session"));
    let head = store.head().await.unwrap();
    let last = seen.last().map(|e| e.position);
    assert!(head >= last, "head {head:?} below the last event {last:?}");
    store.drop_schema().await.unwrap();
}
