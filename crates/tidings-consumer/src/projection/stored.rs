//! [`StoredVersions`]: in-memory read models kept whole, as JSON, in system streams.
//!
//! Version N of projection `name` lives in `$projection-<name>-v<N>`; each
//! [`Projection::flush`] (just before the runner saves its checkpoint) appends one
//! `$ReadModel {"next": n, "model": …}` record with the stream version last seen, and
//! opening a version reads the last record back. The record carries the position it is
//! complete up to, so events applied again after a crash (those after the checkpoint)
//! are recognised and skipped: counting models stay exact.
//!
//! A record is one event, so the model's JSON must fit the store's
//! [`Limits::max_event_bytes`](tidings_core::event::Limits) (1 MiB by default): this
//! suits summaries (counts per type, per category), not per-entity tables.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tidings_core::handler::HandlerError;
use tidings_core::store::{
    EventStore, ExpectedVersion, Position, ReadStream, RecordedEvent, Revision, StoreError,
};
use tidings_core::stream::StreamId;

use super::versions::system_record;
use super::{Projection, VersionedProjection};

/// The record type of a saved read model in `$projection-<name>-v<N>`.
pub const READ_MODEL_EVENT_TYPE: &str = "$ReadModel";

/// A read model held in memory and saved whole, as JSON; [`StoredVersions`] makes it a
/// [`VersionedProjection`].
pub trait StoredModel: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Applies one event (never a system stream's).
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError>;
}

/// One version of a [`StoredModel`]: the model, how far it is complete, and its stream.
#[derive(Debug)]
pub struct Stored<S, M> {
    store: S,
    stream: StreamId,
    model: M,
    next: Position,
    revision: Option<Revision>,
    dirty: bool,
}

#[derive(Serialize, serde::Deserialize)]
struct Record<M> {
    next: Position,
    model: M,
}

impl<S: EventStore, M: StoredModel> Stored<S, M> {
    /// Loads the last saved state from `stream` (an empty model when there is none).
    pub async fn load(store: S, stream: StreamId) -> Result<Self, HandlerError> {
        let last = store
            .read_stream(&stream, ReadStream::backward().limit(1))
            .await
            .map_err(HandlerError::from_error)?;
        let (model, next, revision) = match last.into_iter().next() {
            None => (M::default(), 0, None),
            Some(r) => {
                let record: Record<M> = r.data.deserialize().map_err(|e| {
                    HandlerError::new(format!(
                        "the read model saved in {stream} at revision {} is unreadable: {e}",
                        r.revision
                    ))
                })?;
                (record.model, record.next, Some(r.revision))
            }
        };
        Ok(Self {
            store,
            stream,
            model,
            next,
            revision,
            dirty: false,
        })
    }

    /// The read model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Every event before this position is in the model (0: none).
    pub fn next(&self) -> Position {
        self.next
    }

    /// The stream this version is saved in.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }
}

impl<S: EventStore, M: StoredModel> Projection for Stored<S, M> {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.position < self.next {
            return Ok(()); // in the saved model already: applied again after a restart
        }
        self.model.apply(event)?;
        self.next = event.position + 1;
        self.dirty = true;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.model = M::default();
        self.next = 0;
        self.dirty = true;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), HandlerError> {
        if !self.dirty {
            return Ok(());
        }
        let data = serde_json::to_value(Record {
            next: self.next,
            model: &self.model,
        })
        .map_err(HandlerError::from_error)?;
        let expected = self
            .revision
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let record = system_record(READ_MODEL_EVENT_TYPE, data);
        match self
            .store
            .append(&self.stream, expected, vec![record])
            .await
        {
            Ok(r) => {
                self.revision = Some(r.next_expected_version);
                self.dirty = false;
                Ok(())
            }
            Err(StoreError::WrongExpectedVersion { .. }) => Err(HandlerError::new(format!(
                "{} was written by another instance since this one read it",
                self.stream
            ))),
            Err(e) => Err(HandlerError::from_error(e)),
        }
    }
}

