//! A simulated disk for tests: it remembers what was synced, and on a simulated power
//! loss keeps only that, sometimes with a torn piece of what was written after it.
//! It can also run out of space (ENOSPC) or fail fsync (EIO) on demand.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{OpenMode, Storage, StorageFile};

/// A deterministic pseudo-random generator (SplitMix64), so failing seeds replay.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[derive(Default, Clone)]
struct FileData {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, FileData>,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    next_ino: u64,
    space_left: Option<u64>,
    fail_sync: bool,
    capture: Option<Capture>,
}

/// Power-loss images taken at the worst moment: data written, its fsync not yet done.
struct Capture {
    marker: Arc<AtomicUsize>,
    per_mille: u64,
    rng: Rng,
    images: Vec<(SimStorage, usize)>,
}

/// Syncs held back by [`SimStorage::hold_syncs`].
#[derive(Default)]
struct Gate {
    held: bool,
    /// Syncs waiting at the gate.
    waiting: usize,
}

/// The simulated disk. Clones share it.
#[derive(Clone, Default)]
pub(crate) struct SimStorage(Arc<Mutex<State>>, Arc<(Mutex<Gate>, Condvar)>);

impl SimStorage {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, growing files by more than `bytes` in total fails with ENOSPC.
    pub(crate) fn set_space_left(&self, bytes: Option<u64>) {
        self.state().space_left = bytes;
    }

    /// From now on, every fsync waits until [`Self::release_syncs`].
    pub(crate) fn hold_syncs(&self) {
        self.gate().held = true;
    }

    /// Lets held syncs (and later ones) go.
    pub(crate) fn release_syncs(&self) {
        self.gate().held = false;
        self.1.1.notify_all();
    }

