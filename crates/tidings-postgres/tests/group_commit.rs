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
fn ops(rng: &mut Rng, round: usize, history: &mut Vec<Op>) -> Vec<Op> {
    let streams = ["g-0", "g-1", "g-2"];
    let mut out = Vec::new();
    for i in 0..24 {
        let roll = rng.below(10);
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
    let pg = fresh_store(&url).await;
    let memory = InMemoryStore::new();
    let seed = 0x5eed_0000_0000_0001u64;
    let mut rng = Rng(seed);
    let mut history = Vec::new();
    let mut written = BTreeSet::new();
    for round in 0..12 {
        let ops = ops(&mut rng, round, &mut history);
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
