//! [`LogStore`]: the store contract on top of the log — appends handed to the writer
//! (through its thread, or inline on an idle store), reads planned against the index,
//! subscriptions following the committed head. Opening one is [`crate::LogStoreBuilder`]'s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::thread::JoinHandle;

use futures::Stream;
use tidings_core::backend::validate_append;
use tidings_core::event::timestamp_from_micros;
use tidings_core::store::subscription;
use tidings_core::{
    AppendResult, Direction, Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion,
    Filter, Limits, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start,
    StoreError, StreamId, StreamInfo,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::builder::LogStoreBuilder;
use crate::error::LogError;
use crate::index::{Layered, LogIndex};
use crate::index_snapshotter::IndexSnapshots;
use crate::reader::{self, SegRef};
use crate::recovery::RecoveryReport;
use crate::storage::Storage;
use crate::tail::{TAIL_EVENTS, TailCache};
use crate::writer::{self, Append, Finish, Request, Writer};

/// State shared by the handles, the writer and the readers.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub index: RwLock<LogIndex>,
    pub head: watch::Sender<Option<Position>>,
    pub stopped: Mutex<Option<String>>,
    pub limits: Limits,
    pub report: RecoveryReport,
    /// Counters of the write path.
    pub stats: StatsCounters,
    /// Background index snapshots.
    pub snapshots: IndexSnapshots,
    /// The last writes, for reads of the newest frames.
    pub tail: TailCache,
    /// The directory lock; released by [`LogStore::close`] so the directory can be
    /// opened again while stray handles (a finished subscription's, say) linger.
    lock: Mutex<Option<Box<dyn Send + Sync>>>,
}

impl Shared {
    pub(crate) fn new(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        index: LogIndex,
        limits: Limits,
        report: RecoveryReport,
        lock: Box<dyn Send + Sync>,
    ) -> Self {
        let head = index.next_position().checked_sub(1);
        Self {
            dir,
            storage,
            index: RwLock::new(index),
            head: watch::channel(head).0,
            stopped: Mutex::new(None),
            limits,
            report,
            stats: StatsCounters::default(),
            snapshots: IndexSnapshots::default(),
            tail: TailCache::default(),
            lock: Mutex::new(Some(lock)),
        }
    }

    /// The segments of a read plan, with the recent writes of the last two attached
    /// when the read reaches the tail (`near_head`), which marks the tail wanted.
    pub(crate) fn with_tail(&self, mut segs: Vec<SegRef>, near_head: bool) -> Vec<SegRef> {
        if !near_head {
            return segs;
        }
        self.tail.want();
        let n = segs.len();
        for seg in segs.iter_mut().skip(n.saturating_sub(2)) {
            seg.tail = self.tail.of(seg.first_position);
        }
        segs
    }

    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, LogIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, LogIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stopped_reason(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn stop(&self, why: &str) {
        tracing::error!(dir = %self.dir.display(), reason = why, "the store stopped after an I/O failure; reopen it to recover");
        let mut s = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(why.to_owned());
        }
    }
}

/// Counters of the write path, updated by whichever thread commits.
#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub groups: AtomicU64,
    pub syncs: AtomicU64,
    pub inline_groups: AtomicU64,
    pub appends: AtomicU64,
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    pub write_micros: AtomicU64,
    pub sync_micros: AtomicU64,
}

/// What the store has written since it was opened: see [`LogStore::write_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Commit groups written (each one write).
    pub groups: u64,
    /// `fdatasync` calls that made groups durable (groups that queued up while one ran
    /// share the next; 0 when not durable).
    pub syncs: u64,
    /// Of those, groups committed on the appending thread because the store was idle.
    pub inline_groups: u64,
    /// Appends committed.
    pub appends: u64,
    /// Events committed.
    pub events: u64,
    /// Bytes of frames committed.
    pub bytes: u64,
    /// Time spent writing groups (on the writer thread), in microseconds.
    pub write_micros: u64,
    /// Time spent in `fdatasync` (on the sync thread, overlapping the writes of the
    /// groups behind), in microseconds.
    pub sync_micros: u64,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    /// The writer's state: the writer thread commits under this lock, and so does an
    /// append that finds the store idle (see [`LogStore::try_inline`]).
    core: Option<Arc<Mutex<Writer>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Appends started and not yet finished, on every handle.
    in_flight: AtomicUsize,
    /// Whether an idle append may commit inline.
    inline_commits: bool,
    /// How long an append waits for its group to be durable.
    append_timeout: std::time::Duration,
}

