//! Inboxes: which event ids a consumer has already handled, to drop duplicate deliveries.
//!
//! Brokers and the outbox relay deliver at least once, so the same event id can arrive
//! twice. An [`Inbox`] answers "was this id handled?" before the handler runs and
//! remembers the id after it succeeded. Three kinds:
//!
//! - [`SeenEvents`] — in memory, bounded, forgotten on restart.
//! - [`StoreInbox`] — in a system stream `$inbox-<name>` of any
//!   [`EventStore`], so it survives restarts and is shared by the instances that name it.
//! - [`NoInbox`] — remembers nothing (every delivery runs the handler).
//!
//! The id is recorded *after* the handler succeeded and in a separate write: a crash
//! between the two, or a failed write, leaves the id unrecorded and a later duplicate is
//! handled again. Handlers whose writes live in PostgreSQL can close that gap with the
//! transactional inbox of `tidings-postgres` (`PgInbox`).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use uuid::Uuid;

use super::idempotent::SeenEvents;
use tidings_core::event::{Clock, Event, Metadata, Payload, SystemClock};
use tidings_core::store::{
    EventStore, ExpectedVersion, ReadStream, RecordedEvent, Revision, StoreError,
};
use tidings_core::stream::{StreamId, StreamIdError};

/// The event type of a record in `$inbox-<name>`.
pub const INBOX_EVENT_TYPE: &str = "$InboxHandled";

/// The default number of ids a [`StoreInbox`] remembers.
pub const DEFAULT_INBOX_WINDOW: usize = 100_000;

/// How many times [`StoreInbox::record`] retries an append another instance raced.
const MAX_CONFLICTS: u32 = 8;

/// How many records one page of the window's load reads.
const LOAD_PAGE: usize = 1024;

