//! The index file: the derived indexes of a prefix of the log, on disk, read in place.
//!
//! The index lives in two layers (see [`crate::index`] and
//! `docs/decisions/0021-on-disk-index.md`): this immutable file, `index.ckpt`, covering
//! positions `[0, next_position)`, and small in-memory tables for what was appended
//! since. Lookups read the file where they need it (through the operating system's page
//! cache), so the process keeps only the file's directory and the id filter in memory,
//! not the index. A snapshot writes a new file that merges the old one with the
//! in-memory tables, sequentially, then renames it over the old one.
//!
//! It is written to `index.ckpt.tmp`, fsynced, renamed over `index.ckpt`, and the
//! directory fsynced. It only ever describes frames that are already durable, so it stays
//! a valid prefix of the log however the log grows afterwards. Little-endian:
//!
//! ```text
//! header, 64 bytes
//! 0   8  magic "TDLOGIX3"
//! 8   4  format version (3)
//! 12  4  checksum field of the last covered frame (ties the file to this log)
//! 16  8  next_position: events [0, next_position) are indexed
//! 24  8  end offset: where the covered data ends in the last segment listed
//! 32  8  directory offset
//! 40  8  directory length
//! 48  4  CRC-32C of the directory
//! 52  8  reserved
//! 60  4  CRC-32C of header bytes [0, 60)
//! locations     next_position × u64 packed location (position -> segment : offset)
//! lists         per table, every key's positions, ascending, key after key (u64 each)
//! ids           (u64 fingerprint, u64 position) sorted by fingerprint
//! id filter     a blocked Bloom filter of the fingerprints, 64-byte blocks
//! records       per table, key order, packed in blocks of about 4 KiB:
//!               u32 key length, key, i64 meta, u64 count, u64 list start, u64 last
//! stream filter a blocked Bloom filter of the stream names ([`key_fingerprint`])
//! directory     segments (first position, data end); the sections' offsets, lengths
//!               and CRC-32Cs; per table its key count, list start, and per block its
//!               offset, length and first key; the first fingerprint of every 256 ids
//! ```
//!
//! The four keyed tables are streams (meta: when its last event was recorded, µs),
//! correlation ids, event types and stream categories. Opening reads the header, the
//! directory and the two filters, checking their checksums; the other sections'
//! checksums are checked by [`crate::verify`], which reads the whole file. The filters
//! keep the common lookups of an append in memory: a new event id, and a new stream
//! (`NoStream`, or any first append to a stream), are answered without reading a block
//! of the file, which after a restart would be a read from the disk per append. A file
//! of an earlier format (the first kept everything in memory; the second had no stream
//! filter) is refused as stale, so the first open after the upgrade rebuilds the indexes
//! from the log once.
//!
//! A file whose checksums fail, or that does not match the segments found on disk, is
//! stale: recovery ignores it and rebuilds the indexes from the log.

use std::borrow::Cow;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use tidings_core::Position;

use crate::index::{Delta, Loc};
use crate::storage::{AlignedBuf, DIRECT_ALIGN, OpenMode, Storage, StorageFile, read_exact_at};

/// The index file's name (unchanged since the first format, for existing stores).
pub const FILE_NAME: &str = "index.ckpt";
const TMP_NAME: &str = "index.ckpt.tmp";
const MAGIC: &[u8; 8] = b"TDLOGIX3";
const VERSION: u32 = 3;
const HEADER_LEN: u64 = 64;
/// The size records are packed to (a block holds one larger record alone).
const BLOCK: usize = 4096;
/// Ids per directory entry: 4 KiB of ids.
const ID_BLOCK: u64 = 256;
/// The filters' size (ids, stream names): about 0.02% false positives. An append of a
/// batch checks every id: at 10 bits per id (about 1%), most batches of 100 hit a false
/// positive and so read a block of ids, from the disk when it is not cached.
const FILTER_BITS_PER_ID: u64 = 20;
const FILTER_PROBES: u32 = 12;
/// How much a merge copies per read.
const COPY_ENTRIES: u64 = 1 << 16;
/// Bytes of a record besides its key.
const RECORD_FIXED: usize = 4 + 8 + 8 + 8 + 8;

/// Which keyed table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Stream name -> positions by revision; meta is when its last event was recorded.
    Streams = 0,
    /// Correlation id -> positions.
    Correlations = 1,
    /// Event type -> positions.
    Types = 2,
    /// Stream category -> positions.
    Categories = 3,
}

/// Every table, in file order.
pub const TABLES: [Table; 4] = [
    Table::Streams,
    Table::Correlations,
    Table::Types,
    Table::Categories,
];

impl Table {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Table::Streams => "streams",
            Table::Correlations => "correlations",
            Table::Types => "event types",
            Table::Categories => "categories",
        }
    }
}

/// A key's entry in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Box<str>,
    /// Streams: when the last event was recorded (µs); 0 elsewhere.
    pub meta: i64,
    /// How many positions.
    pub count: u64,
    /// Where its positions start in the table's lists (in entries).
    pub list: u64,
    /// Its last position.
    pub last: Position,
}

