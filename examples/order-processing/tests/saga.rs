//! The order saga: the happy path and a failed payment, compensation, the payment timeout,
//! and restarts (state, pending timers and pending commands survive a new runtime).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use order_processing::saga::{INVENTORY_UNAVAILABLE, PAYMENT_FAILED, PAYMENT_TIMED_OUT};
use order_processing::{
    OrderProcessingSaga, SagaStatus, ServiceConfig, fulfilment_stream, order_saga,
};
use serde_json::{Value, json};
use tidings::bus::HandlerError;
use tidings::saga::{CommandEnvelope, SagaRuntime, SagaRuntimeBuilder, StepOutcome, command_fn};
use tidings::{
    Clock, Enricher, EventAppender, ExpectedVersion, InMemoryStore, ManualClock, NewEvent,
    RecordedEvent, StreamId,
};
use tidings_testkit::EventRecorder;

type Store = EventRecorder<InMemoryStore>;

fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_second(1_700_000_000).unwrap())
}

fn config() -> ServiceConfig {
    ServiceConfig {
        payment_limit: 1000.0,
        out_of_stock: vec!["product-sold-out".into()],
    }
}

/// Publishes as an event bus would: one event to a stream of its own.
async fn publish(store: &Store, stream: &str, event_type: &str, data: Value) -> RecordedEvent {
    let event = Enricher::new("test")
        .enrich(NewEvent::new(event_type, data))
        .unwrap();
    let id = event.event_id;
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap();
    store
        .recorded()
        .into_iter()
        .find(|e| e.event_id == id)
        .unwrap()
}

fn order_created(order_id: &str, items: Value, total: f64) -> Value {
    json!({"orderId": order_id, "customerId": "customer-456", "items": items, "totalAmount": total})
}

/// Mock services: command handlers that only record what they were sent.
#[derive(Clone, Default)]
struct MockServices(Arc<Mutex<Vec<CommandEnvelope>>>);

impl MockServices {
    fn sent(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.command.name.clone())
            .collect()
    }

    fn register(
        &self,
        builder: SagaRuntimeBuilder<Store, OrderProcessingSaga>,
    ) -> SagaRuntimeBuilder<Store, OrderProcessingSaga> {
        [
            "ProcessPayment",
            "RefundPayment",
            "ReserveInventory",
            "ScheduleShipping",
        ]
        .into_iter()
        .fold(builder, |b, name| {
            let log = Arc::clone(&self.0);
            b.command_handler(
                name,
                command_fn(move |c: CommandEnvelope| {
                    let log = Arc::clone(&log);
                    async move {
                        log.lock().unwrap().push(c);
                        Ok(())
                    }
                }),
            )
        })
    }
}

/// The business events recorded (system streams left out), in order.
fn business(recorder: &Store) -> Vec<String> {
    recorder
        .recorded()
        .iter()
        .filter(|e| !e.stream.as_str().starts_with('$'))
        .map(|e| e.event_type.clone())
        .collect()
}

#[tokio::test]
async fn should_complete_order_when_all_steps_succeed() {
    // Given
    let store = EventRecorder::wrap(InMemoryStore::new());
    let services = MockServices::default();
    let saga = services
        .register(SagaRuntime::builder(
            store.clone(),
            OrderProcessingSaga::default(),
        ))
        .build()
        .await
        .unwrap();
    let order_id = "order-123";

    // When
    publish(
        &store,
        order_id,
        "OrderCreated",
        order_created(order_id, json!([]), 100.0),
    )
    .await;
    saga.catch_up().await.unwrap();
    publish(
        &store,
        "payment-1",
        "PaymentProcessed",
        json!({"orderId": order_id, "status": "successful"}),
    )
    .await;
    saga.catch_up().await.unwrap();
    publish(
        &store,
        "inventory-1",
        "InventoryReserved",
        json!({"orderId": order_id, "status": "reserved"}),
    )
    .await;
    saga.catch_up().await.unwrap();
    publish(
        &store,
        "shipping-1",
        "ShippingScheduled",
        json!({"orderId": order_id}),
    )
    .await;
    saga.catch_up().await.unwrap();

    // Then
    store.expect_event("OrderCompleted", |e| {
        e.data.to_value()["orderId"] == order_id
    });
    store.expect_no_event("OrderCancelled");
    assert_eq!(
        services.sent(),
        ["ProcessPayment", "ReserveInventory", "ScheduleShipping"]
    );
    assert!(
        saga.live_instances().is_empty(),
        "a completed saga is cleaned up"
    );
    let instance = saga.instance(order_id).await.unwrap().unwrap();
    assert!(instance.is_completed());
    assert_eq!(instance.state().status, SagaStatus::Completed);
    assert!(instance.state().steps.all_completed());
}

