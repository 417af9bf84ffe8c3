//! Derived indexes: where each position lives, each stream's positions, event ids,
//! correlation ids, and positions by event type and category. Everything here can be
//! rebuilt from the segments.
//!
//! Two layers (see `docs/decisions/0021-on-disk-index.md`):
//!
//! ```text
//! base     the index file (crate::index_snapshot): positions [0, cut), on disk, read
//!          in place; memory holds only its directory and filters
//! frozen   a Delta being merged with the base into the next index file (or none)
//! recent   a Delta: what was published since
//!
//! Delta    locs         Vec<u64>  position -> packed location [ segment : 24 | offset : 40 ]
//!          streams      BTreeMap  stream -> { positions in this layer, last_written µs }
//!          ids          HashMap   fingerprint -> position
//!          correlations HashMap   correlation id -> positions in this layer
//!          tags         HashMaps  event type / category -> positions in this layer
//! segments Vec                    ordinal -> { first_position, data_end, open file }
//! ```
//!
//! A key's positions are the file's list followed by each layer's ([`Layered`]). The
//! in-memory layers are bounded: the writer asks for a new index file once the recent
//! layer reaches its size (see `writer::maybe_snapshot_index`).
//!
//! Event ids are indexed by a 64-bit fingerprint; a hit is only a candidate, confirmed by
//! reading the event (see `LogStore`'s id lookup), so a fingerprint collision can never
//! answer a wrong id.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use tidings_core::{ListStreams, Position, Revision, StreamId};
use uuid::Uuid;

use crate::index_snapshot::{IndexFile, Record, Table};
use crate::storage::StorageFile;

/// A frame's location: segment ordinal and byte offset, packed in 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc(pub u64);

const OFFSET_BITS: u32 = 40;

impl Loc {
    /// The frame at `offset` of segment number `segment`.
    pub fn new(segment: usize, offset: u64) -> Self {
        debug_assert!(offset < 1 << OFFSET_BITS && segment < 1 << 24);
        Self(((segment as u64) << OFFSET_BITS) | offset)
    }

    /// The segment's ordinal.
    pub fn segment(self) -> usize {
        (self.0 >> OFFSET_BITS) as usize
    }

    /// The byte offset in the segment.
    pub fn offset(self) -> u64 {
        self.0 & ((1 << OFFSET_BITS) - 1)
    }
}

/// The 64-bit fingerprint under which an event id is indexed.
pub fn fingerprint(id: &Uuid) -> u64 {
    let (hi, lo) = id.as_u64_pair();
    let mut z = hi ^ lo.rotate_left(29);
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// Fingerprints are already mixed: hash them as they are.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Positions by fingerprint.
pub type FpMap = HashMap<u64, Position, BuildHasherDefault<FingerprintHasher>>;

/// A stream's entry.
#[derive(Debug, Clone, Default)]
pub struct StreamEntry {
    /// Position of each revision.
    pub positions: Vec<Position>,
    /// When its last event was recorded (µs).
    pub last_written: i64,
}

/// A segment as the index knows it.
#[derive(Clone)]
pub struct SegmentEntry {
    /// Its first position.
    pub first_position: Position,
    /// Where its data ends (committed data, or the footer once sealed).
    pub data_end: u64,
    /// Its path (for error messages).
    pub path: PathBuf,
    /// The open file, for reads.
    pub file: Option<Arc<dyn StorageFile>>,
}

/// One event of a frame being indexed.
#[derive(Debug, Clone, Copy)]
pub struct IndexedEvent<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its correlation id.
    pub correlation: Option<&'a str>,
    /// Its type (for the postings of [`crate::tags`]).
    pub event_type: &'a str,
}

/// The in-memory layer: what was indexed since the index file's cut, positions
/// `[first, first + locs.len())`. Each stream, correlation and tag holds only its
/// positions in this range.
#[derive(Default)]
pub struct Delta {
    /// The first position it covers.
    pub first: Position,
    /// Location of each position from `first`.
    pub locs: Vec<Loc>,
    /// Streams with events in this range.
    pub streams: BTreeMap<StreamId, StreamEntry>,
    /// Ids by fingerprint.
    pub ids: FpMap,
    /// Positions by correlation id.
    pub correlations: crate::tags::KeyMap,
    /// Positions by event type and stream category.
    pub tags: crate::tags::Tags,
}

