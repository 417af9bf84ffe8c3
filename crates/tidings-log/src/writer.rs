//! The writer thread: the only code that writes the log, and the sync thread behind it.
//!
//! The writer owns the active segment. Appends arrive on a bounded channel; each turn of
//! its loop takes every request already waiting (up to a byte budget) as one **commit
//! group**:
//!
//! ```text
//! writer:  requests ─► [ check expected versions and ids against the index, the groups
//!                        still syncing and this group's own appends ]
//!                   ─► [ assign revisions and positions, encode one frame per append ]
//!                   ─► one write at the segment's end ─► hand to the sync thread ─► next group
//! sync:    groups handed over ─► one fdatasync for all of them
//!                   ─► publish to the index, move the committed head (wakes subscribers)
//!                   ─► acknowledge, in order
//! ```
//!
//! Requests that arrive while a group is being encoded, written or synced wait in the
//! channel and form the next group, so groups grow with load and no timer is involved.
//! The writer does not wait for a group's sync before writing the next: each frame
//! records the first position not yet known to be synced (`group_first`, see
//! [`crate::record`]), which is what recovery needs to tell a torn tail from damage. An
//! append is acknowledged only after an `fdatasync` that began after its write, and
//! after every group before it. A write or sync error stops the store for good: nothing
//! not yet synced is acknowledged, and every later append fails with
//! `StoreError::Stopped` — the failed operation is never retried, because after a failed
//! fsync the kernel may have dropped the dirty pages and a retry could falsely report
//! success.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tidings_core::backend::{IdLocation, check_idempotent};
use tidings_core::event::timestamp_to_micros;
use tidings_core::{
    AppendResult, Clock, Event, ExpectedVersion, Position, Revision, StoreError, StreamId,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::checkpointer;
use crate::error::LogError;
use crate::index::{
    EventIndex, FingerprintHasher, IndexedEvent, Loc, MemoryIndex, SegmentEntry, fingerprint,
};
use crate::reader;
use crate::record::{self, FrameSpec};
use crate::segment::{self, FOOTER_LEN, HEADER_LEN};
use crate::storage::StorageFile;
use crate::store::Shared;

type FpMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<FingerprintHasher>>;

/// A reply channel for an append.
pub(crate) type AppendReply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// What the writer is asked to do.
pub(crate) enum Request {
    Append {
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        size: usize,
        reply: AppendReply,
    },
    Checkpoint(oneshot::Sender<Result<(), LogError>>),
    Close(oneshot::Sender<Result<(), LogError>>),
}

pub(crate) struct WriterConfig {
    pub segment_size: u64,
    pub durable: bool,
    pub max_group_bytes: usize,
    pub checkpoint_every: u64,
    pub clock: Arc<dyn Clock>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    cfg: WriterConfig,
    /// Set once a `Close` request was handled: later appends are refused.
    closed: bool,
    ordinal: usize,
    offset: u64,
    capacity: u64,
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    buf: Vec<u8>,
    /// A zero-filled next segment being prepared in the background.
    preparer: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    /// Events covered by the last checkpoint started.
    checkpointed: Position,
    /// The position the next group starts at.
    next: Position,
    /// Groups handed to the sync thread and not yet reported published, oldest first:
    /// later groups are checked against them as well as against the index.
    unpublished: VecDeque<Arc<Pending>>,
    /// The sync thread, started with the first group it is given.
    syncer: Option<Syncer>,
}

/// A group's frames, with what later appends are checked against until it is published.
struct Pending {
    /// The group's first position.
    first: Position,
    frames: Vec<PendingFrame>,
    /// The streams' heads after this group.
    heads: HashMap<StreamId, Revision>,
    /// Ids of the group's events, by fingerprint: (frame, event) to confirm against.
    ids: FpMap<(u32, u32)>,
}

impl Pending {
    /// Where this group records `id`, if it does.
    fn pending_id(&self, id: &Uuid) -> Option<IdLocation> {
        let &(fi, k) = self.ids.get(&fingerprint(id))?;
        let f = self.frames.get(fi as usize)?;
        (f.events.get(k as usize)?.event_id == *id).then(|| IdLocation {
            stream: f.stream.clone(),
            revision: f.first_revision + u64::from(k),
            position: f.first_position + u64::from(k),
        })
    }
}

/// A group written to its segment and not yet synced: what finishing it takes.
struct Staged {
    pending: Arc<Pending>,
    /// The segment the group ends in, and its path (for messages).
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    durable: bool,
    ordinal: usize,
    /// The segment's data end after the group.
    end: u64,
    /// The position after the group.
    next: Position,
    recorded_at: i64,
    waiting: Vec<(AppendReply, AppendResult)>,
    /// Segments sealed and started while writing the group.
    new_segments: Vec<(usize, u64, SegmentEntry)>,
    frame_bytes: u64,
    write_micros: u64,
}

/// The sync thread: syncs, publishes and acknowledges written groups in order, reporting
/// each group on `done`. Groups that queued up while it was syncing share its next
/// `fdatasync`.
struct Syncer {
    tx: std::sync::mpsc::SyncSender<Staged>,
    done: std::sync::mpsc::Receiver<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn spawn(shared: Arc<Shared>) -> Option<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Staged>(2);
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("tidings-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let n = batch.len();
                    finish(&shared, batch);
                    for _ in 0..n {
                        if done_tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            })
            .ok()?;
        Some(Self { tx, done, handle })
    }
}

