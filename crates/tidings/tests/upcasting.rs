//! An `Upcasting` store: it keeps the store contract, and whatever reads through it —
//! reads, subscriptions, projections, consumer groups — sees current schemas only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tidings::bus::{HandlerError, handler_fn};
use tidings::projection::{Projection, ProjectionRunner};
use tidings::store::Upcasting;
use tidings::{
    ConsumerGroup, Enricher, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter,
    InMemoryStore, NewEvent, ReadAll, RecordedEvent, Start, StoreError, StreamId, Upcaster,
    Upcasters,
};
use tidings_testkit::conformance;

/// `OrderCreated` 1.0 had `amount`; 2.0 has `total` and a currency.
fn upcasters() -> Upcasters {
    Upcasters::new()
        .with(Upcaster::new("OrderCreated", "1.0", "2.0", |mut data| {
            let amount = data
                .as_object_mut()
                .and_then(|o| o.remove("amount"))
                .ok_or("no amount")?;
            data["total"] = amount;
            data["currency"] = json!("EUR");
            Ok(data)
        }))
        .unwrap()
}

async fn append_v1(store: &impl EventAppender, stream: &str, data: serde_json::Value) {
    let e = Enricher::new("old-shop")
        .enrich(NewEvent::new("OrderCreated", data).with_version("1.0"))
        .unwrap();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![e],
        )
        .await
        .unwrap();
}

fn is_current(e: &RecordedEvent) -> bool {
    e.event_version == "2.0" && e.data.to_value()["currency"] == "EUR"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upcasting_store_conforms() {
    // The suite's own events are current (no upcaster matches them): the wrapper must
    // keep every rule of the contract while it reads through.
    let unrelated = || {
        Upcasters::new()
            .with(Upcaster::new("LegacyOnly", "0.1", "1.0", Ok))
            .unwrap()
    };
    conformance::run_all(|| async move { Upcasting::new(InMemoryStore::new(), unrelated()) }).await;
}

#[tokio::test]
async fn reads_and_subscriptions_see_current_schemas() {
    let raw = InMemoryStore::new();
    let store = Upcasting::new(raw.clone(), upcasters());
    append_v1(&store, "order-1", json!({"amount": 5})).await;
    // The log keeps what was written.
    assert_eq!(
        raw.read_all(ReadAll::new(0, 10)).await.unwrap()[0].event_version,
        "1.0"
    );
    let read = store.read_all(ReadAll::new(0, 10)).await.unwrap();
    assert!(is_current(&read[0]), "{:?}", read[0]);
    assert_eq!(read[0].data.to_value()["total"], 5);
    let mut live = Box::pin(store.subscribe_all(Start::Beginning, Filter::all()));
    assert!(is_current(&live.next().await.unwrap().unwrap()));
    append_v1(&store, "order-2", json!({"amount": 7})).await;
    let e = live.next().await.unwrap().unwrap();
    assert!(is_current(&e) && e.data.to_value()["total"] == 7);
}

#[tokio::test]
async fn an_event_no_upcaster_can_bring_forward_is_a_typed_error() {
    let store = Upcasting::new(InMemoryStore::new(), upcasters());
    append_v1(&store, "order-1", json!({"no": "amount"})).await;
    let err = store.read_all(ReadAll::new(0, 10)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Upcast { stream, revision: 0, .. } if stream.as_str() == "order-1"),
        "{err:?}"
    );
}

#[derive(Default)]
struct Totals(Vec<serde_json::Value>);

impl Projection for Totals {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if !is_current(event) {
            return Err(HandlerError::new("an old schema reached the projection"));
        }
        self.0.push(event.data.to_value()["total"].clone());
        Ok(())
    }
    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.0.clear();
        Ok(())
    }
}

#[tokio::test]
async fn projections_and_consumer_groups_see_current_schemas() {
    let store = Upcasting::new(InMemoryStore::new(), upcasters());
    for n in 0..3 {
        append_v1(&store, &format!("order-{n}"), json!({"amount": n})).await;
    }
    let mut runner = ProjectionRunner::new("totals", store.clone(), Totals::default());
    assert_eq!(runner.catch_up().await.unwrap(), 3);
    assert_eq!(runner.read_model().0, vec![json!(0), json!(1), json!(2)]);

    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let group = ConsumerGroup::builder("billing", store.clone())
        .start()
        .await
        .unwrap();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |e: RecordedEvent| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(is_current(&e));
                Ok::<(), HandlerError>(())
            }
        })
    };
    let member = group.join();
    let worker = tokio::spawn(async move { member.run(&handler).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while group.stats().acked < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the group stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    group.shutdown().await.unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![true, true, true]);
}
