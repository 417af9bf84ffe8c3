//! The bus: publisher, dispatcher, middleware, in-process bus and automatic causation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidings::bus::{
    Dispatcher, HandlerError, InProcessBus, PublishError, Publisher, SubscriberMode, handler_fn,
};
use tidings::{
    Enricher, EventError, EventReader, ExpectedVersion, InMemoryStore, NewEvent, ReadAll,
    RecordedEvent, StoreError, StreamId,
};

fn recorded(event_type: &str) -> RecordedEvent {
    RecordedEvent {
        stream: StreamId::new("order-1").unwrap(),
        revision: 0,
        position: 0,
        recorded_at: jiff::Timestamp::UNIX_EPOCH,
        event: Enricher::new("test")
            .enrich(NewEvent::new(event_type, json!({"orderId": "order-1"})))
            .unwrap(),
    }
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

type Log = Arc<Mutex<Vec<String>>>;

fn logging(log: &Log, name: &'static str) -> impl tidings::bus::EventHandler {
    let log = log.clone();
    handler_fn(move |e: RecordedEvent| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(format!("{name}:{}", e.event_type));
            Ok(())
        }
    })
}

#[tokio::test]
async fn dispatcher_runs_every_handler_of_the_type_and_for_all_types() {
    let log: Log = Arc::default();
    let d = Dispatcher::new();
    d.on("OrderCreated", "a", logging(&log, "a"));
    d.on("OrderCreated", "b", logging(&log, "b"));
    d.on("OrderConfirmed", "c", logging(&log, "c"));
    d.on_all("audit", logging(&log, "audit"));
    assert_eq!(d.handler_count("OrderCreated"), 3);
    let report = d.dispatch(recorded("OrderCreated")).await;
    let names: Vec<_> = report.outcomes.iter().map(|o| o.handler.as_str()).collect();
    assert_eq!(names, ["a", "b", "audit"]);
    assert!(report.all_ok());
    let mut seen = log.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["a:OrderCreated", "audit:OrderCreated", "b:OrderCreated"]
    );
}

#[tokio::test]
async fn handlers_run_concurrently() {
    // Each handler waits for the other at a barrier: only concurrent handlers can finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let d = Dispatcher::new();
    for name in ["left", "right"] {
        let b = barrier.clone();
        d.on(
            "OrderCreated",
            name,
            handler_fn(move |_| {
                let b = b.clone();
                async move {
                    b.wait().await;
                    Ok(())
                }
            }),
        );
    }
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        d.dispatch(recorded("OrderCreated")),
    )
    .await
    .expect("handlers were not run concurrently");
    assert!(report.all_ok());
}

