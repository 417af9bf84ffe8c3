//! The index snapshot: the derived indexes saved to `index.ckpt`, so reopening a large
//! store reads one file instead of rescanning the log. (The file keeps the name it had
//! when this was called a checkpoint, so existing stores open without a rebuild.)
//!
//! It is written to `index.ckpt.tmp`, fsynced, renamed over `index.ckpt`, and the
//! directory fsynced. It only ever describes frames that are already durable, so it stays
//! a valid prefix of the log however the log grows afterwards. Little-endian:
//!
//! ```text
//! header, 64 bytes
//! 0   8  magic "TDLOGIX1"
//! 8   4  format version (1)
//! 12  4  checksum field of the last covered frame (ties the snapshot to this log)
//! 16  8  next_position: events [0, next_position) are indexed
//! 24  8  end offset: where the covered data ends in the last segment listed
//! 32  8  body length
//! 40  4  CRC-32C of the body
//! 44  16 reserved
//! 60  4  CRC-32C of header bytes [0, 60)
//! body
//!   u64 segment count, then per segment: u64 first_position, u64 data_end
//!   u64 n, then n × u64 packed locations (position -> segment : offset)
//!   u64 stream count, then per stream, in name order:
//!       u16 name length, name, i64 last_written µs, u64 n, n × u64 positions
//!   u64 id count, then per id, sorted: u64 fingerprint, u64 position
//!   u64 correlation count, then per id: u32 length, id, u64 n, n × u64 positions
//!   postings (see crate::tags), twice: event types, then stream categories:
//!       u64 key count, then per key: u32 length, key, u64 n, n × u64 positions ascending
//! ```
//!
//! A snapshot without the postings sections (written before they existed) is refused
//! as stale, so the first open after the upgrade rebuilds the indexes from the log once.
//!
//! A snapshot whose checksums fail, or that does not match the segments found on disk,
//! is stale: recovery ignores it and rebuilds the indexes from the log.

use std::collections::BTreeMap;
use std::ops::{Bound, Deref};
use std::path::Path;
use std::sync::Arc;

use tidings_core::{Position, StreamId};

use crate::index::{
    Correlations, EventIndex, FpMap, IdsToMerge, Loc, MemoryIndex, SegmentEntry, SortedIds,
    StreamEntry,
};
use crate::storage::{OpenMode, Storage, StorageFile, read_exact_at};
use crate::tags::Tags;

/// The index snapshot's file name (unchanged, for existing stores).
pub const FILE_NAME: &str = "index.ckpt";
const TMP_NAME: &str = "index.ckpt.tmp";
const MAGIC: &[u8; 8] = b"TDLOGIX1";
const HEADER_LEN: usize = 64;

/// A loaded snapshot.
pub struct IndexSnapshot {
    /// The indexes (segments without open files).
    pub index: MemoryIndex,
    /// Where the covered data ends in the last segment.
    pub end_offset: u64,
    /// The checksum field of the last covered frame.
    pub last_crc: u32,
}

/// Why a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexSnapshotError {
    /// No snapshot file.
    #[error("no index snapshot")]
    Missing,
    /// Reading failed.
    #[error("reading the index snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The file is damaged or of another format.
    #[error("the index snapshot is unusable: {0}")]
    Bad(&'static str),
}

/// The checksum field of the frame holding the last indexed event (0 for an empty log).
pub fn last_frame_crc(index: &MemoryIndex) -> std::io::Result<u32> {
    let Some(last) = index.next_position().checked_sub(1) else {
        return Ok(0);
    };
    Ok(le32(&frame_header(index, last)?[4..8]))
}

/// When the frame holding `position` was recorded (its header's `recorded_at`).
fn frame_recorded_at(
    index: &MemoryIndex,
    position: tidings_core::Position,
) -> std::io::Result<i64> {
    Ok(le64(&frame_header(index, position)?[32..40]) as i64)
}

