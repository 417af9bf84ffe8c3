//! Reads: positional reads of committed frames through the page cache.
//!
//! No layout of its own. A read first takes a plan under the index's read lock — which
//! frames, in which segments, up to where data is committed — then releases the lock and
//! reads. A read never looks past a segment's committed end, so it cannot see a frame
//! the writer is still writing, and every frame's checksum is checked before use.

use std::path::PathBuf;
use std::sync::Arc;

use tidings_core::{Filter, Position, RecordedEvent, StoreError, StreamId};

use crate::index::{Loc, LogIndex};
use crate::record::{self, FrameView};
use crate::segment::HEADER_LEN;
use crate::storage::{StorageFile, read_exact_at};
use crate::tail::TailChunk;

/// A segment as a read sees it.
#[derive(Clone)]
pub(crate) struct SegRef {
    pub file: Option<Arc<dyn StorageFile>>,
    pub path: PathBuf,
    pub data_end: u64,
    /// Its first position.
    pub first_position: Position,
    /// Its most recent writes, in memory (see [`crate::tail`]), oldest first.
    pub tail: Vec<Arc<TailChunk>>,
}

pub(crate) fn seg_refs(ix: &LogIndex, from: usize) -> Vec<SegRef> {
    ix.segments
        .iter()
        .skip(from)
        .map(|s| SegRef {
            file: s.file.clone(),
            path: s.path.clone(),
            data_end: s.data_end,
            first_position: s.first_position,
            tail: Vec::new(),
        })
        .collect()
}

fn corrupt(path: &std::path::Path, offset: u64, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{} at byte {offset}: {why}", path.display()))
}

fn io_err(path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("reading {}: {e}", path.display()))
}

/// A window of one segment's bytes: read into memory, or the segment's committed bytes
/// in its mapping.
struct Window {
    seg: usize,
    start: u64,
    end: u64,
    bytes: WindowBytes,
}

enum WindowBytes {
    Read(Vec<u8>),
    Mapped(Arc<dyn StorageFile>),
    /// A recent write's bytes; the window's start is the chunk's.
    Tail(Arc<TailChunk>),
}

impl Window {
    fn holds(&self, seg: usize, offset: u64, len: usize) -> bool {
        self.seg == seg && offset >= self.start && offset + len as u64 <= self.end
    }

    /// The bytes from `offset` to the window's end (empty if outside it).
    fn at(&self, offset: u64) -> &[u8] {
        let all = match &self.bytes {
            WindowBytes::Read(v) => v.as_slice(),
            WindowBytes::Mapped(f) => f.mapped().unwrap_or_default(),
            WindowBytes::Tail(c) => c.bytes.as_slice(),
        };
        let from = offset.saturating_sub(self.start) as usize;
        let to = (self.end - self.start) as usize;
        all.get(from..to).unwrap_or_default()
    }
}

/// The recent write holding `[offset, offset + len)` of the segment, newest first, as a
/// window that ends at the segment's committed end.
fn tail_window(seg: &SegRef, segno: usize, offset: u64, len: u64) -> Option<Window> {
    let chunk = seg.tail.iter().rev().find(|c| c.holds(offset, len))?;
    Some(Window {
        seg: segno,
        start: chunk.start,
        end: chunk.end().min(seg.data_end),
        bytes: WindowBytes::Tail(chunk.clone()),
    })
}

/// The segment's committed bytes through its mapping, when it has one covering them,
/// up to where its recent writes in memory begin.
fn mapped_window(seg: &SegRef, segno: usize) -> Option<Window> {
    let file = seg.file.as_ref()?;
    let map = file.mapped()?;
    let end = seg
        .tail
        .iter()
        .map(|c| c.start)
        .min()
        .map_or(seg.data_end, |t| t.min(seg.data_end));
    (seg.data_end <= map.len() as u64).then(|| Window {
        seg: segno,
        start: 0,
        end,
        bytes: WindowBytes::Mapped(file.clone()),
    })
}

fn read_window(seg: &SegRef, segno: usize, start: u64, end: u64) -> Result<Window, StoreError> {
    let file = seg
        .file
        .as_ref()
        .ok_or_else(|| StoreError::Backend(format!("{} is not open", seg.path.display())))?;
    let mut bytes = vec![0u8; (end - start) as usize];
    read_exact_at(&**file, &mut bytes, start).map_err(|e| io_err(&seg.path, e))?;
    Ok(Window {
        seg: segno,
        start,
        end,
        bytes: WindowBytes::Read(bytes),
    })
}