/// Finishes written groups, in order: one `fdatasync` of the segment they end in (when
/// durable; a group that rolled over synced the sealed segment itself), then publishes
/// them to the index, moves the committed head (waking subscribers) and acknowledges
/// their appends. A failed sync — or a store already stopped — fails every append in
/// them, and a failed sync stops the store. True when acknowledged.
fn finish(shared: &Arc<Shared>, batch: Vec<Staged>) -> bool {
    let started = std::time::Instant::now();
    let mut failure = shared.stopped_reason();
    if failure.is_none() {
        let mut synced: Option<&Arc<dyn StorageFile>> = None;
        for s in batch.iter().rev().filter(|s| s.durable) {
            if synced.is_some_and(|f| Arc::ptr_eq(f, &s.file)) {
                continue;
            }
            if let Err(e) = s.file.sync_data() {
                let m = format!("syncing {}: {e}", s.path.display());
                shared.stop(&m);
                failure = Some(m);
                break;
            }
            synced = Some(&s.file);
        }
    }
    if let Some(m) = failure {
        for s in batch {
            for (reply, _) in s.waiting {
                let _ = reply.send(Err(StoreError::Stopped(m.clone())));
            }
        }
        return false;
    }
    let sync_micros = micros_since(started);
    let replaced = {
        let mut ix = shared.write_index();
        for s in &batch {
            publish(&mut ix, s);
        }
        shared.checkpoints.install(&mut ix)
    };
    drop(replaced);
    if let Some(last) = batch.last() {
        shared.head.send_replace(Some(last.next - 1));
    }
    let c = &shared.stats;
    if batch.iter().any(|s| s.durable) {
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.sync_micros.fetch_add(sync_micros, Ordering::Relaxed);
    }
    for s in batch {
        let p = &*s.pending;
        c.groups.fetch_add(1, Ordering::Relaxed);
        c.appends
            .fetch_add(p.frames.len() as u64, Ordering::Relaxed);
        c.events.fetch_add(s.next - p.first, Ordering::Relaxed);
        c.bytes.fetch_add(s.frame_bytes, Ordering::Relaxed);
        c.write_micros.fetch_add(s.write_micros, Ordering::Relaxed);
        for (reply, result) in s.waiting {
            let _ = reply.send(Ok(result));
        }
    }
    checkpointer::after_publish(shared);
    true
}