/// The first 40 bytes of the header of the frame holding `position`, read from the log.
fn frame_header(
    index: &MemoryIndex,
    position: tidings_core::Position,
) -> std::io::Result<[u8; 40]> {
    let loc = index.loc(position).ok_or(std::io::ErrorKind::NotFound)?;
    let file = index
        .segments
        .get(loc.segment())
        .and_then(|s| s.file.as_ref())
        .ok_or(std::io::ErrorKind::NotFound)?;
    let mut h = [0u8; 40];
    read_exact_at(&**file, &mut h, loc.offset())?;
    Ok(h)
}

/// Serializes `index`, whose last segment's covered data ends at `end_offset`, and whose
/// last frame has checksum field `last_crc`. (Reading the log, which this may do for a
/// stream extended after a cut, cannot happen here: the index does not change.)
pub fn encode(index: &MemoryIndex, end_offset: u64, last_crc: u32) -> std::io::Result<Vec<u8>> {
    let cut = Cut::new(
        index,
        end_offset,
        last_crc,
        CutIds::Merged(index.merged_ids()),
    );
    Ok(Draft::new(cut, || index, Chunks::WHOLE)?.finish().0)
}

/// The instant a snapshot records, taken under the index's lock in constant time
/// (plus the segment list): the next position, where the covered data ends, the last
/// frame's checksum, and the ids (frozen, see [`MemoryIndex::freeze_ids`]). Everything
/// else a snapshot records is append-only — event locations, a stream's or a
/// correlation's positions — so [`Draft::new`] can read it later, a prefix at a time,
/// while the index grows.
pub(crate) struct Cut {
    covered: tidings_core::Position,
    end_offset: u64,
    last_crc: u32,
    segments: Vec<(tidings_core::Position, u64)>,
    ids: CutIds,
}

/// The ids a cut records.
pub(crate) enum CutIds {
    /// Frozen in the index, to be merged outside its lock (and the merge installed).
    Frozen(IdsToMerge),
    /// Already merged (the cut of an index that does not change).
    Merged(Vec<(u64, tidings_core::Position)>),
}

impl Cut {
    pub(crate) fn new(index: &MemoryIndex, end_offset: u64, last_crc: u32, ids: CutIds) -> Self {
        Self {
            covered: index.next_position(),
            end_offset,
            last_crc,
            segments: index
                .segments
                .iter()
                .map(|s| (s.first_position, s.data_end))
                .collect(),
            ids,
        }
    }

    /// The next position when the cut was taken.
    pub(crate) fn covered(&self) -> tidings_core::Position {
        self.covered
    }

    /// Where the covered data ends, and the last covered frame's checksum field.
    #[cfg(test)]
    pub(crate) fn end(&self) -> (u64, u32) {
        (self.end_offset, self.last_crc)
    }
}

/// How much [`Draft::new`] reads per hold of the index's lock.
#[derive(Clone, Copy)]
pub(crate) struct Chunks {
    pub locs: usize,
    pub streams: usize,
    pub correlations: usize,
}

impl Chunks {
    /// Everything at once (for an index nobody else holds).
    pub(crate) const WHOLE: Self = Self {
        locs: usize::MAX,
        streams: usize::MAX,
        correlations: usize::MAX,
    };
    /// About a millisecond of work per hold.
    pub(crate) const SHORT: Self = Self {
        locs: 1 << 16,
        streams: 512,
        correlations: 4096,
    };
}

/// A snapshot in two steps: `Draft::new` encodes everything but the id table,
/// reading the index through `read` in short holds of its lock; [`Draft::finish`]
/// (holding nothing) sorts and merges the ids and assembles the file.
pub struct Draft {
    /// Header space, segments, locations and streams.
    head: Vec<u8>,
    /// Correlations.
    tail: Vec<u8>,
    ids: CutIds,
    frames: u64,
    end_offset: u64,
    last_crc: u32,
}

