//! [`OrderProcessingSaga`]: OrderCreated → payment → inventory → shipping →
//! OrderCompleted, with compensation.
//!
//! | event                          | the saga                                            |
//! |--------------------------------|-----------------------------------------------------|
//! | `OrderCreated`                 | sends `ProcessPayment`, schedules the payment timeout |
//! | `PaymentProcessed` successful  | sends `ReserveInventory`                            |
//! | `PaymentProcessed` failed      | cancels: `OrderCancelled` "Payment failed"          |
//! | `InventoryReserved` reserved   | sends `ScheduleShipping`                            |
//! | `InventoryReserved` otherwise  | compensates: `RefundPayment`, then `OrderCancelled` "Inventory unavailable" |
//! | `ShippingScheduled`            | `OrderCompleted` once every step is done            |
//! | payment timeout                | cancels: `OrderCancelled` "Payment timed out"       |
//!
//! Cancelling and completing end the instance (it leaves the live set). What the
//! saga publishes goes to the order's fulfilment stream, [`fulfilment_stream`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings::bus::HandlerError;
use tidings::saga::{Saga, SagaCommand};
use tidings::{NewEvent, RecordedEvent, StreamId, StreamIdError};

use crate::events::OrderItem;

/// Why an order was cancelled when its payment failed.
pub const PAYMENT_FAILED: &str = "Payment failed";
/// Why an order was cancelled when its items could not be reserved.
pub const INVENTORY_UNAVAILABLE: &str = "Inventory unavailable";
/// Why an order was cancelled when no payment answer came in time.
pub const PAYMENT_TIMED_OUT: &str = "Payment timed out";
/// The id of the payment timer.
pub const PAYMENT_TIMEOUT: &str = "payment";

/// The command that charges the customer: `{orderId, customerId, amount}`.
pub const PROCESS_PAYMENT: &str = "ProcessPayment";
/// The command that refunds a payment (compensation): `{orderId, amount}`.
pub const REFUND_PAYMENT: &str = "RefundPayment";
/// The command that reserves an order's items: `{orderId, items}`.
pub const RESERVE_INVENTORY: &str = "ReserveInventory";
/// The command that schedules shipping: `{orderId}`.
pub const SCHEDULE_SHIPPING: &str = "ScheduleShipping";

/// The stream the saga publishes `OrderCompleted` and `OrderCancelled` to.
pub fn fulfilment_stream(order_id: &str) -> Result<StreamId, StreamIdError> {
    StreamId::new(&format!("fulfilment-{order_id}"))
}

/// Which steps of an order are done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    /// The payment went through.
    pub payment_processed: bool,
    /// The items are reserved.
    pub inventory_reserved: bool,
    /// Shipping is scheduled.
    pub shipping_scheduled: bool,
}

impl Steps {
    /// Whether payment, inventory and shipping are all done.
    pub fn all_completed(&self) -> bool {
        self.payment_processed && self.inventory_reserved && self.shipping_scheduled
    }
}

/// Where an order's saga stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    /// Steps are under way (`"processing"` in JSON).
    #[default]
    Processing,
    /// Every step is done.
    Completed,
    /// The order was cancelled.
    Cancelled,
}

/// One order's saga state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSagaState {
    /// The order.
    pub order_id: String,
    /// Its customer.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// What it costs.
    pub total_amount: f64,
    /// Where it stands.
    pub status: SagaStatus,
    /// Which steps are done.
    pub steps: Steps,
    /// Why it was cancelled, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreatedData {
    order_id: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    items: Vec<OrderItem>,
    #[serde(default)]
    total_amount: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusData {
    #[serde(default)]
    status: String,
}

/// The order saga: payment, then inventory, then shipping, with compensation.
#[derive(Debug, Clone)]
pub struct OrderProcessingSaga {
    payment_timeout: Duration,
}

impl Default for OrderProcessingSaga {
    fn default() -> Self {
        Self::new(Duration::from_secs(15 * 60))
    }
}

impl OrderProcessingSaga {
    /// A saga that cancels an order whose payment has not been answered within
    /// `payment_timeout`.
    pub fn new(payment_timeout: Duration) -> Self {
        Self { payment_timeout }
    }

