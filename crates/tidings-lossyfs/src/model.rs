//! The disk model behind the file system: every file and directory has a *live* state
//! (what reads see) and a *durable* state (what survives a power cut).
//!
//! ```text
//! file:       live content ──fdatasync / fsync──► durable content  (bytes and size)
//! directory:  live entries ──fsync of the dir───► durable entries  (creates, renames, unlinks)
//!
//! power cut:  nothing becomes durable any more; every operation fails with EIO
//! power on:   walk the durable entries from the root; each file reached gets its durable
//!             content (plus, in torn mode, a random subset of unsynced sectors); files
//!             and directories no durable entry reaches are gone
//! ```
//!
//! File content is kept in 4 KiB pages shared between the live and the durable copy
//! (`Arc`), so a sync is a copy of the page table, not of the bytes; pages that hold only
//! zeros and were never written with anything else are not stored.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::Errno;

/// The page size of file content.
pub(crate) const PAGE: u64 = 4096;
/// The unit in which torn mode keeps or drops unsynced bytes (a disk sector).
pub(crate) const SECTOR: usize = 512;
/// The root directory's inode number.
pub(crate) const ROOT: u64 = 1;

type Page = Arc<[u8; PAGE as usize]>;

/// A file's bytes: a length and the pages that are not all zeros.
#[derive(Clone, Default, Debug)]
pub(crate) struct Content {
    len: u64,
    pages: BTreeMap<u64, Page>,
}

impl Content {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `size` bytes at `offset` (fewer at the end of the file).
    pub(crate) fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        if offset >= self.len || size == 0 {
            return Vec::new();
        }
        let end = self.len.min(offset.saturating_add(size as u64));
        let mut out = vec![0u8; (end - offset) as usize];
        for (&idx, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        out
    }

    /// Writes `data` at `offset`, growing the file if it ends past the end.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(rest.len());
            let chunk = &rest[..n];
            match self.pages.get_mut(&idx) {
                Some(page) => Arc::make_mut(page)[in_page..in_page + n].copy_from_slice(chunk),
                None if chunk.iter().all(|&b| b == 0) => {}
                None => {
                    let mut page = [0u8; PAGE as usize];
                    page[in_page..in_page + n].copy_from_slice(chunk);
                    self.pages.insert(idx, Arc::new(page));
                }
            }
            at += n as u64;
            rest = &rest[n..];
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    /// Sets the length; bytes past a shrunk end are forgotten (they read as zeros if the
    /// file grows again).
    pub(crate) fn set_len(&mut self, len: u64) {
        if len < self.len {
            drop(self.pages.split_off(&len.div_ceil(PAGE)));
            let cut = (len % PAGE) as usize;
            if cut != 0
                && let Some(page) = self.pages.get_mut(&(len / PAGE))
            {
                Arc::make_mut(page)[cut..].fill(0);
            }
        }
        self.len = len;
    }

    /// `self` (the durable content) with a random subset of the sectors in which `live`
    /// differs from it, as a disk that wrote some of its cache before losing power.
    /// Returns the new content and how many sectors were kept.
    fn torn(&self, live: &Content, rng: &mut Rng) -> (Content, usize) {
        let mut out = self.clone();
        let mut kept = 0;
        let mut idxs: Vec<u64> = live.pages.keys().copied().collect();
        idxs.extend(self.pages.keys().copied());
        idxs.sort_unstable();
        idxs.dedup();
        let zero = [0u8; PAGE as usize];
        for idx in idxs {
            let new = live.pages.get(&idx);
            let old = self.pages.get(&idx);
            if let (Some(a), Some(b)) = (new, old)
                && Arc::ptr_eq(a, b)
            {
                continue;
            }
            let new: &[u8] = new.map_or(&zero, |p| &p[..]);
            let old: &[u8] = old.map_or(&zero, |p| &p[..]);
            let page_start = idx * PAGE;
            for s in (0..PAGE as usize).step_by(SECTOR) {
                // Sectors past the live end were never written with these bytes.
                if page_start + s as u64 >= live.len {
                    break;
                }
                if new[s..s + SECTOR] == old[s..s + SECTOR] || rng.below(2) == 0 {
                    continue;
                }
                kept += 1;
                let end = (page_start + (s + SECTOR) as u64).min(live.len);
                if end > out.len {
                    out.set_len(end);
                }
                out.write(page_start + s as u64, &new[s..(end - page_start) as usize]);
            }
        }
        (out, kept)
    }
}

