//! The file-system layer: the few operations the engine performs on files.
//!
//! Production uses [`OsStorage`] (positional reads and writes, `fallocate`, `fdatasync`,
//! directory fsync, an advisory lock). Tests substitute a simulated disk that forgets
//! everything not yet synced, to model a power loss, or that runs out of space; that is
//! the only reason this is a trait.
//!
//! No bytes of its own are stored: the layouts live in [`crate::segment`],
//! [`crate::record`] and [`crate::index`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only.
    Read,
    /// Read and write an existing file.
    ReadWrite,
    /// Create a new file (fails if it exists), read and write.
    CreateNew,
    /// Create or truncate, read and write.
    Truncate,
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file's length is a size, not a count
pub trait StorageFile: Send + Sync {
    /// Reads at `offset`; returns the bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` without copying it into the page cache, where the
    /// system allows (`O_DIRECT`); otherwise as [`StorageFile::write_all_at`] does (the
    /// default). `buf`'s address, its length and `offset` are multiples of
    /// [`DIRECT_ALIGN`]. Durability is unchanged: the bytes are durable only after
    /// [`StorageFile::sync_data`].
    fn write_direct_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Reserves space so the file is at least `len` bytes (zero-filled).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file's length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The whole file mapped into memory, for reads without a system call, or `None`
    /// where the storage cannot map (the default). Callers only read bytes the writer
    /// will never change again (a segment's committed frames).
    fn mapped(&self) -> Option<&[u8]> {
        None
    }
}

/// A directory of files.
pub trait Storage: Send + Sync + 'static {
    /// Creates a directory and its parents, each made durable in its parent.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing the target.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the directory for this process; released when the
    /// returned guard is dropped. Fails with [`io::ErrorKind::WouldBlock`] when another
    /// process holds it (the store then reports [`crate::LogError::Locked`]).
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>>;

    /// Creates (or truncates) `path` as `size` bytes of zeros actually written to the
    /// device, not merely reserved, and not yet synced. Whole pages go through
    /// [`StorageFile::write_direct_at`]: hundreds of MiB of zeros should neither cost a
    /// copy into the page cache nor push useful pages out of it.
    fn write_zero_file(&self, path: &Path, size: u64) -> io::Result<()> {
        let file = self.open(path, OpenMode::Truncate)?;
        file.allocate(size)?;
        let mut zeros = AlignedBuf::default();
        zeros.zero_fill_to(4 << 20);
        let aligned_end = size - size % DIRECT_ALIGN as u64;
        let mut at = 0u64;
        while at < aligned_end {
            let n = (aligned_end - at).min(zeros.len() as u64) as usize;
            file.write_direct_at(&zeros.as_slice()[..n], at)?;
            at += n as u64;
        }
        write_zeros(&*file, aligned_end, size)
    }
}

/// The alignment of [`StorageFile::write_direct_at`]'s buffer address, length and offset.
pub const DIRECT_ALIGN: usize = 4096;

/// One [`DIRECT_ALIGN`]-aligned page of an [`AlignedBuf`].
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct AlignedPage([u8; DIRECT_ALIGN]);

/// A growable byte buffer whose first byte is [`DIRECT_ALIGN`]-aligned, for
/// [`StorageFile::write_direct_at`]. Its capacity only grows, so a writer that reuses one
/// allocates once.
#[derive(Default)]
pub struct AlignedBuf {
    pages: Vec<AlignedPage>,
    len: usize,
}

