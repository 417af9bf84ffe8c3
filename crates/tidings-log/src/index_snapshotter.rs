//! When and where index snapshots are written ([`crate::index_snapshot`] is what they are).
//!
//! A snapshot records the whole index, so it costs time in proportion to the log. The
//! write path never waits for more than a constant-time step of it:
//!
//! ```text
//! writer:     enough written since the last one ─► request()
//! publisher:  after publishing a group ─► write lock: freeze the recent ids and take
//!                                         the cut (next position, segment ends)   O(1)
//! background: (nice 10) read the index as it was at the cut, a chunk per hold of the
//!             read lock ─► merge the frozen ids into the base table ─► encode, save
//! publisher:  next group ─► write lock: install the merged table                  O(1)
//! ```
//!
//! What the cut leaves to the background is append-only — event locations, a stream's
//! or a correlation's positions — so reading it later, a prefix at a time, gives the
//! index as it was at the cut (see [`Draft::new`]). The publisher is whichever thread
//! publishes a group (the sync thread, or an inline commit). Until the merged table is
//! installed, lookups read the frozen table as well (see [`MemoryIndex::freeze_ids`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::LogError;
use crate::index::{FpMap, MemoryIndex, SortedIds};
use crate::index_snapshot::{self, Chunks, Cut, CutIds, Draft};
use crate::segment::HEADER_LEN;
use crate::store::Shared;
use crate::writer::micros_since;

/// A merged id table and the frozen table it replaces.
type Merged = (Arc<SortedIds>, Arc<FpMap>);

/// The state of background snapshots, kept in [`Shared`].
#[derive(Default)]
pub(crate) struct IndexSnapshots {
    /// Set by the writer; the next publication starts a snapshot.
    due: AtomicBool,
    running: Mutex<Option<JoinHandle<()>>>,
    /// A finished merge, for the next publication to install.
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

    /// Installs a finished merge; called under the index's write lock. Returns the
    /// tables it replaced, to be dropped after the lock is released.
    pub(crate) fn install(&self, ix: &mut MemoryIndex) -> Option<Merged> {
        let (merged, frozen) = lock(&self.merged).take()?;
        ix.install_ids(merged, &frozen)
    }
}

/// Called by the publisher after publishing a group: starts the requested snapshot,
/// if any.
pub(crate) fn after_publish(shared: &Arc<Shared>) {
    if !shared.snapshots.due.swap(false, Ordering::AcqRel) {
        return;
    }
    let cut = match cut(shared) {
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
            if let Err(e) = draft(&bg, cut).and_then(|d| complete(&bg, d, false)) {
                tracing::warn!(error = %e, "a background index snapshot failed");
            }
        });
    match spawned {
        Ok(h) => *lock(&shared.snapshots.running) = Some(h),
        Err(e) => tracing::warn!(error = %e, "could not start the snapshot thread"),
    }
}

/// Writes a snapshot now, on this thread, after any background one. The caller makes
/// sure nothing is being published meanwhile (the writer, with no group at the sync
/// thread).
pub(crate) fn snapshot_now(shared: &Shared) -> Result<(), LogError> {
    if let Some(m) = shared.stopped_reason() {
        return Err(LogError::Stopped(m));
    }
    shared.snapshots.join();
    let cut = cut(shared)?;
    complete(shared, draft(shared, cut)?, true)
}

/// Freezes the recent ids and takes the snapshot's cut, under the write lock, in
/// constant time (plus the segment list and one read of the last frame's header).
fn cut(shared: &Shared) -> Result<Cut, LogError> {
    let (cut, replaced) = {
        let mut ix = shared.write_index();
        let replaced = shared.snapshots.install(&mut ix);
        let ids = ix.freeze_ids();
        let end = ix.segments.last().map_or(HEADER_LEN, |s| s.data_end);
        let crc = index_snapshot::last_frame_crc(&ix)
            .map_err(LogError::io("reading the last frame in", &shared.dir))?;
        (Cut::new(&ix, end, crc, CutIds::Frozen(ids)), replaced)
    };
    drop(replaced);
    Ok(cut)
}

/// Encodes the index as it was at `cut`, holding its read lock a chunk at a time.
fn draft(shared: &Shared, cut: Cut) -> Result<Draft, LogError> {
    let started = std::time::Instant::now();
    let covered = cut.covered();
    let draft = Draft::new(cut, || shared.read_index(), Chunks::SHORT).map_err(LogError::io(
        "reading the log for a snapshot in",
        &shared.dir,
    ))?;
    tracing::debug!(
        micros = micros_since(started),
        covered,
        "snapshot drafted, a chunk per hold of the index's read lock"
    );
    Ok(draft)
}

