//! What the in-memory transport tells `tracing`: a span per publish and per delivery,
//! the delivery's span recording how it was settled.
//!
//! One test in this binary, on one thread (see `bus_tracing.rs` for why).
#![cfg(feature = "testing")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::json;
use tidings::transport::{InMemoryTransport, Message, Subscription, Transport};
use tidings::{Enricher, NewEvent};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Recorded field names and values.
type FieldList = Vec<(String, String)>;

/// A `tracing` subscriber that keeps what it is told, for assertions.
#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, (String, FieldList)>>,
    events: Mutex<Vec<(Level, FieldList)>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (span.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    fn spans_named(&self, name: &str) -> Vec<Vec<(String, String)>> {
        self.spans
            .lock()
            .unwrap()
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
    fn events_at(&self, level: Level) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, f)| format!("{f:?}"))
            .collect()
    }
}

fn with_capture<F: std::future::Future>(f: F) -> (Arc<Capture>, F::Output) {
    let capture = Arc::new(Capture::default());
    let out = tracing::subscriber::with_default(capture.clone(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    });
    (capture, out)
}

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
