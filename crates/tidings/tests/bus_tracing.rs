//! What the bus tells `tracing`: a span per handler call with its duration, a warning for
//! an event without handler, the logging middleware's lines.
//!
//! `tracing` caches per call site whether anyone listens; a thread-local subscriber in one
//! test racing a thread without one can miss events. So this binary holds one test that
//! runs the checks in turn on one thread.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tidings::bus::{
    Dispatcher, FilterMiddleware, LoggingMiddleware, MetadataMiddleware, handler_fn,
};
use tidings::{Enricher, NewEvent, RecordedEvent, StreamId};

#[path = "support/capture.rs"]
mod capture;
use capture::with_capture;
use tracing::Level;

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

#[test]
fn the_bus_reports_through_tracing() {
    a_span_per_handler_records_its_duration_and_an_unhandled_event_warns();
    middleware_runs_in_order_before_handlers();
}

fn a_span_per_handler_records_its_duration_and_an_unhandled_event_warns() {
    let (capture, ()) = with_capture(async {
        let d = Dispatcher::new();
        d.on("OrderCreated", "notify", handler_fn(|_| async { Ok(()) }));
        d.dispatch(recorded("OrderCreated")).await;
        let report = d.dispatch(recorded("OrderShipped")).await;
        assert!(report.unhandled());
    });
    let spans = capture.spans_named("handler");
    assert_eq!(spans.len(), 1);
    let fields: HashMap<_, _> = spans[0].iter().cloned().collect();
    assert_eq!(fields["handler"], "notify");
    assert_eq!(fields["outcome"], "\"ok\"");
    assert!(fields["duration_ms"].parse::<f64>().is_ok());
    let warnings = capture.events_at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no handler registered for event type OrderShipped"));
}

fn middleware_runs_in_order_before_handlers() {
    let seen: Arc<Mutex<Vec<RecordedEvent>>> = Arc::default();
    let (capture, ()) = with_capture({
        let seen = seen.clone();
        async move {
            let d = Dispatcher::new();
            d.add_middleware(LoggingMiddleware::new());
            d.add_middleware(
                MetadataMiddleware::new()
                    .with("dispatchedBy", "worker-1")
                    .with("userId-ignored", "x"),
            );
            d.add_middleware(FilterMiddleware::new("no-tests", |e| {
                !e.stream.as_str().starts_with("test-")
            }));
            let s = seen.clone();
            d.on_all(
                "keep",
                handler_fn(move |e| {
                    let s = s.clone();
                    async move {
                        s.lock().unwrap().push(e);
                        Ok(())
                    }
                }),
            );
            let mut with_meta = recorded("OrderCreated");
            with_meta
                .event
                .metadata
                .extra
                .insert("dispatchedBy".into(), "producer".into());
            let report = d.dispatch(with_meta).await;
            assert_eq!(report.outcomes.len(), 1);
            let mut filtered = recorded("OrderCreated");
            filtered.stream = StreamId::new("test-1").unwrap();
            let report = d.dispatch(filtered).await;
            assert!(report.outcomes.is_empty());
            assert_eq!(
                report.stopped.as_ref().map(|s| s.0.as_str()),
                Some("no-tests")
            );
            assert!(!report.unhandled());
        }
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    // Set by the producer: kept. Added by the middleware: present.
    assert_eq!(seen[0].metadata.extra["dispatchedBy"], "producer");
    assert_eq!(seen[0].metadata.extra["userId-ignored"], "x");
    let infos = capture.events_at(Level::INFO);
    assert_eq!(infos.len(), 2, "the logging middleware logs both events");
    assert!(infos[0].contains("dispatching event"));
}
