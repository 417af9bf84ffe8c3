//! Projections: an orders-per-customer read model, checkpoint resume, rebuild, live runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidings::bus::HandlerError;
use tidings::consumer::{CheckpointStore, InMemoryCheckpoints, StoreCheckpoints};
use tidings::projection::{CheckpointPolicy, Projection, ProjectionError, ProjectionRunner};
use tidings::{
    Enricher, EventAppender, ExpectedVersion, Filter, InMemoryStore, NewEvent, RecordedEvent,
    StreamId,
};
use tidings_testkit::seed::{TestRng, rounds, seed};

/// Orders per customer; shared so a "restarted" runner keeps the same (durable) model.
#[derive(Clone, Default)]
struct OrdersPerCustomer {
    orders: Arc<Mutex<BTreeMap<String, u32>>>,
    applied: Arc<Mutex<Vec<u64>>>,
}

impl OrdersPerCustomer {
    fn snapshot(&self) -> BTreeMap<String, u32> {
        self.orders.lock().unwrap().clone()
    }
}

impl Projection for OrdersPerCustomer {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.applied.lock().unwrap().push(event.position);
        let data = event.data.to_value();
        let customer = data["customerId"]
            .as_str()
            .ok_or_else(|| HandlerError::new("no customerId"))?
            .to_owned();
        let mut orders = self.orders.lock().unwrap();
        match event.event_type.as_str() {
            "OrderCreated" => *orders.entry(customer).or_default() += 1,
            "OrderCancelled" => {
                if let Some(n) = orders.get_mut(&customer) {
                    *n = n.saturating_sub(1);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.orders.lock().unwrap().clear();
        Ok(())
    }
}

async fn order(store: &InMemoryStore, n: u64, event_type: &str, customer: &str) {
    let e = Enricher::new("shop")
        .enrich(NewEvent::new(
            event_type,
            json!({ "orderId": format!("order-{n}"), "customerId": customer }),
        ))
        .unwrap();
    store
        .append(
            &StreamId::new(&format!("order-{n}")).unwrap(),
            ExpectedVersion::Any,
            vec![e],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn resumes_from_its_checkpoint_and_reapplies_only_what_followed_it() {
    let store = InMemoryStore::new();
    for n in 0..10 {
        order(
            &store,
            n,
            "OrderCreated",
            if n % 3 == 0 { "alice" } else { "bob" },
        )
        .await;
    }
    let checkpoints = InMemoryCheckpoints::new();
    let model = OrdersPerCustomer::default();
    let mut runner = ProjectionRunner::new("orders-per-customer", store.clone(), model.clone())
        .checkpoints(checkpoints.clone())
        .checkpoint_policy(CheckpointPolicy::EveryEvents(4));
    assert_eq!(runner.catch_up().await.unwrap(), 10);
    assert_eq!(
        model.snapshot(),
        BTreeMap::from([("alice".into(), 4), ("bob".into(), 6)])
    );
    // Saved after 4 and 8 events; the last two are not checkpointed yet.
    assert_eq!(
        checkpoints
            .load("orders-per-customer")
            .await
            .unwrap()
            .map(|c| c.next),
        Some(8)
    );
    drop(runner); // crash

    let mut runner = ProjectionRunner::new("orders-per-customer", store.clone(), model.clone())
        .checkpoints(checkpoints.clone())
        .checkpoint_policy(CheckpointPolicy::EveryEvents(4));
    model.applied.lock().unwrap().clear();
    assert_eq!(runner.catch_up().await.unwrap(), 2);
    assert_eq!(*model.applied.lock().unwrap(), [8, 9]);
    runner.save_checkpoint().await.unwrap();
    assert_eq!(
        checkpoints
            .load("orders-per-customer")
            .await
            .unwrap()
            .map(|c| c.next),
        Some(10)
    );
    assert_eq!(runner.catch_up().await.unwrap(), 0);
}

#[tokio::test]
async fn rebuild_resets_and_replays_everything() {
    let store = InMemoryStore::new();
    for n in 0..6 {
        order(&store, n, "OrderCreated", "alice").await;
    }
    order(&store, 2, "OrderCancelled", "alice").await;
    let model = OrdersPerCustomer::default();
    // Default: checkpoints in the store's own `$checkpoint-…` stream, per batch.
    let mut runner = ProjectionRunner::new("opc", store.clone(), model.clone());
    assert_eq!(runner.catch_up().await.unwrap(), 7);
    assert_eq!(model.snapshot()["alice"], 5);
    // The read model drifts (a bug, a lost table): rebuild it.
    model.orders.lock().unwrap().insert("alice".into(), 99);
    assert_eq!(runner.rebuild().await.unwrap(), 7);
    assert_eq!(model.snapshot()["alice"], 5);
    let saved = StoreCheckpoints::new(store.clone())
        .load("opc")
        .await
        .unwrap()
        .map(|c| c.next);
    assert!(
        saved.unwrap() >= 7,
        "checkpointed past the last order: {saved:?}"
    );
    // Nothing new: the checkpoint records themselves are never applied.
    assert_eq!(runner.catch_up().await.unwrap(), 0);
}

#[tokio::test]
async fn a_failing_apply_stops_before_the_event() {
    let store = InMemoryStore::new();
    order(&store, 0, "OrderCreated", "alice").await;
    let bad = Enricher::new("shop")
        .enrich(NewEvent::new(
            "OrderCreated",
            json!({ "orderId": "order-1" }),
        ))
        .unwrap();
    store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::Any,
            vec![bad],
        )
        .await
        .unwrap();
    let checkpoints = InMemoryCheckpoints::new();
    let mut runner = ProjectionRunner::new("opc", store.clone(), OrdersPerCustomer::default())
        .checkpoints(checkpoints.clone())
        .checkpoint_policy(CheckpointPolicy::EveryEvents(1));
    let err = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Apply { position: 1, stream, .. } if stream.as_str() == "order-1"),
        "{err}"
    );
    assert_eq!(
        checkpoints.load("opc").await.unwrap().map(|c| c.next),
        Some(1)
    );
}

#[tokio::test(start_paused = true)]
async fn runs_live_and_checkpoints_per_batch() {
    let store = InMemoryStore::new();
    order(&store, 0, "OrderCreated", "alice").await;
    let model = OrdersPerCustomer::default();
    let checkpoints = InMemoryCheckpoints::new();
    let mut runner = ProjectionRunner::new("live", store.clone(), model.clone())
        .checkpoints(checkpoints.clone())
        .filter(Filter::all().stream_prefix("order-"));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 1..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                order(&store, n, "OrderCreated", "bob").await;
            }
        })
    };
    let ran = tokio::time::timeout(Duration::from_secs(1), runner.run()).await;
    assert!(ran.is_err(), "run goes on until dropped");
    writer.await.unwrap();
    assert_eq!(
        model.snapshot(),
        BTreeMap::from([("alice".into(), 1), ("bob".into(), 4)])
    );
    assert_eq!(
        checkpoints.load("live").await.unwrap().map(|c| c.next),
        Some(5)
    );
}

