//! [`Upcasting`]: a store whose readers see every event in its current schema.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use super::{
    AppendResult, EventAppender, EventReader, EventStreamItem, EventSubscriber, ExpectedVersion,
    Filter, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start, StoreError,
    StreamInfo,
};
use crate::event::upcast::Upcasters;
use crate::event::{Event, Limits};
use crate::stream::StreamId;

/// Wraps a store so that everything read from it — reads, correlations, subscriptions —
/// comes out upcast to the current schema by [`Upcasters`]. Appends pass through
/// unchanged: the log keeps what was written.
///
/// Hand the wrapped store to whatever consumes events (a consumer group, a projection, a
/// saga runtime, a publisher) and every handler behind it sees only current schemas. An
/// event no upcaster can bring forward is an error ([`StoreError::Upcast`]) naming it,
/// never a silently old event.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::store::Upcasting;
/// use tidings::{Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore,
///     NewEvent, ReadStream, StreamId, Upcaster, Upcasters};
/// let upcasters = Upcasters::new()
///     .with(Upcaster::new("OrderCreated", "1.0", "2.0", |mut data| {
///         data["currency"] = serde_json::json!("EUR");
///         Ok(data)
///     }))
///     .unwrap();
/// let store = Upcasting::new(InMemoryStore::new(), upcasters);
/// let old = Enricher::new("shop")
///     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"total": 5})).with_version("1.0"))
///     .unwrap();
/// let order = StreamId::new("order-1").unwrap();
/// store.append(&order, ExpectedVersion::NoStream, vec![old]).await.unwrap();
/// let read = store.read_stream(&order, ReadStream::forward()).await.unwrap();
/// assert_eq!(read[0].event_version, "2.0");
/// assert_eq!(read[0].data.to_value()["currency"], "EUR");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Upcasting<S> {
    inner: S,
    upcasters: Arc<Upcasters>,
}

impl<S> Upcasting<S> {
    /// `inner`, read through `upcasters`.
    pub fn new(inner: S, upcasters: Upcasters) -> Self {
        Self {
            inner,
            upcasters: Arc::new(upcasters),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn upcast_one(upcasters: &Upcasters, event: RecordedEvent) -> Result<RecordedEvent, StoreError> {
    let (stream, revision) = (event.stream.clone(), event.revision);
    upcasters
        .upcast_recorded(event)
        .map_err(|source| StoreError::Upcast {
            stream,
            revision,
            source: Box::new(source),
        })
}

fn upcast_all(
    upcasters: &Upcasters,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    events
        .into_iter()
        .map(|e| upcast_one(upcasters, e))
        .collect()
}

impl<S: EventAppender> EventAppender for Upcasting<S> {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        self.inner.append(stream, expected, events)
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }
}

impl<S: EventReader> EventReader for Upcasting<S> {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        upcast_all(
            &self.upcasters,
            self.inner.read_stream(stream, options).await?,
        )
    }

    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        upcast_all(&self.upcasters, self.inner.read_all(options).await?)
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        upcast_all(
            &self.upcasters,
            self.inner
                .read_correlation(correlation_id, from, limit)
                .await?,
        )
    }

    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Revision>, StoreError>> + Send {
        self.inner.stream_version(stream)
    }

    fn list_streams(
        &self,
        options: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>, StoreError>> + Send {
        self.inner.list_streams(options)
    }

    fn head(&self) -> impl Future<Output = Result<Option<Position>, StoreError>> + Send {
        self.inner.head()
    }
}

impl<S: EventSubscriber> EventSubscriber for Upcasting<S> {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        let upcasters = Arc::clone(&self.upcasters);
        self.inner
            .subscribe_all(start, filter)
            .map(move |item| item.and_then(|e| upcast_one(&upcasters, e)))
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        let upcasters = Arc::clone(&self.upcasters);
        self.inner
            .subscribe_stream(stream, start)
            .map(move |item| item.and_then(|e| upcast_one(&upcasters, e)))
    }
}
