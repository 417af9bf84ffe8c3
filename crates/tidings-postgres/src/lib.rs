//! # tidings-postgres
//!
//! The Tidings event store on PostgreSQL: [`PgStore`] implements
//! [`tidings_core::EventAppender`], [`tidings_core::EventReader`] and [`tidings_core::EventSubscriber`]
//! with the semantics of the conformance suite — 0-based revisions, global positions that
//! increase in the order readers see commits (with gaps where an append was refused or
//! failed after claiming them), atomic multi-event appends, optimistic concurrency,
//! idempotent re-appends — and subscriptions that see other processes' appends through
//! `LISTEN`/`NOTIFY`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::{Enricher, EventAppender, ExpectedVersion, NewEvent, StreamId};
//! let store = tidings_postgres::PgStore::connect("postgres://postgres@127.0.0.1/test").await?;
//! let event = Enricher::new("order-service")
//!     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))?;
//! let r = store.append(&StreamId::new("order-123")?, ExpectedVersion::Any, vec![event]).await?;
//! println!("recorded at position {}", r.position);
//! # Ok(()) }
//! ```
//!
//! Each store lives in one schema (default `tidings`), created with its tables on
//! connect; the SQL is in the crate's `sql/` directory. Timestamps are stored as integer
//! microseconds, payloads as their exact JSON text.
//!
//! [`PgInbox`] is the transactional inbox: a handler whose effects live in PostgreSQL
//! records the event id in the same transaction as its writes, so a duplicate delivery
//! never repeats the effect. With the cargo feature `inbox` (off by default, so the crate
//! depends on `tidings-core` alone otherwise) it also implements
//! `tidings_consumer::Inbox`.
//!
//! [`PgGroups`] keeps consumer groups (`tidings_core::group::Groups`) in the same schema:
//! settings, member leases, in-flight messages and parked lists are rows, so members in
//! any number of processes share a group directly, and a member's messages go to others
//! once its lease lapses, even when its process was killed
//! (`docs/decisions/0014-postgres-groups.md`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod append;
mod error;
mod groups;
mod inbox;
mod listener;
mod migrate;
mod notifier;
mod options;
mod row;
mod store;
mod writer;

pub use error::PgStoreError;
pub use groups::{
    DEFAULT_GROUP_LOCK_TIMEOUT, DEFAULT_GROUP_POLL, DEFAULT_GROUP_STATEMENT_TIMEOUT, PgGroups,
};
pub use inbox::{DEFAULT_INBOX_RETENTION, HandleError, Handled, PgInbox, PgInboxError};
pub use options::{
    DEFAULT_LOCK_TIMEOUT, DEFAULT_SCHEMA, DEFAULT_STATEMENT_TIMEOUT, MAX_SCHEMA_LEN, PgStoreBuilder,
};
pub use store::PgStore;
