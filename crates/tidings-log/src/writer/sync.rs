//! The sync thread behind the writer: it makes written groups durable, publishes them and
//! acknowledges them, in order, while the writer goes on with the next group.
//!
//! ```text
//! writer:  write group N ─► hand(N) ─► write group N+1 ─► hand(N+1) ─► …
//! sync:    take every group handed over so far ─► one fdatasync
//!          ─► publish them to the index, move the committed head ─► acknowledge
//!          ─► report each one done (the writer forgets it: `reap`, `wait`)
//! ```
//!
//! [`SyncQueue`] is the writer's side: the groups it handed over and has not yet seen
//! reported, which later groups are checked against, and the first position not known
//! to be durable, which frames record for recovery. [`finish`] is the work itself, also
//! run on the writer's (or an inline commit's) thread when a group is finished there.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidings_core::{Position, StoreError};

use super::group::{Pending, Staged};
use super::micros_since;
use crate::error::LogError;
use crate::index::{IndexedEvent, LogIndex};
use crate::index_snapshotter;
use crate::storage::StorageFile;
use crate::store::Shared;

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

/// The writer's side of the sync thread: the groups handed to it and not yet reported
/// published, oldest first, and the thread, started with the first group it is given.
pub(super) struct SyncQueue {
    shared: Arc<Shared>,
    /// Later groups are checked against these as well as against the index.
    unpublished: VecDeque<Arc<Pending>>,
    syncer: Option<Syncer>,
}

impl SyncQueue {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            unpublished: VecDeque::new(),
            syncer: None,
        }
    }

    /// The groups handed over and not yet reported published, oldest first.
    pub(super) fn unpublished(&self) -> &VecDeque<Arc<Pending>> {
        &self.unpublished
    }

    /// The first position not known to be durable: that of the oldest group the sync
    /// thread has not reported published, else `next`, the next to be written. Frames
    /// record it (as `group_first`) for recovery: every position before it was synced
    /// before they were written.
    pub(super) fn durable_next(&self, next: Position) -> Position {
        self.unpublished.front().map_or(next, |p| p.first)
    }

    /// Gives a written group to the sync thread (started on first use), which syncs,
    /// publishes and acknowledges it while the writer goes on with the next group.
    /// Without a sync thread the group is finished here.
    pub(super) fn hand(&mut self, staged: Staged) -> bool {
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
                self.lost();
                finish(&self.shared, vec![staged])
            }
        }
    }

    /// Finishes a group on this thread, after the groups before it.
    pub(super) fn finish_here(&mut self, staged: Staged) -> bool {
        self.wait();
        finish(&self.shared, vec![staged])
    }

    /// Forgets the groups the sync thread reported published (without waiting).
    pub(super) fn reap(&mut self) {
        let Some(s) = &self.syncer else { return };
        while !self.unpublished.is_empty() {
            match s.done.try_recv() {
                Ok(()) => {
                    self.unpublished.pop_front();
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.lost();
                    return;
                }
            }
        }
    }

    /// Waits until every group given to the sync thread is synced, published and
    /// acknowledged — or has failed.
    pub(super) fn wait(&mut self) {
        while !self.unpublished.is_empty() {
            let reported = self.syncer.as_ref().is_some_and(|s| s.done.recv().is_ok());
            if !reported {
                self.lost();
                return;
            }
            self.unpublished.pop_front();
        }
    }

    fn lost(&mut self) {
        self.syncer = None;
        self.unpublished.clear();
        self.shared.stop("the log's sync thread ended unexpectedly");
    }

    /// Waits for the sync thread's groups, then ends the thread.
    pub(super) fn stop(&mut self) {
        self.wait();
        if let Some(s) = self.syncer.take() {
            drop(s.tx);
            let _ = s.handle.join();
        }
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
                let m = LogError::io("syncing", &s.path)(e).to_string();
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
        shared.snapshots.install(&mut ix)
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
    index_snapshotter::after_publish(shared);
    true
}

/// Adds a synced group to the index.
fn publish(ix: &mut LogIndex, s: &Staged) {
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
            event_type: &e.event_type,
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