impl Record {
    fn encoded_len(&self) -> usize {
        RECORD_FIXED + self.key.len()
    }
}

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexSnapshotError {
    /// No index file.
    #[error("no index file")]
    Missing,
    /// Reading failed.
    #[error("reading the index file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is damaged or of another format.
    #[error("the index file is unusable: {0}")]
    Bad(&'static str),
}

fn bad(what: &'static str) -> IndexSnapshotError {
    IndexSnapshotError::Bad(what)
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

#[derive(Debug, Clone)]
struct BlockRef {
    at: u64,
    len: u32,
    first: Box<str>,
}

#[derive(Debug, Clone, Default)]
struct TableDir {
    keys: u64,
    /// Byte offset of the table's lists.
    lists_at: u64,
    /// How many list entries.
    entries: u64,
    blocks: Vec<BlockRef>,
}

/// A checksummed section.
#[derive(Debug, Clone)]
struct Section {
    name: &'static str,
    at: u64,
    len: u64,
    crc: u32,
}

const SECTION_NAMES: [&str; 9] = [
    "locations",
    "lists",
    "ids",
    "id filter",
    "stream records",
    "correlation records",
    "event type records",
    "category records",
    "stream filter",
];

/// What a file covers: the log up to a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Events `[0, covered)` are indexed.
    pub covered: Position,
    /// Where the covered data ends in the last segment.
    pub end_offset: u64,
    /// The checksum field of the last covered frame.
    pub last_crc: u32,
    /// Each segment's first position and data end.
    pub segments: Vec<(Position, u64)>,
}

/// An open index file.
pub struct IndexFile {
    file: Arc<dyn StorageFile>,
    cut: Cut,
    tables: [TableDir; 4],
    ids_at: u64,
    ids_count: u64,
    /// The first fingerprint of every [`ID_BLOCK`] ids.
    id_dir: Vec<u64>,
    filter: Vec<u64>,
    /// A Bloom filter of the stream names, so that a stream the file does not have
    /// (every new stream's first append) is answered without reading a block.
    stream_filter: Vec<u64>,
    sections: Vec<Section>,
}

impl std::fmt::Debug for IndexFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFile")
            .field("cut", &self.cut)
            .field("ids", &self.ids_count)
            .finish_non_exhaustive()
    }
}

impl IndexFile {
    /// What it covers.
    pub fn cut(&self) -> &Cut {
        &self.cut
    }

    /// The position after the last indexed event.
    pub fn next_position(&self) -> Position {
        self.cut.covered
    }

    /// How many keys a table has.
    pub fn keys(&self, table: Table) -> u64 {
        self.tables[table as usize].keys
    }

    /// How many ids.
    pub fn id_count(&self) -> u64 {
        self.ids_count
    }

    /// Memory the open file keeps (directory and id filter), in bytes.
    pub fn resident_bytes(&self) -> usize {
        let blocks: usize = self
            .tables
            .iter()
            .flat_map(|t| &t.blocks)
            .map(|b| 48 + b.first.len())
            .sum();
        blocks + self.id_dir.len() * 8 + (self.filter.len() + self.stream_filter.len()) * 8
    }

    fn bytes(&self, at: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let end = at
            .checked_add(len as u64)
            .ok_or_else(|| invalid("past the end"))?;
        if let Some(m) = self.file.mapped() {
            let (a, e) = (
                usize::try_from(at).map_err(|_| invalid("past the end"))?,
                usize::try_from(end).map_err(|_| invalid("past the end"))?,
            );
            return m
                .get(a..e)
                .map(Cow::Borrowed)
                .ok_or_else(|| invalid("an index read runs past the file"));
        }
        let mut buf = vec![0u8; len];
        read_exact_at(&*self.file, &mut buf, at)?;
        Ok(Cow::Owned(buf))
    }

    /// Reads `len` bytes at `at` with `pread`, never through the mapping: for the
    /// sequential passes of merges and checks, so the pages they touch stay in the page
    /// cache without counting as this process's resident memory.
    fn read_owned(&self, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        read_exact_at(&*self.file, &mut buf, at)?;
        Ok(buf)
    }

    /// Where the frame holding `position` starts.
    pub fn loc(&self, position: Position) -> std::io::Result<Option<Loc>> {
        if position >= self.cut.covered {
            return Ok(None);
        }
        let b = self.bytes(HEADER_LEN + position * 8, 8)?;
        Ok(Some(Loc(le64(&b))))
    }

    /// Locations of `n` positions from `from` (all below the cut).
    pub fn locs(&self, from: Position, n: u64) -> std::io::Result<Vec<Loc>> {
        let n = n.min(self.cut.covered.saturating_sub(from));
        let b = self.read_owned(HEADER_LEN + from * 8, (n * 8) as usize)?;
        Ok(b.chunks_exact(8).map(|c| Loc(le64(c))).collect())
    }

