//! The write path: the only code that writes the log.
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
//!
//! This module owns the [`Writer`]'s state and its one entry point,
//! [`Writer::commit_group`], which the writer thread and an inline commit both call. The
//! parts live in their own files:
//!
//! - `group`: building one commit group — checking, encoding, writing and staging it;
//! - `sync`: the sync thread behind the writer, and what the writer knows of it;
//! - `roll`: the active segment's writes, rolling over to a new segment, preparing the
//!   next one in the background;
//! - `thread`: the writer thread's loop and the requests it takes.

mod group;
mod roll;
mod sync;
mod thread;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidings_core::{Clock, Position};

use crate::error::LogError;

use crate::index_snapshotter;
use crate::storage::{AlignedBuf, DIRECT_ALIGN, StorageFile, read_exact_at};
use crate::store::Shared;

pub(crate) use group::Append;
pub(crate) use thread::{Request, run};

use sync::SyncQueue;

pub(crate) struct WriterConfig {
    pub segment_size: u64,
    pub durable: bool,
    pub max_group_bytes: usize,
    pub index_snapshot_every: u64,
    pub index_memory_events: u64,
    pub index_tail_events: u64,
    pub clock: Arc<dyn Clock>,
}

/// Where a committed group is synced, published and acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// By the sync thread, while the writer goes on with the next group (the writer
    /// thread's commits). A group that is not durable is finished at once anyway.
    OnSyncThread,
    /// On the committing thread, after the groups before it, before the commit returns
    /// (an inline commit: see `LogStore::append`).
    Inline,
}

/// The writer's state: the active segment, where the log ends, the sync thread's queue.
/// Owned by a lock that the writer thread holds for each group and an inline commit may
/// take (decision record 0004, §4).
pub(crate) struct Writer {
    shared: Arc<Shared>,
    cfg: WriterConfig,
    /// Set once a `Close` request was handled: later appends are refused.
    closed: bool,
    /// The active segment's ordinal in the index's segment list.
    ordinal: usize,
    /// The active segment's first position (what readers know it by).
    segment_first: Position,
    /// Where the active segment's written data ends (the next write starts here).
    offset: u64,
    /// The active segment's size.
    capacity: u64,
    /// The active segment, and its path (for messages).
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    /// The group being encoded, written with one write: the committed bytes before it
    /// on the page where it starts, then its frames. Between groups it holds the active
    /// segment's bytes from the page holding `offset` up to `offset`, so a group's
    /// write covers whole pages without reading anything back (see `roll`).
    buf: AlignedBuf,
    /// Whether the last write went to the readers' cache of recent writes.
    tail_fed: bool,
    /// A zero-filled next segment being prepared in the background.
    preparer: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    /// Events covered by the last snapshot started.
    snapshotted: Position,
    /// The position the next group starts at.
    next: Position,
    /// The groups handed to the sync thread and not yet reported published, and the
    /// thread itself.
    sync: SyncQueue,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cfg: WriterConfig,
        ordinal: usize,
        offset: u64,
    ) -> Result<Self, LogError> {
        let (file, path, segment_first) = {
            let ix = shared.read_index();
            let seg = ix
                .segments
                .get(ordinal)
                .ok_or_else(|| LogError::InvalidOption("no active segment".into()))?;
            let file = seg
                .file
                .clone()
                .ok_or_else(|| LogError::InvalidOption("active segment is not open".into()))?;
            (file, seg.path.clone(), seg.first_position)
        };
        let capacity = file
            .len()
            .map_err(LogError::io("reading the size of", &path))?;
        // What the index file covers: events the open left after it (a short tail,
        // see `index_tail_events`) count towards the next snapshot.
        let (snapshotted, next) = {
            let ix = shared.read_index();
            let covered = ix.base().map_or(0, |b| b.cut().covered);
            (covered, ix.next_position())
        };
        let mut buf = AlignedBuf::default();
        let page_start = offset - offset % DIRECT_ALIGN as u64;
        buf.zero_fill_to((offset - page_start) as usize);
        read_exact_at(&*file, buf.as_mut_slice(), page_start)
            .map_err(LogError::io("reading", &path))?;
        Ok(Self {
            sync: SyncQueue::new(shared.clone()),
            shared,
            cfg,
            closed: false,
            ordinal,
            segment_first,
            offset,
            capacity,
            file,
            path,
            buf,
            tail_fed: false,
            preparer: None,
            snapshotted,
            next,
        })
    }

    /// The one way appends enter the writer: commits `group` as one commit group and
    /// does the upkeep that follows a commit. True when frames were written.
    ///
    /// `more` is asked for further appends once the group's own are checked and encoded,
    /// just before the write: appends that arrived meanwhile join this group instead of
    /// waiting for the next one (see `thread::run`).
    ///
    /// The writer thread commits with [`Finish::OnSyncThread`]; an append on an idle
    /// store commits itself with [`Finish::Inline`], on its own thread, and is counted
    /// in [`crate::WriteStats::inline_groups`].
    pub(crate) fn commit_group(
        &mut self,
        group: Vec<Append>,
        more: &mut dyn FnMut() -> Option<Append>,
        finish: Finish,
    ) -> bool {
        let wrote = self.commit(group, more, finish);
        if wrote && finish == Finish::Inline {
            let c = &self.shared.stats;
            c.inline_groups.fetch_add(1, Ordering::Relaxed);
        }
        self.prepare_next();
        self.maybe_snapshot_index();
        wrote
    }

    /// Where the buffer's first byte is in the active segment: between groups the
    /// buffer ends at `offset`.
    fn buf_start(&self) -> u64 {
        self.offset - self.buf.len() as u64
    }

    /// Writes a snapshot now, after any running background one, unless the index file
    /// leaves at most `keep_tail` events after it.
    fn snapshot_index(&mut self, keep_tail: u64) -> Result<(), LogError> {
        self.sync.wait();
        let r = index_snapshotter::snapshot_now(&self.shared, keep_tail);
        if r.is_ok() {
            self.snapshotted = self.next;
        }
        r
    }

    /// Asks for a background snapshot once enough has been written since the last one
    /// (at least `index_snapshot_every` events and a quarter of the log, but never more
    /// than `index_memory_events`), so a crash never makes recovery rescan more than
    /// that, and the index's in-memory layer stays bounded. See
    /// [`crate::index_snapshotter`].
    fn maybe_snapshot_index(&mut self) {
        let since = self.next - self.snapshotted.min(self.next);
        let due = self
            .cfg
            .index_snapshot_every
            .max(self.snapshotted / 4)
            .min(self.cfg.index_memory_events);
        if since < due || self.shared.snapshots.busy() {
            return;
        }
        self.snapshotted = self.next;
        self.shared.snapshots.request();
    }

    /// Ends the writer's work for good: waits for the sync thread's groups and ends it,
    /// refuses later appends, writes a snapshot and waits for a segment being
    /// prepared.
    fn shut_down(&mut self) -> Result<(), LogError> {
        self.sync.stop();
        let result = self.snapshot_index(self.cfg.index_tail_events);
        self.closed = true;
        if let Some(h) = self.preparer.take() {
            let _ = h.join();
        }
        result
    }
}

pub(crate) fn micros_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}
