//! The test kit: given/when/then scenarios and the event recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings::bus::{Dispatcher, InProcessBus, Publisher, handler_fn};
use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore, NewEvent, StreamId,
    Upcaster, Upcasters,
};
use tidings_testkit::{EventRecorder, Scenario};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "data")]
enum LampEvent {
    SwitchedOn { watts: u32 },
    SwitchedOff { reason: String },
}
tidings::domain_event!(LampEvent { SwitchedOn => "2.0", SwitchedOff => "1.0" });

#[derive(Debug, PartialEq, thiserror::Error)]
enum LampError {
    #[error("already on")]
    AlreadyOn,
    #[error("already off")]
    AlreadyOff,
}

#[derive(Default, Serialize, Deserialize)]
struct Lamp {
    on: bool,
    watts: u32,
}

enum Switch {
    On(u32),
    Off,
}

impl tidings::aggregate::Aggregate for Lamp {
    const TYPE: &'static str = "Lamp";
    type Command = Switch;
    type Event = LampEvent;
    type Error = LampError;
    fn handle(&self, c: Switch) -> Result<Vec<LampEvent>, LampError> {
        match (c, self.on) {
            (Switch::On(_), true) => Err(LampError::AlreadyOn),
            (Switch::Off, false) => Err(LampError::AlreadyOff),
            (Switch::On(watts), false) => Ok(vec![LampEvent::SwitchedOn { watts }]),
            (Switch::Off, true) => Ok(vec![LampEvent::SwitchedOff {
                reason: "asked".into(),
            }]),
        }
    }
    fn apply(&mut self, e: &LampEvent) {
        match e {
            LampEvent::SwitchedOn { watts } => {
                self.on = true;
                self.watts = *watts;
            }
            LampEvent::SwitchedOff { .. } => self.on = false,
        }
    }
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a failure");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn given_when_then_runs_the_real_aggregate() {
    Scenario::<Lamp>::new()
        .when(Switch::On(60))
        .then_expect_events([LampEvent::SwitchedOn { watts: 60 }])
        .then_state(|l| assert!(l.on));
    Scenario::<Lamp>::new()
        .given([LampEvent::SwitchedOn { watts: 60 }])
        .when(Switch::On(40))
        .then_expect_error(LampError::AlreadyOn);
    Scenario::<Lamp>::new()
        .given([
            LampEvent::SwitchedOn { watts: 60 },
            LampEvent::SwitchedOff { reason: "x".into() },
        ])
        .when(Switch::Off)
        .then_expect_error_matching(|e| matches!(e, LampError::AlreadyOff));
}

#[test]
fn given_old_stored_versions_are_upcast() {
    let upcasters = Upcasters::new()
        .with(Upcaster::new("SwitchedOn", "1.0", "2.0", |mut d| {
            d["watts"] = json!(d["power"].as_u64().unwrap_or(0));
            Ok(d)
        }))
        .unwrap();
    Scenario::<Lamp>::new()
        .with_upcasters(upcasters)
        .given_stored([NewEvent::new("SwitchedOn", json!({"power": 75})).with_version("1.0")])
        .when(Switch::Off)
        .then_expect_events([LampEvent::SwitchedOff {
            reason: "asked".into(),
        }]);
}

#[test]
fn scenario_failures_say_what_was_expected_and_what_happened() {
    let msg = panic_message(|| {
        Scenario::<Lamp>::new()
            .given([LampEvent::SwitchedOn { watts: 60 }])
            .when(Switch::Off)
            .then_expect_events([LampEvent::SwitchedOff {
                reason: "timer".into(),
            }]);
    });
    assert!(msg.contains("timer"), "{msg}");
    assert!(msg.contains("asked"), "{msg}");
    assert!(msg.contains("#0 SwitchedOn v2.0 {\"watts\":60}"), "{msg}");

    let msg = panic_message(|| {
        Scenario::<Lamp>::new()
            .when(Switch::On(1))
            .then_expect_error(LampError::AlreadyOn);
    });
    assert!(msg.contains("expected error AlreadyOn"), "{msg}");
    assert!(msg.contains("SwitchedOn"), "{msg}");

    let msg = panic_message(|| {
        Scenario::<Lamp>::new()
            .given_stored([NewEvent::new("SwitchedOn", json!({"power": 1})).with_version("1.0")])
            .when(Switch::Off);
    });
    assert!(msg.contains("cannot be loaded"), "{msg}");
}

fn new_event(t: &str, order: &str) -> tidings::Event {
    Enricher::new("order-service")
        .enrich(NewEvent::new(t, json!({"orderId": order})))
        .unwrap()
}