    /// Blocks until `n` syncs wait at the gate.
    pub(crate) fn wait_for_held_syncs(&self, n: usize) {
        let mut g = self.gate();
        while g.waiting < n {
            g = self.1.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.1.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes written to files and not yet synced.
    pub(crate) fn unsynced_bytes(&self) -> usize {
        self.state()
            .files
            .values()
            .map(|f| {
                let (d, e) = dirty_range(f);
                e - d
            })
            .sum()
    }

    /// From now on, every fsync fails with EIO.
    pub(crate) fn fail_syncs(&self) {
        self.state().fail_sync = true;
    }

    /// From now on, each fsync has a `per_mille`/1000 chance of first recording the
    /// image a power loss would leave just then, with `marker`'s value at that moment.
    pub(crate) fn capture_before_syncs(&self, marker: Arc<AtomicUsize>, per_mille: u64, seed: u64) {
        self.state().capture = Some(Capture {
            marker,
            per_mille,
            rng: Rng(seed),
            images: Vec::new(),
        });
    }

    /// The images recorded by [`Self::capture_before_syncs`].
    pub(crate) fn captured(&self) -> Vec<(SimStorage, usize)> {
        self.state()
            .capture
            .as_mut()
            .map(|c| std::mem::take(&mut c.images))
            .unwrap_or_default()
    }

    /// The disk as it would be found after a power loss now: only synced bytes and
    /// directory entries survive, plus, at random, part of what was written after the
    /// last sync (a prefix, or scattered 512-byte sectors).
    pub(crate) fn power_loss(&self, rng: &mut Rng) -> SimStorage {
        let st = self.state();
        image(&st, rng)
    }
}

fn image(st: &State, rng: &mut Rng) -> SimStorage {
    let mut files = HashMap::new();
    for &ino in st.durable_names.values() {
        let Some(f) = st.files.get(&ino) else {
            continue;
        };
        let mut kept = f.synced.clone();
        let (d, e) = dirty_range(f);
        if d < e {
            match rng.below(3) {
                0 => {}
                1 => {
                    let cut = d + rng.below((e - d) as u64 + 1) as usize;
                    copy_range(&mut kept, &f.data, d, cut);
                }
                _ => {
                    let mut s = d - d % 512;
                    while s < e {
                        let end = (s + 512).min(e);
                        if rng.below(2) == 0 {
                            copy_range(&mut kept, &f.data, s.max(d), end);
                        }
                        s = end;
                    }
                }
            }
        }
        files.insert(
            ino,
            FileData {
                data: kept.clone(),
                synced: kept,
            },
        );
    }
    SimStorage(
        Arc::new(Mutex::new(State {
            files,
            names: st.durable_names.clone(),
            durable_names: st.durable_names.clone(),
            next_ino: st.next_ino,
            space_left: None,
            fail_sync: false,
            capture: None,
        })),
        Arc::default(),
    )
}

fn dirty_range(f: &FileData) -> (usize, usize) {
    let n = f.data.len().max(f.synced.len());
    let at = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
    let d = (0..n).find(|&i| at(&f.data, i) != at(&f.synced, i));
    let Some(d) = d else { return (0, 0) };
    let e = (d..n)
        .rev()
        .find(|&i| at(&f.data, i) != at(&f.synced, i))
        .map_or(d, |i| i + 1);
    (d, e.min(f.data.len()))
}

fn copy_range(dst: &mut Vec<u8>, src: &[u8], from: usize, to: usize) {
    if dst.len() < to {
        dst.resize(to, 0);
    }
    dst[from..to].copy_from_slice(&src[from..to]);
}

struct SimFile {
    disk: SimStorage,
    ino: u64,
    writable: bool,
}

fn grow(st: &mut State, by: usize) -> io::Result<()> {
    if let Some(left) = st.space_left.as_mut() {
        if (by as u64) > *left {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        *left -= by as u64;
    }
    Ok(())
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.disk.state();
        let f = st.files.get(&self.ino).ok_or(io::ErrorKind::NotFound)?;
        let off = offset as usize;
        if off >= f.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(f.data.len() - off);
        buf[..n].copy_from_slice(&f.data[off..off + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9)); // EBADF
        }
        let mut st = self.disk.state();
        let end = offset as usize + buf.len();
        let len = st.files.get(&self.ino).map_or(0, |f| f.data.len());
        if end > len {
            grow(&mut st, end - len)?;
        }
        let f = st.files.get_mut(&self.ino).ok_or(io::ErrorKind::NotFound)?;
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut g = self.disk.gate();
            if g.held {
                g.waiting += 1;
                self.disk.1.1.notify_all();
                while g.held {
                    g = self.disk.1.1.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                g.waiting -= 1;
            }
        }
        let mut st = self.disk.state();
        if st.fail_sync {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if let Some(mut c) = st.capture.take() {
            if c.rng.below(1000) < c.per_mille {
                let marker = c.marker.load(Ordering::SeqCst);
                let mut rng = Rng(c.rng.next_u64());
                let img = image(&st, &mut rng);
                c.images.push((img, marker));
            }
            st.capture = Some(c);
        }
        let f = st.files.get_mut(&self.ino).ok_or(io::ErrorKind::NotFound)?;
        f.synced = f.data.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.disk.state();
        Ok(st.files.get(&self.ino).map_or(0, |f| f.data.len() as u64))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.state();
        let cur = st.files.get(&self.ino).map_or(0, |f| f.data.len());
        if (len as usize) > cur {
            grow(&mut st, len as usize - cur)?;
            if let Some(f) = st.files.get_mut(&self.ino) {
                f.data.resize(len as usize, 0);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.state();
        if let Some(f) = st.files.get_mut(&self.ino) {
            f.data.resize(len as usize, 0);
        }
        Ok(())
    }
}

struct NoLock;

impl Storage for SimStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state();
        let existing = st.names.get(path).copied();
        let ino = match (mode, existing) {
            (OpenMode::CreateNew, Some(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
            (OpenMode::Read | OpenMode::ReadWrite, None) => {
                return Err(io::ErrorKind::NotFound.into());
            }
            (OpenMode::Truncate, Some(ino)) => {
                if let Some(f) = st.files.get_mut(&ino) {
                    f.data.clear();
                }
                ino
            }
            (_, Some(ino)) => ino,
            (_, None) => {
                st.next_ino += 1;
                let ino = st.next_ino;
                st.files.insert(ino, FileData::default());
                st.names.insert(path.to_owned(), ino);
                ino
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            ino,
            writable: mode != OpenMode::Read,
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        self.state().names.contains_key(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state()
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        let ino = st.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        st.names.insert(to.to_owned(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state();
        if st.fail_sync {
            return Err(io::Error::from_raw_os_error(5));
        }
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        let live: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names.extend(live);
        Ok(())
    }

    fn lock(&self, _dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(NoLock))
    }
}
