//! Derived indexes: where each position lives, each stream's positions, event ids and
//! correlation ids. Everything here can be rebuilt from the segments.
//!
//! The in-memory shapes (persisted by [`crate::index_snapshot`]):
//!
//! ```text
//! locs         Vec<u64>    position -> packed location, [ segment ordinal : 24 | frame offset : 40 ]
//! streams      BTreeMap    stream name -> { positions: Vec<u64> (index = revision), last_written µs }
//! ids          sorted Vec<(fingerprint u64, position u64)> loaded from the snapshot
//!              + HashMap<fingerprint, position> for ids added since
//! correlations Correlations correlation id -> Vec<u64> positions, ascending (ids kept in
//!                          first-appearance order)
//! segments     Vec         ordinal -> { first_position, data_end, open file }
//! ```
//!
//! Event ids are indexed by a 64-bit fingerprint; a hit is only a candidate, confirmed by
//! reading the event (see `LogStore`'s id lookup), so a fingerprint collision can never
//! answer a wrong id. See `docs/decisions/0003-log-index.md` for why this is an in-memory
//! index with a snapshot rather than an embedded key-value store.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use tidings_core::{ListStreams, Position, Revision, StreamId};
use uuid::Uuid;

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

pub(crate) type FpMap = HashMap<u64, Position, BuildHasherDefault<FingerprintHasher>>;

/// The ids covered by the last snapshot: (fingerprint, position) sorted by fingerprint,
/// with a directory of where each bucket of leading fingerprint bits starts.
/// Fingerprints are uniformly spread, so a bucket holds a few entries: a lookup reads
/// one directory slot and one or two cache lines of entries, where a binary search over
/// millions of entries would take twenty cache misses. (Most lookups are of new ids,
/// which are absent, so the whole bucket is read.)
#[derive(Default)]
pub(crate) struct SortedIds {
    entries: Vec<(u64, Position)>,
    /// `dir[k]..dir[k + 1]` are the entries whose fingerprint starts with the bits of `k`.
    dir: Vec<usize>,
    /// How many leading bits pick a bucket.
    bits: u32,
}

impl SortedIds {
    /// Entries sorted by fingerprint (the caller checks the order).
    pub(crate) fn new(entries: Vec<(u64, Position)>) -> Self {
        // About four entries per bucket: two bytes of directory per id.
        let bits = entries.len().max(1).ilog2().saturating_sub(2);
        let mut dir = vec![0usize; (1usize << bits) + 1];
        for &(f, _) in &entries {
            dir[bucket(f, bits) + 1] += 1;
        }
        for k in 1..dir.len() {
            dir[k] += dir[k - 1];
        }
        Self { entries, dir, bits }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, (u64, Position)> {
        self.entries.iter()
    }

    pub(crate) fn find(&self, fp: u64) -> Option<Position> {
        let k = bucket(fp, self.bits);
        let (lo, hi) = (*self.dir.get(k)?, *self.dir.get(k + 1)?);
        self.entries
            .get(lo..hi)?
            .iter()
            .take_while(|&&(f, _)| f <= fp)
            .find(|&&(f, _)| f == fp)
            .map(|&(_, p)| p)
    }
}

/// The bucket of a fingerprint: its leading `bits` bits.
fn bucket(fp: u64, bits: u32) -> usize {
    fp.checked_shr(64 - bits).unwrap_or(0) as usize
}

/// The ids a snapshot records: the base table and the ids recorded since it.
pub(crate) struct IdsToMerge {
    pub base: Arc<SortedIds>,
    pub rest: Arc<FpMap>,
}

impl IdsToMerge {
    /// Every id, sorted by fingerprint.
    pub(crate) fn merge(&self) -> Vec<(u64, Position)> {
        merge_into(
            &self.base,
            self.rest.iter().map(|(&f, &p)| (f, p)).collect(),
        )
    }
}

/// `base` and `rest` (any order) as one table sorted by fingerprint.
fn merge_into(base: &SortedIds, mut rest: Vec<(u64, Position)>) -> Vec<(u64, Position)> {
    rest.sort_unstable();
    let mut out = Vec::with_capacity(base.len() + rest.len());
    let (mut a, mut b) = (base.iter().peekable(), rest.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                if x <= y {
                    out.push(**x);
                    a.next();
                } else {
                    out.push(**y);
                    b.next();
                }
            }
            (Some(x), None) => {
                out.push(**x);
                a.next();
            }
            (None, Some(y)) => {
                out.push(**y);
                b.next();
            }
            (None, None) => break,
        }
    }
    out
}