/// Counts an append as in flight until it finishes or is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Enters, returning the guard and how many appends are in flight with this one.
    fn enter(counter: &'a AtomicUsize) -> (Self, usize) {
        let n = counter.fetch_add(1, Ordering::AcqRel) + 1;
        (Self(counter), n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its queue and write a snapshot;
        // waiting for it here means a process that drops its store then exits still
        // leaves a fast-to-open directory.
        self.tx.take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The embedded durable event store. Clones are cheap handles to one store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings_core::{Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadStream, StreamId};
/// let dir = tempfile::tempdir().unwrap();
/// let store = tidings_log::LogStore::open(dir.path()).unwrap();
/// let order = StreamId::new("order-123").unwrap();
/// let created = Enricher::new("order-service")
///     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
///     .unwrap();
/// store.append(&order, ExpectedVersion::NoStream, vec![created]).await.unwrap();
/// assert_eq!(store.read_stream(&order, ReadStream::forward()).await.unwrap().len(), 1);
/// store.close().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.inner.shared.dir)
            .field("events", &self.inner.shared.read_index().next_position())
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// The cache of recent writes (tests of [`crate::tail`]).
    #[cfg(test)]
    pub(crate) fn tail_cache(&self) -> &TailCache {
        &self.inner.shared.tail
    }

    /// Opens (or creates) a store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::builder(dir.as_ref()).open()
    }

    /// Options for opening a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> LogStoreBuilder {
        LogStoreBuilder::new(dir)
    }

    /// A store without a writer (opened read-only for salvage).
    pub(crate) fn read_only(shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                tx: None,
                core: None,
                writer: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
                inline_commits: false,
                append_timeout: crate::builder::DEFAULT_APPEND_TIMEOUT,
            }),
        }
    }

    /// A store whose appends go to `writer`, started on its own thread behind a channel
    /// of `channel_capacity` requests.
    pub(crate) fn start(
        shared: Arc<Shared>,
        writer: Writer,
        channel_capacity: usize,
        inline_commits: bool,
        append_timeout: std::time::Duration,
    ) -> Result<Self, LogError> {
        let (tx, rx) = mpsc::channel(channel_capacity);
        let core = Arc::new(Mutex::new(writer));
        let thread_core = core.clone();
        let handle = std::thread::Builder::new()
            .name("tidings-log-writer".into())
            .spawn(move || writer::run(thread_core, rx))
            .map_err(LogError::io("starting the writer thread for", &shared.dir))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                core: Some(core),
                writer: Mutex::new(Some(handle)),
                in_flight: AtomicUsize::new(0),
                inline_commits,
                append_timeout,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// What opening the store found (torn tail, index rebuild, salvage damage).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.shared.report
    }

    /// Why the store stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.inner.shared.stopped_reason()
    }

    /// Counters of the write path since the store was opened: commit groups (so
    /// `events / groups` is the average group size), how many were committed inline,
    /// appends, events and bytes.
    pub fn write_stats(&self) -> WriteStats {
        let c = &self.inner.shared.stats;
        WriteStats {
            groups: c.groups.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            inline_groups: c.inline_groups.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            write_micros: c.write_micros.load(Ordering::Relaxed),
            sync_micros: c.sync_micros.load(Ordering::Relaxed),
        }
    }

    /// Number of streams (reads the index file for streams written since its cut).
    pub fn stream_count(&self) -> Result<u64, StoreError> {
        self.inner
            .shared
            .read_index()
            .stream_count()
            .map_err(reader::index_err)
    }

    /// Finishes queued appends, writes the index snapshot and stops the writer. Later
    /// appends fail with `StoreError::Closed`; reads keep working. The directory lock is
    /// released, so the store can be opened again even while other handles linger.
    pub async fn close(&self) -> Result<(), LogError> {
        let Some(tx) = &self.inner.tx else {
            return Ok(());
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(Request::Close(reply)).await.is_err() {
            return Ok(());
        }
        let closed = rx.await.unwrap_or(Err(LogError::Closed));
        if closed.is_ok() {
            self.inner
                .shared
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        closed
    }

    /// Writes the index snapshot now, whatever follows the current one (a close writes
    /// one only when more than `index_tail_events` events do).
    pub async fn snapshot_index(&self) -> Result<(), LogError> {
        let tx = self.inner.tx.as_ref().ok_or(LogError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Request::SnapshotIndex(reply))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.unwrap_or(Err(LogError::Closed))
    }

    fn closed_error(&self) -> StoreError {
        match self.inner.shared.stopped_reason() {
            Some(m) => StoreError::Stopped(m),
            None => StoreError::Closed,
        }
    }

    async fn append_inner(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        if let Some(m) = self.inner.shared.stopped_reason() {
            return Err(StoreError::Stopped(m));
        }
        let size = validate_append(stream, &events, &self.inner.shared.limits)?;
        let tx = self.inner.tx.as_ref().ok_or_else(|| {
            StoreError::Stopped("the store was opened read-only for salvage".to_owned())
        })?;
        let (_in_flight, concurrent) = InFlight::enter(&self.inner.in_flight);
        let (append, mut rx) = Append::new(stream.clone(), expected, events, size);
        let append = if concurrent == 1 && tx.capacity() == tx.max_capacity() {
            match self.try_inline(append) {
                Ok(()) => return rx.try_recv().unwrap_or_else(|_| Err(self.closed_error())),
                Err(append) => append,
            }
        } else {
            append
        };
        // The deadline covers the wait for the writer and for the group's fsync. When it
        // passes, the append stays queued or in its group and may still become durable:
        // it is never withdrawn, and the caller learns that its outcome is unknown.
        let after = self.inner.append_timeout;
        let durable = async {
            tx.send(Request::Append(append))
                .await
                .map_err(|_| self.closed_error())?;
            rx.await.map_err(|_| self.closed_error())?
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // No Tokio timer to keep the deadline with (another executor).
            return durable.await;
        }
        match tokio::time::timeout(after, durable).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout {
                operation: format!("append to {stream}"),
                after,
                outcome_unknown: true,
            }),
        }
    }

    /// Commits an append on the calling thread when it is the only append in flight,
    /// nothing waits for the writer thread and the writer is free, on a multi-threaded
    /// Tokio runtime: the thread blocks in `fdatasync` (through `block_in_place`, which
    /// hands this worker's other tasks to another thread) instead of waking the writer
    /// thread and being woken by it — two thread wake-ups, tens of microseconds on a
    /// virtual machine, which a lone writer would pay on every append. The commit is the
    /// writer thread's own ([`Writer::commit_group`]), under its lock, so groups stay
    /// serial and ordered; its answer is on the append's reply channel when this
    /// returns. Gives the append back when any condition fails; it then goes through
    /// the writer thread.
    fn try_inline(&self, append: Append) -> Result<(), Append> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let allowed = multi_thread && self.inner.inline_commits;
        let Some(core) = self.inner.core.as_ref().filter(|_| allowed) else {
            return Err(append);
        };
        let mut writer = match core.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(append),
        };
        tokio::task::block_in_place(|| {
            writer.commit_group(vec![append], &mut || None, Finish::Inline);
        });
        Ok(())
    }

    fn positions_plan(
        &self,
        select: impl FnOnce(&LogIndex) -> std::io::Result<Vec<Position>>,
    ) -> Result<reader::PositionsPlan, StoreError> {
        let ix = self.inner.shared.read_index();
        let positions = select(&ix).map_err(reader::index_err)?;
        let mut plan = reader::plan_positions(&ix, positions.into_iter())?;
        let newest = plan.items.iter().map(|i| i.0).max();
        let near_head = newest.is_some_and(|p| p + TAIL_EVENTS >= ix.next_position());
        drop(ix);
        plan.segs = self.inner.shared.with_tail(plan.segs, near_head);
        Ok(plan)
    }

    /// A `read_all` filtered by type or category: reads only the positions the postings
    /// give (see [`crate::tags`]), a page at a time, checking the stream prefix on what
    /// it reads.
    fn read_all_indexed(&self, options: &ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = &options.filter;
        let page = options.limit.clamp(64, 4096);
        let mut out = Vec::new();
        let mut from = options.from;
        while out.len() < options.limit {
            let mut got = 0;
            let plan = self.positions_plan(|ix| {
                let c = ix.tag_candidates(filter, from, page)?;
                got = c.len();
                Ok(c)
            })?;
            let Some(&(last, _)) = plan.items.last() else {
                break;
            };
            for e in reader::read_positions(&plan)? {
                if out.len() < options.limit && filter.matches(e.stream.as_str(), &e.event_type) {
                    out.push(e);
                }
            }
            if got < page {
                break;
            }
            from = last + 1;
        }
        Ok(out)
    }
}

