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
    /// device, not merely reserved, and not yet synced. The default writes through
    /// the file; [`OsStorage`] bypasses the page cache.
    fn write_zero_file(&self, path: &Path, size: u64) -> io::Result<()> {
        let file = self.open(path, OpenMode::Truncate)?;
        file.allocate(size)?;
        write_zeros(&*file, 0, size)
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

struct OsFile(File, OnceLock<Option<memmap2::Mmap>>);

impl OsFile {
    fn new(file: File) -> Self {
        Self(file, OnceLock::new())
    }
}

/// Maps `file` read-only, or `None` if the system refuses.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> Option<memmap2::Mmap> {
    // SAFETY: a mapping is undefined behaviour if the bytes under it change or vanish
    // while they are read. Readers only read a segment's committed frames, which the
    // store never writes again: the writer writes past the committed end only (its
    // padding too), recovery repairs a torn tail before anything is read, and `set_len`
    // below refuses to shrink a mapped file. The directory lock keeps other tidings
    // processes out. What the store cannot prevent is another program truncating a
    // segment under it, which would end the process with SIGBUS; the operations guide
    // says never to do that.
    unsafe { memmap2::MmapOptions::new().map(file) }.ok()
}

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn mapped(&self) -> Option<&[u8]> {
        self.1.get_or_init(|| map_read_only(&self.0)).as_deref()
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some overlays):
            // extending the length still gives zero-filled space, just not reserved.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                if self.len()? < len {
                    self.0.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(Some(map)) = self.1.get()
            && len < map.len() as u64
        {
            return Err(io::Error::other(
                "refusing to shrink a file that is mapped for reads",
            ));
        }
        self.0.set_len(len)
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

    fn write_zero_file(&self, path: &Path, size: u64) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // O_DIRECT: hundreds of MiB of zeros should neither cost a copy into the page
        // cache nor push useful pages out of it. File systems without it fall back.
        let direct = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        let Ok(file) = direct else {
            let file = self.open(path, OpenMode::Truncate)?;
            file.allocate(size)?;
            return write_zeros(&*file, 0, size);
        };
        let f = OsFile::new(file);
        f.allocate(size)?;
        const ALIGN: usize = 4096;
        let mut raw = vec![0u8; (4 << 20) + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        let zeros = &mut raw[start..start + (4 << 20)];
        let aligned_end = size - size % ALIGN as u64;
        let mut at = 0u64;
        while at < aligned_end {
            let n = (aligned_end - at).min(zeros.len() as u64) as usize;
            if let Err(e) = f.0.write_all_at(&zeros[..n], at) {
                drop(f);
                if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
                    let file = self.open(path, OpenMode::ReadWrite)?;
                    return write_zeros(&*file, at, size);
                }
                return Err(e);
            }
            at += n as u64;
        }
        drop(f);
        if aligned_end < size {
            let file = self.open(path, OpenMode::ReadWrite)?;
            write_zeros(&*file, aligned_end, size)?;
        }
        Ok(())
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