#[tokio::test]
async fn should_cancel_order_when_payment_fails() {
    // Given
    let store = EventRecorder::wrap(InMemoryStore::new());
    let services = MockServices::default();
    let saga = services
        .register(SagaRuntime::builder(
            store.clone(),
            OrderProcessingSaga::default(),
        ))
        .build()
        .await
        .unwrap();
    let order_id = "order-123";

    // When
    publish(
        &store,
        order_id,
        "OrderCreated",
        order_created(order_id, json!([]), 100.0),
    )
    .await;
    publish(
        &store,
        "payment-1",
        "PaymentProcessed",
        json!({"orderId": order_id, "status": "failed", "failureReason": "Insufficient funds"}),
    )
    .await;
    saga.catch_up().await.unwrap();

    // Then
    store.expect_event("OrderCancelled", |e| {
        let data = e.data.to_value();
        data["orderId"] == order_id && data["reason"] == PAYMENT_FAILED
    });
    store.expect_no_event("OrderCompleted");
    assert_eq!(services.sent(), ["ProcessPayment"]);
    assert!(saga.live_instances().is_empty());
}

async fn service_runtime(
    store: &Store,
    clock: &ManualClock,
) -> SagaRuntime<Store, OrderProcessingSaga> {
    order_saga(store.clone(), OrderProcessingSaga::default(), &config())
        .clock(clock.clone())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_services_run_the_order_end_to_end_with_causation() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let saga = service_runtime(&store, &clock()).await;
    let items = json!([{"productId": "product-789", "quantity": 2, "price": 29.99}]);
    let created = publish(
        &store,
        "order-123",
        "OrderCreated",
        order_created("order-123", items, 59.98),
    )
    .await;
    saga.catch_up().await.unwrap();

    assert_eq!(
        business(&store),
        [
            "OrderCreated",
            "PaymentProcessed",
            "InventoryReserved",
            "ShippingScheduled",
            "OrderCompleted"
        ]
    );
    let paid = store.expect_event("PaymentProcessed", |e| {
        e.data.to_value()["status"] == "successful"
    });
    assert_eq!(
        paid[0].metadata.causation_id,
        Some(created.event_id.to_string())
    );
    let completed = store.expect_event("OrderCompleted", |e| {
        e.stream == fulfilment_stream("order-123").unwrap()
    });
    assert_eq!(
        completed[0].metadata.correlation_id,
        Some(created.event_id.to_string()),
        "the whole transaction shares the order's correlation id"
    );
}

#[tokio::test]
async fn unavailable_inventory_refunds_the_payment_then_cancels() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let saga = service_runtime(&store, &clock()).await;
    let items = json!([{"productId": "product-sold-out", "quantity": 1, "price": 40.0}]);
    publish(
        &store,
        "order-124",
        "OrderCreated",
        order_created("order-124", items, 40.0),
    )
    .await;
    saga.catch_up().await.unwrap();

    assert_eq!(
        business(&store),
        [
            "OrderCreated",
            "PaymentProcessed",
            "InventoryReserved",
            "PaymentRefunded",
            "OrderCancelled"
        ]
    );
    let reserved = store.expect_event("InventoryReserved", |e| {
        e.data.to_value()["status"] == "unavailable"
    });
    store.expect_event("PaymentRefunded", |e| {
        e.data.to_value()["amount"] == 40.0
            && e.metadata.causation_id == Some(reserved[0].event_id.to_string())
    });
    store.expect_event("OrderCancelled", |e| {
        e.data.to_value()["reason"] == INVENTORY_UNAVAILABLE
    });
    store.expect_no_event("ShippingScheduled");
    store.expect_no_event("OrderCompleted");
}

#[tokio::test]
async fn a_payment_over_the_limit_cancels_without_refund() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let saga = service_runtime(&store, &clock()).await;
    publish(
        &store,
        "order-125",
        "OrderCreated",
        order_created("order-125", json!([]), 5000.0),
    )
    .await;
    saga.catch_up().await.unwrap();
    assert_eq!(
        business(&store),
        ["OrderCreated", "PaymentProcessed", "OrderCancelled"]
    );
    store.expect_event("OrderCancelled", |e| {
        e.data.to_value()["reason"] == PAYMENT_FAILED
    });
    store.expect_no_event("PaymentRefunded");
}