/// Makes sure `w` holds the whole frame at `loc`, reading `[loc, hint_end)` if not.
fn load_frame(
    w: &mut Option<Window>,
    segs: &[SegRef],
    loc: Loc,
    hint_end: u64,
) -> Result<(), StoreError> {
    let seg = segs
        .get(loc.segment())
        .ok_or_else(|| StoreError::Backend(format!("no segment {}", loc.segment())))?;
    let off = loc.offset();
    let needs = |w: &Option<Window>, len: usize| {
        w.as_ref().is_none_or(|w| !w.holds(loc.segment(), off, len))
    };
    if needs(w, 4)
        && let Some(t) = tail_window(seg, loc.segment(), off, 4)
    {
        *w = Some(t);
    }
    if needs(w, 4)
        && let Some(m) = mapped_window(seg, loc.segment())
        && m.holds(loc.segment(), off, 4)
    {
        *w = Some(m);
    }
    if needs(w, 4) {
        let end = hint_end.clamp(off + 4, seg.data_end.max(off + 4));
        *w = Some(read_window(seg, loc.segment(), off, end)?);
    }
    let len = w
        .as_ref()
        .and_then(|w| record::peek_len(w.at(off)))
        .unwrap_or(0) as usize;
    if !(record::FRAME_HEADER_LEN..=record::MAX_FRAME_LEN).contains(&len)
        || off + len as u64 > seg.data_end
    {
        return Err(corrupt(
            &seg.path,
            off,
            format!("impossible frame length {len}"),
        ));
    }
    if needs(w, len)
        && let Some(t) = tail_window(seg, loc.segment(), off, len as u64)
    {
        *w = Some(t);
    }
    if needs(w, len) {
        *w = Some(read_window(seg, loc.segment(), off, off + len as u64)?);
    }
    Ok(())
}

fn frame_in<'a>(w: &'a Window, seg: &SegRef, offset: u64) -> Result<FrameView<'a>, StoreError> {
    record::decode_frame(w.at(offset)).map_err(|e| corrupt(&seg.path, offset, e))
}

fn stream_of(
    view: &FrameView<'_>,
    seg: &SegRef,
    offset: u64,
    cache: &mut Option<StreamId>,
) -> Result<StreamId, StoreError> {
    if let Some(s) = cache
        && s.as_str() == view.stream
    {
        return Ok(s.clone());
    }
    let s = StreamId::parse_any(view.stream).map_err(|e| corrupt(&seg.path, offset, e))?;
    *cache = Some(s.clone());
    Ok(s)
}

/// A plan to read the events at given positions.
pub(crate) struct PositionsPlan {
    pub segs: Vec<SegRef>,
    pub items: Vec<(Position, Loc)>,
}

/// Plans reading `positions` (in the order given), all of which are indexed.
pub(crate) fn plan_positions(
    ix: &LogIndex,
    positions: impl Iterator<Item = Position>,
) -> Result<PositionsPlan, StoreError> {
    let mut items = Vec::new();
    for p in positions {
        if let Some(l) = ix.loc(p).map_err(index_err)? {
            items.push((p, l));
        }
    }
    Ok(PositionsPlan {
        segs: seg_refs(ix, 0),
        items,
    })
}

/// A failed read of the index file.
pub(crate) fn index_err(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("reading the index file: {e}"))
}

/// Longest window read ahead for one stream read.
const RUN_SPAN: u64 = 256 << 10;
/// Largest gap between two wanted frames still read in one window.
const RUN_GAP: u64 = 8 << 10;
/// Bytes read for a frame whose length is not known yet (most frames of one event are
/// smaller; a longer one costs a second read).
const FRAME_GUESS: u64 = 1 << 10;

