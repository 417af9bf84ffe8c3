//! Reliable consumption: consumer groups with checkpoints, ack/nack, retries with
//! backoff and jitter, a parked (dead-letter) stream that can be replayed, a circuit
//! breaker, and idempotent handling.
//!
//! - [`ConsumerGroup`] — competing consumers over any [`EventStore`](tidings_core::EventStore):
//!   members share the work, one delivery per event at a time, per-stream order, and a
//!   checkpoint that only passes a contiguous prefix of settled events.
//! - [`CheckpointStore`] — where checkpoints live: [`InMemoryCheckpoints`] or
//!   [`StoreCheckpoints`] (system streams `$checkpoint-<name>` in any store).
//! - [`RetryPolicy`] — attempts, exponential backoff, jitter from a seedable
//!   [`JitterRng`].
//! - [`parked`] — the `$parked-<group>` stream: [`ParkedEvent`]s, listing and replay.
//! - [`CircuitBreaker`] — pauses delivery while a dependency keeps failing.
//! - [`Idempotent`] — a handler wrapper that skips event ids it has handled, with a
//!   bounded [`SeenEvents`] set.
//! - [`BrokerConsumer`] — the same guarantees for a consumer group on a message broker
//!   (`Transport`): retries, dead letters, breaker, upcasting, an [`Inbox`]
//!   ([`StoreInbox`] keeps handled ids in `$inbox-<name>`).
//! - [`HostedGroups`] — consumer groups shared by processes
//!   ([`Groups`](tidings_core::group::Groups)): any number of named groups of one store,
//!   settings kept in the store, members anywhere holding leases; [`GroupWorker`] runs
//!   a handler as one member of a group of any backend.
//! - [`relay`] — the [`OutboxRelay`]: the store's log published to a broker, confirmed,
//!   in order, from a fenced checkpoint.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
//! use tidings::bus::{HandlerError, handler_fn};
//! use tidings::consumer::{CircuitBreaker, ConsumerGroup, Idempotent, RetryPolicy};
//! let store = InMemoryStore::new();
//! let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
//! store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
//!
//! let group = ConsumerGroup::builder("emails", store)
//!     .retry(RetryPolicy::new(3).base(Duration::from_millis(1)))
//!     .breaker(CircuitBreaker::new(10, Duration::from_secs(5)))
//!     .start()
//!     .await
//!     .unwrap();
//! let handler = Idempotent::new(handler_fn(|_e| async { Err(HandlerError::new("smtp down")) }));
//! let worker = tokio::spawn({ let group = group.clone(); async move {
//!     let member = group.join();
//!     member.run(&handler).await
//! }});
//! while group.stats().parked == 0 { tokio::time::sleep(Duration::from_millis(1)).await; }
//! group.shutdown().await.unwrap();
//! worker.await.unwrap().unwrap();
//! let parked = group.parked().await.unwrap();
//! assert_eq!((parked[0].attempts, parked[0].reason.as_str()), (3, "smtp down"));
//! # });
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod breaker;
mod broker;
mod checkpoint;
mod delivery;
mod error;
mod group;
mod hosted;
mod idempotent;
mod inbox;
pub mod parked;
pub mod projection;
mod reader;
pub mod relay;
mod retry;
mod stats;
mod worker;

pub use breaker::{BreakerState, CircuitBreaker, Permit};
pub use broker::{
    BrokerConsumer, BrokerConsumerBuilder, BrokerConsumerError, BrokerStats, DEFAULT_CONCURRENCY,
};
pub use checkpoint::{
    CHECKPOINT_EVENT_TYPE, Checkpoint, CheckpointError, CheckpointStore, InMemoryCheckpoints,
    StoreCheckpoints, checkpoint_stream,
};
pub use delivery::{Delivery, Member};
pub use error::ConsumerError;
pub use group::{ConsumerGroup, ConsumerGroupBuilder, DEFAULT_BUFFER};
pub use hosted::{GROUPS_STREAM, GroupStats, HostedGroups};
pub use idempotent::{DEFAULT_SEEN_CAPACITY, Idempotent, SeenEvents};
pub use inbox::{
    DEFAULT_INBOX_WINDOW, INBOX_EVENT_TYPE, Inbox, InboxError, NoInbox, StoreInbox, inbox_stream,
};
pub use parked::ParkedEvent;
pub use relay::{OutboxRelay, RelayError, RelayStats};
pub use retry::{Jitter, JitterRng, RetryPolicy};
pub use stats::ConsumerStats;
pub use worker::{DEFAULT_WORKER_BATCH, DEFAULT_WORKER_WAIT, GroupWorker, WorkerStats};
