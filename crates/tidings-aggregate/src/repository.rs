//! [`Repository`]: loads aggregates from snapshot plus newer events, saves what they
//! decided with the expected version.

use std::fmt;
use std::marker::PhantomData;

use super::snapshot::{
    InMemorySnapshotStore, Snapshot, SnapshotError, SnapshotPolicy, SnapshotStore,
};
use super::{Aggregate, AggregateRoot};
use tidings_core::event::domain::{DecodeError, DomainEvent, EncodeError};
use tidings_core::event::upcast::{UpcastError, Upcasters};
use tidings_core::event::{Enricher, EventError, Metadata, Payload};
use tidings_core::store::{
    AppendResult, EventAppender, EventReader, ExpectedVersion, PAGE, ReadStream, Revision,
    StoreError,
};
use tidings_core::stream::StreamId;

/// Why a load or save failed. A failed save leaves the events uncommitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// Someone else wrote to the stream since it was loaded: reload and retry.
    #[error("concurrency conflict on {stream}: expected {expected}, actual {}", actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string()))]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the save expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: Option<Revision>,
    },
    /// A stored event could not be upcast.
    #[error("event {revision} of {stream} could not be upcast: {source}")]
    Upcast {
        /// The stream.
        stream: StreamId,
        /// The event's revision.
        revision: Revision,
        /// Why.
        #[source]
        source: UpcastError,
    },
    /// A stored event could not be decoded.
    #[error("event {revision} of {stream} could not be decoded: {source}")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's revision.
        revision: Revision,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// An uncommitted event could not be encoded.
    #[error("uncommitted event {index} could not be encoded: {source}")]
    Encode {
        /// Its index among the uncommitted events.
        index: usize,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// An uncommitted event was refused by validation.
    #[error("uncommitted event {index} was refused: {source}")]
    InvalidEvent {
        /// Its index among the uncommitted events.
        index: usize,
        /// Why.
        #[source]
        source: EventError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RepositoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Self::Conflict {
                stream,
                expected,
                actual,
            },
            other => Self::Store(other),
        }
    }
}

