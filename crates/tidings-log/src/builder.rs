//! [`LogStoreBuilder`]: the options a store is opened with, and opening it — taking the
//! directory's lock, recovering the log ([`crate::recovery`]), saving the indexes when
//! the open had to scan, and starting the writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::{Clock, Limits, SystemClock};

use crate::error::LogError;
use crate::index_snapshotter;
use crate::recovery::{self, RecoverOptions};
use crate::storage::{OsStorage, Storage};
use crate::store::{LogStore, Shared};
use crate::writer::{Writer, WriterConfig};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync` of its commit group: survives a crash or power loss.
    #[default]
    Fsync,
    /// As soon as the write reached the operating system, without any fsync. A crash of
    /// the machine loses acknowledged appends. **For tests only.**
    NoFsyncTestsOnly,
}

/// Options for opening a [`LogStore`].
///
/// ```no_run
/// # fn main() -> Result<(), tidings_log::LogError> {
/// let store = tidings_log::LogStore::builder("./data")
///     .segment_size(64 << 20)
///     .limits(tidings_core::Limits { max_event_bytes: 1 << 20, max_append_bytes: 16 << 20 })
///     .open()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LogStoreBuilder {
    dir: PathBuf,
    segment_size: u64,
    limits: Limits,
    durability: Durability,
    salvage: bool,
    channel_capacity: usize,
    max_group_bytes: usize,
    index_snapshot_every: u64,
    index_memory_events: u64,
    index_tail_events: u64,
    inline_commits: bool,
    append_timeout: Duration,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LogStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStoreBuilder")
            .field("dir", &self.dir)
            .field("segment_size", &self.segment_size)
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .field("salvage", &self.salvage)
            .finish_non_exhaustive()
    }
}

/// Default [`LogStoreBuilder::append_timeout`]: 30 s.
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`LogStoreBuilder::index_tail_events`]: 100,000.
pub const DEFAULT_INDEX_TAIL_EVENTS: u64 = 100_000;

/// Default segment size: 256 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 << 20;