impl Delta {
    /// An empty layer starting at `first`.
    pub fn new(first: Position) -> Self {
        Self {
            first,
            ..Self::default()
        }
    }

    /// The position after its last.
    pub fn next(&self) -> Position {
        self.first + self.locs.len() as u64
    }

    /// How many events it holds.
    pub fn len(&self) -> u64 {
        self.locs.len() as u64
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    fn loc(&self, position: Position) -> Option<Loc> {
        let i = usize::try_from(position.checked_sub(self.first)?).ok()?;
        self.locs.get(i).copied()
    }

    fn stream(&self, stream: &str) -> &[Position] {
        self.streams
            .get(stream)
            .map_or(&[][..], |e| e.positions.as_slice())
    }

    /// Appends `later` (which starts where this one ends).
    fn extend(&mut self, later: &Delta) {
        self.locs.extend_from_slice(&later.locs);
        for (s, e) in &later.streams {
            let mine = self.streams.entry(s.clone()).or_default();
            mine.positions.extend_from_slice(&e.positions);
            mine.last_written = e.last_written;
        }
        self.ids.extend(later.ids.iter().map(|(&f, &p)| (f, p)));
        for (c, ps) in &later.correlations {
            self.correlations
                .entry(c.clone())
                .or_default()
                .extend_from_slice(ps);
        }
        self.tags.extend(&later.tags);
    }

    /// Records a frame (see [`LogIndex::add_frame`]).
    fn add_frame(
        &mut self,
        stream: &StreamId,
        first_position: Position,
        recorded_at: i64,
        loc: Loc,
        events: &mut dyn Iterator<Item = IndexedEvent<'_>>,
    ) {
        debug_assert_eq!(first_position, self.next(), "frames arrive in order");
        let entry = match self.streams.get_mut(stream.as_str()) {
            Some(e) => e,
            None => self.streams.entry(stream.clone()).or_default(),
        };
        entry.last_written = recorded_at;
        let expected = events.size_hint().0;
        entry.positions.reserve(expected);
        self.locs.reserve(expected);
        // The ids go into their map after the loop, in a loop of their own: each insert
        // into a large map is a cache miss, and with nothing else between them the
        // processor overlaps them.
        let mut ids = Vec::with_capacity(expected);
        // Consecutive events usually share a correlation id and a type: look each up
        // once per run.
        let mut run: Option<(&str, Position, u64)> = None;
        let mut types: Option<(&str, Position, u64)> = None;
        let mut n = 0u64;
        for (position, e) in (first_position..).zip(events) {
            n += 1;
            entry.positions.push(position);
            self.locs.push(loc);
            ids.push((fingerprint(&e.id), position));
            match &mut types {
                Some((t, _, k)) if *t == e.event_type => *k += 1,
                _ => {
                    if let Some((t, f, k)) = types.take() {
                        self.tags.add_type_run(t, f, k);
                    }
                    types = Some((e.event_type, position, 1));
                }
            }
            match (e.correlation, &mut run) {
                (Some(c), Some((k, _, n))) if *k == c => *n += 1,
                (Some(c), _) => {
                    if let Some(r) = run.take() {
                        add_run(&mut self.correlations, r);
                    }
                    run = Some((c, position, 1));
                }
                (None, _) => {
                    if let Some(r) = run.take() {
                        add_run(&mut self.correlations, r);
                    }
                }
            }
        }
        if let Some(r) = run {
            add_run(&mut self.correlations, r);
        }
        self.ids.extend(ids);
        if let Some((t, f, k)) = types {
            self.tags.add_type_run(t, f, k);
        }
        self.tags
            .add_frame_category(stream.as_str(), first_position, n);
    }
}

fn add_run(map: &mut crate::tags::KeyMap, (key, first, n): (&str, Position, u64)) {
    crate::tags::push_run(map, key, first, n);
}

/// The index: the index file (positions below its cut), the layer frozen for the next
/// file while it is written, and the recent layer. Each layer covers the positions
/// after the one before it.
#[derive(Default)]
pub struct LogIndex {
    /// Segments by ordinal.
    pub segments: Vec<SegmentEntry>,
    pub(crate) base: Option<Arc<IndexFile>>,
    pub(crate) frozen: Option<Arc<Delta>>,
    pub(crate) recent: Delta,
}

/// A key's positions across the layers, ascending: the file's part, then the
/// in-memory parts.
pub struct Layered<'a> {
    disk: Option<(&'a IndexFile, Table, Record)>,
    mem: Vec<&'a [Position]>,
}

impl Layered<'_> {
    fn disk_len(&self) -> u64 {
        self.disk.as_ref().map_or(0, |(_, _, r)| r.count)
    }

