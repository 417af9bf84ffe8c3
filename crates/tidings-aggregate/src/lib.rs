//! Event-sourced aggregates.
//!
//! An [`Aggregate`] turns a command into events or a typed error, and applies events to
//! its state. An [`AggregateRoot`] holds one loaded aggregate with its version and the
//! events it has decided but not yet saved. A [`Repository`] loads roots from the latest
//! snapshot plus the newer events (upcasting old versions on the way) and saves the
//! uncommitted events with the expected version.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod repository;
mod root;
mod snapshot;

use serde::Serialize;
use serde::de::DeserializeOwned;

use tidings_core::event::domain::DomainEvent;

pub use repository::{CommandError, Repository, RepositoryError};
pub use root::AggregateRoot;
pub use snapshot::{InMemorySnapshotStore, Snapshot, SnapshotError, SnapshotPolicy, SnapshotStore};

/// A consistency boundary: decides events from commands, and folds events into state.
///
/// `handle` must not change the state; `apply` must not fail (an event is a fact). The
/// state is serializable so that it can be snapshotted; bump
/// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) when its shape changes, and older
/// snapshots are ignored.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::aggregate::Aggregate;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "eventType", content = "data")]
/// enum CounterEvent { Incremented { by: u32 } }
/// tidings::domain_event!(CounterEvent { Incremented => "1.0" });
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would overflow")]
/// struct Overflow;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: u32 }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "Counter";
///     type Command = u32;
///     type Event = CounterEvent;
///     type Error = Overflow;
///     fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Overflow> {
///         self.value.checked_add(by).ok_or(Overflow)?;
///         Ok(vec![CounterEvent::Incremented { by }])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         let CounterEvent::Incremented { by } = event;
///         self.value += by;
///     }
/// }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate's kind, such as `"Order"` (used in logs and snapshots).
    const TYPE: &'static str;
    /// The schema version of the serialized state in snapshots.
    const SNAPSHOT_VERSION: &'static str = "1";
    /// What it can be asked to do.
    type Command: Send;
    /// What it records.
    type Event: DomainEvent + Clone;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides the events a command leads to, or refuses it.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);
}
