//! [`Publisher`]: enrich, append (where the store validates), then dispatch.

use std::fmt;
use std::sync::Arc;

use futures::Stream;

use super::Dispatch;
use super::outcome::DispatchReport;
use tidings_core::event::{Enricher, Event, EventError, Limits, Metadata, NewEvent};
use tidings_core::handler::causation::current_cause;
use tidings_core::store::{
    AppendResult, EventAppender, EventReader, EventStreamItem, EventSubscriber, ExpectedVersion,
    Filter, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start, StoreError,
    StreamInfo,
};
use tidings_core::stream::StreamId;

/// Why a publish was refused or failed. Nothing was appended and nothing dispatched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// An event was refused by validation.
    #[error("event {index} of the publish was refused: {source}")]
    InvalidEvent {
        /// Its index in the publish.
        index: usize,
        /// Why.
        #[source]
        source: EventError,
    },
    /// The store refused or failed the append.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PublishError> for tidings_core::handler::HandlerError {
    fn from(e: PublishError) -> Self {
        Self::from_error(e)
    }
}

/// What a successful publish did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The append's result.
    pub append: AppendResult,
    /// The events as recorded, in order.
    pub events: Vec<RecordedEvent>,
    /// One dispatch report per event, in order.
    pub reports: Vec<DispatchReport>,
}

/// Publishes events: enriches them, appends them to a stream with an
/// expected version, then dispatches each recorded event.
///
/// Causation is automatic: an event published while a dispatcher runs a handler for
/// event E gets `causation_id = E.event_id` and E's correlation id (and user), unless its
/// producer set them. An event published outside any handler starts a transaction: when
/// it has no correlation id, the first event of the publish lends its own id as the
/// correlation id of every event of the publish.
///
/// Re-publishing events whose ids are already recorded (a retry) appends nothing — the
/// store answers idempotently — but dispatches them again, so handlers must be
/// idempotent. See `docs/decisions/0002-publishing-and-causation.md`.
///
/// A `Publisher` is itself a store ([`EventAppender`], [`EventReader`],
/// [`EventSubscriber`]): appending through it applies causation and dispatches, reads go
/// to the store, so a repository (`tidings::aggregate::Repository`) built on it publishes
/// what aggregates decide.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::bus::{Dispatcher, Publisher, handler_fn};
/// use tidings::{Enricher, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// let dispatcher = Dispatcher::new();
/// let publisher = Publisher::new(InMemoryStore::new(), Enricher::new("order-service"), dispatcher.clone());
/// let p = publisher.clone();
/// dispatcher.on("OrderCreated", "welcome", handler_fn(move |e| {
///     let p = p.clone();
///     async move {
///         let stream = StreamId::new("mail").unwrap();
///         p.publish(&stream, ExpectedVersion::Any, NewEvent::new("MailSent", serde_json::json!({}))).await?;
///         Ok(())
///     }
/// }));
/// let order = StreamId::new("order-123").unwrap();
/// let published = publisher
///     .publish(&order, ExpectedVersion::NoStream, NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
///     .await
///     .unwrap();
/// let created = &published.events[0];
/// let mail = &publisher.store().all_events()[1];
/// assert_eq!(mail.metadata.causation_id, Some(created.event_id.to_string()));
/// assert_eq!(mail.metadata.correlation_id, created.metadata.correlation_id);
/// # });
/// ```
#[derive(Clone)]
pub struct Publisher<S> {
    store: S,
    enricher: Enricher,
    dispatch: Arc<dyn Dispatch>,
}

impl<S: fmt::Debug> fmt::Debug for Publisher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("store", &self.store)
            .field("enricher", &self.enricher)
            .finish_non_exhaustive()
    }
}

