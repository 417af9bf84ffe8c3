//! `verify`: checks every frame's checksum and the index snapshot against the log,
//! without changing anything.

use std::path::{Path, PathBuf};

use tidings_core::{Clock, Position, SystemClock};

use crate::error::LogError;
use crate::index::LogIndex;
use crate::index_snapshot::{self, IndexFile, IndexSnapshotError, TABLES, Table};
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
            memory_events: u64::MAX,
        },
    )?;
    let index = match index_snapshot::load(&storage, dir) {
        Ok(ck) => compare(&ck, &rec.index),
        Err(IndexSnapshotError::Missing) => IndexCheck::Missing,
        Err(e) => IndexCheck::Stale(e.to_string()),
    };
    Ok(VerifyReport {
        dir: dir.to_owned(),
        segments: rec.report.segments,
        frames: rec.report.frames_scanned,
        events: rec.index.next_position(),
        streams: rec.index.recent.streams.len(),
        torn_tail: rec.report.torn_tail,
        damage: rec.report.damage,
        index,
    })
}

fn compare(ck: &IndexFile, log: &LogIndex) -> IndexCheck {
    match differences(ck, log) {
        Ok(None) => IndexCheck::Current {
            covered: ck.next_position(),
        },
        Ok(Some(c)) => c,
        Err(e) => IndexCheck::Mismatch(format!("reading the index file: {e}")),
    }
}

/// Compares the index file with `log`, an index rebuilt from the log in memory.
fn differences(ck: &IndexFile, log: &LogIndex) -> std::io::Result<Option<IndexCheck>> {
    let mismatch = |m: String| Ok(Some(IndexCheck::Mismatch(m)));
    let n = ck.next_position();
    if n > log.next_position() {
        return Ok(Some(IndexCheck::Stale(format!(
            "it covers {n} events, the log has {}",
            log.next_position()
        ))));
    }
    if let Some(section) = ck.damaged_section()? {
        return mismatch(format!("the index file's {section} section is damaged"));
    }
    let mem = &log.recent;
    let mut p = 0u64;
    while p < n {
        let part = ck.locs(p, (n - p).min(1 << 16))?;
        let want = mem.locs.get(p as usize..p as usize + part.len());
        if part.is_empty() || want != Some(&part[..]) {
            return mismatch("event locations differ".into());
        }
        p += part.len() as u64;
    }
    let covered =
        |ps: &[Position]| -> Vec<Position> { ps.iter().copied().filter(|&p| p < n).collect() };
    for table in TABLES {
        let mut want: Vec<(&str, Option<i64>, Vec<Position>)> = match table {
            Table::Streams => mem
                .streams
                .iter()
                .map(|(k, e)| {
                    let ps = covered(&e.positions);
                    let whole = ps.len() == e.positions.len();
                    (k.as_str(), whole.then_some(e.last_written), ps)
                })
                .collect(),
            Table::Correlations => sorted(&mem.correlations, covered),
            Table::Types => sorted(&mem.tags.types, covered),
            Table::Categories => sorted(&mem.tags.categories, covered),
        };
        want.retain(|(_, _, ps)| !ps.is_empty());
        let mut records = ck.records(table, std::ops::Bound::Unbounded);
        for (key, meta, ps) in &want {
            let Some(r) = records.next_record()? else {
                return mismatch(format!("{} {key} is missing", table.name()));
            };
            if &*r.key != *key {
                return mismatch(format!("{} {} or {key} differs", table.name(), r.key));
            }
            if table == Table::Streams && !ck.stream_filter_passes(key) {
                return mismatch(format!("the stream filter leaves out stream {key}"));
            }
            let list = ck.list(table, &r, 0, r.count)?;
            if list != *ps
                || r.last != *ps.last().unwrap_or(&0)
                || meta.is_some_and(|m| m != r.meta)
            {
                return mismatch(format!("{} {key} differs", table.name()));
            }
        }
        if let Some(r) = records.next_record()? {
            return mismatch(format!("{} {} is not in the log", table.name(), r.key));
        }
    }
    let mut ids: Vec<(u64, Position)> = mem
        .ids
        .iter()
        .filter(|&(_, &p)| p < n)
        .map(|(&f, &p)| (f, p))
        .collect();
    ids.sort_unstable();
    let mut on_file = ck.ids();
    for want in &ids {
        match on_file.next().transpose()? {
            Some(got) if got == *want => {
                if !ck.id_filter_passes(got.0) {
                    return mismatch(format!("the id filter leaves out the id at {}", got.1));
                }
            }
            _ => return mismatch("event ids differ".into()),
        }
    }
    if on_file.next().is_some() {
        return mismatch("event ids differ".into());
    }
    Ok(None)
}

fn sorted(
    m: &crate::tags::KeyMap,
    covered: impl Fn(&[Position]) -> Vec<Position>,
) -> Vec<(&str, Option<i64>, Vec<Position>)> {
    let mut v: Vec<_> = m.iter().map(|(k, ps)| (&**k, None, covered(ps))).collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexedEvent, Loc};
    use tidings_core::StreamId;
    use uuid::Uuid;

    fn built() -> LogIndex {
        let mut ix = LogIndex::default();
        for p in 0..50u64 {
            let s = StreamId::new(&format!("s-{p}")).unwrap_or_else(|e| panic!("{e}"));
            ix.add_frame(
                &s,
                p,
                0,
                Loc::new(0, 64 + p),
                &mut std::iter::once(IndexedEvent {
                    id: Uuid::from_u64_pair(p, 7),
                    correlation: None,
                    event_type: "T",
                }),
            );
        }
        ix
    }

    /// A filter that leaves out a key the file has would hide that key from lookups;
    /// the comparison with the log catches it.
    #[test]
    fn a_filter_that_leaves_out_a_key_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        drop(
            built()
                .into_file_for_bench(dir.path())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let log = built();
        let load =
            || index_snapshot::load(&OsStorage, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            compare(&load(), &log),
            IndexCheck::Current { covered: 50 }
        ));
        for (streams, what) in [(true, "stream filter"), (false, "id filter")] {
            match compare(&load().with_filter_emptied(streams), &log) {
                IndexCheck::Mismatch(m) => assert!(m.contains(what), "{m}"),
                other => panic!("an emptied {what} went unnoticed: {other:?}"),
            }
        }
    }
}