    /// How many positions.
    pub fn len(&self) -> u64 {
        self.disk_len() + self.mem.iter().map(|m| m.len() as u64).sum::<u64>()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last position.
    pub fn last(&self) -> Option<Position> {
        self.mem
            .iter()
            .rev()
            .find_map(|m| m.last().copied())
            .or_else(|| self.disk.as_ref().map(|(_, _, r)| r.last))
    }

    /// Positions `[from, from + n)` (by index), clamped to what there is.
    pub fn range(&self, from: u64, n: u64) -> std::io::Result<Vec<Position>> {
        let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
        let mut at = from;
        let mut left = n;
        let dl = self.disk_len();
        if let Some((f, t, r)) = &self.disk
            && at < dl
        {
            let part = f.list(*t, r, at, left)?;
            left -= part.len() as u64;
            at += part.len() as u64;
            out.extend(part);
        }
        let mut start = dl;
        for m in &self.mem {
            let len = m.len() as u64;
            if left > 0 && at < start + len {
                let i = (at - start) as usize;
                let take = (left as usize).min(m.len() - i);
                out.extend_from_slice(&m[i..i + take]);
                left -= take as u64;
                at += take as u64;
            }
            start += len;
        }
        Ok(out)
    }

    /// The index of the first position at or after `position`.
    pub fn lower_bound(&self, position: Position) -> std::io::Result<u64> {
        let dl = self.disk_len();
        if let Some((f, t, r)) = &self.disk
            && r.last >= position
        {
            return f.lower_bound(*t, r, position);
        }
        let mut start = dl;
        for m in &self.mem {
            if m.last().is_some_and(|&l| l >= position) {
                return Ok(start + m.partition_point(|&p| p < position) as u64);
            }
            start += m.len() as u64;
        }
        Ok(start)
    }
}

/// Iterates a [`Layered`] list; an I/O error ends it and is kept in `error`.
struct Cursor<'a> {
    list: Layered<'a>,
    at: u64,
    buf: std::vec::IntoIter<Position>,
    error: Option<std::io::Error>,
}