#[tokio::test]
async fn each_handler_gets_its_own_outcome_and_a_failure_stops_no_other() {
    let log: Log = Arc::default();
    let d = Dispatcher::new();
    d.on(
        "OrderCreated",
        "fails",
        handler_fn(|_| async { Err(HandlerError::new("inventory service down")) }),
    );
    d.on(
        "OrderCreated",
        "panics",
        handler_fn(|_| async { panic!("boom") }),
    );
    d.on("OrderCreated", "works", logging(&log, "works"));
    let report = d.dispatch(recorded("OrderCreated")).await;
    assert_eq!(report.outcomes.len(), 3);
    let by_name: HashMap<_, _> = report
        .outcomes
        .iter()
        .map(|o| (o.handler.as_str(), o.result.clone()))
        .collect();
    assert_eq!(
        by_name["fails"].as_ref().unwrap_err().message(),
        "inventory service down"
    );
    assert!(
        by_name["panics"]
            .as_ref()
            .unwrap_err()
            .message()
            .contains("boom")
    );
    assert!(by_name["works"].is_ok());
    assert_eq!(report.failures().count(), 2);
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// `A` → handler publishes `B` → handler publishes `C`.
fn chain_publisher() -> (Publisher<InMemoryStore>, Dispatcher, InMemoryStore) {
    let store = InMemoryStore::new();
    let dispatcher = Dispatcher::new();
    let publisher = Publisher::new(store.clone(), Enricher::new("svc"), dispatcher.clone());
    for (on, publish) in [("A", "B"), ("B", "C")] {
        let p = publisher.clone();
        dispatcher.on(
            on,
            format!("{on}-to-{publish}"),
            handler_fn(move |_| {
                let p = p.clone();
                async move {
                    p.publish(
                        &stream("chain"),
                        ExpectedVersion::Any,
                        NewEvent::new(publish, json!({})),
                    )
                    .await?;
                    Ok(())
                }
            }),
        );
    }
    (publisher, dispatcher, store)
}

#[tokio::test]
async fn events_published_while_handling_carry_causation_and_correlation() {
    let (publisher, _d, store) = chain_publisher();
    let published = publisher
        .publish(
            &stream("order-1"),
            ExpectedVersion::NoStream,
            NewEvent::new("A", json!({})).with_user_id("user-789"),
        )
        .await
        .unwrap();
    assert!(published.reports[0].all_ok());
    let all = store.all_events();
    let types: Vec<_> = all.iter().map(|e| e.event_type.as_str()).collect();
    // Dispatch is depth first: C is appended while A's handler still runs.
    assert_eq!(types, ["A", "B", "C"]);
    let (a, b, c) = (&all[0], &all[1], &all[2]);
    assert_eq!(a.metadata.correlation_id, Some(a.event_id.to_string()));
    assert_eq!(a.metadata.causation_id, None);
    assert_eq!(b.metadata.causation_id, Some(a.event_id.to_string()));
    assert_eq!(c.metadata.causation_id, Some(b.event_id.to_string()));
    for e in [b, c] {
        assert_eq!(e.metadata.correlation_id, a.metadata.correlation_id);
        assert_eq!(e.metadata.user_id.as_deref(), Some("user-789"));
    }
    let tree = store
        .read_correlation(&a.event_id.to_string(), 0, 10)
        .await
        .unwrap();
    assert_eq!(tree.len(), 3);
}

#[tokio::test]
async fn producer_set_correlation_and_causation_are_kept() {
    let (publisher, _d, store) = chain_publisher();
    publisher
        .publish(
            &stream("order-1"),
            ExpectedVersion::Any,
            NewEvent::new("A", json!({}))
                .with_correlation_id("corr-123")
                .with_causation_id("user-action-456"),
        )
        .await
        .unwrap();
    let all = store.all_events();
    assert_eq!(
        all[0].metadata.causation_id.as_deref(),
        Some("user-action-456")
    );
    assert!(
        all.iter()
            .all(|e| e.metadata.correlation_id.as_deref() == Some("corr-123"))
    );
}

#[tokio::test]
async fn a_refused_publish_appends_nothing_and_dispatches_nothing() {
    let (publisher, dispatcher, store) = chain_publisher();
    let log: Log = Arc::default();
    dispatcher.on_all("spy", logging(&log, "spy"));
    let s = stream("order-1");
    let no_type = NewEvent {
        data: Some(json!({}).into()),
        ..NewEvent::default()
    };
    let bad = [
        (no_type, "missing type"),
        (NewEvent::new("A", tidings::Payload::null()), "null data"),
        (NewEvent::new("A\u{7}", json!({})), "control character"),
    ];
    for (event, why) in bad {
        let err = publisher
            .publish_all(
                &s,
                ExpectedVersion::Any,
                vec![NewEvent::new("A", json!({})), event],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, PublishError::InvalidEvent { index: 1, .. }),
            "{why}: {err:?}"
        );
    }
    let err = publisher
        .publish(&s, ExpectedVersion::Exact(3), NewEvent::new("A", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PublishError::Store(StoreError::WrongExpectedVersion { actual: None, .. })
    ));
    let err = publisher
        .publish_all(&s, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert_eq!(err, PublishError::Store(StoreError::EmptyAppend));
    assert!(matches!(
        Enricher::new("s").enrich(NewEvent::new("", json!(1))),
        Err(EventError::MissingType)
    ));
    assert!(store.all_events().is_empty());
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn in_process_bus_awaits_sync_subscribers_in_order_and_counts_async_failures() {
    let log: Log = Arc::default();
    let bus = InProcessBus::new();
    for name in ["first", "second", "third"] {
        bus.subscribe(
            "OrderCreated",
            name,
            SubscriberMode::Sync,
            logging(&log, name),
        );
    }
    bus.subscribe(
        "OrderCreated",
        "sync-fails",
        SubscriberMode::Sync,
        handler_fn(|_| async { Err(HandlerError::new("nope")) }),
    );
    bus.subscribe_all("async-ok", SubscriberMode::Async, logging(&log, "async"));
    bus.subscribe(
        "OrderCreated",
        "async-fails",
        SubscriberMode::Async,
        handler_fn(|_| async { Err(HandlerError::new("smtp down")) }),
    );
    bus.subscribe(
        "OrderCreated",
        "async-panics",
        SubscriberMode::Async,
        handler_fn(|_| async { panic!("kaboom") }),
    );
    let report = bus.dispatch(recorded("OrderCreated")).await;
    let names: Vec<_> = report.outcomes.iter().map(|o| o.handler.as_str()).collect();
    assert_eq!(names, ["first", "second", "third", "sync-fails"]);
    assert_eq!(report.failures().count(), 1);
    assert_eq!(report.spawned, 3);
    // Synchronous subscribers are done, in order, when dispatch returns.
    assert_eq!(
        log.lock().unwrap()[..3],
        [
            "first:OrderCreated",
            "second:OrderCreated",
            "third:OrderCreated"
        ]
    );
    bus.settle().await;
    let stats = bus.async_stats();
    assert_eq!((stats.spawned, stats.succeeded, stats.failed), (3, 1, 2));
    assert!(
        InProcessBus::new()
            .dispatch(recorded("Nobody"))
            .await
            .unhandled()
    );
}

#[tokio::test]
async fn spawned_subscribers_also_publish_with_causation() {
    let store = InMemoryStore::new();
    let bus = InProcessBus::new();
    let publisher = Publisher::new(store.clone(), Enricher::new("svc"), bus.clone());
    let p = publisher.clone();
    bus.subscribe(
        "PaymentProcessed",
        "confirm",
        SubscriberMode::Async,
        handler_fn(move |e| {
            let p = p.clone();
            async move {
                let order = e.data.to_value()["orderId"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                p.publish(
                    &stream("payments"),
                    ExpectedVersion::Any,
                    NewEvent::new("OrderPaymentConfirmed", json!({"orderId": order})),
                )
                .await?;
                Ok(())
            }
        }),
    );
    let published = publisher
        .publish(
            &stream("payments"),
            ExpectedVersion::NoStream,
            NewEvent::new("PaymentProcessed", json!({"orderId": "order-1"}))
                .with_correlation_id("corr-1"),
        )
        .await
        .unwrap();
    bus.settle().await;
    let all = store.read_all(ReadAll::new(0, 10)).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].event_type, "OrderPaymentConfirmed");
    assert_eq!(
        all[1].metadata.causation_id,
        Some(published.events[0].event_id.to_string())
    );
    assert_eq!(all[1].metadata.correlation_id.as_deref(), Some("corr-1"));
}

#[tokio::test]
async fn a_publisher_is_a_store_whose_appends_are_dispatched() {
    use tidings::EventAppender;
    let (publisher, _d, store) = chain_publisher();
    let a = Enricher::new("svc")
        .enrich(NewEvent::new("A", json!({})))
        .unwrap();
    let r = publisher
        .append(&stream("x"), ExpectedVersion::NoStream, vec![a])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 0);
    assert_eq!(store.all_events().len(), 3);
    assert_eq!(
        publisher.stream_version(&stream("chain")).await.unwrap(),
        Some(1)
    );
}

