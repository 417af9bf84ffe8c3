//! The order flow as three services, each with its own store, talking through a broker.
//!
//! ```text
//!  order service (store O)                 payment service (store P)
//!   Order aggregate, OrderProcessingSaga    PaymentService
//!   saga command ─► RemoteCommand ─► O ─► relay ─► payment-commands ─► CommandReceiver ─► P
//!   O ◄─ Importer ◄─ payments ◄──────────────────────────────── relay ◄─ PaymentProcessed
//!
//!                                          fulfilment service (store F)
//!   saga command ─► RemoteCommand ─► O ─► relay ─► fulfilment-commands ─► CommandReceiver ─► F
//!   O ◄─ Importer ◄─ fulfilment ◄────────────────────────────── relay ◄─ InventoryReserved,
//!                                                                        ShippingScheduled
//! ```
//!
//! Nothing is written twice to two places: a service writes only to its own store, and
//! the outbox relay takes what it wrote to the broker. Every step is idempotent by event
//! id, so at-least-once delivery has a once-only effect:
//!
//! - a saga command is recorded with the command's id as its event id ([`RemoteCommand`]);
//! - a service answers a command with an event whose id derives from the command's id
//!   (see [`crate::services`]), so a command delivered twice — say after the payment
//!   service was killed between taking the payment and acknowledging the command — is
//!   answered once;
//! - an answer is taken into the order service's store under its own id and stream
//!   ([`Importer`]), so a repeat is an idempotent re-append.

use std::collections::HashMap;
use std::sync::Arc;

use tidings::bus::{BoxFuture, EventHandler, HandlerError, current_cause};
use tidings::saga::{CommandEnvelope, CommandHandler};
use tidings::transport::TopicMap;
use tidings::{Enricher, EventAppender, ExpectedVersion, NewEvent, RecordedEvent, StreamId};

use crate::saga::{PROCESS_PAYMENT, REFUND_PAYMENT, RESERVE_INVENTORY, SCHEDULE_SHIPPING};

/// The topic the payment service takes its commands from.
pub const PAYMENT_COMMANDS: &str = "payment-commands";
/// The topic the inventory and shipping service takes its commands from.
pub const FULFILMENT_COMMANDS: &str = "fulfilment-commands";
/// The topic of what the payment service records.
pub const PAYMENTS: &str = "payments";
/// The topic of what the inventory and shipping service records.
pub const FULFILMENT: &str = "fulfilment";
/// The topic of what the order service records (other than commands).
pub const ORDERS: &str = "orders";

/// The source commands are recorded under.
pub const COMMAND_SOURCE: &str = "order-saga";

/// The order service's routes: each command to the service that carries it out, the rest
/// to [`ORDERS`].
pub fn order_topics() -> TopicMap {
    TopicMap::new(ORDERS)
        .route(PROCESS_PAYMENT, PAYMENT_COMMANDS)
        .route(REFUND_PAYMENT, PAYMENT_COMMANDS)
        .route(RESERVE_INVENTORY, FULFILMENT_COMMANDS)
        .route(SCHEDULE_SHIPPING, FULFILMENT_COMMANDS)
}

/// The payment service's routes: everything to [`PAYMENTS`].
pub fn payment_topics() -> TopicMap {
    TopicMap::new(PAYMENTS)
}

/// The inventory and shipping service's routes: everything to [`FULFILMENT`].
pub fn fulfilment_topics() -> TopicMap {
    TopicMap::new(FULFILMENT)
}

/// The stream a saga instance's commands are recorded in.
pub fn command_stream(instance: &str) -> Result<StreamId, HandlerError> {
    Ok(StreamId::new(&format!("command-{instance}"))?)
}

/// Sends a saga's command to another service: records it in this service's own store as
/// an event of the command's name, with the command's id as the event's id and the
/// envelope as its data. The outbox relay takes it to the broker.
#[derive(Debug, Clone)]
pub struct RemoteCommand<S> {
    store: S,
}

impl<S> RemoteCommand<S> {
    /// Records commands in `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

impl<S: EventAppender + 'static> CommandHandler for RemoteCommand<S> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let data = serde_json::to_value(command).map_err(HandlerError::from_error)?;
            let mut event = Enricher::new(COMMAND_SOURCE).enrich(
                NewEvent::new(command.command.name.clone(), data).with_id(command.command_id),
            )?;
            if let Some(cause) = current_cause() {
                cause.apply_to(&mut event.metadata);
            }
            self.store
                .append(
                    &command_stream(&command.instance)?,
                    ExpectedVersion::Any,
                    vec![event],
                )
                .await?;
            Ok(())
        })
    }
}

