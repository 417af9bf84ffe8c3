//! # Tidings
//!
//! An event store, an event bus and an event-sourcing toolkit.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings::{Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore,
//!     NewEvent, ReadStream, StreamId};
//! let store = InMemoryStore::new();
//! let order = StreamId::new("order-123").unwrap();
//! let created = Enricher::new("order-service")
//!     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
//!     .unwrap();
//! store.append(&order, ExpectedVersion::NoStream, vec![created]).await.unwrap();
//! assert_eq!(store.read_stream(&order, ReadStream::forward()).await.unwrap().len(), 1);
//! # });
//! ```
//!
//! This crate is the one an application names. It re-exports the crates behind it, each
//! one seam (see `docs/ARCHITECTURE.md`):
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`event`], [`store`], [`handler`], [`transport`] | `tidings-core` | the contract every part and backend shares |
//! | [`bus`] | `tidings-bus` | publisher, dispatcher, middleware, in-process bus |
//! | [`consumer`], [`projection`] | `tidings-consumer` | consumer groups, checkpoints, parking, projections |
//! | [`aggregate`] | `tidings-aggregate` | aggregates, repository, snapshots |
//! | [`saga`] | `tidings-saga` | sagas and process managers |
//!
//! The test kit (conformance suites, scenarios, recorder, simulator) is the crate
//! `tidings-testkit`, for dev-dependencies. Store backends are `tidings-log` (embedded),
//! `tidings-postgres`; transports are `tidings-nats` and `tidings-rabbitmq`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use tidings_aggregate as aggregate;
pub use tidings_bus as bus;
pub use tidings_consumer as consumer;
pub use tidings_consumer::projection;
pub use tidings_core::{domain_event, event, group, handler, store, transport};
pub use tidings_saga as saga;

pub use tidings_aggregate::{Aggregate, AggregateRoot, Repository};
pub use tidings_bus::{Dispatcher, Publisher};
pub use tidings_consumer::projection::{Projection, ProjectionRunner};
pub use tidings_consumer::{CheckpointStore, ConsumerGroup, RetryPolicy};
pub use tidings_core::event::domain::{DecodeError, DomainEvent, EncodeError, EventSchema};
pub use tidings_core::event::upcast::{UpcastError, Upcaster, Upcasters};
pub use tidings_core::event::{
    Clock, Enricher, Event, EventError, Limits, ManualClock, Metadata, NewEvent, Payload,
    SystemClock,
};
pub use tidings_core::handler::{EventHandler, HandlerError};
pub use tidings_core::store::{
    AppendResult, Direction, EventAppender, EventReader, EventStore, EventSubscriber,
    ExpectedVersion, Filter, InMemoryStore, ListStreams, Position, ReadAll, ReadStream,
    RecordedEvent, Revision, Start, StoreError, StreamInfo,
};
pub use tidings_core::stream::{MAX_STREAM_NAME_BYTES, StreamId, StreamIdError};
pub use tidings_core::transport::{Transport, TransportError};
pub use tidings_saga::{Saga, SagaRuntime};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