#[tokio::test]
async fn a_recorder_wraps_a_store() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let s = StreamId::new("order-123").unwrap();
    let events = vec![
        new_event("OrderCreated", "order-123"),
        new_event("ItemAddedToOrder", "order-123"),
    ];
    store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    // An idempotent re-append records nothing new.
    store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(store.recorded().len(), 2);
    let found = store.expect_event("OrderCreated", |e| {
        e.data.to_value()["orderId"] == "order-123"
    });
    assert_eq!((found.len(), found[0].revision), (1, 0));
    store.expect_sequence(&["OrderCreated", "ItemAddedToOrder"]);
    store.expect_sequence(&["OrderCreated"]);
    store.expect_no_event("OrderConfirmed");
    assert_eq!(
        store
            .read_stream(&s, Default::default())
            .await
            .unwrap()
            .len(),
        2
    );

    // A refused append records nothing.
    assert!(
        store
            .append(&s, ExpectedVersion::NoStream, vec![new_event("X", "o")])
            .await
            .is_err()
    );
    assert_eq!(store.recorded().len(), 2);
    store.clear();
    assert!(store.recorded().is_empty());
}

#[tokio::test]
async fn recorder_failures_show_the_expectation_and_everything_recorded() {
    let recorder = EventRecorder::new();
    let err = recorder.check_event("OrderCreated", |_| true).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected an event OrderCreated, but none was recorded")
    );
    assert!(err.to_string().contains("(nothing)"));

    let store = EventRecorder::wrap(InMemoryStore::new());
    let s = StreamId::new("order-9").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![
                new_event("OrderCreated", "order-9"),
                new_event("OrderConfirmed", "order-9"),
            ],
        )
        .await
        .unwrap();
    let err = store
        .check_event("OrderCreated", |e| {
            e.data.to_value()["orderId"] == "order-1"
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("matching the criteria"), "{text}");
    assert!(text.contains("recorded (2 events)"), "{text}");
    assert!(
        text.contains("#0 order-9 @0 OrderCreated v1.0 {\"orderId\":\"order-9\"}"),
        "{text}"
    );
    assert!(text.contains("#1 order-9 @1 OrderConfirmed"), "{text}");

    let err = store
        .check_sequence(&["OrderCreated", "PaymentProcessed"])
        .unwrap_err();
    assert!(
        err.expected
            .contains("#1 is OrderConfirmed where PaymentProcessed was expected")
    );
    let err = store
        .check_sequence(&["OrderCreated", "OrderConfirmed", "X"])
        .unwrap_err();
    assert!(err.expected.contains("only 2 were recorded"));

    let msg = panic_message(|| store.expect_sequence(&["OrderConfirmed"]));
    assert!(
        msg.contains("#0 is OrderCreated where OrderConfirmed was expected"),
        "{msg}"
    );
    assert!(msg.contains("#1 order-9 @1 OrderConfirmed"), "{msg}");
    let msg = panic_message(|| store.expect_no_event("OrderCreated"));
    assert!(msg.contains("expected no event OrderCreated"), "{msg}");
}

#[tokio::test]
async fn a_recorder_wraps_a_dispatcher_or_joins_a_bus() {
    let dispatcher = Dispatcher::new();
    let recorder = EventRecorder::wrap(dispatcher.clone());
    let publisher = Publisher::new(InMemoryStore::new(), Enricher::new("svc"), recorder.clone());
    let p = publisher.clone();
    dispatcher.on(
        "PaymentProcessed",
        "confirm",
        handler_fn(move |_| {
            let p = p.clone();
            async move {
                p.publish(
                    &StreamId::new("order-1").unwrap(),
                    ExpectedVersion::Any,
                    NewEvent::new("OrderPaymentConfirmed", json!({"orderId": "order-1"})),
                )
                .await?;
                Ok(())
            }
        }),
    );
    let paid = publisher
        .publish(
            &StreamId::new("payment-1").unwrap(),
            ExpectedVersion::NoStream,
            NewEvent::new(
                "PaymentProcessed",
                json!({"orderId": "order-1", "status": "successful"}),
            ),
        )
        .await
        .unwrap();
    recorder.expect_sequence(&["PaymentProcessed", "OrderPaymentConfirmed"]);
    recorder.expect_event("OrderPaymentConfirmed", |e| {
        e.metadata.causation_id == Some(paid.events[0].event_id.to_string())
    });

    let bus = InProcessBus::new();
    let on_bus = EventRecorder::new();
    bus.subscribe_all(
        "recorder",
        tidings::bus::SubscriberMode::Sync,
        on_bus.handler(),
    );
    let publisher = Publisher::new(InMemoryStore::new(), Enricher::new("svc"), bus);
    publisher
        .publish(
            &StreamId::new("user-1").unwrap(),
            ExpectedVersion::NoStream,
            NewEvent::new("UserRegistered", json!({"userId": "user-1"})),
        )
        .await
        .unwrap();
    on_bus.expect_sequence(&["UserRegistered"]);
}
