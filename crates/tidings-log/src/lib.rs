//! # tidings-log
//!
//! The embedded durable event store of Tidings: a segmented, checksummed log with group
//! commit, crash recovery and derived indexes, implementing the `tidings` store contract.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings_core::{Enricher, EventAppender, ExpectedVersion, NewEvent, StreamId};
//! let dir = tempfile::tempdir().unwrap();
//! let store = tidings_log::LogStore::open(dir.path()).unwrap();
//! let event = Enricher::new("svc").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
//! store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::NoStream, vec![event]).await.unwrap();
//! # });
//! ```
//!
//! How it is built, one module per on-disk concept:
//!
//! - [`record`]: one CRC-32C frame per append (all-or-nothing multi-event appends);
//! - [`segment`]: preallocated segment files named by first position, header and footer;
//! - `writer`: one thread, a bounded channel, group commit (one write per group, written
//!   while the groups before it sync on a second thread, which covers every group
//!   waiting with one `fdatasync`), fail-closed on I/O errors — one file each for the
//!   commit group, the sync thread, segment rolling and the writer thread's loop;
//! - `index_snapshotter`: background index snapshots that hold the index's locks only
//!   briefly;
//! - [`index`] and [`index_snapshot`]: stream, id and correlation indexes kept in memory
//!   off the acknowledgement path and saved to an index snapshot so reopening does not
//!   rescan the log;
//! - `recovery`: torn tails are truncated and reported, damage elsewhere fails the open
//!   with file and byte offset (or is skipped by read-only salvage);
//! - [`storage`]: the file-system layer, a trait so tests can simulate power loss;
//! - `builder` and `store`: [`LogStoreBuilder`] opens a [`LogStore`], which implements
//!   the store contract on top of the rest.
//!
//! What happens to damaged files:
//!
//! | found on open                              | result                                               |
//! |--------------------------------------------|------------------------------------------------------|
//! | torn write at the end of the last segment  | truncated, synced, reported ([`RecoveryReport::torn_tail`]) |
//! | bad frame elsewhere, or a cut segment      | [`LogError::Corrupt`] with file and byte offset       |
//! | the same, with [`LogStoreBuilder::salvage`] | read-only store with every event before the damage   |
//! | missing, stale or foreign index snapshot   | indexes rebuilt from the log, reported, saved         |
//! | write or fsync error while running         | the store stops: appends fail with `StoreError::Stopped` |
//!
//! Damage inside the part of the log the snapshot covers is not rescanned on open;
//! reading it returns `StoreError::Corrupt`, and [`verify`] finds it.
#![deny(missing_docs)]
#![deny(unsafe_code)] // one exception: mapping segments for reads (storage.rs)

mod builder;
mod error;
#[cfg(test)]
mod fault_tests;
pub mod index;
pub mod index_snapshot;
mod index_snapshotter;
mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod storage;
mod store;
pub mod tags;
mod tail;
mod verify;
mod writer;

pub use builder::{
    DEFAULT_APPEND_TIMEOUT, DEFAULT_INDEX_TAIL_EVENTS, DEFAULT_SEGMENT_SIZE, Durability,
    LogStoreBuilder,
};
pub use error::LogError;
pub use recovery::{Damage, IndexSource, RecoveryReport, TornTail};
pub use store::{LogStore, WriteStats};
pub use verify::{IndexCheck, VerifyReport, verify};
