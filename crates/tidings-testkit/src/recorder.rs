//! [`EventRecorder`]: records what a store appends or a bus dispatches, and asserts on it.
//!
//! Wrap a store (`EventRecorder::wrap(store)` is itself a store and records every event
//! appended through it), wrap a dispatcher or bus (`EventRecorder::wrap(dispatcher)` is
//! itself a [`Dispatch`] target for a [`Publisher`](tidings_bus::Publisher)), or register
//! [`EventRecorder::handler`] as a handler for all types. Then assert with
//! [`expect_event`](EventRecorder::expect_event) and
//! [`expect_sequence`](EventRecorder::expect_sequence); a failure shows what was expected
//! and everything recorded.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings_testkit::EventRecorder;
//! use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
//! let store = EventRecorder::wrap(InMemoryStore::new());
//! let e = Enricher::new("order-service")
//!     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
//!     .unwrap();
//! store.append(&StreamId::new("order-123").unwrap(), ExpectedVersion::NoStream, vec![e]).await.unwrap();
//! store.expect_event("OrderCreated", |e| e.data.to_value()["orderId"] == "order-123");
//! store.expect_sequence(&["OrderCreated"]);
//! store.clear();
//! assert!(store.check_sequence(&["OrderCreated"]).is_err());
//! # });
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::Stream;

use tidings_bus::{Dispatch, DispatchReport};
use tidings_core::event::Event;
use tidings_core::handler::{BoxFuture, EventHandler, HandlerError};
use tidings_core::store::{
    AppendResult, EventAppender, EventReader, EventStreamItem, EventSubscriber, ExpectedVersion,
    Filter, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start, StoreError,
    StreamInfo,
};
use tidings_core::stream::StreamId;

/// An expectation that the recorded events did not meet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expected}\nrecorded ({} events):\n{}", recorded.len(), list(recorded))]
pub struct ExpectationFailed {
    /// What was expected.
    pub expected: String,
    /// Every recorded event, one line each.
    pub recorded: Vec<String>,
}

fn list(recorded: &[String]) -> String {
    if recorded.is_empty() {
        "  (nothing)".to_owned()
    } else {
        recorded.join("\n")
    }
}

const DATA_SHOWN: usize = 160;

fn line(i: usize, e: &RecordedEvent) -> String {
    let data = e.data.as_str();
    let data = match data.char_indices().nth(DATA_SHOWN) {
        Some((cut, _)) => format!("{}…", &data[..cut]),
        None => data.to_owned(),
    };
    format!(
        "  #{i} {} @{} {} v{} {}",
        e.stream, e.revision, e.event_type, e.event_version, data
    )
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    ids: HashSet<uuid::Uuid>,
}

/// Records events and checks expectations on them. Clones share one record.
#[derive(Clone, Default)]
pub struct EventRecorder<S = ()> {
    inner: S,
    log: Arc<Mutex<Log>>,
}

impl<S> fmt::Debug for EventRecorder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecorder")
            .field("recorded", &self.lock().events.len())
            .finish_non_exhaustive()
    }
}

impl EventRecorder<()> {
    /// A recorder wrapping nothing: feed it with [`EventRecorder::handler`] or
    /// [`EventRecorder::record`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> EventRecorder<S> {
    /// A recorder wrapping a store, a dispatcher or a bus.
    pub fn wrap(inner: S) -> Self {
        Self {
            inner,
            log: Arc::default(),
        }
    }

    /// The wrapped store, dispatcher or bus.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one event (an event already recorded, by id, is not recorded again).
    pub fn record(&self, event: RecordedEvent) {
        let mut log = self.lock();
        if log.ids.insert(event.event_id) {
            log.events.push(event);
        }
    }

    /// A handler that records every event it is given (register it for all types).
    pub fn handler(&self) -> RecordingHandler {
        RecordingHandler {
            log: Arc::clone(&self.log),
        }
    }

    /// Everything recorded, in order.
    pub fn recorded(&self) -> Vec<RecordedEvent> {
        self.lock().events.clone()
    }

    /// The types recorded, in order.
    pub fn recorded_types(&self) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    /// Forgets everything recorded.
    pub fn clear(&self) {
        let mut log = self.lock();
        log.events.clear();
        log.ids.clear();
    }

