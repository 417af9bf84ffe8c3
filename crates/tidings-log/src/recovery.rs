//! Recovery: what opening a log does before the first append.
//!
//! It writes no format of its own; it reads segments ([`crate::segment`]), frames
//! ([`crate::record`]) and the snapshot ([`crate::index_snapshot`]):
//!
//! ```text
//!  segments:  [ 000..000.seg | footer ] [ 000..N.seg | footer ] [ 000..M.seg | frames… | zeros ]
//!  snapshot covers ────────────────────────────────────────────────────────►│ end offset
//!  scan:                                                                       └─► frames until zeros
//! ```
//!
//! 1. List the segments; a last segment whose header never reached the disk (a crash while
//!    creating it) is removed — nothing in it was ever acknowledged.
//! 2. Load the snapshot and check it against the segments (same first positions, sealed
//!    segments' footers, the last covered frame ending exactly where it says). A missing
//!    or stale snapshot is reported and the indexes are rebuilt from the first segment.
//! 3. Scan from where the snapshot ends. A bad frame in a sealed segment is corruption.
//!    In the last segment, a bad frame is a **torn tail** unless a later valid frame
//!    records a durable point (`group_first`) after the bad frame: everything before a
//!    frame's durable point was synced before the frame was written, so that proves the
//!    bad frame had been synced, and the damage is **corruption**. A torn tail is zeroed, synced and
//!    reported; corruption fails the open, naming file and byte offset, unless read-only
//!    salvage was asked for, which opens the log up to the damage.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidings_core::{Position, StreamId};

use crate::error::LogError;
use crate::index::{IndexedEvent, Loc, LogIndex, SegmentEntry};
use crate::index_snapshot::{self, IndexFile, IndexSnapshotError};
use crate::record::{self, FOOTER_MARK, FRAME_HEADER_LEN, FrameError};
use crate::segment::{self, FOOTER_LEN, HEADER_LEN, HeaderError};
use crate::storage::{OpenMode, Storage, StorageFile, read_exact_at, read_full_at};

const CHUNK: usize = 4 << 20;

/// Where the indexes came from on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSource {
    /// The index snapshot was current and used.
    Snapshot,
    /// The indexes were rebuilt from the log, for this reason.
    Rebuilt(String),
}

/// A torn write found at the end of the log and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub file: PathBuf,
    /// Where the torn frame started.
    pub offset: u64,
    /// How many bytes after it were discarded.
    pub bytes: u64,
    /// What was wrong with the frame.
    pub reason: String,
}

/// Damage that read-only salvage stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub file: PathBuf,
    /// Byte offset of the damage.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// What opening the log found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Events in the log.
    pub events: u64,
    /// Segment files.
    pub segments: usize,
    /// Frames read by the scan (0 after a clean close with a current snapshot).
    pub frames_scanned: u64,
    /// Where the indexes came from.
    pub index: IndexSource,
    /// A torn tail that was removed.
    pub torn_tail: Option<TornTail>,
    /// Damage that salvage stopped at (salvage only).
    pub damage: Option<Damage>,
    /// Index files written during the scan to keep its memory bounded (see
    /// `LogStoreBuilder::index_memory_events`).
    pub index_files_written: u32,
}

pub(crate) struct Recovered {
    pub index: LogIndex,
    /// The segment to append to and where (None: read-only).
    pub active: Option<(usize, u64)>,
    pub report: RecoveryReport,
}

pub(crate) struct RecoverOptions {
    pub segment_size: u64,
    pub salvage: bool,
    pub durable: bool,
    pub now_micros: i64,
    /// Ignore the snapshot and rescan everything (verify).
    pub force_rebuild: bool,
    /// A scan that holds this many events in memory writes an index file at the end of
    /// the next sealed segment, so rebuilding a large log stays within memory
    /// (`u64::MAX`: never).
    pub memory_events: u64,
}