impl LogStoreBuilder {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            limits: Limits::default(),
            durability: Durability::Fsync,
            salvage: false,
            channel_capacity: 4096,
            max_group_bytes: 32 << 20,
            index_snapshot_every: 1_000_000,
            index_memory_events: 4_000_000,
            index_tail_events: DEFAULT_INDEX_TAIL_EVENTS,
            inline_commits: true,
            append_timeout: DEFAULT_APPEND_TIMEOUT,
            storage: Arc::new(OsStorage),
            clock: Arc::new(SystemClock),
        }
    }

    /// Size each segment file is preallocated to (default 256 MiB, at least 4 KiB).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Largest event and largest append (default 1 MiB and 16 MiB).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// When appends are acknowledged (default: after fsync).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Opens a damaged log read-only, with the events before the first damage, instead
    /// of failing. Appends then fail with `StoreError::Stopped`.
    pub fn salvage(mut self, salvage: bool) -> Self {
        self.salvage = salvage;
        self
    }

    /// Appends that may wait for the writer before senders are held back (default 4096).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n.max(1);
        self
    }

    /// Bytes of events one commit group takes at most (default 32 MiB).
    pub fn max_group_bytes(mut self, bytes: usize) -> Self {
        self.max_group_bytes = bytes.max(1);
        self
    }

    /// Snapshots the indexes in the background once this many events (and a quarter
    /// of the log) were written since the last snapshot, bounding what recovery after
    /// a crash has to rescan (default 1,000,000).
    pub fn index_snapshot_every(mut self, events: u64) -> Self {
        self.index_snapshot_every = events.max(1);
        self
    }

    /// Most events whose index entries stay in memory: once this many were written
    /// since the last index file, a new one is merged in the background even when
    /// `index_snapshot_every`'s quarter of the log is not reached yet (default
    /// 4,000,000). Memory then holds about this many events' entries (twice while a
    /// merge runs), not the whole index.
    pub fn index_memory_events(mut self, events: u64) -> Self {
        self.index_memory_events = events.max(1);
        self
    }

    /// Most events a close, or an open that had to read them from the log, leaves
    /// after the index file instead of merging them into it (default
    /// [`DEFAULT_INDEX_TAIL_EVENTS`]). The next open reads them from the log again, as
    /// it does after a crash: a few milliseconds. Merging them would rewrite the whole
    /// file, which on a store of tens of millions of events takes tens of seconds, for
    /// a handful of events. A store with no index file yet gets one at its first close.
    /// 0 writes the file at every close and every such open.
    pub fn index_tail_events(mut self, events: u64) -> Self {
        self.index_tail_events = events;
        self
    }

    /// Whether an append alone on an idle store may commit on its own thread (default
    /// true). It then blocks its Tokio worker for one `fdatasync`, inside
    /// `block_in_place`, instead of paying two thread wake-ups; turn this off to keep
    /// every append's I/O on the writer thread (see decision record 0004).
    pub fn inline_commits(mut self, on: bool) -> Self {
        self.inline_commits = on;
        self
    }

    /// Longest an append waits for its group to be durable (default 30 s, at least 1 ms).
    /// Past it the append answers [`tidings_core::StoreError::Timeout`] with
    /// `outcome_unknown`: it is not withdrawn and may still become durable (it is never
    /// acknowledged before it is, and a failed fsync is never retried). Retrying it with
    /// the same event ids is safe: the store deduplicates by event id. An inline commit
    /// (see [`LogStoreBuilder::inline_commits`]) runs on the calling thread and is not
    /// interrupted; the deadline covers appends that wait for the writer thread.
    pub fn append_timeout(mut self, timeout: Duration) -> Self {
        self.append_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Uses another clock for `recorded_at`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    #[cfg(test)]
    pub(crate) fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// Opens (or creates) the store, recovering from a crash if needed. Fails with
    /// [`LogError::Locked`] when another process has the directory open.
    pub fn open(self) -> Result<LogStore, LogError> {
        if self.segment_size < 4096 || self.segment_size >= 1 << 40 {
            return Err(LogError::InvalidOption(format!(
                "segment size {} is outside 4 KiB..1 TiB",
                self.segment_size
            )));
        }
        if self.limits.max_append_bytes > 1 << 29 || self.limits.max_event_bytes == 0 {
            return Err(LogError::InvalidOption(format!(
                "limits {:?}: an append may be at most 512 MiB",
                self.limits
            )));
        }
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        storage
            .create_dir_all(&dir)
            .map_err(LogError::io("creating", &dir))?;
        let lock = storage.lock(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                LogError::Locked { path: dir.clone() }
            } else {
                LogError::io("locking", &dir)(e)
            }
        })?;
        let durable = self.durability == Durability::Fsync;
        if durable && !self.salvage {
            sync_new_store_dir(&*storage, &dir)?;
        }
        let rec = recovery::recover(
            &*storage,
            &dir,
            &RecoverOptions {
                segment_size: self.segment_size,
                salvage: self.salvage,
                durable,
                now_micros: self.clock.now().as_microsecond(),
                force_rebuild: false,
                memory_events: self.index_memory_events,
            },
        )?;
        let mut rec = rec;
        if rec.report.frames_scanned > 0
            && (rec.index.base().is_none() || rec.index.in_memory() > self.index_tail_events)
            && let Some((_, offset)) = rec.active
        {
            // The scan's work is saved at once, so the next open does not repeat it,
            // unless it was a short tail after the index file (`index_tail_events`).
            index_snapshotter::write_now(&*storage, &dir, &mut rec.index, offset)?;
        }
        let shared = Arc::new(Shared::new(
            dir,
            storage,
            rec.index,
            self.limits,
            rec.report,
            lock,
        ));
        let Some((ordinal, offset)) = rec.active else {
            return Ok(LogStore::read_only(shared));
        };
        let writer = Writer::new(
            shared.clone(),
            WriterConfig {
                segment_size: self.segment_size,
                durable,
                max_group_bytes: self.max_group_bytes,
                index_snapshot_every: self.index_snapshot_every,
                index_memory_events: self.index_memory_events,
                index_tail_events: self.index_tail_events,
                clock: self.clock.clone(),
            },
            ordinal,
            offset,
        )?;
        LogStore::start(
            shared,
            writer,
            self.channel_capacity,
            self.inline_commits,
            self.append_timeout,
        )
    }
}

/// A store about to get its first segment makes its directory's entry durable in the
/// parent: whoever created the directory (this store, an operator, a deploy script) may
/// not have synced the parent, and a power cut would then take the directory, and every
/// acknowledged event in it, away. Existing stores were made durable when created.
fn sync_new_store_dir(storage: &dyn Storage, dir: &std::path::Path) -> Result<(), LogError> {
    let names = storage.list(dir).map_err(LogError::io("listing", dir))?;
    if names
        .iter()
        .any(|n| crate::segment::parse_file_name(n).is_some())
    {
        return Ok(());
    }
    let parent = crate::storage::parent_dir(dir);
    match storage.sync_dir(parent) {
        Ok(()) => Ok(()),
        // A parent this process may not open (mode 711) was set up by someone else, who
        // made the directory long before; nothing more can be done from here.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(dir = %parent.display(), "cannot sync the store directory's parent: {e}");
            Ok(())
        }
        Err(e) => Err(LogError::io("syncing", parent)(e)),
    }
}