/// Merges the ids, installs the merged table (now, or by the next publication) and saves
/// the file.
fn complete(shared: &Shared, draft: Draft, install_now: bool) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let frozen = draft.frozen();
    let (bytes, ids) = draft.finish();
    if let Some(frozen) = frozen {
        let merged = (Arc::new(SortedIds::new(ids)), frozen);
        if install_now {
            let replaced = {
                let mut ix = shared.write_index();
                ix.install_ids(merged.0, &merged.1)
            };
            drop(replaced);
        } else {
            *lock(&shared.snapshots.merged) = Some(merged);
        }
    }
    tracing::debug!(
        micros = micros_since(started),
        bytes = bytes.len(),
        "snapshot encoded"
    );
    index_snapshot::save(&*shared.storage, &shared.dir, &bytes)
        .map_err(LogError::io("writing the index snapshot in", &shared.dir))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tidings_core::{
        Enricher, EventAppender, ExpectedVersion, ManualClock, NewEvent, Position, StreamId,
    };

    use super::*;
    use crate::LogStore;

    type Shape = (
        Vec<u64>,
        BTreeMap<String, (Vec<Position>, i64)>,
        BTreeMap<String, Vec<Position>>,
        Vec<(u64, Position)>,
        (u64, u32),
        Vec<(Position, u64)>,
    );

    /// What a snapshot records, in comparable form.
    fn shape(bytes: &[u8]) -> Shape {
        let c = index_snapshot::decode(bytes).unwrap_or_else(|e| panic!("{e}"));
        let ix = &c.index;
        (
            ix.locs.iter().map(|l| l.0).collect(),
            ix.streams
                .iter()
                .map(|(k, e)| (k.to_string(), (e.positions.clone(), e.last_written)))
                .collect(),
            ix.correlations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            ix.merged_ids(),
            (c.end_offset, c.last_crc),
            ix.segments
                .iter()
                .map(|s| (s.first_position, s.data_end))
                .collect(),
        )
    }

    #[test]
    fn a_draft_read_while_the_index_grows_records_the_index_at_its_cut() {
        let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock = ManualClock::new(jiff::Timestamp::UNIX_EPOCH);
        let store = LogStore::builder(dir.path())
            .segment_size(1 << 20)
            .clock(clock.clone())
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        let append = |stream: &str, n: usize, corr: Option<&str>| {
            clock.advance(std::time::Duration::from_secs(1));
            let events = (0..n)
                .map(|_| {
                    let mut e = NewEvent::new("Tested", serde_json::json!({}));
                    if let Some(c) = corr {
                        e = e.with_correlation_id(c);
                    }
                    Enricher::new("test")
                        .enrich(e)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            let stream = StreamId::new(stream).unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(store.append(&stream, ExpectedVersion::Any, events))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        for s in ["a", "b", "c", "d", "e"] {
            append(s, 2, Some("c1"));
        }
        append("b", 3, None);
        append("f", 1, Some("c2"));
        let shared = store.shared();
        let cut = cut(shared).unwrap_or_else(|e| panic!("{e}"));
        let expected = {
            let ix = shared.read_index();
            let (end, crc) = cut.end();
            index_snapshot::encode(&ix, end, crc).unwrap_or_else(|e| panic!("{e}"))
        };
        // The index grows after the cut: old streams and correlations get more
        // positions (and a later time), new ones appear, before and after the old
        // ones in name order.
        append("b", 2, Some("c1"));
        append("0-first", 1, Some("c3"));
        append("z-last", 2, None);
        append("d", 1, Some("c2"));
        // A chunk per stream and two locations per hold: every resumption is exercised.
        let tiny = Chunks {
            locs: 2,
            streams: 1,
            correlations: 1,
        };
        let drafted = Draft::new(cut, || shared.read_index(), tiny)
            .unwrap_or_else(|e| panic!("{e}"))
            .finish()
            .0;
        let (got, want) = (shape(&drafted), shape(&expected));
        assert_eq!(got.1.len(), 6, "streams at the cut: {:?}", got.1.keys());
        assert_eq!(got.1["b"].0.len(), 5);
        assert_eq!(got, want);
    }
}