    fn cancel(state: &mut OrderSagaState, reason: &str) -> Result<Vec<SagaCommand>, HandlerError> {
        state.status = SagaStatus::Cancelled;
        state.cancel_reason = Some(reason.to_owned());
        Ok(vec![
            SagaCommand::cancel_timeout(PAYMENT_TIMEOUT),
            SagaCommand::publish(
                fulfilment_stream(&state.order_id)?,
                NewEvent::new(
                    "OrderCancelled",
                    json!({"orderId": state.order_id, "reason": reason}),
                ),
            ),
            SagaCommand::Complete,
        ])
    }

    fn status(event: &RecordedEvent) -> Result<String, HandlerError> {
        let data: StatusData = event.data.deserialize().map_err(HandlerError::from_error)?;
        Ok(data.status)
    }
}

impl Saga for OrderProcessingSaga {
    const NAME: &'static str = "order-processing";
    const EVENT_TYPES: &'static [&'static str] = &[
        "OrderCreated",
        "PaymentProcessed",
        "InventoryReserved",
        "ShippingScheduled",
    ];
    type State = OrderSagaState;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.data.to_value()["orderId"].as_str().map(str::to_owned)
    }

    fn starts(&self, event: &RecordedEvent) -> bool {
        event.event_type == "OrderCreated"
    }

    fn handle(
        &self,
        state: &mut OrderSagaState,
        event: &RecordedEvent,
    ) -> Result<Vec<SagaCommand>, HandlerError> {
        match event.event_type.as_str() {
            "OrderCreated" => {
                if !state.order_id.is_empty() {
                    return Ok(vec![]);
                }
                let created: OrderCreatedData =
                    event.data.deserialize().map_err(HandlerError::from_error)?;
                *state = OrderSagaState {
                    order_id: created.order_id,
                    customer_id: created.customer_id,
                    items: created.items,
                    total_amount: created.total_amount,
                    ..OrderSagaState::default()
                };
                Ok(vec![
                    SagaCommand::send(
                        PROCESS_PAYMENT,
                        json!({
                            "orderId": state.order_id,
                            "customerId": state.customer_id,
                            "amount": state.total_amount,
                        }),
                    ),
                    SagaCommand::schedule_timeout(PAYMENT_TIMEOUT, self.payment_timeout),
                ])
            }
            "PaymentProcessed" if !state.steps.payment_processed => {
                if Self::status(event)? == "successful" {
                    state.steps.payment_processed = true;
                    Ok(vec![
                        SagaCommand::cancel_timeout(PAYMENT_TIMEOUT),
                        SagaCommand::send(
                            RESERVE_INVENTORY,
                            json!({"orderId": state.order_id, "items": state.items}),
                        ),
                    ])
                } else {
                    Self::cancel(state, PAYMENT_FAILED)
                }
            }
            "InventoryReserved" if !state.steps.inventory_reserved => {
                if Self::status(event)? == "reserved" {
                    state.steps.inventory_reserved = true;
                    Ok(vec![SagaCommand::send(
                        SCHEDULE_SHIPPING,
                        json!({"orderId": state.order_id}),
                    )])
                } else {
                    let mut commands = Vec::new();
                    if state.steps.payment_processed {
                        commands.push(SagaCommand::send(
                            REFUND_PAYMENT,
                            json!({"orderId": state.order_id, "amount": state.total_amount}),
                        ));
                    }
                    commands.extend(Self::cancel(state, INVENTORY_UNAVAILABLE)?);
                    Ok(commands)
                }
            }
            "ShippingScheduled" if !state.steps.shipping_scheduled => {
                state.steps.shipping_scheduled = true;
                if !state.steps.all_completed() {
                    return Ok(vec![]);
                }
                state.status = SagaStatus::Completed;
                Ok(vec![
                    SagaCommand::publish(
                        fulfilment_stream(&state.order_id)?,
                        NewEvent::new("OrderCompleted", json!({"orderId": state.order_id})),
                    ),
                    SagaCommand::Complete,
                ])
            }
            _ => Ok(vec![]),
        }
    }

    fn handle_timeout(
        &self,
        state: &mut OrderSagaState,
        timeout_id: &str,
    ) -> Result<Vec<SagaCommand>, HandlerError> {
        if timeout_id == PAYMENT_TIMEOUT && !state.steps.payment_processed {
            return Self::cancel(state, PAYMENT_TIMED_OUT);
        }
        Ok(vec![])
    }
}