/// Positions by correlation id, in the order the ids first appeared. The order is
/// stable as the index grows (new ids are only appended), so a snapshot can read the
/// table a chunk of ids at a time (see [`crate::index_snapshot`]).
#[derive(Default)]
pub(crate) struct Correlations {
    slots: HashMap<Box<str>, usize>,
    lists: Vec<(Box<str>, Vec<Position>)>,
}

impl Correlations {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            slots: HashMap::with_capacity(n),
            lists: Vec::with_capacity(n),
        }
    }

    /// A correlation id's positions, ascending.
    pub(crate) fn get(&self, id: &str) -> Option<&[Position]> {
        let &k = self.slots.get(id)?;
        self.lists.get(k).map(|(_, v)| v.as_slice())
    }

    /// How many correlation ids there are.
    pub(crate) fn len(&self) -> usize {
        self.lists.len()
    }

    /// Every id with its positions, in first-appearance order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[Position])> {
        self.lists.iter().map(|(c, v)| (&**c, v.as_slice()))
    }

    /// Ids `from..` (in first-appearance order), at most `n`.
    pub(crate) fn chunk(&self, from: usize, n: usize) -> impl Iterator<Item = (&str, &[Position])> {
        self.lists
            .iter()
            .skip(from)
            .take(n)
            .map(|(c, v)| (&**c, v.as_slice()))
    }

    /// Adds positions (ascending, after the id's earlier ones).
    pub(crate) fn extend(&mut self, id: &str, positions: impl IntoIterator<Item = Position>) {
        match self.slots.get(id) {
            Some(&k) => {
                if let Some((_, v)) = self.lists.get_mut(k) {
                    v.extend(positions);
                }
            }
            None => {
                self.slots.insert(id.into(), self.lists.len());
                self.lists
                    .push((id.into(), positions.into_iter().collect()));
            }
        }
    }
}

fn add_run(map: &mut Correlations, (key, first, n): (&str, Position, u64)) {
    map.extend(key, first..first + n);
}

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

/// What every index implementation offers the store. One implementation today
/// ([`MemoryIndex`]); the trait keeps the store independent of it so an embedded
/// key-value store could replace it (see the decision record).
pub trait EventIndex: Send + Sync {
    /// Records a committed frame of `count` events starting at `first_position`.
    fn add_frame(
        &mut self,
        stream: &StreamId,
        first_position: Position,
        recorded_at: i64,
        loc: Loc,
        events: &mut dyn Iterator<Item = IndexedEvent<'_>>,
    );
    /// The position after the last indexed event.
    fn next_position(&self) -> Position;
    /// Where the frame holding `position` starts.
    fn loc(&self, position: Position) -> Option<Loc>;
    /// A stream's version.
    fn stream_version(&self, stream: &str) -> Option<Revision>;
    /// A stream's positions, indexed by revision.
    fn stream_positions(&self, stream: &str) -> Option<&[Position]>;
    /// The position an id may have been recorded at (a candidate to confirm).
    fn id_candidate(&self, id: &Uuid) -> Option<Position>;
    /// Positions of a correlation id, ascending.
    fn correlation_positions(&self, correlation_id: &str) -> Option<&[Position]>;
    /// Streams in name order: (stream, last revision, last position, last written µs).
    fn list_streams(&self, options: &ListStreams) -> Vec<(StreamId, Revision, Position, i64)>;
}

/// The in-memory index.
#[derive(Default)]
pub struct MemoryIndex {
    /// Segments by ordinal.
    pub segments: Vec<SegmentEntry>,
    pub(crate) locs: Vec<Loc>,
    pub(crate) streams: BTreeMap<StreamId, StreamEntry>,
    /// Ids covered by the last snapshot whose merge was installed. Shared, so a
    /// snapshot can merge it outside the index's lock.
    pub(crate) ids_base: Arc<SortedIds>,
    /// Ids frozen for a snapshot being merged in the background, until its merged
    /// table is installed as the base.
    pub(crate) ids_frozen: Option<Arc<FpMap>>,
    /// Ids recorded since the last freeze.
    pub(crate) ids_recent: FpMap,
    pub(crate) correlations: Correlations,
    /// Positions by event type and stream category.
    pub(crate) tags: crate::tags::Tags,
}

impl MemoryIndex {
    /// Every id, sorted (what a snapshot records).
    pub fn merged_ids(&self) -> Vec<(u64, Position)> {
        let rest = self
            .ids_frozen
            .iter()
            .flat_map(|f| f.iter())
            .chain(self.ids_recent.iter())
            .map(|(&f, &p)| (f, p))
            .collect();
        merge_into(&self.ids_base, rest)
    }