enum SegEnd {
    Sealed { data_end: u64, next: Position },
    Open { data_end: u64 },
    Bad { offset: u64, reason: String },
}

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    opts: &RecoverOptions,
) -> Result<Recovered, LogError> {
    let read_only = opts.salvage;
    let pending = dir.join(segment::PENDING_NAME);
    if !read_only && storage.exists(&pending) {
        storage
            .remove(&pending)
            .map_err(LogError::io("removing", &pending))?;
    }
    let names = storage.list(dir).map_err(LogError::io("listing", dir))?;
    let mut firsts: Vec<Position> = names
        .iter()
        .filter_map(|n| segment::parse_file_name(n))
        .collect();
    firsts.sort_unstable();

    let mut segs: Vec<(Position, PathBuf, Arc<dyn StorageFile>)> = Vec::new();
    for (i, &first) in firsts.iter().enumerate() {
        let path = dir.join(segment::file_name(first));
        let mode = if read_only {
            OpenMode::Read
        } else {
            OpenMode::ReadWrite
        };
        let file = storage
            .open(&path, mode)
            .map_err(LogError::io("opening", &path))?;
        let mut h = [0u8; HEADER_LEN as usize];
        let n = read_full_at(&*file, &mut h, 0).map_err(LogError::io("reading", &path))?;
        match segment::decode_header(&h[..n]) {
            Ok(p) if p == first => segs.push((first, path, file)),
            Ok(p) => {
                return Err(LogError::Corrupt {
                    file: path,
                    offset: 16,
                    reason: format!("header says first position {p}, the name says {first}"),
                });
            }
            // The last segment's header never fully reached the disk and nothing was
            // written after it: its creation was cut short (the writer syncs a new
            // segment's header before writing a frame into it), so nothing in it was
            // ever acknowledged.
            Err(e)
                if i + 1 == firsts.len()
                    && (e == HeaderError::Unwritten
                        || only_zeros_after(&*file, HEADER_LEN)
                            .map_err(LogError::io("reading", &path))?) =>
            {
                tracing::warn!(file = %path.display(), "removing a segment whose creation did not complete");
                if !read_only {
                    drop(file);
                    storage
                        .remove(&path)
                        .map_err(LogError::io("removing", &path))?;
                    storage
                        .sync_dir(dir)
                        .map_err(LogError::io("syncing", dir))?;
                }
            }
            Err(e) => {
                return Err(LogError::Corrupt {
                    file: path,
                    offset: 0,
                    reason: e.to_string(),
                });
            }
        }
    }

    let loaded = if opts.force_rebuild {
        Err(IndexSnapshotError::Missing)
    } else {
        index_snapshot::load(storage, dir)
    };
    if let Ok(ck) = &loaded
        && !opts.salvage
    {
        shorter_than_snapshot(ck, &segs)?;
    }
    let (mut index, mut start_ordinal, mut start_offset, source) = match loaded {
        Ok(ck) => match fits(&ck, &segs) {
            Ok(()) => {
                let last = ck.cut().segments.len() - 1;
                let end = ck.cut().end_offset;
                let segments = cut_segments(&ck);
                let mut index = LogIndex::with_base(Arc::new(ck));
                index.segments = segments;
                (index, last, end, IndexSource::Snapshot)
            }
            Err(why) => (
                LogIndex::default(),
                0,
                HEADER_LEN,
                IndexSource::Rebuilt(format!("the index snapshot is stale: {why}")),
            ),
        },
        Err(IndexSnapshotError::Missing) => (
            LogIndex::default(),
            0,
            HEADER_LEN,
            IndexSource::Rebuilt("no index snapshot".to_owned()),
        ),
        Err(e) => (
            LogIndex::default(),
            0,
            HEADER_LEN,
            IndexSource::Rebuilt(e.to_string()),
        ),
    };
    if let IndexSource::Rebuilt(why) = &source
        && !segs.is_empty()
        && !opts.force_rebuild
    {
        tracing::warn!(dir = %dir.display(), reason = %why, "rebuilding the indexes from the log");
    }
    // Keep the snapshot's knowledge of sealed segments; everything from the resume
    // segment on is (re)established by the scan.
    index.segments.truncate(start_ordinal);
    for (i, (first, path, file)) in segs.iter().enumerate() {
        if i < index.segments.len() {
            index.segments[i].path = path.clone();
            index.segments[i].file = Some(file.clone());
        }
        let _ = first;
    }

    let mut report = RecoveryReport {
        events: 0,
        segments: segs.len(),
        frames_scanned: 0,
        index: source,
        torn_tail: None,
        damage: None,
        index_files_written: 0,
    };
    let mut sealed_last = false;
    let mut active_end = HEADER_LEN;
    if segs.is_empty() {
        start_ordinal = 0;
        start_offset = HEADER_LEN;
    }
    let mut ordinal = start_ordinal;
    'segments: while ordinal < segs.len() {
        let (first, path, file) = segs[ordinal].clone();
        let expected = index.next_position();
        let resuming = ordinal == start_ordinal && start_offset > HEADER_LEN;
        if first != expected && !resuming {
            let reason = format!(
                "segment starts at position {first}, but the log before it ends at {expected}"
            );
            if opts.salvage {
                report.damage = Some(Damage {
                    file: path,
                    offset: 0,
                    reason,
                });
                segs.truncate(ordinal);
                break;
            }
            return Err(LogError::Corrupt {
                file: path,
                offset: 0,
                reason,
            });
        }
        let is_last = ordinal + 1 == segs.len();
        let from = if ordinal == start_ordinal {
            start_offset
        } else {
            HEADER_LEN
        };
        index.segments.push(SegmentEntry {
            first_position: first,
            data_end: from,
            path: path.clone(),
            file: Some(file.clone()),
        });
        let end = scan_segment(&*file, &path, ordinal, from, &mut index, &mut report)?;
        match end {
            SegEnd::Sealed { data_end, next } => {
                index.segments[ordinal].data_end = data_end;
                if next != index.next_position() {
                    let reason = format!(
                        "footer says the next position is {next}, the frames end at {}",
                        index.next_position()
                    );
                    if opts.salvage {
                        report.damage = Some(Damage {
                            file: path,
                            offset: data_end,
                            reason,
                        });
                        segs.truncate(ordinal + 1);
                        break 'segments;
                    }
                    return Err(LogError::Corrupt {
                        file: path,
                        offset: data_end,
                        reason,
                    });
                }
                sealed_last = is_last;
                active_end = data_end;
                if index.in_memory() >= opts.memory_events && !read_only && !opts.force_rebuild {
                    // Sealed segments are durable: a file covering them is a valid prefix.
                    crate::index_snapshotter::write_now(storage, dir, &mut index, data_end)?;
                    report.index_files_written += 1;
                    tracing::info!(
                        covered = index.next_position(),
                        "index file written during the scan, to bound its memory"
                    );
                }
            }
            SegEnd::Open { data_end } => {
                index.segments[ordinal].data_end = data_end;
                active_end = data_end;
                if !is_last {
                    let reason = "a sealed segment ends without a footer".to_owned();
                    if opts.salvage {
                        report.damage = Some(Damage {
                            file: path,
                            offset: data_end,
                            reason,
                        });
                        segs.truncate(ordinal + 1);
                        break 'segments;
                    }
                    return Err(LogError::Corrupt {
                        file: path,
                        offset: data_end,
                        reason,
                    });
                }
            }
            SegEnd::Bad { offset, reason } => {
                index.segments[ordinal].data_end = offset;
                active_end = offset;
                let torn = is_last && is_torn(&*file, offset, index.next_position())?;
                if !torn {
                    if opts.salvage {
                        report.damage = Some(Damage {
                            file: path,
                            offset,
                            reason,
                        });
                        segs.truncate(ordinal + 1);
                        break 'segments;
                    }
                    return Err(LogError::Corrupt {
                        file: path,
                        offset,
                        reason,
                    });
                }
                let bytes = if read_only {
                    0
                } else {
                    zero_tail(&*file, offset)
                        .map_err(LogError::io("truncating the torn tail of", &path))?
                };
                tracing::warn!(
                    file = %path.display(), offset, bytes, %reason,
                    "discarded a torn write at the end of the log (it was never acknowledged)"
                );
                report.torn_tail = Some(TornTail {
                    file: path,
                    offset,
                    bytes,
                    reason,
                });
            }
        }
        ordinal += 1;
    }
    report.events = index.next_position();

    if read_only {
        return Ok(Recovered {
            index,
            active: None,
            report,
        });
    }
    let need_new = index.segments.is_empty() || sealed_last;
    if need_new {
        let first = index.next_position();
        let seg = segment::create(
            storage,
            dir,
            first,
            opts.segment_size,
            opts.now_micros,
            opts.durable,
        )
        .map_err(LogError::io(
            "creating segment",
            dir.join(segment::file_name(first)),
        ))?;
        index.segments.push(SegmentEntry {
            first_position: first,
            data_end: HEADER_LEN,
            path: seg.path,
            file: Some(seg.file),
        });
        active_end = HEADER_LEN;
        report.segments = index.segments.len();
    }
    let ordinal = index.segments.len() - 1;
    let entry = &index.segments[ordinal];
    // A last segment smaller than the configured size (written with another setting, or
    // cut short) is used as it is: the writer rolls over when it is full.
    if let Some(file) = &entry.file {
        if opts.durable {
            file.sync_data()
                .map_err(LogError::io("syncing", &entry.path))?;
        }
    }
    Ok(Recovered {
        index,
        active: Some((ordinal, active_end)),
        report,
    })
}

