//! Checkpoints: how far a consumer or projection has got, kept across restarts.
//!
//! A [`Checkpoint`] is the **next global position to consider** — every event before it
//! has been handled (acknowledged, parked or filtered out) — plus, for consumers that
//! settle events out of order, the positions after it that are already settled. `None`
//! means "never saved", which a consumer treats as "start from the beginning".
//!
//! [`StoreCheckpoints`] keeps each checkpoint in a system stream `$checkpoint-<name>` of
//! any [`EventStore`], one `$Checkpoint {"next": n, "settled": [..]}` event per save
//! (`settled` left out when empty), written with the expected version
//! the instance last saw — so two instances that both believe they own a checkpoint
//! cannot both advance it: the second gets [`CheckpointError::Conflict`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tidings_core::event::{Clock, Event, Metadata, Payload, SystemClock};
use tidings_core::store::{
    EventStore, ExpectedVersion, Position, ReadStream, Revision, StoreError,
};
use tidings_core::stream::{StreamId, StreamIdError};

/// The event type of a checkpoint record in `$checkpoint-<name>`.
pub const CHECKPOINT_EVENT_TYPE: &str = "$Checkpoint";

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Another instance saved this checkpoint since this one last loaded or saved it.
    #[error(
        "checkpoint {name} was moved by another instance: expected version {expected}, actual {}",
        actual.map_or_else(|| "none".to_owned(), |v| v.to_string())
    )]
    Conflict {
        /// The checkpoint's name.
        name: String,
        /// The version this instance expected.
        expected: ExpectedVersion,
        /// The checkpoint stream's actual version.
        actual: Option<Revision>,
    },
    /// The name does not make a valid stream name.
    #[error("checkpoint name {name:?} is not usable: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: StreamIdError,
    },
    /// A stored checkpoint could not be decoded.
    #[error("checkpoint {name} at revision {revision} is unreadable: {reason}")]
    Corrupt {
        /// The checkpoint's name.
        name: String,
        /// The revision of the bad record.
        revision: Revision,
        /// What is wrong with it.
        reason: String,
    },
    /// The store failed.
    #[error("checkpoint {name}: {source}")]
    Store {
        /// The checkpoint's name.
        name: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// How far a consumer has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next position to consider: every event before it is settled.
    pub next: Position,
    /// Positions after `next` that are settled too (ascending; may be a subset — a
    /// missing one is only delivered again).
    pub settled: Vec<Position>,
}

impl Checkpoint {
    /// Everything before `next` is settled, nothing after it.
    pub fn at(next: Position) -> Self {
        Self {
            next,
            settled: Vec::new(),
        }
    }
}

/// The system stream `$checkpoint-<name>` that [`StoreCheckpoints`] keeps checkpoint
/// `name` in. Consumer groups and projections share this namespace: give them distinct
/// names.
pub fn checkpoint_stream(name: &str) -> Result<StreamId, CheckpointError> {
    StreamId::system(&format!("$checkpoint-{name}")).map_err(|source| {
        CheckpointError::InvalidName {
            name: name.to_owned(),
            source,
        }
    })
}

/// Loads and saves named checkpoints.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The saved checkpoint of `name` (None: never saved).
    fn load(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send;

    /// Saves `checkpoint` as the checkpoint of `name`.
    fn save(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

impl<C: CheckpointStore> CheckpointStore for Arc<C> {
    fn load(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        (**self).load(name)
    }

    fn save(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        (**self).save(name, checkpoint)
    }
}

/// Checkpoints in memory; clones share them. For tests and consumers that need no
/// durability.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use tidings::consumer::{Checkpoint, CheckpointStore, InMemoryCheckpoints};
/// let checkpoints = InMemoryCheckpoints::new();
/// assert_eq!(checkpoints.load("billing").await.unwrap(), None);
/// checkpoints.save("billing", &Checkpoint::at(42)).await.unwrap();
/// assert_eq!(checkpoints.load("billing").await.unwrap(), Some(Checkpoint::at(42)));
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpoints(Arc<Mutex<HashMap<String, Checkpoint>>>);

impl InMemoryCheckpoints {
    /// No checkpoints.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CheckpointStore for InMemoryCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned())
    }

    async fn save(&self, name: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), checkpoint.clone());
        Ok(())
    }
}