/// Adds a synced group to the index.
fn publish(ix: &mut MemoryIndex, s: &Staged) {
    for (sealed, end, entry) in &s.new_segments {
        if let Some(seg) = ix.segments.get_mut(*sealed) {
            seg.data_end = *end;
        }
        ix.segments.push(entry.clone());
    }
    for f in &s.pending.frames {
        let mut events = f.events.iter().map(|e| IndexedEvent {
            id: e.event_id,
            correlation: e.metadata.correlation_id.as_deref(),
        });
        ix.add_frame(
            &f.stream,
            f.first_position,
            s.recorded_at,
            f.loc,
            &mut events,
        );
    }
    if let Some(seg) = ix.segments.get_mut(s.ordinal) {
        seg.data_end = s.end;
    }
}

pub(crate) fn micros_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

struct PendingFrame {
    stream: StreamId,
    first_position: Position,
    first_revision: Revision,
    loc: Loc,
    events: Vec<Event>,
}

pub(crate) struct Append {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
    pub reply: AppendReply,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cfg: WriterConfig,
        ordinal: usize,
        offset: u64,
    ) -> Result<Self, LogError> {
        let (file, path) = {
            let ix = shared.read_index();
            let seg = ix
                .segments
                .get(ordinal)
                .ok_or_else(|| LogError::InvalidOption("no active segment".into()))?;
            let file = seg
                .file
                .clone()
                .ok_or_else(|| LogError::InvalidOption("active segment is not open".into()))?;
            (file, seg.path.clone())
        };
        let capacity = file
            .len()
            .map_err(LogError::io("reading the size of", &path))?;
        let checkpointed = shared.read_index().next_position();
        Ok(Self {
            shared,
            cfg,
            closed: false,
            ordinal,
            offset,
            capacity,
            file,
            path,
            buf: Vec::with_capacity(1 << 20),
            preparer: None,
            checkpointed,
            next: checkpointed,
            unpublished: VecDeque::new(),
            syncer: None,
        })
    }

    /// Commits one group and does the upkeep that follows a commit. True when frames
    /// were written.
    ///
    /// `more` is asked for further appends once the group's own are checked and encoded,
    /// just before the write: appends that arrived meanwhile join this group instead of
    /// waiting for the next one (see `run`).
    ///
    /// With `finish_here` the group is synced, published and acknowledged before this
    /// returns (an inline commit); otherwise a durable group goes to the sync thread.
    pub(crate) fn commit_group(
        &mut self,
        group: Vec<Append>,
        more: &mut dyn FnMut() -> Option<Append>,
        finish_here: bool,
    ) -> bool {
        let wrote = self.commit(group, more, finish_here);
        self.prepare_next();
        self.maybe_checkpoint();
        wrote
    }

    /// Once the active segment is half full, zero-fills the next one in the background,
    /// so rolling over costs a rename and a header write.
    fn prepare_next(&mut self) {
        if self.preparer.is_some() || self.offset < self.capacity / 2 {
            return;
        }
        let storage = self.shared.storage.clone();
        let dir = self.shared.dir.clone();
        let (size, durable) = (self.cfg.segment_size, self.cfg.durable);
        self.preparer = std::thread::Builder::new()
            .name("tidings-log-prepare".into())
            .spawn(move || segment::prepare(&*storage, &dir, size, durable))
            .ok();
    }

    /// Writes a checkpoint now, after any running background one.
    fn checkpoint(&mut self) -> Result<(), LogError> {
        self.wait_for_sync();
        let r = checkpointer::checkpoint_now(&self.shared);
        if r.is_ok() {
            self.checkpointed = self.next;
        }
        r
    }

    /// Asks for a background checkpoint once enough has been written since the last one
    /// (at least `checkpoint_every` events and a quarter of the log), so a crash never
    /// makes recovery rescan more than that. See [`crate::checkpointer`].
    fn maybe_checkpoint(&mut self) {
        let since = self.next - self.checkpointed.min(self.next);
        if since < self.cfg.checkpoint_every.max(self.checkpointed / 4)
            || self.shared.checkpoints.busy()
        {
            return;
        }
        self.checkpointed = self.next;
        self.shared.checkpoints.request();
    }

    /// Commits a group: checks and encodes it against the published index and the groups
    /// still with the sync thread, writes it, then either finishes it here (after those
    /// groups: sync, publish, acknowledge) or hands it to the sync thread and returns, so
    /// the next group's checks, encoding and write overlap this group's `fdatasync`. True
    /// when frames were written (and, when finished here, acknowledged).
    fn commit(
        &mut self,
        group: Vec<Append>,
        more: &mut dyn FnMut() -> Option<Append>,
        finish_here: bool,
    ) -> bool {
        if let Some(m) = self.shared.stopped_reason() {
            for a in group {
                let _ = a.reply.send(Err(StoreError::Stopped(m.clone())));
            }
            return false;
        }
        if self.closed {
            for a in group {
                let _ = a.reply.send(Err(StoreError::Closed));
            }
            return false;
        }
        self.reap();
        let recorded_at = timestamp_to_micros(self.cfg.clock.now());
        let group_first = self.next;
        // Everything before this is synced; frames record it for recovery.
        let durable_next = self.durable_next();
        let mut next = group_first;
        let group_events: usize = group.iter().map(|a| a.events.len()).sum();
        let mut pending = Pending {
            first: group_first,
            frames: Vec::with_capacity(group.len()),
            heads: HashMap::with_capacity(group.len()),
            ids: FpMap::with_capacity_and_hasher(group_events, Default::default()),
        };
        let mut waiting: Vec<(AppendReply, AppendResult)> = Vec::with_capacity(group.len());
        let mut new_segments: Vec<(usize, u64, SegmentEntry)> = Vec::new();
        let mut frame_bytes = 0u64;
        let mut failure: Option<String> = None;
        self.buf.clear();
        let mut buf_start = self.offset;
        let mut group = group.into_iter();
        while let Some(a) = group.next().or_else(&mut *more) {
            // The lock is taken per append, not across the group: the sync thread needs
            // the write lock to publish the group before this one.
            let (current, replay) = {
                let ix = self.shared.read_index();
                let current = pending
                    .heads
                    .get(a.stream.as_str())
                    .or_else(|| {
                        self.unpublished
                            .iter()
                            .rev()
                            .find_map(|p| p.heads.get(a.stream.as_str()))
                    })
                    .copied()
                    .or_else(|| ix.stream_version(a.stream.as_str()));
                let replay = check_idempotent(&a.stream, a.expected, current, &a.events, |id| {
                    pending
                        .pending_id(id)
                        .or_else(|| self.unpublished.iter().rev().find_map(|p| p.pending_id(id)))
                        .or_else(|| committed_id(&ix, id))
                });
                (current, replay)
            };
            match replay {
                Err(e) => {
                    let _ = a.reply.send(Err(e));
                    continue;
                }
                // Recorded by this group or by one not yet known to be durable: answered
                // once this group is.
                Ok(Some(result)) if result.position >= durable_next => {
                    waiting.push((a.reply, result));
                    continue;
                }
                Ok(Some(result)) => {
                    let _ = a.reply.send(Ok(result));
                    continue;
                }
                Ok(None) => {}
            }
            if !a.expected.accepts(current) {
                let _ = a.reply.send(Err(StoreError::WrongExpectedVersion {
                    stream: a.stream.clone(),
                    expected: a.expected,
                    actual: current,
                }));
                continue;
            }
            if failure.is_none() {
                let len = record::frame_len(&a.stream, &a.events) as u64;
                let end = buf_start + self.buf.len() as u64;
                if end + len + FOOTER_LEN > self.capacity
                    && let Err(e) = self.roll(&mut buf_start, next, len, &mut new_segments)
                {
                    failure = Some(e);
                }
            }
            if let Some(m) = &failure {
                let _ = a.reply.send(Err(StoreError::Stopped(m.clone())));
                continue;
            }
            let first_revision = current.map_or(0, |c| c + 1);
            let n = a.events.len() as u64;
            let offset = buf_start + self.buf.len() as u64;
            let before = self.buf.len();
            record::encode_frame(
                &mut self.buf,
                &FrameSpec {
                    first_position: next,
                    group_first: durable_next,
                    first_revision,
                    recorded_at,
                    stream: &a.stream,
                    events: &a.events,
                },
            );
            frame_bytes += (self.buf.len() - before) as u64;
            // Later appends of this group (its own, or ones the last call brings) must
            // see these ids as taken.
            let fi = pending.frames.len() as u32;
            for (k, e) in a.events.iter().enumerate() {
                pending.ids.insert(fingerprint(&e.event_id), (fi, k as u32));
            }
            pending
                .heads
                .insert(a.stream.clone(), first_revision + n - 1);
            waiting.push((
                a.reply,
                AppendResult {
                    first_revision,
                    next_expected_version: first_revision + n - 1,
                    first_position: next,
                    position: next + n - 1,
                },
            ));
            pending.frames.push(PendingFrame {
                stream: a.stream,
                first_position: next,
                first_revision,
                loc: Loc::new(self.ordinal, offset),
                events: a.events,
            });
            next += n;
        }
        // The groups before this one may still be syncing: this one is written now (its
        // frames say which positions were durable before it, for recovery) and
        // acknowledged after them, by the sync thread, which works in order. Nothing is
        // written once the store has stopped.
        if failure.is_none() {
            failure = self.shared.stopped_reason();
        }
        let data_len = self.buf.len();
        let mut write_micros = 0;
        if failure.is_none() && next > group_first {
            let io_started = std::time::Instant::now();
            if let Err(m) = self.write_pages(buf_start) {
                failure = Some(m);
            }
            write_micros = micros_since(io_started);
        }
        if let Some(m) = failure {
            if self.shared.stopped_reason().is_none() {
                self.shared.stop(&m);
            }
            for (reply, _) in waiting {
                let _ = reply.send(Err(StoreError::Stopped(m.clone())));
            }
            return false;
        }
        self.buf.truncate(data_len);
        self.offset = buf_start + data_len as u64;
        self.next = next;
        if next == group_first {
            // Nothing new: the answers may refer to groups still syncing.
            if !waiting.is_empty() {
                self.wait_for_sync();
            }
            let stopped = self.shared.stopped_reason();
            for (reply, result) in waiting {
                let _ = reply.send(match &stopped {
                    Some(m) => Err(StoreError::Stopped(m.clone())),
                    None => Ok(result),
                });
            }
            return false;
        }
        tracing::trace!(
            events = next - group_first,
            bytes = data_len,
            "group written"
        );
        let staged = Staged {
            pending: Arc::new(pending),
            file: self.file.clone(),
            path: self.path.clone(),
            durable: self.cfg.durable,
            ordinal: self.ordinal,
            end: self.offset,
            next,
            recorded_at,
            waiting,
            new_segments,
            frame_bytes,
            write_micros,
        };
        if finish_here || !self.cfg.durable {
            return self.finish_here(staged);
        }
        self.hand_to_syncer(staged)
    }

    /// The first position not known to be durable: that of the oldest group the sync
    /// thread has not reported published, else the next to be written. Frames record it
    /// (as `group_first`) for recovery: every position before it was synced before they
    /// were written.
    fn durable_next(&self) -> Position {
        self.unpublished.front().map_or(self.next, |p| p.first)
    }

    /// Gives a written group to the sync thread (started on first use), which syncs,
    /// publishes and acknowledges it while this thread goes on with the next group.
    /// Without a sync thread the group is finished here.
    fn hand_to_syncer(&mut self, staged: Staged) -> bool {
        if self.syncer.is_none() {
            self.syncer = Syncer::spawn(self.shared.clone());
        }
        let pending = staged.pending.clone();
        let Some(syncer) = &self.syncer else {
            return self.finish_here(staged);
        };
        match syncer.tx.send(staged) {
            Ok(()) => {
                self.unpublished.push_back(pending);
                true
            }
            Err(std::sync::mpsc::SendError(staged)) => {
                self.sync_thread_lost();
                finish(&self.shared, vec![staged])
            }
        }
    }

    /// Finishes a group on this thread, after the groups before it.
    fn finish_here(&mut self, staged: Staged) -> bool {
        self.wait_for_sync();
        finish(&self.shared, vec![staged])
    }

    /// Forgets the groups the sync thread reported published (without waiting).
    fn reap(&mut self) {
        let Some(s) = &self.syncer else { return };
        while !self.unpublished.is_empty() {
            match s.done.try_recv() {
                Ok(()) => {
                    self.unpublished.pop_front();
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.sync_thread_lost();
                    return;
                }
            }
        }
    }

    /// Waits until every group given to the sync thread is synced, published and
    /// acknowledged — or has failed.
    fn wait_for_sync(&mut self) {
        while !self.unpublished.is_empty() {
            let reported = self.syncer.as_ref().is_some_and(|s| s.done.recv().is_ok());
            if !reported {
                self.sync_thread_lost();
                return;
            }
            self.unpublished.pop_front();
        }
    }

    fn sync_thread_lost(&mut self) {
        self.syncer = None;
        self.unpublished.clear();
        self.shared.stop("the log's sync thread ended unexpectedly");
    }

    /// Waits for the sync thread's groups, then ends the thread.
    fn stop_syncer(&mut self) {
        self.wait_for_sync();
        if let Some(s) = self.syncer.take() {
            drop(s.tx);
            let _ = s.handle.join();
        }
    }

    /// Writes what the group has so far, seals the active segment and starts a new one
    /// able to hold a frame of `need` bytes.
    fn roll(
        &mut self,
        buf_start: &mut u64,
        next: Position,
        need: u64,
        new_segments: &mut Vec<(usize, u64, SegmentEntry)>,
    ) -> Result<(), String> {
        // The footer and the frames before it are a write of their own, after the group
        // being synced.
        let started = std::time::Instant::now();
        self.wait_for_sync();
        let drained = micros_since(started);
        if let Some(m) = self.shared.stopped_reason() {
            return Err(m);
        }
        let data_end = *buf_start + self.buf.len() as u64;
        let path = self.path.display().to_string();
        self.buf
            .extend_from_slice(&segment::encode_footer(next, data_end));
        self.write_pages(*buf_start)?;
        self.file
            .sync_data()
            .map_err(|e| format!("syncing {path}: {e}"))?;
        let size = self.cfg.segment_size.max(HEADER_LEN + need + FOOTER_LEN);
        let dir = self.shared.dir.clone();
        let sealed = micros_since(started);
        let prepared = self
            .preparer
            .take()
            .and_then(|h| h.join().ok())
            .and_then(Result::ok);
        let joined = micros_since(started);
        let created_at = timestamp_to_micros(self.cfg.clock.now());
        let storage = &*self.shared.storage;
        let made = match prepared {
            Some(ready) if ready >= size => {
                segment::install(storage, &dir, next, created_at, self.cfg.durable)
            }
            _ => segment::create(storage, &dir, next, size, created_at, self.cfg.durable),
        };
        let seg = made.map_err(|e| {
            format!(
                "creating segment {}: {e}",
                dir.join(segment::file_name(next)).display()
            )
        })?;
        new_segments.push((
            self.ordinal,
            data_end,
            SegmentEntry {
                first_position: next,
                data_end: HEADER_LEN,
                path: seg.path.clone(),
                file: Some(seg.file.clone()),
            },
        ));
        tracing::debug!(
            segment = %seg.path.display(),
            drained,
            sealed,
            joined,
            installed = micros_since(started),
            "started a new segment (µs since the roll began)"
        );
        self.ordinal += 1;
        self.file = seg.file;
        self.path = seg.path;
        self.capacity = size;
        self.offset = HEADER_LEN;
        self.buf.clear();
        *buf_start = HEADER_LEN;
        Ok(())
    }

    /// Writes `buf` at `start`, padded with zeros to the end of its last page (never
    /// past the segment's end). Past the committed data a segment holds zeros, so the
    /// padding changes nothing on disk; what it saves is the next write's kernel reading
    /// that page back from the disk (segments are zero-filled around the page cache)
    /// before it can change part of it — a synchronous read inside an append's latency.
    /// The write starts at `start`, never before: committed bytes are never rewritten,
    /// so readers may map them.
    fn write_pages(&mut self, start: u64) -> Result<(), String> {
        let len = self.buf.len() as u64;
        let padded = (start + len)
            .next_multiple_of(PAGE)
            .min(self.capacity.max(start + len));
        self.buf.resize((padded - start) as usize, 0);
        self.file
            .write_all_at(&self.buf, start)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

fn lock(core: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for the next request: briefly by polling, so a writer that appends again right
/// after its acknowledgement does not pay for putting this thread to sleep and waking
/// it, then by blocking.
fn next_request(rx: &mut mpsc::Receiver<Request>) -> Option<Request> {
    let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(40);
    loop {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= spin_until {
            return rx.blocking_recv();
        }
        std::thread::yield_now();
    }
}

/// An append request as a member of a group (adding its size to `bytes`), or `None`
/// after putting a control request in `control`.
fn as_append(req: Request, bytes: &mut usize, control: &mut Option<Request>) -> Option<Append> {
    match req {
        Request::Append {
            stream,
            expected,
            events,
            size,
            reply,
        } => {
            *bytes += size;
            Some(Append {
                stream,
                expected,
                events,
                reply,
            })
        }
        other => {
            *control = Some(other);
            None
        }
    }
}

/// The writer thread's loop: takes the waiting requests as one group and commits it
/// under the writer's lock (which an append on an otherwise idle store may also take,
/// to commit inline: see `LogStore::append`).
pub(crate) fn run(core: Arc<Mutex<Writer>>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = next_request(&mut rx) {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut control = None;
        let mut next = Some(first);
        let max_group_bytes = lock(&core).cfg.max_group_bytes;
        while let Some(req) = next.take() {
            let Some(append) = as_append(req, &mut bytes, &mut control) else {
                break;
            };
            group.push(append);
            if bytes < max_group_bytes {
                next = rx.try_recv().ok();
            }
        }
        let mut w = lock(&core);
        if !group.is_empty() {
            // The last call: appends that arrived while this group was being checked
            // and encoded join it (up to the byte budget), so under load a group takes
            // in the writers acknowledged by the previous group as they come back.
            let mut more = || {
                if control.is_some() || bytes >= max_group_bytes {
                    return None;
                }
                as_append(rx.try_recv().ok()?, &mut bytes, &mut control)
            };
            w.commit_group(group, &mut more, false);
        }
        match control {
            Some(Request::Close(reply)) => {
                w.stop_syncer();
                let result = w.checkpoint();
                w.closed = true;
                if let Some(h) = w.preparer.take() {
                    let _ = h.join();
                }
                let _ = reply.send(result);
                return;
            }
            Some(Request::Checkpoint(reply)) => {
                let _ = reply.send(w.checkpoint());
            }
            _ => {}
        }
    }
    // Every handle is gone: leave a checkpoint so the next open is fast.
    let mut w = lock(&core);
    w.stop_syncer();
    w.closed = true;
    if let Err(e) = w.checkpoint() {
        tracing::warn!(error = %e, "could not write the index checkpoint on close");
    }
    if let Some(h) = w.preparer.take() {
        let _ = h.join();
    }
}

/// The page size writes are padded to.
const PAGE: u64 = 4096;

/// Where an id was recorded, confirmed by reading the event (fingerprints can collide).
fn committed_id(ix: &MemoryIndex, id: &Uuid) -> Option<IdLocation> {
    let p = ix.id_candidate(id)?;
    let plan = reader::plan_positions(ix, std::iter::once(p));
    let e = reader::read_positions(&plan).ok()?.pop()?;
    (e.event_id == *id).then(|| IdLocation {
        stream: e.stream.clone(),
        revision: e.revision,
        position: e.position,
    })
}
