//! # Tidings' contract
//!
//! What every part of Tidings, and every backend, agrees on: the event envelope
//! ([`event`]), stream names ([`StreamId`]), the store traits and the in-memory store
//! ([`store`]), the handler vocabulary ([`handler`]), the broker transport trait
//! ([`transport`]), the consumer-group contract ([`group`]), and the checks every store backend runs before it writes
//! ([`backend`]).
//!
//! Applications name the `tidings` crate, which re-exports all of this; store and
//! transport backends depend on this crate alone.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings_core::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
//! let store = InMemoryStore::new();
//! let order = StreamId::new("order-123").unwrap();
//! let created = Enricher::new("order-service")
//!     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
//!     .unwrap();
//! let result = store.append(&order, ExpectedVersion::NoStream, vec![created]).await.unwrap();
//! assert_eq!(result.next_expected_version, 0);
//! # });
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod event;
pub mod group;
pub mod handler;
pub mod store;
pub mod stream;
pub mod transport;

pub use event::domain::{DecodeError, DomainEvent, EncodeError, EventSchema};
pub use event::upcast::{UpcastError, Upcaster, Upcasters};
pub use event::{
    Clock, Enricher, Event, EventError, Limits, ManualClock, Metadata, NewEvent, Payload,
    SystemClock,
};
pub use handler::{BoxFuture, Cause, EventHandler, FnHandler, HandlerError, handler_fn};
pub use store::{
    AppendResult, Direction, EventAppender, EventReader, EventStore, EventSubscriber,
    ExpectedVersion, Filter, InMemoryStore, ListStreams, Position, ReadAll, ReadStream,
    RecordedEvent, Revision, Start, StoreError, StreamInfo,
};
pub use stream::{MAX_STREAM_NAME_BYTES, StreamId, StreamIdError};
pub use transport::{Transport, TransportError};