/// Why [`Repository::execute`] did not record a command's events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command. Nothing was stored.
    #[error("command refused: {0}")]
    Rejected(#[source] E),
    /// Loading or saving failed (a conflict included). Nothing was stored.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// Loads and saves aggregates of type `A` on store `S`, with snapshots in `P`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # #[serde(tag = "eventType", content = "data")]
/// # enum CounterEvent { Incremented { by: u32 } }
/// # tidings::domain_event!(CounterEvent { Incremented => "1.0" });
/// # #[derive(Debug, thiserror::Error)] #[error("overflow")] struct Overflow;
/// # #[derive(Default, Serialize, Deserialize)] struct Counter { value: u32 }
/// # impl tidings::aggregate::Aggregate for Counter {
/// #     const TYPE: &'static str = "Counter";
/// #     type Command = u32; type Event = CounterEvent; type Error = Overflow;
/// #     fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Overflow> {
/// #         Ok(vec![CounterEvent::Incremented { by }]) }
/// #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += by; }
/// # }
/// use tidings::aggregate::{InMemorySnapshotStore, Repository, SnapshotPolicy};
/// use tidings::{Enricher, InMemoryStore, StreamId};
///
/// let repo = Repository::<Counter, _>::new(InMemoryStore::new(), Enricher::new("counter-service"))
///     .with_snapshots(InMemorySnapshotStore::new(), SnapshotPolicy::every(100).unwrap());
/// let stream = StreamId::new("counter-1").unwrap();
/// let mut counter = repo.load(&stream).await.unwrap();
/// counter.execute(2).unwrap();
/// counter.execute(3).unwrap();
/// repo.save(&mut counter).await.unwrap();
/// assert_eq!(repo.load(&stream).await.unwrap().state().value, 5);
/// # });
/// ```
pub struct Repository<A, S, P = InMemorySnapshotStore> {
    store: S,
    snapshots: P,
    policy: SnapshotPolicy,
    upcasters: Upcasters,
    enricher: Enricher,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A, S: Clone, P: Clone> Clone for Repository<A, S, P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            policy: self.policy,
            upcasters: self.upcasters.clone(),
            enricher: self.enricher.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: fmt::Debug, P: fmt::Debug> fmt::Debug for Repository<A, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("snapshots", &self.snapshots)
            .field("policy", &self.policy)
            .field("upcasters", &self.upcasters.len())
            .finish()
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventAppender + EventReader,
{
    /// A repository on `store`, enriching saved events with `enricher`, without snapshots
    /// or upcasters.
    pub fn new(store: S, enricher: Enricher) -> Self {
        Self {
            store,
            snapshots: InMemorySnapshotStore::new(),
            policy: SnapshotPolicy::Never,
            upcasters: Upcasters::new(),
            enricher,
            _aggregate: PhantomData,
        }
    }
}

impl<A, S, P> Repository<A, S, P>
where
    A: Aggregate,
    S: EventAppender + EventReader,
    P: SnapshotStore,
{
    /// Takes snapshots into `snapshots` as `policy` says, and loads from them.
    pub fn with_snapshots<Q: SnapshotStore>(
        self,
        snapshots: Q,
        policy: SnapshotPolicy,
    ) -> Repository<A, S, Q> {
        Repository {
            store: self.store,
            snapshots,
            policy,
            upcasters: self.upcasters,
            enricher: self.enricher,
            _aggregate: PhantomData,
        }
    }

    /// Upcasts stored events with `upcasters` on load.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The snapshot store.
    pub fn snapshots(&self) -> &P {
        &self.snapshots
    }

    /// Loads the aggregate of `stream`: from its latest usable snapshot, then every newer
    /// event, upcast and decoded. A snapshot of another schema version, or one that no
    /// longer deserializes, is ignored and the aggregate rebuilt from its events. A
    /// stream with no events gives a new aggregate.
    pub async fn load(&self, stream: &StreamId) -> Result<AggregateRoot<A>, RepositoryError> {
        let mut root = match self.snapshots.load(stream).await {
            Ok(Some(snapshot)) => self.restore(stream, snapshot),
            Ok(None) => AggregateRoot::new(stream.clone()),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot store failed; rebuilding from events");
                AggregateRoot::new(stream.clone())
            }
        };
        loop {
            let from = root.version().map_or(0, |v| v + 1);
            let page = self
                .store
                .read_stream(stream, ReadStream::forward().from(from).limit(PAGE))
                .await?;
            let full = page.len() == PAGE;
            for recorded in page {
                let revision = recorded.revision;
                root.apply_stored(recorded.event, revision, &self.upcasters)?;
            }
            if !full {
                return Ok(root);
            }
        }
    }

    fn restore(&self, stream: &StreamId, snapshot: Snapshot) -> AggregateRoot<A> {
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::info!(
                %stream,
                found = %snapshot.schema_version,
                expected = A::SNAPSHOT_VERSION,
                "ignoring snapshot of another schema version; rebuilding from events"
            );
            return AggregateRoot::new(stream.clone());
        }
        match snapshot.state.deserialize::<A>() {
            Ok(state) => AggregateRoot::from_state(stream.clone(), state, Some(snapshot.revision)),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "ignoring unreadable snapshot; rebuilding from events");
                AggregateRoot::new(stream.clone())
            }
        }
    }

    /// Loads the aggregate of `stream`, runs `command` on it and saves the events it
    /// decided, in one call; returns those events. On a conflict nothing is stored and
    /// the caller may run it again on the new state.
    pub async fn execute(
        &self,
        stream: &StreamId,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        let mut root = self.load(stream).await?;
        let events = root
            .execute(command)
            .map_err(CommandError::Rejected)?
            .to_vec();
        self.save_with(&mut root, metadata).await?;
        Ok(events)
    }

    /// Saves the root's uncommitted events (see [`Repository::save_with`]).
    pub async fn save(
        &self,
        root: &mut AggregateRoot<A>,
    ) -> Result<Option<AppendResult>, RepositoryError> {
        self.save_with(root, Metadata::default()).await
    }

    /// Appends the root's uncommitted events, each carrying `metadata`, expecting the
    /// stream at the root's version. Returns `None` when there was nothing to save.
    /// On success the events are committed and, when the policy says so, a snapshot is
    /// taken (a failing snapshot store is logged, never fails the save: the events are
    /// stored). On any error — a conflict included — nothing is stored and the events
    /// stay uncommitted.
    pub async fn save_with(
        &self,
        root: &mut AggregateRoot<A>,
        metadata: Metadata,
    ) -> Result<Option<AppendResult>, RepositoryError> {
        if root.uncommitted().is_empty() {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(root.uncommitted().len());
        for (index, e) in root.uncommitted().iter().enumerate() {
            let mut new = e
                .to_new_event()
                .map_err(|source| RepositoryError::Encode { index, source })?;
            new.metadata = metadata.clone();
            events.push(
                self.enricher
                    .enrich(new)
                    .map_err(|source| RepositoryError::InvalidEvent { index, source })?,
            );
        }
        let before = root.version();
        let result = self
            .store
            .append(root.stream(), root.expected_version(), events)
            .await?;
        root.mark_committed(result.next_expected_version);
        if self.policy.is_due(before, result.next_expected_version) {
            self.snapshot(root).await;
        }
        Ok(Some(result))
    }

    async fn snapshot(&self, root: &AggregateRoot<A>) {
        let Some(revision) = root.version() else {
            return;
        };
        let snapshot = match Payload::from_serialize(root.state()) {
            Ok(state) => Snapshot {
                stream: root.stream().clone(),
                revision,
                schema_version: A::SNAPSHOT_VERSION.to_owned(),
                state,
                taken_at: self.enricher.clock().now(),
            },
            Err(e) => {
                let e = SnapshotError::Serialize {
                    stream: root.stream().clone(),
                    reason: e.to_string(),
                };
                tracing::warn!(error = %e, "snapshot not taken");
                return;
            }
        };
        if let Err(e) = self.snapshots.save(snapshot).await {
            tracing::warn!(stream = %root.stream(), error = %e, "snapshot not saved");
        }
    }
}
