//! The payment side of the flow, as event handlers.
//!
//! - [`PaymentGateway`] reacts to `OrderConfirmed` by charging the customer (a stand-in
//!   provider with a spending limit) and publishing `PaymentProcessed`.
//! - [`PaymentOutcomeHandler`] handles `PaymentProcessed`: it publishes
//!   `OrderPaymentConfirmed` or `OrderPaymentFailed`.
//!
//! Both publish through a [`Publisher`] while the dispatcher runs them, so what they
//! publish carries the handled event as its cause.

use tidings::bus::{BoxFuture, EventHandler, HandlerError, Publisher};
use tidings::{DomainEvent, EventAppender, EventReader, ExpectedVersion, RecordedEvent, StreamId};

use crate::events::{OrderEvent, PaymentEvent, PaymentStatus};

/// The stream of one payment.
pub fn payment_stream(payment_id: &str) -> Result<StreamId, tidings::StreamIdError> {
    StreamId::new(&format!("payment-{payment_id}"))
}

/// Charges confirmed orders: amounts up to the limit succeed, larger ones fail with
/// "Insufficient funds".
pub struct PaymentGateway<S> {
    publisher: Publisher<S>,
    limit: f64,
}

impl<S> PaymentGateway<S> {
    /// A gateway publishing through `publisher`, accepting payments up to `limit`.
    pub fn new(publisher: Publisher<S>, limit: f64) -> Self {
        Self { publisher, limit }
    }
}

impl<S> EventHandler for PaymentGateway<S>
where
    S: EventAppender + EventReader + Send + Sync + 'static,
{
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let OrderEvent::OrderConfirmed {
                order_id,
                total_amount,
                ..
            } = OrderEvent::from_event(event)?
            else {
                return Ok(());
            };
            let payment_id = format!("pay-{order_id}");
            let ok = total_amount <= self.limit;
            let processed = PaymentEvent::PaymentProcessed {
                payment_id: payment_id.clone(),
                order_id,
                amount: total_amount,
                status: if ok {
                    PaymentStatus::Successful
                } else {
                    PaymentStatus::Failed
                },
                failure_reason: (!ok).then(|| "Insufficient funds".to_owned()),
            };
            self.publisher
                .publish(
                    &payment_stream(&payment_id)?,
                    ExpectedVersion::NoStream,
                    processed.to_new_event()?,
                )
                .await?;
            Ok(())
        })
    }
}

/// Handles `PaymentProcessed`: publishes `OrderPaymentConfirmed` when the
/// payment succeeded and `OrderPaymentFailed` (with the provider's reason) when not.
pub struct PaymentOutcomeHandler<S> {
    publisher: Publisher<S>,
}

impl<S> PaymentOutcomeHandler<S> {
    /// A handler publishing through `publisher`.
    pub fn new(publisher: Publisher<S>) -> Self {
        Self { publisher }
    }
}

impl<S> EventHandler for PaymentOutcomeHandler<S>
where
    S: EventAppender + EventReader + Send + Sync + 'static,
{
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let PaymentEvent::PaymentProcessed {
                payment_id,
                order_id,
                status,
                failure_reason,
                ..
            } = PaymentEvent::from_event(event)?
            else {
                return Ok(());
            };
            let outcome = match status {
                PaymentStatus::Successful => PaymentEvent::OrderPaymentConfirmed {
                    order_id,
                    payment_id,
                },
                PaymentStatus::Failed => PaymentEvent::OrderPaymentFailed {
                    order_id,
                    payment_id,
                    reason: failure_reason,
                },
            };
            self.publisher
                .publish(
                    &event.stream,
                    ExpectedVersion::Exact(event.revision),
                    outcome.to_new_event()?,
                )
                .await?;
            Ok(())
        })
    }
}