    /// A key's record.
    pub fn find(&self, table: Table, key: &str) -> std::io::Result<Option<Record>> {
        if table == Table::Streams && !self.stream_filter_passes(key) {
            return Ok(None);
        }
        let t = &self.tables[table as usize];
        let k = t.blocks.partition_point(|b| &*b.first <= key);
        let Some(block) = k.checked_sub(1).and_then(|k| t.blocks.get(k)) else {
            return Ok(None);
        };
        let b = self.bytes(block.at, block.len as usize)?;
        // Compare keys in place; only the match is decoded.
        let mut at = 0usize;
        while at < b.len() {
            let mut r = Fields::new(&b[at..]);
            let n = r.u32()? as usize;
            let k = r.take(n)?;
            match k.cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => at += RECORD_FIXED + n,
                std::cmp::Ordering::Equal => return Fields::new(&b[at..]).record().map(Some),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }

    /// Entries `[from, from + n)` of a record's positions (clamped to its count).
    pub fn list(
        &self,
        table: Table,
        rec: &Record,
        from: u64,
        n: u64,
    ) -> std::io::Result<Vec<Position>> {
        self.list_via(table, rec, from, n, false)
    }

    fn list_via(
        &self,
        table: Table,
        rec: &Record,
        from: u64,
        n: u64,
        sequential: bool,
    ) -> std::io::Result<Vec<Position>> {
        let n = n.min(rec.count.saturating_sub(from));
        if n == 0 {
            return Ok(Vec::new());
        }
        let t = &self.tables[table as usize];
        let at = t
            .lists_at
            .checked_add(
                (rec.list + from)
                    .checked_mul(8)
                    .ok_or_else(|| invalid("list"))?,
            )
            .ok_or_else(|| invalid("list"))?;
        let len = usize::try_from(n * 8).map_err(|_| invalid("list too long"))?;
        if sequential {
            return Ok(self
                .read_owned(at, len)?
                .chunks_exact(8)
                .map(le64)
                .collect());
        }
        let b = self.bytes(at, len)?;
        Ok(b.chunks_exact(8).map(le64).collect())
    }

    /// The index of the first of a record's positions at or after `position`.
    pub fn lower_bound(
        &self,
        table: Table,
        rec: &Record,
        position: Position,
    ) -> std::io::Result<u64> {
        if rec.count == 0 || rec.last < position {
            return Ok(rec.count);
        }
        let (mut lo, mut hi) = (0u64, rec.count);
        // Narrow by single reads, then finish on one page.
        while hi - lo > 512 {
            let mid = lo + (hi - lo) / 2;
            let p = self.list(table, rec, mid, 1)?;
            if p.first().is_some_and(|&p| p < position) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let page = self.list(table, rec, lo, hi - lo)?;
        Ok(lo + page.partition_point(|&p| p < position) as u64)
    }

    /// Records in key order, starting at `lower`.
    pub fn records(&self, table: Table, lower: Bound<&str>) -> Records<'_> {
        let t = &self.tables[table as usize];
        let block = match lower {
            Bound::Unbounded => 0,
            Bound::Included(k) | Bound::Excluded(k) => t
                .blocks
                .partition_point(|b| &*b.first <= k)
                .saturating_sub(1),
        };
        Records {
            file: self,
            table,
            block,
            buf: Vec::new(),
            at: 0,
            lower: match lower {
                Bound::Unbounded => Bound::Unbounded,
                Bound::Included(k) => Bound::Included(k.into()),
                Bound::Excluded(k) => Bound::Excluded(k.into()),
            },
        }
    }

    /// The position an id fingerprint may have been recorded at.
    pub fn id(&self, fp: u64) -> std::io::Result<Option<Position>> {
        if !self.id_filter_passes(fp) {
            return Ok(None);
        }
        let k = self.id_dir.partition_point(|&f| f <= fp);
        // The id can sit in the block before the first one starting past it, or (equal
        // fingerprints spanning a boundary) in the one before that.
        let first = k.saturating_sub(1) as u64 * ID_BLOCK;
        if first >= self.ids_count {
            return Ok(None);
        }
        let n = ID_BLOCK.min(self.ids_count - first);
        let b = self.bytes(self.ids_at + first * 16, (n * 16) as usize)?;
        let entries = b.chunks_exact(16).map(|c| (le64(c), le64(&c[8..])));
        for (f, p) in entries {
            if f == fp {
                return Ok(Some(p));
            }
            if f > fp {
                break;
            }
        }
        Ok(None)
    }

    /// Whether the id filter lets the fingerprint `fp` through.
    pub fn id_filter_passes(&self, fp: u64) -> bool {
        may_contain(&self.filter, fp)
    }

    /// Whether the stream filter lets `stream` through.
    pub fn stream_filter_passes(&self, stream: &str) -> bool {
        may_contain(&self.stream_filter, key_fingerprint(stream))
    }

    /// The same file with the stream filter (or the id filter) emptied, as a filter
    /// written wrongly would be.
    #[cfg(test)]
    pub(crate) fn with_filter_emptied(mut self, streams: bool) -> Self {
        let f = if streams {
            &mut self.stream_filter
        } else {
            &mut self.filter
        };
        f.iter_mut().for_each(|w| *w = 0);
        self
    }

    /// Every id in fingerprint order, `COPY_ENTRIES` at a time.
    fn ids_chunk(&self, from: u64) -> std::io::Result<Vec<(u64, Position)>> {
        let n = COPY_ENTRIES.min(self.ids_count.saturating_sub(from));
        let b = self.read_owned(self.ids_at + from * 16, (n * 16) as usize)?;
        Ok(b.chunks_exact(16)
            .map(|c| (le64(c), le64(&c[8..])))
            .collect())
    }

    /// Every id, in fingerprint order (for checks; reads the whole section).
    pub fn ids(&self) -> impl Iterator<Item = std::io::Result<(u64, Position)>> + '_ {
        let mut from = 0u64;
        let mut chunk: std::vec::IntoIter<(u64, Position)> = Vec::new().into_iter();
        std::iter::from_fn(move || {
            loop {
                if let Some(x) = chunk.next() {
                    return Some(Ok(x));
                }
                if from >= self.ids_count {
                    return None;
                }
                match self.ids_chunk(from) {
                    Ok(c) => {
                        from += c.len() as u64;
                        if c.is_empty() {
                            return None;
                        }
                        chunk = c.into_iter();
                    }
                    Err(e) => {
                        from = self.ids_count;
                        return Some(Err(e));
                    }
                }
            }
        })
    }

    /// The name of the first section whose checksum fails, reading every byte.
    pub fn damaged_section(&self) -> std::io::Result<Option<&'static str>> {
        for s in &self.sections {
            let mut crc = 0u32;
            let mut at = s.at;
            let end = s.at + s.len;
            while at < end {
                let n = (end - at).min(1 << 20);
                let b = self.read_owned(at, n as usize)?;
                crc = crc32c::crc32c_append(crc, &b);
                at += n;
            }
            if crc != s.crc {
                return Ok(Some(s.name));
            }
        }
        Ok(None)
    }
}

/// Records of a table in key order (see [`IndexFile::records`]).
pub struct Records<'a> {
    file: &'a IndexFile,
    table: Table,
    block: usize,
    buf: Vec<u8>,
    at: usize,
    lower: Bound<Box<str>>,
}