/// Acknowledged data the snapshot knows of must still be there: a segment cut shorter
/// than that is damage, not a torn write.
fn shorter_than_snapshot(
    ck: &IndexFile,
    segs: &[(Position, PathBuf, Arc<dyn StorageFile>)],
) -> Result<(), LogError> {
    let cs = &ck.cut().segments;
    for (i, &(c_first, c_end)) in cs.iter().enumerate() {
        let Some((first, path, file)) = segs.get(i) else {
            break;
        };
        if *first != c_first {
            break;
        }
        let need = if i + 1 < cs.len() {
            c_end + FOOTER_LEN
        } else {
            ck.cut().end_offset
        };
        let len = file
            .len()
            .map_err(LogError::io("reading the size of", path))?;
        if len < need {
            return Err(LogError::Corrupt {
                file: path.clone(),
                offset: len,
                reason: format!(
                    "the segment was cut to {len} bytes; acknowledged data runs to byte {need}"
                ),
            });
        }
    }
    Ok(())
}

/// Why a snapshot does not fit the segments on disk (it is stale: the indexes are
/// rebuilt from the log, and this is reported as the reason).
#[derive(Debug, thiserror::Error)]
enum Unfit {
    /// It lists more segments than there are, or none.
    #[error("it lists {listed} segments, the directory has {on_disk}")]
    SegmentCount {
        /// Segments it lists.
        listed: usize,
        /// Segments in the directory.
        on_disk: usize,
    },
    /// A segment starts at another position on disk.
    #[error("segment {segment} starts at {on_disk} on disk, {listed} in the snapshot")]
    FirstPosition {
        /// The segment's ordinal.
        segment: usize,
        /// Its first position on disk.
        on_disk: Position,
        /// Its first position in the snapshot.
        listed: Position,
    },
    /// A sealed segment has no footer where the snapshot says its data ends.
    #[error("segment {0} has no footer where the snapshot says")]
    NoFooter(usize),
    /// It covers no events, yet says the data ends past the header.
    #[error("empty log with a data end")]
    EmptyWithDataEnd,
    /// It has no location for the last event it covers.
    #[error("no location for the last event")]
    NoLastLocation,
    /// The last event's location is in a segment that is not on disk.
    #[error("location in a missing segment")]
    MissingSegment,
    /// Reading the segment failed.
    #[error("{source}")]
    Read {
        /// The segment.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// There is no frame at the last event's location.
    #[error("no frame at the last event's location ({0})")]
    NoFrame(u64),
    /// The frame at the last event's location is damaged.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The last frame's checksum differs: it was written for another log.
    #[error("it was written for another log (the last frame's checksum differs)")]
    ForeignLog,
    /// The last covered frame is not the one the snapshot describes.
    #[error("the last covered frame is not where the snapshot says")]
    LastFrameMisplaced,
    /// The last segment's data end contradicts the last event's location.
    #[error("the last segment's data end is inconsistent")]
    DataEndInconsistent,
}

/// Reads exactly `buf.len()` bytes of segment `path` at `offset`.
fn read_segment(
    file: &dyn StorageFile,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), Unfit> {
    read_exact_at(file, buf, offset).map_err(|source| Unfit::Read {
        path: path.to_owned(),
        source,
    })
}

/// The segments an index file's cut lists, not yet opened.
fn cut_segments(ck: &IndexFile) -> Vec<SegmentEntry> {
    ck.cut()
        .segments
        .iter()
        .map(|&(first_position, data_end)| SegmentEntry {
            first_position,
            data_end,
            path: PathBuf::new(),
            file: None,
        })
        .collect()
}

/// Checks a snapshot against the segments on disk.
fn fits(ck: &IndexFile, segs: &[(Position, PathBuf, Arc<dyn StorageFile>)]) -> Result<(), Unfit> {
    let cs = cut_segments(ck);
    if cs.is_empty() || cs.len() > segs.len() {
        return Err(Unfit::SegmentCount {
            listed: cs.len(),
            on_disk: segs.len(),
        });
    }
    for (i, c) in cs.iter().enumerate() {
        if c.first_position != segs[i].0 {
            return Err(Unfit::FirstPosition {
                segment: i,
                on_disk: segs[i].0,
                listed: c.first_position,
            });
        }
        if i + 1 < cs.len() {
            let mut f = [0u8; FOOTER_LEN as usize];
            read_segment(&*segs[i].2, &segs[i].1, &mut f, c.data_end)?;
            if segment::decode_footer(&f, c.data_end) != Some(cs[i + 1].first_position) {
                return Err(Unfit::NoFooter(i));
            }
        }
    }
    let next = ck.next_position();
    let last = cs.len() - 1;
    let end_offset = ck.cut().end_offset;
    let last_crc = ck.cut().last_crc;
    if next == 0 {
        return if end_offset == HEADER_LEN {
            Ok(())
        } else {
            Err(Unfit::EmptyWithDataEnd)
        };
    }
    let loc = ck
        .loc(next - 1)
        .map_err(|source| Unfit::Read {
            path: PathBuf::from(index_snapshot::FILE_NAME),
            source,
        })?
        .ok_or(Unfit::NoLastLocation)?;
    let seg_end = if loc.segment() == last {
        end_offset
    } else {
        cs.get(loc.segment()).map_or(0, |s| s.data_end)
    };
    let (_, path, file) = segs.get(loc.segment()).ok_or(Unfit::MissingSegment)?;
    let mut head = [0u8; 4];
    read_segment(&**file, path, &mut head, loc.offset())?;
    let len = u32::from_le_bytes(head) as usize;
    if !(FRAME_HEADER_LEN..=record::MAX_FRAME_LEN).contains(&len) {
        return Err(Unfit::NoFrame(loc.offset()));
    }
    let mut buf = vec![0u8; len];
    read_segment(&**file, path, &mut buf, loc.offset())?;
    let frame = record::decode_frame(&buf)?;
    if u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) != last_crc {
        return Err(Unfit::ForeignLog);
    }
    if frame.header.last_position() != next - 1 || loc.offset() + len as u64 != seg_end {
        return Err(Unfit::LastFrameMisplaced);
    }
    if loc.segment() != last && end_offset != HEADER_LEN {
        return Err(Unfit::DataEndInconsistent);
    }
    Ok(())
}

