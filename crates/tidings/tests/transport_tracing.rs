//! What the in-memory transport tells `tracing`: a span per publish and per delivery,
//! the delivery's span recording how it was settled.
//!
//! One test in this binary, on one thread (see `bus_tracing.rs` for why).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use futures::StreamExt;
use serde_json::json;
use tidings::transport::{InMemoryTransport, Message, Subscription, Transport};
use tidings::{Enricher, NewEvent};

#[path = "support/capture.rs"]
mod capture;
use capture::with_capture;
use tracing::Level;

#[test]
fn publish_and_delivery_spans() {
    let event = Enricher::new("shop")
        .enrich(NewEvent::new("OrderCreated", json!({"orderId": "order-1"})))
        .unwrap();
    let id = event.event_id.to_string();
    let (capture, ()) = with_capture(async move {
        let bus = InMemoryTransport::new();
        let mut deliveries = bus
            .subscribe(Subscription::new("billing", "orders"))
            .await
            .unwrap();
        bus.publish(Message::new("orders", event)).await.unwrap();
        let d = deliveries.next().await.unwrap().unwrap();
        d.nack(std::time::Duration::ZERO).await.unwrap();
        let d = deliveries.next().await.unwrap().unwrap();
        d.ack().await.unwrap();
    });
    let has = |fields: &[(String, String)], k: &str, v: &str| {
        fields.iter().any(|(fk, fv)| fk == k && fv == v)
    };
    let publishes = capture.spans_named("transport.publish");
    assert_eq!(publishes.len(), 1, "{publishes:?}");
    assert!(has(&publishes[0], "event_id", &id) && has(&publishes[0], "topic", "orders"));
    let mut delivers = capture.spans_named("transport.deliver");
    delivers.sort_by_key(|f| {
        f.iter()
            .find(|(k, _)| k == "attempt")
            .map(|(_, v)| v.clone())
    });
    assert_eq!(delivers.len(), 2, "{delivers:?}");
    assert!(has(&delivers[0], "event_id", &id) && has(&delivers[0], "attempt", "1"));
    assert!(has(&delivers[0], "outcome", "\"nack\""), "{delivers:?}");
    assert!(has(&delivers[1], "attempt", "2") && has(&delivers[1], "outcome", "\"ack\""));
    assert!(capture.events_at(Level::ERROR).is_empty());
}
