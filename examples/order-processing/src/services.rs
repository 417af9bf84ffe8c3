//! In-process payment, inventory and shipping services: the command handlers the order
//! saga talks to, each answering with an event.
//!
//! | command            | service              | answers with (stream)                            |
//! |--------------------|----------------------|--------------------------------------------------|
//! | `ProcessPayment`   | [`PaymentService`]   | `PaymentProcessed` (`payment-pay-<orderId>`)     |
//! | `RefundPayment`    | [`PaymentService`]   | `PaymentRefunded` (`payment-pay-<orderId>`)      |
//! | `ReserveInventory` | [`InventoryService`] | `InventoryReserved` (`inventory-<orderId>`)      |
//! | `ScheduleShipping` | [`ShippingService`]  | `ShippingScheduled` (`shipping-<orderId>`)       |
//!
//! A command may arrive more than once (after a failure or a crash). Each service gives
//! its answer the id [`CommandEnvelope::event_id`] derives from the command's id, so a
//! repeat is an idempotent re-append: the store records the answer once.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tidings::bus::{BoxFuture, HandlerError, current_cause};
use tidings::saga::{CommandEnvelope, CommandHandler, SagaRuntime, SagaRuntimeBuilder};
use tidings::{
    DomainEvent, Enricher, EventAppender, EventStore, ExpectedVersion, NewEvent, StreamId,
};

use crate::events::{OrderItem, PaymentEvent, PaymentStatus};
use crate::payment::payment_stream;
use crate::saga::{
    OrderProcessingSaga, PROCESS_PAYMENT, REFUND_PAYMENT, RESERVE_INVENTORY, SCHEDULE_SHIPPING,
};

/// The source the services publish under.
pub const SERVICES_SOURCE: &str = "fulfilment-services";

/// Appends `event` to `stream` with the command's `n`th derived id, carrying the cause
/// the saga runtime runs the handler with.
async fn answer<S: EventAppender>(
    store: &S,
    command: &CommandEnvelope,
    stream: &StreamId,
    event: NewEvent,
) -> Result<(), HandlerError> {
    let mut event = Enricher::new(SERVICES_SOURCE).enrich(event.with_id(command.event_id(0)))?;
    if let Some(cause) = current_cause() {
        cause.apply_to(&mut event.metadata);
    }
    store
        .append(stream, ExpectedVersion::Any, vec![event])
        .await?;
    Ok(())
}

fn payload<T: for<'de> Deserialize<'de>>(command: &CommandEnvelope) -> Result<T, HandlerError> {
    command
        .command
        .payload
        .deserialize()
        .map_err(HandlerError::from_error)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentRequest {
    order_id: String,
    amount: f64,
}

/// Charges customers (amounts up to a limit succeed, larger ones fail with
/// "Insufficient funds") and refunds them.
#[derive(Debug, Clone)]
pub struct PaymentService<S> {
    store: S,
    limit: f64,
}

impl<S> PaymentService<S> {
    /// A service answering into `store`, accepting payments up to `limit`.
    pub fn new(store: S, limit: f64) -> Self {
        Self { store, limit }
    }
}

impl<S: EventAppender + 'static> CommandHandler for PaymentService<S> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request: PaymentRequest = payload(command)?;
            let payment_id = format!("pay-{}", request.order_id);
            let stream = payment_stream(&payment_id)?;
            let event = match command.command.name.as_str() {
                PROCESS_PAYMENT => {
                    let ok = request.amount <= self.limit;
                    PaymentEvent::PaymentProcessed {
                        payment_id,
                        order_id: request.order_id,
                        amount: request.amount,
                        status: if ok {
                            PaymentStatus::Successful
                        } else {
                            PaymentStatus::Failed
                        },
                        failure_reason: (!ok).then(|| "Insufficient funds".to_owned()),
                    }
                    .to_new_event()?
                }
                REFUND_PAYMENT => NewEvent::new(
                    "PaymentRefunded",
                    json!({
                        "paymentId": payment_id,
                        "orderId": request.order_id,
                        "amount": request.amount,
                    }),
                ),
                other => {
                    return Err(HandlerError::new(format!(
                        "the payment service does not handle {other}"
                    )));
                }
            };
            answer(&self.store, command, &stream, event).await
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveRequest {
    order_id: String,
    #[serde(default)]
    items: Vec<OrderItem>,
}

/// Reserves items: every product is in stock except the ones it was told are not.
#[derive(Debug, Clone)]
pub struct InventoryService<S> {
    store: S,
    out_of_stock: Arc<HashSet<String>>,
}

impl<S> InventoryService<S> {
    /// A service answering into `store`, with `out_of_stock` products unavailable.
    pub fn new(store: S, out_of_stock: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            store,
            out_of_stock: Arc::new(out_of_stock.into_iter().map(Into::into).collect()),
        }
    }
}

impl<S: EventAppender + 'static> CommandHandler for InventoryService<S> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request: ReserveRequest = payload(command)?;
            let missing: Vec<&str> = request
                .items
                .iter()
                .filter(|i| self.out_of_stock.contains(&i.product_id))
                .map(|i| i.product_id.as_str())
                .collect();
            let status = if missing.is_empty() {
                "reserved"
            } else {
                "unavailable"
            };
            let stream = StreamId::new(&format!("inventory-{}", request.order_id))?;
            let event = NewEvent::new(
                "InventoryReserved",
                json!({"orderId": request.order_id, "status": status, "unavailable": missing}),
            );
            answer(&self.store, command, &stream, event).await
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShippingRequest {
    order_id: String,
}

/// Schedules shipping for every order.
#[derive(Debug, Clone)]
pub struct ShippingService<S> {
    store: S,
}

impl<S> ShippingService<S> {
    /// A service answering into `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

impl<S: EventAppender + 'static> CommandHandler for ShippingService<S> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request: ShippingRequest = payload(command)?;
            let stream = StreamId::new(&format!("shipping-{}", request.order_id))?;
            let event = NewEvent::new(
                "ShippingScheduled",
                json!({"orderId": request.order_id, "shipmentId": format!("ship-{}", request.order_id)}),
            );
            answer(&self.store, command, &stream, event).await
        })
    }
}

/// How the in-process services behave.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// Payments above this fail.
    pub payment_limit: f64,
    /// Products that cannot be reserved.
    pub out_of_stock: Vec<String>,
}

/// The services as (command name, handler) pairs, to register on a saga runtime (or to
/// wrap first, as the simulator does to inject failures).
pub fn services<S: EventStore>(
    store: &S,
    config: &ServiceConfig,
) -> Vec<(&'static str, Arc<dyn CommandHandler>)> {
    let payment: Arc<dyn CommandHandler> =
        Arc::new(PaymentService::new(store.clone(), config.payment_limit));
    vec![
        (PROCESS_PAYMENT, Arc::clone(&payment)),
        (REFUND_PAYMENT, payment),
        (
            RESERVE_INVENTORY,
            Arc::new(InventoryService::new(
                store.clone(),
                config.out_of_stock.iter().cloned(),
            )),
        ),
        (
            SCHEDULE_SHIPPING,
            Arc::new(ShippingService::new(store.clone())),
        ),
    ]
}

/// A runtime builder for the order saga on `store` with the in-process services
/// registered: add a clock if you like, then `build().await`.
pub fn order_saga<S: EventStore>(
    store: S,
    saga: OrderProcessingSaga,
    config: &ServiceConfig,
) -> SagaRuntimeBuilder<S, OrderProcessingSaga> {
    services(&store, config).into_iter().fold(
        SagaRuntime::builder(store, saga),
        |builder, (name, handler)| builder.command_handler(name, handler),
    )
}
