//! Cross-checks the CloudEvents mapping against the `cloudevents-sdk` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use tidings::event::cloudevents::{from_structured, to_structured};
use tidings::{Enricher, Event};

fn fixture() -> Event {
    serde_json::from_str(include_str!("../../../fixtures/order-created.json")).unwrap()
}

#[test]
fn sdk_reads_what_we_write() {
    let event = fixture();
    let json = to_structured(&event);
    let ce: cloudevents::Event = serde_json::from_value(json).expect("sdk parses our JSON");
    assert_eq!(ce.id(), event.event_id.to_string());
    assert_eq!(ce.ty(), "OrderCreated");
    assert_eq!(ce.source().to_string(), "order-service");
    assert_eq!(ce.specversion().to_string(), "1.0");
    assert_eq!(ce.datacontenttype(), Some("application/json"));
    assert_eq!(
        ce.time().map(|t| t.to_rfc3339()),
        Some("2024-01-15T10:30:00+00:00".to_owned())
    );
    let ext = |k: &str| ce.extension(k).map(|v| v.to_string());
    assert_eq!(ext("correlationid").as_deref(), Some("corr-123"));
    assert_eq!(ext("causationid").as_deref(), Some("user-action-456"));
    assert_eq!(ext("userid").as_deref(), Some("user-789"));
    assert_eq!(ext("eventversion").as_deref(), Some("1.0"));
    match ce.data() {
        Some(cloudevents::Data::Json(v)) => assert_eq!(v, &event.data.to_value()),
        other => panic!("expected JSON data, got {other:?}"),
    }
}

#[test]
fn we_read_what_the_sdk_writes() {
    let ce = EventBuilderV10::new()
        .id("0190f5a2-0000-7000-8000-000000000001")
        .source("https://example.com/orders")
        .ty("OrderCreated")
        .time("2024-01-15T10:30:00Z")
        .extension("correlationid", "corr-9")
        .extension("userid", "user-1")
        .extension("eventversion", "2.0")
        .extension("tenant", "acme")
        .data(
            "application/json",
            serde_json::json!({"orderId": "order-9"}),
        )
        .build()
        .unwrap();
    let json = serde_json::to_value(&ce).unwrap();
    let event = Enricher::new("fallback")
        .enrich(from_structured(json).unwrap())
        .unwrap();
    assert_eq!(
        event.event_id.to_string(),
        "0190f5a2-0000-7000-8000-000000000001"
    );
    assert_eq!(event.event_type, "OrderCreated");
    assert_eq!(event.source, "https://example.com/orders");
    assert_eq!(event.event_version, "2.0");
    assert_eq!(event.timestamp.to_string(), "2024-01-15T10:30:00Z");
    assert_eq!(event.metadata.correlation_id.as_deref(), Some("corr-9"));
    assert_eq!(event.metadata.user_id.as_deref(), Some("user-1"));
    assert_eq!(
        event.metadata.extra.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(event.data.to_value()["orderId"], "order-9");
}