impl EventAppender for LogStore {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        let span = tracing::debug_span!("append", %stream, %expected, events = events.len());
        self.append_inner(stream, expected, events).instrument(span)
    }

    fn limits(&self) -> Limits {
        self.inner.shared.limits
    }
}

fn stream_slice(positions: &Layered<'_>, options: &ReadStream) -> std::io::Result<Vec<Position>> {
    let n = positions.len();
    let limit = options.limit as u64;
    match options.direction {
        Direction::Forward => positions.range(options.from.unwrap_or(0).min(n), limit),
        Direction::Backward => {
            let Some(last) = n.checked_sub(1) else {
                return Ok(Vec::new());
            };
            let from = options.from.unwrap_or(last).min(last);
            let start = (from + 1).saturating_sub(limit);
            let mut v = positions.range(start, from + 1 - start)?;
            v.reverse();
            Ok(v)
        }
    }
}

impl EventReader for LogStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let plan = self
            .positions_plan(|ix| stream_slice(&ix.stream_positions(stream.as_str())?, &options))?;
        reader::read_positions(&plan)
    }

    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        if options.limit == 0 {
            return Ok(Vec::new());
        }
        if crate::tags::Tags::indexes(&options.filter) {
            return self.read_all_indexed(&options);
        }
        let plan = {
            let ix = self.inner.shared.read_index();
            let near_head = options.from.saturating_add(TAIL_EVENTS) >= ix.next_position();
            reader::plan_scan(&ix, options.from)?.map(|p| (p, near_head))
        };
        match plan {
            Some((mut plan, near_head)) => {
                plan.segs = self.inner.shared.with_tail(plan.segs, near_head);
                reader::scan(&plan, options.from, options.limit, &options.filter)
            }
            None => Ok(Vec::new()),
        }
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let plan = self.positions_plan(|ix| {
            let ps = ix.correlation_positions(correlation_id)?;
            ps.range(ps.lower_bound(from)?, limit as u64)
        })?;
        reader::read_positions(&plan)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        self.inner
            .shared
            .read_index()
            .stream_version(stream.as_str())
            .map_err(reader::index_err)
    }

    async fn list_streams(&self, options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        let rows = self
            .inner
            .shared
            .read_index()
            .list_streams(&options)
            .map_err(reader::index_err)?;
        Ok(rows
            .into_iter()
            .map(|(stream, last_revision, last_position, at)| StreamInfo {
                stream,
                last_revision,
                last_position,
                last_written: timestamp_from_micros(at),
            })
            .collect())
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        Ok(*self.inner.shared.head.borrow())
    }
}

impl EventSubscriber for LogStore {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = tidings_core::store::EventStreamItem> + Send + 'static {
        subscription::subscribe_all(
            self.clone(),
            self.inner.shared.head.subscribe(),
            start,
            filter,
        )
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = tidings_core::store::EventStreamItem> + Send + 'static {
        subscription::subscribe_stream(
            self.clone(),
            self.inner.shared.head.subscribe(),
            stream.clone(),
            start,
        )
    }
}