#[test]
fn outside_a_tokio_runtime_async_subscribers_count_as_failed() {
    let log: Log = Arc::default();
    let bus = InProcessBus::new();
    bus.subscribe_all("sync", SubscriberMode::Sync, logging(&log, "sync"));
    bus.subscribe_all(
        "async",
        SubscriberMode::Async,
        handler_fn(|_| async { Ok(()) }),
    );
    let report = futures::executor::block_on(bus.dispatch(recorded("OrderCreated")));
    assert_eq!((report.outcomes.len(), report.spawned), (1, 0));
    assert_eq!(log.lock().unwrap().len(), 1);
    let stats = bus.async_stats();
    assert_eq!((stats.spawned, stats.failed), (1, 1));
}

#[tokio::test]
async fn a_retried_publish_is_stored_once_but_dispatched_again() {
    let (publisher, dispatcher, store) = chain_publisher();
    let log: Log = Arc::default();
    dispatcher.on("Retry", "spy", logging(&log, "spy"));
    let event = NewEvent::new("Retry", json!({})).with_id(uuid::Uuid::now_v7());
    for _ in 0..2 {
        let p = publisher
            .publish(&stream("retry"), ExpectedVersion::NoStream, event.clone())
            .await
            .unwrap();
        assert_eq!(p.append.next_expected_version, 0);
    }
    assert_eq!(store.all_events().len(), 1);
    assert_eq!(log.lock().unwrap().len(), 2);
}