impl Draft {
    /// Encodes the index as it was at `cut`. `read` gives access to the index (a lock
    /// guard, taken and released per chunk). Positions at or after the cut — appended
    /// since — are left out: a stream or correlation with none before it is skipped,
    /// and a stream extended since gets the time of its last frame before the cut (read
    /// from the log).
    pub(crate) fn new<G: Deref<Target = MemoryIndex>>(
        cut: Cut,
        read: impl Fn() -> G,
        chunks: Chunks,
    ) -> std::io::Result<Self> {
        let covered = cut.covered;
        let events = usize::try_from(covered).unwrap_or(usize::MAX);
        let mut b = Vec::with_capacity(
            HEADER_LEN
                .saturating_add(16 + cut.segments.len() * 16)
                .saturating_add(events.saturating_mul(24)),
        );
        b.resize(HEADER_LEN, 0);
        put64(&mut b, cut.segments.len() as u64);
        for &(first, end) in &cut.segments {
            put64(&mut b, first);
            put64(&mut b, end);
        }
        put64(&mut b, covered);
        let mut at = 0usize;
        while at < events {
            let ix = read();
            let end = at.saturating_add(chunks.locs.max(1)).min(events);
            let part = ix.locs.get(at..end).ok_or_else(|| {
                std::io::Error::other("the index has fewer locations than the cut")
            })?;
            for l in part {
                put64(&mut b, l.0);
            }
            at = end;
        }
        let count_at = b.len();
        put64(&mut b, 0);
        let mut streams = 0u64;
        let mut after: Option<StreamId> = None;
        loop {
            let ix = read();
            let range = match &after {
                None => ix.streams.range::<StreamId, _>(..),
                Some(k) => ix
                    .streams
                    .range::<StreamId, _>((Bound::Excluded(k), Bound::Unbounded)),
            };
            let mut taken = 0usize;
            let mut last = None;
            for (name, e) in range.take(chunks.streams.max(1)) {
                taken += 1;
                last = Some(name);
                let k = e.positions.partition_point(|&p| p < covered);
                let Some(&last_position) = e.positions[..k].last() else {
                    continue;
                };
                let written = if k == e.positions.len() {
                    e.last_written
                } else {
                    frame_recorded_at(&ix, last_position)?
                };
                let n = name.as_str().as_bytes();
                b.extend_from_slice(&(n.len() as u16).to_le_bytes());
                b.extend_from_slice(n);
                put64(&mut b, written as u64);
                put64(&mut b, k as u64);
                for &p in &e.positions[..k] {
                    put64(&mut b, p);
                }
                streams += 1;
            }
            if taken < chunks.streams.max(1) {
                break;
            }
            after = last.cloned();
        }
        b[count_at..count_at + 8].copy_from_slice(&streams.to_le_bytes());
        let mut t = Vec::new();
        put64(&mut t, 0);
        let mut correlations = 0u64;
        let mut at = 0usize;
        loop {
            let ix = read();
            let mut taken = 0usize;
            for (c, ps) in ix.correlations.chunk(at, chunks.correlations.max(1)) {
                taken += 1;
                let k = ps.partition_point(|&p| p < covered);
                if k == 0 {
                    continue;
                }
                t.extend_from_slice(&(c.len() as u32).to_le_bytes());
                t.extend_from_slice(c.as_bytes());
                put64(&mut t, k as u64);
                for &p in &ps[..k] {
                    put64(&mut t, p);
                }
                correlations += 1;
            }
            at += taken;
            if taken < chunks.correlations.max(1) {
                break;
            }
        }
        t[..8].copy_from_slice(&correlations.to_le_bytes());
        for kind in [TagKind::Type, TagKind::Category] {
            let keys: Vec<Box<str>> = {
                let ix = read();
                let mut k: Vec<Box<str>> = tag_map(&ix.tags, kind).keys().cloned().collect();
                k.sort();
                k
            };
            let count_at = t.len();
            put64(&mut t, 0);
            let mut written = 0u64;
            for key in keys {
                let ix = read();
                let Some(ps) = tag_map(&ix.tags, kind).get(&key) else {
                    continue;
                };
                let k = ps.partition_point(|&p| p < covered);
                if k == 0 {
                    continue;
                }
                t.extend_from_slice(&(key.len() as u32).to_le_bytes());
                t.extend_from_slice(key.as_bytes());
                put64(&mut t, k as u64);
                for &p in &ps[..k] {
                    put64(&mut t, p);
                }
                written += 1;
            }
            t[count_at..count_at + 8].copy_from_slice(&written.to_le_bytes());
        }
        Ok(Self {
            head: b,
            tail: t,
            ids: cut.ids,
            frames: covered,
            end_offset: cut.end_offset,
            last_crc: cut.last_crc,
        })
    }