/// A runtime whose payment service never answers.
async fn silent_payment_runtime(
    store: &Store,
    clock: &ManualClock,
) -> SagaRuntime<Store, OrderProcessingSaga> {
    MockServices::default()
        .register(SagaRuntime::builder(
            store.clone(),
            OrderProcessingSaga::default(),
        ))
        .clock(clock.clone())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unanswered_payment_times_out_and_cancels_the_order() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let saga = silent_payment_runtime(&store, &clock).await;
    publish(
        &store,
        "order-126",
        "OrderCreated",
        order_created("order-126", json!([]), 10.0),
    )
    .await;
    saga.catch_up().await.unwrap();
    assert_eq!(
        saga.next_due(),
        Some(clock.now() + jiff::SignedDuration::from_mins(15))
    );

    clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 0);
    store.expect_no_event("OrderCancelled");

    clock.advance(Duration::from_secs(60));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 1);
    store.expect_event("OrderCancelled", |e| {
        e.data.to_value()["reason"] == PAYMENT_TIMED_OUT
    });
    assert_eq!(
        saga.fire_due_timers().await.unwrap(),
        0,
        "a timer fires once"
    );
    assert!(saga.live_instances().is_empty());

    // A late answer finds the saga finished and changes nothing.
    publish(
        &store,
        "payment-late",
        "PaymentProcessed",
        json!({"orderId": "order-126", "status": "successful"}),
    )
    .await;
    saga.catch_up().await.unwrap();
    assert_eq!(
        business(&store),
        ["OrderCreated", "OrderCancelled", "PaymentProcessed"]
    );
}

#[tokio::test]
async fn a_payment_in_time_cancels_the_timer() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let saga = silent_payment_runtime(&store, &clock).await;
    publish(
        &store,
        "order-127",
        "OrderCreated",
        order_created("order-127", json!([]), 10.0),
    )
    .await;
    publish(
        &store,
        "payment-127",
        "PaymentProcessed",
        json!({"orderId": "order-127", "status": "successful"}),
    )
    .await;
    saga.catch_up().await.unwrap();
    assert_eq!(saga.next_due(), None);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 0);
    store.expect_no_event("OrderCancelled");
}

#[tokio::test]
async fn state_and_a_pending_timer_survive_a_restart() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let first = silent_payment_runtime(&store, &clock).await;
    publish(
        &store,
        "order-128",
        "OrderCreated",
        order_created("order-128", json!([]), 10.0),
    )
    .await;
    first.catch_up().await.unwrap();
    drop(first);

    // The timer came due while nothing ran.
    clock.advance(Duration::from_secs(20 * 60));
    let second = silent_payment_runtime(&store, &clock).await;
    assert_eq!(second.live_instances(), ["order-128"]);
    let instance = second.instance("order-128").await.unwrap().unwrap();
    assert_eq!(instance.state().customer_id, "customer-456");
    assert!(instance.timers().contains_key("payment"));
    assert_eq!(
        second.catch_up().await.unwrap(),
        0,
        "the checkpoint survived too"
    );

    assert_eq!(second.fire_due_timers().await.unwrap(), 1);
    store.expect_event("OrderCancelled", |e| {
        e.data.to_value()["reason"] == PAYMENT_TIMED_OUT
    });
    assert!(second.live_instances().is_empty());

    let third = silent_payment_runtime(&store, &clock).await;
    assert!(
        third.live_instances().is_empty(),
        "completed instances stay cleaned up"
    );
}

#[tokio::test]
async fn a_restart_resumes_an_order_mid_flight() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let first = silent_payment_runtime(&store, &clock).await;
    publish(
        &store,
        "order-129",
        "OrderCreated",
        order_created("order-129", json!([]), 10.0),
    )
    .await;
    publish(
        &store,
        "payment-129",
        "PaymentProcessed",
        json!({"orderId": "order-129", "status": "successful"}),
    )
    .await;
    first.catch_up().await.unwrap();
    drop(first);

    // The rest of the flow runs on a new runtime with the real services.
    let second = service_runtime(&store, &clock).await;
    publish(
        &store,
        "inventory-129",
        "InventoryReserved",
        json!({"orderId": "order-129", "status": "reserved"}),
    )
    .await;
    second.catch_up().await.unwrap();
    store.expect_event("OrderCompleted", |e| {
        e.data.to_value()["orderId"] == "order-129"
    });
}

