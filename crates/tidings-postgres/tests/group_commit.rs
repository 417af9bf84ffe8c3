//! Appends queued together run in one transaction; each must be decided exactly as if
//! the appends had run one after another. The in-memory store, fed the same appends in
//! the same order, says what "one after another" answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::collections::BTreeSet;

use futures::future::join_all;
use serde_json::json;
use tidings::{
    AppendResult, Event, EventAppender, EventReader, ExpectedVersion, InMemoryStore, ReadAll,
    StoreError, StreamId,
};
use tidings_postgres::PgStore;
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_store};

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

type Op = (StreamId, ExpectedVersion, Vec<Event>);

/// A round of appends: fresh ones with every kind of expected version, repeats of earlier
/// ones (same ids, same version), and appends mixing recorded ids with new ones.
/// Without `repeats`, every append is fresh: each batch is decided by one statement.
fn ops(rng: &mut Rng, round: usize, history: &mut Vec<Op>, repeats: bool) -> Vec<Op> {
    let streams = ["g-0", "g-1", "g-2"];
    let mut out = Vec::new();
    for i in 0..24 {
        let roll = if repeats { rng.below(10) } else { 2 };
        let op = if roll == 0 && !history.is_empty() {
            history[rng.below(history.len() as u64) as usize].clone()
        } else if roll == 1 && !history.is_empty() {
            let (s, _, evs) = history[rng.below(history.len() as u64) as usize].clone();
            (
                s,
                ExpectedVersion::Any,
                vec![evs[0].clone(), event("Mixed", json!(i))],
            )
        } else {
            let s = stream(streams[rng.below(3) as usize]);
            let expected = match rng.below(5) {
                0 => ExpectedVersion::Any,
                1 => ExpectedVersion::NoStream,
                2 => ExpectedVersion::StreamExists,
                _ => ExpectedVersion::Exact(rng.below(round as u64 * 8 + 4)),
            };
            let n = 1 + rng.below(3) as usize;
            let evs = (0..n)
                .map(|k| event("Grouped", json!({ "round": round, "op": i, "k": k })))
                .collect();
            (s, expected, evs)
        };
        history.push(op.clone());
        out.push(op);
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn queued_appends_are_decided_in_order() {
    let Some(url) = database("queued_appends_are_decided_in_order").await else {
        return;
    };
    decided_in_order(&url, 0x5eed_0000_0000_0001, true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn queued_fresh_appends_are_decided_in_order_by_one_statement() {
    let Some(url) = database("queued_fresh_appends_are_decided_in_order_by_one_statement").await
    else {
        return;
    };
    decided_in_order(&url, 0x5eed_0000_0000_0002, false).await;
}

/// Rounds of appends issued together, each compared with the in-memory store's answer to
/// the same appends one after another.
async fn decided_in_order(url: &str, seed: u64, repeats: bool) {
    let pg = fresh_store(url).await;
    let memory = InMemoryStore::new();
    let mut rng = Rng(seed);
    let mut history = Vec::new();
    let mut written = BTreeSet::new();
    for round in 0..12 {
        let ops = ops(&mut rng, round, &mut history, repeats);
        let mut want: Vec<Result<AppendResult, StoreError>> = Vec::new();
        for (s, expected, evs) in &ops {
            want.push(memory.append(s, *expected, evs.clone()).await);
        }
        // Issued together: every append is queued before the writer runs.
        let got = join_all(
            ops.iter()
                .map(|(s, expected, evs)| pg.append(s, *expected, evs.clone())),
        )
        .await;
        written.extend(
            got.iter()
                .filter_map(|r| r.as_ref().ok().map(|r| r.first_position)),
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, w,
                "seed {seed:#x}, round {round}, append {i}: {:?}",
                ops[i]
            );
        }
    }
    let pg_log = pg
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"));
    let memory_log = memory.all_events();
    let key = |e: &tidings::RecordedEvent| (e.position, e.stream.clone(), e.revision, e.event_id);
    assert_eq!(
        pg_log.iter().map(key).collect::<Vec<_>>(),
        memory_log.iter().map(key).collect::<Vec<_>>(),
        "the logs differ"
    );
    assert!(
        pg_log.len() > 50,
        "the rounds wrote too little to mean much"
    );
    // Events of one transaction share its commit time: fewer distinct times than
    // appends that wrote shows appends were grouped (deterministic on a current-thread
    // runtime, where the writer runs only after every append of a round is queued).
    let transactions: BTreeSet<_> = pg_log.iter().map(|e| e.recorded_at).collect();
    assert!(
        transactions.len() * 2 <= written.len(),
        "{} transactions for {} appends: appends were not grouped",
        transactions.len(),
        written.len()
    );
    pg.drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema: {e}"));
}

/// Starts a transaction on its own connection that creates the row of stream `name`, as
/// a concurrent append does before it commits.
async fn create_stream_uncommitted(
    pg: &PgStore,
    name: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pg.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
         VALUES ($1, 0, 0, 0)",
    )
    .bind(name)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Asserts `answer` is a refused version check that found revision 0.
fn refused_at_revision_0(answer: &Result<AppendResult, StoreError>) {
    assert!(
        matches!(
            answer,
            Err(StoreError::WrongExpectedVersion {
                actual: Some(0),
                ..
            })
        ),
        "{answer:?}"
    );
}

/// Waits until some session of the database waits for a lock.
async fn someone_waits_for_a_lock(pg: &PgStore) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no session waited for a lock");
}

// On one thread, both appends below are queued before the store's writer runs: they go
// to the database as one batch.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_whose_new_stream_is_created_meanwhile_writes_nothing() {
    let Some(url) = database("a_batch_whose_new_stream_is_created_meanwhile_writes_nothing").await
    else {
        return;
    };
    let pg = fresh_store(&url).await;
    let other = create_stream_uncommitted(&pg, "race-1").await;
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let pool = pg.pool().clone();
    let call = tokio::spawn(async move {
        sqlx::query(
            "SELECT outcome FROM tidings_append_group(false, '{race-1,calm-1}',
                 '{no-stream,no-stream}', '{0,0}', '{1,1}', '{}', '{calm-1,race-1}',
                 '{1,2}', '{0,0}', $1, '{T,T}', '{1,1}',
                 '{0,0}', '{s,s}', '{\"{}\",\"{}\"}', '{NULL,NULL}', '{NULL,NULL}',
                 '{NULL,NULL}', '{NULL,NULL}')",
        )
        .bind(&ids[..])
        .fetch_one(&pool)
        .await
    });
    someone_waits_for_a_lock(&pg).await;
    other.commit().await.unwrap();
    let err = call.await.unwrap().expect_err("the statement must fail");
    let constraint = err.as_database_error().and_then(|d| d.constraint());
    assert_eq!(constraint, Some("tidings_streams_pkey"), "{err}");
    let calm: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tidings_streams WHERE name = 'calm-1'")
            .fetch_one(pg.pool())
            .await
            .unwrap();
    assert_eq!(calm, 0, "the batch's other new stream was created");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings_events")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(events, 0, "the batch wrote events");
    assert_eq!(common::live_claims(&pg).await, 0);

    // Through the store: the batch is decided again, and sees the stream that exists now.
    let other = create_stream_uncommitted(&pg, "race-2").await;
    let appends = {
        let pg = pg.clone();
        tokio::spawn(async move {
            let race = stream("race-2");
            let calm = stream("calm-2");
            let race_events = vec![event("Raced", json!(1))];
            let calm_events = vec![event("Calm", json!(2))];
            join_all([
                pg.append(&race, ExpectedVersion::NoStream, race_events),
                pg.append(&calm, ExpectedVersion::NoStream, calm_events),
            ])
            .await
        })
    };
    someone_waits_for_a_lock(&pg).await;
    other.commit().await.unwrap();
    let answers = appends.await.unwrap();
    refused_at_revision_0(&answers[0]);
    let calm = answers[1].as_ref().expect("the other append stands");
    assert_eq!(calm.first_revision, 0);
    let log = pg.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].stream.as_str(), "calm-2");

    // A stream expected to be new that exists is refused without a claim: the next
    // append's position follows the last one written, with no gap.
    let answers = join_all([
        pg.append(
            &stream("calm-2"),
            ExpectedVersion::NoStream,
            vec![event("Again", json!(3))],
        ),
        pg.append(
            &stream("calm-3"),
            ExpectedVersion::NoStream,
            vec![event("Calm", json!(4))],
        ),
    ])
    .await;
    refused_at_revision_0(&answers[0]);
    let calm3 = answers[1].as_ref().expect("the other append stands");
    assert_eq!(calm3.first_position, log[0].position + 1);
    pg.drop_schema().await.unwrap();
}
