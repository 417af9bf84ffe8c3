//! When and where index files are written ([`crate::index_snapshot`] is what they are).
//!
//! A new index file merges the current one with the in-memory layer, so it costs time in
//! proportion to the index. The write path never waits for more than a constant-time
//! step of it:
//!
//! ```text
//! writer:     enough written since the last one ─► request()
//! publisher:  after publishing a group ─► write lock: freeze the recent layer and take
//!                                         the cut (next position, segment ends)   O(1)
//! background: (nice 10) merge the file and the frozen layer into a new file, sync it,
//!             rename it over the old one
//! publisher:  next group ─► write lock: install the new file, drop the frozen layer O(1)
//! ```
//!
//! The frozen layer and the old file never change, so the merge reads them without any
//! lock. Until the new file is installed, lookups read the frozen layer as well (see
//! [`LogIndex::freeze`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::LogError;
use crate::index::{Delta, LogIndex};
use crate::index_snapshot::{self, Cut, IndexFile};
use crate::segment::HEADER_LEN;
use crate::storage::{Storage, read_exact_at};
use crate::store::Shared;
use crate::writer::micros_since;

/// A new index file and the frozen layer it replaces.
type Merged = (Arc<IndexFile>, Arc<Delta>);

/// What a replaced index leaves to drop outside the lock.
type Replaced = Option<(Option<Arc<IndexFile>>, Arc<Delta>)>;