/// Scans the frames of one segment from `from`, adding them to `index`.
fn scan_segment(
    file: &dyn StorageFile,
    path: &Path,
    ordinal: usize,
    from: u64,
    index: &mut LogIndex,
    report: &mut RecoveryReport,
) -> Result<SegEnd, LogError> {
    let file_len = file
        .len()
        .map_err(LogError::io("reading the size of", path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = from;
    loop {
        if off + 4 > file_len {
            return Ok(if off >= file_len {
                SegEnd::Open { data_end: off }
            } else {
                SegEnd::Bad {
                    offset: off,
                    reason: "a frame is cut short by the end of the file".into(),
                }
            });
        }
        let want = (file_len - off).min(buf.len() as u64) as usize;
        let n = read_full_at(file, &mut buf[..want], off).map_err(LogError::io("reading", path))?;
        let chunk = &buf[..n];
        let mut p = 0usize;
        while p + 4 <= chunk.len() {
            let at = off + p as u64;
            let Some(len) = record::peek_len(&chunk[p..]) else {
                break;
            };
            if len == 0 {
                return Ok(SegEnd::Open { data_end: at });
            }
            if len == FOOTER_MARK {
                if chunk.len() - p < FOOTER_LEN as usize && at + FOOTER_LEN <= file_len {
                    break;
                }
                return Ok(match segment::decode_footer(&chunk[p..], at) {
                    Some(next) => SegEnd::Sealed { data_end: at, next },
                    None => SegEnd::Bad {
                        offset: at,
                        reason: "damaged segment footer".into(),
                    },
                });
            }
            let len = len as usize;
            if len > chunk.len() - p && at + len as u64 <= file_len && len <= record::MAX_FRAME_LEN
            {
                if p == 0 {
                    buf.resize(len, 0);
                }
                break;
            }
            let frame = match record::decode_frame(&chunk[p..]) {
                Ok(f) => f,
                Err(e) => {
                    return Ok(SegEnd::Bad {
                        offset: at,
                        reason: e.to_string(),
                    });
                }
            };
            if let Err(e) = frame.validate() {
                return Ok(SegEnd::Bad {
                    offset: at,
                    reason: e.to_string(),
                });
            }
            let expected = index.next_position();
            if frame.header.first_position != expected {
                return Ok(SegEnd::Bad {
                    offset: at,
                    reason: format!(
                        "frame has position {}, expected {expected}",
                        frame.header.first_position
                    ),
                });
            }
            let Ok(stream) = StreamId::parse_any(frame.stream) else {
                return Ok(SegEnd::Bad {
                    offset: at,
                    reason: "invalid stream name".into(),
                });
            };
            let mut events = frame.events().map_while(Result::ok).map(|e| IndexedEvent {
                id: e.event_id,
                correlation: e.correlation_id,
                event_type: e.event_type,
            });
            index.add_frame(
                &stream,
                expected,
                frame.header.recorded_at,
                Loc::new(ordinal, at),
                &mut events,
            );
            report.frames_scanned += 1;
            p += len;
        }
        if p == 0 && n < 4 {
            return Ok(SegEnd::Bad {
                offset: off,
                reason: FrameError::Truncated { need: 4, have: n }.to_string(),
            });
        }
        off += p as u64;
    }
}

/// Whether every byte of `file` from `from` on is zero.
fn only_zeros_after(file: &dyn StorageFile, from: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    loop {
        let n = read_full_at(file, &mut buf, at)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
}

/// Decides whether a bad frame at `offset` of the last segment is a torn tail: true
/// unless a later valid frame was written in a later commit group.
fn is_torn(file: &dyn StorageFile, offset: u64, expected: Position) -> Result<bool, LogError> {
    let io = |e: std::io::Error| LogError::Io {
        op: "reading",
        path: PathBuf::new(),
        source: e,
    };
    let file_len = file.len().map_err(io)?;
    let mut buf = vec![0u8; CHUNK];
    let mut base = offset + 1;
    while base + FRAME_HEADER_LEN as u64 <= file_len {
        let n = read_full_at(file, &mut buf, base).map_err(io)?;
        if n < FRAME_HEADER_LEN {
            break;
        }
        let chunk = &buf[..n];
        let last_start = n - FRAME_HEADER_LEN;
        for p in 0..=last_start {
            let c = &chunk[p..];
            let len = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64;
            if len < FRAME_HEADER_LEN as u64 + 1 || len > file_len - (base + p as u64) {
                continue;
            }
            let first = u64::from_le_bytes(c[8..16].try_into().unwrap_or_default());
            let group = u64::from_le_bytes(c[16..24].try_into().unwrap_or_default());
            if first <= expected || first - expected > (1 << 32) || group > first {
                continue;
            }
            let mut frame = vec![0u8; len as usize];
            if read_exact_at(file, &mut frame, base + p as u64).is_err() {
                continue;
            }
            if let Ok(f) = record::decode_frame(&frame)
                && f.header.group_first > expected
            {
                return Ok(false);
            }
        }
        base += (last_start + 1) as u64;
    }
    Ok(true)
}

/// Zeroes everything from `offset` to the last non-zero byte, then syncs. Returns the
/// number of bytes zeroed.
fn zero_tail(file: &dyn StorageFile, offset: u64) -> std::io::Result<u64> {
    let len = file.len()?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    let mut last_nonzero = None;
    while at < len {
        let n = read_full_at(file, &mut buf, at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last_nonzero = Some(at + i as u64);
        }
        at += n as u64;
    }
    let Some(last) = last_nonzero else {
        return Ok(0);
    };
    let zeros = vec![0u8; CHUNK];
    let mut at = offset;
    while at <= last {
        let n = ((last + 1 - at) as usize).min(CHUNK);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()?;
    Ok(last + 1 - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FrameSpec, encode_frame};
    use crate::storage::sim::SimStorage;
    use proptest::prelude::*;
    use tidings_core::{Enricher, NewEvent};

    const DIR: &str = "/sim/recovery";

    /// A segment image: header, then `frames` one-or-two-event frames, then zeros.
    fn image(frames: usize) -> Vec<u8> {
        let stream = StreamId::new("order-1").unwrap_or_else(|e| panic!("{e}"));
        let mut b = segment::encode_header(0, 0).to_vec();
        let mut next = 0u64;
        for i in 0..frames {
            let events: Vec<_> = (0..1 + i % 2)
                .map(|_| {
                    Enricher::new("p")
                        .enrich(
                            NewEvent::new("E", serde_json::json!({ "i": i }))
                                .with_correlation_id("c"),
                        )
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            encode_frame(
                &mut b,
                &FrameSpec {
                    first_position: next,
                    group_first: next,
                    first_revision: next,
                    recorded_at: 0,
                    stream: &stream,
                    events: &events,
                },
            );
            next += events.len() as u64;
        }
        b.resize(b.len() + 512, 0);
        b
    }

    fn disk_with(segment: &[u8], extra: Option<&[u8]>) -> SimStorage {
        let disk = SimStorage::new();
        let dir = Path::new(DIR);
        let put = |name: String, bytes: &[u8]| {
            let f = disk
                .open(&dir.join(name), OpenMode::CreateNew)
                .unwrap_or_else(|e| panic!("{e}"));
            f.write_all_at(bytes, 0).unwrap_or_else(|e| panic!("{e}"));
            f.sync_data().unwrap_or_else(|e| panic!("{e}"));
        };
        put(segment::file_name(0), segment);
        if let Some(x) = extra {
            put(segment::file_name(1_000_000), x);
        }
        disk.sync_dir(dir).unwrap_or_else(|e| panic!("{e}"));
        disk
    }

    fn run(disk: &SimStorage, salvage: bool) -> Result<Recovered, LogError> {
        recover(
            disk,
            Path::new(DIR),
            &RecoverOptions {
                segment_size: 8192,
                salvage,
                durable: true,
                now_micros: 0,
                force_rebuild: false,
                memory_events: u64::MAX,
            },
        )
    }

    /// Whatever recovery accepts is a gap-free log.
    fn check(r: Result<Recovered, LogError>) {
        match r {
            Ok(rec) => {
                let n = rec.index.next_position();
                assert_eq!(rec.index.recent.locs.len() as u64, n);
                let total: usize = rec
                    .index
                    .recent
                    .streams
                    .values()
                    .map(|s| s.positions.len())
                    .sum();
                assert_eq!(total as u64, n, "every position belongs to one stream");
            }
            Err(LogError::Corrupt { .. }) => {}
            Err(e) => panic!("recovery failed with something other than corruption: {e}"),
        }
    }

    #[test]
    fn an_intact_image_recovers_every_event() {
        let disk = disk_with(&image(6), None);
        let rec = run(&disk, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rec.index.next_position(), 9);
        assert_eq!(rec.report.torn_tail, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn mutated_segments_give_a_log_or_a_corruption_error(
            frames in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            salvage in any::<bool>(),
        ) {
            let mut seg = image(frames);
            for (at, v) in edits {
                let i = at.index(seg.len());
                seg[i] = v;
            }
            if let Some(c) = cut {
                let keep = c.index(seg.len() + 1);
                seg.truncate(keep);
            }
            check(run(&disk_with(&seg, None), salvage));
        }

        #[test]
        fn arbitrary_files_give_a_log_or_a_corruption_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            second in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
            salvage in any::<bool>(),
        ) {
            let mut seg = segment::encode_header(0, 0).to_vec();
            seg.extend_from_slice(&bytes);
            check(run(&disk_with(&seg, second.as_deref()), salvage));
            check(run(&disk_with(&bytes, None), salvage));
        }
    }
}
