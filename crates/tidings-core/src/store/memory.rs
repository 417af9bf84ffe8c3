//! [`InMemoryStore`]: the whole contract in memory, for tests, examples and embedding
//! where durability is not wanted. It keeps nothing across restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::Stream;
use tokio::sync::watch;
use uuid::Uuid;

use super::subscription::{self, HeadWatch};
use super::{
    AppendResult, Direction, EventAppender, EventReader, EventStreamItem, EventSubscriber,
    ExpectedVersion, Filter, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision,
    Start, StoreError, StreamInfo,
};
use crate::backend::{IdLocation, check_idempotent, validate_append};
use crate::event::{Clock, Event, Limits, SystemClock, truncate_to_micros};
use crate::stream::StreamId;

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: BTreeMap<StreamId, Vec<Position>>,
    ids: HashMap<Uuid, Position>,
    correlations: HashMap<String, Vec<Position>>,
}

/// An in-memory event store. Clones share one store.
///
/// ```
/// # tokio_test_block_on(async {
/// use tidings::{Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore,
///     NewEvent, ReadStream, StreamId};
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("order-123").unwrap();
/// let event = Enricher::new("order-service")
///     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
///     .unwrap();
/// let r = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
/// assert_eq!(r.next_expected_version, 0);
/// let events = store.read_stream(&stream, ReadStream::forward()).await.unwrap();
/// assert_eq!(events[0].event_type, "OrderCreated");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<RwLock<Inner>>,
    head: Arc<watch::Sender<Option<Position>>>,
    limits: Limits,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("events", &self.read_inner().log.len())
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner::default())),
            head: Arc::new(watch::channel(None).0),
            limits,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses another clock for `recorded_at`.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A receiver that sees the committed head move.
    pub fn head_watch(&self) -> HeadWatch {
        self.head.subscribe()
    }

    /// Every recorded event, in global order (a copy).
    pub fn all_events(&self) -> Vec<RecordedEvent> {
        self.read_inner().log.clone()
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events, &self.limits)?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let current = inner
            .streams
            .get(stream)
            .and_then(|p| p.len().checked_sub(1))
            .map(|r| r as Revision);
        let replay = check_idempotent(stream, expected, current, &events, |id| {
            inner.ids.get(id).map(|&p| {
                let e = &inner.log[p as usize];
                IdLocation {
                    stream: e.stream.clone(),
                    revision: e.revision,
                    position: e.position,
                }
            })
        })?;
        if let Some(result) = replay {
            return Ok(result);
        }
        if !expected.accepts(current) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        let recorded_at = truncate_to_micros(self.clock.now());
        let first_revision = current.map_or(0, |c| c + 1);
        let first_position = inner.log.len() as Position;
        let n = events.len() as u64;
        for (i, event) in events.into_iter().enumerate() {
            let position = first_position + i as u64;
            inner.ids.insert(event.event_id, position);
            if let Some(c) = &event.metadata.correlation_id {
                inner
                    .correlations
                    .entry(c.clone())
                    .or_default()
                    .push(position);
            }
            inner
                .streams
                .entry(stream.clone())
                .or_default()
                .push(position);
            inner.log.push(RecordedEvent {
                stream: stream.clone(),
                revision: first_revision + i as u64,
                position,
                recorded_at,
                event,
            });
        }
        drop(inner);
        let last = first_position + n - 1;
        self.head.send_replace(Some(last));
        Ok(AppendResult {
            first_revision,
            next_expected_version: first_revision + n - 1,
            first_position,
            position: last,
        })
    }
}

impl EventAppender for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        let _span =
            tracing::debug_span!("append", %stream, %expected, events = events.len()).entered();
        self.append_now(stream, expected, events)
    }

    fn limits(&self) -> Limits {
        self.limits
    }
}

impl EventReader for InMemoryStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read_inner();
        let Some(positions) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let pick = |p: &Position| inner.log[*p as usize].clone();
        let n = positions.len() as u64;
        Ok(match options.direction {
            Direction::Forward => {
                let from = options.from.unwrap_or(0).min(n) as usize;
                positions[from..]
                    .iter()
                    .take(options.limit)
                    .map(pick)
                    .collect()
            }
            Direction::Backward => {
                let Some(last) = n.checked_sub(1) else {
                    return Ok(Vec::new());
                };
                let from = options.from.unwrap_or(last).min(last) as usize;
                positions[..=from]
                    .iter()
                    .rev()
                    .take(options.limit)
                    .map(pick)
                    .collect()
            }
        })
    }

    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read_inner();
        let from = (options.from as usize).min(inner.log.len());
        Ok(inner.log[from..]
            .iter()
            .filter(|e| {
                options
                    .filter
                    .matches(e.stream.as_str(), &e.event.event_type)
            })
            .take(options.limit)
            .cloned()
            .collect())
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read_inner();
        Ok(inner
            .correlations
            .get(correlation_id)
            .map(|ps| {
                ps.iter()
                    .filter(|&&p| p >= from)
                    .take(limit)
                    .map(|&p| inner.log[p as usize].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        Ok(self
            .read_inner()
            .streams
            .get(stream)
            .and_then(|p| p.len().checked_sub(1))
            .map(|r| r as Revision))
    }

    async fn list_streams(&self, options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        let inner = self.read_inner();
        let prefix = options.prefix.as_deref().unwrap_or("");
        let lower = options.after.as_deref().unwrap_or("");
        Ok(inner
            .streams
            .range::<str, _>((std::ops::Bound::Excluded(lower), std::ops::Bound::Unbounded))
            .filter(|(s, _)| !s.as_str().is_empty())
            .skip_while(|(s, _)| !s.as_str().starts_with(prefix) && s.as_str() < prefix)
            .take_while(|(s, _)| s.as_str().starts_with(prefix))
            .take(options.limit)
            .filter_map(|(s, ps)| {
                let last = *ps.last()?;
                let e = &inner.log[last as usize];
                Some(StreamInfo {
                    stream: s.clone(),
                    last_revision: e.revision,
                    last_position: last,
                    last_written: e.recorded_at,
                })
            })
            .collect())
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        Ok(*self.head.borrow())
    }
}

impl EventSubscriber for InMemoryStore {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        subscription::subscribe_all(self.clone(), self.head_watch(), start, filter)
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        subscription::subscribe_stream(self.clone(), self.head_watch(), stream.clone(), start)
    }
}
