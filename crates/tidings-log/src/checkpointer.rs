//! When and where index checkpoints are written ([`crate::checkpoint`] is what they are).
//!
//! A checkpoint records the whole index, so it costs time in proportion to the log. Only
//! the constant-time part holds the index's write lock, and only the encoding of streams,
//! locations and correlations holds its read lock; the rest runs on a low-priority
//! background thread:
//!
//! ```text
//! writer:     enough written since the last one ─► request()
//! publisher:  after publishing a group ─► write lock: freeze the recent ids (O(1))
//!                                      ─► read lock: draft (streams, locations, correlations)
//! background: merge the frozen ids into the base table, encode, save  (nice 10)
//! publisher:  next group ─► write lock: install the merged table (O(1))
//! ```
//!
//! The publisher is whichever thread publishes a group (the sync thread, or an inline
//! commit); publications are serial, so nothing is published between the freeze and the
//! draft, which the draft checks. Until its merged table is installed, lookups read the
//! frozen table as well (see [`MemoryIndex::freeze_ids`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::checkpoint::{self, Draft};
use crate::error::LogError;
use crate::index::{EventIndex, FpMap, MemoryIndex, SortedIds};
use crate::segment::HEADER_LEN;
use crate::store::Shared;

/// A merged id table and the frozen table it replaces.
type Merged = (Arc<SortedIds>, Arc<FpMap>);

/// The state of background checkpoints, kept in [`Shared`].
#[derive(Default)]
pub(crate) struct Checkpoints {
    /// Set by the writer; the next publication starts a checkpoint.
    due: AtomicBool,
    running: Mutex<Option<JoinHandle<()>>>,
    /// A finished merge, for the next publication to install.
    merged: Mutex<Option<Merged>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Checkpoints {
    /// Asks the next publication to start a background checkpoint.
    pub(crate) fn request(&self) {
        self.due.store(true, Ordering::Release);
    }

    /// Whether a background checkpoint is requested or still running.
    pub(crate) fn busy(&self) -> bool {
        self.due.load(Ordering::Acquire)
            || lock(&self.running)
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    /// Waits for a running background checkpoint.
    pub(crate) fn join(&self) {
        let handle = lock(&self.running).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Installs a finished merge; called under the index's write lock. Returns the
    /// tables it replaced, to be dropped after the lock is released.
    pub(crate) fn install(&self, ix: &mut MemoryIndex) -> Option<Merged> {
        let (merged, frozen) = lock(&self.merged).take()?;
        ix.install_ids(merged, &frozen)
    }
}

/// Called by the publisher after publishing a group: starts the requested checkpoint,
/// if any.
pub(crate) fn after_publish(shared: &Arc<Shared>) {
    if !shared.checkpoints.due.swap(false, Ordering::AcqRel) {
        return;
    }
    let draft = match draft(shared) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not start an index checkpoint");
            return;
        }
    };
    let bg = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("tidings-log-checkpoint".into())
        .spawn(move || {
            lower_priority();
            if let Err(e) = complete(&bg, draft, false) {
                tracing::warn!(error = %e, "a background index checkpoint failed");
            }
        });
    match spawned {
        Ok(h) => *lock(&shared.checkpoints.running) = Some(h),
        Err(e) => tracing::warn!(error = %e, "could not start the checkpoint thread"),
    }
}

/// Writes a checkpoint now, on this thread, after any background one. The caller makes
/// sure nothing is being published meanwhile (the writer, with no group at the sync
/// thread).
pub(crate) fn checkpoint_now(shared: &Shared) -> Result<(), LogError> {
    if let Some(m) = shared.stopped_reason() {
        return Err(LogError::Stopped(m));
    }
    shared.checkpoints.join();
    let draft = draft(shared)?.ok_or_else(|| {
        LogError::InvalidOption("the index changed while a checkpoint was drafted".into())
    })?;
    complete(shared, draft, true)
}

/// Freezes the recent ids (write lock, constant time) and drafts the checkpoint (read
/// lock). `None` when a publication slipped in between (the frozen ids then wait for
/// the next checkpoint).
fn draft(shared: &Shared) -> Result<Option<Draft>, LogError> {
    let (ids, covered, replaced) = {
        let mut ix = shared.write_index();
        let replaced = shared.checkpoints.install(&mut ix);
        (ix.freeze_ids(), ix.next_position(), replaced)
    };
    drop(replaced);
    let ix = shared.read_index();
    if ix.next_position() != covered {
        tracing::debug!("a publication came between freezing ids and drafting a checkpoint");
        return Ok(None);
    }
    let end = ix.segments.last().map_or(HEADER_LEN, |s| s.data_end);
    let crc = checkpoint::last_frame_crc(&ix)
        .map_err(LogError::io("reading the last frame in", &shared.dir))?;
    let started = std::time::Instant::now();
    let draft = Draft::new(&ix, end, crc, ids);
    tracing::debug!(
        micros = started.elapsed().as_micros() as u64,
        covered,
        "checkpoint drafted under the index's read lock"
    );
    Ok(Some(draft))
}

/// Merges the ids, installs the merged table (now, or by the next publication) and saves
/// the file.
fn complete(shared: &Shared, draft: Draft, install_now: bool) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let frozen = draft.frozen();
    let (bytes, ids) = draft.finish();
    let merged = (Arc::new(SortedIds::new(ids)), frozen);
    if install_now {
        let replaced = {
            let mut ix = shared.write_index();
            ix.install_ids(merged.0, &merged.1)
        };
        drop(replaced);
    } else {
        *lock(&shared.checkpoints.merged) = Some(merged);
    }
    tracing::debug!(
        micros = started.elapsed().as_micros() as u64,
        bytes = bytes.len(),
        "checkpoint encoded"
    );
    checkpoint::save(&*shared.storage, &shared.dir, &bytes)
        .map_err(LogError::io("writing the index checkpoint in", &shared.dir))
}

/// Lowers this thread's scheduling priority (nice 10), so a background checkpoint uses
/// the CPU the write path leaves idle. Best effort: an error only means it competes at
/// normal priority.
fn lower_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), 10) {
        tracing::debug!(error = %e, "could not lower the checkpoint thread's priority");
    }
}