/// Why an inbox could not answer or remember.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The inbox's name does not make a valid system stream name.
    #[error("inbox name {name:?} is not usable: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: StreamIdError,
    },
    /// Reading or writing the inbox's stream failed.
    #[error("inbox {name}: {source}")]
    Store {
        /// The inbox's name.
        name: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A record in the inbox's stream could not be decoded.
    #[error("inbox {name}: record at revision {revision} is unreadable: {reason}")]
    Corrupt {
        /// The inbox's name.
        name: String,
        /// The record's revision.
        revision: Revision,
        /// What is wrong with it.
        reason: String,
    },
    /// Other instances kept appending to the inbox's stream; the id was not recorded.
    #[error("inbox {name}: gave up recording after {attempts} conflicting appends")]
    Contended {
        /// The inbox's name.
        name: String,
        /// Appends tried.
        attempts: u32,
    },
    /// A backend's own failure (such as PostgreSQL's).
    #[error("inbox {name}: {message}")]
    Backend {
        /// The inbox's name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// Remembers which event ids were handled.
pub trait Inbox: Send + Sync + 'static {
    /// Whether `id` was recorded as handled (and is still remembered).
    fn seen(&self, id: Uuid) -> impl Future<Output = Result<bool, InboxError>> + Send;

    /// Records `id` as handled.
    fn record(&self, id: Uuid) -> impl Future<Output = Result<(), InboxError>> + Send;
}

impl<I: Inbox + ?Sized> Inbox for Arc<I> {
    fn seen(&self, id: Uuid) -> impl Future<Output = Result<bool, InboxError>> + Send {
        (**self).seen(id)
    }

    fn record(&self, id: Uuid) -> impl Future<Output = Result<(), InboxError>> + Send {
        (**self).record(id)
    }
}

/// The in-memory inbox: bounded to its capacity, forgotten when the process ends.
impl Inbox for SeenEvents {
    async fn seen(&self, id: Uuid) -> Result<bool, InboxError> {
        Ok(self.contains(id))
    }

    async fn record(&self, id: Uuid) -> Result<(), InboxError> {
        self.insert(id);
        Ok(())
    }
}

/// An inbox that remembers nothing: every delivery reaches the handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInbox;

impl Inbox for NoInbox {
    async fn seen(&self, _id: Uuid) -> Result<bool, InboxError> {
        Ok(false)
    }

    async fn record(&self, _id: Uuid) -> Result<(), InboxError> {
        Ok(())
    }
}

/// The stream a [`StoreInbox`] named `name` keeps: `$inbox-<name>`.
pub fn inbox_stream(name: &str) -> Result<StreamId, InboxError> {
    StreamId::system(&format!("$inbox-{name}")).map_err(|source| InboxError::InvalidName {
        name: name.to_owned(),
        source,
    })
}

/// The ids remembered, oldest first, with when they were recorded.
#[derive(Debug, Default)]
struct Window {
    ids: HashSet<Uuid>,
    order: VecDeque<(Uuid, Timestamp)>,
}

impl Window {
    fn push(&mut self, id: Uuid, at: Timestamp) {
        if self.ids.insert(id) {
            self.order.push_back((id, at));
        }
    }

    /// Forgets beyond `capacity` ids and, with `max_age`, ids recorded before `now - max_age`.
    fn trim(&mut self, capacity: usize, max_age: Option<Duration>, now: Timestamp) {
        while self.order.len() > capacity {
            if let Some((id, _)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
        if let Some(cutoff) = max_age.and_then(|age| cutoff(now, age)) {
            while self.order.front().is_some_and(|(_, at)| *at < cutoff) {
                if let Some((id, _)) = self.order.pop_front() {
                    self.ids.remove(&id);
                }
            }
        }
    }
}

fn cutoff(now: Timestamp, age: Duration) -> Option<Timestamp> {
    let span = jiff::SignedDuration::try_from(age).ok()?;
    now.checked_sub(span).ok()
}

#[derive(Debug, Default)]
struct State {
    loaded: bool,
    /// The last revision of the stream this instance has folded in (None: no stream).
    version: Option<Revision>,
    window: Window,
}

/// An inbox kept in the system stream `$inbox-<name>` of any [`EventStore`].
///
/// **What is written.** Each [`record`](Inbox::record) appends one small
/// `$InboxHandled {"ids": ["<uuid>"]}` event (and [`record_all`](Self::record_all)
/// one event for a batch), with the stream version this instance last saw as the
/// expected version. When another instance appended meanwhile, this one reads what it
/// wrote, folds it in, and appends again — so instances sharing a name never overwrite
/// or interleave half-records, and an id another instance recorded is not written twice.
///
/// **What is remembered.** The window: the last [`window`](Self::window) ids recorded
/// (default [`DEFAULT_INBOX_WINDOW`], 100 000), and with [`max_age`](Self::max_age) only
/// those recorded within that age (by the record's timestamp, from the inbox's clock). On first use the window
/// is loaded by reading the stream backward until it is full (or the records get older
/// than the age); afterwards this instance adds what it records and, when an id is not
/// in the window, first reads whatever other instances appended since. An id older than
/// the window is forgotten: a duplicate arriving that late is handled again. Size the
/// window to cover the redelivery horizon (broker redeliveries, the outbox relay's
/// replays after a crash, a dead letter replayed by hand).
///
/// **What is not.** Failed handlings are never recorded (a retry must run the handler).
/// The stream itself is append-only and grows by one record per handled event (or
/// batch); only memory and load time are bounded by the window.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::InMemoryStore;
/// use tidings::consumer::{Inbox, StoreInbox};
/// let store = InMemoryStore::new();
/// let id = uuid::Uuid::now_v7();
/// StoreInbox::new(store.clone(), "emails").record(id).await.unwrap();
/// // A new instance (after a restart) loads the window from the store.
/// assert!(StoreInbox::new(store, "emails").seen(id).await.unwrap());
/// # });
/// ```
#[derive(Clone)]
pub struct StoreInbox<S> {
    store: S,
    name: String,
    capacity: usize,
    max_age: Option<Duration>,
    clock: Arc<dyn Clock>,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl<S> std::fmt::Debug for StoreInbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreInbox")
            .field("name", &self.name)
            .field("window", &self.capacity)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> StoreInbox<S> {
    /// The inbox `name` in `store`, remembering the default window. Nothing is read until
    /// first use (or [`load`](Self::load)). Clones share one window; separate `new`
    /// handles act as separate instances.
    pub fn new(store: S, name: impl Into<String>) -> Self {
        Self {
            store,
            name: name.into(),
            capacity: DEFAULT_INBOX_WINDOW,
            max_age: None,
            clock: Arc::new(SystemClock),
            state: Arc::default(),
        }
    }

    /// Remembers at most this many ids (at least 1).
    pub fn window(mut self, ids: usize) -> Self {
        self.capacity = ids.max(1);
        self
    }

    /// Also forgets ids recorded longer ago than `age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Uses `clock` for records' timestamps and the age limit.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The inbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads the window now (first use does otherwise). Returns how many ids it holds.
    pub async fn load(&self) -> Result<usize, InboxError> {
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        Ok(st.window.order.len())
    }

    /// How many ids the window holds now (0 before it is loaded).
    pub async fn remembered(&self) -> usize {
        self.state.lock().await.window.order.len()
    }

    /// Records every id of `ids` as handled, in one record.
    pub async fn record_all(&self, ids: &[Uuid]) -> Result<(), InboxError> {
        let stream = inbox_stream(&self.name)?;
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        let mut attempts = 0;
        loop {
            let fresh: Vec<Uuid> = {
                let mut unique = HashSet::new();
                ids.iter()
                    .copied()
                    .filter(|id| !st.window.ids.contains(id) && unique.insert(*id))
                    .collect()
            };
            if fresh.is_empty() {
                return Ok(());
            }
            if attempts == MAX_CONFLICTS {
                return Err(InboxError::Contended {
                    name: self.name.clone(),
                    attempts,
                });
            }
            attempts += 1;
            let now = self.clock.now();
            let expected = st
                .version
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self
                .store
                .append(&stream, expected, vec![self.record_event(&fresh, now)])
                .await
            {
                Ok(r) => {
                    st.version = Some(r.next_expected_version);
                    for id in fresh {
                        st.window.push(id, now);
                    }
                    st.window.trim(self.capacity, self.max_age, now);
                    return Ok(());
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    tracing::debug!(inbox = %self.name, "inbox moved by another instance; catching up");
                    self.catch_up(&mut st).await?;
                }
                Err(source) => return Err(self.store_err(source)),
            }
        }
    }

    fn record_event(&self, ids: &[Uuid], now: Timestamp) -> Event {
        Event {
            event_id: Uuid::now_v7(),
            event_type: INBOX_EVENT_TYPE.to_owned(),
            event_version: "1.0".to_owned(),
            timestamp: now,
            source: "tidings-consumer".to_owned(),
            data: Payload::from(serde_json::json!({ "ids": ids })),
            metadata: Metadata::default(),
        }
    }

    fn store_err(&self, source: StoreError) -> InboxError {
        InboxError::Store {
            name: self.name.clone(),
            source,
        }
    }

    fn ids_of(&self, record: &RecordedEvent) -> Result<Vec<Uuid>, InboxError> {
        let value = record.data.to_value();
        let ids = value.get("ids").ok_or_else(|| InboxError::Corrupt {
            name: self.name.clone(),
            revision: record.revision,
            reason: format!("no \"ids\" in {}", record.data),
        })?;
        serde_json::from_value(ids.clone()).map_err(|e| InboxError::Corrupt {
            name: self.name.clone(),
            revision: record.revision,
            reason: format!("\"ids\" is not a list of UUIDs: {e}"),
        })
    }

    /// Reads the newest records backward until the window is full or too old.
    async fn ensure_loaded(&self, st: &mut State) -> Result<(), InboxError> {
        if st.loaded {
            return Ok(());
        }
        let stream = inbox_stream(&self.name)?;
        let now = self.clock.now();
        let oldest = self.max_age.and_then(|age| cutoff(now, age));
        let mut newest_first: Vec<(Uuid, Timestamp)> = Vec::new();
        let mut version = None;
        let mut from: Option<Revision> = None;
        'pages: loop {
            let mut read = ReadStream::backward().limit(LOAD_PAGE);
            if let Some(f) = from {
                read = read.from(f);
            }
            let page = self
                .store
                .read_stream(&stream, read)
                .await
                .map_err(|e| self.store_err(e))?;
            let Some(last) = page.last() else { break };
            let next_from = last.revision.checked_sub(1);
            for record in &page {
                version.get_or_insert(record.revision);
                if oldest.is_some_and(|o| record.timestamp < o) {
                    break 'pages;
                }
                if record.event_type != INBOX_EVENT_TYPE {
                    continue;
                }
                for id in self.ids_of(record)?.into_iter().rev() {
                    newest_first.push((id, record.timestamp));
                }
                if newest_first.len() >= self.capacity {
                    break 'pages;
                }
            }
            match next_from {
                Some(f) if page.len() == LOAD_PAGE => from = Some(f),
                _ => break,
            }
        }
        let mut window = Window::default();
        for (id, at) in newest_first.into_iter().rev() {
            window.push(id, at);
        }
        window.trim(self.capacity, self.max_age, now);
        tracing::debug!(inbox = %self.name, ids = window.order.len(), "inbox window loaded");
        *st = State {
            loaded: true,
            version,
            window,
        };
        Ok(())
    }

    /// Folds in what other instances appended after this one's version.
    async fn catch_up(&self, st: &mut State) -> Result<(), InboxError> {
        let stream = inbox_stream(&self.name)?;
        let from = st.version.map_or(0, |v| v + 1);
        let records = self
            .store
            .read_stream(&stream, ReadStream::forward().from(from))
            .await
            .map_err(|e| self.store_err(e))?;
        for record in &records {
            st.version = Some(record.revision);
            if record.event_type == INBOX_EVENT_TYPE {
                for id in self.ids_of(record)? {
                    st.window.push(id, record.timestamp);
                }
            }
        }
        st.window
            .trim(self.capacity, self.max_age, self.clock.now());
        Ok(())
    }
}

impl<S: EventStore> Inbox for StoreInbox<S> {
    async fn seen(&self, id: Uuid) -> Result<bool, InboxError> {
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        let now = self.clock.now();
        st.window.trim(self.capacity, self.max_age, now);
        if st.window.ids.contains(&id) {
            return Ok(true);
        }
        self.catch_up(&mut st).await?;
        Ok(st.window.ids.contains(&id))
    }

    async fn record(&self, id: Uuid) -> Result<(), InboxError> {
        self.record_all(&[id]).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tidings_core::store::{EventAppender, EventReader, InMemoryStore};

    #[tokio::test]
    async fn window_keeps_the_last_ids_across_instances() {
        let store = InMemoryStore::new();
        let ids: Vec<Uuid> = (0..10u128).map(Uuid::from_u128).collect();
        let a = StoreInbox::new(store.clone(), "w").window(4);
        for id in &ids {
            a.record(*id).await.unwrap();
        }
        assert_eq!(a.remembered().await, 4);
        let b = StoreInbox::new(store.clone(), "w").window(4);
        assert_eq!(b.load().await.unwrap(), 4);
        assert!(b.seen(ids[9]).await.unwrap() && b.seen(ids[6]).await.unwrap());
        assert!(!b.seen(ids[5]).await.unwrap());
    }

    #[tokio::test]
    async fn two_instances_interleave_without_losing_ids() {
        let store = InMemoryStore::new();
        let a = StoreInbox::new(store.clone(), "shared");
        let b = StoreInbox::new(store.clone(), "shared");
        let (x, y, z) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        a.record(x).await.unwrap();
        b.record(y).await.unwrap(); // conflicts once, catches up, appends
        a.record(z).await.unwrap();
        // b learns of what a wrote when asked about it.
        assert!(b.seen(x).await.unwrap() && b.seen(z).await.unwrap());
        // An id another instance recorded is not written again.
        b.record(x).await.unwrap();
        let stream = inbox_stream("shared").unwrap();
        let all = store
            .read_stream(&stream, ReadStream::forward())
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        let c = StoreInbox::new(store, "shared");
        for id in [x, y, z] {
            assert!(c.seen(id).await.unwrap());
        }
    }

    #[tokio::test]
    async fn corrupt_records_are_reported() {
        let store = InMemoryStore::new();
        let stream = inbox_stream("bad").unwrap();
        let inbox = StoreInbox::new(store.clone(), "bad");
        let mut e = inbox.record_event(&[], Timestamp::UNIX_EPOCH);
        e.data = Payload::from(serde_json::json!({"ids": 3}));
        store
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
        assert!(matches!(
            inbox.seen(Uuid::nil()).await,
            Err(InboxError::Corrupt { revision: 0, .. })
        ));
    }

    #[tokio::test]
    async fn max_age_forgets_old_ids() {
        let store = InMemoryStore::new();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let clock = tidings_core::event::ManualClock::new(t0);
        let id = Uuid::from_u128(7);
        StoreInbox::new(store.clone(), "aged")
            .with_clock(clock.clone())
            .record(id)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(7200));
        let hour = Duration::from_secs(3600);
        let young = StoreInbox::new(store.clone(), "aged")
            .with_clock(clock.clone())
            .max_age(hour);
        assert!(!young.seen(id).await.unwrap());
        let old = StoreInbox::new(store, "aged")
            .with_clock(clock)
            .max_age(3 * hour);
        assert!(old.seen(id).await.unwrap());
    }
}
