//! The order service end to end: repository, dispatcher, payment handlers, recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use jiff::Timestamp;
use order_processing::{
    Order, OrderCommand, OrderError, OrderStatus, PaymentEvent, PaymentStatus, wire,
};
use tidings::aggregate::RepositoryError;
use tidings::{DomainEvent, ExpectedVersion, InMemoryStore, StreamId};
use tidings_testkit::EventRecorder;

fn order_stream(id: &str) -> StreamId {
    StreamId::new(id).unwrap()
}

async fn place_order(
    service: &order_processing::OrderService<EventRecorder<InMemoryStore>>,
    id: &str,
    price: f64,
) {
    let mut order = service.orders.load(&order_stream(id)).await.unwrap();
    order
        .execute(OrderCommand::Create {
            order_id: id.into(),
            customer_id: "customer-456".into(),
        })
        .unwrap();
    order
        .execute(OrderCommand::AddItem {
            product_id: "product-789".into(),
            quantity: 2,
            price,
        })
        .unwrap();
    service.orders.save(&mut order).await.unwrap();
    let mut order = service.orders.load(&order_stream(id)).await.unwrap();
    order
        .execute(OrderCommand::Confirm {
            confirmed_at: Timestamp::now(),
        })
        .unwrap();
    service.orders.save(&mut order).await.unwrap();
}

#[tokio::test]
async fn a_confirmed_order_is_paid_and_the_chain_is_causal() {
    let recorder = EventRecorder::wrap(InMemoryStore::new());
    let service = wire(recorder.clone(), 100.0);
    place_order(&service, "order-123", 29.99).await;

    recorder.expect_sequence(&[
        "OrderCreated",
        "ItemAddedToOrder",
        "OrderConfirmed",
        "PaymentProcessed",
        "OrderPaymentConfirmed",
    ]);
    let confirmed = recorder.expect_event("OrderConfirmed", |e| {
        e.data.to_value()["totalAmount"] == 59.98
    });
    let processed = recorder.expect_event("PaymentProcessed", |e| {
        e.metadata.causation_id == Some(confirmed[0].event_id.to_string())
    });
    let paid = recorder.expect_event("OrderPaymentConfirmed", |e| {
        e.metadata.causation_id == Some(processed[0].event_id.to_string())
    });
    assert_eq!(
        paid[0].metadata.correlation_id,
        confirmed[0].metadata.correlation_id
    );
    assert_eq!(
        PaymentEvent::from_event(&processed[0]).unwrap(),
        PaymentEvent::PaymentProcessed {
            payment_id: "pay-order-123".into(),
            order_id: "order-123".into(),
            amount: 59.98,
            status: PaymentStatus::Successful,
            failure_reason: None,
        }
    );
    recorder.expect_no_event("OrderPaymentFailed");

    let order = service
        .orders
        .load(&order_stream("order-123"))
        .await
        .unwrap();
    assert_eq!(order.state().status, Some(OrderStatus::Confirmed));
    assert_eq!(order.version(), Some(2));
}

#[tokio::test]
async fn a_payment_over_the_limit_fails_with_the_providers_reason() {
    let recorder = EventRecorder::wrap(InMemoryStore::new());
    let service = wire(recorder.clone(), 100.0);
    place_order(&service, "order-124", 500.0).await;
    recorder.expect_event("PaymentProcessed", |e| {
        e.data.to_value()["status"] == "failed"
    });
    recorder.expect_event("OrderPaymentFailed", |e| {
        e.data.to_value()["reason"] == "Insufficient funds"
    });
    recorder.expect_no_event("OrderPaymentConfirmed");
}

#[tokio::test]
async fn refused_commands_and_stale_saves_record_nothing() {
    let recorder = EventRecorder::wrap(InMemoryStore::new());
    let service = wire(recorder.clone(), 100.0);
    place_order(&service, "order-125", 1.0).await;
    recorder.clear();

    let mut order = service
        .orders
        .load(&order_stream("order-125"))
        .await
        .unwrap();
    let err = order
        .execute(OrderCommand::Confirm {
            confirmed_at: Timestamp::now(),
        })
        .unwrap_err();
    assert!(matches!(err, OrderError::NotDraft { .. }));
    assert_eq!(service.orders.save(&mut order).await.unwrap(), None);

    let mut stale = tidings::aggregate::AggregateRoot::<Order>::new(order_stream("order-125"));
    stale
        .execute(OrderCommand::Create {
            order_id: "order-125".into(),
            customer_id: "someone-else".into(),
        })
        .unwrap();
    let err = service.orders.save(&mut stale).await.unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Conflict {
            expected: ExpectedVersion::NoStream,
            actual: Some(2),
            ..
        }
    ));
    assert_eq!(stale.uncommitted().len(), 1);
    assert!(
        recorder.recorded().is_empty(),
        "{:?}",
        recorder.recorded_types()
    );
}