/// Carries out commands that arrive as events (recorded by a [`RemoteCommand`]): decodes
/// the envelope and calls the handler registered for the event's type.
#[derive(Default, Clone)]
pub struct CommandReceiver {
    handlers: HashMap<String, Arc<dyn CommandHandler>>,
}

impl std::fmt::Debug for CommandReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandReceiver")
            .field("commands", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CommandReceiver {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs commands named `name` with `handler`.
    pub fn on(mut self, name: &str, handler: Arc<dyn CommandHandler>) -> Self {
        self.handlers.insert(name.to_owned(), handler);
        self
    }

    /// Runs every (name, handler) pair given.
    pub fn with_all(
        self,
        handlers: impl IntoIterator<Item = (&'static str, Arc<dyn CommandHandler>)>,
    ) -> Self {
        handlers
            .into_iter()
            .fold(self, |receiver, (name, handler)| receiver.on(name, handler))
    }
}

impl EventHandler for CommandReceiver {
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(handler) = self.handlers.get(&event.event_type) else {
                return Err(HandlerError::new(format!(
                    "no handler for command {}",
                    event.event_type
                )));
            };
            let envelope: CommandEnvelope =
                event.data.deserialize().map_err(HandlerError::from_error)?;
            handler.handle(&envelope).await
        })
    }
}

/// Takes events recorded by other services into this service's store, under their own
/// streams and ids, so that this service's saga sees them. A repeat is an idempotent
/// re-append.
#[derive(Debug, Clone)]
pub struct Importer<S> {
    store: S,
}

impl<S> Importer<S> {
    /// Imports into `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

impl<S: EventAppender + 'static> EventHandler for Importer<S> {
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.store
                .append(
                    &event.stream,
                    ExpectedVersion::Any,
                    vec![event.event.clone()],
                )
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings::saga::Command;
    use tidings::{EventReader, InMemoryStore, ReadAll};

    fn envelope() -> CommandEnvelope {
        CommandEnvelope {
            command_id: uuid_from(7),
            saga: "order-processing".into(),
            instance: "order-1".into(),
            command: Command {
                name: PROCESS_PAYMENT.into(),
                payload: serde_json::json!({"orderId": "order-1", "amount": 5.0}).into(),
            },
        }
    }

    fn uuid_from(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    #[tokio::test]
    async fn a_command_crosses_as_an_event_once_and_comes_back_as_the_envelope() {
        let here = InMemoryStore::new();
        let remote = RemoteCommand::new(here.clone());
        remote.handle(&envelope()).await.unwrap();
        remote.handle(&envelope()).await.unwrap();
        let recorded = here.read_all(ReadAll::new(0, 10)).await.unwrap();
        assert_eq!(recorded.len(), 1, "a repeated command is recorded once");
        assert_eq!(recorded[0].event_id, envelope().command_id);
        assert_eq!(
            order_topics().topic_for(&recorded[0].event_type),
            PAYMENT_COMMANDS
        );

        let there = InMemoryStore::new();
        let receiver = CommandReceiver::new().with_all(crate::services(
            &there,
            &crate::ServiceConfig {
                payment_limit: 100.0,
                out_of_stock: vec![],
            },
        ));
        receiver.handle(&recorded[0]).await.unwrap();
        receiver.handle(&recorded[0]).await.unwrap();
        let answers = there.read_all(ReadAll::new(0, 10)).await.unwrap();
        assert_eq!(
            answers.len(),
            1,
            "a command delivered twice is answered once"
        );
        assert_eq!(answers[0].event_type, "PaymentProcessed");

        Importer::new(here.clone())
            .handle(&answers[0])
            .await
            .unwrap();
        Importer::new(here.clone())
            .handle(&answers[0])
            .await
            .unwrap();
        let all = here.read_all(ReadAll::new(0, 10)).await.unwrap();
        assert_eq!(all.len(), 2, "an import repeated is recorded once");
        assert_eq!(all[1].event_id, answers[0].event_id);
    }
}
