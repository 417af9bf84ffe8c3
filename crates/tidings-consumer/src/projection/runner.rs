//! [`ProjectionRunner`]: feeds a [`Projection`] from its checkpoint, checkpoints, rebuilds.

use futures::StreamExt;

use super::Projection;
use crate::{Checkpoint, CheckpointError, CheckpointStore, StoreCheckpoints};
use tidings_core::handler::HandlerError;
use tidings_core::store::{
    CatchUp, EventStore, ExpectedVersion, Filter, PAGE, Position, RecordedEvent, Revision, Start,
    StoreError,
};
use tidings_core::stream::StreamId;

/// When a runner saves its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// After every this many applied events (at least 1).
    EveryEvents(u64),
    /// After each batch: a page read while catching up, or the events that were ready
    /// at once while live.
    PerBatch,
}

impl Default for CheckpointPolicy {
    /// After each batch.
    fn default() -> Self {
        Self::PerBatch
    }
}

/// Why a projection stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The projection refused an event; the checkpoint is before it.
    #[error(
        "projection {projection} failed on {event_type} at {stream}@{revision} (position {position}): {source}"
    )]
    Apply {
        /// The projection's name.
        projection: String,
        /// The event's stream.
        stream: StreamId,
        /// Its revision.
        revision: u64,
        /// Its global position.
        position: Position,
        /// Its type.
        event_type: String,
        /// The projection's error.
        #[source]
        source: HandlerError,
    },
    /// Resetting the read model failed; nothing was replayed.
    #[error("projection {projection} could not reset its read model: {source}")]
    Reset {
        /// The projection's name.
        projection: String,
        /// The projection's error.
        #[source]
        source: HandlerError,
    },
    /// Persisting the read model before a checkpoint failed ([`Projection::flush`]); the
    /// checkpoint was not saved.
    #[error("projection {projection} could not persist its read model: {source}")]
    Flush {
        /// The projection's name.
        projection: String,
        /// The projection's error.
        #[source]
        source: HandlerError,
    },
    /// Opening or retiring a version of a [`VersionedProjection`](super::VersionedProjection)
    /// failed.
    #[error("projection {projection} version {version}: {source}")]
    Version {
        /// The projection's name.
        projection: String,
        /// The version.
        version: u32,
        /// The projection's error.
        #[source]
        source: HandlerError,
    },
    /// The projection's name is not usable: it must make valid stream names and must not
    /// end in `-v<digits>` (the versions' suffix).
    #[error("projection name {name:?} is not usable: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Another instance changed this projection's versions (`$projection-<name>`) since
    /// this one read them: a concurrent rebuild. Nothing was swapped.
    #[error(
        "projection {projection}: its versions were changed by another instance (expected version {expected}); rerun to pick up its state"
    )]
    VersionConflict {
        /// The projection's name.
        projection: String,
        /// The version of `$projection-<name>` this instance expected.
        expected: ExpectedVersion,
    },
    /// A record of `$projection-<name>` could not be decoded.
    #[error(
        "projection {projection}: record {revision} of its versions stream is unreadable: {reason}"
    )]
    CorruptVersions {
        /// The projection's name.
        projection: String,
        /// The record's revision.
        revision: Revision,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the store failed.
    #[error("projection {projection}: {source}")]
    Store {
        /// The projection's name.
        projection: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Loading or saving the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Runs one [`Projection`] over a store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, RecordedEvent, StreamId};
/// use tidings::bus::HandlerError;
/// use tidings::projection::{Projection, ProjectionRunner};
/// #[derive(Default)]
/// struct Count(u64);
/// impl Projection for Count {
///     async fn apply(&mut self, _e: &RecordedEvent) -> Result<(), HandlerError> { self.0 += 1; Ok(()) }
///     async fn reset(&mut self) -> Result<(), HandlerError> { self.0 = 0; Ok(()) }
/// }
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
/// let mut runner = ProjectionRunner::new("count", store, Count::default());
/// assert_eq!(runner.catch_up().await.unwrap(), 1);
/// assert_eq!(runner.read_model().0, 1);
/// assert_eq!(runner.rebuild().await.unwrap(), 1);
/// assert_eq!(runner.read_model().0, 1);
/// # });
/// ```
pub struct ProjectionRunner<S, P, C = StoreCheckpoints<S>> {
    name: String,
    store: S,
    checkpoints: C,
    projection: P,
    filter: Filter,
    policy: CheckpointPolicy,
    /// The next position to consider; None until the checkpoint is loaded.
    next: Option<Position>,
    /// The last saved checkpoint.
    saved: Option<Position>,
    since_save: u64,
    applied: u64,
}

impl<S, P, C> std::fmt::Debug for ProjectionRunner<S, P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("name", &self.name)
            .field("next", &self.next)
            .field("saved", &self.saved)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, P: Projection> ProjectionRunner<S, P, StoreCheckpoints<S>> {
    /// A runner for `projection`, called `name`, over `store`, checkpointing in the
    /// store's `$checkpoint-<name>` stream after each batch.
    pub fn new(name: impl Into<String>, store: S, projection: P) -> Self {
        Self {
            name: name.into(),
            checkpoints: StoreCheckpoints::new(store.clone()),
            store,
            projection,
            filter: Filter::all(),
            policy: CheckpointPolicy::default(),
            next: None,
            saved: None,
            since_save: 0,
            applied: 0,
        }
    }
}

impl<S: EventStore, P: Projection, C: CheckpointStore> ProjectionRunner<S, P, C> {
    /// Keeps the checkpoint in `checkpoints` instead.
    pub fn checkpoints<C2: CheckpointStore>(self, checkpoints: C2) -> ProjectionRunner<S, P, C2> {
        ProjectionRunner {
            name: self.name,
            store: self.store,
            checkpoints,
            projection: self.projection,
            filter: self.filter,
            policy: self.policy,
            next: None,
            saved: None,
            since_save: 0,
            applied: self.applied,
        }
    }

    /// Only events that pass `filter` (system streams are always skipped).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// When to save the checkpoint.
    pub fn checkpoint_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = match policy {
            CheckpointPolicy::EveryEvents(n) => CheckpointPolicy::EveryEvents(n.max(1)),
            p => p,
        };
        self
    }

    /// The projection's name (and its checkpoint's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The read model.
    pub fn read_model(&self) -> &P {
        &self.projection
    }

    /// The read model, mutably.
    pub fn read_model_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The read model, giving up the runner.
    pub fn into_read_model(self) -> P {
        self.projection
    }

    /// The next position the runner will consider (None before the first run).
    pub fn position(&self) -> Option<Position> {
        self.next
    }

    /// The last checkpoint this runner saved or loaded.
    pub fn checkpoint(&self) -> Option<Position> {
        self.saved
    }

    /// Events applied by this runner since it was made.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    async fn start(&mut self) -> Result<Position, ProjectionError> {
        if let Some(next) = self.next {
            return Ok(next);
        }
        let loaded = self.checkpoints.load(&self.name).await?.map(|c| c.next);
        self.saved = loaded;
        let next = loaded.unwrap_or(0);
        self.next = Some(next);
        tracing::info!(projection = %self.name, from = next, "projection starting");
        Ok(next)
    }

    /// Applies everything up to the store's head and returns how many events were
    /// applied. Saves the checkpoint by the policy.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        while let Some(n) = self.catch_up_page().await? {
            applied += n;
        }
        Ok(applied)
    }

    /// Applies the next page of the log (at most [`PAGE`] events) and returns how many
    /// events were applied, or None when the runner is at the store's head. Saves the
    /// checkpoint by the policy. [`catch_up`](Self::catch_up) is this in a loop; call it
    /// yourself to report progress between pages.
    pub async fn catch_up_page(&mut self) -> Result<Option<u64>, ProjectionError> {
        let mut pages = CatchUp::new(self.start().await?, self.filter.clone());
        let page = pages
            .next_page(&self.store)
            .await
            .map_err(|source| ProjectionError::Store {
                projection: self.name.clone(),
                source,
            })?;
        match page {
            None => Ok(None),
            Some(page) => self.apply_batch(page).await.map(Some),
        }
    }

    /// Catches up, then applies events as they are committed, until the store closes or
    /// an error. Cancel-safe: dropping the future loses nothing saved; events applied
    /// since the last checkpoint are applied again on the next start.
    pub async fn run(&mut self) -> Result<(), ProjectionError> {
        self.catch_up().await?;
        let next = self.start().await?;
        let mut live = std::pin::pin!(
            self.store
                .subscribe_all(Start::At(next), self.filter.clone())
                .ready_chunks(PAGE)
        );
        while let Some(batch) = live.next().await {
            let mut events = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(e) => events.push(e),
                    Err(source) => {
                        failure = Some(source);
                        break;
                    }
                }
            }
            self.apply_batch(events).await?;
            if let Some(source) = failure {
                return Err(ProjectionError::Store {
                    projection: self.name.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Resets the read model and the checkpoint, then replays from the beginning of
    /// the log. Returns how many events were applied.
    pub async fn rebuild(&mut self) -> Result<u64, ProjectionError> {
        self.start().await?;
        tracing::info!(projection = %self.name, "projection rebuild");
        self.projection
            .reset()
            .await
            .map_err(|source| ProjectionError::Reset {
                projection: self.name.clone(),
                source,
            })?;
        self.checkpoints
            .save(&self.name, &Checkpoint::at(0))
            .await?;
        self.saved = Some(0);
        self.next = Some(0);
        self.since_save = 0;
        self.catch_up().await
    }

    /// Saves the checkpoint now if it moved, after [`Projection::flush`] has persisted
    /// the read model up to it.
    pub async fn save_checkpoint(&mut self) -> Result<(), ProjectionError> {
        if let Some(next) = self.next {
            if self.saved != Some(next) {
                self.projection
                    .flush()
                    .await
                    .map_err(|source| ProjectionError::Flush {
                        projection: self.name.clone(),
                        source,
                    })?;
                self.checkpoints
                    .save(&self.name, &Checkpoint::at(next))
                    .await?;
                self.saved = Some(next);
                self.since_save = 0;
            }
        }
        Ok(())
    }

    async fn apply_batch(&mut self, events: Vec<RecordedEvent>) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        for event in events {
            if !event.stream.is_system() {
                self.projection
                    .apply(&event)
                    .await
                    .map_err(|source| ProjectionError::Apply {
                        projection: self.name.clone(),
                        stream: event.stream.clone(),
                        revision: event.revision,
                        position: event.position,
                        event_type: event.event_type.clone(),
                        source,
                    })?;
                applied += 1;
                self.applied += 1;
                self.since_save += 1;
            }
            self.next = Some(event.position + 1);
            if let CheckpointPolicy::EveryEvents(n) = self.policy {
                if self.since_save >= n {
                    self.save_checkpoint().await?;
                }
            }
        }
        if self.policy == CheckpointPolicy::PerBatch && self.since_save > 0 {
            self.save_checkpoint().await?;
        }
        Ok(applied)
    }
}
