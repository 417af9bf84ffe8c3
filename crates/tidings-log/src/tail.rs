//! The log's last writes, kept in memory for readers.
//!
//! The writer writes segments around the page cache (decision record 0023), so a frame
//! just written is on the disk only: a live subscriber reading it through the
//! segment's mapping would wait for a disk read. The writer therefore hands each
//! write's buffer here once written, and reads of the newest frames take them from
//! memory. The cache holds the last [`TAIL_BYTES`] of writes, as one chunk per write; a
//! chunk holds exactly the bytes the write put at its range of its segment, so any
//! chunk holding a whole frame holds the frame as the segment does (checksums are
//! checked as for any read).
//!
//! The cache is kept only while it is read: reads that start among the newest
//! [`TAIL_EVENTS`] events mark it wanted, and the writer hands its writes over for
//! [`WANTED_FOR`] after the last such read. A store nobody tails keeps its writer's
//! one buffer, warm in the processor's cache.
//!
//! Nothing is copied: the writer gives its buffer away and encodes the next group into
//! a spare one, a chunk that left the cache and that no reader holds any more. The
//! spares' memory is already touched; allocating fresh pages for every group would cost
//! what writing around the page cache saves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tidings_core::Position;

use crate::storage::AlignedBuf;

/// The most bytes of recent writes kept.
pub(crate) const TAIL_BYTES: usize = 16 << 20;
/// Chunks kept for reuse, and the largest kept (a spare holds its memory).
const SPARE: usize = 4;
const SPARE_BYTES: usize = TAIL_BYTES / 2;
/// A read that starts among this many newest events reads the tail.
pub(crate) const TAIL_EVENTS: u64 = 50_000;
/// How long after the last read of the tail the writer keeps handing writes over.
pub(crate) const WANTED_FOR: Duration = Duration::from_secs(2);

/// One write's bytes.
pub(crate) struct TailChunk {
    /// The first position of the segment written.
    pub segment: Position,
    /// Where the bytes start in it.
    pub start: u64,
    pub bytes: AlignedBuf,
}

impl TailChunk {
    /// Where the bytes end in the segment.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Whether the chunk holds `[offset, offset + len)`.
    pub(crate) fn holds(&self, offset: u64, len: u64) -> bool {
        offset >= self.start && offset + len <= self.end()
    }
}

/// The recent writes (shared by the writer and every reader of one store).
pub(crate) struct TailCache {
    inner: Mutex<Inner>,
    /// When the tail was last read, in milliseconds since `born`, plus one (0: never).
    wanted_at: AtomicU64,
    born: Instant,
}

impl Default for TailCache {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            wanted_at: AtomicU64::new(0),
            born: Instant::now(),
        }
    }
}

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Arc<TailChunk>>,
    bytes: usize,
    spare: Vec<AlignedBuf>,
}

impl TailCache {
    /// Records that a reader reads the tail.
    pub(crate) fn want(&self) {
        self.wanted_at.store(self.now(), Ordering::Relaxed);
    }

