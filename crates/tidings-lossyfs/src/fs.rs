//! The FUSE side: each kernel request becomes one call on the [`Model`] under its lock.
//!
//! No `direct_io` and no kernel write-back cache: every `write(2)` reaches the model
//! before it returns, reads may be served from the kernel's page cache (so files can be
//! mapped), and `fsync`/`fdatasync`/directory `fsync` arrive as `FSYNC`/`FSYNCDIR`.
//! `flock` and POSIX locks are left to the kernel (local to the mount).

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{FsResult, Kind, Model, Op};

/// How long the kernel may cache names and attributes. Every change goes through the
/// kernel, so its caches stay right while the power is on; a power cut is followed by a
/// remount, which drops them.
const TTL: Duration = Duration::from_secs(1);

pub(crate) struct LossyFs {
    pub(crate) model: Arc<Mutex<Model>>,
    /// The owner every node reports (the mounting process's).
    pub(crate) owner: (u32, u32),
}

pub(crate) fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(|p| p.into_inner())
}

impl LossyFs {
    /// Runs `f`, a request of kind `op`, on the model when the power is on.
    fn with<T>(&self, op: Op, f: impl FnOnce(&mut Model) -> FsResult<T>) -> FsResult<T> {
        let mut m = lock(&self.model);
        m.begin(op)?;
        f(&mut m)
    }
}

impl LossyFs {
    fn attr(&self, m: &Model, ino: u64) -> FsResult<FileAttr> {
        attr(m, ino, self.owner)
    }
}

fn attr(m: &Model, ino: u64, (uid, gid): (u32, u32)) -> FsResult<FileAttr> {
    let node = m.node(ino)?;
    let size = node.size();
    let (kind, nlink) = match node.kind() {
        Kind::File => (FileType::RegularFile, 1),
        Kind::Dir => (FileType::Directory, 2),
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.ctime,
        crtime: node.ctime,
        kind,
        perm: node.perm,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

fn reply_entry(r: FsResult<FileAttr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: FsResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            self.with(Op::Read, |m| {
                let ino = m.lookup(parent.0, name)?;
                self.attr(m, ino)
            }),
            reply,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(Op::Read, |m| self.attr(m, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(Op::Resize, |m| {
            if let Some(len) = size {
                m.set_len(ino.0, len)?;
            }
            if let Some(mode) = mode {
                m.set_perm(ino.0, (mode & 0o7777) as u16)?;
            }
            self.attr(m, ino.0)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.with(Op::Create, |m| {
                let ino = m.create(parent.0, name, Kind::Dir, (mode & !umask & 0o7777) as u16)?;
                self.attr(m, ino)
            }),
            reply,
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        const S_IFMT: u32 = 0o170_000;
        const S_IFREG: u32 = 0o100_000;
        if mode & S_IFMT != S_IFREG && mode & S_IFMT != 0 {
            reply.error(Errno::EPERM); // only regular files and directories are modelled
            return;
        }
        reply_entry(
            self.with(Op::Create, |m| {
                let ino = m.create(parent.0, name, Kind::File, (mode & !umask & 0o7777) as u16)?;
                self.attr(m, ino)
            }),
            reply,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.with(Op::Create, |m| {
            let ino = m.create(parent.0, name, Kind::File, (mode & !umask & 0o7777) as u16)?;
            self.attr(m, ino)
        });
        match r {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            self.with(Op::Remove, |m| m.remove(parent.0, name, false)),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            self.with(Op::Remove, |m| m.remove(parent.0, name, true)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(
            self.with(Op::Rename, |m| {
                m.rename(parent.0, name, newparent.0, newname, no_replace)
            }),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE: the kernel drops its cached pages of a file at each open.
        match self.with(Op::Read, |m| m.node(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(Op::Read, |m| m.read(ino.0, offset, size as usize)) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(Op::Write, |m| m.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.with(Op::SyncFile, |m| m.sync_file(ino.0)), reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.with(Op::Read, |m| m.list(ino.0)) {
            Ok(e) => e,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        let all = dots.into_iter().chain(entries.into_iter().map(|(i, k, n)| {
            let kind = match k {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            (i, kind, n)
        }));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.with(Op::SyncDir, |m| m.sync_dir(ino.0)), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = lock(&self.model).nodes.len() as u64;
        // Plenty of room: running out of space is not what this file system models.
        reply.statfs(1 << 30, 1 << 29, 1 << 29, files, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(self.with(Op::Read, |m| m.node(ino.0).map(|_| ())), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.with(Op::Resize, |m| m.allocate(ino.0, offset, length, mode)),
            reply,
        );
    }
}
