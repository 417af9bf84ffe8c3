//! The order domain on Tidings: its events, an event-sourced [`Order`], the
//! payment handlers that react to a confirmed order, and the order saga
//! ([`saga`]) with the in-process services it drives ([`services`](mod@services)).
//!
//! [`wire`] connects everything to a store: a [`Dispatcher`] behind a [`Publisher`], the
//! payment handlers registered on it, and a [`Repository`] of orders that publishes what
//! it saves. `tidings demo` runs it.

pub mod distributed;
pub mod events;
pub mod order;
pub mod payment;
pub mod saga;
pub mod services;

use tidings::aggregate::{InMemorySnapshotStore, Repository, SnapshotPolicy};
use tidings::bus::{Dispatcher, LoggingMiddleware, Publisher};
use tidings::{Enricher, EventAppender, EventReader};

pub use events::{
    Address, OrderEvent, OrderItem, OrderStatus, PaymentEvent, PaymentStatus, SystemEvent,
    UserRegistered,
};
pub use order::{Order, OrderCommand, OrderError};
pub use payment::{PaymentGateway, PaymentOutcomeHandler, payment_stream};
pub use saga::{OrderProcessingSaga, OrderSagaState, SagaStatus, Steps, fulfilment_stream};
pub use services::{
    InventoryService, PaymentService, ServiceConfig, ShippingService, order_saga, services,
};

/// The name the order service publishes under.
pub const SERVICE: &str = "order-service";

/// The pieces of the order service, wired to one store.
pub struct OrderService<S> {
    /// Publishes events and dispatches them to the handlers.
    pub publisher: Publisher<S>,
    /// The dispatcher the handlers are registered on (add more at will).
    pub dispatcher: Dispatcher,
    /// Loads and saves orders; saving publishes.
    pub orders: Repository<Order, Publisher<S>>,
}

/// Wires the order service to `store`: a logging dispatcher, the payment gateway (paying
/// up to `payment_limit`) and the payment outcome handler, and an order repository with
/// the order upcasters and a snapshot every 10 events.
pub fn wire<S>(store: S, payment_limit: f64) -> OrderService<S>
where
    S: EventAppender + EventReader + Clone + Send + Sync + 'static,
{
    let dispatcher = Dispatcher::new();
    dispatcher.add_middleware(LoggingMiddleware::new());
    let publisher = Publisher::new(store, Enricher::new(SERVICE), dispatcher.clone());
    dispatcher.on(
        "OrderConfirmed",
        "payment-gateway",
        PaymentGateway::new(publisher.clone(), payment_limit),
    );
    dispatcher.on(
        "PaymentProcessed",
        "payment-outcome",
        PaymentOutcomeHandler::new(publisher.clone()),
    );
    let snapshots = SnapshotPolicy::every(10).unwrap_or_default();
    let orders = Repository::new(publisher.clone(), Enricher::new(SERVICE))
        .with_upcasters(events::upcasters())
        .with_snapshots(InMemorySnapshotStore::new(), snapshots);
    OrderService {
        publisher,
        dispatcher,
        orders,
    }
}