/// The versions of a [`StoredModel`]: version N in `$projection-<name>-v<N>`.
///
/// [`retire`](VersionedProjection::retire) drops the version from memory and keeps its
/// stream: the log is append-only, and nothing reads a retired version's stream again.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// use tidings::projection::{StoredVersions, VersionedRunner};
/// use tidings::projection::builtin::EventTypes;
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
///
/// let versions = StoredVersions::<_, EventTypes>::new("event-types", store.clone());
/// let mut runner = VersionedRunner::builder("event-types", store, versions).open().await.unwrap();
/// runner.catch_up().await.unwrap();
/// let live = runner.live();
/// assert_eq!(live.read().await.model().count("OrderCreated"), 1);
///
/// // Version 2 is filled while version 1 serves, then swapped in.
/// let report = runner.rebuild().await.unwrap();
/// assert_eq!((report.from_version, report.to_version), (1, 2));
/// let view = live.read().await;
/// assert_eq!((view.version(), view.model().count("OrderCreated")), (2, 1));
/// # });
/// ```
#[derive(Debug)]
pub struct StoredVersions<S, M> {
    name: String,
    store: S,
    model: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for StoredVersions<S, M> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            store: self.store.clone(),
            model: PhantomData,
        }
    }
}

impl<S: EventStore, M: StoredModel> StoredVersions<S, M> {
    /// Versions of the model called `name`, saved in `store`.
    pub fn new(name: impl Into<String>, store: S) -> Self {
        Self {
            name: name.into(),
            store,
            model: PhantomData,
        }
    }

    /// The stream version `version` is saved in: `$projection-<name>-v<version>`.
    pub fn stream(&self, version: u32) -> Result<StreamId, HandlerError> {
        StreamId::system(&format!("$projection-{}-v{version}", self.name))
            .map_err(HandlerError::from_error)
    }
}

impl<S: EventStore, M: StoredModel> VersionedProjection for StoredVersions<S, M> {
    type Model = Stored<S, M>;

    async fn open(&self, version: u32) -> Result<Self::Model, HandlerError> {
        Stored::load(self.store.clone(), self.stream(version)?).await
    }

    async fn retire(&self, _version: u32) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert
mod tests {
    use super::*;
    use crate::projection::builtin::EventTypes;
    use tidings_core::event::{Enricher, NewEvent};
    use tidings_core::store::{EventAppender, EventReader, InMemoryStore, ReadAll};

    async fn events(store: &InMemoryStore, n: usize) -> Vec<RecordedEvent> {
        let e = Enricher::new("test");
        let batch = (0..n)
            .map(|_| e.enrich(NewEvent::new("A", serde_json::json!({}))).unwrap())
            .collect();
        let stream = StreamId::new("a-1").unwrap();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
        store.read_all(ReadAll::new(0, 100)).await.unwrap()
    }

    #[tokio::test]
    async fn a_saved_model_skips_events_applied_again_and_two_writers_conflict() {
        let store = InMemoryStore::new();
        let all = events(&store, 3).await;
        let versions = StoredVersions::<_, EventTypes>::new("types", store.clone());
        let mut v1 = versions.open(1).await.unwrap();
        for e in &all[..2] {
            v1.apply(e).await.unwrap();
        }
        v1.flush().await.unwrap();

        // Reopened (a restart from an older checkpoint): the first two come again.
        let mut again = versions.open(1).await.unwrap();
        assert_eq!((again.next(), again.model().count("A")), (2, 2));
        for e in &all {
            again.apply(e).await.unwrap();
        }
        assert_eq!((again.next(), again.model().count("A")), (3, 3));
        again.flush().await.unwrap();

        // v1 did not see that save: it may not overwrite it.
        v1.apply(&all[2]).await.unwrap();
        let err = v1.flush().await.unwrap_err();
        assert!(err.message().contains("another instance"), "{err}");
        assert_eq!(versions.open(1).await.unwrap().model().count("A"), 3);
        // Other versions are other streams.
        assert!(versions.open(2).await.unwrap().model().is_empty());
    }
}
