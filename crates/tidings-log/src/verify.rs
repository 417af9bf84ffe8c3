//! `verify`: checks every frame's checksum and the index snapshot against the log,
//! without changing anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tidings_core::{Clock, Position, SystemClock};

use crate::error::LogError;
use crate::index::{EventIndex, MemoryIndex};
use crate::index_snapshot::{self, IndexSnapshotError};
use crate::recovery::{self, Damage, RecoverOptions, TornTail};
use crate::storage::OsStorage;

/// How the index snapshot compares with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexCheck {
    /// It matches the log for every event it covers.
    Current {
        /// Events it covers.
        covered: u64,
    },
    /// There is none (the next open rebuilds it).
    Missing,
    /// It cannot be used (the next open rebuilds it): why.
    Stale(String),
    /// It is readable but disagrees with the log: why.
    Mismatch(String),
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The directory.
    pub dir: PathBuf,
    /// Segment files.
    pub segments: usize,
    /// Frames checked.
    pub frames: u64,
    /// Events in the log (up to the first damage, if any).
    pub events: u64,
    /// Streams.
    pub streams: usize,
    /// A torn tail the next open will discard (never acknowledged data).
    pub torn_tail: Option<TornTail>,
    /// The first damaged record, if any.
    pub damage: Option<Damage>,
    /// The index snapshot.
    pub index: IndexCheck,
}

impl VerifyReport {
    /// True when no record is damaged and the snapshot does not contradict the log.
    pub fn is_ok(&self) -> bool {
        self.damage.is_none() && !matches!(self.index, IndexCheck::Mismatch(_))
    }
}

/// Checks the log in `dir`: every frame's checksum and structure, positions without gaps,
/// segment footers, and the index snapshot against an index rebuilt from the log.
/// It writes nothing and takes no lock.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    let storage = OsStorage;
    if !dir.is_dir() {
        return Err(LogError::Io {
            op: "opening",
            path: dir.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let rec = recovery::recover(
        &storage,
        dir,
        &RecoverOptions {
            segment_size: crate::builder::DEFAULT_SEGMENT_SIZE,
            salvage: true,
            durable: false,
            now_micros: SystemClock.now().as_microsecond(),
            force_rebuild: true,
        },
    )?;
    let index = match index_snapshot::load(&storage, dir) {
        Ok(ck) => compare(&ck.index, &rec.index),
        Err(IndexSnapshotError::Missing) => IndexCheck::Missing,
        Err(e) => IndexCheck::Stale(e.to_string()),
    };
    Ok(VerifyReport {
        dir: dir.to_owned(),
        segments: rec.report.segments,
        frames: rec.report.frames_scanned,
        events: rec.index.next_position(),
        streams: rec.index.stream_count(),
        torn_tail: rec.report.torn_tail,
        damage: rec.report.damage,
        index,
    })
}

fn compare(ck: &MemoryIndex, log: &MemoryIndex) -> IndexCheck {
    let n = ck.next_position();
    if n > log.next_position() {
        return IndexCheck::Stale(format!(
            "it covers {n} events, the log has {}",
            log.next_position()
        ));
    }
    if ck.locs[..] != log.locs[..n as usize] {
        return IndexCheck::Mismatch("event locations differ".into());
    }
    let covered =
        |ps: &[Position]| -> Vec<Position> { ps.iter().copied().filter(|&p| p < n).collect() };
    let mut streams = 0usize;
    for (name, e) in &log.streams {
        let want = covered(&e.positions);
        if want.is_empty() {
            continue;
        }
        streams += 1;
        match ck.streams.get(name.as_str()) {
            Some(c) if c.positions == want => {}
            _ => return IndexCheck::Mismatch(format!("stream {name} differs")),
        }
    }
    if streams != ck.streams.len() {
        return IndexCheck::Mismatch("the snapshot lists streams the log does not have".into());
    }
    let ids: Vec<(u64, Position)> = log
        .merged_ids()
        .into_iter()
        .filter(|&(_, p)| p < n)
        .collect();
    if ids != ck.merged_ids() {
        return IndexCheck::Mismatch("event ids differ".into());
    }
    let mut corr: HashMap<&str, Vec<Position>> = HashMap::new();
    for (c, ps) in log.correlations.iter() {
        let v = covered(ps);
        if !v.is_empty() {
            corr.insert(c, v);
        }
    }
    if corr.len() != ck.correlations.len()
        || ck
            .correlations
            .iter()
            .any(|(c, ps)| corr.get(c).map(Vec::as_slice) != Some(ps))
    {
        return IndexCheck::Mismatch("correlation ids differ".into());
    }
    if let Some(what) = log.tags.differs_within(&ck.tags, n) {
        return IndexCheck::Mismatch(format!("{what} postings differ"));
    }
    IndexCheck::Current { covered: n }
}