/// Reads the planned events, in the plan's order.
pub(crate) fn read_positions(plan: &PositionsPlan) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::with_capacity(plan.items.len());
    let mut w: Option<Window> = None;
    let mut stream_cache = None;
    let items = &plan.items;
    let mut i = 0;
    while i < items.len() {
        let loc = items[i].1;
        // Events of one frame come together: take them all in one decode.
        let mut j = i + 1;
        while j < items.len() && items[j].1 == loc {
            j += 1;
        }
        // Read ahead across nearby frames of the same segment in one system call, as long
        // as they are close together; scattered frames are read one by one.
        let mut hi = loc.offset();
        let mut prev = loc.offset();
        for &(_, l) in items[j..].iter().take(256) {
            if l.segment() != loc.segment()
                || l.offset() < prev
                || l.offset() - prev > RUN_GAP
                || l.offset() - loc.offset() > RUN_SPAN
            {
                break;
            }
            hi = l.offset();
            prev = l.offset();
        }
        let guess = FRAME_GUESS.max((j - i) as u64 * 512);
        load_frame(&mut w, &plan.segs, loc, hi + guess)?;
        let seg = &plan.segs[loc.segment()];
        let win = w
            .as_ref()
            .ok_or_else(|| StoreError::Backend("no read window".into()))?;
        let view = frame_in(win, seg, loc.offset())?;
        let stream = stream_of(&view, seg, loc.offset(), &mut stream_cache)?;
        let first = view.header.first_position;
        let want = &items[i..j];
        let lo = want.iter().map(|x| x.0).min().unwrap_or(first);
        let hi_p = want.iter().map(|x| x.0).max().unwrap_or(first);
        let start = out.len();
        let dense = (hi_p - lo) as usize + 1 == want.len();
        for (k, e) in view.events().enumerate() {
            let p = first + k as u64;
            if p < lo {
                continue;
            }
            if p > hi_p {
                break;
            }
            let e = e.map_err(|er| corrupt(&seg.path, loc.offset(), er))?;
            if dense || want.iter().any(|x| x.0 == p) {
                out.push(
                    e.to_recorded(&stream, &view.header, k as u64)
                        .map_err(|er| corrupt(&seg.path, loc.offset(), er))?,
                );
            }
        }
        if want.len() > 1 && want[0].0 > want[want.len() - 1].0 {
            out[start..].reverse();
        }
        i = j;
    }
    Ok(out)
}

/// A plan for a forward scan of the global log.
pub(crate) struct ScanPlan {
    pub segs: Vec<SegRef>,
    pub first_segment: usize,
    pub start: u64,
    pub head: Position,
}

/// Plans a scan from `from`, or None if nothing is committed there.
pub(crate) fn plan_scan(ix: &LogIndex, from: Position) -> Result<Option<ScanPlan>, StoreError> {
    let Some(head) = ix.next_position().checked_sub(1) else {
        return Ok(None);
    };
    let Some(loc) = ix.loc(from).map_err(index_err)? else {
        return Ok(None);
    };
    Ok(Some(ScanPlan {
        segs: seg_refs(ix, 0),
        first_segment: loc.segment(),
        start: loc.offset(),
        head,
    }))
}

/// Scans forward from `from`, returning up to `limit` events that pass `filter`.
pub(crate) fn scan(
    plan: &ScanPlan,
    from: Position,
    limit: usize,
    filter: &Filter,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let expect = (plan.head + 1).saturating_sub(from).min(limit as u64) as usize;
    let mut out = Vec::with_capacity(expect.min(1 << 16));
    let chunk = (limit.saturating_mul(1024)).clamp(16 << 10, 1 << 20) as u64;
    let mut seg_no = plan.first_segment;
    let mut off = plan.start;
    let mut stream_cache = None;
    let mut w: Option<Window> = None;
    while out.len() < limit && seg_no < plan.segs.len() {
        let seg = &plan.segs[seg_no];
        if off >= seg.data_end {
            seg_no += 1;
            off = HEADER_LEN;
            continue;
        }
        load_frame(&mut w, &plan.segs, Loc::new(seg_no, off), off + chunk)?;
        let win = w
            .as_ref()
            .ok_or_else(|| StoreError::Backend("no read window".into()))?;
        let view = frame_in(win, seg, off)?;
        let h = view.header;
        if h.first_position > plan.head {
            break;
        }
        let stream_ok = filter
            .stream_prefix
            .as_deref()
            .is_none_or(|p| view.stream.starts_with(p))
            && (filter.categories.is_empty() || {
                let c = tidings_core::store::category_of(view.stream);
                filter.categories.iter().any(|x| x == c)
            });
        if stream_ok && h.last_position() >= from {
            let stream = stream_of(&view, seg, off, &mut stream_cache)?;
            for (k, e) in view.events().enumerate() {
                let p = h.first_position + k as u64;
                if p < from {
                    continue;
                }
                if p > plan.head || out.len() >= limit {
                    break;
                }
                let e = e.map_err(|er| corrupt(&seg.path, off, er))?;
                if filter.event_types.is_empty()
                    || filter.event_types.iter().any(|t| t == e.event_type)
                {
                    out.push(
                        e.to_recorded(&stream, &h, k as u64)
                            .map_err(|er| corrupt(&seg.path, off, er))?,
                    );
                }
            }
        }
        off += u64::from(h.len);
        if h.last_position() >= plan.head {
            break;
        }
    }
    Ok(out)
}