/// Checkpoints kept in system streams `$checkpoint-<name>` of any store.
///
/// Each save appends one small event with the version this handle last saw for the
/// stream (learned on [`load`](CheckpointStore::load) or the handle's previous save).
/// A handle that saves without having loaded takes the stream's current version as its
/// starting point. Clones share what they have seen, so one consumer may clone its handle
/// freely; separate [`StoreCheckpoints::new`] handles act as separate instances.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::InMemoryStore;
/// use tidings::consumer::{Checkpoint, CheckpointError, CheckpointStore, StoreCheckpoints};
/// let store = InMemoryStore::new();
/// let a = StoreCheckpoints::new(store.clone());
/// let b = StoreCheckpoints::new(store.clone());
/// a.load("billing").await.unwrap();
/// b.load("billing").await.unwrap();
/// a.save("billing", &Checkpoint::at(10)).await.unwrap();
/// // b did not see a's save: it may not overwrite it silently.
/// let late = b.save("billing", &Checkpoint::at(5)).await;
/// assert!(matches!(late, Err(CheckpointError::Conflict { .. })));
/// assert_eq!(b.load("billing").await.unwrap(), Some(Checkpoint::at(10)));
/// # });
/// ```
#[derive(Clone)]
pub struct StoreCheckpoints<S> {
    store: S,
    clock: Arc<dyn Clock>,
    /// Per checkpoint: the stream version this handle last saw (inner None: no stream).
    seen: Arc<Mutex<HashMap<String, Option<Revision>>>>,
}

impl<S> std::fmt::Debug for StoreCheckpoints<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCheckpoints").finish_non_exhaustive()
    }
}

impl<S: EventStore> StoreCheckpoints<S> {
    /// Checkpoints in `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            seen: Arc::default(),
        }
    }

    /// Uses `clock` for the records' timestamps.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Revision>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_err(name: &str) -> impl FnOnce(StoreError) -> CheckpointError + '_ {
        move |source| CheckpointError::Store {
            name: name.to_owned(),
            source,
        }
    }
}

impl<S: EventStore> CheckpointStore for StoreCheckpoints<S> {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let stream = checkpoint_stream(name)?;
        let last = self
            .store
            .read_stream(&stream, ReadStream::backward().limit(1))
            .await
            .map_err(Self::store_err(name))?;
        let Some(record) = last.into_iter().next() else {
            self.seen().insert(name.to_owned(), None);
            return Ok(None);
        };
        let corrupt = |reason: String| CheckpointError::Corrupt {
            name: name.to_owned(),
            revision: record.revision,
            reason,
        };
        let value = record.data.to_value();
        let next = value
            .get("next")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt(format!("no integer \"next\" in {}", record.data)))?;
        let settled = match value.get("settled") {
            None => Vec::new(),
            Some(list) => serde_json::from_value(list.clone())
                .map_err(|e| corrupt(format!("\"settled\" is not a list of positions: {e}")))?,
        };
        self.seen().insert(name.to_owned(), Some(record.revision));
        Ok(Some(Checkpoint { next, settled }))
    }

    async fn save(&self, name: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let stream = checkpoint_stream(name)?;
        let known = self.seen().get(name).copied();
        let version = match known {
            Some(v) => v,
            None => self
                .store
                .stream_version(&stream)
                .await
                .map_err(Self::store_err(name))?,
        };
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let record = Event {
            event_id: uuid::Uuid::now_v7(),
            event_type: CHECKPOINT_EVENT_TYPE.to_owned(),
            event_version: "1.0".to_owned(),
            timestamp: self.clock.now(),
            source: "tidings-consumer".to_owned(),
            data: Payload::from(if checkpoint.settled.is_empty() {
                serde_json::json!({ "next": checkpoint.next })
            } else {
                serde_json::json!({ "next": checkpoint.next, "settled": checkpoint.settled })
            }),
            metadata: Metadata::default(),
        };
        match self.store.append(&stream, expected, vec![record]).await {
            Ok(r) => {
                self.seen()
                    .insert(name.to_owned(), Some(r.next_expected_version));
                Ok(())
            }
            Err(StoreError::WrongExpectedVersion {
                expected, actual, ..
            }) => Err(CheckpointError::Conflict {
                name: name.to_owned(),
                expected,
                actual,
            }),
            Err(e) => Err(Self::store_err(name)(e)),
        }
    }
}