/// A deterministic pseudo-random generator (SplitMix64), so a torn run replays.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    File {
        live: Content,
        durable: Content,
    },
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) body: Body,
    pub(crate) perm: u16,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
}

impl Node {
    fn new(body: Body, perm: u16) -> Self {
        let now = SystemTime::now();
        Self {
            body,
            perm,
            mtime: now,
            ctime: now,
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self.body {
            Body::File { .. } => Kind::File,
            Body::Dir { .. } => Kind::Dir,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match &self.body {
            Body::File { live, .. } => live.len(),
            Body::Dir { live, .. } => live.len() as u64,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// Counters of what the file system did, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write requests served.
    pub writes: u64,
    /// `fsync`/`fdatasync` of files.
    pub file_syncs: u64,
    /// `fsync` of directories.
    pub dir_syncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Requests refused with EIO because the power was off.
    pub refused: u64,
}

/// What a power cut took away, as found when the power came back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files and directories that existed before the cut and are gone (their entry was
    /// never made durable, or was replaced by a durable rename or unlink).
    pub nodes_lost: usize,
    /// Files whose content or size went back to what was last synced.
    pub files_reverted: usize,
    /// Directories whose entries went back to what was last synced.
    pub dirs_reverted: usize,
    /// Unsynced sectors that torn mode kept anyway.
    pub torn_sectors_kept: usize,
    /// Directories whose unsynced entries torn mode kept anyway.
    pub torn_dirs_kept: usize,
}

/// A kind of request, for [`crate::LossyDisk::cut_power_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Any request that changes something (every kind below).
    AnyChange,
    /// A write of file data.
    Write,
    /// `fsync` or `fdatasync` of a file.
    SyncFile,
    /// `fsync` of a directory.
    SyncDir,
    /// A rename.
    Rename,
    /// A new file or directory.
    Create,
    /// An unlink or rmdir.
    Remove,
    /// A change of a file's size (truncate, `fallocate`) or permissions.
    Resize,
    /// Reads, lookups, listings: never counted, never a trigger.
    Read,
}

/// A power cut waiting for its request.
#[derive(Debug, Clone, Copy)]
struct Trigger {
    op: Op,
    left: u64,
}

/// The whole disk.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) nodes: HashMap<u64, Node>,
    next_ino: u64,
    pub(crate) powered: bool,
    pub(crate) stats: Stats,
    torn: Option<Rng>,
    trigger: Option<Trigger>,
}

pub(crate) type FsResult<T> = Result<T, Errno>;

impl Model {
    pub(crate) fn new(torn_seed: Option<u64>) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::new(
                Body::Dir {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                0o755,
            ),
        );
        Self {
            nodes,
            next_ino: ROOT + 1,
            powered: true,
            stats: Stats::default(),
            torn: torn_seed.map(Rng),
            trigger: None,
        }
    }

    /// Admits a request of kind `op`: fails with EIO while the power is off (and counts
    /// the refusal), and cuts the power first when `op` is the armed trigger's request.
    pub(crate) fn begin(&mut self, op: Op) -> FsResult<()> {
        if op != Op::Read
            && let Some(t) = self.trigger.as_mut()
            && (t.op == op || t.op == Op::AnyChange)
        {
            t.left = t.left.saturating_sub(1);
            if t.left == 0 {
                self.trigger = None;
                self.cut();
            }
        }
        if self.powered {
            Ok(())
        } else {
            self.stats.refused += 1;
            Err(Errno::EIO)
        }
    }