    /// The table of ids frozen for this snapshot, if they were.
    pub(crate) fn frozen(&self) -> Option<Arc<FpMap>> {
        match &self.ids {
            CutIds::Frozen(ids) => Some(ids.rest.clone()),
            CutIds::Merged(_) => None,
        }
    }

    /// The snapshot's bytes, and the merged id table (which becomes the index's base).
    pub fn finish(self) -> (Vec<u8>, Vec<(u64, tidings_core::Position)>) {
        let ids = match self.ids {
            CutIds::Frozen(ids) => ids.merge(),
            CutIds::Merged(ids) => ids,
        };
        let mut b = self.head;
        b.reserve(8 + ids.len() * 16 + self.tail.len());
        put64(&mut b, ids.len() as u64);
        for &(f, p) in &ids {
            put64(&mut b, f);
            put64(&mut b, p);
        }
        b.extend_from_slice(&self.tail);
        let body_len = (b.len() - HEADER_LEN) as u64;
        let body_crc = crc32c::crc32c(&b[HEADER_LEN..]);
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&self.last_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.frames.to_le_bytes());
        b[24..32].copy_from_slice(&self.end_offset.to_le_bytes());
        b[32..40].copy_from_slice(&body_len.to_le_bytes());
        b[40..44].copy_from_slice(&body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        (b, ids)
    }
}

/// Which postings a section holds.
#[derive(Clone, Copy)]
enum TagKind {
    Type,
    Category,
}

fn tag_map(tags: &Tags, kind: TagKind) -> &std::collections::HashMap<Box<str>, Vec<Position>> {
    match kind {
        TagKind::Type => &tags.types,
        TagKind::Category => &tags.categories,
    }
}

