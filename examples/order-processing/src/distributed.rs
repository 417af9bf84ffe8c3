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
//!   (see [`mod@crate::services`]), so a command delivered twice — say after the payment
//!   service was killed between taking the payment and acknowledging the command — is
//!   answered once;
//! - an answer is taken into the order service's store under its own id and stream
//!   ([`Importer`]), so a repeat is an idempotent re-append.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use tidings::bus::{BoxFuture, EventHandler, HandlerError, current_cause};
use tidings::consumer::{BrokerConsumer, OutboxRelay, RetryPolicy};
use tidings::saga::{CommandEnvelope, CommandHandler, SagaRuntime};
use tidings::transport::{Subscription, TopicMap, Transport};
use tidings::{
    Enricher, EventAppender, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId,
};

use crate::saga::{
    OrderProcessingSaga, PROCESS_PAYMENT, REFUND_PAYMENT, RESERVE_INVENTORY, SCHEDULE_SHIPPING,
};
use crate::services::{InventoryService, PaymentService, ServiceConfig, ShippingService};

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

/// Which of the three services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Orders and the order saga.
    Order,
    /// Payments.
    Payment,
    /// Inventory and shipping.
    Fulfilment,
}

impl Role {
    /// Every role, in the order the demo starts them.
    pub const ALL: [Role; 3] = [Role::Order, Role::Payment, Role::Fulfilment];

    /// The role's name: `order`, `payment` or `fulfilment`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Order => "order",
            Role::Payment => "payment",
            Role::Fulfilment => "fulfilment",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The names one run uses on the broker — topics and consumer groups carry the run's
/// id — so that runs sharing a broker never see each other's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    run: String,
}

impl Names {
    /// Names for run `run` (letters, digits, `-` and `_`).
    pub fn new(run: impl Into<String>) -> Self {
        Self { run: run.into() }
    }

    /// The run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The run's topic for `base` (one of the topic constants of this module).
    pub fn topic(&self, base: &str) -> String {
        format!("{base}-{}", self.run)
    }

    /// Where a role's relay sends what its service records.
    pub fn routes(&self, role: Role) -> TopicMap {
        let base = match role {
            Role::Order => order_topics(),
            Role::Payment => payment_topics(),
            Role::Fulfilment => fulfilment_topics(),
        };
        let mut map = TopicMap::new(self.topic(base.default_topic()));
        for t in [
            PROCESS_PAYMENT,
            REFUND_PAYMENT,
            RESERVE_INVENTORY,
            SCHEDULE_SHIPPING,
        ] {
            if base.topic_for(t) != base.default_topic() {
                map = map.route(t, self.topic(base.topic_for(t)));
            }
        }
        map
    }

    /// The consumer group a role's service reads with, and its topics.
    pub fn subscription(&self, role: Role) -> Subscription {
        let group = format!("{}-service-{}", role.name(), self.run);
        match role {
            Role::Order => {
                Subscription::new(group, self.topic(PAYMENTS)).topic(self.topic(FULFILMENT))
            }
            Role::Payment => Subscription::new(group, self.topic(PAYMENT_COMMANDS)),
            Role::Fulfilment => Subscription::new(group, self.topic(FULFILMENT_COMMANDS)),
        }
    }
}

/// Creates the run's three consumer groups on the broker. Call it once before any
/// service starts: a group receives only what is published after it exists, and the
/// services start in any order.
pub async fn declare_groups<T: Transport>(
    transport: &T,
    names: &Names,
) -> Result<(), ServiceError> {
    for role in Role::ALL {
        drop(transport.subscribe(names.subscription(role)).await?);
    }
    Ok(())
}

/// Why a service stopped.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Wraps a service's command handler (to observe or slow it, as a test or the demo does).
pub type Wrap = Arc<dyn Fn(Arc<dyn CommandHandler>) -> Arc<dyn CommandHandler> + Send + Sync>;