impl AlignedBuf {
    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.all()[..self.len]
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written so far, to change.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.all_mut()[..len]
    }

    /// How many bytes it holds without growing.
    pub fn capacity(&self) -> usize {
        self.pages.len() * DIRECT_ALIGN
    }

    /// Makes room for `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.grow_to(self.len + additional);
    }

    /// Shortens the buffer to `len` bytes (nothing when it is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Empties the buffer, keeping its capacity.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`.
    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.grow_to(end);
        let from = self.len;
        self.all_mut()[from..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Keeps only the bytes in `range`, moved to the front.
    pub fn keep(&mut self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        self.all_mut().copy_within(start..end, 0);
        self.len = end - start;
    }

    /// Appends zeros up to `len` bytes (nothing when it holds that many already).
    pub fn zero_fill_to(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        self.grow_to(len);
        let from = self.len;
        self.all_mut()[from..len].fill(0);
        self.len = len;
    }

    #[inline]
    fn grow_to(&mut self, len: usize) {
        if len > self.pages.len() * DIRECT_ALIGN {
            self.grow(len);
        }
    }

    #[cold]
    fn grow(&mut self, len: usize) {
        // Doubling, as a `Vec` grows: a group encoded frame by frame reallocates
        // a logarithmic number of times.
        let pages = len.div_ceil(DIRECT_ALIGN).max(self.pages.len() * 2);
        self.pages.resize(pages, AlignedPage([0; DIRECT_ALIGN]));
    }

    #[allow(unsafe_code)]
    fn all(&self) -> &[u8] {
        // SAFETY: `AlignedPage` is `repr(C)` around a byte array whose size is a multiple
        // of its alignment, so the pages are contiguous initialized bytes with no padding,
        // valid for as long as the borrow of `self.pages`.
        unsafe {
            std::slice::from_raw_parts(
                self.pages.as_ptr().cast::<u8>(),
                self.pages.len() * DIRECT_ALIGN,
            )
        }
    }

    #[allow(unsafe_code)]
    fn all_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `all`; the mutable borrow of `self.pages` makes this view unique,
        // and any byte pattern is a valid `AlignedPage`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pages.as_mut_ptr().cast::<u8>(),
                self.pages.len() * DIRECT_ALIGN,
            )
        }
    }
}

/// Writes zeros over `[from, to)` of `file`.
pub fn write_zeros(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 4 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_exact_at(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at the end of the file.
pub fn read_full_at(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The operating system's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

struct OsFile {
    file: File,
    map: OnceLock<Option<memmap2::Mmap>>,
    /// The same file opened with `O_DIRECT` on the first direct write, or `None` where
    /// the file system refuses it.
    direct: OnceLock<Option<File>>,
    /// Set when a direct write was refused as invalid: later ones go through the cache.
    direct_refused: AtomicBool,
}

impl OsFile {
    fn new(file: File) -> Self {
        Self {
            file,
            map: OnceLock::new(),
            direct: OnceLock::new(),
            direct_refused: AtomicBool::new(false),
        }
    }

    /// Opens this file again with `O_DIRECT`, through `/proc/self/fd` so that a rename
    /// since it was opened does not matter.
    fn open_direct(&self) -> Option<File> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .ok()
    }
}

/// Maps `file` read-only, or `None` if the system refuses.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> Option<memmap2::Mmap> {
    // SAFETY: a mapping is undefined behaviour if the bytes under it change or vanish
    // while they are read. Readers only read a segment's committed frames, whose bytes
    // the store never changes: the writer writes past the committed end, except that a
    // write around the page cache starts at the page holding that end and writes the
    // committed bytes before it again with what they already hold (the mapping's page
    // is then dropped and read back, the same bytes), recovery repairs a torn tail
    // before anything is read, and `set_len`
    // below refuses to shrink a mapped file. The directory lock keeps other tidings
    // processes out. What the store cannot prevent is another program truncating a
    // segment under it, which would end the process with SIGBUS; the operations guide
    // says never to do that.
    unsafe { memmap2::MmapOptions::new().map(file) }.ok()
}

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn mapped(&self) -> Option<&[u8]> {
        self.map
            .get_or_init(|| map_read_only(&self.file))
            .as_deref()
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_direct_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.direct_refused.load(Ordering::Relaxed)
            && let Some(direct) = self.direct.get_or_init(|| self.open_direct())
        {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                // The file system takes no direct writes (or not these): nothing was
                // written that the write below does not write again.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.direct_refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        // One inode: this also makes the direct writes durable.
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some overlays):
            // extending the length still gives zero-filled space, just not reserved.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                if self.len()? < len {
                    self.file.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(Some(map)) = self.map.get()
            && len < map.len() as u64
        {
            return Err(io::Error::other(
                "refusing to shrink a file that is mapped for reads",
            ));
        }
        self.file.set_len(len)
    }
}