impl Records<'_> {
    /// The next record.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            if self.at >= self.buf.len() {
                let t = &self.file.tables[self.table as usize];
                let Some(b) = t.blocks.get(self.block) else {
                    return Ok(None);
                };
                self.buf = self.file.read_owned(b.at, b.len as usize)?;
                self.at = 0;
                self.block += 1;
                continue;
            }
            let mut f = Fields::new(&self.buf[self.at..]);
            let rec = f.record()?;
            self.at += rec.encoded_len();
            let keep = match &self.lower {
                Bound::Unbounded => true,
                Bound::Included(k) => rec.key >= *k,
                Bound::Excluded(k) => rec.key > *k,
            };
            if keep {
                self.lower = Bound::Unbounded;
                return Ok(Some(rec));
            }
        }
    }
}

/// Bounds-checked little-endian fields.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| invalid("a field overflows"))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or_else(|| invalid("a field runs past its block"))?;
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(le32(self.take(4)?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(le64(self.take(8)?))
    }
    fn str(&mut self, n: usize) -> std::io::Result<Box<str>> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Into::into)
            .map_err(|_| invalid("a key is not UTF-8"))
    }
    fn record(&mut self) -> std::io::Result<Record> {
        let n = self.u32()? as usize;
        let key = self.str(n)?;
        Ok(Record {
            key,
            meta: self.u64()? as i64,
            count: self.u64()?,
            list: self.u64()?,
            last: self.u64()?,
        })
    }
}

/// Whether a blocked Bloom filter may hold a fingerprint.
fn may_contain(filter: &[u64], fp: u64) -> bool {
    let blocks = (filter.len() / 8) as u64;
    if blocks == 0 {
        return false;
    }
    let (block, bits) = filter_bits(fp, blocks);
    filter
        .get(block * 8..block * 8 + 8)
        .is_some_and(|words| bits.iter().all(|&(w, m)| words[w] & m != 0))
}

/// Sets a fingerprint's bits in a blocked Bloom filter of `blocks` blocks.
fn filter_add(filter: &mut [u64], blocks: u64, fp: u64) {
    let (block, bits) = filter_bits(fp, blocks);
    for (w, m) in bits {
        filter[block * 8 + w] |= m;
    }
}

/// The 64-bit fingerprint of a stream name in the stream filter. Part of the file
/// format: 8-byte little-endian words (the last one zero-padded) folded with a
/// multiply-rotate, then the length, then a 64-bit finalizer.
pub fn key_fingerprint(key: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = key.as_bytes();
    let mut h = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ le64(c)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let mut z = h ^ bytes.len() as u64;
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// The filter block of a fingerprint and its probe bits (word, mask).
fn filter_bits(fp: u64, blocks: u64) -> (usize, [(usize, u64); FILTER_PROBES as usize]) {
    let block = ((u128::from(fp) * u128::from(blocks)) >> 64) as usize;
    // Nine bits per probe: seven from one mix of the fingerprint, the rest from another.
    let mut h = fp.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31);
    let mut bits = [(0usize, 0u64); FILTER_PROBES as usize];
    for (i, b) in bits.iter_mut().enumerate() {
        if i == 7 {
            h = fp.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17);
        }
        let bit = (h & 511) as usize;
        *b = (bit / 64, 1u64 << (bit % 64));
        h >>= 9;
    }
    (block, bits)
}

fn filter_blocks(ids: u64) -> u64 {
    (ids * FILTER_BITS_PER_ID).div_ceil(512).max(1)
}

/// Loads and checks the index file in `dir`.
pub fn load(storage: &dyn Storage, dir: &Path) -> Result<IndexFile, IndexSnapshotError> {
    let path = dir.join(FILE_NAME);
    if !storage.exists(&path) {
        return Err(IndexSnapshotError::Missing);
    }
    open(storage.open(&path, OpenMode::Read)?)
}