    /// Whether the tail was read within [`WANTED_FOR`].
    pub(crate) fn wanted(&self) -> bool {
        recent(self.wanted_at.load(Ordering::Relaxed), self.now())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Drops every chunk (the writer stopped handing its writes over, so the cache
    /// would no longer reach the log's end); those no reader holds become spares.
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.bytes = 0;
        while let Some(old) = inner.chunks.pop_front() {
            if let Ok(old) = Arc::try_unwrap(old) {
                inner.add_spare(old.bytes);
            }
        }
    }

    /// An empty buffer for the writer's next group: a spare one when there is one.
    pub(crate) fn spare(&self) -> AlignedBuf {
        let mut buf = self.lock().spare.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Takes `bytes`, just written at `start` of the segment starting at `segment`. A
    /// write larger than half the cache is not kept (its buffer becomes a spare).
    pub(crate) fn keep(&self, segment: Position, start: u64, bytes: AlignedBuf) {
        let mut inner = self.lock();
        if bytes.len() > TAIL_BYTES / 2 {
            inner.add_spare(bytes);
            return;
        }
        inner.bytes += bytes.len();
        inner.chunks.push_back(Arc::new(TailChunk {
            segment,
            start,
            bytes,
        }));
        while inner.bytes > TAIL_BYTES {
            let Some(old) = inner.chunks.pop_front() else {
                break;
            };
            inner.bytes -= old.bytes.len();
            if let Ok(old) = Arc::try_unwrap(old) {
                inner.add_spare(old.bytes);
            }
        }
    }

    /// The chunks of the segment starting at `segment`, oldest first.
    pub(crate) fn of(&self, segment: Position) -> Vec<Arc<TailChunk>> {
        self.lock()
            .chunks
            .iter()
            .filter(|c| c.segment == segment)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a mark made at `at` (0: never) is within [`WANTED_FOR`] of `now`.
fn recent(at: u64, now: u64) -> bool {
    at != 0 && now.saturating_sub(at) < WANTED_FOR.as_millis() as u64
}

impl Inner {
    fn add_spare(&mut self, buf: AlignedBuf) {
        if self.spare.len() < SPARE && buf.capacity() <= SPARE_BYTES {
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic on what they assert

    use super::*;

    fn buf(fill: u8, len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.extend_from_slice(&vec![fill; len]);
        b
    }

    #[test]
    fn keeps_the_newest_writes_up_to_its_size_and_reuses_what_no_reader_holds() {
        let cache = TailCache::default();
        let quarter = TAIL_BYTES / 4;
        for i in 0..4u64 {
            cache.keep(0, i * quarter as u64, buf(7, quarter));
        }
        assert_eq!(cache.of(0).len(), 4);
        assert!(cache.of(1).is_empty());
        let held = cache.of(0);
        cache.keep(1, 64, buf(1, 3));
        let first = cache.of(0);
        assert_eq!(first.len(), 3, "the oldest write made room");
        assert_eq!(first[0].start, quarter as u64);
        assert!(first[0].holds(quarter as u64, 10));
        assert!(!first[0].holds(0, 10));
        // A reader still holds the evicted chunk: its bytes stay as they were, and it
        // is no spare.
        assert_eq!(held[0].start, 0);
        assert!(held[0].bytes.as_slice().iter().all(|&b| b == 7));
        assert!(cache.spare().is_empty());
        drop(held);
        let newest = cache.of(1);
        assert_eq!(newest[0].bytes.as_slice(), &[1, 1, 1]);
        assert!(newest[0].holds(64, 3) && !newest[0].holds(64, 4));
        cache.keep(0, 0, buf(0, TAIL_BYTES));
        assert_eq!(cache.of(0).len(), 3, "too large to keep");
        // Evicting a chunk no reader holds makes it a spare, empty and ready.
        drop(first);
        cache.keep(2, 0, buf(9, quarter));
        cache.keep(2, quarter as u64, buf(9, quarter));
        let spare = cache.spare();
        assert!(spare.is_empty());
        cache.clear();
        assert!(cache.of(2).is_empty() && cache.of(1).is_empty());
        // Spares are bounded in number and size: what they hold stays allocated.
        while cache.spare().capacity() > 0 {}
        for _ in 0..2 * SPARE {
            cache.keep(3, 0, buf(1, SPARE_BYTES + 1));
        }
        let mut spares = Vec::new();
        loop {
            let s = cache.spare();
            if s.capacity() == 0 {
                break;
            }
            assert!(s.capacity() <= SPARE_BYTES);
            spares.push(s);
        }
        assert!(
            spares.is_empty(),
            "a spare larger than {SPARE_BYTES} bytes was kept"
        );
        for _ in 0..2 * SPARE {
            cache.keep(3, 0, buf(1, SPARE_BYTES));
        }
        cache.clear();
        let mut n = 0;
        while cache.spare().capacity() > 0 {
            n += 1;
        }
        assert_eq!(n, SPARE);
    }

    #[test]
    fn is_wanted_only_after_a_read_of_the_tail() {
        let cache = TailCache::default();
        assert!(!cache.wanted());
        cache.want();
        assert!(cache.wanted());
        let window = WANTED_FOR.as_millis() as u64;
        assert!(!recent(0, 5), "never marked");
        assert!(recent(10, 10) && recent(10, 10 + window - 1));
        assert!(!recent(10, 10 + window));
    }

    /// A disk that counts reads of file bytes (the simulated disk maps nothing, so every
    /// read of a segment is one of these).
    #[derive(Clone)]
    struct Counting(crate::storage::sim::SimStorage, Arc<AtomicU64>);

    struct CountingFile(Arc<dyn StorageFile>, Arc<AtomicU64>);

    use std::path::Path;

    use crate::storage::{OpenMode, Storage, StorageFile};

    impl StorageFile for CountingFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.0.sync_data()
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn allocate(&self, len: u64) -> std::io::Result<()> {
            self.0.allocate(len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
    }

    impl Storage for Counting {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            self.0.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            self.0.list(dir)
        }
        fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn StorageFile>> {
            Ok(Arc::new(CountingFile(
                self.0.open(path, mode)?,
                self.1.clone(),
            )))
        }
        fn exists(&self, path: &Path) -> bool {
            self.0.exists(path)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.0.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.0.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.0.sync_dir(dir)
        }
        fn lock(&self, dir: &Path) -> std::io::Result<Box<dyn Send + Sync>> {
            self.0.lock(dir)
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reader_of_the_newest_frames_reads_them_from_memory() {
        use tidings_core::{
            Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadAll, StreamId,
        };
        let reads = Arc::new(AtomicU64::new(0));
        let disk = Counting(crate::storage::sim::SimStorage::new(), reads.clone());
        let store = crate::LogStore::builder("/sim/tail")
            .segment_size(64 << 10)
            .storage(disk)
            .open()
            .unwrap();
        let stream = StreamId::new("tail-1").unwrap();
        let event = |i: usize| {
            Enricher::new("t")
                .enrich(NewEvent::new("E", serde_json::json!({ "i": i })))
                .unwrap()
        };
        let mut ids = Vec::new();
        let append = |i: usize| store.append(&stream, ExpectedVersion::Any, vec![event(i)]);
        // Nobody reads the tail yet: the writes are not kept.
        append(0).await.unwrap();
        assert!(store.tail_cache().of(0).is_empty());
        // A live reader starts: it reads the first event from the disk and marks the tail
        // wanted; every later write is kept, across the segment's pages.
        let first = store.read_all(ReadAll::new(0, 10)).await.unwrap();
        assert_eq!(first.len(), 1);
        ids.push(first[0].event_id);
        for i in 1..60 {
            let r = append(i).await.unwrap();
            reads.store(0, Ordering::Relaxed);
            let got = store.read_all(ReadAll::new(r.position, 10)).await.unwrap();
            assert_eq!(got.len(), 1, "append {i}");
            assert_eq!(got[0].position, r.position);
            ids.push(got[0].event_id);
            assert_eq!(
                reads.load(Ordering::Relaxed),
                0,
                "append {i} was read from the disk"
            );
        }
        // The same events as a read that goes to the disk.
        store.tail_cache().clear();
        let all = store.read_all(ReadAll::new(0, 100)).await.unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);
        assert_eq!(all.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    }
}