    /// Freezes the ids recorded since the last snapshot, for one to merge outside the
    /// lock: lookups then read the recent table, the frozen one, then the base, until
    /// [`Self::install_ids`]. Constant time (unless an earlier freeze was never
    /// installed, which only a failed snapshot leaves). The recent table starts again
    /// at the old one's capacity.
    pub(crate) fn freeze_ids(&mut self) -> IdsToMerge {
        let capacity = self.ids_recent.capacity();
        let recent = std::mem::replace(
            &mut self.ids_recent,
            FpMap::with_capacity_and_hasher(capacity, Default::default()),
        );
        let frozen = match self.ids_frozen.take() {
            None => recent,
            Some(older) => {
                let mut all = FpMap::clone(&older);
                all.extend(recent);
                all
            }
        };
        let frozen = Arc::new(frozen);
        self.ids_frozen = Some(frozen.clone());
        IdsToMerge {
            base: self.ids_base.clone(),
            rest: frozen,
        }
    }

    /// Makes `merged` (the merge of what [`Self::freeze_ids`] returned) the base table
    /// and drops the frozen one — unless another freeze happened since, which makes
    /// `merged` stale. Returns what was replaced, for the caller to drop after releasing
    /// the lock.
    pub(crate) fn install_ids(
        &mut self,
        merged: Arc<SortedIds>,
        frozen: &Arc<FpMap>,
    ) -> Option<(Arc<SortedIds>, Arc<FpMap>)> {
        if !self
            .ids_frozen
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, frozen))
        {
            return None;
        }
        let old_base = std::mem::replace(&mut self.ids_base, merged);
        self.ids_frozen.take().map(|f| (old_base, f))
    }

    /// Replaces the snapshotted id table (for benchmarks of the sorted lookup).
    #[doc(hidden)]
    pub fn ids_base_for_bench(&mut self, ids: Vec<(u64, Position)>) {
        self.ids_base = Arc::new(SortedIds::new(ids));
        self.ids_frozen = None;
        self.ids_recent.clear();
    }

    /// How many streams are indexed.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

impl EventIndex for MemoryIndex {
    fn add_frame(
        &mut self,
        stream: &StreamId,
        first_position: Position,
        recorded_at: i64,
        loc: Loc,
        events: &mut dyn Iterator<Item = IndexedEvent<'_>>,
    ) {
        debug_assert_eq!(
            first_position,
            self.locs.len() as u64,
            "frames arrive in order"
        );
        let entry = match self.streams.get_mut(stream.as_str()) {
            Some(e) => e,
            None => self.streams.entry(stream.clone()).or_default(),
        };
        entry.last_written = recorded_at;
        // Consecutive events usually share a correlation id: look it up once per run.
        let mut run: Option<(&str, Position, u64)> = None;
        for (position, e) in (first_position..).zip(events) {
            entry.positions.push(position);
            self.locs.push(loc);
            self.ids_recent.insert(fingerprint(&e.id), position);
            self.tags.add(stream.as_str(), e.event_type, position);
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
    }

    fn next_position(&self) -> Position {
        self.locs.len() as u64
    }

    fn loc(&self, position: Position) -> Option<Loc> {
        self.locs.get(usize::try_from(position).ok()?).copied()
    }

    fn stream_version(&self, stream: &str) -> Option<Revision> {
        self.streams
            .get(stream)
            .and_then(|e| e.positions.len().checked_sub(1))
            .map(|r| r as Revision)
    }

    fn stream_positions(&self, stream: &str) -> Option<&[Position]> {
        self.streams.get(stream).map(|e| e.positions.as_slice())
    }

    fn id_candidate(&self, id: &Uuid) -> Option<Position> {
        let fp = fingerprint(id);
        if let Some(&p) = self.ids_recent.get(&fp) {
            return Some(p);
        }
        if let Some(&p) = self.ids_frozen.as_ref().and_then(|f| f.get(&fp)) {
            return Some(p);
        }
        self.ids_base.find(fp)
    }

    fn correlation_positions(&self, correlation_id: &str) -> Option<&[Position]> {
        self.correlations.get(correlation_id)
    }

    fn list_streams(&self, options: &ListStreams) -> Vec<(StreamId, Revision, Position, i64)> {
        let prefix = options.prefix.as_deref().unwrap_or("");
        let lower = match (options.after.as_deref(), prefix) {
            (Some(a), p) if a >= p => Bound::Excluded(a),
            (_, p) => Bound::Included(p),
        };
        self.streams
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(s, _)| s.as_str().starts_with(prefix))
            .filter_map(|(s, e)| {
                let last = *e.positions.last()?;
                Some((
                    s.clone(),
                    e.positions.len() as u64 - 1,
                    last,
                    e.last_written,
                ))
            })
            .take(options.limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ix: &mut MemoryIndex, stream: &str, n: usize, corr: Option<&str>) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let s = StreamId::new(stream).unwrap();
        let first = ix.next_position();
        ix.add_frame(
            &s,
            first,
            1,
            Loc::new(0, 64),
            &mut ids.iter().map(|&id| IndexedEvent {
                id,
                correlation: corr,
                event_type: "T",
            }),
        );
        ids
    }