#[tokio::test]
async fn commands_a_crash_left_pending_are_sent_once_by_the_next_runtime() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let calls = Arc::new(Mutex::new(0));
    let failing = {
        let calls = Arc::clone(&calls);
        command_fn(move |_c: CommandEnvelope| {
            *calls.lock().unwrap() += 1;
            async { Err(HandlerError::new("payment provider unreachable")) }
        })
    };
    let first = SagaRuntime::builder(store.clone(), OrderProcessingSaga::default())
        .clock(clock.clone())
        .command_handler("ProcessPayment", failing)
        .build()
        .await
        .unwrap();
    let created = publish(
        &store,
        "order-130",
        "OrderCreated",
        order_created("order-130", json!([]), 10.0),
    )
    .await;
    let err = first.handle_event(&created).await.unwrap_err();
    assert!(
        err.to_string().contains("payment provider unreachable"),
        "{err}"
    );
    assert_eq!(first.stalled_instances(), ["order-130"]);
    drop(first);

    let second = service_runtime(&store, &clock).await;
    assert!(
        second.stalled_instances().is_empty(),
        "recovery sent the pending command"
    );
    // Redelivered after the crash: recognised, not decided again.
    assert_eq!(
        second.handle_event(&created).await.unwrap(),
        StepOutcome::Duplicate {
            instance: "order-130".into()
        }
    );
    second.catch_up().await.unwrap();
    assert_eq!(
        business(&store),
        [
            "OrderCreated",
            "PaymentProcessed",
            "InventoryReserved",
            "ShippingScheduled",
            "OrderCompleted"
        ]
    );
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_command_done_twice_is_recorded_once() {
    // The command handler does its work and then reports a failure: the runtime sends
    // the same command again, and the service's answer, re-appended with the same id,
    // is recorded once.
    let store = EventRecorder::wrap(InMemoryStore::new());
    let payment = order_processing::PaymentService::new(store.clone(), 1000.0);
    let attempts = Arc::new(Mutex::new(0));
    let flaky = {
        let attempts = Arc::clone(&attempts);
        let payment = Arc::new(payment);
        command_fn(move |c: CommandEnvelope| {
            let attempts = Arc::clone(&attempts);
            let payment = Arc::clone(&payment);
            async move {
                tidings::saga::CommandHandler::handle(&*payment, &c).await?;
                let mut n = attempts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    return Err(HandlerError::new("connection reset after the charge"));
                }
                Ok(())
            }
        })
    };
    let saga = SagaRuntime::builder(store.clone(), OrderProcessingSaga::default())
        .command_handler("ProcessPayment", flaky)
        .command_handler("ReserveInventory", command_fn(|_c| async { Ok(()) }))
        .build()
        .await
        .unwrap();
    publish(
        &store,
        "order-131",
        "OrderCreated",
        order_created("order-131", json!([]), 10.0),
    )
    .await;
    assert!(saga.catch_up().await.is_err());
    assert_eq!(saga.flush_pending().await.unwrap(), 1);
    saga.catch_up().await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), 2);
    assert_eq!(business(&store), ["OrderCreated", "PaymentProcessed"]);
    let instance = saga.instance("order-131").await.unwrap().unwrap();
    assert!(instance.state().steps.payment_processed);
}

#[tokio::test(start_paused = true)]
async fn the_run_loop_follows_the_store_live() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let saga = Arc::new(
        order_saga(
            store.clone(),
            OrderProcessingSaga::new(Duration::from_secs(60)),
            &ServiceConfig {
                payment_limit: 1000.0,
                out_of_stock: vec![],
            },
        )
        .clock(clock.clone())
        .timer_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let saga = Arc::clone(&saga);
        tokio::spawn(async move {
            saga.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    publish(
        &store,
        "order-132",
        "OrderCreated",
        order_created("order-132", json!([]), 10.0),
    )
    .await;
    for _ in 0..100 {
        if store.check_event("OrderCompleted", |_| true).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.expect_event("OrderCompleted", |e| {
        e.data.to_value()["orderId"] == "order-132"
    });
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_run_loop_fires_timers_as_they_come_due() {
    let store = EventRecorder::wrap(InMemoryStore::new());
    let clock = clock();
    let saga = Arc::new(
        MockServices::default()
            .register(SagaRuntime::builder(
                store.clone(),
                OrderProcessingSaga::new(Duration::from_secs(60)),
            ))
            .clock(clock.clone())
            .timer_interval(Duration::from_millis(100))
            .build()
            .await
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let saga = Arc::clone(&saga);
        tokio::spawn(async move {
            saga.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    publish(
        &store,
        "order-133",
        "OrderCreated",
        order_created("order-133", json!([]), 10.0),
    )
    .await;
    for _ in 0..100 {
        if saga.next_due().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saga.next_due().is_some(), "the order was picked up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.expect_no_event("OrderCancelled");

    clock.advance(Duration::from_secs(61));
    for _ in 0..100 {
        if store.check_event("OrderCancelled", |_| true).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.expect_event("OrderCancelled", |e| {
        e.data.to_value()["reason"] == PAYMENT_TIMED_OUT
    });
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