impl<S> Publisher<S>
where
    S: EventAppender + EventReader,
{
    /// A publisher appending to `store`, enriching with `enricher` and dispatching to
    /// `dispatch` (a [`Dispatcher`](super::Dispatcher) or an
    /// [`InProcessBus`](super::InProcessBus)).
    pub fn new(store: S, enricher: Enricher, dispatch: impl Dispatch) -> Self {
        Self {
            store,
            enricher,
            dispatch: Arc::new(dispatch),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The enricher.
    pub fn enricher(&self) -> &Enricher {
        &self.enricher
    }

    /// Publishes one event to `stream` if it is at `expected`.
    pub async fn publish(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        event: NewEvent,
    ) -> Result<Published, PublishError> {
        self.publish_all(stream, expected, vec![event]).await
    }

    /// Publishes several events to `stream` in one atomic append, then dispatches them in
    /// order.
    pub async fn publish_all(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Published, PublishError> {
        let events = events
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                self.enricher
                    .enrich(e)
                    .map_err(|source| PublishError::InvalidEvent { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self.append_and_dispatch(stream, expected, events).await {
            Ok(published) => Ok(published),
            Err(StoreError::InvalidEvent { index, source }) => {
                Err(PublishError::InvalidEvent { index, source })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn append_and_dispatch(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<Published, StoreError> {
        apply_causation(&mut events);
        let count = events.len();
        let append = self.store.append(stream, expected, events).await?;
        let recorded = self
            .store
            .read_stream(
                stream,
                ReadStream::forward()
                    .from(append.first_revision)
                    .limit(count),
            )
            .await?;
        let mut reports = Vec::with_capacity(recorded.len());
        for event in &recorded {
            let report = self.dispatch.dispatch(event.clone()).await;
            for failure in report.failures() {
                if let Err(e) = &failure.result {
                    tracing::warn!(
                        handler = %failure.handler,
                        event_type = %event.event_type,
                        event_id = %event.event_id,
                        error = %e,
                        "handler failed for a published event"
                    );
                }
            }
            reports.push(report);
        }
        Ok(Published {
            append,
            events: recorded,
            reports,
        })
    }
}

/// Fills causation and correlation: from the event being handled, if any; otherwise the
/// first event's id correlates the whole batch.
fn apply_causation(events: &mut [Event]) {
    match current_cause() {
        Some(cause) => {
            for e in events.iter_mut() {
                cause.apply_to(&mut e.metadata);
            }
        }
        None => {
            let Some(root) = events
                .first()
                .map(|e| root_correlation(&e.metadata, e.event_id))
            else {
                return;
            };
            for e in events.iter_mut() {
                e.metadata
                    .correlation_id
                    .get_or_insert_with(|| root.clone());
            }
        }
    }
}

fn root_correlation(metadata: &Metadata, id: uuid::Uuid) -> String {
    metadata
        .correlation_id
        .clone()
        .unwrap_or_else(|| id.to_string())
}

impl<S> EventAppender for Publisher<S>
where
    S: EventAppender + EventReader,
{
    /// Appends complete events (applying causation), then dispatches them. Dispatch
    /// reports are logged, not returned; use [`Publisher::publish_all`] to get them.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        Ok(self
            .append_and_dispatch(stream, expected, events)
            .await?
            .append)
    }

    fn limits(&self) -> Limits {
        self.store.limits()
    }
}

impl<S> EventReader for Publisher<S>
where
    S: EventReader,
{
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.store.read_stream(stream, options)
    }

    fn read_all(
        &self,
        options: ReadAll,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.store.read_all(options)
    }

    fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.store.read_correlation(correlation_id, from, limit)
    }

    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Revision>, StoreError>> + Send {
        self.store.stream_version(stream)
    }

    fn list_streams(
        &self,
        options: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>, StoreError>> + Send {
        self.store.list_streams(options)
    }

    fn head(&self) -> impl Future<Output = Result<Option<Position>, StoreError>> + Send {
        self.store.head()
    }
}

impl<S> EventSubscriber for Publisher<S>
where
    S: EventSubscriber,
{
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.store.subscribe_all(start, filter)
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.store.subscribe_stream(stream, start)
    }
}
