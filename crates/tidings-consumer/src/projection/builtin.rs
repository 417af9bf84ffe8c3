//! The built-in read models an operator of a store asks for: what event types it holds,
//! and what categories of streams. Both are [`StoredModel`]s, so
//! [`StoredVersions`] runs them blue/green; the `tidings` binary
//! rebuilds them (`tidings projection rebuild`) and the server serves them
//! (`GET /projections/{name}`).
//!
//! Both read every non-system event (no filter): a category counts a stream at its first
//! event (revision 0).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidings_core::handler::HandlerError;
use tidings_core::store::{EventStore, Position, RecordedEvent};

use super::{CheckpointPolicy, ProjectionError, StoredModel, StoredVersions, VersionedRunner};

/// The built-in read models: name and what each holds.
pub const BUILTIN: [(&str, &str); 2] = [
    (EventTypes::NAME, EventTypes::ABOUT),
    (Categories::NAME, Categories::ABOUT),
];

/// How often a built-in read model is saved: every this many applied events (and at
/// the end of a rebuild).
pub const SAVE_EVERY: u64 = 10_000;

/// A built-in read model: a [`StoredModel`] with the name it is known by.
pub trait Builtin: StoredModel {
    /// Its name, which is also its projection's name.
    const NAME: &'static str;
    /// What it holds, in a line.
    const ABOUT: &'static str;
}

/// The runner of built-in model `M` over `store`, as the `tidings` binary and server run
/// it: versions in `$projection-<NAME>-v<N>`, saved every [`SAVE_EVERY`] events.
pub async fn open<S: EventStore, M: Builtin>(
    store: S,
) -> Result<VersionedRunner<S, StoredVersions<S, M>>, ProjectionError> {
    let versions = StoredVersions::new(M::NAME, store.clone());
    VersionedRunner::builder(M::NAME, store, versions)
        .checkpoint_policy(CheckpointPolicy::EveryEvents(SAVE_EVERY))
        .open()
        .await
}

/// Events per event type, with the position of the last one.
///
/// ```
/// use tidings::projection::builtin::EventTypes;
/// let json = serde_json::json!({"OrderCreated": {"events": 2, "lastPosition": 5}});
/// let model: EventTypes = serde_json::from_value(json).unwrap();
/// assert_eq!((model.count("OrderCreated"), model.count("Other")), (2, 0));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventTypes {
    types: BTreeMap<String, TypeCount>,
}

/// One event type in [`EventTypes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeCount {
    /// How many events have this type.
    pub events: u64,
    /// The global position of the last one.
    pub last_position: Position,
}

impl Builtin for EventTypes {
    const NAME: &'static str = "event-types";
    const ABOUT: &'static str = "events and last position per event type";
}

impl EventTypes {
    /// Events of type `event_type` (0 if none).
    pub fn count(&self, event_type: &str) -> u64 {
        self.types.get(event_type).map_or(0, |t| t.events)
    }

    /// One type's counts.
    pub fn get(&self, event_type: &str) -> Option<&TypeCount> {
        self.types.get(event_type)
    }

    /// Every type, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TypeCount)> {
        self.types.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Events of every type together.
    pub fn total(&self) -> u64 {
        self.types.values().map(|t| t.events).sum()
    }

    /// How many types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True before any event.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

impl StoredModel for EventTypes {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let t = self.types.entry(event.event_type.clone()).or_default();
        t.events += 1;
        t.last_position = event.position;
        Ok(())
    }
}

/// Streams and events per stream category: the stream name up to its first `-`
/// (`order-123` is in `order`), or the whole name when it has none.
///
/// ```
/// use tidings::projection::builtin::category;
/// assert_eq!(category("order-123"), "order");
/// assert_eq!(category("order-line-9"), "order");
/// assert_eq!(category("inventory"), "inventory");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Categories {
    categories: BTreeMap<String, CategoryCount>,
}

/// One category in [`Categories`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryCount {
    /// How many streams are in it.
    pub streams: u64,
    /// How many events those streams hold.
    pub events: u64,
    /// The global position of the last one.
    pub last_position: Position,
}

/// The category of stream `stream`: its name up to the first `-`, or all of it.
pub fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

impl Builtin for Categories {
    const NAME: &'static str = "categories";
    const ABOUT: &'static str =
        "streams and events per stream category (the stream name up to its first `-`)";
}

impl Categories {
    /// One category's counts.
    pub fn get(&self, category: &str) -> Option<&CategoryCount> {
        self.categories.get(category)
    }

    /// Every category, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CategoryCount)> {
        self.categories.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Events of every category together.
    pub fn total(&self) -> u64 {
        self.categories.values().map(|c| c.events).sum()
    }

    /// How many categories.
    pub fn len(&self) -> usize {
        self.categories.len()
    }

    /// True before any event.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty()
    }
}

impl StoredModel for Categories {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let c = self
            .categories
            .entry(category(event.stream.as_str()).to_owned())
            .or_default();
        if event.revision == 0 {
            c.streams += 1;
        }
        c.events += 1;
        c.last_position = event.position;
        Ok(())
    }
}