    fn failed(&self, expected: String) -> ExpectationFailed {
        ExpectationFailed {
            expected,
            recorded: self
                .lock()
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| line(i, e))
                .collect(),
        }
    }

    /// The recorded events of `event_type` that `matcher` accepts; an error when there
    /// are none.
    pub fn check_event(
        &self,
        event_type: &str,
        matcher: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<Vec<RecordedEvent>, ExpectationFailed> {
        let (of_type, matching): (usize, Vec<RecordedEvent>) = {
            let log = self.lock();
            let of_type: Vec<&RecordedEvent> = log
                .events
                .iter()
                .filter(|e| e.event_type == event_type)
                .collect();
            let n = of_type.len();
            (
                n,
                of_type
                    .into_iter()
                    .filter(|e| matcher(e))
                    .cloned()
                    .collect(),
            )
        };
        if matching.is_empty() {
            let expected = if of_type == 0 {
                format!("expected an event {event_type}, but none was recorded")
            } else {
                format!(
                    "expected an event {event_type} matching the criteria, but none of the {of_type} recorded matched"
                )
            };
            return Err(self.failed(expected));
        }
        Ok(matching)
    }

    /// Asserts that an event of `event_type` accepted by `matcher` was recorded, and
    /// returns every such event.
    ///
    /// # Panics
    /// Otherwise, showing the expectation and everything recorded.
    #[track_caller]
    pub fn expect_event(
        &self,
        event_type: &str,
        matcher: impl Fn(&RecordedEvent) -> bool,
    ) -> Vec<RecordedEvent> {
        self.check_event(event_type, matcher)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the recorded events begin with events of exactly these types, in order.
    pub fn check_sequence(&self, event_types: &[&str]) -> Result<(), ExpectationFailed> {
        let types = self.recorded_types();
        let expected = || {
            format!(
                "expected the events to begin with [{}]",
                event_types.join(", ")
            )
        };
        if types.len() < event_types.len() {
            return Err(self.failed(format!(
                "{}, but only {} were recorded",
                expected(),
                types.len()
            )));
        }
        if let Some((i, (want, got))) = event_types
            .iter()
            .zip(&types)
            .enumerate()
            .find(|(_, (want, got))| **want != got.as_str())
        {
            return Err(self.failed(format!(
                "{}, but #{i} is {got} where {want} was expected",
                expected()
            )));
        }
        Ok(())
    }

    /// Asserts that the recorded events begin with events of these types, in order.
    ///
    /// # Panics
    /// Otherwise, showing the expectation and everything recorded.
    #[track_caller]
    pub fn expect_sequence(&self, event_types: &[&str]) {
        if let Err(e) = self.check_sequence(event_types) {
            panic!("{e}");
        }
    }

    /// Asserts that no event of `event_type` was recorded.
    ///
    /// # Panics
    /// Otherwise, showing everything recorded.
    #[track_caller]
    pub fn expect_no_event(&self, event_type: &str) {
        if self.recorded_types().iter().any(|t| t == event_type) {
            panic!(
                "{}",
                self.failed(format!(
                    "expected no event {event_type}, but one was recorded"
                ))
            );
        }
    }
}

/// The handler from [`EventRecorder::handler`].
#[derive(Clone)]
pub struct RecordingHandler {
    log: Arc<Mutex<Log>>,
}

impl fmt::Debug for RecordingHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordingHandler")
    }
}

impl EventHandler for RecordingHandler {
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.ids.insert(event.event_id) {
            log.events.push(event.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl<D: Dispatch> Dispatch for EventRecorder<D> {
    /// Records the event, then hands it to the wrapped dispatcher or bus.
    fn dispatch(&self, event: RecordedEvent) -> BoxFuture<'_, DispatchReport> {
        self.record(event.clone());
        self.inner.dispatch(event)
    }
}

impl<S> EventAppender for EventRecorder<S>
where
    S: EventAppender + EventReader,
{
    /// Appends to the wrapped store, then records the events as it recorded them.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        let count = events.len();
        let result = self.inner.append(stream, expected, events).await?;
        let stored = self
            .inner
            .read_stream(
                stream,
                ReadStream::forward()
                    .from(result.first_revision)
                    .limit(count),
            )
            .await?;
        for e in stored {
            self.record(e);
        }
        Ok(result)
    }

    fn limits(&self) -> tidings_core::Limits {
        self.inner.limits()
    }
}

impl<S: EventReader> EventReader for EventRecorder<S> {
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_stream(stream, options)
    }

    fn read_all(
        &self,
        options: ReadAll,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_all(options)
    }

    fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_correlation(correlation_id, from, limit)
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

impl<S: EventSubscriber> EventSubscriber for EventRecorder<S> {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.inner.subscribe_all(start, filter)
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.inner.subscribe_stream(stream, start)
    }
}