fn tag_map_mut(
    tags: &mut Tags,
    kind: TagKind,
) -> &mut std::collections::HashMap<Box<str>, Vec<Position>> {
    match kind {
        TagKind::Type => &mut tags.types,
        TagKind::Category => &mut tags.categories,
    }
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// Writes the snapshot atomically (temp file, fsync, rename, directory fsync).
pub fn save(storage: &dyn Storage, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(TMP_NAME);
    let f = storage.open(&tmp, OpenMode::Truncate)?;
    f.write_all_at(bytes, 0)?;
    f.sync_data()?;
    drop(f);
    storage.rename(&tmp, &dir.join(FILE_NAME))?;
    storage.sync_dir(dir)
}

/// Removes the snapshot (the next open rebuilds the indexes).
pub fn remove(storage: &dyn Storage, dir: &Path) -> std::io::Result<()> {
    let p = dir.join(FILE_NAME);
    if storage.exists(&p) {
        storage.remove(&p)?;
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// Loads and checks the snapshot in `dir`.
pub fn load(storage: &dyn Storage, dir: &Path) -> Result<IndexSnapshot, IndexSnapshotError> {
    let path = dir.join(FILE_NAME);
    if !storage.exists(&path) {
        return Err(IndexSnapshotError::Missing);
    }
    let f = storage.open(&path, OpenMode::Read)?;
    let len = f.len()?;
    decode_file(&*f, len)
}

/// Decodes a snapshot image.
pub fn decode(b: &[u8]) -> Result<IndexSnapshot, IndexSnapshotError> {
    decode_file(&SliceFile(b), b.len() as u64)
}

/// Decodes a snapshot file of `len` bytes, streaming it through a small buffer so that
/// loading a large index never holds the whole file in memory besides the index.
fn decode_file(f: &dyn StorageFile, len: u64) -> Result<IndexSnapshot, IndexSnapshotError> {
    let bad = IndexSnapshotError::Bad;
    if len < HEADER_LEN as u64 {
        return Err(bad("shorter than its header"));
    }
    let mut h = [0u8; HEADER_LEN];
    read_exact_at(f, &mut h, 0)?;
    if &h[..8] != MAGIC {
        return Err(bad("wrong magic"));
    }
    if le32(&h[60..64]) != crc32c::crc32c(&h[..60]) {
        return Err(bad("header checksum mismatch"));
    }
    if le32(&h[8..12]) != 1 {
        return Err(bad("unknown format version"));
    }
    let last_crc = le32(&h[12..16]);
    let next_position = le64(&h[16..24]);
    let end_offset = le64(&h[24..32]);
    let body_len = le64(&h[32..40]);
    if body_len > len - HEADER_LEN as u64 {
        return Err(bad("body is truncated"));
    }
    let mut r = Reader {
        file: f,
        next: HEADER_LEN as u64,
        left: body_len,
        buf: Vec::new(),
        at: 0,
        crc: 0,
    };
    let mut index = MemoryIndex::default();
    let nseg = r.count(16)?;
    for _ in 0..nseg {
        let first_position = r.u64()?;
        let data_end = r.u64()?;
        index.segments.push(SegmentEntry {
            first_position,
            data_end,
            path: Default::default(),
            file: None,
        });
    }
    let nlocs = r.count(8)?;
    if nlocs as u64 != next_position {
        return Err(bad("location count disagrees with the header"));
    }
    index.locs = Vec::with_capacity(nlocs);
    for _ in 0..nlocs {
        index.locs.push(Loc(r.u64()?));
    }
    let nstreams = r.count(18)?;
    let mut streams = Vec::with_capacity(nstreams);
    for _ in 0..nstreams {
        let n = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(n)?).map_err(|_| bad("stream name is not UTF-8"))?;
        let name = StreamId::parse_any(name).map_err(|_| bad("invalid stream name"))?;
        let last_written = r.u64()? as i64;
        let count = r.count(8)?;
        let mut positions: Vec<Position> = Vec::with_capacity(count);
        for _ in 0..count {
            let p = r.u64()?;
            if p >= next_position {
                return Err(bad("a stream position is beyond the covered log"));
            }
            positions.push(p);
        }
        streams.push((
            name,
            StreamEntry {
                positions,
                last_written,
            },
        ));
    }
    if streams.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(bad("streams are not in name order"));
    }
    index.streams = BTreeMap::from_iter(streams);
    let nids = r.count(16)?;
    let mut ids = Vec::with_capacity(nids);
    for _ in 0..nids {
        let f = r.u64()?;
        let p = r.u64()?;
        ids.push((f, p));
    }
    if ids.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad("ids are not sorted"));
    }
    index.ids_base = Arc::new(SortedIds::new(ids));
    let ncorr = r.count(12)?;
    let mut correlations = Correlations::with_capacity(ncorr);
    for _ in 0..ncorr {
        let n = r.u32()? as usize;
        let c = std::str::from_utf8(r.take(n)?).map_err(|_| bad("correlation is not UTF-8"))?;
        let c: Box<str> = Box::from(c);
        let count = r.count(8)?;
        let mut positions: Vec<Position> = Vec::with_capacity(count);
        for _ in 0..count {
            positions.push(r.u64()?);
        }
        if correlations.get(&c).is_some() {
            return Err(bad("a correlation is listed twice"));
        }
        correlations.extend(&c, positions);
    }
    index.correlations = correlations;
    if r.remaining() == 0 {
        // Written before postings existed: recovery rebuilds from the log once.
        return Err(bad("no postings section"));
    }
    for kind in [TagKind::Type, TagKind::Category] {
        let nkeys = r.count(12)?;
        let map = tag_map_mut(&mut index.tags, kind);
        for _ in 0..nkeys {
            let n = r.u32()? as usize;
            let key =
                std::str::from_utf8(r.take(n)?).map_err(|_| bad("a posting key is not UTF-8"))?;
            let key: Box<str> = Box::from(key);
            let count = r.count(8)?;
            let mut positions: Vec<Position> = Vec::with_capacity(count);
            for _ in 0..count {
                let p = r.u64()?;
                if p >= next_position || positions.last().is_some_and(|&l| l >= p) {
                    return Err(bad("postings are not ascending within the covered log"));
                }
                positions.push(p);
            }
            if map.insert(key, positions).is_some() {
                return Err(bad("a posting key is listed twice"));
            }
        }
    }
    if r.remaining() != 0 {
        return Err(bad("bytes left after the body"));
    }
    if r.crc != le32(&h[40..44]) {
        return Err(bad("body checksum mismatch"));
    }
    Ok(IndexSnapshot {
        index,
        end_offset,
        last_crc,
    })
}