/// An idempotent read model (keyed by position) that "crashes" once at a chosen position.
#[derive(Clone, Default)]
struct Ledger {
    rows: Arc<Mutex<BTreeMap<u64, String>>>,
    applied: Arc<Mutex<Vec<u64>>>,
    crash_at: Arc<Mutex<Option<u64>>>,
}

impl Projection for Ledger {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if self
            .crash_at
            .lock()
            .unwrap()
            .take_if(|p| *p == event.position)
            .is_some()
        {
            return Err(HandlerError::new("crash"));
        }
        self.applied.lock().unwrap().push(event.position);
        let customer = event.data.to_value()["customerId"].to_string();
        self.rows.lock().unwrap().insert(event.position, customer);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.rows.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn randomized_crashes_resume_from_the_checkpoint_and_lose_nothing() {
    let seed = seed("randomized_crashes_resume_from_the_checkpoint_and_lose_nothing");
    let mut rng = TestRng::new(seed);
    for round in 0..rounds(20) {
        let store = InMemoryStore::new();
        let customers = ["alice", "bob", "carol"];
        let events = 1 + rng.below(40);
        for n in 0..events {
            order(
                &store,
                n % 7,
                "OrderCreated",
                customers[rng.below(3) as usize],
            )
            .await;
        }
        let checkpoints = InMemoryCheckpoints::new();
        let policy = if rng.chance(30) {
            CheckpointPolicy::PerBatch
        } else {
            CheckpointPolicy::EveryEvents(1 + rng.below(5))
        };
        let ledger = Ledger::default();
        let mut expected_applied = Vec::new();
        loop {
            let from = checkpoints
                .load("ledger")
                .await
                .unwrap()
                .map_or(0, |c| c.next);
            let crash = rng.chance(60).then(|| rng.below(events));
            *ledger.crash_at.lock().unwrap() = crash.filter(|&p| p >= from);
            let mut runner = ProjectionRunner::new("ledger", store.clone(), ledger.clone())
                .checkpoints(checkpoints.clone())
                .checkpoint_policy(policy);
            let result = runner.catch_up().await;
            let stop = match ledger.crash_at.lock().unwrap().take() {
                // The crash position was never reached: an uninterrupted pass.
                Some(_) | None if result.is_ok() => {
                    expected_applied.extend(from..events);
                    true
                }
                _ => {
                    let Err(ProjectionError::Apply { position, .. }) = result else {
                        panic!("round {round}: {result:?}");
                    };
                    expected_applied.extend(from..position);
                    false
                }
            };
            // Resumed exactly at the checkpoint each time.
            assert_eq!(
                *ledger.applied.lock().unwrap(),
                expected_applied,
                "round {round}"
            );
            if stop {
                break;
            }
        }
        let rows = ledger.rows.lock().unwrap();
        assert_eq!(
            rows.keys().copied().collect::<Vec<_>>(),
            (0..events).collect::<Vec<_>>(),
            "round {round}"
        );
    }
}
