//! The order saga's decisions, given/when/then, without a store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::time::Duration;

use order_processing::saga::{
    INVENTORY_UNAVAILABLE, PAYMENT_TIMEOUT, PROCESS_PAYMENT, REFUND_PAYMENT, RESERVE_INVENTORY,
};
use order_processing::{OrderProcessingSaga, SagaStatus, fulfilment_stream};
use serde_json::json;
use tidings::NewEvent;
use tidings::saga::SagaCommand;
use tidings_testkit::SagaScenario;

fn created() -> serde_json::Value {
    json!({"orderId": "order-123", "customerId": "customer-456", "items": [], "totalAmount": 100})
}

#[test]
fn order_created_requests_payment_and_starts_the_payment_timer() {
    SagaScenario::new(OrderProcessingSaga::new(Duration::from_secs(600)))
        .when("OrderCreated", created())
        .then_expect_commands(&[
            SagaCommand::send(
                PROCESS_PAYMENT,
                json!({"orderId": "order-123", "customerId": "customer-456", "amount": 100.0}),
            ),
            SagaCommand::schedule_timeout(PAYMENT_TIMEOUT, Duration::from_secs(600)),
        ])
        .then_state(|s| assert_eq!(s.status, SagaStatus::Processing));
}

#[test]
fn a_successful_payment_reserves_inventory() {
    SagaScenario::new(OrderProcessingSaga::default())
        .given("OrderCreated", created())
        .when(
            "PaymentProcessed",
            json!({"orderId": "order-123", "status": "successful"}),
        )
        .then_expect_commands(&[
            SagaCommand::cancel_timeout(PAYMENT_TIMEOUT),
            SagaCommand::send(
                RESERVE_INVENTORY,
                json!({"orderId": "order-123", "items": []}),
            ),
        ])
        .then_state(|s| assert!(s.steps.payment_processed));
}

#[test]
fn unavailable_inventory_refunds_before_it_cancels() {
    SagaScenario::new(OrderProcessingSaga::default())
        .given("OrderCreated", created())
        .given(
            "PaymentProcessed",
            json!({"orderId": "order-123", "status": "successful"}),
        )
        .when(
            "InventoryReserved",
            json!({"orderId": "order-123", "status": "unavailable"}),
        )
        .then_expect_commands(&[
            SagaCommand::send(
                REFUND_PAYMENT,
                json!({"orderId": "order-123", "amount": 100.0}),
            ),
            SagaCommand::cancel_timeout(PAYMENT_TIMEOUT),
            SagaCommand::publish(
                fulfilment_stream("order-123").unwrap(),
                NewEvent::new(
                    "OrderCancelled",
                    json!({"orderId": "order-123", "reason": INVENTORY_UNAVAILABLE}),
                ),
            ),
            SagaCommand::Complete,
        ])
        .then_state(|s| {
            assert_eq!(s.status, SagaStatus::Cancelled);
            assert_eq!(s.cancel_reason.as_deref(), Some(INVENTORY_UNAVAILABLE));
        });
}

#[test]
fn shipping_alone_does_not_complete_the_order() {
    SagaScenario::new(OrderProcessingSaga::default())
        .given("OrderCreated", created())
        .when("ShippingScheduled", json!({"orderId": "order-123"}))
        .then_expect_commands(&[])
        .then_state(|s| assert_eq!(s.status, SagaStatus::Processing));
}

#[test]
fn the_payment_timer_after_payment_does_nothing() {
    SagaScenario::new(OrderProcessingSaga::default())
        .given("OrderCreated", created())
        .given(
            "PaymentProcessed",
            json!({"orderId": "order-123", "status": "successful"}),
        )
        .when_timeout(PAYMENT_TIMEOUT)
        .then_expect_commands(&[]);
}

#[test]
fn a_malformed_order_is_refused() {
    SagaScenario::new(OrderProcessingSaga::default())
        .when("OrderCreated", json!({"customerId": "customer-456"}))
        .then_expect_error(|e| assert!(e.to_string().contains("orderId"), "{e}"));
}