/// Runs one service on its own `store` until `shutdown` completes: an outbox relay from
/// the store to `transport`, a broker consumer for the role's commands or answers, and
/// for the order role the order saga. `wrap` wraps the role's command handlers.
pub async fn run_service<S, T>(
    role: Role,
    names: &Names,
    store: S,
    transport: T,
    config: &ServiceConfig,
    wrap: Option<Wrap>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServiceError>
where
    S: EventStore,
    T: Transport + Clone + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };
    let relay = OutboxRelay::builder("demo", store.clone(), transport.clone())
        .topics(names.routes(role))
        .build()?;
    let relay_task = tokio::spawn({
        let stop = stop();
        async move { relay.run(stop).await.map(|_| ()) }
    });
    let wrap = |h: Arc<dyn CommandHandler>| match &wrap {
        Some(w) => w(h),
        None => h,
    };
    let handler: Arc<dyn EventHandler> = match role {
        Role::Order => Arc::new(Importer::new(store.clone())),
        Role::Payment => {
            let payment = wrap(Arc::new(PaymentService::new(
                store.clone(),
                config.payment_limit,
            )));
            Arc::new(
                CommandReceiver::new()
                    .on(PROCESS_PAYMENT, Arc::clone(&payment))
                    .on(REFUND_PAYMENT, payment),
            )
        }
        Role::Fulfilment => Arc::new(
            CommandReceiver::new()
                .on(
                    RESERVE_INVENTORY,
                    wrap(Arc::new(InventoryService::new(
                        store.clone(),
                        config.out_of_stock.iter().cloned(),
                    ))),
                )
                .on(
                    SCHEDULE_SHIPPING,
                    wrap(Arc::new(ShippingService::new(store.clone()))),
                ),
        ),
    };
    let consumer = BrokerConsumer::builder(transport, names.subscription(role), handler)
        .retry(RetryPolicy::default())
        .build();
    let consumer_task = tokio::spawn({
        let stop = stop();
        async move { consumer.run(stop).await }
    });
    let saga_task = if role == Role::Order {
        let remote: Arc<dyn CommandHandler> = Arc::new(RemoteCommand::new(store.clone()));
        let runtime = [
            PROCESS_PAYMENT,
            REFUND_PAYMENT,
            RESERVE_INVENTORY,
            SCHEDULE_SHIPPING,
        ]
        .into_iter()
        .fold(
            SagaRuntime::builder(store.clone(), OrderProcessingSaga::default()),
            |b, name| b.command_handler(name, Arc::clone(&remote)),
        )
        .build()
        .await?;
        let stop = stop();
        Some(tokio::spawn(async move { runtime.run(stop).await }))
    } else {
        None
    };
    shutdown.await;
    let _ = stop_tx.send(true);
    relay_task.await??;
    consumer_task.await??;
    if let Some(saga) = saga_task {
        saga.await??;
    }
    Ok(())
}

/// The demo's orders: order id, items and total. The second costs more than the demo's
/// payment limit, so its payment fails and the saga cancels it.
pub fn demo_orders(names: &Names) -> Vec<(String, serde_json::Value, f64)> {
    vec![
        (
            format!("order-123-{}", names.run()),
            json!([
                {"productId": "product-789", "quantity": 2, "price": 29.99},
                {"productId": "product-790", "quantity": 1, "price": 15.5}
            ]),
            75.48,
        ),
        (
            format!("order-124-{}", names.run()),
            json!([{"productId": "product-555", "quantity": 1, "price": 450.0}]),
            450.0,
        ),
    ]
}

/// Places `orders` in the order service's `store`: one `OrderCreated` each, in the
/// order's own stream. Placing again is idempotent (the ids derive from the order ids).
pub async fn place_orders<S: EventAppender>(
    store: &S,
    orders: &[(String, serde_json::Value, f64)],
) -> Result<(), ServiceError> {
    for (order_id, items, total) in orders {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, order_id.as_bytes());
        let event = Enricher::new(crate::SERVICE).enrich(
            NewEvent::new(
                "OrderCreated",
                json!({
                    "orderId": order_id,
                    "customerId": "customer-456",
                    "items": items,
                    "totalAmount": total,
                    "status": "draft",
                    "currency": "EUR",
                }),
            )
            .with_version("2.0")
            .with_id(id),
        )?;
        store
            .append(&StreamId::new(order_id)?, ExpectedVersion::Any, vec![event])
            .await?;
    }
    Ok(())
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
