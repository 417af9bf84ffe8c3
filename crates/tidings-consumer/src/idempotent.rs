//! [`Idempotent`]: a handler wrapper that handles each event id once, for at-least-once
//! delivery.
//!
//! The ids of successfully handled events are kept in a [`SeenEvents`] set of bounded
//! size: at most `capacity` ids, the oldest forgotten first (16 bytes per id plus the
//! set's overhead — about 48 bytes each, so the default 100 000 ids take about 5 MB).
//! A duplicate that arrives after its id has been forgotten is handled again; size the
//! set to cover the redelivery window (for a consumer group: its buffer plus the events
//! between two checkpoints). A failed handling is not recorded, so a retry runs it again.
//! The set lives in memory: after a process restart, keep handlers idempotent by their
//! own means (upserts, natural keys) or persist the ids with the read model.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use tidings_core::handler::{BoxFuture, EventHandler, HandlerError};
use tidings_core::store::RecordedEvent;

/// The default number of ids a [`SeenEvents`] remembers.
pub const DEFAULT_SEEN_CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

/// A bounded set of handled event ids; clones share one set.
///
/// ```
/// use tidings::consumer::SeenEvents;
/// let seen = SeenEvents::with_capacity(2);
/// let [a, b, c] = [1u128, 2, 3].map(uuid::Uuid::from_u128);
/// assert!(seen.insert(a));
/// assert!(!seen.insert(a));
/// seen.insert(b);
/// seen.insert(c); // forgets a, the oldest
/// assert!(!seen.contains(a) && seen.contains(b) && seen.contains(c));
/// assert_eq!(seen.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct SeenEvents {
    capacity: usize,
    inner: Arc<Mutex<Seen>>,
}

impl Default for SeenEvents {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_SEEN_CAPACITY)
    }
}

impl SeenEvents {
    /// A set that remembers at most `capacity` ids (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: Uuid) -> bool {
        self.lock().ids.contains(&id)
    }

    /// Remembers `id`; false when it already was. Forgets the oldest id when full.
    pub fn insert(&self, id: Uuid) -> bool {
        let mut seen = self.lock();
        if !seen.ids.insert(id) {
            return false;
        }
        seen.order.push_back(id);
        while seen.order.len() > self.capacity {
            if let Some(old) = seen.order.pop_front() {
                seen.ids.remove(&old);
            }
        }
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most ids it remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Wraps a handler so that an event id it has handled successfully is skipped (and
/// reported as success) when delivered again.
///
/// Two deliveries of one id that run at the same time may both reach the handler; a
/// [`ConsumerGroup`](super::ConsumerGroup) never does that (one delivery per stream at
/// a time).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use tidings::bus::{EventHandler, handler_fn};
/// use tidings::consumer::Idempotent;
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = calls.clone();
/// let handler = Idempotent::new(handler_fn(move |_e| {
///     c.fetch_add(1, Ordering::SeqCst);
///     async { Ok(()) }
/// }));
/// # let event = tidings::RecordedEvent { stream: tidings::StreamId::new("order-1").unwrap(),
/// #   revision: 0, position: 0, recorded_at: jiff::Timestamp::UNIX_EPOCH,
/// #   event: tidings::Enricher::new("s").enrich(tidings::NewEvent::new("OrderCreated",
/// #   serde_json::json!({}))).unwrap() };
/// handler.handle(&event).await.unwrap();
/// handler.handle(&event).await.unwrap();
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// assert_eq!(handler.skipped(), 1);
/// # });
/// ```
#[derive(Debug)]
pub struct Idempotent<H> {
    inner: H,
    seen: SeenEvents,
    skipped: std::sync::atomic::AtomicU64,
}

impl<H: EventHandler> Idempotent<H> {
    /// Wraps `inner` with a fresh set of the default capacity.
    pub fn new(inner: H) -> Self {
        Self::with_seen(inner, SeenEvents::default())
    }

    /// Wraps `inner` with `seen`, which may be shared with other handlers.
    pub fn with_seen(inner: H, seen: SeenEvents) -> Self {
        Self {
            inner,
            seen,
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The set of handled ids.
    pub fn seen(&self) -> &SeenEvents {
        &self.seen
    }

    /// How many duplicate deliveries were skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<H: EventHandler> EventHandler for Idempotent<H> {
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.seen.contains(event.event_id) {
                self.skipped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(event_id = %event.event_id, "duplicate delivery skipped");
                return Ok(());
            }
            self.inner.handle(event).await?;
            self.seen.insert(event.event_id);
            Ok(())
        })
    }
}