    /// Cuts the power when the `nth` (from 1) request of kind `op` arrives from now on,
    /// before it is served. Replaces a trigger armed before.
    pub(crate) fn arm(&mut self, op: Op, nth: u64) {
        self.trigger = Some(Trigger {
            op,
            left: nth.max(1),
        });
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> FsResult<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> FsResult<&mut BTreeMap<OsString, u64>> {
        let node = self.node_mut(dir)?;
        node.touch();
        match &mut node.body {
            Body::Dir { live, .. } => Ok(live),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<u64> {
        self.entries(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// The live entries of `dir`, with their kinds.
    pub(crate) fn list(&self, dir: u64) -> FsResult<Vec<(u64, Kind, OsString)>> {
        Ok(self
            .entries(dir)?
            .iter()
            .filter_map(|(name, &ino)| Some((ino, self.nodes.get(&ino)?.kind(), name.clone())))
            .collect())
    }

    /// Creates a file or directory `name` in `parent`.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
    ) -> FsResult<u64> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File {
                live: Content::default(),
                durable: Content::default(),
            },
            Kind::Dir => Body::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        };
        self.nodes.insert(ino, Node::new(body, perm));
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes the entry `name` from `parent`; `dir` says whether it must be a
    /// directory (rmdir, which also wants it empty) or must not be one (unlink).
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir { live, .. }, true) if !live.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Body::File { .. }, true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.entries_mut(parent)?.remove(name);
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing a target of the same
    /// kind (an empty directory only) unless `no_replace`.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        if let Some(&target) = self.entries(new_parent)?.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(ino)?.body, &self.node(target)?.body) {
                (Body::File { .. }, Body::Dir { .. }) => return Err(Errno::EISDIR),
                (Body::Dir { .. }, Body::File { .. }) => return Err(Errno::ENOTDIR),
                (Body::Dir { .. }, Body::Dir { live, .. }) if !live.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        Ok(())
    }

    fn file_mut(&mut self, ino: u64) -> FsResult<(&mut Content, &mut Content)> {
        match &mut self.node_mut(ino)?.body {
            Body::File { live, durable } => Ok((live, durable)),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        match &self.node(ino)?.body {
            Body::File { live, .. } => Ok(live.read(offset, size)),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> FsResult<()> {
        self.stats.writes += 1;
        self.file_mut(ino)?.0.write(offset, data);
        self.node_mut(ino)?.touch();
        Ok(())
    }

    pub(crate) fn set_len(&mut self, ino: u64, len: u64) -> FsResult<()> {
        self.file_mut(ino)?.0.set_len(len);
        self.node_mut(ino)?.touch();
        Ok(())
    }

    pub(crate) fn set_perm(&mut self, ino: u64, perm: u16) -> FsResult<()> {
        let node = self.node_mut(ino)?;
        node.perm = perm;
        node.ctime = SystemTime::now();
        Ok(())
    }

    /// `fallocate` mode 0 grows the file to `offset + len` (the new bytes are zeros);
    /// `FALLOC_FL_KEEP_SIZE` alone changes nothing visible. Other modes are refused.
    pub(crate) fn allocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        const KEEP_SIZE: i32 = 1;
        let live = self.file_mut(ino)?.0;
        match mode {
            0 => {
                let end = offset.saturating_add(len);
                if end > live.len() {
                    live.set_len(end);
                }
                Ok(())
            }
            KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// `fsync`/`fdatasync` of a file: its bytes and size become durable. (Times and
    /// permissions are not modelled as volatile, so both calls do the same.)
    pub(crate) fn sync_file(&mut self, ino: u64) -> FsResult<()> {
        self.stats.file_syncs += 1;
        let (live, durable) = self.file_mut(ino)?;
        *durable = live.clone();
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable.
    pub(crate) fn sync_dir(&mut self, ino: u64) -> FsResult<()> {
        self.stats.dir_syncs += 1;
        match &mut self.node_mut(ino)?.body {
            Body::Dir { live, durable } => {
                *durable = live.clone();
                Ok(())
            }
            // A file opened as a directory cannot happen; syncing it is harmless.
            Body::File { live, durable } => {
                *durable = live.clone();
                Ok(())
            }
        }
    }

    /// Cuts the power: nothing becomes durable any more and every request fails.
    pub(crate) fn cut(&mut self) {
        if self.powered {
            self.powered = false;
            self.stats.cuts += 1;
        }
    }

    /// Powers on again: the visible state becomes the durable one (see the module doc).
    pub(crate) fn power_on(&mut self) -> CutReport {
        self.trigger = None;
        let mut report = CutReport::default();
        let before = self.live_reachable();
        let mut old = std::mem::take(&mut self.nodes);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            let Some(mut node) = old.remove(&ino) else {
                continue; // reached twice (no hard links are made, but stay safe)
            };
            match &mut node.body {
                Body::File { live, durable } => {
                    let kept = match self.torn.as_mut() {
                        Some(rng) => {
                            let (c, kept) = durable.torn(live, rng);
                            report.torn_sectors_kept += kept;
                            c
                        }
                        None => durable.clone(),
                    };
                    if !same_content(live, &kept) {
                        report.files_reverted += 1;
                    }
                    *live = kept.clone();
                    *durable = kept;
                }
                Body::Dir { live, durable } => {
                    let keep_live = *live != *durable
                        && self.torn.as_mut().is_some_and(|rng| rng.below(2) == 0);
                    if keep_live {
                        report.torn_dirs_kept += 1;
                        *durable = live.clone();
                    } else if *live != *durable {
                        report.dirs_reverted += 1;
                        *live = durable.clone();
                    }
                    stack.extend(live.values().copied());
                }
            }
            self.nodes.insert(ino, node);
        }
        report.nodes_lost = before
            .iter()
            .filter(|i| !self.nodes.contains_key(i))
            .count();
        self.powered = true;
        report
    }

    /// Inodes reachable through live entries.
    fn live_reachable(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            out.push(ino);
            if let Some(Node {
                body: Body::Dir { live, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                stack.extend(live.values().copied());
            }
        }
        out
    }
}

fn same_content(a: &Content, b: &Content) -> bool {
    a.len == b.len
        && a.pages.len() == b.pages.len()
        && a.pages
            .iter()
            .zip(&b.pages)
            .all(|((i, p), (j, q))| i == j && (Arc::ptr_eq(p, q) || p[..] == q[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn content(m: &Model, ino: u64) -> Vec<u8> {
        m.read(ino, 0, usize::MAX >> 1).unwrap_or_default()
    }

    #[test]
    fn content_reads_what_was_written_and_zeros_elsewhere() {
        let mut c = Content::default();
        c.write(5000, b"hello");
        assert_eq!(c.len(), 5005);
        assert_eq!(c.read(4998, 10), b"\0\0hello");
        assert_eq!(c.read(0, 3), b"\0\0\0");
        c.write(8192, &[0; 8192]);
        assert_eq!(
            c.pages.len(),
            1,
            "zeros written to absent pages are not stored"
        );
        c.set_len(5002);
        assert_eq!(c.len(), 5002);
        c.set_len(6000);
        assert_eq!(c.read(4999, 10), b"\0he\0\0\0\0\0\0\0");
    }

    #[test]
    fn unsynced_data_and_size_revert_to_the_last_sync() {
        let mut m = Model::new(None);
        let f = m.create(ROOT, name("f"), Kind::File, 0o644).unwrap();
        m.sync_dir(ROOT).unwrap();
        m.write(f, 0, b"one").unwrap();
        m.sync_file(f).unwrap();
        m.write(f, 0, b"TWO-and-more").unwrap();
        m.cut();
        assert_eq!(m.begin(Op::Read), Err(Errno::EIO));
        let r = m.power_on();
        assert_eq!(r.files_reverted, 1);
        assert_eq!(content(&m, f), b"one");
    }

    #[test]
    fn entries_are_durable_only_after_the_directory_is_synced() {
        let mut m = Model::new(None);
        let a = m.create(ROOT, name("a"), Kind::File, 0o644).unwrap();
        m.write(a, 0, b"a").unwrap();
        m.sync_file(a).unwrap();
        m.sync_dir(ROOT).unwrap();
        let b = m.create(ROOT, name("b"), Kind::File, 0o644).unwrap();
        m.sync_file(b).unwrap();
        m.rename(ROOT, name("a"), ROOT, name("c"), false).unwrap();
        m.cut();
        let r = m.power_on();
        assert_eq!(
            m.lookup(ROOT, name("a")),
            Ok(a),
            "the rename was not synced"
        );
        assert_eq!(m.lookup(ROOT, name("b")), Err(Errno::ENOENT));
        assert_eq!(m.lookup(ROOT, name("c")), Err(Errno::ENOENT));
        assert_eq!(r.nodes_lost, 1);
        assert_eq!(content(&m, a), b"a");

        m.rename(ROOT, name("a"), ROOT, name("c"), false).unwrap();
        m.sync_dir(ROOT).unwrap();
        m.cut();
        m.power_on();
        assert_eq!(m.lookup(ROOT, name("c")), Ok(a));
        assert_eq!(m.lookup(ROOT, name("a")), Err(Errno::ENOENT));
    }

    #[test]
    fn a_replaced_file_comes_back_when_the_replacing_rename_was_not_synced() {
        let mut m = Model::new(None);
        let old = m.create(ROOT, name("snap"), Kind::File, 0o644).unwrap();
        m.write(old, 0, b"old").unwrap();
        m.sync_file(old).unwrap();
        m.sync_dir(ROOT).unwrap();
        let tmp = m.create(ROOT, name("snap.tmp"), Kind::File, 0o644).unwrap();
        m.write(tmp, 0, b"new").unwrap();
        m.sync_file(tmp).unwrap();
        m.rename(ROOT, name("snap.tmp"), ROOT, name("snap"), false)
            .unwrap();
        assert_eq!(content(&m, m.lookup(ROOT, name("snap")).unwrap()), b"new");
        m.cut();
        m.power_on();
        assert_eq!(content(&m, m.lookup(ROOT, name("snap")).unwrap()), b"old");
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let mut m = Model::new(None);
        let d = m.create(ROOT, name("d"), Kind::Dir, 0o755).unwrap();
        let f = m.create(d, name("f"), Kind::File, 0o644).unwrap();
        m.sync_file(f).unwrap();
        m.sync_dir(d).unwrap();
        m.cut();
        m.power_on();
        assert_eq!(m.lookup(ROOT, name("d")), Err(Errno::ENOENT));
    }

    #[test]
    fn torn_mode_keeps_some_unsynced_sectors_and_replays() {
        let run = |seed| {
            let mut m = Model::new(Some(seed));
            let f = m.create(ROOT, name("f"), Kind::File, 0o644).unwrap();
            m.sync_dir(ROOT).unwrap();
            m.set_len(f, 8192).unwrap();
            m.sync_file(f).unwrap();
            m.write(f, 0, &[7; 8192]).unwrap();
            m.cut();
            let r = m.power_on();
            (r.torn_sectors_kept, content(&m, f))
        };
        let (kept, bytes) = run(42);
        assert_eq!(run(42), (kept, bytes.clone()), "same seed, same image");
        assert!(kept > 0 && kept < 16, "some of the 16 sectors: {kept}");
        assert_eq!(bytes.len(), 8192);
        for sector in bytes.chunks(SECTOR) {
            assert!(
                sector == [7; SECTOR] || sector == [0; SECTOR],
                "whole sectors"
            );
        }
    }

    #[test]
    fn an_armed_trigger_cuts_before_its_request() {
        let mut m = Model::new(None);
        m.arm(Op::SyncFile, 2);
        assert_eq!(m.begin(Op::Write), Ok(()));
        assert_eq!(m.begin(Op::SyncFile), Ok(()));
        assert_eq!(m.begin(Op::Write), Ok(()));
        assert_eq!(m.begin(Op::SyncFile), Err(Errno::EIO));
        assert!(!m.powered);
        assert_eq!(m.begin(Op::Read), Err(Errno::EIO));
        m.power_on();
        m.arm(Op::AnyChange, 1);
        assert_eq!(m.begin(Op::Read), Ok(()), "reads never trigger");
        assert_eq!(m.begin(Op::Rename), Err(Errno::EIO));
    }

    #[test]
    fn rmdir_wants_an_empty_directory_and_unlink_a_file() {
        let mut m = Model::new(None);
        let d = m.create(ROOT, name("d"), Kind::Dir, 0o755).unwrap();
        m.create(d, name("f"), Kind::File, 0o644).unwrap();
        assert_eq!(m.remove(ROOT, name("d"), true), Err(Errno::ENOTEMPTY));
        assert_eq!(m.remove(ROOT, name("d"), false), Err(Errno::EISDIR));
        assert_eq!(m.remove(d, name("f"), true), Err(Errno::ENOTDIR));
        m.remove(d, name("f"), false).unwrap();
        m.remove(ROOT, name("d"), true).unwrap();
        assert!(m.list(ROOT).unwrap().is_empty());
    }
}