/// Removes the index file (the next open rebuilds the indexes).
pub fn remove(storage: &dyn Storage, dir: &Path) -> std::io::Result<()> {
    let p = dir.join(FILE_NAME);
    if storage.exists(&p) {
        storage.remove(&p)?;
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// Opens an index file: reads and checks its header, directory and id filter.
pub fn open(file: Arc<dyn StorageFile>) -> Result<IndexFile, IndexSnapshotError> {
    let len = file.len()?;
    if len < HEADER_LEN {
        return Err(bad("shorter than its header"));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    read_exact_at(&*file, &mut h, 0)?;
    if h[..7] == MAGIC[..7] && h[7] != MAGIC[7] {
        return Err(bad("an older format"));
    }
    if &h[..8] != MAGIC {
        return Err(bad("wrong magic"));
    }
    if crc32c::crc32c(&h[..60]) != le32(&h[60..]) {
        return Err(bad("header checksum mismatch"));
    }
    if le32(&h[8..]) != VERSION {
        return Err(bad("unknown format version"));
    }
    let last_crc = le32(&h[12..]);
    let covered = le64(&h[16..]);
    let end_offset = le64(&h[24..]);
    let (dir_at, dir_len) = (le64(&h[32..]), le64(&h[40..]));
    if dir_at.checked_add(dir_len) != Some(len) || dir_at < HEADER_LEN || dir_len > 1 << 34 {
        return Err(bad("the directory is not where the header says"));
    }
    let mut d = vec![0u8; dir_len as usize];
    read_exact_at(&*file, &mut d, dir_at)?;
    if crc32c::crc32c(&d) != le32(&h[48..]) {
        return Err(bad("directory checksum mismatch"));
    }
    let mut r = Fields::new(&d);
    let bad_dir = |_| bad("the directory is malformed");
    let nseg = r.u64().map_err(bad_dir)?;
    if nseg > d.len() as u64 / 16 {
        return Err(bad("the directory is malformed"));
    }
    let mut segments = Vec::with_capacity(nseg as usize);
    for _ in 0..nseg {
        segments.push((r.u64().map_err(bad_dir)?, r.u64().map_err(bad_dir)?));
    }
    let mut sections = Vec::with_capacity(SECTION_NAMES.len());
    for name in SECTION_NAMES {
        let (at, slen, crc) = (
            r.u64().map_err(bad_dir)?,
            r.u64().map_err(bad_dir)?,
            r.u32().map_err(bad_dir)?,
        );
        if at.checked_add(slen).is_none_or(|e| e > dir_at) || at < HEADER_LEN {
            return Err(bad("a section lies outside the file"));
        }
        sections.push(Section {
            name,
            at,
            len: slen,
            crc,
        });
    }
    let mut tables: [TableDir; 4] = Default::default();
    for t in &mut tables {
        t.keys = r.u64().map_err(bad_dir)?;
        t.lists_at = r.u64().map_err(bad_dir)?;
        t.entries = r.u64().map_err(bad_dir)?;
        let nblocks = r.u64().map_err(bad_dir)?;
        if nblocks > d.len() as u64 / 16 {
            return Err(bad("the directory is malformed"));
        }
        for _ in 0..nblocks {
            let at = r.u64().map_err(bad_dir)?;
            let blen = r.u32().map_err(bad_dir)?;
            let klen = r.u32().map_err(bad_dir)? as usize;
            let first = r.str(klen).map_err(bad_dir)?;
            if at.checked_add(u64::from(blen)).is_none_or(|e| e > dir_at) {
                return Err(bad("a block lies outside the file"));
            }
            t.blocks.push(BlockRef {
                at,
                len: blen,
                first,
            });
        }
        if t.lists_at
            .checked_add(t.entries.saturating_mul(8))
            .is_none_or(|e| e > dir_at)
        {
            return Err(bad("a table's lists lie outside the file"));
        }
    }
    let ids_at = r.u64().map_err(bad_dir)?;
    let ids_count = r.u64().map_err(bad_dir)?;
    let ndir = r.u64().map_err(bad_dir)?;
    if ndir != ids_count.div_ceil(ID_BLOCK) {
        return Err(bad("the id directory is malformed"));
    }
    let mut id_dir = Vec::with_capacity(ndir as usize);
    for _ in 0..ndir {
        id_dir.push(r.u64().map_err(bad_dir)?);
    }
    if !r.done() {
        return Err(bad("the directory has trailing bytes"));
    }
    if HEADER_LEN
        .checked_add(covered.saturating_mul(8))
        .is_none_or(|e| e > dir_at)
        || ids_at
            .checked_add(ids_count.saturating_mul(16))
            .is_none_or(|e| e > dir_at)
    {
        return Err(bad("a section lies outside the file"));
    }
    let fs = &sections[3];
    if fs.len != filter_blocks(ids_count) * 64 {
        return Err(bad("the id filter has the wrong size"));
    }
    let filter = read_filter(&*file, fs)?.ok_or(bad("id filter checksum mismatch"))?;
    let ss = &sections[8];
    if ss.len != filter_blocks(tables[0].keys) * 64 {
        return Err(bad("the stream filter has the wrong size"));
    }
    let stream_filter = read_filter(&*file, ss)?.ok_or(bad("stream filter checksum mismatch"))?;
    Ok(IndexFile {
        file,
        cut: Cut {
            covered,
            end_offset,
            last_crc,
            segments,
        },
        tables,
        ids_at,
        ids_count,
        id_dir,
        filter,
        stream_filter,
        sections,
    })
}

/// Reads a filter section a MiB at a time into its words (so that opening never holds
/// the filter twice), checking its CRC: `None` when that fails.
fn read_filter(file: &dyn StorageFile, s: &Section) -> std::io::Result<Option<Vec<u64>>> {
    let mut words = Vec::with_capacity((s.len / 8) as usize);
    let mut buf = vec![0u8; (s.len.min(1 << 20)) as usize];
    let (mut at, mut crc) = (0u64, 0u32);
    while at < s.len {
        let n = (s.len - at).min(buf.len() as u64) as usize;
        read_exact_at(file, &mut buf[..n], s.at + at)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        words.extend(buf[..n].chunks_exact(8).map(le64));
        at += n as u64;
    }
    Ok((crc == s.crc).then_some(words))
}

/// A buffered sequential writer at an offset of the new file, checksumming.
/// A section being written: sequential bytes from `start`, buffered a MiB at a time.
/// Whole pages go around the page cache (a merge rewrites the whole file, gigabytes at
/// tens of millions of events, and copying that through the cache costs more CPU than
/// building it); the partial pages at the section's ends go through it.
struct Out {
    file: Arc<dyn StorageFile>,
    start: u64,
    /// Where `buf`'s first byte goes.
    at: u64,
    buf: AlignedBuf,
    crc: u32,
}

impl Out {
    fn new(file: &Arc<dyn StorageFile>, at: u64) -> Self {
        Self {
            file: file.clone(),
            start: at,
            at,
            buf: AlignedBuf::default(),
            crc: 0,
        }
    }
    fn pos(&self) -> u64 {
        self.at + self.buf.len() as u64
    }
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush(false)?;
        }
        Ok(())
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    /// Writes the buffered bytes up to the last page boundary (all of them when `all`).
    fn flush(&mut self, all: bool) -> std::io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        let len = self.buf.len();
        let head = ((self.at.next_multiple_of(align) - self.at) as usize).min(len);
        if head > 0 {
            self.write(head, false)?;
        }
        let whole = self.buf.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if whole > 0 {
            self.write(whole, true)?;
        }
        if all && !self.buf.is_empty() {
            self.write(self.buf.len(), false)?;
        }
        Ok(())
    }
    /// Writes the first `n` buffered bytes, around the page cache when `direct`.
    fn write(&mut self, n: usize, direct: bool) -> std::io::Result<()> {
        let bytes = &self.buf.as_slice()[..n];
        if direct {
            self.file.write_direct_at(bytes, self.at)?;
        } else {
            self.file.write_all_at(bytes, self.at)?;
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.at += n as u64;
        let len = self.buf.len();
        self.buf.keep(n..len);
        Ok(())
    }
    fn section(mut self, name: &'static str) -> std::io::Result<Section> {
        self.flush(true)?;
        Ok(Section {
            name,
            at: self.start,
            len: self.at - self.start,
            crc: self.crc,
        })
    }
}

/// One key of the in-memory layer being merged.
struct DeltaKey<'a> {
    key: &'a str,
    meta: i64,
    positions: &'a [Position],
}

fn delta_keys(delta: &Delta, table: Table) -> Vec<DeltaKey<'_>> {
    let mut v: Vec<DeltaKey<'_>> = match table {
        Table::Streams => delta
            .streams
            .iter()
            .map(|(k, e)| DeltaKey {
                key: k.as_str(),
                meta: e.last_written,
                positions: &e.positions,
            })
            .collect(),
        Table::Correlations => map_keys(&delta.correlations),
        Table::Types => map_keys(&delta.tags.types),
        Table::Categories => map_keys(&delta.tags.categories),
    };
    if table != Table::Streams {
        v.sort_unstable_by(|a, b| a.key.cmp(b.key));
    }
    v.retain(|k| !k.positions.is_empty());
    v
}