/// A byte slice as a read-only file.
struct SliceFile<'a>(&'a [u8]);

impl StorageFile for SliceFile<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| self.0.get(o..)) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn allocate(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

const READ_CHUNK: usize = 4 << 20;

/// Reads the body sequentially through a buffer, checksumming what it loads.
struct Reader<'a> {
    file: &'a dyn StorageFile,
    /// File offset of the next byte to load.
    next: u64,
    /// Body bytes not loaded yet.
    left: u64,
    buf: Vec<u8>,
    at: usize,
    crc: u32,
}

impl Reader<'_> {
    fn remaining(&self) -> u64 {
        self.left + (self.buf.len() - self.at) as u64
    }

    fn take(&mut self, n: usize) -> Result<&[u8], IndexSnapshotError> {
        if self.buf.len() - self.at < n {
            if n as u64 > self.remaining() {
                return Err(IndexSnapshotError::Bad("a field runs past the body"));
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let want = (n - self.buf.len()).max(READ_CHUNK).min(self.left as usize);
            let have = self.buf.len();
            self.buf.resize(have + want, 0);
            read_exact_at(self.file, &mut self.buf[have..], self.next)?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf[have..]);
            self.next += want as u64;
            self.left -= want as u64;
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, IndexSnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, IndexSnapshotError> {
        Ok(le32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, IndexSnapshotError> {
        Ok(le64(self.take(8)?))
    }
    /// A count of items of at least `min_item` bytes each, bounded by what is left.
    fn count(&mut self, min_item: usize) -> Result<usize, IndexSnapshotError> {
        let n = self.u64()?;
        if n > self.remaining() / min_item as u64 {
            return Err(IndexSnapshotError::Bad("a count exceeds the body"));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexedEvent;
    use uuid::Uuid;

    #[test]
    fn round_trips_and_refuses_damage() {
        let mut ix = MemoryIndex::default();
        ix.segments.push(SegmentEntry {
            first_position: 0,
            data_end: 500,
            path: Default::default(),
            file: None,
        });
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        ix.add_frame(
            &StreamId::new("s").unwrap(),
            0,
            9,
            Loc::new(0, 64),
            &mut ids.iter().map(|&id| IndexedEvent {
                id,
                correlation: Some("c"),
                event_type: "T",
            }),
        );
        let bytes = encode(&ix, 500, 77).unwrap_or_else(|e| panic!("{e}"));
        let back = decode(&bytes).unwrap();
        assert_eq!(back.end_offset, 500);
        assert_eq!(back.index.locs, ix.locs);
        assert_eq!(back.index.stream_version("s"), Some(4));
        assert_eq!(back.index.id_candidate(&ids[3]), Some(3));
        assert_eq!(back.index.correlation_positions("c").unwrap().len(), 5);
        assert_eq!(back.index.tags, ix.tags);
        assert_eq!(back.index.tags.type_positions("T"), &[0, 1, 2, 3, 4]);
        assert_eq!(back.index.tags.category_positions("s"), &[0, 1, 2, 3, 4]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "damage at byte {i} went unnoticed");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_and_mutated_images_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..6,
            ),
        ) {
            let _ = decode(&bytes);
            let mut ix = MemoryIndex::default();
            ix.segments.push(SegmentEntry { first_position: 0, data_end: 64, path: Default::default(), file: None });
            ix.add_frame(
                &StreamId::new("s").unwrap_or_else(|e| panic!("{e}")),
                0,
                0,
                Loc::new(0, 64),
                &mut std::iter::once(IndexedEvent { id: Uuid::nil(), correlation: Some("c"), event_type: "T" }),
            );
            let mut image = encode(&ix, 64, 1).unwrap_or_else(|e| panic!("{e}"));
            for (at, v) in edits {
                let i = at.index(image.len());
                image[i] = v;
            }
            let _ = decode(&image);
        }
    }
}