    #[test]
    fn streams_ids_and_correlations() {
        let mut ix = MemoryIndex::default();
        let a = add(&mut ix, "a-1", 3, Some("c"));
        add(&mut ix, "b-1", 1, None);
        add(&mut ix, "a-2", 2, Some("c"));
        assert_eq!(ix.stream_version("a-1"), Some(2));
        assert_eq!(ix.stream_version("zzz"), None);
        assert_eq!(ix.id_candidate(&a[1]), Some(1));
        assert_eq!(ix.correlation_positions("c"), Some(&[0, 1, 2, 4, 5][..]));
        let base = ix.merged_ids();
        assert!(base.windows(2).all(|w| w[0] <= w[1]));
        ix.ids_base = Arc::new(SortedIds::new(base));
        ix.ids_recent.clear();
        assert_eq!(ix.id_candidate(&a[2]), Some(2));

        let names = |o: ListStreams| -> Vec<String> {
            ix.list_streams(&o)
                .into_iter()
                .map(|t| t.0.to_string())
                .collect()
        };
        let all = ListStreams {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(names(all.clone()), ["a-1", "a-2", "b-1"]);
        let pa = ListStreams {
            prefix: Some("a-".into()),
            after: Some("a-1".into()),
            limit: 10,
        };
        assert_eq!(names(pa), ["a-2"]);
    }

    #[test]
    fn sorted_ids_find_every_entry_and_nothing_else() {
        for n in [0usize, 1, 2, 3, 5, 64, 1000, 4099] {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
            let mut entries: Vec<(u64, Position)> = (0..n as u64)
                .map(|p| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (fingerprint(&Uuid::from_u64_pair(x, p)), p)
                })
                .collect();
            // The extremes of the fingerprint range land in the first and last buckets.
            if n >= 2 {
                entries[0].0 = 0;
                entries[1].0 = u64::MAX;
            }
            entries.sort_unstable();
            let ids = SortedIds::new(entries.clone());
            assert_eq!(ids.len(), n);
            for &(f, p) in &entries {
                assert_eq!(ids.find(f), Some(p), "n={n} fp={f:#x}");
            }
            for probe in [1u64, u64::MAX - 1, 0x8000_0000_0000_0000, x] {
                if entries.iter().all(|&(f, _)| f != probe) {
                    assert_eq!(ids.find(probe), None, "n={n} probe={probe:#x}");
                }
            }
        }
    }

    #[test]
    fn frozen_ids_stay_found_until_their_merge_is_installed() {
        let mut ix = MemoryIndex::default();
        let a = add(&mut ix, "a-1", 3, None);
        let first = ix.freeze_ids();
        let late = add(&mut ix, "c-1", 2, None);
        let all: Vec<Uuid> = a.iter().chain(&late).copied().collect();
        let found = |ix: &MemoryIndex| {
            for (k, id) in all.iter().enumerate() {
                assert_eq!(ix.id_candidate(id), Some(k as Position));
            }
            assert_eq!(ix.merged_ids().len(), 5);
        };
        found(&ix);
        let stale = Arc::new(SortedIds::new(first.merge()));
        // A second freeze before the first merge is installed takes both tables.
        let second = ix.freeze_ids();
        assert_eq!(second.rest.len(), 5);
        assert!(
            ix.install_ids(stale, &first.rest).is_none(),
            "a stale merge"
        );
        found(&ix);
        let merged = Arc::new(SortedIds::new(second.merge()));
        assert!(ix.install_ids(merged, &second.rest).is_some());
        assert!(ix.ids_frozen.is_none());
        assert_eq!((ix.ids_base.len(), ix.ids_recent.len()), (5, 0));
        found(&ix);
    }

    #[test]
    fn loc_packs() {
        let l = Loc::new(3, 123_456_789);
        assert_eq!((l.segment(), l.offset()), (3, 123_456_789));
    }
}