impl Iterator for Cursor<'_> {
    type Item = Position;
    fn next(&mut self) -> Option<Position> {
        if let Some(p) = self.buf.next() {
            return Some(p);
        }
        if self.error.is_some() {
            return None;
        }
        match self.list.range(self.at, 512) {
            Ok(v) => {
                self.at += v.len() as u64;
                self.buf = v.into_iter();
                self.buf.next()
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl LogIndex {
    /// An index whose positions below `base`'s cut are in `base`.
    pub fn with_base(base: Arc<IndexFile>) -> Self {
        let next = base.next_position();
        Self {
            segments: Vec::new(),
            base: Some(base),
            frozen: None,
            recent: Delta::new(next),
        }
    }

    /// Moves everything into an index file in `dir` (for benchmarks of the lookups).
    #[doc(hidden)]
    pub fn into_file_for_bench(mut self, dir: &std::path::Path) -> std::io::Result<Self> {
        let frozen = self.freeze();
        let cut = crate::index_snapshot::Cut {
            covered: frozen.next(),
            end_offset: 64,
            last_crc: 0,
            segments: vec![(0, 64)],
        };
        let file = crate::index_snapshot::write(
            &crate::storage::OsStorage,
            dir,
            cut,
            self.base.as_deref(),
            &frozen,
        )?;
        self.install(Arc::new(file), &frozen);
        Ok(self)
    }

    /// The index file, if there is one.
    pub fn base(&self) -> Option<&Arc<IndexFile>> {
        self.base.as_ref()
    }

    /// The in-memory layers, oldest first.
    fn layers(&self) -> impl Iterator<Item = &Delta> {
        self.frozen.as_deref().into_iter().chain(Some(&self.recent))
    }

    /// Events held in memory (not yet in the index file).
    pub fn in_memory(&self) -> u64 {
        self.layers().map(Delta::len).sum()
    }

    /// Records a committed frame of events starting at `first_position`.
    pub fn add_frame(
        &mut self,
        stream: &StreamId,
        first_position: Position,
        recorded_at: i64,
        loc: Loc,
        events: &mut dyn Iterator<Item = IndexedEvent<'_>>,
    ) {
        self.recent
            .add_frame(stream, first_position, recorded_at, loc, events);
    }

    /// The position after the last indexed event.
    pub fn next_position(&self) -> Position {
        self.recent.next()
    }

    /// Where the frame holding `position` starts.
    pub fn loc(&self, position: Position) -> std::io::Result<Option<Loc>> {
        if let Some(l) = self.layers().find_map(|d| d.loc(position)) {
            return Ok(Some(l));
        }
        match &self.base {
            Some(b) => b.loc(position),
            None => Ok(None),
        }
    }

    fn layered<'a>(
        &'a self,
        table: Table,
        key: &str,
        mem: impl Fn(&'a Delta) -> Option<&'a [Position]>,
    ) -> std::io::Result<Layered<'a>> {
        let disk = match &self.base {
            Some(b) => b.find(table, key)?.map(|r| (&**b, table, r)),
            None => None,
        };
        Ok(Layered {
            disk,
            mem: self.layers().filter_map(mem).collect(),
        })
    }

    /// A stream's positions, by revision.
    pub fn stream_positions(&self, stream: &str) -> std::io::Result<Layered<'_>> {
        self.layered(Table::Streams, stream, |d| Some(d.stream(stream)))
    }

    /// A stream's version.
    pub fn stream_version(&self, stream: &str) -> std::io::Result<Option<Revision>> {
        Ok(self.stream_positions(stream)?.len().checked_sub(1))
    }

    /// A correlation id's positions, ascending.
    pub fn correlation_positions(&self, correlation_id: &str) -> std::io::Result<Layered<'_>> {
        self.layered(Table::Correlations, correlation_id, |d| {
            d.correlations.get(correlation_id).map(Vec::as_slice)
        })
    }

    /// The position an id may have been recorded at (a candidate to confirm).
    pub fn id_candidate(&self, id: &Uuid) -> std::io::Result<Option<Position>> {
        let fp = fingerprint(id);
        for d in [Some(&self.recent), self.frozen.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(&p) = d.ids.get(&fp) {
                return Ok(Some(p));
            }
        }
        match &self.base {
            Some(b) => b.id(fp),
            None => Ok(None),
        }
    }

    /// The candidates for many fingerprints at once: `out[i]` is what
    /// [`Self::id_candidate`] answers for the id whose fingerprint is `fps[i]`.
    ///
    /// Each layer, and then the file's filter, is probed for every fingerprint in a loop
    /// of its own, where no probe waits for another: the processor overlaps their cache
    /// misses (a probe of a large layer or filter is one miss) instead of taking them
    /// one after another. The writer checks every append's ids this way.
    pub fn id_candidates(&self, fps: &[u64]) -> std::io::Result<Vec<Option<Position>>> {
        let mut out: Vec<Option<Position>> = fps
            .iter()
            .map(|fp| self.recent.ids.get(fp).copied())
            .collect();
        if let Some(frozen) = &self.frozen {
            for (o, fp) in out.iter_mut().zip(fps) {
                if o.is_none() {
                    *o = frozen.ids.get(fp).copied();
                }
            }
        }
        let Some(base) = &self.base else {
            return Ok(out);
        };
        let passes: Vec<bool> = fps.iter().map(|&fp| base.id_filter_passes(fp)).collect();
        for ((o, &fp), pass) in out.iter_mut().zip(fps).zip(passes) {
            if o.is_none() && pass {
                *o = base.id(fp)?;
            }
        }
        Ok(out)
    }

    /// How many streams there are.
    pub fn stream_count(&self) -> std::io::Result<u64> {
        let mut n = self.base.as_ref().map_or(0, |b| b.keys(Table::Streams));
        for s in self.recent.streams.keys() {
            let earlier = self
                .frozen
                .as_ref()
                .is_some_and(|f| f.streams.contains_key(s.as_str()));
            if !earlier && !self.in_base(s.as_str())? {
                n += 1;
            }
        }
        if let Some(f) = &self.frozen {
            for s in f.streams.keys() {
                if !self.in_base(s.as_str())? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn in_base(&self, stream: &str) -> std::io::Result<bool> {
        match &self.base {
            Some(b) => Ok(b.find(Table::Streams, stream)?.is_some()),
            None => Ok(false),
        }
    }

    /// Streams in name order: (stream, last revision, last position, last written µs).
    pub fn list_streams(
        &self,
        options: &ListStreams,
    ) -> std::io::Result<Vec<(StreamId, Revision, Position, i64)>> {
        let prefix = options.prefix.as_deref().unwrap_or("");
        let lower = match (options.after.as_deref(), prefix) {
            (Some(a), p) if a >= p => Bound::Excluded(a),
            (_, p) => Bound::Included(p),
        };
        let mut names: std::collections::BTreeSet<Box<str>> = Default::default();
        if let Some(b) = &self.base {
            let mut it = b.records(Table::Streams, lower);
            while names.len() < options.limit {
                match it.next_record()? {
                    Some(r) if r.key.starts_with(prefix) => {
                        names.insert(r.key);
                    }
                    _ => break,
                }
            }
        }
        for d in self.layers() {
            names.extend(
                d.streams
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take_while(|(s, _)| s.as_str().starts_with(prefix))
                    .take(options.limit)
                    .map(|(s, _)| Box::<str>::from(s.as_str())),
            );
        }
        let mut out = Vec::new();
        for name in names.into_iter().take(options.limit) {
            let list = self.stream_positions(&name)?;
            let (Some(last), Ok(id)) = (list.last(), StreamId::new(&name)) else {
                continue;
            };
            let written = self
                .layers()
                .filter_map(|d| d.streams.get(&*name))
                .last()
                .map(|e| e.last_written)
                .or_else(|| list.disk.as_ref().map(|(_, _, r)| r.meta))
                .unwrap_or(0);
            out.push((id, list.len() - 1, last, written));
        }
        Ok(out)
    }

    /// Up to `n` candidate positions at or after `from` for `filter`, ascending: those of
    /// its types (any) that are also of its categories (any). The stream prefix is not
    /// checked here. Call only for a filter that names types or categories.
    pub fn tag_candidates(
        &self,
        filter: &tidings_core::Filter,
        from: Position,
        n: usize,
    ) -> std::io::Result<Vec<Position>> {
        let cursors = |keys: &[String], table: Table| -> std::io::Result<Vec<Cursor<'_>>> {
            keys.iter()
                .map(|k| {
                    let l = self.layered(table, k, |d| {
                        let m = match table {
                            Table::Types => &d.tags.types,
                            _ => &d.tags.categories,
                        };
                        m.get(k.as_str()).map(Vec::as_slice)
                    })?;
                    let at = l.lower_bound(from)?;
                    Ok(Cursor {
                        list: l,
                        at,
                        buf: Vec::new().into_iter(),
                        error: None,
                    })
                })
                .collect()
        };
        let mut by_type = if filter.event_types.is_empty() {
            None
        } else {
            Some(cursors(&filter.event_types, Table::Types)?)
        };
        let mut by_category = if filter.categories.is_empty() {
            None
        } else {
            Some(cursors(&filter.categories, Table::Categories)?)
        };
        let out: Vec<Position> = match (&mut by_type, &mut by_category) {
            (Some(t), None) => crate::tags::Union::new(t.iter_mut()).take(n).collect(),
            (None, Some(c)) => crate::tags::Union::new(c.iter_mut()).take(n).collect(),
            (Some(t), Some(c)) => crate::tags::Intersection {
                a: crate::tags::Union::new(t.iter_mut()).peekable(),
                b: crate::tags::Union::new(c.iter_mut()).peekable(),
            }
            .take(n)
            .collect(),
            (None, None) => Vec::new(),
        };
        for c in by_type.iter_mut().chain(by_category.iter_mut()).flatten() {
            if let Some(e) = c.error.take() {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Freezes the recent layer for an index file to be written from it (and the file
    /// it extends); lookups read it until [`Self::install`]. Constant time — unless an
    /// earlier frozen layer was never installed (its file failed), which is taken along.
    pub(crate) fn freeze(&mut self) -> Arc<Delta> {
        let next = self.next_position();
        // The next layer starts at this one's capacity: it grows to about the same size,
        // without rehashing its way there on the write path.
        let mut fresh = Delta::new(next);
        fresh.ids = FpMap::with_capacity_and_hasher(self.recent.ids.capacity(), Default::default());
        fresh.locs = Vec::with_capacity(self.recent.locs.capacity());
        let recent = std::mem::replace(&mut self.recent, fresh);
        let frozen = match self.frozen.take() {
            None => recent,
            Some(older) => {
                let mut all = Delta::new(older.first);
                all.extend(&older);
                all.extend(&recent);
                all
            }
        };
        let frozen = Arc::new(frozen);
        self.frozen = Some(frozen.clone());
        frozen
    }

    /// Makes `file` (written from `frozen` and the current file) the index file and
    /// drops the frozen layer — unless another freeze happened since, which makes `file`
    /// stale. Returns what was replaced, for the caller to drop after releasing the lock.
    pub(crate) fn install(
        &mut self,
        file: Arc<IndexFile>,
        frozen: &Arc<Delta>,
    ) -> Option<(Option<Arc<IndexFile>>, Arc<Delta>)> {
        if !self.frozen.as_ref().is_some_and(|f| Arc::ptr_eq(f, frozen)) {
            return None;
        }
        let old = self.base.replace(file);
        self.frozen.take().map(|f| (old, f))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::index_snapshot::{self, Cut};
    use crate::storage::OsStorage;
    use tidings_core::Filter;

    /// A small deterministic generator (xorshift), seeded from `TIDINGS_TEST_SEED`.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn add(ix: &mut LogIndex, stream: &str, ids: &[Uuid], corr: Option<&str>, ty: &str) {
        let s = StreamId::new(stream).unwrap();
        let first = ix.next_position();
        ix.add_frame(
            &s,
            first,
            first as i64 * 10,
            Loc::new(0, 64 + first),
            &mut ids.iter().map(|&id| IndexedEvent {
                id,
                correlation: corr,
                event_type: ty,
            }),
        );
    }

    /// Writes an index file from the frozen recent layer and installs it.
    fn roll(ix: &mut LogIndex, dir: &std::path::Path) {
        let frozen = ix.freeze();
        let cut = Cut {
            covered: frozen.next(),
            end_offset: 64,
            last_crc: 7,
            segments: vec![(0, 64)],
        };
        let file = index_snapshot::write(&OsStorage, dir, cut, ix.base.as_deref(), &frozen)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(file.damaged_section().unwrap().is_none());
        let reopened = index_snapshot::load(&OsStorage, dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reopened.next_position(), frozen.next());
        assert!(ix.install(Arc::new(reopened), &frozen).is_some());
    }

    fn all(l: &Layered<'_>) -> Vec<Position> {
        l.range(0, u64::MAX).unwrap()
    }

    fn same(model: &LogIndex, ix: &LogIndex, ids: &[Uuid], seed: u64) {
        let n = model.next_position();
        assert_eq!(ix.next_position(), n, "seed {seed}");
        for p in 0..n {
            assert_eq!(
                ix.loc(p).unwrap(),
                model.loc(p).unwrap(),
                "seed {seed} loc {p}"
            );
        }
        assert_eq!(ix.loc(n).unwrap(), None);
        for id in ids {
            assert_eq!(
                ix.id_candidate(id).unwrap(),
                model.id_candidate(id).unwrap(),
                "seed {seed}"
            );
        }
        assert_eq!(ix.id_candidate(&Uuid::from_u64_pair(1, 2)).unwrap(), None);
        // In bulk, with an unknown id among them: the same answers, in order.
        let mut asked: Vec<Uuid> = ids.to_vec();
        asked.insert(asked.len() / 2, Uuid::from_u64_pair(1, 2));
        let fps: Vec<u64> = asked.iter().map(fingerprint).collect();
        let bulk = ix.id_candidates(&fps).unwrap();
        let one_by_one: Vec<_> = asked
            .iter()
            .map(|id| model.id_candidate(id).unwrap())
            .collect();
        assert_eq!(bulk, one_by_one, "seed {seed}");
        assert_eq!(
            ix.stream_count().unwrap(),
            model.stream_count().unwrap(),
            "seed {seed}"
        );
        let list = |o: ListStreams| {
            (
                model.list_streams(&o).unwrap(),
                ix.list_streams(&o).unwrap(),
            )
        };
        for o in [
            ListStreams {
                limit: 1000,
                ..Default::default()
            },
            ListStreams {
                limit: 3,
                ..Default::default()
            },
            ListStreams {
                prefix: Some("b-".into()),
                limit: 1000,
                after: None,
            },
            ListStreams {
                prefix: Some("a".into()),
                after: Some("a-3".into()),
                limit: 4,
            },
        ] {
            let (m, i) = list(o);
            assert_eq!(i, m, "seed {seed}");
        }
        for name in model.recent.streams.keys() {
            let (m, i) = (
                model.stream_positions(name.as_str()).unwrap(),
                ix.stream_positions(name.as_str()).unwrap(),
            );
            assert_eq!(all(&i), all(&m), "seed {seed} stream {name}");
            assert_eq!(i.range(1, 2).unwrap(), m.range(1, 2).unwrap());
            assert_eq!(
                ix.stream_version(name.as_str()).unwrap(),
                model.stream_version(name.as_str()).unwrap()
            );
        }
        assert_eq!(ix.stream_version("zzz").unwrap(), None);
        for c in ["c1", "c2", "none"] {
            let (m, i) = (
                model.correlation_positions(c).unwrap(),
                ix.correlation_positions(c).unwrap(),
            );
            assert_eq!(all(&i), all(&m), "seed {seed} correlation {c}");
            for from in [0, n / 2, n] {
                assert_eq!(i.lower_bound(from).unwrap(), m.lower_bound(from).unwrap());
            }
        }
        let filters = [
            Filter::all().event_type("A"),
            Filter::all().event_type("A").event_type("C"),
            Filter::all().category("b").event_type("B"),
            Filter::all().category("a").category("b"),
            Filter::all().event_type("Z"),
        ];
        for f in &filters {
            for from in [0, 1, n / 3, n] {
                for k in [1, 5, 10_000] {
                    assert_eq!(
                        ix.tag_candidates(f, from, k).unwrap(),
                        model.tag_candidates(f, from, k).unwrap(),
                        "seed {seed} filter {f:?} from {from} n {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_file_and_the_layers_answer_like_memory_alone() {
        let seed = std::env::var("TIDINGS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Uuid::now_v7().as_u64_pair().1 | 1);
        eprintln!("index layers: seed {seed} (replay with TIDINGS_TEST_SEED={seed})");
        let mut rng = Rng(seed);
        for round in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let mut model = LogIndex::default();
            let mut ix = LogIndex::default();
            let mut ids = Vec::new();
            for _ in 0..(20 + rng.below(200)) {
                let stream = format!(
                    "{}-{}",
                    ["a", "b", "c"][rng.below(3) as usize],
                    rng.below(12)
                );
                let n = 1 + rng.below(4) as usize;
                let new: Vec<Uuid> = (0..n)
                    .map(|_| Uuid::from_u64_pair(rng.next(), rng.next()))
                    .collect();
                let corr = [None, Some("c1"), Some("c2")][rng.below(3) as usize];
                let ty = ["A", "B", "C"][rng.below(3) as usize];
                add(&mut model, &stream, &new, corr, ty);
                add(&mut ix, &stream, &new, corr, ty);
                ids.extend(new);
                match rng.below(12) {
                    0 => roll(&mut ix, dir.path()),
                    1 if ix.frozen.is_none() => {
                        ix.freeze();
                    }
                    _ => {}
                }
            }
            same(&model, &ix, &ids, seed ^ round);
            roll(&mut ix, dir.path());
            same(&model, &ix, &ids, seed ^ round);
        }
    }

    #[test]
    fn a_stale_install_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = LogIndex::default();
        add(&mut ix, "a-1", &[Uuid::now_v7()], None, "T");
        let first = ix.freeze();
        add(&mut ix, "a-1", &[Uuid::now_v7()], None, "T");
        let second = ix.freeze();
        assert_eq!(second.len(), 2, "a second freeze takes the first along");
        let cut = Cut {
            covered: 1,
            end_offset: 64,
            last_crc: 0,
            segments: vec![(0, 64)],
        };
        let file = index_snapshot::write(&OsStorage, dir.path(), cut, None, &first).unwrap();
        assert!(ix.install(Arc::new(file), &first).is_none());
        assert_eq!(ix.stream_version("a-1").unwrap(), Some(1));
    }

    #[test]
    fn loc_packs() {
        let l = Loc::new(3, 123_456_789);
        assert_eq!((l.segment(), l.offset()), (3, 123_456_789));
    }
}