struct DirLock(#[allow(dead_code)] File);

impl Storage for OsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // A new directory's entry is in its parent, and only an fsync of the parent makes
        // it durable: without one, a power cut can take the directory away with every
        // file in it, however well those files were synced.
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.as_os_str().is_empty() && !at.exists() {
            missing.push(at);
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        std::fs::create_dir_all(dir)?;
        for created in missing {
            self.sync_dir(parent_dir(created))?;
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
            OpenMode::Truncate => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(OsFile::new(o.open(path)?)))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let path: PathBuf = dir.join("LOCK");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // Held by another process: `EWOULDBLOCK`, whose kind is `WouldBlock`.
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(Box::new(DirLock(f)))
    }
}

#[cfg(test)]
pub(crate) mod sim;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic on what they assert

    use super::*;

    #[test]
    fn an_aligned_buffer_starts_on_a_page_and_keeps_what_it_is_told_to() {
        let mut b = AlignedBuf::default();
        assert!(b.is_empty());
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        b.extend_from_slice(&bytes);
        assert_eq!(b.as_slice(), &bytes[..]);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        b.keep(9_000..10_000);
        assert_eq!(b.as_slice(), &bytes[9_000..]);
        b.zero_fill_to(DIRECT_ALIGN);
        assert_eq!(b.len(), DIRECT_ALIGN);
        assert!(b.as_slice()[1_000..].iter().all(|&x| x == 0), "stale bytes");
        b.zero_fill_to(10);
        assert_eq!(b.len(), DIRECT_ALIGN, "never shrinks");
        b.keep(DIRECT_ALIGN..DIRECT_ALIGN + 10);
        assert!(b.is_empty(), "nothing past the end is kept");
        b.clear();
        b.extend_from_slice(b"abc");
        assert_eq!(b.as_slice(), b"abc");
    }

    #[test]
    fn direct_writes_rewrite_a_mapped_page_without_changing_what_readers_see() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let file = OsStorage.open(&path, OpenMode::CreateNew).unwrap();
        file.allocate(4 * DIRECT_ALIGN as u64).unwrap();
        let map = file.mapped().unwrap();
        let mut image = AlignedBuf::default();
        let mut expect = vec![0u8; 4 * DIRECT_ALIGN];
        // Each write starts at the page holding the previous write's end and rewrites
        // the bytes before it, as the writer does.
        let mut end = 0usize;
        for (i, n) in [100usize, 3_000, 5_000, 1, 4_000].into_iter().enumerate() {
            let page = end - end % DIRECT_ALIGN;
            let fresh: Vec<u8> = (0..n).map(|k| (i * 31 + k) as u8 | 1).collect();
            expect[end..end + n].copy_from_slice(&fresh);
            image.clear();
            image.extend_from_slice(&expect[page..end]);
            image.extend_from_slice(&fresh);
            image.zero_fill_to((end + n).next_multiple_of(DIRECT_ALIGN) - page);
            file.write_direct_at(image.as_slice(), page as u64).unwrap();
            end += n;
            assert_eq!(&map[..end], &expect[..end], "after write {i}");
            let mut back = vec![0u8; end];
            read_exact_at(&*file, &mut back, 0).unwrap();
            assert_eq!(back, &expect[..end]);
        }
        file.sync_data().unwrap();
        let again = OsStorage.open(&path, OpenMode::Read).unwrap();
        let mut back = vec![0u8; expect.len()];
        read_exact_at(&*again, &mut back, 0).unwrap();
        assert_eq!(back, expect);
    }

    #[test]
    fn a_direct_write_the_system_refuses_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OsStorage.open(&path, OpenMode::CreateNew).unwrap();
        // Misaligned on purpose: O_DIRECT refuses it with EINVAL.
        let mut image = AlignedBuf::default();
        image.extend_from_slice(&[7u8; 2 * DIRECT_ALIGN]);
        let odd = &image.as_slice()[1..DIRECT_ALIGN + 1];
        file.write_direct_at(odd, 3).unwrap();
        file.write_direct_at(&image.as_slice()[..DIRECT_ALIGN], DIRECT_ALIGN as u64)
            .unwrap();
        let mut back = vec![0u8; 2 * DIRECT_ALIGN];
        read_exact_at(&*file, &mut back, 0).unwrap();
        assert_eq!(&back[..3], &[0, 0, 0]);
        assert!(back[3..].iter().all(|&b| b == 7));
    }
}