/// The state of background snapshots, kept in [`Shared`].
#[derive(Default)]
pub(crate) struct IndexSnapshots {
    /// Set by the writer; the next publication starts a snapshot.
    due: AtomicBool,
    running: Mutex<Option<JoinHandle<()>>>,
    /// A finished file, for the next publication to install.
    merged: Mutex<Option<Merged>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IndexSnapshots {
    /// Asks the next publication to start a background snapshot.
    pub(crate) fn request(&self) {
        self.due.store(true, Ordering::Release);
    }

    /// Whether a background snapshot is requested or still running.
    pub(crate) fn busy(&self) -> bool {
        self.due.load(Ordering::Acquire)
            || lock(&self.running)
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    /// Waits for a running background snapshot.
    pub(crate) fn join(&self) {
        let handle = lock(&self.running).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Installs a finished file; called under the index's write lock. Returns what it
    /// replaced, to be dropped after the lock is released.
    pub(crate) fn install(&self, ix: &mut LogIndex) -> Replaced {
        let (file, frozen) = lock(&self.merged).take()?;
        ix.install(file, &frozen)
    }
}

/// Called by the publisher after publishing a group: starts the requested snapshot,
/// if any.
pub(crate) fn after_publish(shared: &Arc<Shared>) {
    if !shared.snapshots.due.swap(false, Ordering::AcqRel) {
        return;
    }
    let job = match cut(shared) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not start an index snapshot");
            return;
        }
    };
    let bg = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("tidings-log-snapshot".into())
        .spawn(move || {
            lower_priority();
            let frozen = job.frozen.clone();
            match write(&bg, job) {
                Ok(file) => *lock(&bg.snapshots.merged) = Some((Arc::new(file), frozen)),
                Err(e) => tracing::warn!(error = %e, "a background index snapshot failed"),
            }
        });
    match spawned {
        Ok(h) => *lock(&shared.snapshots.running) = Some(h),
        Err(e) => tracing::warn!(error = %e, "could not start the snapshot thread"),
    }
}

/// Writes a snapshot now, on this thread, after any background one, unless the index
/// file leaves at most `keep_tail` events after its cut (the next open reads them from
/// the log; see `LogStoreBuilder::index_tail_events`). The caller makes sure nothing is
/// being published meanwhile (the writer, with no group at the sync thread).
pub(crate) fn snapshot_now(shared: &Shared, keep_tail: u64) -> Result<(), LogError> {
    if let Some(m) = shared.stopped_reason() {
        return Err(LogError::Stopped(m));
    }
    shared.snapshots.join();
    {
        // A file that already covers the log as it is (a store closed with nothing
        // appended since its last file) is kept: rewriting it would cost a pass over
        // the whole index for nothing.
        let mut ix = shared.write_index();
        let replaced = shared.snapshots.install(&mut ix);
        let current = ix.base.as_ref().is_some_and(|b| {
            let c = b.cut();
            c.covered == ix.next_position()
                && c.end_offset == ix.segments.last().map_or(HEADER_LEN, |s| s.data_end)
                && c.segments.len() == ix.segments.len()
                && c.segments
                    .iter()
                    .zip(&ix.segments)
                    .all(|(&(first, end), s)| first == s.first_position && end == s.data_end)
        });
        // A short tail is left to the log: merging it would rewrite the whole file.
        let short_tail = ix.base.is_some() && ix.in_memory() <= keep_tail;
        drop(ix);
        drop(replaced);
        if current || short_tail {
            return Ok(());
        }
    }
    let job = cut(shared)?;
    let frozen = job.frozen.clone();
    let file = Arc::new(write(shared, job)?);
    let replaced = shared.write_index().install(file, &frozen);
    drop(replaced);
    Ok(())
}

/// Writes the index file of `ix` (nobody else holds it) and installs it: recovery's
/// work, saved so the next open does not repeat it. `end_offset` is where the last
/// segment's data ends.
pub(crate) fn write_now(
    storage: &dyn Storage,
    dir: &Path,
    ix: &mut LogIndex,
    end_offset: u64,
) -> Result<(), LogError> {
    let (cut, frozen) = freeze_at_cut(ix, end_offset, dir)?;
    let file = index_snapshot::write(storage, dir, cut, ix.base.as_deref(), &frozen)
        .map_err(LogError::io("writing the index file in", dir))?;
    drop(ix.install(Arc::new(file), &frozen));
    Ok(())
}

/// Takes the cut of `ix` (its last segment's data ending at `end_offset`) and freezes
/// its recent layer for a file covering up to it.
fn freeze_at_cut(
    ix: &mut LogIndex,
    end_offset: u64,
    dir: &Path,
) -> Result<(Cut, Arc<Delta>), LogError> {
    let last_crc = last_frame_crc(ix).map_err(LogError::io("reading the last frame in", dir))?;
    let segments = ix
        .segments
        .iter()
        .map(|s| (s.first_position, s.data_end))
        .collect();
    let frozen = ix.freeze();
    let cut = Cut {
        covered: frozen.next(),
        end_offset,
        last_crc,
        segments,
    };
    Ok((cut, frozen))
}

/// A snapshot to write: the cut, the file it extends and the layer frozen for it.
struct Job {
    cut: Cut,
    base: Option<Arc<IndexFile>>,
    frozen: Arc<Delta>,
}

/// Freezes the recent layer and takes the snapshot's cut, under the write lock, in
/// constant time (plus the segment list and one read of the last frame's header).
fn cut(shared: &Shared) -> Result<Job, LogError> {
    let (job, replaced) = {
        let mut ix = shared.write_index();
        let replaced = shared.snapshots.install(&mut ix);
        let end_offset = ix.segments.last().map_or(HEADER_LEN, |s| s.data_end);
        let (cut, frozen) = freeze_at_cut(&mut ix, end_offset, &shared.dir)?;
        let job = Job {
            cut,
            base: ix.base.clone(),
            frozen,
        };
        (job, replaced)
    };
    drop(replaced);
    Ok(job)
}

/// Merges the job's file and layer into a new index file.
fn write(shared: &Shared, job: Job) -> Result<IndexFile, LogError> {
    let started = std::time::Instant::now();
    let covered = job.cut.covered;
    let file = index_snapshot::write(
        &*shared.storage,
        &shared.dir,
        job.cut,
        job.base.as_deref(),
        &job.frozen,
    )
    .map_err(LogError::io("writing the index file in", &shared.dir))?;
    tracing::debug!(
        micros = micros_since(started),
        covered,
        merged = job.frozen.len(),
        "index file written"
    );
    Ok(file)
}

/// The checksum field of the frame holding the last indexed event (0 for an empty log).
pub(crate) fn last_frame_crc(index: &LogIndex) -> std::io::Result<u32> {
    let Some(last) = index.next_position().checked_sub(1) else {
        return Ok(0);
    };
    let loc = index.loc(last)?.ok_or(std::io::ErrorKind::NotFound)?;
    let file = index
        .segments
        .get(loc.segment())
        .and_then(|s| s.file.as_ref())
        .ok_or(std::io::ErrorKind::NotFound)?;
    let mut h = [0u8; 8];
    read_exact_at(&**file, &mut h, loc.offset())?;
    Ok(u32::from_le_bytes([h[4], h[5], h[6], h[7]]))
}

/// Lowers this thread's scheduling priority (nice 10), so a background snapshot uses
/// the CPU the write path leaves idle. Best effort: an error only means it competes at
/// normal priority.
fn lower_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), 10) {
        tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
    }
}