fn map_keys(m: &crate::tags::KeyMap) -> Vec<DeltaKey<'_>> {
    m.iter()
        .map(|(k, v)| DeltaKey {
            key: k,
            meta: 0,
            positions: v,
        })
        .collect()
}

/// Writes the index file for `cut`: `base` (covering `[0, delta.first)`, or nothing when
/// `delta.first` is 0) merged with `delta` (covering up to the cut), to a temporary
/// file, synced and renamed over the index file, the directory synced. Returns it open.
pub fn write(
    storage: &dyn Storage,
    dir: &Path,
    cut: Cut,
    base: Option<&IndexFile>,
    delta: &Delta,
) -> std::io::Result<IndexFile> {
    let base_next = base.map_or(0, IndexFile::next_position);
    if delta.first != base_next || delta.next() != cut.covered {
        return Err(std::io::Error::other(
            "an index file must cover its base and the tables merged into it exactly",
        ));
    }
    let tmp = dir.join(TMP_NAME);
    let file = storage.open(&tmp, OpenMode::Truncate)?;
    let covered = cut.covered;

    // Locations.
    let mut out = Out::new(&file, HEADER_LEN);
    if let Some(b) = base {
        let mut p = 0;
        while p < base_next {
            let n = COPY_ENTRIES.min(base_next - p);
            for l in b.locs(p, n)? {
                out.u64(l.0)?;
            }
            p += n;
        }
    }
    for l in &delta.locs {
        out.u64(l.0)?;
    }
    let mut sections = vec![out.section(SECTION_NAMES[0])?];

    // The layout of what follows is known before it is written: lists, ids, filter.
    let keys: Vec<Vec<DeltaKey<'_>>> = TABLES.iter().map(|&t| delta_keys(delta, t)).collect();
    let mut tables: [TableDir; 4] = Default::default();
    let mut at = HEADER_LEN + covered * 8;
    for (i, t) in tables.iter_mut().enumerate() {
        let base_entries = base.map_or(0, |b| b.tables[i].entries);
        let added: u64 = keys[i].iter().map(|k| k.positions.len() as u64).sum();
        t.entries = base_entries + added;
        t.lists_at = at;
        at += t.entries * 8;
    }
    let lists_start = HEADER_LEN + covered * 8;
    let ids_at = at;
    let ids_count = base.map_or(0, |b| b.ids_count) + delta.ids.len() as u64;
    let filter_at = ids_at + ids_count * 16;
    let nfilter = filter_blocks(ids_count);
    let records_at = filter_at + nfilter * 64;

    // Tables: lists at their places, records one table after another.
    let mut lists_crc = 0u32;
    let mut rec_pos = records_at;
    let mut record_sections = Vec::new();
    let mut stream_fps = Vec::new();
    for (i, &table) in TABLES.iter().enumerate() {
        let mut recs = Out::new(&file, rec_pos);
        let mut lists = Out::new(&file, tables[i].lists_at);
        let t = &mut tables[i];
        let mut block_at = recs.pos();
        let mut block_first: Option<Box<str>> = None;
        let mut written = 0u64;
        let mut from_base = base.map(|b| b.records(table, Bound::Unbounded));
        let mut next_base = match &mut from_base {
            Some(r) => r.next_record()?,
            None => None,
        };
        let mut dk = keys[i].iter().peekable();
        loop {
            let order = match (&next_base, dk.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(b), Some(d)) => (*b.key).cmp(d.key),
            };
            let old = if order != std::cmp::Ordering::Greater {
                let o = next_base.take();
                if let Some(r) = &mut from_base {
                    next_base = r.next_record()?;
                }
                o
            } else {
                None
            };
            let new = if order != std::cmp::Ordering::Less {
                dk.next()
            } else {
                None
            };
            let mut rec = Record {
                key: match (&old, new) {
                    (Some(o), _) => o.key.clone(),
                    (None, Some(d)) => d.key.into(),
                    (None, None) => break,
                },
                meta: 0,
                count: 0,
                list: written,
                last: 0,
            };
            if let (Some(o), Some(b)) = (&old, base) {
                let mut from = 0;
                while from < o.count {
                    let part = b.list_via(table, o, from, COPY_ENTRIES, true)?;
                    if part.is_empty() {
                        return Err(invalid("a list ends early"));
                    }
                    for p in &part {
                        lists.u64(*p)?;
                    }
                    from += part.len() as u64;
                }
                rec.meta = o.meta;
                rec.count = o.count;
                rec.last = o.last;
            }
            if let Some(d) = new {
                for &p in d.positions {
                    lists.u64(p)?;
                }
                rec.meta = d.meta;
                rec.count += d.positions.len() as u64;
                rec.last = d.positions.last().copied().unwrap_or(rec.last);
            }
            written += rec.count;
            let len = rec.encoded_len();
            if block_first.is_some() && (recs.pos() - block_at) as usize + len > BLOCK {
                t.blocks.push(BlockRef {
                    at: block_at,
                    len: (recs.pos() - block_at) as u32,
                    first: block_first.take().unwrap_or_default(),
                });
                block_at = recs.pos();
            }
            if block_first.is_none() {
                block_first = Some(rec.key.clone());
            }
            if table == Table::Streams {
                stream_fps.push(key_fingerprint(&rec.key));
            }
            recs.put(&(rec.key.len() as u32).to_le_bytes())?;
            recs.put(rec.key.as_bytes())?;
            recs.u64(rec.meta as u64)?;
            recs.u64(rec.count)?;
            recs.u64(rec.list)?;
            recs.u64(rec.last)?;
            t.keys += 1;
        }
        if let Some(first) = block_first {
            t.blocks.push(BlockRef {
                at: block_at,
                len: (recs.pos() - block_at) as u32,
                first,
            });
        }
        if written != t.entries {
            return Err(std::io::Error::other("a table's lists do not add up"));
        }
        lists.flush(true)?;
        lists_crc = crc32c::crc32c_combine(lists_crc, lists.crc, (lists.at - lists.start) as usize);
        let s = recs.section(SECTION_NAMES[4 + i])?;
        rec_pos = s.at + s.len;
        record_sections.push(s);
    }
    sections.push(Section {
        name: SECTION_NAMES[1],
        at: lists_start,
        len: ids_at - lists_start,
        crc: lists_crc,
    });

    // Ids, merged by fingerprint, and their filter.
    let mut filter = vec![0u64; (nfilter * 8) as usize];
    let mut id_dir = Vec::with_capacity(ids_count.div_ceil(ID_BLOCK) as usize);
    let mut ids = Out::new(&file, ids_at);
    let mut recent: Vec<(u64, Position)> = delta.ids.iter().map(|(&f, &p)| (f, p)).collect();
    recent.sort_unstable();
    let mut recent = recent.into_iter().peekable();
    let mut old_from = 0u64;
    let mut old: std::iter::Peekable<std::vec::IntoIter<(u64, Position)>> =
        Vec::new().into_iter().peekable();
    let mut n = 0u64;
    loop {
        if old.peek().is_none()
            && let Some(b) = base
            && old_from < b.ids_count
        {
            let c = b.ids_chunk(old_from)?;
            if c.is_empty() {
                return Err(invalid("the ids end early"));
            }
            old_from += c.len() as u64;
            old = c.into_iter().peekable();
        }
        let next = match (old.peek(), recent.peek()) {
            (Some(a), Some(b)) if a <= b => old.next(),
            (Some(_), Some(_)) => recent.next(),
            (Some(_), None) => old.next(),
            (None, Some(_)) => recent.next(),
            (None, None) => None,
        };
        let Some((f, p)) = next else { break };
        if n % ID_BLOCK == 0 {
            id_dir.push(f);
        }
        filter_add(&mut filter, nfilter, f);
        ids.u64(f)?;
        ids.u64(p)?;
        n += 1;
    }
    if n != ids_count {
        return Err(std::io::Error::other("the ids do not add up"));
    }
    sections.push(ids.section(SECTION_NAMES[2])?);
    let mut fo = Out::new(&file, filter_at);
    for w in &filter {
        fo.u64(*w)?;
    }
    sections.push(fo.section(SECTION_NAMES[3])?);
    sections.extend(record_sections);

    // The stream filter, after the records.
    let nstream = filter_blocks(stream_fps.len() as u64);
    let mut stream_filter = vec![0u64; (nstream * 8) as usize];
    for &f in &stream_fps {
        filter_add(&mut stream_filter, nstream, f);
    }
    drop(stream_fps);
    let mut so = Out::new(&file, rec_pos);
    for w in &stream_filter {
        so.u64(*w)?;
    }
    let s = so.section(SECTION_NAMES[8])?;
    let dir_at = s.at + s.len;
    sections.push(s);

    // Directory and header.
    let mut d = Vec::new();
    put64(&mut d, cut.segments.len() as u64);
    for &(first, end) in &cut.segments {
        put64(&mut d, first);
        put64(&mut d, end);
    }
    for s in &sections {
        put64(&mut d, s.at);
        put64(&mut d, s.len);
        d.extend_from_slice(&s.crc.to_le_bytes());
    }
    for t in &tables {
        put64(&mut d, t.keys);
        put64(&mut d, t.lists_at);
        put64(&mut d, t.entries);
        put64(&mut d, t.blocks.len() as u64);
        for b in &t.blocks {
            put64(&mut d, b.at);
            d.extend_from_slice(&b.len.to_le_bytes());
            d.extend_from_slice(&(b.first.len() as u32).to_le_bytes());
            d.extend_from_slice(b.first.as_bytes());
        }
    }
    put64(&mut d, ids_at);
    put64(&mut d, ids_count);
    put64(&mut d, id_dir.len() as u64);
    for f in &id_dir {
        put64(&mut d, *f);
    }
    file.write_all_at(&d, dir_at)?;
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&cut.last_crc.to_le_bytes());
    h[16..24].copy_from_slice(&covered.to_le_bytes());
    h[24..32].copy_from_slice(&cut.end_offset.to_le_bytes());
    h[32..40].copy_from_slice(&dir_at.to_le_bytes());
    h[40..48].copy_from_slice(&(d.len() as u64).to_le_bytes());
    h[48..52].copy_from_slice(&crc32c::crc32c(&d).to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, 0)?;
    file.sync_data()?;
    storage.rename(&tmp, &dir.join(FILE_NAME))?;
    storage.sync_dir(dir)?;
    Ok(IndexFile {
        file,
        cut,
        tables,
        ids_at,
        ids_count,
        id_dir,
        filter,
        stream_filter,
        sections,
    })
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexedEvent, LogIndex};
    use crate::storage::OsStorage;
    use tidings_core::StreamId;
    use uuid::Uuid;

    fn written(dir: &Path) -> Vec<u8> {
        let mut ix = LogIndex::default();
        for n in 0..300u64 {
            let s = StreamId::new(&format!("s-{}", n % 7)).unwrap_or_else(|e| panic!("{e}"));
            ix.add_frame(
                &s,
                n,
                n as i64,
                Loc::new(0, 64 + n),
                &mut std::iter::once(IndexedEvent {
                    id: Uuid::from_u64_pair(n, n * 3),
                    correlation: (n % 2 == 0).then_some("c"),
                    event_type: "T",
                }),
            );
        }
        let ix = ix
            .into_file_for_bench(dir)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ix.base().map(|b| b.id_count()), Some(300));
        std::fs::read(dir.join(FILE_NAME)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// New streams are answered by the stream filter: every stream the file has is
    /// found, and few names it lacks get past the filter to a block read.
    #[test]
    fn the_stream_filter_keeps_every_stream_and_few_others() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut ix = LogIndex::default();
        let n = 5_000u64;
        for p in 0..n {
            let s = StreamId::new(&format!("order-{p}")).unwrap_or_else(|e| panic!("{e}"));
            ix.add_frame(
                &s,
                p,
                p as i64,
                Loc::new(0, 64 + p),
                &mut std::iter::once(IndexedEvent {
                    id: Uuid::from_u64_pair(p, 1),
                    correlation: None,
                    event_type: "T",
                }),
            );
        }
        let ix = ix
            .into_file_for_bench(dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        let f = ix.base().unwrap_or_else(|| panic!("no file"));
        for p in 0..n {
            let r = f
                .find(Table::Streams, &format!("order-{p}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.map(|r| r.last), Some(p), "order-{p}");
        }
        let mut passed = 0;
        for p in n..n + 20_000 {
            let name = format!("order-{p}");
            passed += usize::from(may_contain(&f.stream_filter, key_fingerprint(&name)));
            assert!(
                f.find(Table::Streams, &name)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .is_none()
            );
        }
        assert!(
            passed < 40,
            "{passed} of 20000 absent names passed the filter"
        );
        // The fingerprint is part of the format: it must not change between builds.
        assert_eq!(key_fingerprint("order-123"), 8_612_291_790_523_682_542);
        assert_ne!(key_fingerprint("a"), key_fingerprint("a\0"));
    }

    /// Every flipped byte is caught: by opening (header, directory, id filter) or by the
    /// sections' checksums that `verify` reads; none panics.
    #[test]
    fn damage_anywhere_is_refused_or_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let image = written(dir.path());
        let path = dir.path().join(FILE_NAME);
        for i in (0..image.len()).step_by(7) {
            let mut b = image.clone();
            b[i] ^= 0x20;
            std::fs::write(&path, &b).unwrap_or_else(|e| panic!("{e}"));
            match load(&OsStorage, dir.path()) {
                Err(_) => {}
                Ok(f) => {
                    let damaged = f.damaged_section().unwrap_or(Some("unreadable"));
                    assert!(damaged.is_some(), "damage at byte {i} went unnoticed");
                }
            }
        }
        std::fs::write(&path, &image[..image.len() - 1]).unwrap_or_else(|e| panic!("{e}"));
        assert!(load(&OsStorage, dir.path()).is_err());
        let mut older = image.clone();
        older[7] = b'2';
        std::fs::write(&path, &older).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load(&OsStorage, dir.path()),
            Err(IndexSnapshotError::Bad("an older format"))
        ));
        assert!(load(&OsStorage, dir.path()).is_err());
        std::fs::write(&path, [&b"TDLOGIX1"[..], &[0u8; 120]].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load(&OsStorage, dir.path()),
            Err(IndexSnapshotError::Bad("an older format"))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Lookups in a file whose sections were damaged after opening answer or fail,
        /// never panic.
        #[test]
        fn lookups_in_damaged_files_never_panic(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..8,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let mut image = written(dir.path());
            // Keep the header, directory and filter intact so the file opens.
            let f = load(&OsStorage, dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let body_end = f.sections[3].at as usize;
            drop(f);
            for (at, v) in edits {
                let i = HEADER_LEN as usize + at.index(body_end - HEADER_LEN as usize);
                image[i] = v;
            }
            std::fs::write(dir.path().join(FILE_NAME), &image).unwrap_or_else(|e| panic!("{e}"));
            let f = load(&OsStorage, dir.path()).unwrap_or_else(|e| panic!("{e}"));
            for n in 0..310u64 {
                let _ = f.loc(n);
                let _ = f.id(crate::index::fingerprint(&Uuid::from_u64_pair(n, n * 3)));
            }
            for t in TABLES {
                for k in ["s-1", "s-6", "c", "T", "s", "zz"] {
                    if let Ok(Some(r)) = f.find(t, k) {
                        let _ = f.list(t, &r, 0, r.count.min(10_000));
                        let _ = f.lower_bound(t, &r, 150);
                    }
                }
                let mut rs = f.records(t, Bound::Unbounded);
                for _ in 0..1000 {
                    match rs.next_record() {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
    }
}
