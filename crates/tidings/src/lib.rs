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
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod bus;
pub mod consumer;
pub mod event;
pub mod projection;
pub mod saga;
pub mod store;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;

pub use consumer::{CheckpointStore, ConsumerGroup, RetryPolicy};
pub use event::domain::{DecodeError, DomainEvent, EncodeError, EventSchema};
pub use event::upcast::{UpcastError, Upcaster, Upcasters};
pub use event::{
    Clock, Enricher, Event, EventError, Limits, ManualClock, Metadata, NewEvent, Payload,
    SystemClock,
};
pub use projection::{Projection, ProjectionRunner};
pub use store::{
    AppendResult, Direction, EventAppender, EventReader, EventStore, EventSubscriber,
    ExpectedVersion, Filter, InMemoryStore, ListStreams, Position, ReadAll, ReadStream,
    RecordedEvent, Revision, Start, StoreError, StreamInfo,
};
/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use stream::{MAX_STREAM_NAME_BYTES, StreamId, StreamIdError};
pub use transport::{Transport, TransportError};
