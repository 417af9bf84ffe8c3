//! Checkpoints: how far a consumer or projection has got, kept across restarts.
//!
//! A checkpoint is the **next global position to consider**: every event before it has
//! been handled (acknowledged, parked or filtered out). `None` means "never saved", which
//! a consumer treats as "start from the beginning".
//!
//! [`StoreCheckpoints`] keeps each checkpoint in a system stream `$checkpoint-<name>` of
//! any [`EventStore`], one `$Checkpoint` event per save, written with the expected version
//! the instance last saw — so two instances that both believe they own a checkpoint
//! cannot both advance it: the second gets [`CheckpointError::Conflict`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::event::{Clock, Event, Metadata, Payload, SystemClock};
use crate::store::{EventStore, ExpectedVersion, Position, ReadStream, Revision, StoreError};
use crate::stream::{StreamId, StreamIdError};

/// The event type of a checkpoint record in `$checkpoint-<name>`.
pub const CHECKPOINT_EVENT_TYPE: &str = "$Checkpoint";

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    ) -> impl Future<Output = Result<Option<Position>, CheckpointError>> + Send;

    /// Saves `next` (the next position to consider) as the checkpoint of `name`.
    fn save(
        &self,
        name: &str,
        next: Position,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

impl<C: CheckpointStore> CheckpointStore for Arc<C> {
    fn load(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Position>, CheckpointError>> + Send {
        (**self).load(name)
    }

    fn save(
        &self,
        name: &str,
        next: Position,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        (**self).save(name, next)
    }
}

/// Checkpoints in memory; clones share them. For tests and consumers that need no
/// durability.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use tidings::consumer::{CheckpointStore, InMemoryCheckpoints};
/// let checkpoints = InMemoryCheckpoints::new();
/// assert_eq!(checkpoints.load("billing").await.unwrap(), None);
/// checkpoints.save("billing", 42).await.unwrap();
/// assert_eq!(checkpoints.load("billing").await.unwrap(), Some(42));
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpoints(Arc<Mutex<HashMap<String, Position>>>);

impl InMemoryCheckpoints {
    /// No checkpoints.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CheckpointStore for InMemoryCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<Position>, CheckpointError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied())
    }

    async fn save(&self, name: &str, next: Position) -> Result<(), CheckpointError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), next);
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
/// use tidings::consumer::{CheckpointError, CheckpointStore, StoreCheckpoints};
/// let store = InMemoryStore::new();
/// let a = StoreCheckpoints::new(store.clone());
/// let b = StoreCheckpoints::new(store.clone());
/// a.load("billing").await.unwrap();
/// b.load("billing").await.unwrap();
/// a.save("billing", 10).await.unwrap();
/// // b did not see a's save: it may not overwrite it silently.
/// assert!(matches!(b.save("billing", 5).await, Err(CheckpointError::Conflict { .. })));
/// assert_eq!(b.load("billing").await.unwrap(), Some(10));
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
    async fn load(&self, name: &str) -> Result<Option<Position>, CheckpointError> {
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
        let next = record
            .data
            .to_value()
            .get("next")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| CheckpointError::Corrupt {
                name: name.to_owned(),
                revision: record.revision,
                reason: format!("no integer \"next\" in {}", record.data.as_str()),
            })?;
        self.seen().insert(name.to_owned(), Some(record.revision));
        Ok(Some(next))
    }

    async fn save(&self, name: &str, next: Position) -> Result<(), CheckpointError> {
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
            data: Payload::from(serde_json::json!({ "next": next })),
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
