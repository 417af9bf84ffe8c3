//! What a consumer group tells `tracing` — a span per handler call, breaker transitions —
//! and that handlers run with their event as the cause of what they publish.
//!
//! One test in this binary, on one thread (see `bus_tracing.rs` for why).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use tidings::bus::{Dispatcher, HandlerError, Publisher, handler_fn};
use tidings::consumer::{BreakerState, CircuitBreaker, ConsumerGroup, Jitter, RetryPolicy};
use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, Filter, InMemoryStore, NewEvent,
    ReadStream, RecordedEvent, StreamId,
};

#[path = "support/capture.rs"]
mod capture;
use capture::with_capture;
use tracing::Level;

#[test]
fn handler_spans_breaker_transitions_and_causation() {
    let store = InMemoryStore::new();
    let (capture, ()) = with_capture({
        let store = store.clone();
        async move {
            let order = Enricher::new("shop")
                .enrich(NewEvent::new("OrderCreated", json!({"orderId": "order-1"})))
                .unwrap();
            let order_id = order.event_id;
            store
                .append(
                    &StreamId::new("order-1").unwrap(),
                    ExpectedVersion::Any,
                    vec![order],
                )
                .await
                .unwrap();
            let group = ConsumerGroup::builder("invoicing", store.clone())
                .filter(Filter::all().stream_prefix("order-"))
                .retry(
                    RetryPolicy::new(3)
                        .base(Duration::from_millis(5))
                        .jitter(Jitter::None),
                )
                .breaker(CircuitBreaker::new(1, Duration::from_secs(1)))
                .start()
                .await
                .unwrap();
            let publisher =
                Publisher::new(store.clone(), Enricher::new("billing"), Dispatcher::new());
            let calls = Arc::new(AtomicU32::new(0));
            let handler = {
                let calls = calls.clone();
                handler_fn(move |_e: RecordedEvent| {
                    let (publisher, calls) = (publisher.clone(), calls.clone());
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            publisher
                                .publish(
                                    &StreamId::new("invoice-1").unwrap(),
                                    ExpectedVersion::NoStream,
                                    NewEvent::new(
                                        "InvoiceRequested",
                                        json!({"orderId": "order-1"}),
                                    ),
                                )
                                .await?;
                            return Err(HandlerError::new("ledger unavailable"));
                        }
                        Ok(())
                    }
                })
            };
            let member = group.join();
            let worker = { tokio::spawn(async move { member.run(&handler).await }) };
            while group.stats().acked == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let stats = group.stats();
            assert_eq!(
                (stats.breaker, stats.breaker_opened),
                (BreakerState::Closed, 1)
            );
            group.shutdown().await.unwrap();
            worker.await.unwrap().unwrap();
            let invoice = store
                .read_stream(&StreamId::new("invoice-1").unwrap(), ReadStream::forward())
                .await
                .unwrap();
            assert_eq!(
                invoice[0].metadata.causation_id.as_deref(),
                Some(order_id.to_string().as_str())
            );
            assert_eq!(
                invoice[0].metadata.correlation_id.as_deref(),
                Some(order_id.to_string().as_str())
            );
        }
    });
    let spans = capture.spans_named("consumer_handler");
    assert_eq!(spans.len(), 2, "{spans:?}");
    let attempts: Vec<String> = spans
        .iter()
        .flat_map(|f| {
            f.iter()
                .filter(|(k, _)| k == "attempt")
                .map(|(_, v)| v.clone())
        })
        .collect();
    let mut attempts = attempts;
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);
    let mut outcomes: Vec<String> = spans
        .iter()
        .flat_map(|f| {
            f.iter()
                .filter(|(k, _)| k == "outcome")
                .map(|(_, v)| v.clone())
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["\"error\"", "\"ok\""]);
    let warnings = capture.events_at(Level::WARN);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("circuit breaker opened")),
        "{warnings:?}"
    );
    let infos = capture.events_at(Level::INFO);
    assert!(
        infos.iter().any(|i| i.contains("circuit breaker closed")),
        "{infos:?}"
    );
    assert!(
        infos
            .iter()
            .any(|i| i.contains("circuit breaker half-open")),
        "{infos:?}"
    );
}
